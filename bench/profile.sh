#!/usr/bin/env bash
# Where the c=1 time goes: one gateway binary against the mock, a closed loop of one client
# (wrk, one connection), and per request: the gateway's CPU time, its context switches and
# syscalls by kind, the mock's CPU time, the in-gateway overhead the gateway reports
# (X-Gatehouse-Overhead-Us), and (when perf works here) the top of a CPU profile.
#
#   bench/profile.sh [GATEHOUSE_BIN] [SECONDS]     prints a report; PROFILE_OUT=dir keeps the raw files
#
# PROFILE_CONFIG appends sections to the gateway's config (as AB_NEW_CONFIG in ab.sh).
# strace slows the gateway while it counts, so syscalls are counted in a run of their own and
# the latencies come from the runs without it.
set -euo pipefail
cd "$(dirname "$0")/.."
GW_BIN=${1:-target/release/gatehouse}
DUR=${2:-5}
cargo build --release --locked --bin gatehouse-mock >/dev/null
WRK=$(command -v wrk) || { echo "profile.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
WORK=$(mktemp -d)
OUT=${PROFILE_OUT:-$WORK}
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh

MOCK_PORT=$(free_port)
target/release/gatehouse-mock --port "$MOCK_PORT" > /dev/null &
MOCK_PID=$!
PIDS+=($MOCK_PID)
bench_body "$WORK/gw.json"
PORT=$(free_port)
bench_config "$WORK/config.toml" "$WORK" "$MOCK_PORT" "${PROFILE_CONFIG:-}"
GATEHOUSE_LOG=warn "$GW_BIN" serve --config "$WORK/config.toml" --port "$PORT" > "$WORK/gw.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
wait_http "http://127.0.0.1:$PORT/health/ready"
GW="http://127.0.0.1:$PORT/v1/chat/completions"
DIRECT="http://127.0.0.1:$MOCK_PORT/v1/chat/completions"

wrk1() { # url seconds -> the run's JSON line
  WRK_LABEL=x "$WRK" -t1 -c1 -d"$2s" --latency -s bench/wrk/post.lua "$1" -- "$WORK/gw.json" 2>/dev/null | grep '^{'
}
# Sum over a process's threads: utime+stime ticks, voluntary and involuntary switches.
counters() {
  local pid=$1 t ticks=0 vol=0 invol=0
  for t in /proc/"$pid"/task/*; do
    ticks=$((ticks + $(awk '{print $14 + $15}' "$t/stat")))
    vol=$((vol + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")))
    invol=$((invol + $(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status")))
  done
  echo "$ticks $vol $invol"
}

wrk1 "$GW" 1 > /dev/null # warm: connections, caches, the vocabulary
wrk1 "$DIRECT" "$DUR" > "$WORK/direct.json"
read -r g0 gv0 gi0 < <(counters $GW_PID)
read -r m0 _ _ < <(counters $MOCK_PID)
wrk1 "$GW" "$DUR" > "$WORK/gw.json.out"
read -r g1 gv1 gi1 < <(counters $GW_PID)
read -r m1 _ _ < <(counters $MOCK_PID)
echo "$g0 $gv0 $gi0 $m0 $g1 $gv1 $gi1 $m1 $(getconf CLK_TCK)" > "$WORK/counters.txt"

# The gateway's own account of its time per request (total minus waiting on upstream).
python3 - "$PORT" "$WORK/gw.json" > "$WORK/overhead.txt" <<'PY'
import http.client, statistics, sys
port, body = int(sys.argv[1]), open(sys.argv[2], "rb").read()
c = http.client.HTTPConnection("127.0.0.1", port)
xs = []
for _ in range(3000):
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    xs.append(int(r.getheader("x-gatehouse-overhead-us", "0")))
xs.sort()
print(xs[len(xs) // 2], xs[int(len(xs) * 0.99)])
PY

# Syscalls per request, in a run of their own.
if command -v strace > /dev/null; then
  strace -c -f -q -p "$GW_PID" -o "$WORK/strace.txt" &
  ST=$!
  sleep 0.5
  wrk1 "$GW" 3 > "$WORK/strace-run.json"
  kill -INT $ST; wait $ST 2>/dev/null || true
fi
# A CPU profile, when perf can sample here (cpu-clock: this VM has no hardware counters).
if command -v perf > /dev/null && perf record -e cpu-clock -o /dev/null true 2>/dev/null; then
  perf record -e cpu-clock -F 4999 -g -o "$WORK/perf.data" -p "$GW_PID" -- sleep 4 2>/dev/null &
  PF=$!
  wrk1 "$GW" 4 > /dev/null
  wait $PF 2>/dev/null || true
  perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -40 > "$WORK/perf.txt" || true
fi

python3 - "$WORK" <<'PY'
import json, os, re, sys
w = sys.argv[1]
d = json.load(open(f"{w}/direct.json")); g = json.load(open(f"{w}/gw.json.out"))
g0, gv0, gi0, m0, g1, gv1, gi1, m1, hz = map(int, open(f"{w}/counters.txt").read().split())
n = g["requests"]
ov50, ov99 = open(f"{w}/overhead.txt").read().split()
print(f"c=1, wrk, one connection: {n} requests through the gateway")
print(f"  latency p50/p99   direct {d['latency_us']['p50']}/{d['latency_us']['p99']} µs, "
      f"gateway {g['latency_us']['p50']}/{g['latency_us']['p99']} µs, "
      f"added {g['latency_us']['p50'] - d['latency_us']['p50']}/{g['latency_us']['p99'] - d['latency_us']['p99']} µs")
print(f"  rps               direct {d['rps']:.0f}, gateway {g['rps']:.0f}")
print(f"  in-gateway time   p50 {ov50} µs, p99 {ov99} µs (X-Gatehouse-Overhead-Us)")
print(f"  gateway CPU       {(g1 - g0) / hz * 1e6 / n:.1f} µs/request (user+system, all threads)")
print(f"  mock CPU          {(m1 - m0) / hz * 1e6 / n:.1f} µs/request")
print(f"  context switches  {(gv1 - gv0) / n:.2f} voluntary, {(gi1 - gi0) / n:.2f} involuntary per request")
if os.path.exists(f"{w}/strace.txt"):
    sn = json.load(open(f"{w}/strace-run.json"))["requests"] or 1
    rows = []
    for line in open(f"{w}/strace.txt"):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":
            rows.append((int(m.group(1)) / sn, m.group(2)))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"  syscalls          {total:.1f} per request: " + ", ".join(f"{name} {c:.2f}" for c, name in rows[:10]))
if os.path.exists(f"{w}/perf.txt"):
    print("  CPU profile (perf, cpu-clock, top symbols):")
    for line in open(f"{w}/perf.txt").readlines()[:25]:
        print("    " + line.strip())
PY
if [ "$OUT" != "$WORK" ]; then cp "$WORK"/*.txt "$WORK"/*.json* "$OUT"/ 2>/dev/null || true; fi
