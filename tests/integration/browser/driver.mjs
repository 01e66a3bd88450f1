// Drives the browser clients of tests/integration/test_browser.py.
//
// Started by pytest as `node driver.mjs USER_DATA_DIR`, it reads one JSON
// request a line on stdin and writes one JSON line on stdout per answer
// ({"id", "ok", "value"} or {"id", "ok": false, "error"}) and per log event
// ({"event": "log", "source", "text"}).  Requests run concurrently, so a wait
// for an event never blocks another request.
//
// Targets are the pages of one headless Chromium (started on the first
// "open", from /usr/bin/chromium, with a fresh profile in USER_DATA_DIR),
// named by the test; "call" runs a method of a page's global `agent` object.

import fs from "node:fs";
import readline from "node:readline";

import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
  // Loopback only: any other host name (Converse's sponsor logos, for one)
  // fails to resolve in the browser itself, without a DNS query.
  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
];

const userDataDir = process.argv[2];
if (!userDataDir) {
  process.stderr.write("usage: node driver.mjs USER_DATA_DIR\n");
  process.exit(2);
}

let context = null; // the persistent browser context, once launched
const pages = new Map(); // name -> playwright Page

function emit(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

function log(source, text) {
  emit({ event: "log", source, text: String(text) });
}

async function browser() {
  if (context === null) {
    fs.mkdirSync(userDataDir, { recursive: true });
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
    });
    context.on("close", () => log("browser", "browser context closed"));
    // No request interception (context.route): with it, Playwright answers
    // CORS preflights itself, and the server's own answers would go untested.
    // A persistent context opens with one blank tab: leave it unused.
  }
  return context;
}

function watchPage(name, page) {
  page.on("console", (message) => log(name, `console.${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => log(name, `page error: ${error.stack || error}`));
  page.on("requestfailed", (request) =>
    log(name, `request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`),
  );
  page.on("response", (response) => {
    if (response.status() >= 400) {
      log(name, `HTTP ${response.status()} for ${response.request().method()} ${response.url()}`);
    }
  });
  page.on("websocket", (socket) => {
    log(name, `websocket opened: ${socket.url()}`);
    socket.on("close", () => log(name, `websocket closed: ${socket.url()}`));
    socket.on("socketerror", (error) => log(name, `websocket error: ${error}`));
  });
  page.on("crash", () => log(name, "page crashed"));
}

function page(name) {
  const found = pages.get(name);
  if (!found) throw new Error(`no page named ${name}`);
  return found;
}

const operations = {
  // Open a page in its own tab: {name, url}.
  async open({ name, url }) {
    const ctx = await browser();
    const tab = await ctx.newPage();
    watchPage(name, tab);
    pages.set(name, tab);
    await tab.goto(url, { waitUntil: "load", timeout: 15000 });
    return tab.url();
  },

  // Load a target's page again with nothing kept in the browser: {target}.
  // The tab is closed (its page unloads and closes its connections), all its
  // origin stored (IndexedDB, localStorage, caches, cookies) is deleted, and
  // the same URL opens under the same name in a new tab, whose sessionStorage
  // is new and empty.
  async reopen({ target }) {
    const old = page(target);
    const url = old.url();
    const ctx = await browser();
    const tab = await ctx.newPage();
    await old.close();
    const cdp = await ctx.newCDPSession(tab);
    await cdp.send("Storage.clearDataForOrigin", { origin: new URL(url).origin, storageTypes: "all" });
    await cdp.detach();
    watchPage(target, tab);
    pages.set(target, tab);
    await tab.goto(url, { waitUntil: "load", timeout: 15000 });
    return tab.url();
  },

  // Call a method of a target's agent: {target, method, args}.
  async call({ target, method, args }) {
    return await page(target).evaluate(
      ([method, args]) => {
        if (!window.agent || typeof window.agent[method] !== "function") {
          throw new Error(`the page has no agent method ${method}`);
        }
        return window.agent[method](...args);
      },
      [method, args || []],
    );
  },

  // Evaluate a JavaScript expression in a page (a promise is awaited): {target, expression}.
  async evaluate({ target, expression }) {
    return await page(target).evaluate(expression);
  },

  // Type into the first visible element matching a selector: {target, selector, text}.
  async fill({ target, selector, text, timeout }) {
    const locator = page(target).locator(selector).locator("visible=true").first();
    await locator.fill(text, { timeout: timeout ?? 10000 });
    return true;
  },

  // Press a key in the first visible element matching a selector: {target, selector, key}.
  async press({ target, selector, key, timeout }) {
    const locator = page(target).locator(selector).locator("visible=true").first();
    await locator.press(key, { timeout: timeout ?? 10000 });
    return true;
  },

  async click({ target, selector, timeout }) {
    const locator = page(target).locator(selector).locator("visible=true").first();
    await locator.click({ timeout: timeout ?? 10000 });
    return true;
  },

  // Wait until an element matching a selector (and containing text, if given)
  // is visible; its text: {target, selector, text, timeout}.
  async waitVisible({ target, selector, text, timeout }) {
    let locator = page(target).locator(selector);
    if (text) locator = locator.filter({ hasText: text });
    locator = locator.first();
    await locator.waitFor({ state: "visible", timeout: timeout ?? 10000 });
    return await locator.innerText();
  },

  // Wait until an element matching a selector is in the page, shown or not
  // (an SVG <image> has no text to return): {target, selector, timeout}.
  async waitAttached({ target, selector, timeout }) {
    await page(target).locator(selector).first().waitFor({ state: "attached", timeout: timeout ?? 10000 });
    return true;
  },

  // Choose a file in a file input, as a person picking it would (its change
  // event fires): {target, selector, name, mimeType, base64}.
  async chooseFile({ target, selector, name, mimeType, base64 }) {
    await page(target).locator(selector).first().setInputFiles(
      { name, mimeType, buffer: Buffer.from(base64, "base64") }, { timeout: 10000 });
    return true;
  },

  // The visible texts of the elements matching a selector: {target, selector}.
  async texts({ target, selector }) {
    return await page(target).locator(selector).allInnerTexts();
  },

  async screenshot({ target, path }) {
    await page(target).screenshot({ path, fullPage: true });
    return path;
  },

  // Close the browser.
  async close() {
    if (context !== null) {
      await context.close();
      context = null;
    }
    return true;
  },
};

async function handle(line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    log("driver", `bad request line: ${line}`);
    return;
  }
  const { id, op, ...params } = request;
  try {
    const operation = operations[op];
    if (!operation) throw new Error(`unknown operation ${op}`);
    const value = await operation(params);
    emit({ id, ok: true, value: value === undefined ? null : value });
  } catch (error) {
    // The message without the JavaScript stack (a page's stack names only library internals).
    const message = String(error && error.message ? error.message : error);
    emit({ id, ok: false, error: message.split("\n").filter((line) => !/^\s+at /.test(line)).join("\n") });
  }
}

const input = readline.createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (line.trim()) handle(line);
});
input.on("close", async () => {
  // pytest went away: leave nothing running.
  try {
    await operations.close();
  } finally {
    process.exit(0);
  }
});
