#!/usr/bin/env bash
# The gateways a user would otherwise pick, installed and started against the same mock.
#
#   bench/peers.sh install          LiteLLM's proxy (PyPI, in a virtualenv) and litellm-rs
#                                   (crates.io, `cargo install`), cached in $BENCH_CACHE
#   bench/peers.sh start MOCK DIR   starts the installed ones; prints LITELLM_URL=…,
#                                   LITELLM_RS_URL=…, PEER_PIDS=… for `run.sh --peers`
set -euo pipefail
CACHE=${BENCH_CACHE:-$HOME/.cache/gatehouse-bench}
LITELLM_VERSION=${LITELLM_VERSION:-1.106.2}
LITELLM_RS_VERSION=${LITELLM_RS_VERSION:-0.9.0}

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

case "${1:-}" in
install)
  mkdir -p "$CACHE"
  if [ ! -x "$CACHE/litellm-rs/bin/gateway" ]; then
    # The gateway binary needs a storage backend compiled in; sqlite is the light one.
    CARGO_TARGET_DIR="$CACHE/litellm-rs-target" cargo install litellm-rs --version "$LITELLM_RS_VERSION" \
      --locked --bin gateway --features sqlite --root "$CACHE/litellm-rs"
  fi
  if [ ! -x "$CACHE/litellm-venv/bin/litellm" ]; then
    python3 -m venv "$CACHE/litellm-venv"
    # Newer LiteLLM releases pin a certifi newer than some mirrors carry; 1.106.2 resolves.
    "$CACHE/litellm-venv/bin/pip" install --quiet "litellm[proxy]==$LITELLM_VERSION" "certifi<=2026.10.18"
  fi
  ;;
start)
  MOCK=$2 DIR=$3
  pids=""
  if [ -x "$CACHE/litellm-rs/bin/gateway" ]; then
    port=$(free_port)
    mkdir -p "$DIR/litellm-rs/config"
    cat > "$DIR/litellm-rs/config/gateway.yaml" <<YAML
schema_version: "1.0"
server:
  host: "127.0.0.1"
  port: $port
  dev_mode: false
providers:
  - name: "mock"
    provider_type: "vllm"
    api_key: "sk-bench"
    base_url: "$MOCK"
    endpoint_access: "private_network"   # its SSRF guard refuses loopback otherwise
    # A name its price table knows: an unpriced model takes its fallback-pricing path.
    models: ["gpt-4o-mini"]
    max_concurrent_requests: 10000
    rpm: 100000000
    tpm: 4000000000
    timeout: 30
    max_retries: 0
    enabled: true
router:
  strategy: "round_robin"
pricing:
  # A self-hosted model has no price; its default policy rejects unpriced requests.
  source: "embedded://model_prices_extended"
  unpriced_model_policy: allow_unpriced
  unpriced_fallback_cost_per_1k_tokens: 0.0
rate_limit:
  enabled: false
storage:
  database: { url: "sqlite://$DIR/litellm-rs/db.sqlite?mode=rwc", enabled: false, auto_migrate: false }
  redis: { url: "redis://127.0.0.1:6379", enabled: false }
auth:
  enable_jwt: false
  enable_api_key: false
  allow_anonymous: true
monitoring:
  metrics: { enabled: false }
  tracing: { enabled: false }
YAML
    # It reads config/gateway.yaml from its working directory.
    (cd "$DIR/litellm-rs" && exec "$CACHE/litellm-rs/bin/gateway" --log-level error) > "$DIR/litellm-rs/log" 2>&1 &
    echo $! > "$DIR/litellm-rs/pid"
    if wait_http "http://127.0.0.1:$port/health" 600 2>/dev/null; then
      echo "LITELLM_RS_URL=http://127.0.0.1:$port/v1"
    else
      echo "litellm-rs did not start; see $DIR/litellm-rs/log" >&2
    fi
    pids="$pids $(cat "$DIR/litellm-rs/pid")"
  fi
  if [ -x "$CACHE/litellm-venv/bin/litellm" ]; then
    port=$(free_port)
    cat > "$DIR/litellm.yaml" <<YAML
model_list:
  - model_name: "gpt-4o-mini"
    litellm_params:
      model: "openai/gpt-4o-mini"
      api_base: "$MOCK"
      api_key: "sk-bench"
litellm_settings:
  drop_params: true
  set_verbose: false
YAML
    # LiteLLM's production settings: one worker per core, no debug logging.
    # It refuses to start without a master key; requests then carry it as their bearer token.
    LITELLM_MASTER_KEY=sk-bench-master LITELLM_LOG=ERROR "$CACHE/litellm-venv/bin/litellm" --config "$DIR/litellm.yaml" \
      --host 127.0.0.1 --port "$port" --num_workers "$(nproc)" > "$DIR/litellm.log" 2>&1 &
    echo $! > "$DIR/litellm.pid"
    if wait_http "http://127.0.0.1:$port/health/liveliness" 600 2>/dev/null; then
      echo "LITELLM_URL=http://127.0.0.1:$port/v1"
      echo "LITELLM_KEY=sk-bench-master"
    else
      echo "LiteLLM did not start; see $DIR/litellm.log" >&2
    fi
    pids="$pids $(cat "$DIR/litellm.pid")"
  fi
  echo "PEER_PIDS=\"$pids\""
  ;;
*)
  echo "usage: bench/peers.sh install | start MOCK_URL DIR" >&2
  exit 2
  ;;
esac
