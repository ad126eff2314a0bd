// Chat demo: plain JavaScript against the /chat hub and the /api REST endpoints.
// Everything the page knows comes from the server; it keeps only the session
// (token, user, open thread) and the Sync cursor in browser storage.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TYPING_IDLE_MS = 2000;
  const TYPING_SHOWN_MS = 6000;
  const PAGE = 30;

  const state = {
    me: null, // user id
    name: null,
    token: null,
    socket: null,
    peer: null, // open thread
    conversations: new Map(), // peer id -> ConversationDto
    threads: new Map(), // peer id -> {messages: Map(id -> dto), nextBefore, loaded}
    typingTimers: new Map(), // peer id -> timer clearing their typing indicator
    typingSent: false,
    typingIdle: null,
  };

  // -- small helpers --------------------------------------------------------

  function toast(text, isError = false) {
    const el = document.createElement("div");
    el.className = isError ? "toast error" : "toast";
    el.textContent = text;
    $("toasts").append(el);
    setTimeout(() => el.remove(), isError ? 6000 : 2500);
  }

  /** Call a hub method; resolve with data, or show the error to the person and reject. */
  async function call(method, ...args) {
    let reply;
    try {
      reply = await state.socket.timeout(10000).emitWithAck(method, ...args);
    } catch {
      toast(`${method}: no answer from the server`, true);
      throw new Error("timeout");
    }
    if (!reply.ok) {
      toast(`${method} failed: ${reply.error.message} (${reply.error.code})`, true);
      const err = new Error(reply.error.message);
      err.code = reply.error.code;
      throw err;
    }
    return reply.data;
  }

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

  function thread(peer) {
    if (!state.threads.has(peer)) state.threads.set(peer, { messages: new Map(), nextBefore: null, loaded: false });
    return state.threads.get(peer);
  }

  const peerOf = (m) => (m.senderId === state.me ? m.receiverId : m.senderId);

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
        await catchUp();
        await refreshConversations();
        if (state.peer) await openThread(state.peer, { reload: !thread(state.peer).loaded });
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
    socket.on("MessageSent", (dto) => onMessage(dto));
    socket.on("MessageStatusChanged", (id, status) => onStatus(id, status));
    socket.on("UserStatusChanged", (userId, presence) => onPresence(userId, presence === "Online"));
    socket.on("UserTyping", (userId, isTyping) => onTyping(userId, isTyping));
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
      page.messages.forEach((m) => onMessage(m, { fromSync: true }));
      cursor = page.cursor;
      localStorage.setItem(cursorKey(), cursor);
      if (!page.hasMore) return;
    }
  }

  // -- incoming -------------------------------------------------------------

  function onMessage(m, { fromSync = false } = {}) {
    const peer = peerOf(m);
    const t = thread(peer);
    const known = t.messages.get(m.id);
    if (known && rank(known.status) > rank(m.status)) m = { ...m, status: known.status };
    t.messages.set(m.id, m);
    if (m.receiverId === state.me && m.status === "sent" && !fromSync) {
      call("MessageReceived", m.id).catch(() => {});
    }
    if (m.senderId === peer) clearTyping(peer);
    if (peer === state.peer) {
      renderThread();
      readVisible();
    }
    scheduleConversations();
  }

  function onStatus(id, status) {
    for (const t of state.threads.values()) {
      const m = t.messages.get(id);
      if (m && rank(status) > rank(m.status)) m.status = status;
    }
    if (state.peer) renderThread();
    scheduleConversations();
  }

  function onPresence(userId, online) {
    const c = state.conversations.get(userId);
    if (c) c.isActive = online;
    renderConversations();
    if (userId === state.peer) $("peer-dot").classList.toggle("online", online);
  }

  function onTyping(userId, isTyping) {
    clearTimeout(state.typingTimers.get(userId));
    if (isTyping) {
      state.typingTimers.set(userId, setTimeout(() => clearTyping(userId), TYPING_SHOWN_MS));
    } else {
      state.typingTimers.delete(userId);
    }
    renderTyping();
  }

  function clearTyping(userId) {
    clearTimeout(state.typingTimers.get(userId));
    state.typingTimers.delete(userId);
    renderTyping();
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
    state.conversations = new Map(list.map((c) => [c.id, c]));
    renderConversations();
    if (state.peer) {
      const c = state.conversations.get(state.peer);
      if (c) {
        $("peer-name").textContent = c.name;
        $("peer-dot").classList.toggle("online", c.isActive);
      }
    }
  }

  function renderConversations() {
    const ul = $("conversations");
    ul.replaceChildren();
    const items = [...state.conversations.values()];
    if (state.peer && !state.conversations.has(state.peer)) {
      items.unshift({ id: state.peer, name: state.peer, previewMessage: "New conversation", unreadCount: 0, isActive: false });
    }
    for (const c of items) {
      const li = document.createElement("li");
      li.className = `conversation${c.id === state.peer ? " active" : ""}`;
      li.dataset.peer = c.id;
      const dot = document.createElement("span");
      dot.className = `dot${c.isActive ? " online" : ""}`;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = c.name;
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = String(c.unreadCount);
      badge.hidden = !c.unreadCount;
      const preview = document.createElement("span");
      const typing = state.typingTimers.has(c.id);
      preview.className = `preview${typing ? " typing-now" : ""}`;
      preview.textContent = typing ? "typing…" : c.previewMessage;
      li.append(dot, name, badge, preview);
      li.addEventListener("click", () => openThread(c.id));
      ul.append(li);
    }
  }

  // -- the open thread ------------------------------------------------------

  async function openThread(peer, { reload = false } = {}) {
    state.peer = peer;
    sessionStorage.setItem("chat.peer", peer);
    $("app").classList.add("in-thread");
    $("composer").hidden = false;
    const c = state.conversations.get(peer);
    $("peer-name").textContent = c ? c.name : peer;
    $("peer-dot").classList.toggle("online", Boolean(c?.isActive));
    if (!c) {
      // No conversation yet, so the server would not tell us about them: ask.
      call("SubscribePresence", [peer])
        .then((now) => state.peer === peer && $("peer-dot").classList.toggle("online", now[peer] === "Online"))
        .catch(() => {});
    }
    const t = thread(peer);
    if (!t.loaded || reload) await loadOlder(peer, true);
    renderConversations();
    renderThread(true);
    renderTyping();
    readVisible();
    $("message-input").focus();
  }

  /** One page of history through the REST API, older than what is on screen. */
  async function loadOlder(peer, first = false) {
    const t = thread(peer);
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (!first && t.nextBefore) params.set("before", t.nextBefore);
    const page = await api(`api/conversations/${encodeURIComponent(peer)}/messages?${params}`);
    page.messages.forEach((m) => {
      if (!t.messages.has(m.id) || rank(m.status) > rank(t.messages.get(m.id).status)) t.messages.set(m.id, m);
    });
    if (first || t.nextBefore) t.nextBefore = page.nextBefore;
    t.loaded = true;
  }

  function renderThread(scrollToEnd = false) {
    const box = $("messages");
    const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    const t = thread(state.peer);
    const sorted = [...t.messages.values()].sort((a, b) =>
      a.timestamp === b.timestamp ? 0 : a.timestamp < b.timestamp ? -1 : 1,
    );
    const ol = $("message-list");
    ol.replaceChildren(...sorted.map(renderMessage));
    $("load-older").hidden = !t.nextBefore;
    if (scrollToEnd || nearEnd) box.scrollTop = box.scrollHeight;
  }

  function renderMessage(m) {
    const li = document.createElement("li");
    const mine = m.senderId === state.me;
    li.className = `message${mine ? " mine" : ""}${m.status === "failed" ? " failed" : ""}`;
    li.dataset.id = m.id;
    li.dataset.status = m.status;
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
      const ticks = document.createElement("span");
      ticks.className = `ticks ${m.status}`;
      ticks.textContent = { pending: "🕓", failed: "!", sent: "✓", delivered: "✓✓", read: "✓✓" }[m.status];
      ticks.title = m.status;
      meta.append(ticks);
    }
    li.append(text, meta);
    return li;
  }

  function renderTyping() {
    $("typing").hidden = !(state.peer && state.typingTimers.has(state.peer));
    renderConversations();
  }

  /** Read receipts for what the person can see: the open thread of a visible page. */
  function readVisible() {
    if (!state.peer || document.visibilityState !== "visible") return;
    for (const m of thread(state.peer).messages.values()) {
      if (m.receiverId === state.me && m.status !== "read") {
        m.status = "read";
        call("MessageRead", m.id).catch(() => {});
      }
    }
    scheduleConversations();
  }

  // -- outgoing -------------------------------------------------------------

  async function send(text) {
    const peer = state.peer;
    const clientMessageId = newId();
    const t = thread(peer);
    const draft = {
      id: `local-${clientMessageId}`, senderId: state.me, receiverId: peer, text,
      status: "pending", timestamp: new Date().toISOString(), clientMessageId,
    };
    t.messages.set(draft.id, draft);
    renderThread(true);
    try {
      // Same clientMessageId on every attempt: the server stores the message once.
      const id = await call("SendMessage", state.me, peer, text, clientMessageId);
      t.messages.delete(draft.id);
      if (!t.messages.has(id)) t.messages.set(id, { ...draft, id, status: "sent" });
    } catch {
      draft.status = "failed";
    }
    renderThread(true);
    scheduleConversations();
  }

  function typingChanged() {
    if (!state.peer) return;
    if (!state.typingSent) {
      state.typingSent = true;
      call("Typing", state.peer, true).catch(() => {});
    }
    clearTimeout(state.typingIdle);
    state.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(state.typingIdle);
    if (state.typingSent && state.peer) call("Typing", state.peer, false).catch(() => {});
    state.typingSent = false;
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
    openThread(peer).catch(() => {});
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
    const box = $("messages");
    const fromEnd = box.scrollHeight - box.scrollTop;
    await loadOlder(state.peer);
    renderThread();
    box.scrollTop = box.scrollHeight - fromEnd;
  });
  $("back").addEventListener("click", () => {
    state.peer = null;
    sessionStorage.removeItem("chat.peer");
    $("app").classList.remove("in-thread");
    renderConversations();
  });
  document.addEventListener("visibilitychange", readVisible);

  // A reload keeps the session and the open thread; the thread comes back from history.
  const saved = JSON.parse(sessionStorage.getItem("chat.session") || "null");
  if (saved) {
    Object.assign(state, saved);
    state.peer = sessionStorage.getItem("chat.peer");
    $("signin").hidden = true;
    $("app").hidden = false;
    $("me").textContent = state.name === state.me ? state.me : `${state.name} (${state.me})`;
    if (state.peer) $("app").classList.add("in-thread");
    connect();
  }
})();
