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
    lat.setdefault("p999", lat.get("max", 0))
    print(f"{r['label']:32} {r['rps']:>10.0f} {lat.get('p50', 0):>8} {lat.get('p90', 0):>8} "
          f"{lat.get('p99', 0):>8} {lat.get('p999', 0):>8} {r['errors']:>5}")

# Driver and wrk, side by side: each non-streaming point measured by both tools in the same run.
# More than NOISE apart is reported as a disagreement, to be explained in RESULTS.md.
NOISE = 0.15
cross = []
for r in runs:
    if r.get("tool") == "wrk":
        continue
    w = find(f"wrk {r['label']}")
    if not w:
        continue
    gap = (w["rps"] - r["rps"]) / r["rps"] if r["rps"] else None
    cross.append({"label": r["label"], "driver_rps": round(r["rps"]), "wrk_rps": round(w["rps"]),
                  "driver_p50_us": us(r), "wrk_p50_us": us(w),
                  "driver_p99_us": us(r, q="p99"), "wrk_p99_us": us(w, q="p99"),
                  "wrk_vs_driver": round(gap, 3) if gap is not None else None,
                  "disagree": gap is not None and abs(gap) > NOISE})
if cross:
    print()
    print(f"{'cross-check':24} {'driver rps':>11} {'wrk rps':>9} {'wrk/drv':>8} {'drv p50':>8} {'wrk p50':>8}")
    for c in cross:
        flag = "  DISAGREE" if c["disagree"] else ""
        print(f"{c['label']:24} {c['driver_rps']:>11} {c['wrk_rps']:>9} {1 + (c['wrk_vs_driver'] or 0):>8.2f} "
              f"{c['driver_p50_us'] or 0:>8} {c['wrk_p50_us'] or 0:>8}{flag}")

summary = {}
if cross:
    summary["cross_check"] = cross
    wd1, wg1 = find("wrk direct c=1"), find("wrk gatehouse c=1")
    if wd1 and wg1:
        summary["wrk_added_latency_c1_us"] = {q: us(wg1, q=q) - us(wd1, q=q) for q in ["p50", "p99"]}
    wd64, wg64 = find("wrk direct c=64"), find("wrk gatehouse c=64")
    if wd64 and wg64 and wd64["rps"]:
        summary["wrk_gatehouse_share_of_direct_c64"] = wg64["rps"] / wd64["rps"]
    for peer in ["litellm-rs", "litellm"]:
        p = find(f"wrk {peer} c=64")
        if wg64 and p and p["rps"] > 0:
            summary[f"wrk_ratio_vs_{peer}_c64"] = wg64["rps"] / p["rps"]
d1, g1 = find("direct c=1"), find("gatehouse c=1")
if d1 and g1:
    summary["added_latency_c1_us"] = {q: us(g1, q=q) - us(d1, q=q) for q in ["p50", "p99"]}
g64 = find("gatehouse c=64")
d64 = find("direct c=64")
if g64:
    summary["gatehouse_rps_c64"] = g64["rps"]
    if d64 and d64["rps"]:
        summary["gatehouse_share_of_direct_c64"] = g64["rps"] / d64["rps"]
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
