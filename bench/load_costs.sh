#!/usr/bin/env bash
# What each default model costs, and start-up, by --max-concurrent-loads (bench/RESULTS.md, "What a model costs").
#
#   bench/load_costs.sh [ROUNDS] [LIMIT...]   (default 2 rounds of limits 1 2 8; run `make build models` first)
#
# Each row: the whole default repository (models/) served with that limit; seconds from starting the process to
# GET /health/ready answering 200 (bench/lib.sh's start_server, polled every 100 ms); the process's RSS and peak
# 1 s later; the sum of the models' resident_bytes (GET /v1/models) and each model's, in MiB. With a limit of 1
# each load is measured alone, so the sum should be the process's RSS less what it holds with no model (an empty
# repository, the first row).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
shift || true
limits=${*:-1 2 8}
port=18090
source bench/lib.sh
require models/mobilenet_v2/1/model.pt

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$server_pid/status"; }

# row LABEL REPO LIMIT: one table row
row() {
  local started ready costs
  started=$(date +%s.%N)
  start_server "$2" --max-concurrent-loads "$3"
  ready=$(echo "$(date +%s.%N) - $started" | bc)
  sleep 1
  costs=$(curl -s "localhost:$port/v1/models" | python3 -c '
import json, sys
models = json.load(sys.stdin)["models"]
mib = lambda m: (m["resident_bytes"] or 0) >> 20
print(sum(mib(m) for m in models), " ".join("%s=%d" % (m["name"], mib(m)) for m in models))')
  printf '| %s | %.2f s | %s MiB | %s MiB | %s |\n' "$1" "$ready" "$(rss_mib)" "$(peak_rss_mib)" "$costs"
  stop_server
}

mkdir -p "$workdir/empty"
echo "| limit | ready | RSS | peak | sum of resident_bytes (MiB), each model's |"
echo "|---|---|---|---|---|"
row "no model" "$workdir/empty" 1
for _ in $(seq "$rounds"); do
  for limit in $limits; do row "$limit" models "$limit"; done
done
