// Shared by the node:test files. The pytest driver (tests/test_js_clients.py) starts
// the servers and passes their URLs and the signing secret in the environment.
import { createHmac } from "node:crypto";
import { io } from "socket.io-client";

export const URL = process.env.CHAT_URL;
export const DEAD_URL = process.env.CHAT_DEAD_URL;
export const TIGHT_URL = process.env.CHAT_TIGHT_URL;
const SECRET = process.env.CHAT_SECRET;
if (!URL || !SECRET) throw new Error("run through pytest: CHAT_URL and CHAT_SECRET are not set");

/** An HS256 JWT for `id`, signed like the server's own tokens. */
export function token(id, { ttlS = 3600, ...claims } = {}) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ id, exp: Math.floor(Date.now() / 1000) + ttlS, ...claims });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Unique user ids per test, so tests never see each other's traffic. */
let counter = 0;
export function uid(name) {
  return `${name}-${process.pid}-${++counter}`;
}

/** A connected raw socket.io-client socket that records what it receives. */
export async function connect(userId, { url = URL, transports = ["websocket"] } = {}) {
  const socket = io(`${url}/chat`, { auth: { token: token(userId) }, transports, reconnection: false });
  socket.received = [];
  socket.onAny((event, ...args) => socket.received.push([event, args]));
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return socket;
}

/** Resolve with the args of the next `event` on `socket` that `accept`s them. */
export function next(socket, event, accept = () => true, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    const listener = (...args) => {
      if (!accept(...args)) return; // e.g. another test's user coming online
      clearTimeout(timer);
      socket.off(event, listener);
      resolve(args);
    };
    socket.on(event, listener);
  });
}

export function waitFor(predicate, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (predicate()) return resolve();
      if (Date.now() - started > timeoutMs) return reject(new Error("condition not met in time"));
      setTimeout(tick, 10);
    };
    tick();
  });
}

/** Call a hub method; resolve with its data, reject with its error (or a timeout). */
export function call(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(5000).emit(event, ...args, (err, reply) => {
      if (err) return reject(err);
      if (!reply.ok) return reject(new Error(`${event}: ${JSON.stringify(reply.error)}`));
      resolve(reply.data);
    });
  });
}
