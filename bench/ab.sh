#!/usr/bin/env bash
# A/B of two gateway binaries on the same machine, minutes apart: alternating rounds of the
# c=1 and c=64 non-streaming loads of run.sh, so drift of the (shared, virtualised) machine hits
# both sides alike. Prints the median of each side.
#
#   bench/ab.sh OLD_GATEHOUSE_BIN NEW_GATEHOUSE_BIN [ROUNDS]
#
# AB_NEW_SERVER adds lines to the new side's [server] section (one binary, two settings:
# AB_NEW_SERVER='header_read_timeout_secs = 0' bench/ab.sh BIN BIN).
#
# Build the old side from another checkout, e.g.
#   git worktree add /tmp/old <rev> && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --bin gatehouse)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-5}
DUR=${BENCH_DURATION:-3}
cargo build --release --locked --bin gatehouse-mock --bin gatehouse-bench >/dev/null
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh

MOCK_PORT=$(free_port)
"$BIN/gatehouse-mock" --port "$MOCK_PORT" > /dev/null &
PIDS+=($!)
python3 - "$WORK" <<'PY'
import json, sys
text = ("Please review this function and suggest improvements. " * 20)[:1000]
open(f"{sys.argv[1]}/gw.json", "w").write(json.dumps({"model": "mock/bench", "messages": [
    {"role": "system", "content": "You are a helpful coding assistant."},
    {"role": "user", "content": text}]}))
PY

run_side() { # name bin -> appends "name c rps p50 p99" lines
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
TOML
  GATEHOUSE_LOG=warn HOME="$WORK/$name" "$bin" serve --config "$WORK/$name/config.toml" --port "$port" > /dev/null 2>&1 &
  local pid=$!
  wait_http "http://127.0.0.1:$port/health/ready"
  for c in 1 64; do
    "$BIN/gatehouse-bench" load --label "$name" --url "http://127.0.0.1:$port/v1/chat/completions" \
      --body "$WORK/gw.json" --concurrency "$c" --duration "$DUR" |
      python3 -c "import json,sys; r=json.load(sys.stdin); print('$name', $c, round(r['rps']), r['latency_us']['p50'], r['latency_us']['p99'])" \
      >> "$WORK/ab.txt"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for i in $(seq 1 "$ROUNDS"); do
  run_side old "$OLD"
  run_side new "$NEW"
done
cat "$WORK/ab.txt" > "${AB_RAW:-/dev/null}"
python3 - "$WORK/ab.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"{'side':5} {'c':>3} {'rps':>8} {'p50 µs':>7} {'p99 µs':>7}   (medians of {len(rows)//4} rounds)")
for c in ["1", "64"]:
    for side in ["old", "new"]:
        sel = [r for r in rows if r[0] == side and r[1] == c]
        med = lambda i: statistics.median(int(r[i]) for r in sel)
        print(f"{side:5} {c:>3} {med(2):>8.0f} {med(3):>7.0f} {med(4):>7.0f}")
PY
