// Two people on two server instances, with the real socket.io-client.
// Run by tests/test_cluster.py: CHAT_URL is where alice connects (an instance,
// or nginx in front of both), CHAT_OTHER_URL is the instance bob is on, and
// CHAT_TRANSPORT is alice's transport ("websocket" or "polling").
import { call, connect, next, uid } from "../tests/helpers.js";

const OTHER_URL = process.env.CHAT_OTHER_URL;
const transports = [process.env.CHAT_TRANSPORT || "websocket"];

const alice = uid("alice");
const bob = uid("bob");
const a = await connect(alice, { transports });
const b = await connect(bob, { url: OTHER_URL });

const receiving = next(b, "ReceiveMessage");
const id = await call(a, "SendMessage", alice, bob, "hello across instances");
const [sender, text, messageId] = await receiving;
if (sender !== alice || text !== "hello across instances" || messageId !== id) {
  throw new Error(`bob got ${sender} ${text} ${messageId}`);
}

const delivered = next(a, "MessageStatusChanged", (mid, status) => mid === id && status === "delivered");
await call(b, "MessageReceived", id);
await delivered;
const read = next(a, "MessageStatusChanged", (mid, status) => mid === id && status === "read");
await call(b, "MessageRead", id);
await read;

const typing = next(a, "UserTyping", (who, on) => who === bob && on === true);
await call(b, "Typing", alice, true);
await typing;

const reply = next(a, "ReceiveMessage");
const replyId = await call(b, "SendMessage", bob, alice, "and back");
const [, replyText, gotId] = await reply;
if (replyText !== "and back" || gotId !== replyId) throw new Error("alice missed the reply");

const history = await call(b, "GetMessageHistory", alice, bob, 0, 50);
if (history.length !== 2) throw new Error(`history has ${history.length} messages`);

a.close();
b.close();
console.log(`cross-instance (${transports[0]}): ok`);
