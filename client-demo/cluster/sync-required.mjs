// The typed ChatClient on one instance catches up by itself after a backplane
// outage: it gets SyncRequired and calls Sync. (Its socket never drops, so
// messages sent while Redis was away can reach it only that way.) Driven by tests/test_cluster.py
// over stdin/stdout, because the test owns the Redis it kills:
//   this script prints "ready", reads "down", sends while Redis is away and
//   prints "sent N", reads "up", then prints "caught up" once every message
//   sent meanwhile is on bob's messages$ stream.
import { createInterface } from "node:readline";
import { filter } from "rxjs";

import { ChatClient } from "../client/dist/index.js";
import { call, connect, token, uid, waitFor } from "../tests/helpers.js";

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function expect(word) {
  const { value } = await lines.next();
  if (value !== word) throw new Error(`expected ${word}, got ${value}`);
}

const [a, b] = [uid("alice"), uid("bob")];
const bob = new ChatClient({ url: process.env.CHAT_OTHER_URL, token: () => token(b), transports: ["websocket"] });
await bob.connect();
const seen = new Set();
bob.messages$.pipe(filter((m) => m.senderId === a)).subscribe((m) => seen.add(m.id));
const alice = await connect(a); // CHAT_URL: the other instance
console.log("ready");

await expect("down");
const sent = [];
for (let i = 0; i < 5; i++) sent.push(await call(alice, "SendMessage", a, b, `while Redis is away ${i}`));
console.log(`sent ${sent.length}`);

await expect("up");
await waitFor(() => sent.every((id) => seen.has(id)), 15000);
console.log("caught up");
alice.close();
bob.disconnect();
process.exit(0);
