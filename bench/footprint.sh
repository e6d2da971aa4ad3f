#!/usr/bin/env bash
# Footprint benchmark of bench/RESULTS.md: start-up time, idle memory and memory under load.
#
#   bench/footprint.sh [seconds-of-load] [BINARY...]   (default 10 s and target/release/ember; run `make build
#                                                        models` first, or `make bench-footprint`)
#
# Several binaries (say, a build of an older commit) are measured one after the other in the same run. The
# rows name MALLOC_ARENA_MAX when it is set, to compare glibc's arena cap with ember's own.
#
# For mobilenet_v2 alone (its model.toml as committed) and for the whole default repository (models/):
#   ready    seconds from starting the process to GET /health/ready answering 200 (polled every 20 ms)
#   idle     RSS 3 s after ready
#   c=32     peak RSS (VmHWM) after the load: classify at concurrency 32 for the given seconds
#   cuda     whether libtorch_cuda.so is mapped into the process
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
port=18090
image=tests/data/images/china.jpg
source bench/lib.sh
require bench-footprint "$image"
need_hey

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$server_pid/status"; }
cuda_mapped() { grep -q 'libtorch_cuda.so' "/proc/$server_pid/maps" && echo yes || echo no; }

# measure NAME REPO [MODEL]: one table row; MODEL (default: the server's default model) is the one loaded.
measure() {
  local name="$(basename "$ember")${MALLOC_ARENA_MAX:+ MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX}, $1" repo=$2 model=${3:-}
  local started ready idle peak rps
  started=$(date +%s.%N)
  "$ember" serve --port "$port" --grpc-port 0 --model-repo "$repo" > "$workdir/server.log" 2>&1 &
  server_pid=$!
  until curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { echo "server exited:" >&2; cat "$workdir/server.log" >&2; exit 1; }
    sleep 0.02
  done
  ready=$(echo "$(date +%s.%N) - $started" | bc)
  sleep 3
  idle=$(rss_mib)
  local url="http://127.0.0.1:$port/v1/classify?top_k=1"
  [ -n "$model" ] && url="http://127.0.0.1:$port/v1/models/$model/classify?top_k=1"
  rps=$(hey -z "${seconds}s" -c 32 -m POST -T image/jpeg -D "$image" "$url" | awk '/Requests\/sec:/ {printf "%.1f", $2}')
  peak=$(peak_rss_mib)
  printf '| %s | %.2f | %s | %s | %s | %s |\n' "$name" "$ready" "$idle" "$peak" "$rps" "$(cuda_mapped)"
  stop_server
}

echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, commit $(git rev-parse --short HEAD), ${seconds}s of load"
echo
echo "| binary, models | ready s | idle RSS MiB | peak RSS MiB at c=32 | requests/s at c=32 | libtorch_cuda mapped |"
echo "|---|---|---|---|---|---|"
alone=$(make_repo mobilenet_v2 '' alone)
for ember in "${@:-$ember}"; do
  measure "mobilenet_v2 alone" "$alone"
  measure "all default models" models mobilenet_v2
done
