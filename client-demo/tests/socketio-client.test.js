// The real JS socket.io-client against a live server: connect, send, receive, receipts,
// and each error code the protocol names.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { io } from "socket.io-client";

import { DEAD_URL, TIGHT_URL, URL, connect, next, token, uid } from "./helpers.js";

const sockets = [];
async function open(userId, options) {
  const s = await connect(userId, options);
  sockets.push(s);
  return s;
}
after(() => sockets.forEach((s) => s.close()));

test("send, receive with five positional args, and receipts back to the sender", async () => {
  const [a, b] = [uid("alice"), uid("bob")];
  const alice = await open(a, { transports: ["polling"] });
  const bob = await open(b);

  const incoming = next(bob, "ReceiveMessage");
  const ack = await alice.emitWithAck("SendMessage", a, b, "hello from node 👋", "n-1");
  assert.equal(ack.ok, true);
  const [sender, text, messageId, status, dto] = await incoming;
  assert.deepEqual([sender, text, messageId, status], [a, "hello from node 👋", ack.data, "sent"]);
  assert.equal(dto.clientMessageId, "n-1");
  assert.match(dto.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

  const delivered = next(alice, "MessageStatusChanged");
  assert.deepEqual(await bob.emitWithAck("MessageReceived", messageId), { ok: true, data: null });
  assert.deepEqual(await delivered, [messageId, "delivered"]);
  const read = next(alice, "MessageStatusChanged");
  assert.deepEqual(await bob.emitWithAck("MessageRead", messageId), { ok: true, data: null });
  assert.deepEqual(await read, [messageId, "read"]);

  const history = await alice.emitWithAck("GetMessageHistory", a, b, 0, 10);
  assert.equal(history.data[0].status, "read");
});

test("error codes: invalid_argument, forbidden, not_found, unknown_event", async () => {
  const [a, b, e] = [uid("alice"), uid("bob"), uid("eve")];
  const alice = await open(a);
  const eve = await open(e);
  const { data: id } = await alice.emitWithAck("SendMessage", a, b, "hi");

  const code = async (socket, ...call) => {
    const r = await socket.emitWithAck(...call);
    assert.equal(r.ok, false, JSON.stringify(r));
    assert.equal(typeof r.error.message, "string");
    return r.error.code;
  };
  assert.equal(await code(alice, "SendMessage", a, b, ""), "invalid_argument");
  assert.equal(await code(alice, "SendMessage", a, b, "x".repeat(4001)), "invalid_argument");
  assert.equal(await code(alice, "GetMessageHistory", a, b, 0, 500), "invalid_argument");
  assert.equal(await code(eve, "SendMessage", a, b, "spoof"), "forbidden");
  assert.equal(await code(eve, "MessageRead", id), "forbidden");
  assert.equal(await code(eve, "GetMessageHistory", a, b), "forbidden");
  assert.equal(await code(alice, "MessageRead", "00000000-0000-0000-0000-000000000000"), "not_found");
  assert.equal(await code(alice, "NoSuchMethod", 1, 2), "unknown_event");
});

test("rate_limited once a socket spends its burst", { skip: !TIGHT_URL }, async () => {
  const s = await open(uid("chatty"), { url: TIGHT_URL });
  const replies = [];
  for (let i = 0; i < 8; i++) replies.push(await s.emitWithAck("GetOnlineUsers"));
  assert.ok(replies.some((r) => !r.ok && r.error.code === "rate_limited"), JSON.stringify(replies));
});

test("handshake refused: err.data carries {code, message}", async () => {
  const refused = (url, auth) =>
    new Promise((resolve) => {
      const s = io(`${url}/chat`, { auth, transports: ["websocket"], reconnection: false });
      s.on("connect", () => resolve({ connected: true }));
      s.on("connect_error", (err) => {
        s.close();
        resolve(err);
      });
    });
  for (const auth of [{}, { token: "garbage" }, { token: token(uid("late"), { ttlS: -5 }) }]) {
    const err = await refused(URL, auth);
    assert.equal(err.data?.code, "unauthorized", JSON.stringify(auth));
    assert.equal(err.message, err.data.message);
  }
  if (DEAD_URL) {
    const err = await refused(DEAD_URL, { token: token(uid("alice")) });
    assert.equal(err.data?.code, "unavailable");
  }
});

test("presence and typing reach the right sockets", async () => {
  const [a, b] = [uid("alice"), uid("bob")];
  const bob = await open(b);
  // Bob shares no conversation with Alice yet: he hears of her because he asks to.
  assert.deepEqual(await bob.emitWithAck("SubscribePresence", [a]), { ok: true, data: { [a]: "Offline" } });
  const online = next(bob, "UserStatusChanged", (user) => user === a);
  const alice = await open(a);
  assert.deepEqual(await online, [a, "Online"]);
  const typing = next(bob, "UserTyping");
  assert.deepEqual(await alice.emitWithAck("Typing", b, true), { ok: true, data: null });
  assert.deepEqual(await typing, [a, true]);
  const offline = next(bob, "UserStatusChanged", (user) => user === a);
  alice.close();
  assert.deepEqual(await offline, [a, "Offline"]);
});
