// The app's state in signals, fed by ChatService's streams. Components read the
// signals and call the methods here; nothing else talks to the server.

import { DestroyRef, Injectable, computed, inject, signal } from "@angular/core";
import { toSignal } from "@angular/core/rxjs-interop";
import {
  ChatError,
  type ConversationDto,
  type GroupDto,
  type MessageDto,
  type MessageStatus,
  type Receipts,
  type UserId,
} from "@chat-server/client";
import { Subscription } from "rxjs";

import { ChatService } from "./chat.service";
import { SessionService } from "./session.service";

/** A message as shown: `pending` until the server acknowledged it, `failed` if it refused it. */
export type Tick = "pending" | "failed" | MessageStatus;

export interface ViewMessage {
  /** The server's id once known, else the clientMessageId. */
  key: string;
  id: string | null;
  senderId: UserId;
  text: string;
  status: Tick;
  timestamp: string;
  clientMessageId: string | null;
  error?: string;
}

export interface Conversation {
  /** "d:<userId>" for a direct chat, "g:<groupId>" for a group. */
  key: string;
  kind: "direct" | "group";
  id: string;
  name: string;
  preview: string;
  lastActive: string;
  unread: number;
  memberCount: number | null;
  /** A group this user left or was removed from: its history stays readable. */
  left: boolean;
}

interface Thread {
  messages: ViewMessage[];
  loaded: boolean;
  /** Older pages were asked for and none is left. */
  exhausted: boolean;
  loading: boolean;
}

export interface Toast {
  id: number;
  text: string;
  error: boolean;
}

const PAGE = 30;
const TYPING_SEND_EVERY_MS = 2500;
const TYPING_IDLE_MS = 3000;
/** A typing indicator whose "stopped" never came goes away after this. */
const TYPING_SHOWN_MS = 6000;
/** While a group thread with unread messages of yours is open, its read-by counts are asked again this often. */
const RECEIPTS_EVERY_MS = 3000;
const RECEIPTS_FOR_LAST = 5;
const RANK: Record<Tick, number> = { failed: 0, pending: 0, sent: 1, delivered: 2, read: 3 };
const RETRYABLE = new Set(["timeout", "unavailable", "rate_limited"]);

export const cursorKey = (userId: UserId) => `chat-app.cursor.${userId}`;
export const directKey = (userId: UserId) => `d:${userId}`;
export const groupKey = (groupId: string) => `g:${groupId}`;

@Injectable()
export class ChatStore {
  private readonly chat = inject(ChatService);
  private readonly session = inject(SessionService);
  readonly me: UserId = this.session.session()!.userId;

  readonly connection = toSignal(this.chat.state$, { requireSync: true });
  /** Catch-up after the latest (re)connect finished. */
  readonly ready = signal(false);
  private readonly conversationMap = signal(new Map<string, Conversation>());
  readonly conversations = computed(() =>
    [...this.conversationMap().values()].sort((a, b) => b.lastActive.localeCompare(a.lastActive)),
  );
  private readonly threads = signal(new Map<string, Thread>());
  readonly selectedKey = signal<string | null>(null);
  readonly selected = computed(() => {
    const key = this.selectedKey();
    return key ? (this.conversationMap().get(key) ?? null) : null;
  });
  readonly thread = computed<Thread | null>(() => {
    const key = this.selectedKey();
    return key ? (this.threads().get(key) ?? null) : null;
  });
  readonly presence = signal(new Map<UserId, boolean>());
  private readonly typingMap = signal(new Map<string, UserId[]>());
  readonly typing = computed(() => {
    const key = this.selectedKey();
    return key ? (this.typingMap().get(key) ?? []) : [];
  });
  readonly groups = signal(new Map<string, GroupDto>());
  readonly selectedGroup = computed(() => {
    const c = this.selected();
    return c?.kind === "group" ? (this.groups().get(c.id) ?? null) : null;
  });
  readonly amAdmin = computed(
    () => this.selectedGroup()?.members.some((m) => m.userId === this.me && m.role === "admin") ?? false,
  );
  readonly receipts = signal(new Map<string, Receipts>());
  readonly toasts = signal<Toast[]>([]);

  private readonly subscriptions = new Subscription();
  private readonly typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly earlyStatus = new Map<string, MessageStatus>();
  private readonly lastGroupRead = new Map<string, string>();
  private conversationsTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly readTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private typingSentAt = 0;
  private typingIdle: ReturnType<typeof setTimeout> | null = null;
  private toastId = 0;
  /** Orders conversation-list answers against our own reads (readMarks: key → clock when marked). */
  private clock = 0;
  private readonly readMarks = new Map<string, number>();
  private readonly loads = new Map<string, Promise<void>>();
  /** Group id → the latest message from others not yet acknowledged as received. */
  private readonly unacknowledged = new Map<string, MessageDto>();
  private ackTimer: ReturnType<typeof setTimeout> | null = null;

  constructor() {
    const c = this.chat;
    this.subscriptions.add(c.messages$.subscribe((m) => this.onMessage(m)));
    this.subscriptions.add(c.statuses$.subscribe(({ messageId, status }) => this.onStatus(messageId, status)));
    this.subscriptions.add(c.presence$.subscribe(({ userId, online }) => this.setPresence(userId, online)));
    this.subscriptions.add(c.typing$.subscribe(({ userId, isTyping }) => this.onTyping(directKey(userId), userId, isTyping)));
    this.subscriptions.add(
      c.groupTyping$.subscribe(({ groupId, userId, isTyping }) => {
        this.onTyping(groupKey(groupId), userId, isTyping);
        if (!isTyping) this.refreshReceipts(groupKey(groupId));
      }),
    );
    this.subscriptions.add(c.groupChanges$.subscribe((g) => this.onGroup(g)));
    this.subscriptions.add(c.readPositions$.subscribe(() => this.scheduleConversations()));
    this.subscriptions.add(c.ready$.subscribe(() => void this.onReady()));
    this.subscriptions.add(c.state$.subscribe((s) => s !== "connected" && this.ready.set(false)));
    this.subscriptions.add(
      c.errors$.subscribe((e) => {
        // Transport failures while reconnecting show in the banner, not as toasts.
        if (e.code !== "unavailable") this.toast(`${e.code}: ${e.message}`, true);
      }),
    );
    const poll = setInterval(() => this.pollReceipts(), RECEIPTS_EVERY_MS);
    const onVisible = () => this.scheduleRead();
    document.addEventListener("visibilitychange", onVisible);
    inject(DestroyRef).onDestroy(() => {
      clearInterval(poll);
      document.removeEventListener("visibilitychange", onVisible);
      this.subscriptions.unsubscribe();
    });
  }

  async start(): Promise<void> {
    try {
      await this.chat.connect();
    } catch (e) {
      // A token the server refuses will not get better by retrying: back to sign-in.
      if (e instanceof ChatError && e.code === "unauthorized") this.session.signOut(`The server refused the token: ${e.message}`);
      else this.toast(`Cannot connect: ${describe(e)}`, true);
    }
  }

  // -- what the person does -------------------------------------------------

  async select(key: string): Promise<void> {
    this.selectedKey.set(key);
    const c = this.conversationMap().get(key);
    if (!c) return;
    if (c.kind === "group" && !c.left) await this.loadGroup(c.id);
    const t = this.threads().get(key);
    if (!t?.loaded) await this.loadPage(key, true);
    this.scheduleRead();
    this.refreshReceipts(key);
  }

  /** Open (or start) a direct conversation with a user id. */
  async openDirect(userId: UserId): Promise<void> {
    userId = userId.trim();
    if (!userId || userId === this.me) return;
    const key = directKey(userId);
    if (!this.conversationMap().has(key)) {
      this.putConversation({
        key, kind: "direct", id: userId, name: userId, preview: "", lastActive: new Date().toISOString(),
        unread: 0, memberCount: null, left: false,
      });
    }
    void this.watchPresence();
    await this.select(key);
  }

  async createGroup(title: string, memberIds: UserId[]): Promise<void> {
    try {
      const group = await this.chat.createGroup(title, memberIds);
      this.onGroup(group);
      await this.select(groupKey(group.id));
    } catch (e) {
      this.toast(describe(e), true);
    }
  }

  send(text: string): void {
    const c = this.selected();
    if (!c || c.left || !text.trim()) return;
    this.stopTyping();
    const clientMessageId = crypto.randomUUID();
    const m: ViewMessage = {
      key: clientMessageId, id: null, senderId: this.me, text, status: "pending",
      timestamp: new Date().toISOString(), clientMessageId,
    };
    this.updateThread(c.key, (t) => ({ ...t, messages: [...t.messages, m] }));
    this.patchConversation(c.key, { preview: text, lastActive: m.timestamp });
    void this.dispatch(c, m);
  }

  retry(m: ViewMessage): void {
    const c = this.selected();
    if (!c || m.status !== "failed") return;
    this.patchMessage(c.key, m.key, { status: "pending", error: undefined });
    void this.dispatch(c, { ...m, status: "pending" });
  }

  async loadOlder(): Promise<void> {
    const key = this.selectedKey();
    if (key) await this.loadPage(key, false);
  }

  /** Called on every keystroke in the composer: "typing" at most every few seconds, "stopped" when idle. */
  typed(): void {
    const c = this.selected();
    if (!c || c.left) return;
    const now = Date.now();
    if (now - this.typingSentAt > TYPING_SEND_EVERY_MS) {
      this.typingSentAt = now;
      this.sendTyping(c, true);
    }
    if (this.typingIdle) clearTimeout(this.typingIdle);
    this.typingIdle = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  async addMembers(userIds: UserId[]): Promise<void> {
    const g = this.selectedGroup();
    if (!g || !userIds.length) return;
    await this.attempt(async () => this.onGroup(await this.chat.addGroupMembers(g.id, userIds)));
  }

  async removeMember(userId: UserId): Promise<void> {
    const g = this.selectedGroup();
    if (!g) return;
    await this.attempt(async () => {
      await this.chat.removeGroupMember(g.id, userId);
      this.onGroup({ ...g, members: g.members.filter((m) => m.userId !== userId), memberCount: g.memberCount - 1 });
    });
  }

  async leave(): Promise<void> {
    const g = this.selectedGroup();
    if (!g) return;
    await this.attempt(async () => {
      await this.chat.leaveGroup(g.id);
      this.onGroup({ ...g, members: g.members.filter((m) => m.userId !== this.me), memberCount: g.memberCount - 1 });
    });
  }

  async rename(title: string): Promise<void> {
    const g = this.selectedGroup();
    if (!g || !title.trim()) return;
    await this.attempt(async () => this.onGroup(await this.chat.renameGroup(g.id, title.trim())));
  }

  /** A member's display name, as the open group knows it. */
  nameOf(userId: UserId): string {
    if (userId === this.me) return "You";
    for (const g of this.groups().values()) {
      const m = g.members.find((x) => x.userId === userId);
      if (m) return m.name;
    }
    return this.conversationMap().get(directKey(userId))?.name ?? userId;
  }

  dismiss(id: number): void {
    this.toasts.update((ts) => ts.filter((t) => t.id !== id));
  }

  // -- what the server says -------------------------------------------------

  private async onReady(): Promise<void> {
    this.ready.set(true);
    if (this.chat.cursor) localStorage.setItem(cursorKey(this.me), this.chat.cursor);
    await this.refreshConversations();
    void this.watchPresence();
    const key = this.selectedKey();
    if (key) {
      const c = this.conversationMap().get(key);
      if (c?.kind === "group" && !c.left) await this.loadGroup(c.id);
      await this.loadPage(key, true);
      this.scheduleRead();
    }
    // Messages typed while the server was away go out now.
    for (const [k, t] of this.threads()) {
      const c = this.conversationMap().get(k);
      if (!c) continue;
      for (const m of t.messages) if (m.status === "pending" && m.id === null) void this.dispatch(c, m);
    }
  }

  private onMessage(dto: MessageDto): void {
    const key = this.keyOf(dto);
    const mine = dto.senderId === this.me;
    if (!this.conversationMap().has(key)) {
      this.putConversation({
        key, kind: dto.groupId ? "group" : "direct", id: dto.groupId ?? (mine ? dto.receiverId! : dto.senderId),
        name: dto.groupId ? "…" : dto.senderId, preview: dto.text, lastActive: dto.timestamp,
        unread: 0, memberCount: null, left: false,
      });
    }
    // A thread holds what was loaded and what came after: one not opened yet loads its
    // history when it is (a first Sync would otherwise pour every old message in here).
    const t = this.threads().get(key);
    if (t?.loaded || t?.loading) this.updateThread(key, (x) => ({ ...x, messages: merge(x.messages, fromDto(dto)) }));
    if (!mine) {
      this.clearTyping(key, dto.senderId);
      if (dto.status === "sent") this.acknowledge(dto);
      if (key === this.selectedKey()) this.scheduleRead();
      if (dto.groupId) this.refreshReceipts(key);
    }
    this.scheduleConversations();
  }

  private onStatus(messageId: string, status: MessageStatus): void {
    let found = false;
    this.threads.update((threads) => {
      const next = new Map(threads);
      for (const [k, t] of threads) {
        const i = t.messages.findIndex((m) => m.id === messageId);
        if (i < 0) continue;
        found = true;
        if (RANK[status] <= RANK[t.messages[i]!.status]) continue;
        const messages = [...t.messages];
        messages[i] = { ...messages[i]!, status };
        next.set(k, { ...t, messages });
      }
      return next;
    });
    if (!found) this.earlyStatus.set(messageId, status); // the ack of our own send is still on its way
    const key = this.selectedKey();
    if (key?.startsWith("g:")) this.refreshReceipts(key);
  }

  private onGroup(g: GroupDto): void {
    this.groups.update((m) => new Map(m).set(g.id, g));
    const key = groupKey(g.id);
    const member = g.members.some((m) => m.userId === this.me);
    const known = this.conversationMap().get(key);
    if (known) {
      this.patchConversation(key, { name: g.title, memberCount: g.memberCount, left: !member });
    } else if (member) {
      this.putConversation({
        key, kind: "group", id: g.id, name: g.title, preview: "", lastActive: g.createdAt,
        unread: 0, memberCount: g.memberCount, left: false,
      });
    }
    if (key === this.selectedKey()) void this.watchPresence();
    this.scheduleConversations();
  }

  private onTyping(key: string, userId: UserId, isTyping: boolean): void {
    const timerKey = `${key}\n${userId}`;
    const old = this.typingTimers.get(timerKey);
    if (old) clearTimeout(old);
    if (!isTyping) return this.clearTyping(key, userId);
    this.typingMap.update((m) => {
      const users = m.get(key) ?? [];
      return users.includes(userId) ? m : new Map(m).set(key, [...users, userId]);
    });
    this.typingTimers.set(timerKey, setTimeout(() => this.clearTyping(key, userId), TYPING_SHOWN_MS));
  }

  private clearTyping(key: string, userId: UserId): void {
    this.typingMap.update((m) => {
      const users = m.get(key);
      return users?.includes(userId) ? new Map(m).set(key, users.filter((u) => u !== userId)) : m;
    });
  }

  private setPresence(userId: UserId, online: boolean): void {
    this.presence.update((m) => new Map(m).set(userId, online));
  }

  // -- calls ----------------------------------------------------------------

  private async dispatch(c: Conversation, m: ViewMessage): Promise<void> {
    const clientMessageId = m.clientMessageId!;
    try {
      const id =
        c.kind === "group"
          ? await this.chat.sendGroupMessage(c.id, m.text, clientMessageId)
          : await this.chat.sendMessage(c.id, m.text, clientMessageId);
      const early = this.earlyStatus.get(id);
      this.earlyStatus.delete(id);
      this.updateThread(c.key, (t) => {
        const known = t.messages.find((x) => x.id === id); // a Sync may have brought it first
        const rest = t.messages.filter((x) => x.key !== m.key && x.id !== id);
        const status = maxTick(maxTick("sent", known?.status ?? "sent"), early ?? "sent");
        return { ...t, messages: merge(rest, { ...m, ...known, key: id, id, status, error: undefined }) };
      });
      this.scheduleConversations(); // the list's order, preview, and the other's display name
    } catch (e) {
      if (e instanceof ChatError && RETRYABLE.has(e.code)) return; // stays pending: sent again on the next connect
      this.patchMessage(c.key, m.key, { status: "failed", error: describe(e) });
      this.toast(describe(e), true);
    }
  }

  private async refreshConversations(): Promise<void> {
    const asked = ++this.clock;
    let list: ConversationDto[];
    try {
      list = await this.chat.conversations();
    } catch {
      return; // shown by the banner; the next event or reconnect tries again
    }
    this.conversationMap.update((old) => {
      const next = new Map(old);
      for (const dto of list) {
        const key = dto.kind === "group" ? groupKey(dto.id) : directKey(dto.id);
        next.set(key, {
          key, kind: dto.kind ?? "direct", id: dto.id, name: dto.name, preview: dto.previewMessage,
          lastActive: dto.lastActive,
          // An answer older than our own latest read of it would bring the badge back.
          unread: (key === this.selectedKey() && this.visible()) || (this.readMarks.get(key) ?? 0) > asked
            ? 0
            : dto.unreadCount,
          memberCount: dto.memberCount ?? null, left: old.get(key)?.left ?? false,
        });
        if (dto.kind !== "group") this.presence.update((p) => new Map(p).set(dto.id, dto.isActive));
      }
      return next;
    });
  }

  /** One page of history at a time per conversation; a second ask waits for the one running. */
  private loadPage(key: string, first: boolean): Promise<void> {
    const running = this.loads.get(key);
    if (running) return running;
    const load = this.fetchPage(key, first).finally(() => this.loads.delete(key));
    this.loads.set(key, load);
    return load;
  }

  private async fetchPage(key: string, first: boolean): Promise<void> {
    const c = this.conversationMap().get(key);
    const t = this.threads().get(key);
    if (!c || (!first && t?.exhausted)) return;
    const skip = first ? 0 : (t?.messages.filter((m) => m.id !== null).length ?? 0);
    this.updateThread(key, (x) => ({ ...x, loading: true }));
    try {
      const page =
        c.kind === "group" ? await this.chat.groupHistory(c.id, skip, PAGE) : await this.chat.history(c.id, skip, PAGE);
      this.updateThread(key, (x) => ({
        messages: page.reduce((acc, dto) => merge(acc, fromDto(dto)), x.messages),
        loaded: true,
        exhausted: first ? x.exhausted : page.length < PAGE,
        loading: false,
      }));
      if (first && page.length < PAGE) this.updateThread(key, (x) => ({ ...x, exhausted: true }));
    } catch (e) {
      this.updateThread(key, (x) => ({ ...x, loading: false }));
      if (!(e instanceof ChatError && e.code === "forbidden")) this.toast(describe(e), true);
    }
  }

  private async loadGroup(groupId: string): Promise<void> {
    try {
      this.onGroup(await this.chat.getGroup(groupId));
    } catch (e) {
      if (e instanceof ChatError && e.code === "forbidden") this.patchConversation(groupKey(groupId), { left: true });
    }
  }

  /** Direct contacts are heard anyway; the open group's members are subscribed to. */
  private async watchPresence(): Promise<void> {
    const ids = new Set<UserId>();
    for (const c of this.conversationMap().values()) if (c.kind === "direct") ids.add(c.id);
    for (const m of this.selectedGroup()?.members ?? []) if (m.userId !== this.me) ids.add(m.userId);
    try {
      const states = await this.chat.watchPresence([...ids].slice(0, 500));
      this.presence.update((p) => {
        const next = new Map(p);
        for (const [id, s] of Object.entries(states)) next.set(id, s === "Online");
        return next;
      });
    } catch {
      /* the next reconnect renews it */
    }
  }

  /**
   * A message from someone else reached this device. In a group, receiving one moves
   * this user's position past every earlier one, so a burst (a Sync after a long
   * absence, say) costs one call per group: the latest message's.
   */
  private acknowledge(dto: MessageDto): void {
    if (!dto.groupId) {
      this.chat.markReceived(dto.id).catch(() => undefined); // a receipt lost now is sent with the read
      return;
    }
    const known = this.unacknowledged.get(dto.groupId);
    if (!known || known.timestamp <= dto.timestamp) this.unacknowledged.set(dto.groupId, dto);
    this.ackTimer ??= setTimeout(() => {
      this.ackTimer = null;
      for (const m of this.unacknowledged.values()) this.chat.markReceived(m.id).catch(() => undefined);
      this.unacknowledged.clear();
    }, 50);
  }

  /**
   * The open conversation is on screen: mark what is in it read, a moment later so a
   * burst of messages costs one call. It is marked even if the person has moved on
   * by then: they saw it.
   */
  private scheduleRead(): void {
    const key = this.selectedKey();
    if (!key || !this.visible()) return;
    clearTimeout(this.readTimers.get(key));
    this.readTimers.set(key, setTimeout(() => {
      this.readTimers.delete(key);
      void this.markRead(key);
    }, 150));
  }

  private async markRead(key: string): Promise<void> {
    const c = this.conversationMap().get(key);
    const t = this.threads().get(key);
    if (!c || !t || c.left || this.connection() !== "connected") return;
    const theirs = t.messages.filter((m) => m.senderId !== this.me && m.id !== null);
    const latest = theirs.at(-1);
    try {
      if (c.kind === "direct") {
        if (!c.unread && !theirs.some((m) => m.status !== "read")) return;
        await this.chat.markConversationRead(c.id);
        this.updateThread(c.key, (x) => ({
          ...x,
          messages: x.messages.map((m) => (m.senderId === this.me ? m : { ...m, status: "read" as const })),
        }));
      } else {
        if (!latest || (this.lastGroupRead.get(c.key) === latest.id && c.unread === 0)) return;
        await this.chat.markGroupRead(c.id);
        this.lastGroupRead.set(c.key, latest.id!);
      }
      this.patchConversation(c.key, { unread: 0 });
      this.readMarks.set(c.key, ++this.clock);
    } catch {
      /* tried again on the next message or reconnect */
    }
  }

  private refreshReceipts(key: string): void {
    if (key !== this.selectedKey() || !key.startsWith("g:")) return;
    const t = this.threads().get(key);
    const mine = (t?.messages ?? []).filter((m) => m.senderId === this.me && m.id !== null).slice(-RECEIPTS_FOR_LAST);
    for (const m of mine) {
      this.chat.receipts(m.id!).then(
        (r) => this.receipts.update((map) => new Map(map).set(m.id!, r)),
        () => undefined,
      );
    }
  }

  /** No event tells a sender that one member of several read: ask while some are still unread. */
  private pollReceipts(): void {
    const key = this.selectedKey();
    if (!key?.startsWith("g:") || this.selected()?.left || this.connection() !== "connected" || !this.visible()) return;
    const t = this.threads().get(key);
    const map = this.receipts();
    const waiting = (t?.messages ?? [])
      .filter((m) => m.senderId === this.me && m.id !== null)
      .slice(-RECEIPTS_FOR_LAST)
      .some((m) => {
        const r = map.get(m.id!);
        return !r || r.readCount < r.recipientCount;
      });
    if (waiting) this.refreshReceipts(key);
  }

  private sendTyping(c: Conversation, isTyping: boolean): void {
    const call = c.kind === "group" ? this.chat.setGroupTyping(c.id, isTyping) : this.chat.setTyping(c.id, isTyping);
    call.catch(() => undefined); // typing is a hint: a lost one is not worth a message
  }

  private stopTyping(): void {
    if (this.typingIdle) clearTimeout(this.typingIdle);
    this.typingIdle = null;
    const c = this.selected();
    if (this.typingSentAt && c && !c.left) this.sendTyping(c, false);
    this.typingSentAt = 0;
  }

  private scheduleConversations(): void {
    if (this.conversationsTimer) return;
    this.conversationsTimer = setTimeout(() => {
      this.conversationsTimer = null;
      void this.refreshConversations();
    }, 250);
  }

  private async attempt(f: () => Promise<void>): Promise<void> {
    try {
      await f();
    } catch (e) {
      this.toast(describe(e), true);
    }
  }

  toast(text: string, error = false): void {
    const id = ++this.toastId;
    this.toasts.update((ts) => [...ts.slice(-3), { id, text, error }]);
    setTimeout(() => this.dismiss(id), error ? 8000 : 4000);
  }

  // -- state helpers --------------------------------------------------------

  private keyOf(m: MessageDto): string {
    if (m.groupId) return groupKey(m.groupId);
    return directKey(m.senderId === this.me ? m.receiverId! : m.senderId);
  }

  private visible(): boolean {
    return document.visibilityState === "visible";
  }

  private putConversation(c: Conversation): void {
    this.conversationMap.update((m) => new Map(m).set(c.key, c));
  }

  private patchConversation(key: string, patch: Partial<Conversation>): void {
    this.conversationMap.update((m) => {
      const c = m.get(key);
      return c ? new Map(m).set(key, { ...c, ...patch }) : m;
    });
  }

  private updateThread(key: string, f: (t: Thread) => Thread): void {
    this.threads.update((m) => new Map(m).set(key, f(m.get(key) ?? { messages: [], loaded: false, exhausted: false, loading: false })));
  }

  private patchMessage(key: string, messageKey: string, patch: Partial<ViewMessage>): void {
    this.updateThread(key, (t) => ({ ...t, messages: t.messages.map((m) => (m.key === messageKey ? { ...m, ...patch } : m)) }));
  }
}

function fromDto(dto: MessageDto): ViewMessage {
  return {
    key: dto.id, id: dto.id, senderId: dto.senderId, text: dto.text, status: dto.status,
    timestamp: dto.timestamp, clientMessageId: dto.clientMessageId,
  };
}

/** Insert or update by id (or by clientMessageId for our own pending copy); status only moves forward. */
function merge(list: ViewMessage[], m: ViewMessage): ViewMessage[] {
  const i = list.findIndex(
    (x) => (m.id !== null && x.id === m.id) || (x.id === null && m.clientMessageId !== null && x.clientMessageId === m.clientMessageId),
  );
  const next = [...list];
  if (i >= 0) next[i] = { ...next[i]!, ...m, status: maxTick(next[i]!.status, m.status) };
  else next.push(m);
  // Server messages by time; our pending ones stay last until acknowledged.
  next.sort((a, b) => (a.id === null ? 1 : 0) - (b.id === null ? 1 : 0) || a.timestamp.localeCompare(b.timestamp));
  return next;
}

function maxTick(a: Tick, b: Tick): Tick {
  return RANK[b] > RANK[a] ? b : a;
}

function describe(e: unknown): string {
  if (e instanceof ChatError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
