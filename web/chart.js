// A small SVG chart of tokens per request (stacked prompt / completion bars) and a breakdown
// by provider/model. Drawn from scratch on each update: a few hundred nodes at most.

import { compact, num, time, el } from "./format.js";

// A namespace name, not an address: nothing is fetched.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (v <= 0) return 10;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/// points: [{ at, prompt, completion, label }] oldest first.
export function drawChart(node, points) {
  const w = Math.max(200, Math.round(node.clientWidth || 600));
  const h = Math.max(120, Math.round(node.clientHeight || 220));
  node.setAttribute("viewBox", `0 0 ${w} ${h}`);
  node.replaceChildren();
  const left = 44, right = 8, top = 8, bottom = 22;
  const pw = w - left - right, ph = h - top - bottom;
  if (!points.length) {
    node.append(svg("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "empty" }, "no requests yet"));
    return;
  }
  const max = niceMax(Math.max(...points.map((p) => p.prompt + p.completion)));
  for (let i = 0; i <= 4; i++) {
    const v = (max / 4) * i;
    const y = top + ph - (ph * v) / max;
    node.append(svg("line", { x1: left, x2: w - right, y1: y, y2: y, class: "axis" }));
    node.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "label" }, compact(v)));
  }
  const slot = pw / points.length;
  const bw = Math.max(1, Math.min(24, slot * 0.7));
  points.forEach((p, i) => {
    const x = left + i * slot + (slot - bw) / 2;
    const hp = (ph * p.prompt) / max;
    const hc = (ph * p.completion) / max;
    const g = svg("g");
    g.append(svg("title", {}, `${p.label}\nprompt ${num(p.prompt)} · completion ${num(p.completion)}`));
    g.append(svg("rect", { x, y: top + ph - hp, width: bw, height: Math.max(hp, 0.5), class: "bar-prompt" }));
    g.append(svg("rect", { x, y: top + ph - hp - hc, width: bw, height: hc, class: "bar-completion" }));
    node.append(g);
  });
  node.append(svg("text", { x: left, y: h - 6, class: "label" }, time(points[0].at)));
  if (points.length > 1) {
    node.append(svg("text", { x: w - right, y: h - 6, "text-anchor": "end", class: "label" }, time(points[points.length - 1].at)));
  }
}

/// items: [{ key, tokens, requests }]
export function drawBreakdown(node, items) {
  node.replaceChildren();
  if (!items.length) {
    node.append(el("div", { class: "muted small", text: "nothing yet" }));
    return;
  }
  const max = Math.max(...items.map((i) => i.tokens), 1);
  for (const it of items.sort((a, b) => b.tokens - a.tokens)) {
    const bar = el("div", { class: "bd-bar" });
    bar.style.width = Math.max(1, (100 * it.tokens) / max) + "%";
    node.append(
      el("div", { class: "bd-row", title: `${it.key}: ${num(it.tokens)} tokens in ${it.requests} requests` },
        el("span", { class: "ellipsis", text: it.key }),
        el("div", {}, bar),
        el("span", { class: "num", text: `${compact(it.tokens)} · ${it.requests}` })),
    );
  }
}

/// rows: [{ group: "YYYY-MM-DD", cost_usd, requests }] oldest first: a key's spend per day.
export function drawSpend(node, rows) {
  const w = Math.max(200, Math.round(node.clientWidth || 400));
  const h = 90;
  node.setAttribute("viewBox", `0 0 ${w} ${h}`);
  node.replaceChildren();
  if (!rows.length) {
    node.append(svg("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "empty" }, "no spend in 30 days"));
    return;
  }
  const left = 52, right = 8, top = 6, bottom = 18;
  const pw = w - left - right, ph = h - top - bottom;
  const max = Math.max(...rows.map((r) => r.cost_usd), 1e-9);
  node.append(svg("text", { x: left - 6, y: top + 8, "text-anchor": "end", class: "label" }, `$${max.toPrecision(2)}`));
  node.append(svg("line", { x1: left, x2: w - right, y1: top + ph, y2: top + ph, class: "axis" }));
  const slot = pw / rows.length;
  const bw = Math.max(2, Math.min(24, slot * 0.7));
  rows.forEach((r, i) => {
    const hh = Math.max(0.5, (ph * r.cost_usd) / max);
    const g = svg("g");
    g.append(svg("title", {}, `${r.group}: $${r.cost_usd.toFixed(6)} in ${r.requests} requests`));
    g.append(svg("rect", { x: left + i * slot + (slot - bw) / 2, y: top + ph - hh, width: bw, height: hh, class: "bar-prompt bar-spend" }));
    node.append(g);
  });
  node.append(svg("text", { x: left, y: h - 4, class: "label" }, rows[0].group));
  if (rows.length > 1) node.append(svg("text", { x: w - right, y: h - 4, "text-anchor": "end", class: "label" }, rows[rows.length - 1].group));
}
