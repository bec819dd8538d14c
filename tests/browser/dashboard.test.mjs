// End-to-end test of the dashboard in a real browser (Debian's Chromium, driven by
// playwright-core): it opens the dashboard, sends requests through the gateway to the mock
// upstream, and checks that the gauge, the chart and the request log update within one second
// without a reload; it creates and switches sessions, sees an alert, downloads a CSV, and saves
// screenshots (desktop and phone width, light and dark) under target/browser/.
//
// Needs the binaries built (`cargo build --bins`); GATEHOUSE_BIN_DIR overrides target/debug,
// CHROMIUM overrides /usr/bin/chromium.

import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.GATEHOUSE_BIN_DIR || join(ROOT, "target", "debug");
const OUT = join(ROOT, "target", "browser");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const UPDATE_BUDGET_MS = 1000;

mkdirSync(OUT, { recursive: true });
const children = [];
const tmp = mkdtempSync(join(tmpdir(), "gatehouse-e2e-"));

function start(cmd, args, env = {}) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  return child;
}

/// Resolves with the first stdout line that `match` accepts (mapped by it).
function firstLine(child, match, what) {
  return new Promise((ok, fail) => {
    const rl = createInterface({ input: child.stdout });
    const timer = setTimeout(() => fail(new Error(`${what}: not ready after 30 s`)), 30000);
    rl.on("line", (raw) => {
      const line = raw.replace(/\x1b\[[0-9;]*m/g, "");
      const m = match(line);
      if (m) {
        clearTimeout(timer);
        ok(m);
      }
    });
    child.on("exit", (code) => fail(new Error(`${what} exited with ${code}`)));
  });
}

async function chat(base, body, headers = {}) {
  const r = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return { headers: r.headers, text };
}

const user = (model, content, stream = false) => ({ model, stream, messages: [{ role: "user", content }] });

/// Waits for `fn` to hold in the page, failing if it takes longer than `budget` ms.
async function within(page, what, fn, arg, budget = UPDATE_BUDGET_MS) {
  const t0 = Date.now();
  try {
    await page.waitForFunction(fn, arg, { timeout: budget, polling: 20 });
  } catch (e) {
    throw new Error(`${what}: not visible within ${budget} ms (${e.message.split("\n")[0]})`);
  }
  const ms = Date.now() - t0;
  console.log(`  ok  ${what} (${ms} ms)`);
  return ms;
}

async function main() {
  const mock = start(join(BIN, "gatehouse-mock"), []);
  const mockUrl = await firstLine(mock, (l) => (l.startsWith("http") ? l.trim() : null), "mock");
  const config = join(tmp, "config.toml");
  writeFileSync(
    config,
    `
[providers.mock]
type = "openai"
base_url = "${mockUrl}"
api_key = "sk-upstream-test"

[models."mock/echo"]
provider = "mock"
model = "chunks:12"
max_context_size = 8192
pricing = { input = 1.0, output = 4.0 }

[models."mock/slow"]
provider = "mock"
model = "chunks:30+gap:20"
max_context_size = 8192

[models."mock/full"]
provider = "mock"
model = "chunks:8"
max_context_size = 20

[log_watcher]
paths = ["${join(tmp, "core.log")}"]
`,
  );
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GATEHOUSE_")));
  const server = spawn(join(BIN, "gatehouse"), ["serve", "--config", config, "--port", "0", "--data-dir", tmp], {
    env,
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(server);
  const port = await firstLine(server, (l) => l.match(/gatehouse ready listen=127\.0\.0\.1:(\d+)/)?.[1], "gatehouse");
  const base = `http://127.0.0.1:${port}`;
  console.log(`gateway ${base}, mock ${mockUrl}`);

  const profile = mkdtempSync(join(tmpdir(), "gatehouse-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    ],
    viewport: { width: 1280, height: 800 },
    acceptDownloads: true,
    colorScheme: "light",
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));

  try {
    await page.goto(base + "/");
    await within(page, "connection indicator live", () => document.querySelector("#conn").dataset.state === "open", null, 5000);
    assert.equal(await page.textContent("#gauge-pct"), "0.0%");

    // 1. A request through the gateway: gauge, chart and log update without a reload.
    const first = await chat(base, user("mock/echo", "How do I read a file in Rust?"));
    const firstSession = first.headers.get("x-gatehouse-session");
    await within(page, "gauge moved", () => document.querySelector("#gauge-pct").textContent !== "0.0%");
    await within(page, "chart has a bar", () => document.querySelectorAll("#chart rect.bar-prompt").length === 1);
    await within(page, "log row", () => document.querySelector("#log tbody tr td:nth-child(2)")?.textContent === "mock/echo");
    await within(page, "cost shown", () => document.querySelector("#f-cost").textContent.startsWith("$"));
    assert.equal(await page.textContent("#f-requests"), "1");

    // 2. A stream: the row appears while it runs, and is completed when it ends.
    const streaming = chat(base, user("mock/slow", "Explain lifetimes", true), { "x-gatehouse-session": firstSession });
    await within(page, "pending stream row", () => document.querySelector("#log tbody tr.pending") !== null);
    await streaming;
    await within(page, "stream row done", () =>
      document.querySelectorAll("#log tbody tr").length === 2 && !document.querySelector("#log tbody tr.pending"));
    await within(page, "chart has two bars", () => document.querySelectorAll("#chart rect.bar-prompt").length === 2);
    await within(page, "breakdown by model", () => document.querySelectorAll("#breakdown .bd-row").length === 2);

    // 2b. What the context features did shows on the request's row.
    const toolLog = Array.from({ length: 170 }, (_, i) => `tests/test_orders.py::test_case_${i} PASSED`).join("\n");
    const agent = {
      model: "mock/echo",
      messages: [
        { role: "user", content: "Run the tests. My env has GITHUB_TOKEN=ghp_A1b2C3d4E5A1b2C3d4E5A1b2C3d4E5A1b2C3d4E5" },
        { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "run_tests", arguments: "{}" } }] },
        { role: "tool", tool_call_id: "call_1", content: toolLog },
        { role: "user", content: "Summarise." },
      ],
    };
    await chat(base, agent, { "x-gatehouse-session": firstSession });
    await within(page, "masking and redaction noted on the row", () => {
      const d = document.querySelector("#log tbody tr td.detail")?.textContent || "";
      return d.includes("masked 1 message") && d.includes("redacted github_token×1");
    });

    // The context-economy card counts what was saved and switches masking.
    await within(page, "tokens saved counted", () => Number(document.querySelector("#e-saved").textContent.replace(/\D/g, "")) > 1000);
    await within(page, "the kept original counted", () => document.querySelector("#e-originals").textContent === "1", null, 2000);
    assert.equal(await page.textContent("#sanitizer-toggle"), "Masking: on");
    await page.click("#sanitizer-toggle");
    await within(page, "masking switched off", () => document.querySelector("#sanitizer-toggle").textContent === "Masking: off");
    const off = await (await fetch(`${base}/api/sanitizer/stats`)).json();
    assert.equal(off.enabled, false);
    await page.click("#sanitizer-toggle");
    await within(page, "masking switched on", () => document.querySelector("#sanitizer-toggle").textContent === "Masking: on");

    // "Compact now" summarises the viewed session's older turns and counts it.
    const long = { model: "mock/echo", messages: [] };
    for (let i = 0; i < 4; i++) {
      const ask = `Step ${i}: change src/step_${i}.rs please. ` + "Keep the public API stable and add tests for the new behaviour. ".repeat(4);
      long.messages.push({ role: "user", content: ask }, { role: "assistant", content: `Changed src/step_${i}.rs and added two tests.` });
    }
    long.messages.push({ role: "user", content: "Next step." });
    await chat(base, long, { "x-gatehouse-session": firstSession });
    await page.click("#compact-now");
    await within(page, "compaction result shown", () => document.querySelector("#compact-result").textContent.includes("messages summarised"), null, 2000);
    await within(page, "compaction counted", () => document.querySelector("#e-compactions").textContent.startsWith("1 "));

    // 3. A figure from Continue's log reaches the gauge, labelled with its source.
    writeFileSync(join(tmp, "core.log"), "Request had the following token counts\n- contextLength: 8192\n- counted tokens: 2000\n- tools: 48\n\n");
    await within(page, "log figure in the gauge", () => document.querySelector("#gauge-source").textContent === "compile chat", null, 2000);
    await within(page, "log row coloured as logs", () => document.querySelector("#log tbody tr.src-logs") !== null);

    // 4. Create a session from the UI, with a model picked in the grouped picker.
    await page.fill("#new-name", "Browser session");
    const options = await page.$$eval("#new-model optgroup", (gs) => gs.map((g) => g.label));
    assert.ok(options.includes("mock"), `provider groups: ${options}`);
    await page.selectOption("#new-model", "mock/echo");
    await page.click("#new-session button[type=submit]");
    await within(page, "new session active", () => {
      const active = document.querySelector("#sessions li.active .name");
      return active?.textContent === "Browser session" && document.querySelector("#session-name").textContent === "Browser session";
    });
    assert.equal(await page.textContent("#f-requests"), "0");
    await chat(base, user("mock/echo", "A question in the new session"));
    await within(page, "request counted in the new session", () => document.querySelector("#f-requests").textContent === "1");

    // 5. Switch back to the first session.
    await page.click(`#sessions li[data-id="${firstSession}"] button:has-text("Activate")`);
    await within(page, "first session shown again", () => document.querySelector("#f-requests").textContent === "4", null, 2000);
    await within(page, "its rows are back", () => document.querySelectorAll("#log tbody tr.src-proxy").length === 4, null, 2000);

    // 6. An alert: a request filling a 20-token window shows the critical banner, coloured.
    await chat(base, user("mock/full", "hi"), { "x-gatehouse-session": firstSession });
    await within(page, "critical alert banner", () => {
      const a = document.querySelector("#alert");
      return !a.hidden && a.dataset.level === "critical";
    });
    const bg = await page.$eval("#alert", (a) => getComputedStyle(a).backgroundColor);
    assert.equal(bg, "rgb(239, 68, 68)");
    assert.equal(await page.$eval("#gauge", (g) => g.dataset.band), "red");
    await page.waitForTimeout(600); // let the gauge's transition finish before the picture
    await page.screenshot({ path: join(OUT, "dashboard-desktop.png"), fullPage: true });

    // 7. Download the session's CSV.
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export-csv")]);
    const csvPath = join(OUT, "export.csv");
    await download.saveAs(csvPath);
    const csv = readFileSync(csvPath, "utf8").split("\r\n").filter(Boolean);
    assert.ok(csv[0].startsWith("id,session_id,created_at,"), csv[0]);
    assert.equal(csv.length, 1 + 5, `header and 5 rows of the first session, got ${csv.length}`);
    assert.ok(!csv.join("\n").includes("ghp_A1b2"), "the secret is in no stored row");
    console.log(`  ok  CSV downloaded: ${download.suggestedFilename()} (${csv.length - 1} rows)`);

    // 8. Phone width, then dark mode.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(150);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `page scrolls sideways at phone width by ${overflow}px`);
    await page.screenshot({ path: join(OUT, "dashboard-phone.png"), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.click("#theme");
    await page.waitForTimeout(150);
    const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    assert.equal(dark, "rgb(15, 17, 21)");
    await page.screenshot({ path: join(OUT, "dashboard-dark.png"), fullPage: true });

    // 9. The gateway restarts: the page shows it, reconnects by itself, and is fed a fresh init.
    server.kill("SIGTERM");
    await new Promise((ok) => server.once("exit", ok));
    await within(page, "disconnection shown", () => document.querySelector("#conn").dataset.state !== "open", null, 3000);
    const again = spawn(join(BIN, "gatehouse"), ["serve", "--config", config, "--port", port, "--data-dir", tmp], {
      env,
      stdio: ["ignore", "pipe", "inherit"],
    });
    children.push(again);
    await firstLine(again, (l) => l.includes("gatehouse ready"), "gatehouse (restarted)");
    await within(page, "reconnected", () => document.querySelector("#conn").dataset.state === "open", null, 8000);
    await chat(base, user("mock/echo", "after the restart"), { "x-gatehouse-session": firstSession });
    await within(page, "live again after the restart", () => document.querySelector("#f-requests").textContent === "6");

    // The page logged no errors, apart from the refused connections while the gateway was down.
    const real = errors.filter((e) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(e));
    assert.deepEqual(real, [], `errors in the page: ${real.join("; ")}`);
    console.log("dashboard end-to-end: all checks passed; screenshots in target/browser/");
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
