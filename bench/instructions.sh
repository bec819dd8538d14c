#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: the same figure on every run of the
# same binary, whatever else the (shared, virtualised) machine is doing, so a change of a few
# percent shows where timing A/Bs only show noise. All of the gateway's threads count (workers,
# the accounting writer, SQLite), for 1,000 sequential requests after 200 of warm-up.
#
#   bench/instructions.sh GATEHOUSE_BIN [TOP]     prints instructions per request, then the TOP
#                                                 (default 40) functions by inclusive cost
#
# INSTR_CONFIG appends sections to the gateway's config (to price one feature:
# INSTR_CONFIG='[redaction]\nmode = "off"'). INSTR_KEY holds `gatehouse keys create` flags
# (with INSTR_CONFIG='[auth]\nmode = "keys"'): requests then carry a key made with them, and
# INSTR_TEAM holds `gatehouse teams create` flags for a team the key joins. INSTR_OUT=FILE keeps
# the callgrind profile. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
GW_BIN=$1
TOP=${2:-40}
command -v valgrind > /dev/null || { echo "instructions.sh needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --locked --bin gatehouse-mock > /dev/null
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh

MOCK_PORT=$(free_port)
target/release/gatehouse-mock --port "$MOCK_PORT" > /dev/null &
PIDS+=($!)
PORT=$(free_port)
bench_config "$WORK/config.toml" "$WORK" "$MOCK_PORT" "${INSTR_CONFIG:-}"
KEY=""
if [ -n "${INSTR_KEY:-}" ]; then
  if [ -n "${INSTR_TEAM:-}" ]; then
    # shellcheck disable=SC2086
    "$GW_BIN" teams --data-dir "$WORK" create --name bench-team $INSTR_TEAM > /dev/null
    INSTR_KEY="$INSTR_KEY --team bench-team"
  fi
  # shellcheck disable=SC2086
  KEY=$("$GW_BIN" keys --data-dir "$WORK" create --name bench $INSTR_KEY --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
fi
GATEHOUSE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
  "$GW_BIN" serve --config "$WORK/config.toml" --port "$PORT" > "$WORK/gw.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
wait_http "http://127.0.0.1:$PORT/health/ready" 600

bench_body "$WORK/gw.json"
send() { # n: sequential requests, the body of run.sh and ab.sh
  python3 - "$PORT" "$1" "$WORK/gw.json" "$KEY" <<'PY'
import http.client, sys
body = open(sys.argv[3], "rb").read()
headers = {"Content-Type": "application/json"}
if sys.argv[4]:
    headers["Authorization"] = "Bearer " + sys.argv[4]
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    c.request("POST", "/v1/chat/completions", body, headers)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}
send 200
callgrind_control -z "$GW_PID" > /dev/null
send 1000
sleep 0.5 # the writer's last batch
callgrind_control -d "$GW_PID" > /dev/null
sleep 1
OUT=$(ls "$WORK"/cg.out.* | head -1)
# INSTR_OUT=FILE keeps the profile, for callgrind_annotate --tree=caller or kcachegrind.
[ -n "${INSTR_OUT:-}" ] && cp "$OUT" "$INSTR_OUT"
callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null > "$WORK/annotate.txt"
python3 - "$WORK/annotate.txt" "$TOP" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
total = next(int(l.split()[0].replace(",", "")) for l in lines if "PROGRAM TOTALS" in l)
print(f"{total / 1000:,.0f} instructions per request (1,000 requests)")
rows = []
for l in lines:
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(?:\?\?\?:|\S+?:)?(.*?)(?: \[[^]]*\])?$", l)
    if m and "PROGRAM TOTALS" not in l:
        rows.append((int(m.group(1).replace(",", "")) / 1000, m.group(2)))
shown = 0
for n, name in rows:
    # Skip the runtime's and the server's frames that contain every request.
    if re.search(r"^(clone$|start_thread|<std::sys::thread|std::|core::ops|tokio::runtime::(task|scheduler)|<axum::|<hyper_util::server|<futures_util::future::future::Map|hyper::proto::h1::dispatch::Dispatcher.*poll_write|gatehouse_server::listen|<F as axum|\./)", name):
        continue
    print(f"  {n:>9,.0f}  {name[:150]}")
    shown += 1
    if shown >= int(sys.argv[2]):
        break
PY
