// Two people chat in two real Chromium contexts against a live dev-mode server:
// alice sends, bob sees it live, alice's tick turns to read, typing shows,
// bob replies, and a reload restores the thread from history.
// Run by tests/test_js_clients.py, which starts the server and sets CHAT_URL;
// tests/test_cluster.py sets CHAT_OTHER_URL too: bob's page comes from there
// (the other instance) while alice's comes through nginx.
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const URL = process.env.CHAT_URL;
const BOB_URL = process.env.CHAT_OTHER_URL || URL;
const SHOTS = process.env.CHAT_SCREENSHOT_DIR;
const TIMEOUT_MS = 10_000;

const browser = await chromium.launch({
  executablePath: process.env.CHAT_CHROMIUM || "/usr/bin/chromium",
  // Root in a container needs --no-sandbox; the rest keep Chromium off the closed network.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

async function person(userId, name, viewport, url = URL) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.fill("#user-id", userId);
  await page.fill("#display-name", name);
  await page.click("#signin-button");
  await page.waitForSelector("#connection.up", { state: "attached" });
  return { page, errors };
}

try {
  const alice = await person("alice", "Alice", { width: 1100, height: 700 });
  const bob = await person("bob", "Bob", { width: 390, height: 780 }, BOB_URL); // phone width

  // Alice starts a conversation with bob and sends.
  await alice.page.fill("#new-peer", "bob");
  await alice.page.click("#new-conversation button");
  await alice.page.fill("#message-input", "Hello Bob 👋");
  await alice.page.press("#message-input", "Enter");
  await alice.page.waitForSelector(".message.mine[data-status=sent], .message.mine[data-status=delivered]");

  // Bob sees it live in his list: unread badge, online dot, preview.
  const row = bob.page.locator('.conversation[data-peer="alice"]');
  await row.locator(".badge:not([hidden])").waitFor();
  assert.equal(await row.locator(".badge").textContent(), "1");
  assert.equal(await row.locator(".preview").textContent(), "Hello Bob 👋");
  assert.ok(await row.locator(".dot.online").count(), "alice shows as online");
  // The message reached bob's socket, so alice sees two grey ticks.
  await alice.page.waitForSelector(".message.mine[data-status=delivered] .ticks.delivered");

  // Bob opens the thread: the message is on screen, so it is read; alice's tick turns blue.
  await row.click();
  await bob.page.locator(".message", { hasText: "Hello Bob 👋" }).waitFor();
  await alice.page.waitForSelector(".message.mine[data-status=read] .ticks.read");
  await row.locator(".badge[hidden]").waitFor({ state: "attached" });

  // Typing shows on the other side, and goes away.
  await alice.page.type("#message-input", "are you th", { delay: 20 });
  await bob.page.waitForSelector("#typing:not([hidden])");
  if (SHOTS) {
    await alice.page.screenshot({ path: `${SHOTS}/demo-alice.png` });
    await bob.page.screenshot({ path: `${SHOTS}/demo-bob-phone.png` });
  }
  await bob.page.waitForSelector("#typing[hidden]", { state: "attached", timeout: 8000 });
  await alice.page.fill("#message-input", "");

  // Bob replies; alice sees it live in her open thread.
  await bob.page.fill("#message-input", "Hi Alice!");
  await bob.page.click("#send");
  await alice.page.locator(".message:not(.mine)", { hasText: "Hi Alice!" }).waitFor();

  // A reload restores bob's session and the thread from history.
  await bob.page.reload();
  await bob.page.waitForSelector("#connection.up", { state: "attached" });
  await bob.page.locator(".message", { hasText: "Hello Bob 👋" }).waitFor();
  await bob.page.locator(".message.mine", { hasText: "Hi Alice!" }).waitFor();

  // An error from an ack is shown to the person, not swallowed.
  await bob.page.fill("#message-input", "x".repeat(4000) + "y");
  await bob.page.evaluate(() => document.getElementById("message-input").removeAttribute("maxlength"));
  await bob.page.fill("#message-input", "x".repeat(4001));
  await bob.page.click("#send");
  await bob.page.locator(".toast.error", { hasText: "invalid_argument" }).waitFor();

  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
  console.log("two-people: ok");
} finally {
  await browser.close();
}
