// Load generator for `make bench`: the real Node socket.io-client against a chat
// server speaking the hub protocol (this server, or bench/relay.py).
//
//   node bench/load.mjs closed  URL SECRET PAIRS INFLIGHT SECONDS [RECEIVER_URL]
//     (with RECEIVER_URL the receivers connect there: across instances)
//   node bench/load.mjs open    URL SECRET CLIENTS RATE SECONDS
//   node bench/load.mjs connect URL SECRET CLIENTS
//   node bench/load.mjs idle    URL SECRET CLIENTS     (connects, prints, waits for stdin to close)
//
// Every receiver acknowledges each message with MessageReceived, as apps do.
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
          if (reply.ok) latencies.push(performance.now() - t0);
          else errors += 1;
        })
        .catch(() => (errors += 1)),
    );
  }
  const sendingFor = (performance.now() - started) / 1000;
  await Promise.all(pending);
  await sleep(500);
  sockets.forEach((s) => s.close());
  return {
    mode: "open", clients, offered: rate, sent, errors, sendingFor,
    achieved: sent / sendingFor, ...summary(latencies),
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

const n = rest.map(Number);
let result;
if (mode === "closed") result = await closed(n[0], n[1], n[2], rest[3] || URL);
else if (mode === "open") result = await openLoop(n[0], n[1], n[2]);
else if (mode === "connect") result = await connectStorm(n[0]);
else if (mode === "idle") result = await idle(n[0]);
else throw new Error(`unknown mode ${mode}`);
if (result) console.log(JSON.stringify(result));
process.exit(0);
