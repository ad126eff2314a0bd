// Chat demo: plain JavaScript against the /chat hub and the /api REST endpoints.
// Everything the page knows comes from the server; it keeps only the session
// (token, user, open conversation) and the Sync cursor in browser storage.
//
// A conversation is named by a key: "d:<user id>" for a direct chat, "g:<group id>"
// for a group (a server-assigned group id could look like a user id).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TYPING_IDLE_MS = 2000;
  const TYPING_SHOWN_MS = 6000;
  const PAGE = 30;
  const CALL_TIMEOUT_MS = 10000;
  /** No event tells a sender that one member of several has read: ask again this often while some have not. */
  const RECEIPTS_EVERY_MS = 3000;
  /** Read-by counts are kept fresh for this many of your latest messages in the open group. */
  const RECEIPTS_FOR_LAST = 5;
  /** A burst of group messages is acknowledged with one MessageReceived per group (the latest covers the rest). */
  const RECEIVED_BATCH_MS = 50;
  const READ_AFTER_MS = 150;
  const RECEIPTS_AFTER_MS = 100;
  const RECEIPTS_GAP_MS = 1000;

  const state = {
    me: null, // user id
    name: null,
    token: null,
    socket: null,
    open: null, // key of the open conversation
    conversations: new Map(), // key -> ConversationDto ("kind" direct or group)
    threads: new Map(), // key -> {messages: Map(id -> dto), nextBefore, more, loaded, loading}
    groups: new Map(), // group id -> GroupDto as last heard
    left: new Set(), // group ids this user left or was removed from: their history stays on the page
    presence: new Map(), // user id -> online
    typing: new Map(), // key -> Map(user id -> timer clearing their indicator)
    receipts: new Map(), // message id -> receipts of one of my group messages
    asking: new Map(), // message id -> asked again while the answer was on its way
    early: new Map(), // message id -> a status that arrived before the ack of our own send
    sending: 0,
    readUpTo: new Map(), // group id -> latest message from others marked read
    readTimers: new Map(), // group id -> timer of a pending MarkGroupRead
    unacknowledged: new Map(), // group id -> latest message from others not yet acknowledged
    receivedTimer: null,
    receiptsTimer: null,
    receiptsAt: 0, // when the latest round of receipts questions went out
    membersOpen: false,
    typingTo: null, // key "is typing" was last sent to
    typingIdle: null,
    groupRequest: null, // clientRequestId of the group being created: a retry creates it once
  };

  // -- small helpers --------------------------------------------------------

  function toast(text, isError = false) {
    const el = document.createElement("div");
    el.className = isError ? "toast error" : "toast";
    el.textContent = text;
    el.title = "Click to dismiss";
    el.addEventListener("click", () => el.remove());
    $("toasts").append(el);
    setTimeout(() => el.remove(), isError ? 6000 : 2500);
  }

  async function request(method, args, loud) {
    let reply;
    try {
      reply = await state.socket.timeout(CALL_TIMEOUT_MS).emitWithAck(method, ...args);
    } catch {
      if (loud) toast(`${method}: no answer from the server`, true);
      throw new Error("timeout");
    }
    if (!reply.ok) {
      if (loud) toast(`${method} failed: ${reply.error.message} (${reply.error.code})`, true);
      const err = new Error(reply.error.message);
      err.code = reply.error.code;
      throw err;
    }
    return reply.data;
  }

  /** Call a hub method; resolve with data, or show the error to the person and reject. */
  const call = (method, ...args) => request(method, args, true);
  /** The same for what the page does on its own (receipts, read positions): the caller decides what to show. */
  const quietly = (method, ...args) => request(method, args, false);

  async function api(path) {
    const res = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
    const body = await res.json();
    if (!res.ok) {
      toast(`${path}: ${body.error?.message ?? res.status}`, true);
      throw new Error(body.error?.code ?? String(res.status));
    }
    return body;
  }

  function newId() {
    return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  }

  const cursorKey = () => `chat.cursor.${state.me}`;
  const directKey = (userId) => `d:${userId}`;
  const groupKey = (groupId) => `g:${groupId}`;
  const isGroupKey = (key) => key.startsWith("g:");
  const idOf = (key) => key.slice(2);
  const keyOf = (m) => (m.groupId ? groupKey(m.groupId) : directKey(m.senderId === state.me ? m.receiverId : m.senderId));
  const conversationKey = (c) => (c.kind === "group" ? groupKey(c.id) : directKey(c.id));
  const isLocal = (m) => m.id.startsWith("local-");
  const byTime = (a, b) => (a.timestamp === b.timestamp ? 0 : a.timestamp < b.timestamp ? -1 : 1);
  const connected = () => Boolean(state.socket?.connected);
  const visible = () => document.visibilityState === "visible";
  /** User ids typed into a box: separated by commas or spaces. */
  const idsIn = (text) => text.split(/[\s,]+/).filter(Boolean);

  function thread(key) {
    if (!state.threads.has(key)) {
      state.threads.set(key, { messages: new Map(), nextBefore: null, more: false, loaded: false, loading: false });
    }
    return state.threads.get(key);
  }

  /** A member's display name as the group knows it, else as the conversation list does. */
  function nameOf(userId, groupId) {
    const member = state.groups.get(groupId)?.members.find((m) => m.userId === userId);
    return member?.name ?? state.conversations.get(directKey(userId))?.name ?? userId;
  }

  // -- sign in / out --------------------------------------------------------

  async function signIn(userId, name) {
    const res = await fetch("api/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ userId, name: name || undefined }),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error?.message ?? `sign-in failed (${res.status})`);
    Object.assign(state, { me: body.userId, name: name || body.userId, token: body.token });
    sessionStorage.setItem("chat.session", JSON.stringify({ me: state.me, name: state.name, token: state.token }));
    $("signin").hidden = true;
    $("app").hidden = false;
    $("me").textContent = state.name === state.me ? state.me : `${state.name} (${state.me})`;
    connect();
  }

  function signOut() {
    state.socket?.disconnect();
    sessionStorage.clear();
    location.reload();
  }

  // -- connection -----------------------------------------------------------

  function connect() {
    const socket = io("/chat", {
      // Asked again on every reconnect; a fresh dev token once the old one has expired.
      auth: (cb) => cb({ token: state.token }),
    });
    state.socket = socket;

    socket.on("connect", async () => {
      $("connection").classList.add("up");
      try {
        await call("RegisterUser", state.name); // hands over pending messages as ReceiveMessage
        await catchUp(); // group messages and group changes missed meanwhile come from here
        await refreshConversations();
        if (state.open) await openThread(state.open, { reload: !thread(state.open).loaded });
      } catch {
        /* already shown */
      }
    });
    socket.on("connect_error", (err) => {
      toast(`Cannot connect: ${err.data?.message ?? err.message}`, true);
      if (err.data?.code === "unauthorized") renewToken().then(() => socket.connect());
    });
    socket.on("SessionExpired", () => {
      toast("Session expired, signing in again…");
      renewToken();
    });
    socket.on("disconnect", (reason) => {
      $("connection").classList.remove("up");
      // The server only hangs up on us when the session expired: come back with a new token.
      if (reason === "io server disconnect") setTimeout(() => socket.connect(), 500);
    });
    socket.on("Notify", (text) => toast(text));
    socket.on("ReceiveMessage", (_sender, _text, _id, _status, dto) => onMessage(dto));
    socket.on("ReceiveGroupMessage", (_groupId, dto) => onMessage(dto));
    socket.on("MessageSent", (dto) => onMessage(dto));
    socket.on("MessageStatusChanged", (id, status) => onStatus(id, status));
    socket.on("UserStatusChanged", (userId, presence) => onPresence(userId, presence === "Online"));
    socket.on("UserTyping", (userId, isTyping) => onTyping(directKey(userId), userId, isTyping));
    socket.on("UserTypingInGroup", (groupId, userId, isTyping) => onTyping(groupKey(groupId), userId, isTyping));
    socket.on("GroupChanged", (group) => onGroup(group));
    socket.on("GroupReadPositionChanged", (groupId) => onReadElsewhere(groupId));
    socket.on("SyncRequired", () => catchUp().catch(() => {}));
  }

  async function renewToken() {
    const res = await fetch("api/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ userId: state.me, name: state.name }),
    });
    if (res.ok) {
      state.token = (await res.json()).token;
      sessionStorage.setItem("chat.session", JSON.stringify({ me: state.me, name: state.name, token: state.token }));
    }
  }

  /** Everything that changed while this page was away, from the stored cursor. */
  async function catchUp() {
    let cursor = localStorage.getItem(cursorKey());
    for (;;) {
      const page = await call("Sync", cursor, 200);
      // Groups first: a message of a group new to this page then finds its title and members.
      (page.groups ?? []).forEach(onGroup);
      page.messages.forEach((m) => onMessage(m, { fromSync: true }));
      cursor = page.cursor;
      localStorage.setItem(cursorKey(), cursor);
      if (!page.hasMore) return;
    }
  }

  // -- incoming -------------------------------------------------------------

  function onMessage(m, { fromSync = false } = {}) {
    const key = keyOf(m);
    const group = Boolean(m.groupId);
    // A group thread holds what was loaded and what came after; one never opened loads its
    // history when it is (skip-based paging needs what it holds to be the newest run).
    const t = group ? state.threads.get(key) : thread(key);
    if (t && (!group || t.loaded || t.loading)) {
      const known = t.messages.get(m.id);
      if (known && rank(known.status) > rank(m.status)) m = { ...m, status: known.status };
      t.messages.set(m.id, m);
    }
    if (m.senderId !== state.me) {
      if (group) {
        // The aggregate is past "sent" only once everyone, this user too, has it.
        if (m.status === "sent") acknowledge(m);
      } else if (m.status === "sent" && !fromSync) {
        call("MessageReceived", m.id).catch(() => {});
      }
      clearTyping(key, m.senderId);
    }
    if (key === state.open) {
      renderThread();
      readVisible();
      if (group) refreshReceipts();
    }
    scheduleConversations();
  }

  /** Receiving a group message moves this user's position past every earlier one: one call per group. */
  function acknowledge(m) {
    if (state.left.has(m.groupId)) return;
    const known = state.unacknowledged.get(m.groupId);
    if (!known || known.timestamp <= m.timestamp) state.unacknowledged.set(m.groupId, m);
    state.receivedTimer ??= setTimeout(() => {
      state.receivedTimer = null;
      for (const latest of state.unacknowledged.values()) quietly("MessageReceived", latest.id).catch(() => {});
      state.unacknowledged.clear();
    }, RECEIVED_BATCH_MS);
  }

  function onStatus(id, status) {
    let found = false;
    for (const t of state.threads.values()) {
      const m = t.messages.get(id);
      if (!m) continue;
      found = true;
      if (rank(status) > rank(m.status)) m.status = status;
    }
    // The ack of our own send may still be on its way: keep the status for it.
    if (!found && state.sending) state.early.set(id, status);
    if (state.open) renderThread();
    if (state.open && isGroupKey(state.open)) refreshReceipts();
    scheduleConversations();
  }

  function onPresence(userId, online) {
    state.presence.set(userId, online);
    const c = state.conversations.get(directKey(userId));
    if (c) c.isActive = online;
    renderConversations();
    if (state.open === directKey(userId)) $("peer-dot").classList.toggle("online", online);
    renderMembers();
  }

  function onTyping(key, userId, isTyping) {
    const users = state.typing.get(key) ?? new Map();
    state.typing.set(key, users);
    clearTimeout(users.get(userId));
    if (isTyping) {
      users.set(userId, setTimeout(() => clearTyping(key, userId), TYPING_SHOWN_MS));
    } else {
      users.delete(userId);
    }
    renderTyping();
  }

  function clearTyping(key, userId) {
    const users = state.typing.get(key);
    if (!users?.has(userId)) return;
    clearTimeout(users.get(userId));
    users.delete(userId);
    renderTyping();
  }

  /** A group was created, renamed, or its members changed (live, or from Sync). */
  function onGroup(g) {
    const key = groupKey(g.id);
    const member = g.members.some((m) => m.userId === state.me);
    const known = state.conversations.get(key);
    // A group this page never knew and the user is not in is none of its business.
    if (!member && !known && !state.groups.has(g.id) && state.open !== key) return;
    state.groups.set(g.id, g);
    if (member) {
      state.left.delete(g.id);
    } else {
      state.left.add(g.id);
      if (state.typingTo === key) state.typingTo = null;
    }
    if (known) {
      Object.assign(known, { name: g.title, avatar: g.avatar, memberCount: g.memberCount });
    } else {
      state.conversations.set(key, {
        kind: "group", id: g.id, name: g.title, avatar: g.avatar, previewMessage: "",
        lastActive: g.createdAt, isActive: false, unreadCount: 0, memberCount: g.memberCount,
      });
    }
    renderConversations();
    if (state.open === key) {
      renderHeader();
      renderMembers();
      if (member && state.membersOpen) watchMembers(g);
    }
    scheduleConversations();
  }

  /** This user read the group on another device: its unread badge goes here too. */
  function onReadElsewhere(groupId) {
    const c = state.conversations.get(groupKey(groupId));
    if (c) c.unreadCount = 0;
    renderConversations();
    if (state.open === groupKey(groupId)) refreshReceipts();
    scheduleConversations();
  }

  function markLeft(groupId) {
    state.left.add(groupId);
    renderConversations();
    if (state.open === groupKey(groupId)) {
      renderHeader();
      renderThread();
      renderMembers();
    }
  }

  const rank = (s) => ({ pending: -1, failed: -1, sent: 0, delivered: 1, read: 2 })[s] ?? 0;

  // -- conversations --------------------------------------------------------

  let refreshTimer = null;
  function scheduleConversations() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => refreshConversations().catch(() => {}), 150);
  }

  async function refreshConversations() {
    const list = await call("GetConversations");
    const next = new Map(list.map((c) => [conversationKey(c), c]));
    // The server lists only groups the user is in; one they left stays, marked, with its history.
    for (const [key, c] of state.conversations) {
      if (c.kind === "group" && state.left.has(c.id) && !next.has(key)) next.set(key, c);
    }
    state.conversations = next;
    for (const c of list) if (c.kind !== "group") state.presence.set(c.id, c.isActive);
    renderConversations();
    if (state.open) renderHeader();
  }

  function renderConversations() {
    const ul = $("conversations");
    ul.replaceChildren();
    const items = [...state.conversations.values()].sort((a, b) =>
      a.lastActive === b.lastActive ? 0 : a.lastActive < b.lastActive ? 1 : -1,
    );
    if (state.open && !isGroupKey(state.open) && !state.conversations.has(state.open)) {
      const peer = idOf(state.open);
      items.unshift({ kind: "direct", id: peer, name: peer, previewMessage: "New conversation", unreadCount: 0, isActive: false });
    }
    for (const c of items) {
      const key = conversationKey(c);
      const group = c.kind === "group";
      const left = group && state.left.has(c.id);
      const li = document.createElement("li");
      li.className = `conversation${key === state.open ? " active" : ""}${group ? " group" : ""}${left ? " left" : ""}`;
      li.dataset.kind = group ? "group" : "direct";
      li.dataset.id = c.id;
      if (!group) li.dataset.peer = c.id;
      const icon = document.createElement("span");
      if (group) {
        icon.className = "group-icon";
        icon.textContent = [...(c.name || "#")][0].toUpperCase();
        icon.setAttribute("aria-hidden", "true");
      } else {
        icon.className = `dot${c.isActive ? " online" : ""}`;
      }
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = c.name;
      const badge = document.createElement("span");
      badge.className = "badge";
      // What is open on a visible page is being read as it arrives.
      const unread = left || (key === state.open && visible()) ? 0 : c.unreadCount;
      badge.textContent = String(unread);
      badge.hidden = !unread;
      const preview = document.createElement("span");
      const typing = typingText(key);
      preview.className = `preview${typing ? " typing-now" : ""}`;
      preview.textContent = left
        ? "You are no longer a member"
        : typing ?? (c.previewMessage || (group ? `${c.memberCount} members` : ""));
      li.append(icon, name, badge, preview);
      li.addEventListener("click", () => openThread(key).catch(() => {}));
      ul.append(li);
    }
  }

  // -- the open thread ------------------------------------------------------

  async function openThread(key, { reload = false } = {}) {
    if (state.typingTo && state.typingTo !== key) stopTyping();
    if (state.open !== key) state.membersOpen = false;
    state.open = key;
    sessionStorage.setItem("chat.open", key);
    $("app").classList.add("in-thread");
    const id = idOf(key);
    renderHeader();
    renderMembers();
    if (isGroupKey(key)) {
      if (!state.groups.has(id) && !state.left.has(id)) await loadGroup(id);
      // A subscription lives as long as its socket: a reconnect asks again.
      const g = state.groups.get(id);
      if (state.membersOpen && g && !state.left.has(id)) watchMembers(g);
    } else if (!state.conversations.has(key)) {
      // No conversation yet, so the server would not tell us about them: ask.
      call("SubscribePresence", [id])
        .then((now) => {
          state.presence.set(id, now[id] === "Online");
          if (state.open === key) $("peer-dot").classList.toggle("online", now[id] === "Online");
        })
        .catch(() => {});
    }
    const t = thread(key);
    if (!t.loaded || reload) await loadOlder(key, true);
    if (state.open !== key) return; // the person moved on meanwhile
    renderConversations();
    renderHeader();
    renderThread(true);
    renderTyping();
    renderMembers();
    readVisible();
    refreshReceipts();
    if (!$("composer").hidden) $("message-input").focus();
  }

  async function loadGroup(groupId) {
    try {
      onGroup(await quietly("GetGroup", groupId));
    } catch (err) {
      if (err.code === "forbidden" || err.code === "not_found") markLeft(groupId);
      else toast(`Cannot load the group: ${err.message}`, true);
    }
  }

  /** One page of history older than what is on screen: REST for a direct chat, GetGroupHistory for a group. */
  async function loadOlder(key, first = false) {
    const t = thread(key);
    if (!isGroupKey(key)) {
      const params = new URLSearchParams({ limit: String(PAGE) });
      if (!first && t.nextBefore) params.set("before", t.nextBefore);
      const page = await api(`api/conversations/${encodeURIComponent(idOf(key))}/messages?${params}`);
      page.messages.forEach((m) => merge(t, m));
      if (first || t.nextBefore) t.nextBefore = page.nextBefore;
      t.loaded = true;
      return;
    }
    const groupId = idOf(key);
    if (state.left.has(groupId)) {
      t.loaded = true; // a former member may not read it any more: what is here stays
      return;
    }
    // Newest first: what this thread holds is the newest run, so skip past all of it.
    const skip = first ? 0 : [...t.messages.values()].filter((m) => !isLocal(m)).length;
    t.loading = true;
    try {
      const page = await quietly("GetGroupHistory", groupId, skip, PAGE);
      page.forEach((m) => merge(t, m));
      if (!first || !t.loaded) t.more = page.length === PAGE;
      t.loaded = true;
    } catch (err) {
      if (err.code === "forbidden") markLeft(groupId);
      else toast(`Cannot load the group's messages: ${err.message}`, true);
    } finally {
      t.loading = false;
    }
  }

  function merge(t, m) {
    const known = t.messages.get(m.id);
    if (!known || rank(m.status) > rank(known.status)) t.messages.set(m.id, m);
  }

  function renderHeader() {
    const key = state.open;
    if (!key) return;
    const id = idOf(key);
    const c = state.conversations.get(key);
    const group = isGroupKey(key);
    const left = group && state.left.has(id);
    const g = group ? state.groups.get(id) : null;
    $("peer-name").textContent = g?.title ?? c?.name ?? id;
    $("peer-dot").hidden = group;
    if (!group) $("peer-dot").classList.toggle("online", Boolean(state.presence.get(id) ?? c?.isActive));
    const toggle = $("members-toggle");
    toggle.hidden = !group;
    const count = g?.memberCount ?? c?.memberCount;
    toggle.textContent = count ? `${count} member${count === 1 ? "" : "s"}` : "Members";
    toggle.setAttribute("aria-expanded", String(state.membersOpen));
    $("left-note").hidden = !left;
    $("composer").hidden = left;
  }

  function renderThread(scrollToEnd = false) {
    if (!state.open) return;
    const box = $("messages");
    const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    const t = thread(state.open);
    const sorted = [...t.messages.values()].sort(byTime);
    const ol = $("message-list");
    ol.replaceChildren(...sorted.map(renderMessage));
    const group = isGroupKey(state.open);
    $("load-older").hidden = group ? !t.more || state.left.has(idOf(state.open)) : !t.nextBefore;
    if (scrollToEnd || nearEnd) box.scrollTop = box.scrollHeight;
  }

  function renderMessage(m) {
    const li = document.createElement("li");
    const mine = m.senderId === state.me;
    li.className = `message${mine ? " mine" : ""}${m.status === "failed" ? " failed" : ""}`;
    li.dataset.id = m.id;
    li.dataset.status = m.status;
    if (m.groupId && !mine) {
      const sender = document.createElement("div");
      sender.className = "sender";
      sender.textContent = nameOf(m.senderId, m.groupId);
      li.append(sender);
    }
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = m.text;
    const meta = document.createElement("div");
    meta.className = "meta";
    const time = document.createElement("time");
    time.dateTime = m.timestamp;
    time.textContent = new Date(m.timestamp).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    meta.append(time);
    if (mine) {
      const r = m.groupId ? state.receipts.get(m.id) : null;
      if (r && r.recipientCount > 0) {
        const readBy = document.createElement("span");
        readBy.className = `read-by${r.readCount === r.recipientCount ? " all" : ""}`;
        readBy.dataset.read = String(r.readCount);
        readBy.dataset.of = String(r.recipientCount);
        readBy.textContent = `read by ${r.readCount} of ${r.recipientCount}`;
        if (r.readBy?.length) readBy.title = `Read by ${r.readBy.map((u) => nameOf(u, m.groupId)).join(", ")}`;
        meta.append(readBy);
      }
      const ticks = document.createElement("span");
      ticks.className = `ticks ${m.status}`;
      ticks.textContent = { pending: "🕓", failed: "!", sent: "✓", delivered: "✓✓", read: "✓✓" }[m.status];
      ticks.title = m.status;
      meta.append(ticks);
    }
    li.append(text, meta);
    return li;
  }

  /** "typing…" in a direct chat; who is typing in a group. Null when nobody is. */
  function typingText(key) {
    const users = [...(state.typing.get(key)?.keys() ?? [])];
    if (!users.length) return null;
    if (!isGroupKey(key)) return "typing…";
    const names = users.map((u) => nameOf(u, idOf(key)));
    if (names.length === 1) return `${names[0]} is typing…`;
    if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
    return `${names.length} people are typing…`;
  }

  function renderTyping() {
    const text = state.open ? typingText(state.open) : null;
    $("typing").hidden = !text;
    if (text) $("typing").textContent = text;
    renderConversations();
  }

  /** Read receipts for what the person can see: the open thread of a visible page. */
  function readVisible() {
    const key = state.open;
    if (!key || !visible()) return;
    if (isGroupKey(key)) {
      markGroupRead(idOf(key));
    } else {
      for (const m of thread(key).messages.values()) {
        if (m.receiverId === state.me && m.status !== "read") {
          m.status = "read";
          call("MessageRead", m.id).catch(() => {});
        }
      }
    }
    scheduleConversations();
  }

  /** Move the read position to the group's latest message, a moment later so a burst costs one call. */
  function markGroupRead(groupId) {
    clearTimeout(state.readTimers.get(groupId));
    state.readTimers.set(groupId, setTimeout(async () => {
      state.readTimers.delete(groupId);
      const key = groupKey(groupId);
      const c = state.conversations.get(key);
      const latest = [...thread(key).messages.values()].filter((m) => m.senderId !== state.me).sort(byTime).at(-1);
      if (state.left.has(groupId) || !connected()) return;
      if (!c?.unreadCount && (!latest || state.readUpTo.get(groupId) === latest.id)) return;
      try {
        await quietly("MarkGroupRead", groupId);
        if (latest) state.readUpTo.set(groupId, latest.id);
        if (c) c.unreadCount = 0;
        renderConversations();
      } catch (err) {
        if (err.code === "forbidden") markLeft(groupId); // tried again on the next message otherwise
      }
    }, READ_AFTER_MS));
  }

  /** My latest messages in a group whose read-by count may still move (it never moves back). */
  function waitingReceipts(key) {
    return [...thread(key).messages.values()]
      .filter((m) => m.senderId === state.me && !isLocal(m))
      .sort(byTime)
      .slice(-RECEIPTS_FOR_LAST)
      .filter((m) => {
        const r = state.receipts.get(m.id);
        return !r || r.readCount < r.recipientCount;
      });
  }

  /**
   * Ask for the read-by counts of my latest messages in the open group. A burst of events
   * (thirty messages from my other device, say) costs one round a second, not one each:
   * the calls spend the same budget as everything else this user does.
   */
  function refreshReceipts() {
    if (state.receiptsTimer) return;
    const wait = Math.max(RECEIPTS_AFTER_MS, state.receiptsAt + RECEIPTS_GAP_MS - Date.now());
    state.receiptsTimer = setTimeout(() => {
      state.receiptsTimer = null;
      state.receiptsAt = Date.now();
      const key = state.open;
      if (!key || !isGroupKey(key) || state.left.has(idOf(key)) || !connected()) return;
      for (const m of waitingReceipts(key)) askReceipts(key, m.id);
    }, wait);
  }

  function askReceipts(key, messageId) {
    // One question per message at a time; one asked meanwhile is asked again after it,
    // so an answer older than the latest event is never the last word.
    if (state.asking.has(messageId)) return void state.asking.set(messageId, true);
    state.asking.set(messageId, false);
    quietly("GetMessageReceipts", messageId)
      .then((r) => {
        state.receipts.set(messageId, r);
        if (state.open === key) renderThread();
      })
      .catch(() => {}) // the next event or poll asks again
      .finally(() => {
        const again = state.asking.get(messageId);
        state.asking.delete(messageId);
        if (again && state.open === key) askReceipts(key, messageId);
      });
  }

  // -- members --------------------------------------------------------------

  function renderMembers() {
    const key = state.open;
    const show = Boolean(key && isGroupKey(key) && state.membersOpen);
    $("members-panel").hidden = !show;
    $("app").classList.toggle("with-members", show);
    $("members-toggle").setAttribute("aria-expanded", String(show));
    if (!show) return;
    const groupId = idOf(key);
    const g = state.groups.get(groupId);
    const left = state.left.has(groupId);
    const admin = !left && g?.members.some((m) => m.userId === state.me && m.role === "admin");
    const members = [...(g?.members ?? [])].sort((a, b) => (a.role === b.role ? 0 : a.role === "admin" ? -1 : 1));
    $("members-title").textContent = g ? `${g.memberCount} member${g.memberCount === 1 ? "" : "s"}` : "Members";
    $("member-list").replaceChildren(...members.map((m) => renderMember(m, admin)));
    $("add-members-form").hidden = !admin;
    $("leave-group").hidden = left || !g;
  }

  function renderMember(m, admin) {
    const li = document.createElement("li");
    li.className = "member";
    li.dataset.user = m.userId;
    li.dataset.role = m.role;
    const me = m.userId === state.me;
    const dot = document.createElement("span");
    dot.className = `dot${me || state.presence.get(m.userId) ? " online" : ""}`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = me ? `${m.name} (you)` : m.name;
    name.title = m.userId;
    const role = document.createElement("span");
    role.className = `role ${m.role}`;
    role.textContent = m.role;
    li.append(dot, name, role);
    if (admin && !me) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${m.name}`);
      remove.addEventListener("click", () => removeMember(m.userId));
      li.append(remove);
    }
    return li;
  }

  /** Group members are not presence contacts: the panel subscribes to the open group's members. */
  function watchMembers(g) {
    const ids = g.members.map((m) => m.userId).filter((u) => u !== state.me).slice(0, 500);
    quietly("SubscribePresence", ids)
      .then((now) => {
        for (const [id, word] of Object.entries(now)) state.presence.set(id, word === "Online");
        renderMembers();
      })
      .catch(() => {}); // the dots stay grey; the next open asks again
  }

  function openGroup() {
    return state.open && isGroupKey(state.open) ? idOf(state.open) : null;
  }

  async function removeMember(userId) {
    const groupId = openGroup();
    if (!groupId) return;
    try {
      await call("RemoveGroupMember", groupId, userId);
    } catch {
      /* shown */
    }
    // GroupChanged, which reaches every member and the one removed, updates the panel.
  }

  async function leaveGroup() {
    const groupId = openGroup();
    if (!groupId) return;
    stopTyping();
    try {
      await call("RemoveGroupMember", groupId, state.me);
      markLeft(groupId); // GroupChanged says so too; do not wait for it
    } catch {
      /* shown */
    }
  }

  async function addMembers(text) {
    const groupId = openGroup();
    const ids = idsIn(text);
    if (!groupId || !ids.length) return false;
    try {
      onGroup(await call("AddGroupMembers", groupId, ids));
      return true;
    } catch {
      return false; // shown; the ids stay in the box to fix
    }
  }

  // -- a new group ----------------------------------------------------------

  function showGroupForm(show) {
    $("new-group").hidden = !show;
    $("new-group-toggle").setAttribute("aria-expanded", String(show));
    if (!show) return;
    state.groupRequest = newId();
    const people = [...state.conversations.values()].filter((c) => c.kind !== "group");
    const boxes = people.map((c) => {
      const label = document.createElement("label");
      label.className = "known";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = c.id;
      box.name = "known";
      const name = document.createElement("span");
      name.textContent = c.name === c.id ? c.id : `${c.name} (${c.id})`;
      label.append(box, name);
      return label;
    });
    $("group-known").hidden = !boxes.length;
    $("group-known-list").replaceChildren(...boxes);
    $("group-title").focus();
  }

  async function createGroup() {
    const title = $("group-title").value.trim();
    if (!title) return toast("Give the group a title", true);
    const picked = [...document.querySelectorAll("#group-known-list input:checked")].map((b) => b.value);
    const ids = [...new Set([...picked, ...idsIn($("group-ids").value)])].filter((u) => u !== state.me);
    $("create-group").disabled = true;
    try {
      // The same clientRequestId on a retry: the server creates the group once.
      const g = await call("CreateGroup", title, ids, state.groupRequest);
      $("new-group").reset();
      showGroupForm(false);
      onGroup(g);
      await openThread(groupKey(g.id));
    } catch (err) {
      // Refused: nothing was created, so a corrected form is a new request. Unanswered: the same one.
      if (err.code && err.code !== "unavailable") state.groupRequest = newId();
    } finally {
      $("create-group").disabled = false;
    }
  }

  // -- outgoing -------------------------------------------------------------

  async function send(text) {
    const key = state.open;
    const group = isGroupKey(key);
    const id = idOf(key);
    const clientMessageId = newId();
    const t = thread(key);
    const draft = {
      id: `local-${clientMessageId}`, senderId: state.me, receiverId: group ? null : id, groupId: group ? id : null,
      text, status: "pending", timestamp: new Date().toISOString(), clientMessageId,
    };
    t.messages.set(draft.id, draft);
    renderThread(true);
    state.sending++;
    try {
      // Same clientMessageId on every attempt: the server stores the message once.
      const messageId = group
        ? await call("SendGroupMessage", id, text, clientMessageId)
        : await call("SendMessage", state.me, id, text, clientMessageId);
      t.messages.delete(draft.id);
      const early = state.early.get(messageId);
      state.early.delete(messageId);
      if (!t.messages.has(messageId)) {
        t.messages.set(messageId, { ...draft, id: messageId, status: early ?? "sent" });
      }
      if (group && state.open === key) refreshReceipts();
    } catch {
      draft.status = "failed";
    } finally {
      if (--state.sending === 0) state.early.clear();
    }
    if (state.open === key) renderThread(true);
    scheduleConversations();
  }

  function typingChanged() {
    const key = state.open;
    if (!key || (isGroupKey(key) && state.left.has(idOf(key)))) return;
    if (state.typingTo !== key) {
      stopTyping();
      state.typingTo = key;
      sendTyping(key, true);
    }
    clearTimeout(state.typingIdle);
    state.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(state.typingIdle);
    if (state.typingTo) sendTyping(state.typingTo, false);
    state.typingTo = null;
  }

  function sendTyping(key, isTyping) {
    const id = idOf(key);
    if (isGroupKey(key)) {
      if (!state.left.has(id)) call("GroupTyping", id, isTyping).catch(() => {});
    } else {
      call("Typing", id, isTyping).catch(() => {});
    }
  }

  // -- wiring ---------------------------------------------------------------

  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("signin-error").textContent = "";
    try {
      await signIn($("user-id").value.trim(), $("display-name").value.trim());
    } catch (err) {
      $("signin-error").textContent = err.message;
    }
  });
  $("signout").addEventListener("click", signOut);
  $("new-conversation").addEventListener("submit", (e) => {
    e.preventDefault();
    const peer = $("new-peer").value.trim();
    if (!peer) return;
    if (peer === state.me) return toast("Pick someone else to talk to", true);
    $("new-peer").value = "";
    openThread(directKey(peer)).catch(() => {});
  });
  $("new-group-toggle").addEventListener("click", () => showGroupForm($("new-group").hidden));
  $("cancel-group").addEventListener("click", () => {
    $("new-group").reset();
    showGroupForm(false);
  });
  $("new-group").addEventListener("submit", (e) => {
    e.preventDefault();
    createGroup();
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("message-input");
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    stopTyping();
    send(text);
  });
  $("message-input").addEventListener("input", typingChanged);
  $("message-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("load-older").addEventListener("click", async () => {
    const key = state.open;
    const box = $("messages");
    const fromEnd = box.scrollHeight - box.scrollTop;
    await loadOlder(key);
    if (state.open !== key) return;
    renderThread();
    box.scrollTop = box.scrollHeight - fromEnd;
  });
  $("back").addEventListener("click", () => {
    stopTyping();
    state.open = null;
    state.membersOpen = false;
    sessionStorage.removeItem("chat.open");
    $("app").classList.remove("in-thread");
    renderMembers();
    renderConversations();
  });
  $("members-toggle").addEventListener("click", () => {
    state.membersOpen = !state.membersOpen;
    renderMembers();
    const g = state.groups.get(openGroup());
    if (state.membersOpen && g && !state.left.has(g.id)) watchMembers(g);
  });
  $("members-close").addEventListener("click", () => {
    state.membersOpen = false;
    renderMembers();
  });
  $("add-members-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (await addMembers($("add-members").value)) $("add-members").value = "";
  });
  $("leave-group").addEventListener("click", leaveGroup);
  document.addEventListener("visibilitychange", readVisible);
  // While some of my latest messages in the open group are unread by someone, ask how many.
  setInterval(() => {
    if (visible()) refreshReceipts();
  }, RECEIPTS_EVERY_MS);

  // A reload keeps the session and the open conversation; the thread comes back from history.
  const saved = JSON.parse(sessionStorage.getItem("chat.session") || "null");
  if (saved) {
    Object.assign(state, saved);
    state.open = sessionStorage.getItem("chat.open");
    $("signin").hidden = true;
    $("app").hidden = false;
    $("me").textContent = state.name === state.me ? state.me : `${state.name} (${state.me})`;
    if (state.open) $("app").classList.add("in-thread");
    connect();
  }
})();
