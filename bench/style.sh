#!/usr/bin/env bash
# Style benchmark of bench/RESULTS.md: fast style networks and the optimisation method over HTTP.
#
#   bench/style.sh [seconds-per-case] [optimisations]   (defaults 20 and 3; `make bench-style` builds first)
#
# Stylize: ember with style_starry_night as committed (and once with `optimize = false`, the A/B behind the
# default), hey at concurrency 1 and 8 sending sklearn's china.jpg (640x427) with max_size 256 and 512.
# Optimisation: POST /v1/style-transfer of rocket.jpg + starry_night at 256 px, the default 100 steps,
# one request at a time; the server's own timing comes back in the ember-seconds header.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
optimisations=${2:-3}
port=18082
photo=tests/data/images/china.jpg
source bench/lib.sh
require bench-style "$photo"
need_hey

stylize_table() {
  echo "| max_size | concurrency | images/s | p50 ms | p99 ms | non-200 |"
  echo "|---|---|---|---|---|---|"
  for size in 256 512; do
    for c in 1 8; do
      hey_row "$c" "http://127.0.0.1:$port/v1/models/style_starry_night/stylize?max_size=$size" image/jpeg "$photo" |
        sed "s/^|/| $size |/"
    done
  done
}

echo "## Style run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
for variant in "optimize = true" "optimize = false"; do
  echo
  echo "### stylize over HTTP, style_starry_night with \`$variant\` (china.jpg 640x427, ${seconds}s per case)"
  echo
  start_server "$(make_repo style_starry_night "s/^optimize = .*/$variant/" "${variant##* }")"
  stylize_table
  echo
  echo "peak RSS: $(peak_rss_mib) MiB"
  stop_server
done

echo
echo "### optimisation over HTTP (rocket.jpg + starry_night, 256 px, 100 steps, one at a time)"
echo
start_server "$(make_repo style_features '' features)"
echo "| run | seconds (server) | ms per step | seconds (client) |"
echo "|---|---|---|---|"
for run in $(seq 1 "$optimisations"); do
  started=$(date +%s.%N)
  server_seconds=$(curl -sf -o /dev/null -D - -F content=@tests/data/images/rocket.jpg \
    -F style=@tests/data/styles/starry_night.jpg -F size=256 -F steps=100 \
    "http://127.0.0.1:$port/v1/style-transfer" | awk 'tolower($1) == "ember-seconds:" {print $2 + 0}')
  client_seconds=$(echo "$(date +%s.%N) - $started" | bc)
  printf '| %d | %.2f | %.1f | %.2f |\n' "$run" "$server_seconds" "$(echo "$server_seconds * 10" | bc -l)" "$client_seconds"
done
echo
echo "peak RSS: $(peak_rss_mib) MiB"
stop_server
