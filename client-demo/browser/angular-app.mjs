// The Angular app (client-demo/angular, served at /app/) in real Chromium contexts
// against a live dev-mode server. Run by tests/test_angular_app.py:
//
//   node browser/angular-app.mjs direct   two people chat with receipts, typing, unread
//                                        badges and "load older"; the server is stopped
//                                        and started again in the middle, and every
//                                        message sent meanwhile shows up.
//   node browser/angular-app.mjs groups   a group of two, a third joins, read-by counts
//                                        move, unread badges clear, a member leaves.
//
// The restart is the test's (it owns the server process): this script prints "stop"
// and waits for "stopped" on stdin, then "start" / "started". Screenshots go to
// CHAT_SCREENSHOT_DIR when it is set.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

import { call, connect } from "../tests/helpers.js";

const URL = process.env.CHAT_URL;
const SHOTS = process.env.CHAT_SCREENSHOT_DIR;
const TIMEOUT_MS = 15_000;
const mode = process.argv[2];
if (!["direct", "groups"].includes(mode)) throw new Error("usage: angular-app.mjs direct|groups");
if (SHOTS) mkdirSync(SHOTS, { recursive: true });

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(word, answer) {
  console.log(word);
  const { value } = await lines.next();
  if (value !== answer) throw new Error(`said ${word}, expected ${answer}, got ${value}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHAT_CHROMIUM || "/usr/bin/chromium",
  // Root in a container needs --no-sandbox; the rest keep Chromium off the closed network.
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const people = [];

async function person(userId, name, viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text()) && errors.push(m.text()));
  await page.goto(`${URL}/app/`);
  await page.fill("#user-id", userId);
  await page.fill("#display-name", name);
  await page.click("#signin-button");
  await up(page);
  const p = { userId, name, page, errors };
  people.push(p);
  return p;
}

/** Connected and caught up: the banner is gone. */
const up = (page) => page.waitForSelector("#connection.up", { state: "attached" });
const row = (p, id) => p.page.locator(`.conversation[data-id="${id}"]`);
/** The message whose text is exactly `text` (mine, theirs, or either). */
const message = (p, text, mine) =>
  p.page
    .locator(mine === undefined ? ".message" : mine ? ".message.mine" : ".message:not(.mine)")
    .filter({ has: p.page.locator(".text", { hasText: new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`) }) });

async function send(p, text) {
  await p.page.fill("#message-input", text);
  await p.page.press("#message-input", "Enter");
}

async function shot(p, file) {
  if (SHOTS) await p.page.screenshot({ path: `${SHOTS}/${file}` });
}

async function direct() {
  // A pasted token the server refuses puts the person back at sign-in, saying why.
  {
    const page = await (await browser.newContext()).newPage();
    page.setDefaultTimeout(TIMEOUT_MS);
    await page.goto(`${URL}/app/`);
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const forged = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ id: "mallory", exp: 4102444800 })}.${b64("not signed")}`;
    await page.fill("#token", forged);
    await page.click("#signin-button");
    await page.locator(".signin .error", { hasText: "refused the token" }).waitFor();
    await page.context().close();
  }
  const alice = await person("alice", "Alice", { width: 1100, height: 700 });
  const bob = await person("bob", "Bob", { width: 390, height: 780 }); // phone width

  // Alice starts a conversation with bob and sends.
  await alice.page.fill("#new-peer", "bob");
  await alice.page.press("#new-peer", "Enter");
  await send(alice, "Hello Bob 👋");
  await alice.page.waitForSelector(".message.mine:is([data-status=sent], [data-status=delivered])");

  // Bob sees it live in his list: unread badge, online dot, preview.
  const aliceRow = row(bob, "alice");
  await aliceRow.locator(".badge:not([hidden])").waitFor();
  assert.equal((await aliceRow.locator(".badge").textContent()).trim(), "1");
  assert.equal((await aliceRow.locator(".preview").textContent()).trim(), "Hello Bob 👋");
  await aliceRow.locator(".dot.online").waitFor();
  // It reached bob's device, so alice sees two grey ticks.
  await alice.page.waitForSelector(".message.mine[data-status=delivered] .ticks.delivered");

  // Bob opens the thread: the message is on screen, so it is read; alice's ticks turn blue.
  await aliceRow.click();
  await message(bob, "Hello Bob 👋", false).waitFor();
  await alice.page.waitForSelector(".message.mine[data-status=read] .ticks.read");
  await bob.page.click(".thread-header .back"); // phone: back to the list
  await aliceRow.locator(".badge[hidden]").waitFor({ state: "attached" });
  await aliceRow.click();

  // Typing shows on the other side, and goes away once alice stops.
  await alice.page.type("#message-input", "are you th", { delay: 20 });
  await bob.page.locator("#typing:not([hidden])", { hasText: "Alice is typing" }).waitFor();
  await bob.page.waitForSelector("#typing[hidden]", { state: "attached", timeout: 8000 });
  await alice.page.fill("#message-input", "");

  // Bob replies; alice sees it live in her open thread, already read.
  await bob.page.fill("#message-input", "Hi Alice!");
  await bob.page.click("#send");
  await message(alice, "Hi Alice!", false).waitFor();
  await bob.page.waitForSelector(".message.mine[data-status=read]");

  // The server goes away. Both see the banner; what they send waits, pending.
  await ask("stop", "stopped");
  for (const p of [alice, bob]) await p.page.waitForSelector("#connection[data-state=disconnected]");
  await send(alice, "sent while the server was down");
  await send(bob, "me too, from the phone");
  await alice.page.waitForSelector(".message.mine[data-status=pending]");
  await bob.page.waitForSelector(".message.mine[data-status=pending]");
  // The server comes back: both reconnect, catch up, and the waiting messages go out.
  await ask("start", "started");
  for (const p of [alice, bob]) await up(p.page);
  await message(bob, "sent while the server was down", false).waitFor();
  await message(alice, "me too, from the phone", false).waitFor();
  await alice.page.waitForSelector(".message.mine[data-status=read]:has-text('sent while the server was down')");
  await bob.page.waitForSelector(".message.mine[data-status=read]:has-text('me too, from the phone')");
  await bob.page.type("#message-input", "see you at 5", { delay: 20 });
  await alice.page.locator("#typing:not([hidden])", { hasText: "Bob is typing" }).waitFor();
  await shot(alice, "app-alice.png");
  await shot(bob, "app-bob-phone.png");
  await bob.page.fill("#message-input", "");

  // Carol, from a plain socket, writes bob 40 messages while his thread with alice is open.
  const carol = await connect("carol");
  for (let i = 1; i <= 40; i++) await call(carol, "SendMessage", "carol", "bob", `note ${i}`, `carol-${i}`);
  carol.close();
  await bob.page.click(".thread-header .back");
  await row(bob, "carol").locator(".badge:not([hidden])", { hasText: "40" }).waitFor();

  // A reload keeps bob signed in; threads come back from history, a page at a time.
  await bob.page.reload();
  await up(bob.page);
  const carolRow = row(bob, "carol");
  await carolRow.locator(".badge:not([hidden])", { hasText: "40" }).waitFor();
  await carolRow.click();
  await message(bob, "note 40").waitFor();
  assert.equal(await bob.page.locator(".message").count(), 30, "the first page holds 30");
  await bob.page.click("#load-older");
  await message(bob, "note 1").waitFor();
  assert.equal(await bob.page.locator(".message").count(), 40);
  await bob.page.waitForSelector("#load-older", { state: "detached" });
  await bob.page.click(".thread-header .back");
  await carolRow.locator(".badge[hidden]").waitFor({ state: "attached" });
  await row(bob, "alice").click();
  await message(bob, "Hello Bob 👋", false).waitFor();
  await message(bob, "me too, from the phone", true).waitFor();

  // An error from an ack is shown to the person, and the message is marked failed.
  await bob.page.evaluate(() => document.getElementById("message-input").removeAttribute("maxlength"));
  await send(bob, "x".repeat(4001));
  await bob.page.locator(".toast.error", { hasText: "invalid_argument" }).waitFor();
  await bob.page.waitForSelector(".message.mine[data-status=failed] .retry");
}

async function groups() {
  const alice = await person("alice", "Alice", { width: 1100, height: 700 });
  const bob = await person("bob", "Bob", { width: 900, height: 700 });
  const carol = await person("carol", "Carol", { width: 900, height: 700 });

  // Alice creates a group with bob: it shows in bob's list at once.
  await alice.page.click("#new-group-tab");
  await alice.page.fill("#group-title", "Care team");
  await alice.page.fill("#group-members", "bob");
  await alice.page.press("#group-members", "Enter");
  // A server without groups answers CreateGroup with unknown_event: say so rather than time out.
  await alice.page.waitForSelector("#thread-title:has-text('Care team'), .toast.error");
  const refused = alice.page.locator(".toast.error");
  if (await refused.count()) throw new Error(`CreateGroup failed: ${await refused.first().textContent()}`);
  const bobGroup = bob.page.locator('.conversation[data-kind=group]', { hasText: "Care team" });
  await bobGroup.waitFor();
  const groupId = await bobGroup.getAttribute("data-id");

  await send(alice, "Hello team");
  await bobGroup.locator(".badge:not([hidden])", { hasText: "1" }).waitFor();
  await bobGroup.click();
  await message(bob, "Hello team", false).locator(".sender", { hasText: "Alice" }).waitFor();
  await alice.page.waitForSelector(".message.mine[data-status=read] .read-by[data-read='1'][data-of='1']");
  await bobGroup.locator(".badge[hidden]").waitFor({ state: "attached" });

  // Alice adds carol from the members panel; carol's list shows the group.
  await alice.page.click("#members-toggle");
  await alice.page.fill("#add-members", "carol");
  await alice.page.click("#add-members-button");
  await alice.page.locator("#members-panel .member[data-user=carol]").waitFor();
  await alice.page.locator("#members-toggle", { hasText: "3 members" }).waitFor();
  const carolGroup = row(carol, groupId);
  await carolGroup.waitFor();

  // A message to the three: read by bob (whose thread is open), then by carol.
  await send(alice, "Welcome Carol");
  const readBy = (n) =>
    alice.page.waitForSelector(`.message.mine:has-text('Welcome Carol') .read-by[data-read='${n}'][data-of='2']`);
  await message(bob, "Welcome Carol", false).waitFor();
  await readBy(1);
  await carolGroup.locator(".badge:not([hidden])", { hasText: "1" }).waitFor();
  await carolGroup.click();
  await message(carol, "Welcome Carol", false).waitFor();
  await readBy(2);
  await alice.page.waitForSelector(".message.mine[data-status=read]:has-text('Welcome Carol')");
  await carolGroup.locator(".badge[hidden]").waitFor({ state: "attached" });

  // Typing in a group names who types.
  await carol.page.type("#message-input", "hi all", { delay: 20 });
  await alice.page.locator("#typing:not([hidden])", { hasText: "Carol is typing" }).waitFor();
  await carol.page.press("#message-input", "Enter");
  await message(bob, "hi all", false).locator(".sender", { hasText: "Carol" }).waitFor();
  await shot(alice, "app-group-alice.png");

  // Carol leaves: her history stays, the composer goes; alice's panel loses her.
  await carol.page.click("#members-toggle");
  await carol.page.click("#leave-group");
  await carol.page.locator("#left-note").waitFor();
  await alice.page.locator("#members-panel .member[data-user=carol]").waitFor({ state: "detached" });
  await alice.page.locator("#members-toggle", { hasText: "2 members" }).waitFor();
  // Bob is no admin: he may leave but not remove.
  await bob.page.click("#members-toggle");
  await bob.page.locator("#members-panel #leave-group").waitFor();
  assert.equal(await bob.page.locator("#members-panel .remove").count(), 0);
}

try {
  await (mode === "direct" ? direct() : groups());
  for (const p of people) assert.deepEqual(p.errors, [], `${p.userId}'s page logged errors`);
  console.log(`angular-app ${mode}: ok`);
} catch (e) {
  for (const p of people) {
    await shot(p, `failed-${mode}-${p.userId}.png`).catch(() => undefined);
    if (p.errors.length) console.log(`${p.userId}'s page logged: ${p.errors.join("\n")}`);
  }
  throw e;
} finally {
  await browser.close();
}
process.exit(0);
