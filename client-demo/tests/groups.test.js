// ChatClient's group side (protocol v2.0 "Groups") against a live server.
// Run apart from the other node tests by tests/test_js_clients.py.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { firstValueFrom, filter } from "rxjs";

import { ChatClient, ChatError } from "../client/dist/index.js";
import { URL, token, uid, waitFor } from "./helpers.js";

const clients = [];
async function client(userId, name) {
  const c = new ChatClient({ url: URL, token: () => token(userId), userName: name, transports: ["websocket"], ackTimeoutMs: 3000 });
  clients.push(c);
  await c.connect();
  return c;
}
after(() => clients.forEach((c) => c.disconnect()));

const next = (stream, accept = () => true) => firstValueFrom(stream.pipe(filter(accept)));

test("a group: create, message, receipts, read position, typing, members", async () => {
  const [a, b, c] = [uid("alice"), uid("bob"), uid("carol")];
  const alice = await client(a, "Alice");
  const bob = await client(b, "Bob");
  const carol = await client(c, "Carol");

  const bobHears = next(bob.groupChanges$);
  const group = await alice.createGroup("Care team", [b, b, a], "create-1");
  assert.equal(group.title, "Care team");
  assert.equal(group.memberCount, 2);
  assert.deepEqual(
    group.members.map((m) => [m.userId, m.role]).sort(),
    [[a, "admin"], [b, "member"]].sort(),
  );
  assert.equal((await bobHears).id, group.id);
  // The same clientRequestId creates nothing more.
  assert.equal((await alice.createGroup("Care team", [b], "create-1")).id, group.id);

  const incoming = next(bob.groupMessages$, (m) => m.groupId === group.id);
  const id = await alice.sendGroupMessage(group.id, "Hello team", "g-1");
  const m = await incoming;
  assert.deepEqual([m.id, m.groupId, m.receiverId, m.senderId, m.status], [id, group.id, null, a, "sent"]);
  assert.equal(await alice.sendGroupMessage(group.id, "Hello team", "g-1"), id, "idempotent");

  const read = next(alice.statuses$, (s) => s.messageId === id && s.status === "read");
  await bob.markRead(id);
  await read;
  assert.deepEqual(await alice.receipts(id), { recipientCount: 1, deliveredCount: 1, readCount: 1, readBy: [b] });

  // Typing reaches the other members.
  const typing = next(alice.groupTyping$);
  await bob.setGroupTyping(group.id, true);
  assert.deepEqual(await typing, { groupId: group.id, userId: b, isTyping: true });

  // Carol is added: she hears of it, sees only what comes after, and counts as a recipient.
  const carolHears = next(carol.groupChanges$, (g) => g.id === group.id);
  const grown = await alice.addGroupMembers(group.id, [c]);
  assert.equal(grown.memberCount, 3);
  await carolHears;
  assert.deepEqual(await carol.groupHistory(group.id), []);
  const second = await alice.sendGroupMessage(group.id, "Welcome Carol");
  await bob.markGroupRead(group.id);
  const r = await alice.receipts(second);
  assert.equal(r.recipientCount, 2);
  assert.equal(r.readCount, 1);
  assert.deepEqual(r.readBy, [b]);

  // Another device of carol's hears that she read the group here.
  const carolPhone = await client(c);
  const moved = next(carolPhone.readPositions$, (p) => p.groupId === group.id);
  assert.equal(await carol.markGroupRead(group.id), 1);
  assert.deepEqual(await moved, { groupId: group.id, messageId: second });

  const conversations = await bob.conversations();
  const listed = conversations.find((x) => x.id === group.id);
  assert.equal(listed.kind, "group");
  assert.equal(listed.name, "Care team");
  assert.equal(listed.memberCount, 3);

  // Only admins rename and remove; anyone leaves, and then is a stranger to the group.
  await assert.rejects(bob.renameGroup(group.id, "Mine now"), (e) => e instanceof ChatError && e.code === "forbidden");
  assert.equal((await alice.renameGroup(group.id, "Night shift")).title, "Night shift");
  const carolGone = next(carol.groupChanges$, (g) => g.id === group.id && !g.members.some((x) => x.userId === c));
  await carol.leaveGroup(group.id);
  await carolGone;
  await assert.rejects(carol.sendGroupMessage(group.id, "still here?"), (e) => e instanceof ChatError && e.code === "forbidden");
  await alice.removeGroupMember(group.id, b);
  assert.deepEqual((await alice.getGroup(group.id)).members.map((x) => x.userId), [a]);
});

test("Sync brings group messages and group changes missed while away", async () => {
  const [a, b] = [uid("alice"), uid("bob")];
  const alice = await client(a, "Alice");
  const bob = await client(b, "Bob");
  await waitFor(() => bob.cursor !== null);
  bob.disconnect();
  await waitFor(() => !bob.connected);

  const group = await alice.createGroup("While you were out", [b]);
  const id = await alice.sendGroupMessage(group.id, "missed it?");

  const groups = [];
  const messages = [];
  const subs = [bob.groupChanges$.subscribe((g) => groups.push(g.id)), bob.messages$.subscribe((m) => messages.push(m.id))];
  await bob.connect();
  subs.forEach((s) => s.unsubscribe());
  assert.ok(groups.includes(group.id), "Sync's groups include the new group");
  assert.ok(messages.includes(id), "Sync's messages include the group message");
});
