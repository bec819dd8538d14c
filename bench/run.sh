#!/usr/bin/env bash
# Gatehouse's benchmark: gateway and direct-to-mock in the same run, same driver, same mock.
#
#   bench/run.sh            full run (release build, ~2 minutes), writes bench/results/latest.json
#   bench/run.sh --peers    also LiteLLM's proxy and litellm-rs (bench/peers.sh installs them)
#   bench/run.sh --smoke    seconds-long check that the harness works (debug build; used by CI)
#
# Everything listens on 127.0.0.1; every loop is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
PEERS=0
for a in "$@"; do
  case "$a" in
    --smoke) MODE=smoke ;;
    --peers) PEERS=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

if [ "$MODE" = smoke ]; then
  PROFILE=debug; DUR=1; CONCURRENCY="1 4"; STREAMS=20
else
  PROFILE=release; DUR=${BENCH_DURATION:-5}; CONCURRENCY="1 16 64 256"; STREAMS=1000
fi
BIN=target/$PROFILE
if [ "$PROFILE" = release ]; then
  cargo build --release --locked --bin gatehouse --bin gatehouse-mock --bin gatehouse-bench
else
  cargo build --locked --bin gatehouse --bin gatehouse-mock --bin gatehouse-bench
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

MOCK_PORT=$(free_port)
"$BIN/gatehouse-mock" --port "$MOCK_PORT" > "$WORK/mock.log" &
PIDS+=($!)
MOCK="http://127.0.0.1:$MOCK_PORT/v1"
sleep 0.2

GW_PORT=$(free_port)
cat > "$WORK/config.toml" <<TOML
[server]
data_dir = "$WORK"
[providers.mock]
type = "openai"
base_url = "$MOCK"
api_key = "sk-bench"
[models."mock/bench"]
provider = "mock"
model = "bench"
max_context_size = 131072
# Priced like the peers' model: every request's cost is computed.
pricing = { input = 0.15, output = 0.6 }
[models."mock/stream"]
provider = "mock"
model = "chunks:20+delay:5"
max_context_size = 131072
[models."mock/long"]
provider = "mock"
model = "chunks:10+delay:100"
max_context_size = 131072
TOML
GATEHOUSE_LOG=warn "$BIN/gatehouse" serve --config "$WORK/config.toml" --port "$GW_PORT" > "$WORK/gw.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
GW="http://127.0.0.1:$GW_PORT/v1"
wait_http "http://127.0.0.1:$GW_PORT/health/ready"
sleep 0.5
IDLE_RSS=$(rss_kib $GW_PID)

# A 1 KB prompt, as in DESIGN.md §10.
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
text = ("Please review this function and suggest improvements. " * 20)[:1000]
def body(model, stream=False):
    return json.dumps({"model": model, "stream": stream, "messages": [
        {"role": "system", "content": "You are a helpful coding assistant."},
        {"role": "user", "content": text}]})
for name, model, stream in [("gw", "mock/bench", False), ("direct", "bench", False),
                            ("gw-stream", "mock/stream", True), ("direct-stream", "chunks:20+delay:5", True),
                            ("gw-long", "mock/long", True), ("direct-long", "chunks:10+delay:100", True),
                            ("peer", "gpt-4o-mini", False)]:
    open(f"{work}/{name}.json", "w").write(body(model, stream))
PY

RESULTS="$WORK/results.jsonl"
load() { # label url body concurrency [extra...]
  local label=$1 url=$2 body=$3 c=$4; shift 4
  "$BIN/gatehouse-bench" load --label "$label" --url "$url/chat/completions" --body "$WORK/$body.json" \
    --concurrency "$c" --duration "$DUR" "$@" | tee -a "$RESULTS"
}
# The same non-streaming load from wrk (Debian's, one thread, one connection per client), so
# every headline figure has an independent second measure: labels "wrk <label>".
WRK=$(command -v wrk || true)
[ -z "$WRK" ] && echo "wrk not installed (apt-get install wrk): no cross-check this run" >&2
xload() { # label url body concurrency [bearer]
  load "$1" "$2" "$3" "$4" ${5:+--auth "$5"}
  [ -z "$WRK" ] && return 0
  WRK_LABEL="wrk $1" "$WRK" -t1 -c"$4" -d"${DUR}s" --latency -s bench/wrk/post.lua \
    "$2/chat/completions" -- "$WORK/$3.json" "${5:-}" | grep '^{' | tee -a "$RESULTS"
}

CPU0=$(cpu_ticks $GW_PID)
REQ0=$(curl -fs "http://127.0.0.1:$GW_PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accounting"]["written"])')
for c in $CONCURRENCY; do
  xload "direct c=$c" "$MOCK" direct "$c"
  xload "gatehouse c=$c" "$GW" gw "$c"
done
load "direct stream c=16" "$MOCK" direct-stream 16 --stream
load "gatehouse stream c=16" "$GW" gw-stream 16 --stream
load "direct streams=$STREAMS" "$MOCK" direct-long "$STREAMS" --stream --requests-per-conn 1 --stall-ms 500
load "gatehouse streams=$STREAMS" "$GW" gw-long "$STREAMS" --stream --requests-per-conn 1 --stall-ms 500
# The same loads with a dashboard open: every request then becomes two events on /ws.
"$BIN/gatehouse-bench" watch --url "ws://127.0.0.1:$GW_PORT/ws" --duration $(( DUR * 2 + 3 )) > "$WORK/watch.json" &
WATCH_PID=$!
sleep 0.5
load "gatehouse+dashboard c=1" "$GW" gw 1
load "gatehouse+dashboard c=64" "$GW" gw 64
wait "$WATCH_PID" || true
cat "$WORK/watch.json"
PEAK_RSS=$(hwm_kib $GW_PID)
CPU1=$(cpu_ticks $GW_PID)
sleep 1
REQ1=$(curl -fs "http://127.0.0.1:$GW_PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accounting"]["written"])')
AFTER_RSS=$(rss_kib $GW_PID)
TICKS=$(getconf CLK_TCK)
CPU_S=$(awk "BEGIN {print ($CPU1 - $CPU0) / $TICKS}")

if [ "$PEERS" = 1 ]; then
  bash bench/peers.sh start "$MOCK" "$WORK" >> "$WORK/peers.env"
  # shellcheck disable=SC1091
  . "$WORK/peers.env"
  for c in $CONCURRENCY; do
    [ -n "${LITELLM_RS_URL:-}" ] && xload "litellm-rs c=$c" "$LITELLM_RS_URL" peer "$c"
    [ -n "${LITELLM_URL:-}" ] && xload "litellm c=$c" "$LITELLM_URL" peer "$c" "$LITELLM_KEY"
  done
  for p in ${PEER_PIDS:-}; do PIDS+=("$p"); done
fi

"$BIN/gatehouse-bench" tokens --corpus crates/gatehouse-core/tests/tokens/corpus \
  --rounds "$([ "$MODE" = smoke ] && echo 2 || echo 50)" > "$WORK/tokens.json"
"$BIN/gatehouse-bench" writer --rows "$([ "$MODE" = smoke ] && echo 2000 || echo 200000)" > "$WORK/writer.json"

# Python tiktoken, when a Python with it is at hand (LiteLLM's virtualenv has it), loading the
# vocabularies Gatehouse embeds; tiktoken checks them against OpenAI's published SHA-256.
PY_TOKENS=""
TIKTOKEN_PYTHON=${TIKTOKEN_PYTHON:-${BENCH_CACHE:-$HOME/.cache/gatehouse-bench}/litellm-venv/bin/python}
if [ "$MODE" = full ] && [ -x "$TIKTOKEN_PYTHON" ] && "$TIKTOKEN_PYTHON" -c "import tiktoken" 2>/dev/null; then
  for enc in cl100k_base o200k_base; do
    cargo run --release --locked -q -p gatehouse-core --example export_vocab -- "$enc" "$WORK/$enc.tiktoken"
  done
  PY_TOKENS=$("$TIKTOKEN_PYTHON" bench/tokens_tiktoken.py crates/gatehouse-core/tests/tokens/corpus "$WORK")
fi

mkdir -p bench/results
python3 bench/report.py "$RESULTS" "$WORK/tokens.json" "$WORK/writer.json" "$PY_TOKENS" \
  "{\"idle_rss_kib\": $IDLE_RSS, \"peak_rss_kib\": $PEAK_RSS, \"after_rss_kib\": $AFTER_RSS, \
    \"cpu_s\": $CPU_S, \"requests\": $(( REQ1 - REQ0 )), \"mode\": \"$MODE\", \
    \"cores\": $(nproc), \"mem_gib\": $(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)}" \
  "bench/results/$([ "$MODE" = smoke ] && echo smoke || echo latest).json"
