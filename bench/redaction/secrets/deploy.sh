#!/usr/bin/env bash
set -euo pipefail
export GITLAB_TOKEN=glpat-b2DCSmTG2gc-CMfoB5rc
export API_TOKEN=d589cf242bp1tnAoVWal
curl -sf -H "Authorization: Bearer $API_TOKEN" https://deploy.acme.io/v1/release
echo "deployed"
