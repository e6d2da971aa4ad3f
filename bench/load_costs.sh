#!/usr/bin/env bash
# What each default model costs, and start-up, by --max-concurrent-loads (bench/RESULTS.md, "What a model costs").
#
#   bench/load_costs.sh [ROUNDS] [LIMIT...]   (default 2 rounds of limits 1 2 8; run `make build models` first)
#
# Each row: the whole default repository (models/) served with that limit; seconds from starting the process to
# GET /health/ready answering 200 (polled every 50 ms); the process's RSS and peak 1 s later; the sum of the
# models' resident_bytes (GET /v1/models) and each model's, in MiB. With a limit of 1 each load is measured
# alone, so the sum should be the process's RSS less what it holds with no model (an empty repository, the
# first row).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
shift || true
limits=${*:-1 2 8}
port=18090
ember=target/release/ember

serve() { # serve REPO LIMIT: starts ember, waits for readiness, prints the row's measurements
  local started; started=$(date +%s.%N)
  "$ember" serve --model-repo "$1" --max-concurrent-loads "$2" --port $port --grpc-port 0 >/dev/null 2>&1 &
  local pid=$!
  until curl -sf "localhost:$port/health/ready" >/dev/null; do sleep 0.05; done
  local ready; ready=$(echo "$(date +%s.%N) - $started" | bc)
  sleep 1
  local rss peak
  rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status")
  peak=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")
  local costs
  costs=$(curl -s "localhost:$port/v1/models" | python3 -c '
import json, sys
models = json.load(sys.stdin)["models"]
mib = lambda m: (m["resident_bytes"] or 0) >> 20
print(sum(mib(m) for m in models), " ".join("%s=%d" % (m["name"], mib(m)) for m in models))')
  printf '| %s | %.2f s | %s MiB | %s MiB | %s |\n' "$2" "$ready" "$rss" "$peak" "$costs"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
echo "| limit | ready | RSS | peak | sum of resident_bytes (MiB), each model's |"
echo "|---|---|---|---|---|"
serve "$empty" 1 | sed 's/^| 1 |/| no model |/'
for _ in $(seq "$rounds"); do
  for limit in $limits; do serve models "$limit"; done
done
