// End-to-end test of the dashboard with [auth] mode = "keys", in a real browser (Debian's
// Chromium, driven by playwright-core): the page asks for a login, refuses a wrong password,
// logs in, creates a virtual key on the Keys card (shown once), the official `openai` package
// uses that key through the gateway, and the request shows on the dashboard with the key's id.
// Logging out brings the login form back and the API refuses the old cookie.
//
// Needs the binaries built (`cargo build --bins`); GATEHOUSE_BIN_DIR overrides target/debug,
// CHROMIUM overrides /usr/bin/chromium.

import { chromium } from "playwright-core";
import OpenAI from "openai";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.GATEHOUSE_BIN_DIR || join(ROOT, "target", "debug");
const OUT = join(ROOT, "target", "browser");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const PASSWORD = "a long enough passphrase";

mkdirSync(OUT, { recursive: true });
const children = [];
const tmp = mkdtempSync(join(tmpdir(), "gatehouse-login-"));

function firstLine(child, match, what) {
  return new Promise((ok, fail) => {
    const rl = createInterface({ input: child.stdout });
    const timer = setTimeout(() => fail(new Error(`${what}: not ready after 30 s`)), 30000);
    rl.on("line", (raw) => {
      const m = match(raw.replace(/\x1b\[[0-9;]*m/g, ""));
      if (m) {
        clearTimeout(timer);
        ok(m);
      }
    });
    child.on("exit", (code) => fail(new Error(`${what} exited with ${code}`)));
  });
}

async function main() {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GATEHOUSE_")));
  const mock = spawn(join(BIN, "gatehouse-mock"), [], { env, stdio: ["ignore", "pipe", "inherit"] });
  children.push(mock);
  const mockUrl = await firstLine(mock, (l) => (l.startsWith("http") ? l.trim() : null), "mock");
  const config = join(tmp, "config.toml");
  writeFileSync(
    config,
    `
[auth]
mode = "keys"

[providers.mock]
type = "openai"
base_url = "${mockUrl}"
api_key = "sk-upstream-test"

[models."mock/echo"]
provider = "mock"
model = "echo"
max_context_size = 8192
pricing = { input = 1.0, output = 4.0 }
`,
  );
  // The first admin, as the README says to make it.
  const made = spawnSync(join(BIN, "gatehouse"), ["users", "create", "root", "--role", "admin", "--password-stdin", "--config", config, "--data-dir", tmp], {
    env,
    input: PASSWORD + "\n",
    encoding: "utf8",
  });
  assert.equal(made.status, 0, made.stderr);

  const server = spawn(join(BIN, "gatehouse"), ["serve", "--config", config, "--port", "0", "--data-dir", tmp], {
    env,
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(server);
  const port = await firstLine(server, (l) => l.match(/gatehouse ready listen=127\.0\.0\.1:(\d+)/)?.[1], "gatehouse");
  const base = `http://127.0.0.1:${port}`;

  const profile = mkdtempSync(join(tmpdir(), "gatehouse-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
    viewport: { width: 1280, height: 900 },
    colorScheme: "light",
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  try {
    await page.goto(base + "/");
    await page.waitForSelector("#login:not([hidden])", { timeout: 5000 });
    console.log("  ok  the page asks for a login");
    await page.screenshot({ path: join(OUT, "login.png") });

    await page.fill("#login-user", "root");
    await page.fill("#login-password", "not the password");
    await page.click("#login-form button[type=submit]");
    await page.waitForFunction(() => document.querySelector("#login-error").textContent.includes("wrong user name or password"), null, { timeout: 5000 });
    console.log("  ok  a wrong password is refused");

    await page.fill("#login-password", PASSWORD);
    await page.click("#login-form button[type=submit]");
    await page.waitForSelector("#keys-card:not([hidden])", { timeout: 5000 });
    await page.waitForFunction(() => document.querySelector("#conn").dataset.state === "open", null, { timeout: 5000 });
    assert.equal(await page.textContent("#whoami"), "root (admin)");
    const cookies = await context.cookies(base);
    const access = cookies.find((c) => c.name === "gh_access");
    assert.ok(access?.httpOnly, "the login cookie is HttpOnly");
    assert.equal(access.sameSite, "Strict");
    assert.equal(await page.evaluate(() => document.cookie), "", "the page's script cannot read the login");
    console.log("  ok  logged in: Keys card, live connection, HttpOnly cookie");

    await page.fill("#key-name", "browser-key");
    await page.fill("#key-budget", "5");
    await page.click("#new-key-form button[type=submit]");
    await page.waitForSelector("#new-key:not([hidden])", { timeout: 5000 });
    const key = (await page.textContent("#new-key-value")).trim();
    assert.match(key, /^gh_[A-Za-z0-9_-]{43}$/);
    await page.waitForFunction(() => [...document.querySelectorAll("#keys .key .name")].some((n) => n.textContent === "browser-key"), null, { timeout: 5000 });
    const id = await page.getAttribute("#keys .key", "data-id");
    await page.click("#new-key-close");
    assert.equal(await page.textContent("#new-key-value"), "", "the key leaves the page once dismissed");
    console.log(`  ok  key ${id} created and shown once`);

    const client = new OpenAI({ apiKey: key, baseURL: `${base}/v1`, maxRetries: 0 });
    const answer = await client.chat.completions.create({ model: "mock/echo", messages: [{ role: "user", content: "hello from the browser test" }] });
    assert.ok(answer.choices[0].message.content.length > 0);
    await assert.rejects(
      new OpenAI({ apiKey: "gh_wrong", baseURL: `${base}/v1`, maxRetries: 0 }).chat.completions.create({ model: "mock/echo", messages: [{ role: "user", content: "x" }] }),
      (e) => e.status === 401,
    );
    await page.waitForFunction((id) => [...document.querySelectorAll("#log tbody tr")].some((tr) => tr.textContent.includes(id)), id, { timeout: 3000 });
    console.log("  ok  the openai SDK used the key; its request shows on the dashboard with the key");
    await page.reload();
    // After a reload (the cookie still logs in), the key's row shows what the request cost.
    await page.waitForFunction(() => /^\$0\.\d+ of \$5\.00$/.test(document.querySelector("#keys .key .spend")?.textContent || ""), null, { timeout: 5000 });
    await page.click("#keys .key .buttons button:has-text('Spend')");
    await page.waitForSelector("#keys .key .spend-chart rect.bar-spend", { timeout: 5000 });
    console.log("  ok  the key's spend per day is charted");
    await page.screenshot({ path: join(OUT, "keys.png"), fullPage: true });

    await page.click("#logout");
    await page.waitForSelector("#login:not([hidden])", { timeout: 5000 });
    const r = await fetch(`${base}/api/keys`, { headers: { cookie: `gh_access=${access.value}` } });
    assert.equal(r.status, 401, "the logged-out cookie no longer opens the API");
    console.log("  ok  logged out: the form is back and the old cookie is refused");

    assert.deepEqual(errors, [], `errors in the page: ${errors.join("; ")}`);
    console.log("dashboard login end-to-end: all checks passed");
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  console.error("FAILED:", e.message);
} finally {
  for (const c of children.reverse()) c.kill("SIGTERM");
  rmSync(tmp, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
