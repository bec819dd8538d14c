#!/usr/bin/env bash
# The management API under load (issue 15's SLO: p95 < 200 ms with 100 concurrent clients):
# a release gateway with [auth] mode = "keys", one logged-in admin, 50 keys, 50 sessions and
# their audit rows; then wrk (2 threads, 100 connections, DUR seconds) on each read route, every
# request carrying the admin's token through the login gate and the endpoint limits.
#
#   bench/manage.sh [GATEHOUSE_BIN]     (default: target/release/gatehouse, built if missing)
#   BENCH_DURATION=8 (seconds per route)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${BENCH_DURATION:-8}
BIN=${1:-target/release/gatehouse}
if [ "$BIN" = target/release/gatehouse ]; then
  cargo build --release --locked --bin gatehouse >/dev/null
fi
command -v wrk >/dev/null || { echo "needs wrk (apt install wrk)" >&2; exit 2; }
# shellcheck source=bench/lib.sh
. bench/lib.sh
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

PORT=$(free_port)
cat > "$WORK/config.toml" <<TOML
[auth]
mode = "keys"
login_per_minute = 1000

# The bench measures the routes, not the limiter's refusals.
[rate_limits.endpoints]
"/api/*" = { requests = 1000000000, window = "1h" }
"/api/auth/login" = { requests = 1000, window = "1h" }
"/api/users*" = { requests = 1000000000, window = "1h" }
TOML
PASSWORD="bench password $RANDOM$RANDOM"
echo "$PASSWORD" | "$BIN" users create bench --role admin --password-stdin --config "$WORK/config.toml" --data-dir "$WORK" >/dev/null
"$BIN" serve --config "$WORK/config.toml" --data-dir "$WORK" --port "$PORT" > "$WORK/serve.log" 2>&1 &
PID=$!
BASE="http://127.0.0.1:$PORT"
wait_http "$BASE/health/live"
TOKEN=$(curl -fs "$BASE/api/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"bench\",\"password\":\"$PASSWORD\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
# 10 teams, each key in one of them.
TEAMS=()
for i in $(seq 1 10); do
  TEAMS+=("$(curl -fs "$BASE/api/teams" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"name\":\"team-$i\",\"max_budget_usd\":100}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')")
done
for i in $(seq 1 50); do
  TEAM=${TEAMS[$((i % 10))]}
  curl -fs -o /dev/null "$BASE/api/keys" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"name\":\"bench-$i\",\"rpm\":60,\"max_budget_usd\":5,\"team_id\":\"$TEAM\"}"
  curl -fs -o /dev/null "$BASE/api/sessions" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"name\":\"session $i\"}"
done

printf '%-28s %8s %8s %8s %8s %8s\n' route rps p50_ms p95_ms p99_ms errors
for path in /api/auth/me /api/keys /api/teams /api/sessions "/api/audit?limit=100" /api/users /api/providers /health; do
  out=$(WRK_LABEL="$path" wrk -t2 -c100 -d"${DUR}s" -s bench/wrk/get.lua "$BASE$path" -- "$TOKEN" | tail -n 1)
  python3 - "$path" "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
l = r["latency_us"]
print(f'{sys.argv[1]:<28} {r["rps"]:8.0f} {l["p50"]/1000:8.1f} {l["p95"]/1000:8.1f} {l["p99"]/1000:8.1f} {r["errors"]:8d}')
PY
done
