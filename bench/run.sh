#!/usr/bin/env bash
# Load benchmark of bench/RESULTS.md: ember over HTTP with hey (Debian), against the raw in-process loop.
#
#   bench/run.sh [seconds-per-case]      (default 20; run `make build models` first, or use `make bench`)
#
# Cases: ember as configured in models/mobilenet_v2/model.toml (batching), the same with max_batch_size = 1,
# each at concurrency 1, 8 and 32, sending a real JPEG (tests/data/images/china.jpg, 640x427, 197 kB);
# then the raw forward loop (bench/raw_forward.rs) at batch sizes 1, 2, 4 and 8.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
port=18080
image=tests/data/images/china.jpg
ember=target/release/ember

command -v hey >/dev/null || { apt-get update -qq && apt-get install -y -qq hey; }
[ -x "$ember" ] && [ -x target/release/examples/raw_forward ] && [ -f "$image" ] || { echo "run 'make bench'" >&2; exit 1; }

workdir=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$workdir"; }
trap cleanup EXIT

# A repository with mobilenet_v2 only, model.toml edited by sed expression $1.
make_repo() {
  local repo="$workdir/repo-$2"
  mkdir -p "$repo/mobilenet_v2"
  cp models/mobilenet_v2/labels.txt "$repo/mobilenet_v2/"
  ln -s "$PWD/models/mobilenet_v2/1" "$repo/mobilenet_v2/1"
  sed -e "$1" models/mobilenet_v2/model.toml > "$repo/mobilenet_v2/model.toml"
  echo "$repo"
}

start_server() {
  "$ember" serve --port "$port" --model-repo "$1" > "$workdir/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return 0
    sleep 0.1
  done
  echo "server not ready:" >&2; cat "$workdir/server.log" >&2; exit 1
}

stop_server() {
  kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$server_pid/status"; }

# One hey run; prints a table row: concurrency, requests/s, p50 ms, p99 ms, non-200 answers.
load() {
  local concurrency=$1 out="$workdir/hey.txt"
  hey -z "${seconds}s" -c "$concurrency" -m POST -T image/jpeg -D "$image" \
    "http://127.0.0.1:$port/v1/classify?top_k=1" > "$out"
  local rps p50 p99 ok total
  rps=$(awk '/Requests\/sec:/ {printf "%.1f", $2}' "$out")
  p50=$(awk '/ 50% in / {printf "%.1f", $3 * 1000}' "$out")
  p99=$(awk '/ 99% in / {printf "%.1f", $3 * 1000}' "$out")
  ok=$(awk '/\[200\]/ {print $2}' "$out")
  total=$(awk '/\[[0-9]+\]/ {n += $2} END {print n + 0}' "$out")
  echo "| $concurrency | $rps | $p50 | $p99 | $((total - ${ok:-0})) |"
}

run_config() {
  local name=$1 repo=$2
  start_server "$repo"
  echo
  echo "### ember, $name"
  echo
  echo "| concurrency | requests/s | p50 ms | p99 ms | non-200 |"
  echo "|---|---|---|---|---|"
  for c in 1 8 32; do load "$c"; done
  echo
  echo "peak RSS: $(peak_rss_mib) MiB"
  stop_server
}

echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, ${seconds}s per case, $image"
run_config "model.toml as committed (max_batch_size 4, 2 workers x 1 thread)" "$(make_repo '' batched)"
run_config "max_batch_size = 1 (2 workers x 1 thread)" "$(make_repo 's/^max_batch_size = .*/max_batch_size = 1/' unbatched)"
echo
echo "### raw in-process loop (bench/raw_forward.rs, decoding excluded)"
echo
echo '```'
target/release/examples/raw_forward models/mobilenet_v2/1/model.pt "$image" "$seconds"
echo '```'
