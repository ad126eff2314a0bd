// The compiled ChatClient (what ChatService extends) against a live server.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { firstValueFrom, filter, take, toArray } from "rxjs";

import { ChatClient, ChatError } from "../client/dist/index.js";
import { DEAD_URL, TIGHT_URL, URL, token, uid, waitFor } from "./helpers.js";

const clients = [];
function client(userId, options = {}) {
  let tokens = 0;
  const c = new ChatClient({
    url: URL,
    token: () => {
      tokens++;
      return token(userId);
    },
    transports: ["websocket"],
    ackTimeoutMs: 3000,
    ...options,
  });
  c.tokensIssued = () => tokens;
  clients.push(c);
  return c;
}
after(() => clients.forEach((c) => c.disconnect()));

test("messages, receipts, presence and typing arrive as typed streams", async () => {
  const [a, b] = [uid("alice"), uid("bob")];
  const bob = client(b, { userName: "Bob" });
  await bob.connect();
  assert.deepEqual(await bob.watchPresence([a]), { [a]: "Offline" });
  const alice = client(a, { userName: "Alice" });
  const aliceOnline = firstValueFrom(bob.presence$.pipe(filter((p) => p.userId === a)));
  await alice.connect();
  assert.deepEqual(await aliceOnline, { userId: a, online: true });

  const incoming = firstValueFrom(bob.messages$.pipe(filter((m) => m.senderId === a)));
  const id = await alice.sendMessage(b, "typed hello");
  const message = await incoming;
  assert.equal(message.id, id);
  assert.equal(message.status, "sent");

  const statuses = firstValueFrom(alice.statuses$.pipe(take(2), toArray()));
  await bob.markReceived(id);
  await bob.markRead(id);
  assert.deepEqual(await statuses, [
    { messageId: id, status: "delivered" },
    { messageId: id, status: "read" },
  ]);

  const typing = firstValueFrom(bob.typing$);
  await alice.setTyping(b, true);
  assert.deepEqual(await typing, { userId: a, isTyping: true });

  const conversations = await bob.conversations();
  assert.equal(conversations[0].id, a);
  assert.equal(conversations[0].name, "Alice");
});

test("acks become typed errors", async () => {
  const me = client(uid("eve"));
  await me.connect();
  await assert.rejects(me.call("GetMessageHistory", "x", "y"), (e) => e instanceof ChatError && e.code === "forbidden");
  await assert.rejects(me.markRead("nope"), (e) => e instanceof ChatError && e.code === "not_found");
  await assert.rejects(me.sendMessage(uid("bob"), ""), (e) => e instanceof ChatError && e.code === "invalid_argument");
});

test("a refused handshake rejects connect() with a typed error", async () => {
  const bad = new ChatClient({ url: URL, token: () => "not-a-token", transports: ["websocket"] });
  clients.push(bad);
  await assert.rejects(bad.connect(), (e) => e instanceof ChatError && e.code === "unauthorized");
  if (DEAD_URL) {
    const down = new ChatClient({ url: DEAD_URL, token: () => token(uid("x")), transports: ["websocket"] });
    clients.push(down);
    await assert.rejects(down.connect(), (e) => e instanceof ChatError && e.code === "unavailable");
  }
});

test("sendMessage with the same clientMessageId stores one message", async () => {
  const [a, b] = [uid("alice"), uid("bob")];
  const alice = client(a);
  await alice.connect();
  const first = await alice.sendMessage(b, "exactly once", "fixed-id");
  const second = await alice.sendMessage(b, "exactly once", "fixed-id");
  assert.equal(first, second);
  assert.equal((await alice.history(b)).length, 1);
});

test("sendMessage retries a transient failure with the same clientMessageId", { skip: !TIGHT_URL }, async () => {
  const [a, b] = [uid("alice"), uid("bob")];
  // This server allows a burst of 3 calls, then 1 a second.
  const alice = client(a, { url: TIGHT_URL });
  await alice.connect(); // spends one call on Sync
  await alice.onlineUsers();
  await alice.onlineUsers();
  await assert.rejects(alice.onlineUsers(), (e) => e instanceof ChatError && e.code === "rate_limited");

  const id = await alice.sendMessage(b, "sent despite the limit"); // rate_limited, then retried
  await new Promise((r) => setTimeout(r, 1100));
  const history = await alice.history(b);
  assert.deepEqual(history.map((m) => m.id), [id]);
});

test("after a reconnect, Sync catches up on what was missed, with a fresh token", async () => {
  const [a, b] = [uid("alice"), uid("bob")];
  const bob = client(b);
  await bob.connect();
  const alice = client(a);
  await alice.connect();
  const early = await alice.sendMessage(b, "before the gap");
  await waitFor(() => bob.cursor !== null);

  bob.disconnect();
  await waitFor(() => !bob.connected);
  const missed = await alice.sendMessage(b, "during the gap");
  // Another device of bob's reads the early message while this one is away.
  const phone = client(b);
  await phone.connect();
  await phone.markRead(early);

  const seen = [];
  const sub = bob.messages$.subscribe((m) => seen.push([m.id, m.status]));
  const tokensBefore = bob.tokensIssued();
  await bob.connect();
  sub.unsubscribe();
  assert.ok(bob.tokensIssued() > tokensBefore, "token factory asked again on reconnect");
  assert.deepEqual(
    seen.filter(([id]) => id === missed || id === early),
    [
      [missed, "sent"],
      [early, "read"],
    ],
  );
});
