#!/usr/bin/env bash
# A/B of two gateway binaries on the same machine, minutes apart: alternating rounds of the
# c=1 and c=64 non-streaming loads of run.sh, so drift of the (shared, virtualised) machine hits
# both sides alike. Prints the median of each side, as measured by gatehouse-bench and, when wrk
# is installed, by wrk too (one thread, one connection per client), so every A/B is cross-checked.
#
#   bench/ab.sh OLD_GATEHOUSE_BIN NEW_GATEHOUSE_BIN [ROUNDS]
#
# AB_NEW_SERVER adds lines to the new side's [server] section (one binary, two settings:
# AB_NEW_SERVER='header_read_timeout_secs = 0' bench/ab.sh BIN BIN). AB_NEW_CONFIG appends whole
# sections to the new side's file, to price one feature:
# AB_NEW_CONFIG='[redaction]\nmode = "off"' bench/ab.sh BIN BIN; AB_CONFIG appends to both sides'
# files (a price for mock/bench: AB_CONFIG='[models."mock/bench".pricing]\ninput = 1.0\noutput = 2.0').
# AB_NEW_KEY holds `gatehouse keys
# create` flags: the new side gets a virtual key with them (put `[auth]\nmode = "keys"` in
# AB_NEW_CONFIG), and both sides are sent it, so their requests are the same bytes:
# AB_NEW_CONFIG='[auth]\nmode = "keys"' AB_NEW_KEY='--rpm 100000000 --tpm 100000000000 --budget 1000000' bench/ab.sh BIN BIN.
# AB_NEW_TEAM holds `gatehouse teams create` flags: the key then belongs to that team.
# AB_KEY_BOTH=1 gives the old side the same key (a copy of the new side's database), so one
# binary can be priced with and without a setting of the keys, e.g. Redis:
# AB_CONFIG='[auth]\nmode = "keys"' AB_NEW_CONFIG='[redis]\nurl = "redis://127.0.0.1:6379"' AB_KEY_BOTH=1 AB_NEW_KEY='--rpm 100000000' bench/ab.sh BIN BIN.
#
# Build the old side from another checkout, e.g.
#   git worktree add /tmp/old <rev> && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --bin gatehouse)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-5}
DUR=${BENCH_DURATION:-3}
cargo build --release --locked --bin gatehouse-mock --bin gatehouse-bench >/dev/null
BIN=target/release
WRK=$(command -v wrk || true)
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh

MOCK_PORT=$(free_port)
"$BIN/gatehouse-mock" --port "$MOCK_PORT" > /dev/null &
PIDS+=($!)
bench_body "$WORK/gw.json"

KEY=""
measure() { # name url -> appends "name c rps p50 p99" lines (wrk's as "wrk-name")
  local name=$1 url=$2 c
  for c in 1 64; do
    "$BIN/gatehouse-bench" load --label "$name" --url "$url" ${KEY:+--auth "$KEY"} \
      --body "$WORK/gw.json" --concurrency "$c" --duration "$DUR" |
      python3 -c "import json,sys; r=json.load(sys.stdin); print('$name', $c, round(r['rps']), r['latency_us']['p50'], r['latency_us']['p99'])" \
      >> "$WORK/ab.txt"
    [ -z "$WRK" ] && continue
    WRK_LABEL="$name" "$WRK" -t1 -c"$c" -d"${DUR}s" --latency -s bench/wrk/post.lua "$url" -- "$WORK/gw.json" "$KEY" 2>/dev/null |
      grep '^{' |
      python3 -c "import json,sys; r=json.load(sys.stdin); print('wrk-$name', $c, round(r['rps']), r['latency_us']['p50'], r['latency_us']['p99'])" \
      >> "$WORK/ab.txt"
  done
}

run_side() { # name bin
  local name=$1 bin=$2 port
  port=$(free_port)
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name/config.toml" <<TOML
[server]
data_dir = "$WORK/$name"
$( [ "$name" = new ] && printf '%b' "${AB_NEW_SERVER:-}" )
[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
api_key = "sk-bench"
[models."mock/bench"]
provider = "mock"
model = "bench"
max_context_size = 131072
$( printf '%b' "${AB_CONFIG:-}" )
$( [ "$name" = new ] && printf '%b' "${AB_NEW_CONFIG:-}" )
TOML
  GATEHOUSE_LOG=warn HOME="$WORK/$name" "$bin" serve --config "$WORK/$name/config.toml" --port "$port" > /dev/null 2>&1 &
  local pid=$!
  wait_http "http://127.0.0.1:$port/health/ready"
  measure "$name" "http://127.0.0.1:$port/v1/chat/completions"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

if [ -n "${AB_NEW_KEY:-}" ]; then
  mkdir -p "$WORK/new"
  # AB_NEW_TEAM: the key joins a team made with these limits, so both meters are checked.
  if [ -n "${AB_NEW_TEAM:-}" ]; then
    # shellcheck disable=SC2086
    "$NEW" teams --data-dir "$WORK/new" create --name bench-team $AB_NEW_TEAM > /dev/null
    AB_NEW_KEY="$AB_NEW_KEY --team bench-team"
  fi
  # shellcheck disable=SC2086
  KEY=$("$NEW" keys --data-dir "$WORK/new" create --name bench $AB_NEW_KEY --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  if [ -n "${AB_KEY_BOTH:-}" ]; then
    cp -r "$WORK/new" "$WORK/old"
  fi
fi

# Direct to the mock each round too, so "added" (side minus direct) comes from the same minutes.
for i in $(seq 1 "$ROUNDS"); do
  measure direct "http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
  run_side old "$OLD"
  run_side new "$NEW"
done
cat "$WORK/ab.txt" > "${AB_RAW:-/dev/null}"
python3 - "$WORK/ab.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
rounds = sum(1 for r in rows if r[0] == "old" and r[1] == "1")
print(f"{'side':9} {'c':>3} {'rps':>8} {'p50 µs':>7} {'p99 µs':>7}   (medians of {rounds} rounds)")
for tool in ["", "wrk-"]:
    for c in ["1", "64"]:
        for side in ["direct", "old", "new"]:
            sel = [r for r in rows if r[0] == tool + side and r[1] == c]
            if not sel:
                continue
            med = lambda i: statistics.median(int(r[i]) for r in sel)
            print(f"{tool + side:9} {c:>3} {med(2):>8.0f} {med(3):>7.0f} {med(4):>7.0f}")
# Added latency at c=1: each round's side minus that round's direct, then the median.
for tool in ["", "wrk-"]:
    for side in ["old", "new"]:
        direct = [r for r in rows if r[0] == tool + "direct" and r[1] == "1"]
        sel = [r for r in rows if r[0] == tool + side and r[1] == "1"]
        if not sel or len(sel) != len(direct):
            continue
        added = lambda i: statistics.median(int(a[i]) - int(d[i]) for a, d in zip(sel, direct))
        print(f"{tool + side:9} c=1 added p50 {added(3):>5.0f} µs, p99 {added(4):>5.0f} µs")
PY
