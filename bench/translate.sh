#!/usr/bin/env bash
# What translation costs: the same 1 KB prompt sent as OpenAI to an OpenAI-compatible provider
# (bytes through), as Anthropic to an Anthropic provider (bytes through), and across formats
# (Anthropic client → OpenAI provider, OpenAI client → Anthropic / Gemini / Ollama provider,
# Responses client → OpenAI (store false, and kept) and Anthropic, Gemini client → OpenAI),
# all against the local mock, non-streaming, c=1 and c=64. Prints RPS and latency per path (the
# mock's own cost differs per format), then the gateway's own time per request (median of
# `overhead_us` over the path's rows), which is what translation adds.
#
#   bench/translate.sh            (release build; BENCH_DURATION=3 seconds per load)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${BENCH_DURATION:-3}
cargo build --release --locked --bin gatehouse --bin gatehouse-mock --bin gatehouse-bench >/dev/null
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
PORT=$(free_port)
cat > "$WORK/config.toml" <<TOML
[server]
data_dir = "$WORK"
[log_watcher]
enabled = false
[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
api_key = "sk-bench"
[providers.anth]
type = "anthropic"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
api_key = "sk-bench"
[providers.gem]
type = "gemini"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
api_key = "sk-bench"
[providers.ol]
type = "ollama"
base_url = "http://127.0.0.1:$MOCK_PORT"
[models."mock/bench"]
provider = "mock"
model = "bench"
max_context_size = 131072
[models."anth/bench"]
provider = "anth"
model = "bench"
max_context_size = 131072
[models."gem/bench"]
provider = "gem"
model = "bench"
max_context_size = 131072
[models."ol/bench"]
provider = "ol"
model = "bench"
max_context_size = 131072
[models."mock/bench-a"]
provider = "mock"
model = "bench"
max_context_size = 131072
[models."anth/bench-a"]
provider = "anth"
model = "bench"
max_context_size = 131072
[models."mock/bench-r"]
provider = "mock"
model = "bench"
max_context_size = 131072
[models."mock/bench-rs"]
provider = "mock"
model = "bench"
max_context_size = 131072
[models."anth/bench-r"]
provider = "anth"
model = "bench"
max_context_size = 131072
[models."mock/bench-g"]
provider = "mock"
model = "bench"
max_context_size = 131072
TOML
GATEHOUSE_LOG=warn HOME="$WORK" "$BIN/gatehouse" serve --config "$WORK/config.toml" --port "$PORT" > "$WORK/log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/health/ready"
python3 - "$WORK" <<'PY'
import json, sys
text = ("Please review this function and suggest improvements. " * 20)[:1000]
for name, model in [("openai", "mock/bench"), ("to-anthropic", "anth/bench"), ("to-gemini", "gem/bench"), ("to-ollama", "ol/bench")]:
    json.dump({"model": model, "messages": [{"role": "system", "content": "You are a helpful coding assistant."}, {"role": "user", "content": text}]}, open(f"{sys.argv[1]}/{name}.json", "w"))
for name, model in [("anthropic-to-openai", "mock/bench-a"), ("anthropic", "anth/bench-a")]:
    json.dump({"model": model, "max_tokens": 256, "system": "You are a helpful coding assistant.", "messages": [{"role": "user", "content": text}]}, open(f"{sys.argv[1]}/{name}.json", "w"))
# Responses: Codex's way (store false), the API's default (kept), and to Anthropic.
for name, model, store in [("responses-to-openai", "mock/bench-r", False), ("responses-stored", "mock/bench-rs", True), ("responses-to-anthropic", "anth/bench-r", False)]:
    json.dump({"model": model, "store": store, "instructions": "You are a helpful coding assistant.", "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}]}, open(f"{sys.argv[1]}/{name}.json", "w"))
json.dump({"systemInstruction": {"parts": [{"text": "You are a helpful coding assistant."}]}, "contents": [{"role": "user", "parts": [{"text": text}]}]}, open(f"{sys.argv[1]}/gemini-to-openai.json", "w"))
PY
printf '%-22s %4s %8s %8s %8s\n' path c rps "p50 µs" "p99 µs"
for spec in "openai:v1/chat/completions" "anthropic:v1/messages" "anthropic-to-openai:v1/messages" "to-anthropic:v1/chat/completions" "to-gemini:v1/chat/completions" "to-ollama:v1/chat/completions" "responses-to-openai:v1/responses" "responses-stored:v1/responses" "responses-to-anthropic:v1/responses" "gemini-to-openai:v1beta/models/mock/bench-g:generateContent"; do
  name=${spec%%:*} route=${spec#*:}
  for c in 1 64; do
    "$BIN/gatehouse-bench" load --label "$name" --url "http://127.0.0.1:$PORT/$route" \
      --body "$WORK/$name.json" --concurrency "$c" --duration "$DUR" |
      python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"{'$name':22} {$c:>4} {round(r['rps']):>8} {r['latency_us']['p50']:>8} {r['latency_us']['p99']:>8}  errors={r.get('errors', 0)}\")"
  done
done

curl -s "http://127.0.0.1:$PORT/api/export/csv?all=1" -o "$WORK/rows.csv"
python3 - "$WORK/rows.csv" <<'PY'
import csv, statistics, sys
paths = {"mock/bench": "openai", "anth/bench-a": "anthropic", "mock/bench-a": "anthropic-to-openai",
         "anth/bench": "to-anthropic", "gem/bench": "to-gemini", "ol/bench": "to-ollama",
         "mock/bench-r": "responses-to-openai", "mock/bench-rs": "responses-stored",
         "anth/bench-r": "responses-to-anthropic", "mock/bench-g": "gemini-to-openai"}
by = {}
for r in csv.DictReader(open(sys.argv[1])):
    by.setdefault(r["model"], []).append(int(r["overhead_us"]))
print(f"\n{'path':22} {'rows':>8} {'gateway µs p50':>15} {'p90':>8}")
for key, name in paths.items():
    v = sorted(by.get(key, [0]))
    print(f"{name:22} {len(v):>8} {statistics.median(v):>15.0f} {v[int(len(v) * 0.9)]:>8}")
PY
