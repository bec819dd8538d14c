#!/usr/bin/env bash
# Precision and recall of secret redaction: the labelled corpus, the hard negatives and the
# vendored dependencies as a body of ordinary code (bench/redaction/score.py).
#   bench/redaction.sh            builds the release binary unless GATEHOUSE_BIN is set
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${GATEHOUSE_BIN:-}" ]; then
  cargo build --release --locked --bin gatehouse
  export GATEHOUSE_BIN=target/release/gatehouse
fi
python3 bench/redaction/score.py "$@"
