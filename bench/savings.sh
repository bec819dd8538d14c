#!/usr/bin/env bash
# What the context features save, measured: a generated corpus of coding-agent conversations
# (bench/savings/corpus.py; deterministic, no network) replayed through the gateway to the mock,
# once per setting. Reports the prompt tokens forwarded upstream (the gateway's exact count) and
# the gateway's own time per KB of prompt, each feature off and on.
#
#   bench/savings.sh [--smoke]     writes bench/results/savings.json (smoke: bench/results/savings-smoke.json)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=full
[ "${1:-}" = "--smoke" ] && MODE=smoke
if [ "$MODE" = smoke ]; then PROFILE=debug; CONV=3; else PROFILE=release; CONV=30; fi
if [ "$PROFILE" = release ]; then
  cargo build --release --locked --bin gatehouse --bin gatehouse-mock
else
  cargo build --locked --bin gatehouse --bin gatehouse-mock
fi
BIN=target/$PROFILE
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh

python3 bench/savings/corpus.py "$WORK/corpus.jsonl" --conversations "$CONV"
MOCK_PORT=$(free_port)
"$BIN/gatehouse-mock" --port "$MOCK_PORT" > /dev/null &
PIDS+=($!)

run() { # label, TOML lines for [redaction] and [sanitizer], then optionally more TOML and the window
  local label=$1 redaction=$2 sanitizer=$3 extra=${4:-} window=${5:-10000000} port dir
  port=$(free_port)
  dir="$WORK/$label"
  mkdir -p "$dir"
  cat > "$dir/config.toml" <<TOML
[server]
data_dir = "$dir"
max_body_bytes = 67108864
[log_watcher]
enabled = false
[redaction]
$redaction
[sanitizer]
$sanitizer
$extra
[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
api_key = "sk-bench"
[models."mock/echo"]
provider = "mock"
model = "echo"
max_context_size = $window
TOML
  GATEHOUSE_LOG=warn "$BIN/gatehouse" serve --config "$dir/config.toml" --port "$port" > "$dir/log" 2>&1 &
  local pid=$!
  wait_http "http://127.0.0.1:$port/health/ready"
  # Warm the counters' caches the same way for every setting: one unmeasured pass is not
  # wanted here, since a client's first pass over a conversation is what pays.
  python3 bench/savings/replay.py "http://127.0.0.1:$port" "$WORK/corpus.jsonl" |
    python3 -c "import json,sys; d=json.load(sys.stdin); d['label']='$label'; print(json.dumps(d))" | tee -a "$WORK/runs.jsonl"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run baseline 'mode = "off"' 'enabled = false'
run redaction 'mode = "redact"' 'enabled = false'
run sanitizer 'mode = "redact"' 'enabled = true'
run sanitizer+observation 'mode = "redact"' $'enabled = true\nobservation_masking = true\nobservation_keep_turns = 3'
# Compaction needs a window to fill (the runs above have an unbounded one, so it never fires
# there): alone on a 32K-token model, and after the sanitizer (which leaves these conversations small) on a 4K one. The replay has no
# think time, so the 5-minute cooldown is off.
run compaction@32k 'mode = "redact"' 'enabled = false' $'[compaction.auto]\ncooldown_secs = 0' 32768
run sanitizer+compaction@4k 'mode = "redact"' 'enabled = true' $'[compaction.auto]\ncooldown_secs = 0' 4096

mkdir -p bench/results
python3 - "$WORK/runs.jsonl" "bench/results/$([ "$MODE" = smoke ] && echo savings-smoke || echo savings).json" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
base = runs[0]
print(f"{'setting':26} {'upstream tokens':>16} {'saved':>8} {'gateway µs/KB':>14} {'added µs/KB':>12} {'errors':>7} {'compactions':>12}")
out = {"corpus": {"requests": base["requests"], "client_bytes": base["client_bytes"]}, "runs": []}
for r in runs:
    kb = r["client_bytes"] / 1024
    per_kb = r["overhead_us"] / kb
    saved = 1 - r["upstream_prompt_tokens"] / base["upstream_prompt_tokens"]
    added = per_kb - base["overhead_us"] / kb
    print(f"{r['label']:26} {r['upstream_prompt_tokens']:>16,} {saved:>8.1%} {per_kb:>14.2f} {added:>12.2f} {r['errors']:>7} {r.get('compactions', 0):>12}")
    out["runs"].append({**r, "saved_fraction": saved, "gateway_us_per_kb": per_kb, "added_us_per_kb": added})
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(f"wrote {sys.argv[2]}")
PY
