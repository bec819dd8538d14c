"""Turns one bench run into a table (stdout) and a JSON file.

usage: report.py RESULTS.jsonl TOKENS.json WRITER.json PY_TOKENS_JSON_OR_EMPTY META_JSON OUT.json
"""
import json
import sys

results_path, tokens_path, writer_path, py_tokens, meta, out_path = sys.argv[1:7]
runs = [json.loads(line) for line in open(results_path) if line.strip()]
tokens = json.load(open(tokens_path))
py = json.loads(py_tokens) if py_tokens.strip() else None
meta = json.loads(meta)


def find(label):
    return next((r for r in runs if r["label"] == label), None)


def us(r, key="latency_us", q="p50"):
    return r[key][q] if r and r.get(key) else None


print(f"{'run':32} {'rps':>10} {'p50 µs':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'err':>5}")
for r in runs:
    lat = r["latency_us"] or {}
    print(f"{r['label']:32} {r['rps']:>10.0f} {lat.get('p50', 0):>8} {lat.get('p90', 0):>8} "
          f"{lat.get('p99', 0):>8} {lat.get('p999', 0):>8} {r['errors']:>5}")

summary = {}
d1, g1 = find("direct c=1"), find("gatehouse c=1")
if d1 and g1:
    summary["added_latency_c1_us"] = {q: us(g1, q=q) - us(d1, q=q) for q in ["p50", "p99"]}
g64 = find("gatehouse c=64")
if g64:
    summary["gatehouse_rps_c64"] = g64["rps"]
    for peer in ["litellm-rs", "litellm"]:
        p = find(f"{peer} c=64")
        if p and p["rps"] > 0:
            summary[f"ratio_vs_{peer}_c64"] = g64["rps"] / p["rps"]
under5 = [r for r in runs if r["label"].startswith("gatehouse c=") and r["latency_us"] and r["latency_us"]["p99"] < 5000]
if under5:
    best = max(under5, key=lambda r: r["rps"])
    summary["best_rps_p99_under_5ms"] = {"rps": best["rps"], "concurrency": best["concurrency"]}
w1, w64 = find("gatehouse+dashboard c=1"), find("gatehouse+dashboard c=64")
if w1 and d1:
    summary["added_latency_c1_with_dashboard_us"] = {q: us(w1, q=q) - us(d1, q=q) for q in ["p50", "p99"]}
if w64:
    summary["gatehouse_rps_c64_with_dashboard"] = w64["rps"]
ds, gs = find("direct stream c=16"), find("gatehouse stream c=16")
if ds and gs and ds.get("ttfb_us") and gs.get("ttfb_us"):
    summary["added_ttfb_stream_us"] = {q: us(gs, "ttfb_us", q) - us(ds, "ttfb_us", q) for q in ["p50", "p99"]}
    summary["stream_gap_us"] = {"direct_p99": us(ds, "gap_us", "p99"), "gatehouse_p99": us(gs, "gap_us", "p99")}
many = [r for r in runs if "streams=" in r["label"] and r["label"].startswith("gatehouse")]
if many:
    r = many[0]
    summary["concurrent_streams"] = {"opened": r["concurrency"], "completed": r["requests"] - r["errors"],
                                     "stalls_over_500ms": r["stalls"], "gap_p99_us": us(r, "gap_us", "p99")}
summary["memory_mib"] = {k.replace("_kib", ""): round(meta[k] / 1024, 1) for k in ["idle_rss_kib", "peak_rss_kib", "after_rss_kib"]}
if meta.get("requests"):
    summary["cpu_us_per_request"] = meta["cpu_s"] * 1e6 / meta["requests"]
summary["writer"] = json.load(open(writer_path))
summary["tokens"] = tokens
if py:
    summary["tokens_python_tiktoken"] = py
    for enc in ["cl100k_base", "o200k_base"]:
        if enc in py:
            summary[f"tokens_speedup_{enc}"] = tokens[enc]["mb_per_s"] / py[enc]["mb_per_s"]
            summary[f"tokens_same_counts_{enc}"] = tokens[enc]["tokens"] == py[enc]["tokens"]

print()
print(json.dumps(summary, indent=1))
json.dump({"meta": meta, "summary": summary, "runs": runs}, open(out_path, "w"), indent=1)
print(f"\nwrote {out_path}")
