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

const senders = new Map(); // direct message id -> sender
const unreceived = new Map(); // group message id -> {sender, left: recipients yet to acknowledge}

function remember(table, key, value) {
  table.set(key, value);
  if (table.size > KEEP_MESSAGES) table.delete(table.keys().next().value);
}

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
    remember(senders, id, sender);
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
    remember(unreceived, id, { sender: user, left: recipients });
    const dto = {
      id, senderId: user, receiverId: null, groupId, text, status: "sent", timestamp: "", clientMessageId: cid,
    };
    socket.to(room).emit("ReceiveGroupMessage", groupId, dto);
    socket.to(user).emit("MessageSent", dto);
    return { ok: true, data: id };
  }));
});

httpServer.listen({ host: "127.0.0.1", port: Number(port), backlog: BACKLOG });
