// Small formatting helpers shared by the dashboard modules.

const nf = new Intl.NumberFormat();

export function num(n) {
  return n == null ? "–" : nf.format(n);
}

export function compact(n) {
  if (n == null) return "–";
  if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(n >= 1e4 ? 0 : 1) + "k";
  return String(n);
}

export function pct(p) {
  return (Math.round(p * 10) / 10).toFixed(1) + "%";
}

export function usd(x) {
  if (x == null) return "–";
  if (x === 0) return "$0";
  return x < 0.01 ? "$" + x.toFixed(5) : "$" + x.toFixed(x < 1 ? 4 : 2);
}

export function time(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function dateTime(ms) {
  return new Date(ms).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

export function duration(msValue) {
  if (msValue == null) return "–";
  return msValue < 1000 ? msValue + " ms" : (msValue / 1000).toFixed(1) + " s";
}

/// Creates an element with attributes and children; text is always set as text, never HTML.
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c == null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
