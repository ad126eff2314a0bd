// The Node socket.io 4 relay `make bench` measures this server against (baseline c).
//
//   node bench/relay.mjs PORT SECRET
//
// The same protocol shape as bench/relay.py: a /chat namespace, a JWT in the
// handshake's auth (HS256 with the same secret, checked by jsonwebtoken, expiry
// included; refusals carry {code: "unauthorized"}), a room per user,
// SendMessage -> ReceiveMessage + MessageSent, MessageReceived ->
// MessageStatusChanged, ack envelopes, JoinGroup / SendGroupMessage ->
// ReceiveGroupMessage, and no storage.
//
// socket.io's defaults, which already leave permessage-deflate off and send
// no binary unless asked. One knob is turned: the listen backlog of 4,096 that
// this server and the tuned relay use (Node's default is 511), so a connect
// storm measures the stack, not the kernel's SYN retries.
// Installed from bench/package-lock.json by `npm ci` (make bench); nothing is
// downloaded at run time.
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import jwt from "jsonwebtoken";
import { Server } from "socket.io";

const NAMESPACE = "/chat";
const KEEP_MESSAGES = 100_000; // message id -> sender, so receipts can be routed; no storage
const BACKLOG = 4096;

const [port, SECRET] = process.argv.slice(2);
if (!port || !SECRET) throw new Error("usage: node bench/relay.mjs PORT SECRET");

// A room of its own prefix, so a group never shares a room with a user of the same name.
const groupRoom = (groupId) => `group:${groupId}`;

// The latest KEEP_MESSAGES / 2 to KEEP_MESSAGES entries, in two generations. Not one Map
// trimmed from its front: V8 leaves a hole per deleted entry until it rehashes, and
// finding the oldest key walks all of them, so every send grew slower once the Map was
// full (the relay lost half its rate within a minute of the benchmark).
class Recent {
  constructor(limit) {
    this.half = limit / 2;
    this.young = new Map();
    this.old = new Map();
  }
  set(key, value) {
    if (this.young.size >= this.half) {
      this.old = this.young;
      this.young = new Map();
    }
    this.young.set(key, value);
  }
  get(key) {
    return this.young.get(key) ?? this.old.get(key);
  }
  delete(key) {
    if (!this.young.delete(key)) this.old.delete(key);
  }
}

const senders = new Recent(KEEP_MESSAGES); // direct message id -> sender
const unreceived = new Recent(KEEP_MESSAGES); // group message id -> {sender, left: recipients yet to acknowledge}

// socket.io passes the ack callback as the last argument when the client asked for one.
function handler(fn) {
  return (...args) => {
    const ack = typeof args.at(-1) === "function" ? args.pop() : () => {};
    ack(fn(...args));
  };
}

const httpServer = createServer();
const io = new Server(httpServer, { cors: { origin: "*" } });
const chat = io.of(NAMESPACE);

chat.use((socket, next) => {
  try {
    const claims = jwt.verify(socket.handshake.auth?.token, SECRET, { algorithms: ["HS256"] });
    if (claims.id === undefined) throw new Error("no id claim");
    socket.data.user = String(claims.id);
    next();
  } catch {
    const err = new Error("bad token");
    err.data = { code: "unauthorized" };
    next(err);
  }
});

chat.on("connection", (socket) => {
  const user = socket.data.user;
  socket.join(user);

  socket.on("SendMessage", handler((sender, receiver, text, cid = null) => {
    const id = randomUUID();
    senders.set(id, sender);
    const dto = { id, senderId: sender, receiverId: receiver, text, status: "sent", timestamp: "", clientMessageId: cid };
    chat.to(receiver).emit("ReceiveMessage", sender, text, id, "sent", dto);
    socket.to(sender).emit("MessageSent", dto); // the sender's other sockets
    return { ok: true, data: id };
  }));

  socket.on("MessageReceived", handler((id) => {
    const sender = senders.get(id);
    if (sender !== undefined) {
      chat.to(sender).emit("MessageStatusChanged", id, "delivered");
      return { ok: true, data: null };
    }
    const pending = unreceived.get(id);
    if (pending !== undefined && --pending.left <= 0) {
      unreceived.delete(id);
      chat.to(pending.sender).emit("MessageStatusChanged", id, "delivered");
    }
    return { ok: true, data: null };
  }));

  socket.on("JoinGroup", handler((groupId) => {
    socket.join(groupRoom(groupId));
    return { ok: true, data: null };
  }));

  socket.on("SendGroupMessage", handler((groupId, text, cid = null) => {
    const room = groupRoom(groupId);
    const members = chat.adapter.rooms.get(room);
    const recipients = members ? members.size - (members.has(socket.id) ? 1 : 0) : 0;
    const id = randomUUID();
    unreceived.set(id, { sender: user, left: recipients });
    const dto = {
      id, senderId: user, receiverId: null, groupId, text, status: "sent", timestamp: "", clientMessageId: cid,
    };
    socket.to(room).emit("ReceiveGroupMessage", groupId, dto);
    socket.to(user).emit("MessageSent", dto);
    return { ok: true, data: id };
  }));
});

httpServer.listen({ host: "127.0.0.1", port: Number(port), backlog: BACKLOG });
