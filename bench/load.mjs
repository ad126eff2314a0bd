// Load generator for `make bench`: the real Node socket.io-client against a chat
// server speaking the hub protocol (this server, bench/relay.py or bench/relay.mjs).
//
//   node bench/load.mjs closed  URL SECRET PAIRS INFLIGHT SECONDS [RECEIVER_URL]
//     (with RECEIVER_URL the receivers connect there: across instances)
//   node bench/load.mjs open    URL SECRET CLIENTS RATE SECONDS
//   node bench/load.mjs connect URL SECRET CLIENTS
//   node bench/load.mjs idle    URL SECRET CLIENTS     (connects, prints, waits for stdin to close)
//   node bench/load.mjs group   URL SECRET MEMBERS INFLIGHT SECONDS join|create [RECEIPTS=1]
//   node bench/load.mjs check   URL SECRET join|create (the protocol shape the loads rely on)
//
// Every receiver acknowledges each message with MessageReceived, as apps do.
// Groups: `create` asks the server for one (CreateGroup, PROTOCOL.md "Groups");
// `join` is the relays' way: every member sends JoinGroup(groupId) of a group id
// the load picks (a relay has no membership to store).
// Prints one JSON line of results on stdout.
import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "client-demo", "package.json"));
const { io } = require("socket.io-client");

const [mode, URL, SECRET, ...rest] = process.argv.slice(2);
const run = `${process.pid}-${Date.now() % 100000}`;

function token(id) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ id, exp: Math.floor(Date.now() / 1000) + 3600 });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

function open(user, url = URL, timeoutMs = 60000) {
  const socket = io(`${url}/chat`, {
    auth: { token: token(user) },
    transports: ["websocket"],
    reconnection: false,
    timeout: timeoutMs,
  });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(err);
    });
  });
}

async function connectAll(users, concurrency = users.length, urlOf = () => URL) {
  const sockets = new Array(users.length);
  let refused = 0;
  let next = 0;
  const errors = {};
  async function worker() {
    while (next < users.length) {
      const i = next++;
      try {
        sockets[i] = await open(users[i], urlOf(i));
      } catch (err) {
        refused += 1;
        const code = err?.data?.code ?? err?.message ?? "error";
        errors[code] = (errors[code] ?? 0) + 1;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, users.length) }, worker));
  return { sockets, refused, errors };
}

function receiveAndAck(socket, onReceive) {
  socket.on("ReceiveMessage", (_sender, _text, messageId, _status, dto) => {
    onReceive?.(dto);
    socket.emit("MessageReceived", messageId, () => {});
  });
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summary(latencies) {
  const sorted = [...latencies].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function closed(pairs, inflight, seconds, receiverUrl = URL) {
  const users = [];
  for (let i = 0; i < pairs; i++) users.push(`s${i}-${run}`, `r${i}-${run}`);
  const { sockets, refused } = await connectAll(users, 100, (i) => (i % 2 ? receiverUrl : URL));
  if (refused) throw new Error(`${refused} refused while setting up`);
  for (let i = 0; i < pairs; i++) receiveAndAck(sockets[2 * i + 1]);
  const latencies = [];
  let errors = 0;
  let acked = 0;
  let stop = false;
  const started = performance.now();
  async function lane(i, lane) {
    const sender = sockets[2 * i];
    let n = 0;
    while (!stop) {
      const t0 = performance.now();
      const reply = await sender
        .timeout(30000)
        .emitWithAck("SendMessage", users[2 * i], users[2 * i + 1], `m${n++}`, `${lane}-${n}-${run}`)
        .catch(() => ({ ok: false }));
      if (reply.ok) {
        acked += 1;
        latencies.push(performance.now() - t0);
      } else errors += 1;
    }
  }
  const lanes = [];
  for (let i = 0; i < pairs; i++) for (let l = 0; l < inflight; l++) lanes.push(lane(i, `${i}.${l}`));
  await sleep(seconds * 1000);
  stop = true;
  const elapsed = (performance.now() - started) / 1000;
  await Promise.all(lanes);
  sockets.forEach((s) => s.close());
  return { mode: "closed", pairs, inflight, seconds: elapsed, acked, errors, rate: acked / elapsed, ...summary(latencies) };
}

async function openLoop(clients, rate, seconds) {
  const users = Array.from({ length: clients }, (_, i) => `o${i}-${run}`);
  const { sockets, refused } = await connectAll(users, 200);
  if (refused) throw new Error(`${refused} refused while setting up`);
  const delivered = [];
  const sentAt = new Map();
  sockets.forEach((s) =>
    receiveAndAck(s, (dto) => {
      const t0 = sentAt.get(dto.clientMessageId);
      if (t0 !== undefined) delivered.push(performance.now() - t0);
    }),
  );
  const latencies = [];
  let errors = 0;
  let sent = 0;
  let acked = 0;
  let lastAck = performance.now();
  const pending = [];
  const started = performance.now();
  const total = Math.round(rate * seconds);
  for (let n = 0; n < total; n++) {
    const due = started + (n * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await sleep(wait);
    const from = n % clients;
    const to = (from + 1 + (n % (clients - 1))) % clients;
    const cid = `${n}-${run}`;
    const t0 = performance.now();
    sentAt.set(cid, t0);
    sent += 1;
    pending.push(
      sockets[from]
        .timeout(30000)
        .emitWithAck("SendMessage", users[from], users[to], `open ${n}`, cid)
        .then((reply) => {
          if (reply.ok) {
            acked += 1;
            lastAck = performance.now();
            latencies.push(lastAck - t0);
          } else errors += 1;
        })
        .catch(() => (errors += 1)),
    );
  }
  const sendingFor = (performance.now() - started) / 1000;
  await Promise.all(pending);
  // Acked per second: acks received over the time from the first send to the last
  // ack, so a server that falls behind the offered rate shows it (emits would not).
  const ackedFor = Math.max(sendingFor, (lastAck - started) / 1000);
  await sleep(500);
  sockets.forEach((s) => s.close());
  return {
    mode: "open", clients, offered: rate, sent, acked, errors, sendingFor, ackedFor,
    rate: acked / ackedFor, ...summary(latencies),
    delivered: delivered.length, delivery: summary(delivered),
  };
}

async function connectStorm(clients) {
  const users = Array.from({ length: clients }, (_, i) => `c${i}-${run}`);
  const started = performance.now();
  const { sockets, refused, errors } = await connectAll(users);
  const seconds = (performance.now() - started) / 1000;
  sockets.forEach((s) => s?.close());
  return { mode: "connect", clients, seconds, refused, errors };
}

async function idle(clients) {
  const users = Array.from({ length: clients }, (_, i) => `i${i}-${run}`);
  const { sockets, refused } = await connectAll(users, 500);
  console.log(JSON.stringify({ mode: "idle", clients, refused }));
  // Hold them open until the runner closes our stdin.
  process.stdin.resume();
  await new Promise((r) => process.stdin.on("end", r));
  sockets.forEach((s) => s?.close());
  return null;
}

// Resolves with the event's arguments once `socket` gets `event` with arguments
// that pass `test`; rejects after `ms`, naming what it waited for.
function waitFor(socket, event, test = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(event, listener);
      reject(new Error(`no ${event} within ${ms} ms`));
    }, ms);
    function listener(...args) {
      if (!test(...args)) return;
      clearTimeout(timer);
      socket.off(event, listener);
      resolve(args);
    }
    socket.on(event, listener);
  });
}

// A group the sockets' users are all in; null when the server has no groups yet.
async function makeGroup(sockets, users, how, name) {
  if (how === "create") {
    // Set up means every member has heard of the group (GroupChanged), as on the
    // relays every JoinGroup has been answered: the load starts on a settled group.
    const created = { id: null };
    const heard = sockets.map((s) => new Promise((resolve) => {
      const onChanged = (dto) => {
        if (created.id !== null && dto.id !== created.id) return;
        s.off("GroupChanged", onChanged);
        resolve(dto.id);
      };
      s.on("GroupChanged", onChanged);
    }));
    const reply = await sockets[0].timeout(60000).emitWithAck("CreateGroup", `bench ${name}`, users.slice(1), name);
    if (!reply.ok && reply.error?.code === "unknown_event") return null;
    if (!reply.ok) throw new Error(`CreateGroup refused: ${JSON.stringify(reply.error)}`);
    created.id = reply.data.id;
    let timer;
    const ids = await Promise.race([
      Promise.all(heard),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("not every member heard GroupChanged in 60 s")), 60000);
      }),
    ]).finally(() => clearTimeout(timer));
    if (ids.some((id) => id !== created.id)) throw new Error("a member heard of another group");
    return created.id;
  }
  if (how !== "join") throw new Error(`group members join or create, not ${how}`);
  const groupId = `g-${name}`;
  const replies = await Promise.all(sockets.map((s) => s.timeout(60000).emitWithAck("JoinGroup", groupId)));
  const refused = replies.filter((r) => !r.ok).length;
  if (refused) throw new Error(`${refused} JoinGroup calls refused`);
  return groupId;
}

const NO_GROUPS = "server has no groups yet";

// One sender, MEMBERS - 1 recipients, INFLIGHT sends in flight: each send counts as
// done when its ack and its last recipient's ReceiveGroupMessage have arrived.
async function groupLoad(members, inflight, seconds, how, receipts) {
  const users = Array.from({ length: members }, (_, i) => `g${i}-${run}`); // users[0] sends
  const { sockets, refused } = await connectAll(users, 100);
  if (refused) throw new Error(`${refused} refused while setting up`);
  const groupId = await makeGroup(sockets, users, how, run);
  if (groupId === null) {
    sockets.forEach((s) => s.close());
    return { mode: "group", members, skipped: NO_GROUPS };
  }
  const recipients = members - 1;
  const waiting = new Map(); // clientMessageId -> {left, resolve}
  let deliveries = 0;
  for (const socket of sockets.slice(1)) {
    socket.on("ReceiveGroupMessage", (_groupId, dto) => {
      deliveries += 1;
      const w = waiting.get(dto.clientMessageId);
      if (w && --w.left === 0) w.resolve(performance.now());
      if (receipts) socket.emit("MessageReceived", dto.id, () => {});
    });
  }
  const sender = sockets[0];
  const acks = [];
  const lasts = [];
  let errors = 0;
  let incomplete = 0;
  let stop = false;
  async function lane(l) {
    let n = 0;
    while (!stop) {
      const cid = `${l}-${n++}-${run}`;
      let timer;
      const arrived = new Promise((resolve) => {
        waiting.set(cid, { left: recipients, resolve });
        timer = setTimeout(() => resolve(null), 30000);
      });
      const t0 = performance.now();
      const reply = await sender
        .timeout(30000)
        .emitWithAck("SendGroupMessage", groupId, `m${n}`, cid)
        .catch(() => ({ ok: false }));
      if (reply.ok) acks.push(performance.now() - t0);
      else errors += 1;
      const last = reply.ok ? await arrived : null;
      clearTimeout(timer);
      waiting.delete(cid);
      if (last !== null) lasts.push(last - t0);
      else if (reply.ok) incomplete += 1; // acked, but some member never got it
    }
  }
  const started = performance.now();
  const lanes = Array.from({ length: inflight }, (_, l) => lane(l));
  await sleep(seconds * 1000);
  stop = true;
  const elapsed = (performance.now() - started) / 1000;
  const delivered = deliveries;
  await Promise.all(lanes);
  sockets.forEach((s) => s.close());
  const last = summary(lasts);
  return {
    mode: "group", members, recipients, inflight, receipts: Boolean(receipts), seconds: elapsed,
    messages: lasts.length, deliveries: delivered, rate: delivered / elapsed, errors, incomplete,
    p50: last.p50, p99: last.p99, ack: summary(acks),
  };
}

// The shapes the loads rely on, checked once per target before it is measured: a
// target that answers fast but wrong must fail the run, not win it.
async function check(how) {
  const bad = io(`${URL}/chat`, { auth: { token: "not-a-token" }, transports: ["websocket"], reconnection: false });
  const refusal = await new Promise((resolve) => {
    bad.once("connect", () => resolve("connected"));
    bad.once("connect_error", (err) => resolve(err?.data?.code));
  });
  bad.close();
  if (refusal !== "unauthorized") throw new Error(`a bad token got ${refusal}, not unauthorized`);

  const users = ["a", "b", "c"].map((u) => `${u}-${run}`);
  const { sockets, refused } = await connectAll(users);
  if (refused) throw new Error(`${refused} of 3 refused`);
  const [a, b, c] = sockets;
  const cid = `check-${run}`;
  const arrival = waitFor(b, "ReceiveMessage", (...args) => args[4]?.clientMessageId === cid);
  const sent = await a.timeout(10000).emitWithAck("SendMessage", users[0], users[1], "hi", cid);
  if (!sent.ok || typeof sent.data !== "string") throw new Error(`SendMessage answered ${JSON.stringify(sent)}`);
  const [from, text, id, status, dto] = await arrival;
  if (from !== users[0] || text !== "hi" || id !== sent.data || status !== "sent" || dto.id !== id) {
    throw new Error(`ReceiveMessage carried ${JSON.stringify([from, text, id, status, dto])}`);
  }
  const changed = waitFor(a, "MessageStatusChanged", (mid, s) => mid === id && s === "delivered");
  const receipt = await b.timeout(10000).emitWithAck("MessageReceived", id);
  if (!receipt.ok) throw new Error(`MessageReceived answered ${JSON.stringify(receipt)}`);
  await changed;

  let groups = "ok";
  const groupId = await makeGroup(sockets, users, how, `check-${run}`);
  if (groupId === null) groups = NO_GROUPS;
  else {
    const gcid = `gcheck-${run}`;
    const heard = [b, c].map((s) => waitFor(s, "ReceiveGroupMessage", (g, d) => g === groupId && d?.clientMessageId === gcid));
    let echoed = false;
    a.on("ReceiveGroupMessage", () => (echoed = true));
    const reply = await a.timeout(10000).emitWithAck("SendGroupMessage", groupId, "hi all", gcid);
    if (!reply.ok) throw new Error(`SendGroupMessage answered ${JSON.stringify(reply)}`);
    const got = await Promise.all(heard);
    if (got.some(([, d]) => d.id !== reply.data || d.groupId !== groupId || d.senderId !== users[0])) {
      throw new Error(`ReceiveGroupMessage carried ${JSON.stringify(got)}`);
    }
    const delivered = waitFor(a, "MessageStatusChanged", (mid, s) => mid === reply.data && s === "delivered");
    for (const s of [b, c]) {
      const r = await s.timeout(10000).emitWithAck("MessageReceived", reply.data);
      if (!r.ok) throw new Error(`MessageReceived of a group message answered ${JSON.stringify(r)}`);
    }
    await delivered;
    if (echoed) throw new Error("the sender got its own ReceiveGroupMessage");
  }
  sockets.forEach((s) => s.close());
  return { mode: "check", ok: true, groups };
}

const n = rest.map(Number);
let result;
if (mode === "closed") result = await closed(n[0], n[1], n[2], rest[3] || URL);
else if (mode === "open") result = await openLoop(n[0], n[1], n[2]);
else if (mode === "connect") result = await connectStorm(n[0]);
else if (mode === "idle") result = await idle(n[0]);
else if (mode === "group") result = await groupLoad(n[0], n[1], n[2], rest[3], rest[4] === undefined ? 1 : n[4]);
else if (mode === "check") result = await check(rest[0]);
else throw new Error(`unknown mode ${mode}`);
if (result) console.log(JSON.stringify(result));
process.exit(0);
