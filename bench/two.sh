#!/usr/bin/env bash
# One instance against two, on this machine's cores: the same gateway binary on PostgreSQL and
# Redis (`[redis]`), driven at c=64 in total (two drivers of 32 when there are two instances),
# alternating rounds; prints each round's total RPS and the medians. The point of two instances
# is correctness (bench/RESULTS.md), not speed on two cores: this says what they cost.
#
#   bench/two.sh [GATEHOUSE_BIN] [ROUNDS]
#
# PG (default postgres://postgres@127.0.0.1:5432/test) and REDIS (redis://127.0.0.1:6379) name
# the servers; each run uses a schema and a Redis namespace of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
GW=${1:-target/release/gatehouse} ROUNDS=${2:-3}
DUR=${BENCH_DURATION:-4}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
REDIS=${REDIS:-redis://127.0.0.1:6379}
cargo build --release --locked --bin gatehouse-mock --bin gatehouse-bench >/dev/null
BIN=target/release
WORK=$(mktemp -d)
SCHEMA="bench_two_$$"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  PGOPTIONS='-c client_min_messages=warning' psql "$PG" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh

MOCK_PORT=$(free_port)
"$BIN/gatehouse-mock" --port "$MOCK_PORT" > /dev/null &
PIDS+=($!)
bench_body "$WORK/gw.json"
bench_config "$WORK/config.toml" "$WORK" "$MOCK_PORT" \
  "[storage]\nurl = \"$PG?options[search_path]=$SCHEMA\"\n[redis]\nurl = \"$REDIS\"\nprefix = \"bench-two-$$\"\n"

start() { # port -> pid
  GATEHOUSE_LOG=warn HOME="$WORK" "$GW" serve --config "$WORK/config.toml" --port "$1" > /dev/null 2>&1 &
  echo $!
}

drive() { # url concurrency -> rps
  "$BIN/gatehouse-bench" load --label two --url "$1" --body "$WORK/gw.json" --concurrency "$2" --duration "$DUR" |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["rps"]))'
}

PA=$(free_port) PB=$(free_port)
A=$(start "$PA"); PIDS+=("$A")
B=$(start "$PB"); PIDS+=("$B")
wait_http "http://127.0.0.1:$PA/health/ready"
wait_http "http://127.0.0.1:$PB/health/ready"
: > "$WORK/one.txt"; : > "$WORK/two.txt"
for i in $(seq 1 "$ROUNDS"); do
  drive "http://127.0.0.1:$PA/v1/chat/completions" 64 >> "$WORK/one.txt"
  drive "http://127.0.0.1:$PA/v1/chat/completions" 32 > "$WORK/a.txt" &
  da=$!
  drive "http://127.0.0.1:$PB/v1/chat/completions" 32 > "$WORK/b.txt"
  wait "$da"
  echo $(( $(cat "$WORK/a.txt") + $(cat "$WORK/b.txt") )) >> "$WORK/two.txt"
  echo "round $i: one instance $(tail -n1 "$WORK/one.txt") rps, two instances $(tail -n1 "$WORK/two.txt") rps"
done
python3 - "$WORK/one.txt" "$WORK/two.txt" <<'PY'
import statistics, sys
one = [int(l) for l in open(sys.argv[1])]
two = [int(l) for l in open(sys.argv[2])]
print(f"median c=64: one instance {statistics.median(one):.0f} rps, two instances {statistics.median(two):.0f} rps")
PY
