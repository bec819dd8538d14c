#!/usr/bin/env bash
# Memory over time: the gateway under steady load (c=64, plain requests) for SOAK_SECONDS
# (default 600), its RSS sampled every 30 s. Prints one line per sample and writes
# bench/results/soak.json.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${SOAK_SECONDS:-600}
STEP=30
cargo build --release --locked --bin gatehouse --bin gatehouse-mock --bin gatehouse-bench
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh
MOCK_PORT=$(free_port); GW_PORT=$(free_port)
"$BIN/gatehouse-mock" --port "$MOCK_PORT" > /dev/null &
PIDS+=($!)
cat > "$WORK/config.toml" <<TOML
[server]
data_dir = "$WORK"
[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
[models."mock/bench"]
provider = "mock"
model = "bench"
max_context_size = 131072
TOML
GATEHOUSE_LOG=warn "$BIN/gatehouse" serve --config "$WORK/config.toml" --port "$GW_PORT" > "$WORK/gw.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
wait_http "http://127.0.0.1:$GW_PORT/health/ready"
python3 -c "import json; print(json.dumps({'model':'mock/bench','messages':[{'role':'user','content':'Please review this function. '*35}]}))" > "$WORK/body.json"
echo '{"samples": [' > "$WORK/soak.json"
sep=""
for i in $(seq 1 $((TOTAL / STEP))); do
  rps=$("$BIN/gatehouse-bench" load --url "http://127.0.0.1:$GW_PORT/v1/chat/completions" --body "$WORK/body.json" \
    --concurrency 64 --duration "$STEP" --label soak | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["rps"]))')
  rss=$(rss_kib "$GW_PID")
  echo "t=$((i * STEP))s rps=$rps rss_kib=$rss"
  printf '%s{"t_s": %d, "rps": %d, "rss_kib": %d}\n' "$sep" $((i * STEP)) "$rps" "$rss" >> "$WORK/soak.json"
  sep=","
done
echo ']}' >> "$WORK/soak.json"
mkdir -p bench/results
cp "$WORK/soak.json" bench/results/soak.json
