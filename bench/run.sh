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
source bench/lib.sh
require bench target/release/examples/raw_forward "$image"
need_hey

load() { hey_row "$1" "http://127.0.0.1:$port/v1/classify?top_k=1" image/jpeg "$image"; }

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
run_config "model.toml as committed (max_batch_size 4, 2 workers x 1 thread)" "$(make_repo mobilenet_v2 '' batched)"
run_config "max_batch_size = 1 (2 workers x 1 thread)" "$(make_repo mobilenet_v2 's/^max_batch_size = .*/max_batch_size = 1/' unbatched)"
echo
echo "### raw in-process loop (bench/raw_forward.rs, decoding excluded)"
echo
echo '```'
target/release/examples/raw_forward models/mobilenet_v2/1/model.pt "$image" "$seconds"
echo '```'
