// A typed client for the chat protocol: RxJS streams for what the server pushes,
// promises for the methods, reconnect with a fresh token, and Sync catch-up.
// Framework-free: it runs in browsers, Node and React Native; an Angular app wraps
// it in an @Injectable (see client-demo/angular/src/app/chat/chat.service.ts).

import { BehaviorSubject, Observable, Subject, filter } from "rxjs";
import { io, Socket } from "socket.io-client";

import type {
  Ack,
  ClientEmits,
  ClientMethods,
  ConversationDto,
  ErrorCode,
  GroupDto,
  GroupId,
  HandshakeError,
  MessageDto,
  MessageId,
  MessageStatus,
  MethodName,
  PresenceState,
  Receipts,
  Registered,
  ServerEvents,
  UserId,
} from "./protocol.js";

export type ClientErrorCode = ErrorCode | "timeout" | "unauthorized";

/** A failed call: `code` is the protocol's error code, or "timeout" when no ack came. */
export class ChatError extends Error {
  constructor(
    readonly code: ClientErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "ChatError";
  }
}

/** Failures worth sending again with the same clientMessageId. */
const RETRYABLE: ReadonlySet<ClientErrorCode> = new Set(["timeout", "unavailable", "rate_limited"]);

export interface ChatClientOptions {
  /** Server base URL, e.g. "http://127.0.0.1:8080". */
  url: string;
  /** Asked for a token before every connect and reconnect. */
  token: () => string | Promise<string>;
  /** When set, RegisterUser is called after every connect (which also hands over pending messages). */
  userName?: string;
  /** Where Sync starts on the first connect; null replays everything. */
  cursor?: string | null;
  ackTimeoutMs?: number;
  sendAttempts?: number;
  transports?: ("websocket" | "polling")[];
}

export type ConnectionState = "disconnected" | "connecting" | "connected" | "expired";

export interface StatusChange {
  messageId: MessageId;
  status: MessageStatus;
}
export interface PresenceChange {
  userId: UserId;
  online: boolean;
}
export interface TypingChange {
  userId: UserId;
  isTyping: boolean;
}
export interface GroupTypingChange {
  groupId: GroupId;
  userId: UserId;
  isTyping: boolean;
}
export interface ReadPositionChange {
  groupId: GroupId;
  messageId: MessageId;
}

export class ChatClient {
  /**
   * Every message this user sees, direct and group: received live, sent from
   * another device, handed over, or synced. A group message has `groupId` set.
   */
  readonly messages$: Observable<MessageDto>;
  /** The group messages of messages$ alone. */
  readonly groupMessages$: Observable<MessageDto>;
  /** A message of yours moved forward (for a group message: its aggregate status). */
  readonly statuses$: Observable<StatusChange>;
  readonly presence$: Observable<PresenceChange>;
  readonly typing$: Observable<TypingChange>;
  readonly groupTyping$: Observable<GroupTypingChange>;
  /**
   * A group was created, renamed, or members came or went, live or synced. When
   * `userId` is no longer in its `members`, you left or were removed.
   */
  readonly groupChanges$: Observable<GroupDto>;
  /** Your read position in a group moved on another of your devices. */
  readonly readPositions$: Observable<ReadPositionChange>;
  readonly notices$: Observable<string>;
  /** Handshake refusals and catch-up failures. */
  readonly errors$: Observable<ChatError>;
  /** After every (re)connect, once RegisterUser and Sync have caught this client up. */
  readonly ready$: Observable<void>;
  readonly state$: BehaviorSubject<ConnectionState> = new BehaviorSubject<ConnectionState>("disconnected");

  private readonly messages = new Subject<MessageDto>();
  private readonly statuses = new Subject<StatusChange>();
  private readonly presence = new Subject<PresenceChange>();
  private readonly typing = new Subject<TypingChange>();
  private readonly groupTyping = new Subject<GroupTypingChange>();
  private readonly groupChanges = new Subject<GroupDto>();
  private readonly readPositions = new Subject<ReadPositionChange>();
  private readonly notices = new Subject<string>();
  private readonly errors = new Subject<ChatError>();
  private readonly ready = new Subject<void>();
  private readonly socket: Socket<ServerEvents, ClientEmits>;
  private readonly ackTimeoutMs: number;
  private readonly sendAttempts: number;
  private syncing: Promise<void> | null = null;
  private resync = false;
  private watched: UserId[] = [];
  private currentUser: UserId | null = null;
  private cursorValue: string | null;

  constructor(private readonly options: ChatClientOptions) {
    this.messages$ = this.messages.asObservable();
    this.groupMessages$ = this.messages$.pipe(filter((m) => m.groupId != null));
    this.statuses$ = this.statuses.asObservable();
    this.presence$ = this.presence.asObservable();
    this.typing$ = this.typing.asObservable();
    this.groupTyping$ = this.groupTyping.asObservable();
    this.groupChanges$ = this.groupChanges.asObservable();
    this.readPositions$ = this.readPositions.asObservable();
    this.notices$ = this.notices.asObservable();
    this.errors$ = this.errors.asObservable();
    this.ready$ = this.ready.asObservable();
    this.ackTimeoutMs = options.ackTimeoutMs ?? 10_000;
    this.sendAttempts = options.sendAttempts ?? 4;
    this.cursorValue = options.cursor ?? null;
    this.socket = io(`${options.url.replace(/\/$/, "")}/chat`, {
      autoConnect: false,
      transports: options.transports ?? ["websocket", "polling"],
      // A function, so every reconnect asks for a fresh token.
      auth: (cb) => {
        Promise.resolve(options.token()).then(
          (token) => {
            this.currentUser = userIdOf(token);
            cb({ token });
          },
          () => cb({ token: "" }),
        );
      },
    });
    this.wire();
  }

  /** The caller's user id, from the token (known once connected). */
  get userId(): UserId | null {
    return this.currentUser;
  }

  /** The Sync position reached so far; persist it to resume from it next time. */
  get cursor(): string | null {
    return this.cursorValue;
  }

  get connected(): boolean {
    return this.socket.connected;
  }

  /** Connect; resolves once connected and caught up, rejects if the handshake is refused. */
  connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onConnect = () => {
        this.socket.off("connect_error", onError);
        this.caughtUp().then(resolve, resolve); // a failed catch-up is reported on errors$
      };
      const onError = (err: Error & { data?: HandshakeError }) => {
        if (this.socket.active) return; // a transport error: socket.io keeps retrying
        this.socket.off("connect", onConnect);
        this.socket.off("connect_error", onError);
        reject(handshakeError(err));
      };
      this.socket.once("connect", onConnect);
      this.socket.on("connect_error", onError);
      this.state$.next("connecting");
      this.socket.connect();
    });
  }

  disconnect(): void {
    this.socket.disconnect();
  }

  /** Call any hub method; resolves with `data`, rejects with a ChatError. */
  async call<M extends MethodName>(method: M, ...args: ClientMethods[M]["args"]): Promise<ClientMethods[M]["result"]> {
    let ack: Ack<ClientMethods[M]["result"]>;
    try {
      // The typed overloads cannot follow a generic method name; the shape is checked above.
      const emit = this.socket.timeout(this.ackTimeoutMs).emitWithAck as unknown as (
        ev: string,
        ...a: unknown[]
      ) => Promise<Ack<ClientMethods[M]["result"]>>;
      ack = await emit.call(this.socket.timeout(this.ackTimeoutMs), method, ...args);
    } catch {
      throw new ChatError("timeout", `${method}: no answer within ${this.ackTimeoutMs} ms`);
    }
    if (!ack.ok) throw new ChatError(ack.error.code, ack.error.message);
    return ack.data;
  }

  /**
   * Send a message. Retries on timeouts and transient errors with the same
   * clientMessageId, which the server deduplicates: at most one copy is stored.
   */
  sendMessage(receiverId: UserId, text: string, clientMessageId: string = newId()): Promise<MessageId> {
    const me = this.requireUser();
    return this.retried(() => this.call("SendMessage", me, receiverId, text, clientMessageId));
  }

  /** Send to a group; retried like sendMessage, stored at most once per clientMessageId. */
  sendGroupMessage(groupId: GroupId, text: string, clientMessageId: string = newId()): Promise<MessageId> {
    return this.retried(() => this.call("SendGroupMessage", groupId, text, clientMessageId));
  }

  /**
   * Create a group with you as its admin. Retried with the same clientRequestId,
   * which the server deduplicates: at most one group is created.
   */
  createGroup(title: string, memberIds: UserId[], clientRequestId: string = newId()): Promise<GroupDto> {
    return this.retried(() => this.call("CreateGroup", title, memberIds, clientRequestId));
  }

  /** Calls `attempt` again after a timeout or a transient error, backing off; idempotent calls only. */
  private async retried<T>(attempt: () => Promise<T>): Promise<T> {
    let delayMs = 250;
    for (let n = 1; ; n++) {
      try {
        return await attempt();
      } catch (e) {
        if (!(e instanceof ChatError) || !RETRYABLE.has(e.code) || n >= this.sendAttempts) throw e;
        await sleep(delayMs);
        delayMs *= 2;
      }
    }
  }

  register(userName: string): Promise<Registered> {
    return this.call("RegisterUser", userName);
  }
  markReceived(messageId: MessageId): Promise<null> {
    return this.call("MessageReceived", messageId);
  }
  markRead(messageId: MessageId): Promise<null> {
    return this.call("MessageRead", messageId);
  }
  markConversationRead(otherUserId: UserId): Promise<number> {
    return this.call("MarkConversationRead", otherUserId);
  }
  history(otherUserId: UserId, skip = 0, take = 50): Promise<MessageDto[]> {
    return this.call("GetMessageHistory", this.requireUser(), otherUserId, skip, take);
  }
  conversations(): Promise<ConversationDto[]> {
    return this.call("GetConversations");
  }
  onlineUsers(): Promise<UserId[]> {
    return this.call("GetOnlineUsers");
  }
  isOnline(userId: UserId): Promise<boolean> {
    return this.call("GetOnlineStatus", userId);
  }
  /**
   * Hear presence changes of these users (besides the people you share a
   * conversation with, whom you always hear). Replaces the previous list and is
   * renewed on every reconnect; answers who of them is online now.
   */
  async watchPresence(userIds: UserId[]): Promise<Record<UserId, PresenceState>> {
    this.watched = [...new Set(userIds)];
    return this.call("SubscribePresence", this.watched);
  }
  setTyping(receiverId: UserId, isTyping: boolean): Promise<null> {
    return this.call("Typing", receiverId, isTyping);
  }

  getGroup(groupId: GroupId): Promise<GroupDto> {
    return this.call("GetGroup", groupId);
  }
  /** Admins only; members already in are ignored. */
  addGroupMembers(groupId: GroupId, userIds: UserId[]): Promise<GroupDto> {
    return this.call("AddGroupMembers", groupId, userIds);
  }
  /** An admin removes anyone; anyone may remove themself (see leaveGroup). */
  removeGroupMember(groupId: GroupId, userId: UserId): Promise<null> {
    return this.call("RemoveGroupMember", groupId, userId);
  }
  leaveGroup(groupId: GroupId): Promise<null> {
    return this.call("RemoveGroupMember", groupId, this.requireUser());
  }
  renameGroup(groupId: GroupId, title: string): Promise<GroupDto> {
    return this.call("RenameGroup", groupId, title);
  }
  /** Newest first; a member sees what was sent since they (last) joined. */
  groupHistory(groupId: GroupId, skip = 0, take = 50): Promise<MessageDto[]> {
    return this.call("GetGroupHistory", groupId, skip, take);
  }
  /** Moves your read position to the group's latest message; answers how many were marked. */
  markGroupRead(groupId: GroupId): Promise<number> {
    return this.call("MarkGroupRead", groupId);
  }
  setGroupTyping(groupId: GroupId, isTyping: boolean): Promise<null> {
    return this.call("GroupTyping", groupId, isTyping);
  }
  /** Who of its recipients got and read a message of yours (direct or group). */
  receipts(messageId: MessageId): Promise<Receipts> {
    return this.call("GetMessageReceipts", messageId);
  }

  /**
   * Pull every change since the cursor onto messages$; one catch-up runs at a time.
   * Asked again while one runs (a SyncRequired, say), it pulls once more after it:
   * the running one may have read its last page before what prompted the new ask.
   */
  sync(): Promise<void> {
    if (this.syncing) {
      this.resync = true;
      return this.syncing;
    }
    const pull = async (): Promise<void> => {
      do {
        this.resync = false;
        await this.pullChanges();
      } while (this.resync);
    };
    this.syncing = pull().finally(() => (this.syncing = null));
    return this.syncing;
  }

  private async pullChanges(): Promise<void> {
    for (;;) {
      const page = await this.call("Sync", this.cursorValue, 200);
      page.messages.forEach((m) => this.messages.next(m));
      // A server before protocol 2.0 has no `groups` in its answer.
      (page.groups ?? []).forEach((g) => this.groupChanges.next(g));
      this.cursorValue = page.cursor;
      if (!page.hasMore) return;
    }
  }

  private caughtUp(): Promise<void> {
    return this.syncing ?? Promise.resolve();
  }

  private requireUser(): UserId {
    if (!this.currentUser) throw new ChatError("unauthorized", "not connected yet");
    return this.currentUser;
  }

  private wire(): void {
    const s = this.socket;
    s.on("connect", () => {
      // Catch up on every (re)connect: RegisterUser hands over what is still
      // "sent", Sync brings receipts and anything else that changed meanwhile.
      const registering = this.options.userName
        ? this.register(this.options.userName).then(() => undefined)
        : Promise.resolve();
      if (this.watched.length) {
        // A subscription belongs to a socket: renew it on the new one.
        this.call("SubscribePresence", this.watched).catch((e) => this.errors.next(asChatError(e)));
      }
      this.syncing = registering
        .then(() => this.pullChanges())
        .then(() => this.ready.next())
        .catch((e) => this.errors.next(asChatError(e)))
        .finally(() => (this.syncing = null));
      this.state$.next("connected");
    });
    s.on("connect_error", (err: Error & { data?: HandshakeError }) => {
      this.errors.next(handshakeError(err));
      if (!s.active) this.state$.next("disconnected");
    });
    s.on("disconnect", (reason) => {
      if (this.state$.value === "expired" && reason === "io server disconnect") {
        // The server ended the session because the token expired: come back with a new one.
        this.state$.next("connecting");
        s.connect();
        return;
      }
      this.state$.next("disconnected");
    });
    s.on("Notify", (text) => this.notices.next(text));
    s.on("SyncRequired", () => void this.sync());
    s.on("ReceiveMessage", (_sender, _text, _id, _status, dto) => this.messages.next(dto));
    s.on("MessageSent", (dto) => this.messages.next(dto));
    s.on("MessageStatusChanged", (messageId, status) => this.statuses.next({ messageId, status }));
    s.on("UserStatusChanged", (userId, state) => this.presence.next({ userId, online: state === "Online" }));
    s.on("UserTyping", (userId, isTyping) => this.typing.next({ userId, isTyping }));
    s.on("SessionExpired", () => this.state$.next("expired"));
    s.on("ReceiveGroupMessage", (_groupId, dto) => this.messages.next(dto));
    s.on("GroupChanged", (group) => this.groupChanges.next(group));
    s.on("UserTypingInGroup", (groupId, userId, isTyping) => this.groupTyping.next({ groupId, userId, isTyping }));
    s.on("GroupReadPositionChanged", (groupId, messageId) => this.readPositions.next({ groupId, messageId }));
  }
}

const HANDSHAKE_CODES: ReadonlySet<ClientErrorCode> = new Set(["unauthorized", "rate_limited", "internal", "unavailable"]);

/** A refused handshake's code; a transport failure (no data) counts as unavailable. */
function handshakeError(err: Error & { data?: HandshakeError }): ChatError {
  const code = err.data?.code;
  return new ChatError(code && HANDSHAKE_CODES.has(code) ? code : "unavailable", err.data?.message ?? err.message);
}

function asChatError(e: unknown): ChatError {
  return e instanceof ChatError ? e : new ChatError("internal", String(e));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A random UUID; React Native and old browsers lack crypto.randomUUID. */
function newId(): string {
  const c = globalThis.crypto;
  if (c?.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c?.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The user id a token names: its `id` claim (numbers as decimal strings), else `sub`. */
export function userIdOf(token: string): UserId | null {
  try {
    const payload = token.split(".")[1] ?? "";
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json) as { id?: unknown; sub?: unknown };
    const id = claims.id ?? claims.sub;
    return typeof id === "number" || typeof id === "string" ? String(id) : null;
  } catch {
    return null;
  }
}
