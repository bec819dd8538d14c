// The dashboard: state fed by /ws (init, then events) and a few REST calls for actions.

import { Live } from "./live.js";
import { drawBreakdown, drawChart, drawSpend } from "./chart.js";
import { compact, dateTime, duration, el, num, pct, time, usd } from "./format.js";

const MAX_ROWS = 200;
const CHART_POINTS = 60;
const $ = (id) => document.getElementById(id);

const state = {
  sessions: new Map(), // id -> summary {id, name, model_key, provider, request_count, cumulative_total_tokens, ...}
  activeId: null,
  viewId: null,
  stats: null,
  gauge: null,
  rows: [], // newest first: {kind: "request"|"log", ...}
  counted: new Set(), // request ids already in stats
  notes: new Map(), // request id -> what the context features did to it
  alertLevel: null,
  models: [],
  providers: [],
  demo: false,
};

// ---------- REST ----------

// With [auth] mode = "keys" the login is an HttpOnly cookie the page never sees: a 401 means it
// expired, so the refresh cookie is tried once before the login form comes back.
async function api(method, path, body, retried = false) {
  const res = await fetch(path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
    credentials: "same-origin",
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (res.status === 401 && !retried && !path.startsWith("/api/auth/")) {
    if (await refreshLogin()) return api(method, path, body, true);
    showLogin();
  }
  if (!res.ok) throw new Error(data?.error?.message || res.statusText);
  return data;
}

// One refresh at a time: a refresh token works once, and a second use of it reads as a stolen
// copy (the server then ends the whole login), so calls that find the login expired together
// share one refresh.
let refreshing = null;
function refreshLogin() {
  if (!refreshing) {
    refreshing = fetch("/api/auth/refresh", { method: "POST", credentials: "same-origin" })
      .then((r) => r.ok)
      .catch(() => false)
      .finally(() => setTimeout(() => (refreshing = null), 1000));
  }
  return refreshing;
}

function showLogin(message) {
  $("login").hidden = false;
  document.body.classList.add("locked");
  if (message) $("login-error").textContent = message;
  $("login-user").focus();
}

// Whether someone must log in first: with mode "none" /api/auth/me answers at once.
async function checkLogin() {
  let r = await fetch("/api/auth/me", { credentials: "same-origin" });
  if (r.status === 401 && (await refreshLogin())) r = await fetch("/api/auth/me", { credentials: "same-origin" });
  if (r.status === 401) return null;
  const me = await r.json();
  return me;
}

function initLogin() {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("login-error").textContent = "";
    const res = await fetch("/api/auth/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username: $("login-user").value, password: $("login-password").value }),
      credentials: "same-origin",
    });
    if (res.ok) {
      location.reload();
      return;
    }
    const data = await res.json().catch(() => null);
    $("login-error").textContent = data?.error?.message || res.statusText;
  });
  $("logout").addEventListener("click", async () => {
    await fetch("/api/auth/logout", { method: "POST", credentials: "same-origin" });
    location.reload();
  });
}

async function loadSession(id) {
  if (!id) {
    setView(null, null, null, []);
    return;
  }
  const [s, r] = await Promise.all([
    api("GET", `/api/sessions/${encodeURIComponent(id)}`),
    api("GET", `/api/sessions/${encodeURIComponent(id)}/requests?limit=${MAX_ROWS}`),
  ]);
  setView(id, s.stats, s.gauge, r.requests || []);
}

// ---------- state changes ----------

function setView(id, stats, gauge, recent) {
  state.viewId = id;
  state.stats = stats ? { ...stats } : null;
  state.gauge = gauge;
  state.counted = new Set(recent.map((r) => r.id));
  state.rows = recent.map((r) => ({ kind: "request", ...r, note: state.notes.get(r.id) ?? r.routing ?? undefined }));
  const level = alertLevelOf(gauge?.pct ?? 0);
  state.alertLevel = level;
  if (level) showAlert(level, `Context at ${pct(gauge.pct)} of the window`);
  else hideAlert();
  renderAll();
}

function alertLevelOf(p) {
  return p >= 95 ? "critical" : p >= 90 ? "warning" : p >= 80 ? "caution" : null;
}

function upsertSession(s, extra = {}) {
  const prev = state.sessions.get(s.id) || { request_count: 0, cumulative_total_tokens: 0, last_request_at: null };
  state.sessions.set(s.id, { ...prev, ...s, ...extra });
}

function onMessage(m) {
  switch (m.type) {
    case "init": {
      state.demo = !!m.server?.demo;
      state.sessions.clear();
      for (const s of m.sessions || []) state.sessions.set(s.id, s);
      state.activeId = m.active_session?.id ?? null;
      setView(state.activeId, m.stats, m.gauge, m.recent_requests || []);
      state.watcher = m.log_watcher || [];
      renderWatcher();
      break;
    }
    case "new_session":
      upsertSession(m.session);
      if (m.active) {
        state.activeId = m.session.id;
        setView(m.session.id, emptyStats(), null, []);
      } else renderSessions();
      break;
    case "session_renamed":
      upsertSession(m.session);
      renderSessions();
      renderHead();
      break;
    case "session_activated":
      state.activeId = m.session.id;
      renderSessions();
      loadSession(m.session.id).catch(showError);
      break;
    case "session_deleted":
      state.sessions.delete(m.session_id);
      if (state.activeId === m.session_id) state.activeId = null;
      if (state.viewId === m.session_id) setView(null, null, null, []);
      else renderSessions();
      break;
    case "sanitizer_event":
      if (state.economy) {
        state.economy.since_start.masked_messages += m.masked.length;
        state.economy.since_start.tokens_saved += m.tokens_saved;
        renderEconomy();
      }
      // How many originals are new is the server's to say; ask once things settle.
      clearTimeout(state.economyTimer);
      state.economyTimer = setTimeout(() => loadEconomy().catch(() => {}), 500);
      addNote(m.request_id, `masked ${m.masked.length} message${m.masked.length > 1 ? "s" : ""} (−${num(m.tokens_saved)} tokens)`);
      break;
    case "redaction":
      addNote(m.request_id, "redacted " + m.found.map((f) => `${f.kind}×${f.count}`).join(", "));
      break;
    case "compaction_event": {
      const c = m.compaction;
      if (state.compaction) {
        state.compaction.global.count += 1;
        state.compaction.global.tokens_saved += c.tokens_saved;
        renderEconomy();
      }
      if (c.request_id) {
        addNote(c.request_id, `compacted ${c.summarized} messages (${c.strategy}, −${num(c.tokens_saved)} tokens)`);
      }
      break;
    }
    case "compaction_paused":
      addNote(m.request_id, `compaction paused after ${m.consecutive} in a row`);
      break;
    case "request_started":
      if (m.session_id !== state.viewId) break;
      state.rows.unshift({
        kind: "request", pending: true, id: m.request_id, created_at: m.at, model_key: m.model,
        provider: m.provider, status: null, prompt_tokens_est: m.prompt_tokens_est, stream: m.stream,
        note: state.notes.get(m.request_id),
      });
      trimRows();
      renderLog();
      break;
    case "routing":
      addNote(m.request_id, m.reason);
      // A fallback may mean a breaker changed state: refresh the providers list.
      if (/fell back|skipped/.test(m.reason)) {
        api("GET", "/api/providers").then((p) => { state.providers = p.providers; renderProviders(); }).catch(() => {});
      }
      break;
    case "metric":
      onMetric(m);
      break;
    case "alert":
      if (m.session_id !== state.viewId) break;
      state.alertLevel = m.level;
      if (m.level) showAlert(m.level, m.message);
      else hideAlert();
      break;
    case "log_metric":
      onLogMetric(m);
      break;
    case "streaming_error": {
      const row = state.rows.find((r) => r.id === m.request_id);
      if (row) {
        row.error_message = m.message;
        renderLog();
      }
      break;
    }
    default:
      break;
  }
}

/// Notes arrive before the request's row exists; they are attached when it appears.
function addNote(id, text) {
  const prev = state.notes.get(id);
  state.notes.set(id, prev ? `${prev}; ${text}` : text);
  if (state.notes.size > 500) state.notes.delete(state.notes.keys().next().value);
  const row = state.rows.find((r) => r.id === id);
  if (row) {
    row.note = state.notes.get(id);
    renderLog();
  }
}

function emptyStats() {
  return {
    request_count: 0, current_input_tokens: 0, current_output_tokens: 0, current_total_tokens: 0,
    cumulative_input_tokens: 0, cumulative_output_tokens: 0, cumulative_total_tokens: 0,
    max_context: 0, current_pct: 0, cost_usd: null,
  };
}

function onMetric(m) {
  const r = m.request;
  const input = r.prompt_tokens ?? r.prompt_tokens_est;
  const output = r.completion_tokens ?? 0;
  // As the server counts: every request in the count, only answered ones in the tokens.
  const ok = r.status >= 200 && r.status < 300;
  const billed = ok ? input + output : 0;
  const summary = state.sessions.get(r.session_id);
  if (summary && !state.counted.has(r.id)) {
    summary.request_count = (summary.request_count || 0) + 1;
    summary.cumulative_total_tokens = (summary.cumulative_total_tokens || 0) + billed;
    summary.last_request_at = r.created_at;
  }
  if (r.session_id === state.viewId) {
    if (!state.counted.has(r.id)) {
      state.counted.add(r.id);
      const s = (state.stats ||= emptyStats());
      s.request_count += 1;
      if (ok) {
        s.cumulative_input_tokens += input;
        s.cumulative_output_tokens += output;
        s.cumulative_total_tokens += billed;
        s.current_input_tokens = input;
        s.current_output_tokens = output;
        s.current_total_tokens = billed;
        s.max_context = r.max_context;
      }
      if (r.cost_usd != null) s.cost_usd = (s.cost_usd || 0) + r.cost_usd;
    }
    if (m.gauge) state.gauge = m.gauge;
    const i = state.rows.findIndex((x) => x.id === r.id);
    const row = { kind: "request", fresh: true, ...r, note: (i >= 0 ? state.rows[i].note : undefined) ?? state.notes.get(r.id) ?? r.routing ?? undefined };
    if (i >= 0) state.rows[i] = row;
    else state.rows.unshift(row);
    trimRows();
    renderAll();
  } else {
    renderSessions();
  }
}

function onLogMetric(m) {
  const w = (state.watcher || []).find((p) => p.path === m.path);
  if (w) {
    w.state = "following";
    w.metrics += 1;
    renderWatcher();
  }
  const g = m.gauge;
  if (g && g.session_id === state.viewId) state.gauge = g;
  state.rows.unshift({
    kind: "log", fresh: true, created_at: m.at, metric: m.metric, path: m.path,
  });
  trimRows();
  renderGauge();
  renderLog();
}

function trimRows() {
  if (state.rows.length > MAX_ROWS) state.rows.length = MAX_ROWS;
}

// ---------- rendering ----------

function renderAll() {
  renderHead();
  renderGauge();
  renderChart();
  renderLog();
  renderSessions();
}

function renderHead() {
  const s = state.sessions.get(state.viewId);
  $("session-name").textContent = s ? s.name : "no session yet";
  $("session-name").title = s ? `${s.name} (${s.id})` : "";
  $("demo-badge").hidden = !state.demo;
  const q = state.viewId ? `?session=${encodeURIComponent(state.viewId)}` : "";
  $("export-csv").href = `/api/export/csv${q}`;
  $("export-json").href = `/api/export/json${q}`;
  for (const id of ["export-csv", "export-json"]) $(id).toggleAttribute("aria-disabled", !state.viewId);
}

function renderGauge() {
  const g = state.gauge;
  const s = state.stats || emptyStats();
  const p = g ? Math.min(100, g.pct) : 0;
  const gauge = $("gauge");
  gauge.dataset.band = g ? g.band : "green";
  $("gauge-fill").setAttribute("stroke-dasharray", `${p} 100`);
  $("gauge-pct").textContent = pct(g ? g.pct : 0);
  $("gauge-sub").textContent = g ? `${compact(g.tokens)} / ${compact(g.max_context)} tokens` : "no figures yet";
  $("gauge-source").textContent = g ? g.source.replace("_", " ") : "–";
  $("f-current").textContent = num(g ? g.tokens : s.current_total_tokens);
  $("f-split").textContent = `${num(s.current_input_tokens)} / ${num(s.current_output_tokens)}`;
  $("f-cumulative").textContent = num(s.cumulative_total_tokens);
  $("f-window").textContent = num(g?.max_context || s.max_context || null);
  $("f-requests").textContent = num(s.request_count);
  $("f-cost").textContent = usd(s.cost_usd ?? null);
  const total = s.current_input_tokens + s.current_output_tokens;
  $("split-prompt").style.width = total ? (100 * s.current_input_tokens) / total + "%" : "0";
  $("split-completion").style.width = total ? (100 * s.current_output_tokens) / total + "%" : "0";
}

function renderChart() {
  const reqs = state.rows.filter((r) => r.kind === "request" && !r.pending);
  const points = reqs.slice(0, CHART_POINTS).reverse().map((r) => ({
    at: r.created_at,
    prompt: r.prompt_tokens ?? r.prompt_tokens_est ?? 0,
    completion: r.completion_tokens ?? 0,
    label: `${time(r.created_at)} ${r.model_key}`,
  }));
  drawChart($("chart"), points);
  const by = new Map();
  for (const r of reqs) {
    const key = r.model_key;
    const e = by.get(key) || { key, tokens: 0, requests: 0 };
    e.tokens += (r.prompt_tokens ?? r.prompt_tokens_est ?? 0) + (r.completion_tokens ?? 0);
    e.requests += 1;
    by.set(key, e);
  }
  drawBreakdown($("breakdown"), [...by.values()]);
}

function renderLog() {
  const body = $("log").tBodies[0];
  body.replaceChildren(...state.rows.map(logRow));
  for (const r of state.rows) r.fresh = false;
}

function logRow(r) {
  if (r.kind === "log") {
    const m = r.metric;
    const tokens = m.total_tokens ?? m.prompt_tokens ?? null;
    return el("tr", { class: `src-logs${r.fresh ? " fresh" : ""}`, title: m.raw },
      el("td", { text: time(r.created_at) }),
      el("td", { text: m.kind.replace("_", " ") }),
      el("td", { class: "hide-s", text: "log" }),
      el("td", { class: "status", text: m.kind === "api_error" ? "limit" : "–" }),
      el("td", { class: "num", text: num(tokens) }),
      el("td", { class: "num", text: "" }),
      el("td", { class: "hide-s detail", text: m.context_length ? `window ${num(m.context_length)}` : m.limit ? `limit ${num(m.limit)}` : "" }));
  }
  const failed = r.status != null && (r.status >= 400 || r.error_type);
  const tokens = r.pending ? `~${num(r.prompt_tokens_est)}` : num((r.prompt_tokens ?? r.prompt_tokens_est ?? 0) + (r.completion_tokens ?? 0));
  const detail = [r.error_message || r.error_type, r.key_id, r.note, r.preview].filter(Boolean).join(" · ");
  const cls = ["src-proxy", r.pending ? "pending" : "", failed ? "failed" : "", r.fresh ? "fresh" : ""].join(" ");
  return el("tr", { class: cls, "data-id": r.id },
    el("td", { text: time(r.created_at) }),
    el("td", { text: r.model_key }),
    el("td", { class: "hide-s", text: r.provider }),
    el("td", { class: "status", text: r.pending ? "…" : String(r.status) + (r.stream ? " ⇣" : "") }),
    el("td", { class: "num", text: tokens }),
    el("td", { class: "num", text: r.pending ? "" : duration(r.latency_ms) }),
    el("td", { class: "hide-s detail", text: detail, title: detail }));
}

function renderSessions() {
  const list = $("sessions");
  const items = [...state.sessions.values()].sort((a, b) => (b.last_request_at ?? b.created_at) - (a.last_request_at ?? a.created_at));
  list.replaceChildren(...items.map(sessionItem));
}

function sessionItem(s) {
  const active = s.id === state.activeId;
  const name = el("span", { class: "name", text: s.name, title: s.id });
  const buttons = el("span", { class: "buttons" });
  const li = el("li", { class: active ? "active" : "", "data-id": s.id }, name, buttons,
    el("span", { class: "meta", text: `${s.model_key ?? "any model"} · ${num(s.request_count ?? 0)} req · ${compact(s.cumulative_total_tokens ?? 0)} tok · ${dateTime(s.created_at)}` }));
  if (!active) {
    buttons.append(el("button", { type: "button", text: "Activate", onclick: () => api("POST", `/api/sessions/${encodeURIComponent(s.id)}/activate`).catch(showError) }));
  }
  buttons.append(el("button", { type: "button", text: "Rename", onclick: () => startRename(li, s) }));
  const del = el("button", { type: "button", class: "danger", text: "Delete" });
  del.addEventListener("click", () => {
    if (del.dataset.armed) {
      api("DELETE", `/api/sessions/${encodeURIComponent(s.id)}`).catch(showError);
    } else {
      del.dataset.armed = "1";
      del.textContent = "Confirm";
      setTimeout(() => {
        delete del.dataset.armed;
        del.textContent = "Delete";
      }, 3000);
    }
  });
  buttons.append(del);
  return li;
}

function startRename(li, s) {
  const input = el("input", { value: s.name, maxlength: "200", "aria-label": "New name" });
  const save = async () => {
    const name = input.value.trim();
    if (name && name !== s.name) await api("PATCH", `/api/sessions/${encodeURIComponent(s.id)}`, { name }).catch(showError);
    renderSessions();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") save();
    if (e.key === "Escape") renderSessions();
  });
  input.addEventListener("blur", save);
  li.querySelector(".name").replaceWith(input);
  input.focus();
  input.select();
}

function renderModels() {
  const select = $("new-model");
  const groups = new Map();
  for (const m of state.models) {
    if (!groups.has(m.provider)) groups.set(m.provider, []);
    groups.get(m.provider).push(m);
  }
  const keyed = new Map(state.providers.map((p) => [p.key, p]));
  select.replaceChildren(el("option", { value: "", text: "Any model" }));
  for (const [provider, models] of [...groups].sort()) {
    const p = keyed.get(provider);
    const label = `${provider}${p?.demo ? " (simulated demo)" : ""}${p && !p.key_configured ? " (no key)" : ""}`;
    const g = el("optgroup", { label });
    for (const m of models) g.append(el("option", { value: m.key, text: `${m.key} · ${compact(m.max_context_size)}` }));
    select.append(g);
  }
}

function renderProviders() {
  $("providers").replaceChildren(...state.providers.map((p) => {
    const breaker = p.circuit_breaker && p.circuit_breaker.state !== "closed" ? ` · breaker ${p.circuit_breaker.state.replace("_", "-")}` : "";
    const status = (p.demo ? "demo (simulated)" : !p.served ? "not served yet" : p.has_key ? "key set" : p.key_configured ? "no key needed" : `set ${p.key_env}`) + breaker;
    const cls = p.key_configured && p.served && !breaker ? "key-ok" : "key-missing";
    return el("li", {}, el("span", { text: `${p.key} · ${p.models.length} models` }), el("span", { class: cls, text: status }));
  }));
}

function renderWatcher() {
  const paths = state.watcher;
  const n = $("watcher");
  if (!paths || !paths.length) {
    n.textContent = "Log watcher: off";
    return;
  }
  n.textContent = "Log watcher: " + paths.map((p) => `${p.path} (${p.state}, ${p.metrics} figures)`).join("; ");
}

function renderEconomy() {
  const e = state.economy;
  if (!e) return;
  const t = $("sanitizer-toggle");
  t.textContent = `Masking: ${e.enabled ? "on" : "off"}`;
  t.setAttribute("aria-pressed", String(e.enabled));
  t.title = e.enabled ? "Stop masking large tool output and context" : "Mask large tool output and context again";
  $("e-saved").textContent = num(e.since_start.tokens_saved);
  $("e-masked").textContent = num(e.since_start.masked_messages);
  $("e-originals").textContent = num(e.stored.originals);
  $("e-redaction").textContent = e.redaction_mode === "off" ? "forwarded" : e.redaction_mode === "block" ? "blocked" : "redacted";
  const c = state.compaction;
  if (c) $("e-compactions").textContent = `${num(c.global.count)} (−${num(c.global.tokens_saved)})`;
}

async function loadEconomy() {
  [state.economy, state.compaction] = await Promise.all([
    api("GET", "/api/sanitizer/stats"),
    api("GET", "/api/compaction/stats"),
  ]);
  renderEconomy();
}

// ---------- alerts, connection, theme ----------

function showAlert(level, message) {
  const a = $("alert");
  a.dataset.level = level;
  a.querySelector(".alert-text").textContent = `${level.toUpperCase()}: ${message}`;
  a.hidden = false;
}

function hideAlert() {
  $("alert").hidden = true;
}

// ---------- keys ----------

async function loadKeys() {
  const r = await api("GET", "/api/keys");
  renderKeys(r.keys || []);
}

function renderKeys(keys) {
  const ul = $("keys");
  ul.replaceChildren();
  if (!keys.length) ul.append(el("li", { class: "muted", text: "No virtual keys yet." }));
  for (const k of keys) {
    const li = el("li", { class: "key" });
    li.dataset.id = k.id;
    const limit = k.max_budget_usd != null ? ` of ${usd(k.max_budget_usd)}` : "";
    li.append(
      el("span", { class: "name", text: k.name }),
      el("code", { class: "muted", text: `${k.prefix}…${k.last4}` }),
      el("span", { class: "spend", text: `${usd(k.spend_usd ?? 0)}${limit}` }),
      el("span", { class: k.blocked ? "pill bad" : "pill", text: k.blocked ? "blocked" : "active" }),
    );
    const buttons = el("span", { class: "buttons" });
    buttons.append(
      el("button", {
        type: "button",
        text: k.blocked ? "Unblock" : "Block",
        onclick: () => api("POST", `/api/keys/${encodeURIComponent(k.id)}/${k.blocked ? "unblock" : "block"}`).then(loadKeys).catch(showError),
      }),
      el("button", {
        type: "button",
        text: "Spend",
        onclick: () => toggleSpend(li, k.id).catch(showError),
      }),
      el("button", {
        type: "button",
        text: "Rotate",
        onclick: () => api("POST", `/api/keys/${encodeURIComponent(k.id)}/rotate`, { grace: "60s" }).then(showNewKey).then(loadKeys).catch(showError),
      }),
    );
    li.append(buttons);
    ul.append(li);
  }
}

// A key's spend per day over the last 30 days, under its row; a second click hides it.
async function toggleSpend(li, id) {
  const open = li.querySelector(".spend-chart");
  if (open) {
    open.remove();
    return;
  }
  const r = await api("GET", `/api/keys/${encodeURIComponent(id)}/spend?group_by=day`);
  const node = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  node.setAttribute("class", "spend-chart");
  node.setAttribute("role", "img");
  node.setAttribute("aria-label", "spend per day");
  li.append(node);
  drawSpend(node, r.groups || []);
}

// The key itself is in this one answer only: shown with a copy button, then gone.
function showNewKey(r) {
  $("new-key-value").textContent = r.key;
  $("new-key").hidden = false;
}

function initKeys(me) {
  if (me.auth !== "keys") return;
  $("keys-card").hidden = false;
  $("new-key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { name: $("key-name").value.trim() };
    const models = $("key-models").value.trim();
    if (models) body.models = models.split(",").map((m) => m.trim()).filter(Boolean);
    const budget = $("key-budget").value.trim();
    if (budget) body.max_budget_usd = Number(budget);
    try {
      showNewKey(await api("POST", "/api/keys", body));
      $("key-name").value = "";
      await loadKeys();
    } catch (err) {
      showError(err);
    }
  });
  $("new-key-copy").addEventListener("click", () => navigator.clipboard?.writeText($("new-key-value").textContent));
  $("new-key-close").addEventListener("click", () => {
    $("new-key-value").textContent = "";
    $("new-key").hidden = true;
  });
  loadKeys().catch(showError);
}

function showError(e) {
  const a = $("alert");
  a.dataset.level = "warning";
  a.querySelector(".alert-text").textContent = String(e.message || e);
  a.hidden = false;
}

function setConn(s) {
  const c = $("conn");
  c.dataset.state = s;
  c.querySelector(".label").textContent = s === "open" ? "live" : s === "connecting" ? "connecting" : "reconnecting";
}

function initTheme() {
  const saved = localStorage.getItem("gatehouse-theme");
  if (saved) document.documentElement.dataset.theme = saved;
  $("theme").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    const next = dark ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("gatehouse-theme", next);
  });
}

// ---------- start ----------

async function main() {
  initTheme();
  initLogin();
  const me = await checkLogin().catch(() => null);
  if (!me) {
    showLogin();
    return;
  }
  if (me.user) {
    $("whoami").textContent = `${me.user.username} (${me.user.role})`;
    $("whoami").hidden = false;
    $("logout").hidden = false;
  }
  initKeys(me);
  $("alert").querySelector(".alert-close").addEventListener("click", hideAlert);
  $("new-session").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("new-name").value.trim();
    const model = $("new-model").value;
    const body = {};
    if (name) body.name = name;
    if (model) body.model = model;
    try {
      await api("POST", "/api/sessions", body);
      $("new-name").value = "";
    } catch (err) {
      showError(err);
    }
  });
  Promise.all([api("GET", "/api/models"), api("GET", "/api/providers")])
    .then(([m, p]) => {
      state.models = m.models;
      state.providers = p.providers;
      renderModels();
      renderProviders();
    })
    .catch(showError);
  $("sanitizer-toggle").addEventListener("click", async () => {
    try {
      const r = await api("POST", "/api/sanitizer/toggle", { enabled: !state.economy?.enabled });
      if (state.economy) state.economy.enabled = r.enabled;
      renderEconomy();
    } catch (err) {
      showError(err);
    }
  });
  $("compact-now").addEventListener("click", async () => {
    if (!state.viewId) return;
    try {
      const r = await api("POST", `/api/compaction/${encodeURIComponent(state.viewId)}`, { force: true });
      $("compact-result").textContent = r.message;
    } catch (err) {
      showError(err);
    }
  });
  loadEconomy().catch(showError);
  window.addEventListener("resize", () => renderChart());
  renderAll();
  // The socket ended with the login, or was refused: renew the login, or bring the form back.
  const onLogin = async () => {
    const r = await fetch("/api/auth/me", { credentials: "same-origin" }).catch(() => null);
    if (r?.status === 401 && !(await refreshLogin())) showLogin();
  };
  new Live({ onMessage, onState: setConn, onLogin }).start();
}

main();
