// A group of three in the demo page (client-demo/index.html), in three real Chromium
// contexts against a live dev-mode server. Run by tests/test_demo_groups.py, which starts
// the server and sets CHAT_URL and CHAT_SECRET (for alice's second device, a plain socket).
//
// alice creates a group with bob (someone she knows) and carol (an id typed in); the three
// chat; "read by" on alice's message moves from 0 of 2 to 2 of 2 and unread badges clear
// as each opens the group; typing names who types; "load older" pages back; alice adds
// dave; bob drops off the network, carol leaves and alice writes meanwhile, and when bob is
// back Sync brings him both; alice removes bob, who sees the group marked as left.
// Screenshots go to CHAT_SCREENSHOT_DIR when it is set.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

import { call, connect } from "../tests/helpers.js";

const URL = process.env.CHAT_URL;
const SHOTS = process.env.CHAT_SCREENSHOT_DIR;
const TIMEOUT_MS = 15_000;
if (SHOTS) mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHAT_CHROMIUM || "/usr/bin/chromium",
  // Root in a container needs --no-sandbox; the rest keep Chromium off the closed network.
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const people = [];

/**
 * The socket.io traffic of one browser context, which the script can cut and restore.
 * Chromium's offline emulation leaves open WebSockets alone (playwright#4910), so the
 * WebSockets go through a route this script can close, and long-polls through one it can abort.
 */
async function cuttableLink(context) {
  const link = { down: false, open: new Set() };
  await context.route(/\/socket\.io\//, (route) => (link.down ? route.abort("internetdisconnected") : route.continue()));
  await context.routeWebSocket(/\/socket\.io\//, (ws) => {
    if (link.down) return ws.close();
    const pair = { ws, server: ws.connectToServer() };
    link.open.add(pair);
    ws.onClose(() => link.open.delete(pair));
  });
  return link;
}

async function cut(link) {
  const deadline = Date.now() + TIMEOUT_MS;
  while (!link.open.size) {
    // socket.io-client starts on long-polling and upgrades: cut once the WebSocket carries it.
    if (Date.now() > deadline) throw new Error("no WebSocket to cut within the deadline");
    await new Promise((r) => setTimeout(r, 20));
  }
  link.down = true;
  for (const { ws, server } of link.open) {
    await ws.close();
    await server.close();
  }
}

async function person(userId, name, viewport, { cuttable = false } = {}) {
  const context = await browser.newContext({ viewport });
  const link = cuttable ? await cuttableLink(context) : null;
  // Every error toast the page shows, so the script can say which ones it expected.
  await context.addInitScript(() => {
    window.errorToasts = [];
    new MutationObserver((records) => {
      for (const r of records) {
        for (const n of r.addedNodes) if (n.classList?.contains("toast") && n.classList.contains("error")) window.errorToasts.push(n.textContent);
      }
    }).observe(document, { childList: true, subtree: true });
  });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(URL);
  await page.fill("#user-id", userId);
  await page.fill("#display-name", name);
  await page.click("#signin-button");
  await up(page);
  const p = { userId, name, page, errors, link };
  people.push(p);
  return p;
}

const up = (page) => page.waitForSelector("#connection.up", { state: "attached" });
const groupRow = (p) => p.page.locator(".conversation[data-kind=group]");
/** The message whose text is exactly `text` (mine, theirs, or either). */
const message = (p, text, mine) =>
  p.page
    .locator(mine === undefined ? ".message" : mine ? ".message.mine" : ".message:not(.mine)")
    .filter({ has: p.page.locator(".text", { hasText: new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`) }) });
/** alice's own message `text` showing "read by n of m". */
const readBy = (p, text, n, m) =>
  message(p, text, true).locator(`.read-by[data-read="${n}"][data-of="${m}"]`, { hasText: `read by ${n} of ${m}` });

async function send(p, text) {
  await p.page.fill("#message-input", text);
  await p.page.press("#message-input", "Enter");
}

/** The error toasts shown since the last look. */
const errorToasts = (p) => p.page.evaluate(() => window.errorToasts.splice(0));

async function shot(p, file) {
  if (SHOTS) await p.page.screenshot({ path: `${SHOTS}/${file}` });
}

async function run() {
  const alice = await person("alice", "Alice", { width: 1100, height: 700 });
  const bob = await person("bob", "Bob", { width: 900, height: 700 }, { cuttable: true });
  const carol = await person("carol", "Carol", { width: 390, height: 780 }); // phone width

  // Alice knows bob from a direct chat; the direct chat works as it always did.
  await alice.page.fill("#new-peer", "bob");
  await alice.page.click("#new-conversation button");
  await send(alice, "Hi Bob, a group is coming");
  await alice.page.waitForSelector(".message.mine:is([data-status=sent], [data-status=delivered])");
  await alice.page.locator('.conversation[data-peer="bob"] .preview', { hasText: "Hi Bob, a group is coming" }).waitFor();

  // The new-group form offers the people she knows; a bad id is refused and creates nothing.
  await alice.page.click("#new-group-toggle");
  await alice.page.fill("#group-title", "Care team");
  await alice.page.check('#group-known-list input[value="bob"]');
  await alice.page.fill("#group-ids", `carol, ${"x".repeat(65)}`);
  await alice.page.click("#create-group");
  await alice.page.locator(".toast.error", { hasText: "invalid_argument" }).click(); // read, and dismissed
  await alice.page.waitForSelector(".toast.error", { state: "detached" });
  assert.equal((await errorToasts(alice)).length, 1);
  assert.equal(await groupRow(alice).count(), 0, "a refused CreateGroup shows no group");
  assert.ok(await alice.page.isVisible("#new-group"), "the form stays open to fix");

  await alice.page.fill("#group-ids", "carol");
  await alice.page.click("#create-group");
  await alice.page.locator("#peer-name", { hasText: "Care team" }).waitFor();
  await alice.page.locator("#members-toggle", { hasText: "3 members" }).waitFor();
  assert.ok(await alice.page.isHidden("#new-group"));
  // It shows in bob's and carol's lists at once (GroupChanged), once.
  await groupRow(bob).filter({ hasText: "Care team" }).waitFor();
  await groupRow(carol).filter({ hasText: "Care team" }).waitFor();
  assert.equal(await groupRow(bob).count(), 1, "one group: the refused attempt created nothing");
  const groupId = await groupRow(bob).getAttribute("data-id");

  // Alice writes: nobody has read it yet; bob's and carol's lists show one unread.
  await send(alice, "Hello team");
  await readBy(alice, "Hello team", 0, 2).waitFor();
  for (const p of [bob, carol]) await groupRow(p).locator(".badge:not([hidden])", { hasText: "1" }).waitFor();
  // Both devices have it, so alice's ticks say delivered.
  await alice.page.waitForSelector(".message.mine[data-status=delivered]:has-text('Hello team')");

  // Bob opens the group: he sees who wrote it, his badge clears, and alice's count moves.
  await groupRow(bob).click();
  await message(bob, "Hello team", false).locator(".sender", { hasText: "Alice" }).waitFor();
  await groupRow(bob).locator(".badge[hidden]").waitFor({ state: "attached" });
  await readBy(alice, "Hello team", 1, 2).waitFor();
  // Carol (phone) opens it too: 2 of 2, and the ticks turn read.
  await groupRow(carol).click();
  await message(carol, "Hello team", false).waitFor();
  await readBy(alice, "Hello team", 2, 2).waitFor();
  await alice.page.waitForSelector(".message.mine[data-status=read]:has-text('Hello team') .ticks.read");
  await groupRow(carol).locator(".badge[hidden]").waitFor({ state: "attached" });

  // Typing names who types, to everyone else in the group.
  await bob.page.type("#message-input", "Hi al", { delay: 20 });
  await alice.page.locator("#typing:not([hidden])", { hasText: "Bob is typing…" }).waitFor();
  await carol.page.locator("#typing:not([hidden])", { hasText: "Bob is typing…" }).waitFor();
  await bob.page.fill("#message-input", "Hi all!");
  await bob.page.press("#message-input", "Enter");
  await message(alice, "Hi all!", false).locator(".sender", { hasText: "Bob" }).waitFor();
  await alice.page.waitForSelector("#typing[hidden]", { state: "attached" });
  await send(carol, "Morning, both!");
  await message(alice, "Morning, both!", false).locator(".sender", { hasText: "Carol" }).waitFor();
  await send(alice, "Great, everyone is here");
  await readBy(alice, "Great, everyone is here", 2, 2).waitFor();
  await message(bob, "Morning, both!", false).waitFor();

  // The members panel: names and roles; alice is the admin, who may remove the others.
  await alice.page.click("#members-toggle");
  await alice.page.locator('#members-panel .member[data-user="alice"][data-role="admin"]', { hasText: "Alice (you)" }).waitFor();
  await alice.page.locator('#members-panel .member[data-user="carol"][data-role="member"]', { hasText: "Carol" }).waitFor();
  assert.equal(await alice.page.locator("#members-panel .member .remove").count(), 2, "she may remove bob and carol");
  assert.ok(await alice.page.isVisible("#add-members-form"));
  await bob.page.type("#message-input", "See you", { delay: 20 });
  await alice.page.locator("#typing:not([hidden])", { hasText: "Bob is typing…" }).waitFor();
  await shot(alice, "demo-group-alice.png");
  await shot(carol, "demo-group-carol-phone.png");
  await bob.page.fill("#message-input", "");

  // Alice's other device (a plain socket) writes 30 more: carol reloads, gets the latest
  // page of 30, and "load older" brings the first four.
  const aliceSocket = await connect("alice");
  for (let i = 1; i <= 30; i++) await call(aliceSocket, "SendGroupMessage", groupId, `note ${i}`, `note-${i}`);
  aliceSocket.close();
  await message(alice, "note 30", true).waitFor(); // MessageSent reached her page
  await message(bob, "note 30", false).waitFor();
  await carol.page.reload();
  await up(carol.page);
  await message(carol, "note 30", false).waitFor();
  assert.equal(await carol.page.locator(".message").count(), 30, "the first page holds 30");
  await carol.page.click("#load-older");
  await message(carol, "Hello team", false).waitFor();
  assert.equal(await carol.page.locator(".message").count(), 34);
  await carol.page.waitForSelector("#load-older[hidden]", { state: "attached" });

  // Bob is no admin; alice adds dave, and everyone's panel follows.
  await bob.page.click("#members-toggle");
  await bob.page.locator('#members-panel .member[data-user="carol"]').waitFor();
  assert.equal(await bob.page.locator("#members-panel .remove").count(), 0, "bob is no admin");
  assert.ok(await bob.page.isHidden("#add-members-form"));
  assert.ok(await bob.page.isVisible("#leave-group"), "anyone may leave");
  await alice.page.fill("#add-members", "x".repeat(65));
  await alice.page.click("#add-members-button");
  await alice.page.locator(".toast.error", { hasText: "invalid_argument" }).waitFor();
  assert.equal((await errorToasts(alice)).length, 1);
  await alice.page.fill("#add-members", "dave");
  await alice.page.click("#add-members-button");
  await alice.page.locator('#members-panel .member[data-user="dave"]').waitFor();
  await alice.page.locator("#members-toggle", { hasText: "4 members" }).waitFor();
  await bob.page.locator('#members-panel .member[data-user="dave"]').waitFor();
  await bob.page.locator("#members-title", { hasText: "4 members" }).waitFor();

  // Bob drops off the network. Meanwhile carol leaves and alice writes; bob hears neither live.
  await cut(bob.link);
  await bob.page.waitForSelector("#connection:not(.up)", { state: "attached" });
  await carol.page.click("#members-toggle");
  await carol.page.locator('#members-panel .member[data-user="carol"]', { hasText: "Carol (you)" }).waitFor();
  await shot(carol, "demo-group-carol-members.png");
  await carol.page.click("#leave-group");
  await carol.page.locator("#left-note").waitFor();
  assert.ok(await carol.page.isHidden("#composer"), "a former member cannot write");
  await alice.page.locator('#members-panel .member[data-user="carol"]').waitFor({ state: "detached" });
  await alice.page.locator("#members-toggle", { hasText: "3 members" }).waitFor();
  await send(alice, "While you were away");
  await message(alice, "While you were away", true).waitFor();
  assert.equal(await bob.page.locator('#members-panel .member[data-user="carol"]').count(), 1);
  // Back online, bob's page reconnects and Sync brings the message and the group's change.
  bob.link.down = false;
  await up(bob.page);
  await message(bob, "While you were away", false).locator(".sender", { hasText: "Alice" }).waitFor();
  await bob.page.locator('#members-panel .member[data-user="carol"]').waitFor({ state: "detached" });
  await bob.page.locator("#members-title", { hasText: "3 members" }).waitFor();
  for (const text of await errorToasts(bob)) assert.match(text, /^Cannot connect/, "only the outage was reported");

  // Alice removes bob: he sees the group marked as left, his history still there.
  await alice.page.click('#members-panel .member[data-user="bob"] .remove');
  await alice.page.locator('#members-panel .member[data-user="bob"]').waitFor({ state: "detached" });
  await alice.page.locator("#members-toggle", { hasText: "2 members" }).waitFor();
  await bob.page.locator("#left-note").waitFor();
  assert.ok(await bob.page.isHidden("#composer"));
  await groupRow(bob).and(bob.page.locator(".left")).locator(".preview", { hasText: "no longer a member" }).waitFor();
  assert.equal(await bob.page.locator('#members-panel .member[data-user="bob"]').count(), 0);
  assert.ok(await bob.page.isHidden("#leave-group"));
  await message(bob, "Hello team", false).waitFor();
  await shot(bob, "demo-group-bob-removed.png");
  // Carol's list says the same of the group she left.
  await carol.page.click("#members-close");
  await carol.page.click("#back");
  await groupRow(carol).and(carol.page.locator(".left")).waitFor();

  // The direct chat carries on beside the group.
  await bob.page.locator('.conversation[data-peer="alice"]').click();
  await message(bob, "Hi Bob, a group is coming", false).waitFor();
  await send(bob, "Thanks for the group");
  const bobRow = alice.page.locator('.conversation[data-peer="bob"]');
  await bobRow.locator(".badge:not([hidden])", { hasText: "1" }).waitFor();
  await bobRow.click();
  await message(alice, "Thanks for the group", false).waitFor();
  assert.equal(await alice.page.locator(".message .sender").count(), 0, "a direct chat names nobody");
  assert.ok(await alice.page.isHidden("#members-toggle"));
  assert.ok(await alice.page.isHidden("#members-panel"), "the members panel is the group's");
  await bob.page.waitForSelector(".message.mine[data-status=read]:has-text('Thanks for the group') .ticks.read");
  await bobRow.locator(".badge[hidden]").waitFor({ state: "attached" });

  for (const p of [alice, bob, carol]) assert.deepEqual(await errorToasts(p), [], `${p.userId}'s page showed errors`);
}

try {
  await run();
  for (const p of people) assert.deepEqual(p.errors, [], `${p.userId}'s page threw`);
  console.log("demo-groups: ok");
} catch (e) {
  for (const p of people) {
    await shot(p, `failed-demo-groups-${p.userId}.png`).catch(() => undefined);
    if (p.errors.length) console.log(`${p.userId}'s page threw: ${p.errors.join("\n")}`);
  }
  throw e;
} finally {
  await browser.close();
}
process.exit(0);
