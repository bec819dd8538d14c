# Helpers shared by the bench scripts (sourced, not run).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL [TENTHS]: until URL answers 2xx, at most TENTHS tenths of a second (default 200).
wait_http() {
  for _ in $(seq 1 "${2:-200}"); do
    if curl -fs -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "$1 never answered" >&2
  return 1
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# bench_body FILE: the OpenAI chat body of DESIGN.md §10 (system prompt + 1 KB user prompt)
# for `mock/bench`, the one ab.sh, profile.sh and instructions.sh send.
bench_body() {
  python3 - "$1" <<'PY'
import json, sys
text = ("Please review this function and suggest improvements. " * 20)[:1000]
open(sys.argv[1], "w").write(json.dumps({"model": "mock/bench", "messages": [
    {"role": "system", "content": "You are a helpful coding assistant."},
    {"role": "user", "content": text}]}))
PY
}

# bench_config FILE DATA_DIR MOCK_PORT [EXTRA]: a gateway config with the mock as provider
# `mock` and `mock/bench` on it; EXTRA (printf %b escapes) is appended.
bench_config() {
  cat > "$1" <<TOML
[server]
data_dir = "$2"
[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:$3/v1"
api_key = "sk-bench"
[models."mock/bench"]
provider = "mock"
model = "bench"
max_context_size = 131072
$( printf '%b' "${4:-}" )
TOML
}
