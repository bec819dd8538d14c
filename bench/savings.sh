#!/usr/bin/env bash
# What the context features save, measured the way users pay: two corpora replayed through the
# gateway to the mock, once per setting.
#   - generated: coding-agent conversations from bench/savings/corpus.py (deterministic, no network);
#   - real: public agent trajectories (SWE-agent, mini-swe-agent, OpenHands; provenance in
#     bench/savings/real/PROVENANCE.md), read by bench/savings/real/expand.py from $REAL_CORPUS or
#     ../shared/corpora/agent-trajectories/corpus.jsonl.gz; skipped with a note when absent.
# Reports per setting: prompt tokens forwarded upstream (the gateway's exact count), cache reads
# and the effective input cost with provider prompt caching (reads at 10 %, replay.py), the share
# of turns whose prefix stayed byte-identical, the task kept in compacted requests, and the
# gateway's own time per KB of prompt.
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

python3 bench/savings/corpus.py "$WORK/generated.jsonl" --conversations "$CONV"
CORPORA=(generated)
if python3 bench/savings/real/expand.py > "$WORK/real.jsonl" 2> "$WORK/real.err"; then
  [ "$MODE" = smoke ] && head -n 40 "$WORK/real.jsonl" > "$WORK/real.small" && mv "$WORK/real.small" "$WORK/real.jsonl"
  CORPORA+=(real)
else
  echo "note: no real-trajectory corpus ($(head -c 200 "$WORK/real.err")); see bench/savings/real/PROVENANCE.md" >&2
fi
MOCK_PORT=$(free_port)
"$BIN/gatehouse-mock" --port "$MOCK_PORT" --capture > /dev/null &
PIDS+=($!)

run() { # label, TOML lines for [redaction] and [sanitizer], then optionally more TOML and the window
  local label=$1 redaction=$2 sanitizer=$3 extra=${4:-} window=${5:-10000000} port dir
  port=$(free_port)
  dir="$WORK/$CORPUS-$label"
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
pricing = { input = 3.0, output = 15.0, cached_input = 0.3 }
TOML
  GATEHOUSE_LOG=warn "$BIN/gatehouse" serve --config "$dir/config.toml" --port "$port" > "$dir/log" 2>&1 &
  local pid=$!
  wait_http "http://127.0.0.1:$port/health/ready"
  # Warm the counters' caches the same way for every setting: one unmeasured pass is not
  # wanted here, since a client's first pass over a conversation is what pays.
  python3 bench/savings/replay.py "http://127.0.0.1:$port" "$WORK/$CORPUS.jsonl" "http://127.0.0.1:$MOCK_PORT/v1" |
    python3 -c "import json,sys; d=json.load(sys.stdin); d['label']='$label'; d['corpus']='$CORPUS'; print(json.dumps(d))" | tee -a "$WORK/runs.jsonl"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for CORPUS in "${CORPORA[@]}"; do
  run baseline 'mode = "off"' 'enabled = false'
  run redaction 'mode = "redact"' 'enabled = false'
  # The defaults as shipped: redaction, the sanitizer, compaction (on a window these
  # conversations never fill here), observation masking off.
  run defaults 'mode = "redact"' 'enabled = true'
  run defaults+observation 'mode = "redact"' $'enabled = true\nobservation_masking = true'
  # The pre-issue-13 behaviour of observation masking, for comparison: every old result hidden
  # as soon as it ages past the cutoff, however small.
  run observation-eager 'mode = "redact"' $'enabled = true\nobservation_masking = true\nobservation_min_tokens = 0\nobservation_batch_tokens = 1'
  # Compaction needs a window to fill (the runs above have an unbounded one): alone on a
  # 32K-token model, and after the sanitizer on a small one. The replay has no think time, so
  # the 5-minute cooldown is off.
  run compaction@32k 'mode = "redact"' 'enabled = false' $'[compaction.auto]\ncooldown_secs = 0' 32768
  # SWE-agent's opening (system prompt, demonstration, issue) alone is over 8K tokens.
  if [ "$CORPUS" = real ]; then small=16384; else small=4096; fi
  run "sanitizer+compaction@$((small / 1024))k" 'mode = "redact"' 'enabled = true' $'[compaction.auto]\ncooldown_secs = 0' "$small"
done

mkdir -p bench/results
python3 - "$WORK/runs.jsonl" "bench/results/$([ "$MODE" = smoke ] && echo savings-smoke || echo savings).json" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
out = {"runs": []}
for corpus in dict.fromkeys(r["corpus"] for r in runs):
    mine = [r for r in runs if r["corpus"] == corpus]
    base = mine[0]
    print(f"\n{corpus}: {base['requests']} requests, {base['client_bytes'] / 1e6:.1f} MB from the client")
    print(f"{'setting':26} {'upstream tokens':>16} {'saved':>7} {'cache reads':>12} {'eff. cost $':>11} {'cost saved':>10} {'stable prefix':>13} {'kept stable':>11} {'task kept':>10} {'µs/KB':>7} {'errors':>6} {'compactions':>11}")
    for r in mine:
        kb = r["client_bytes"] / 1024
        per_kb = r["overhead_us"] / kb
        saved = 1 - r["upstream_prompt_tokens"] / base["upstream_prompt_tokens"]
        cost_saved = 1 - r["effective_cost_usd"] / base["effective_cost_usd"]
        stable = r["prefix_stable_turns"] / r["turns"] if r["turns"] else 1.0
        kept = r["kept_stable_turns"] / r["client_stable_turns"] if r["client_stable_turns"] else 1.0
        task = f"{r['task_kept']}/{r['compacted_requests']}" if r["compacted_requests"] else "-"
        print(f"{r['label']:26} {r['upstream_prompt_tokens']:>16,} {saved:>7.1%} {r['cached_tokens']:>12,} {r['effective_cost_usd']:>11.2f} {cost_saved:>10.1%} {stable:>13.1%} {kept:>11.1%} {task:>10} {per_kb:>7.2f} {r['errors']:>6} {r.get('compactions', 0):>11}")
        out["runs"].append({**r, "saved_fraction": saved, "cost_saved_fraction": cost_saved,
                            "prefix_stable_fraction": stable, "kept_stable_fraction": kept, "gateway_us_per_kb": per_kb})
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(f"wrote {sys.argv[2]}")
PY
