#!/usr/bin/env bash
# The long fuzz campaign (outside CI): every target of gatehouse-fuzz for EXECS executions (the
# config loader, about 20 times slower per execution, for EXECS/10), with SEED. Findings are
# written to target/fuzz-findings/; the table goes to bench/results/fuzz.csv.
#
#   bash bench/fuzz.sh [EXECS] [SEED]       # defaults: 1000000 executions per target, seed 1
set -euo pipefail
cd "$(dirname "$0")/.."
EXECS=${1:-1000000} SEED=${2:-1}
[ -n "${FUZZ_BIN:-}" ] || cargo build --release --locked -p gatehouse-fuzz >/dev/null
BIN=${FUZZ_BIN:-target/release/gatehouse-fuzz}
OUT=bench/results/fuzz.csv
echo "target,execs,seconds,execs_per_second,findings" > "$OUT"
status=0
for t in $("$BIN" --list); do
  n=$EXECS
  [ "$t" = config_loader ] && n=$((EXECS / 10))
  "$BIN" --target "$t" --execs "$n" --seed "$SEED" | grep -v '^target,\|^total,' >> "$OUT" || status=1
  tail -n 1 "$OUT"
done
awk -F, 'NR > 1 {e += $2; f += $5} END {printf "total: %d executions, %d findings\n", e, f}' "$OUT"
exit $status
