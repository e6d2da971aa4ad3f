#!/usr/bin/env bash
# Text benchmark of bench/RESULTS.md: sentiment and generation over HTTP, against the raw in-process loops.
#
#   bench/text.sh [seconds-per-case] [tokens-per-stream]   (defaults 20 and 500; `make bench-text` builds first)
#
# Sentiment: ember with the sentiment model as committed, hey at concurrency 1 and 32 sending one sentence per
# request; then the raw loop (bench/raw_text.rs) at batch 1 and 16 (the served max_batch_size).
# Generation: ember with the shakespeare model as committed, 1 stream and 16 concurrent streams of
# tokens-per-stream tokens each, 3 rounds (bench/gen_load.rs); then the raw step loop at batch 1 and 16.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
tokens=${2:-500}
port=18081
source bench/lib.sh
require bench-text target/release/examples/raw_text target/release/examples/gen_load
need_hey

sentence='A gripping, beautifully acted film that I would happily watch again.'
printf '{"text": "%s"}' "$sentence" > "$workdir/sentence.json"

echo "## Text run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
echo
echo "### sentiment over HTTP (one sentence per request, ${seconds}s per case)"
echo
start_server "$(make_repo sentiment '' sentiment)"
echo "| concurrency | requests/s | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|---|"
for c in 1 32; do hey_row "$c" "http://127.0.0.1:$port/v1/sentiment" application/json "$workdir/sentence.json"; done
echo
echo "peak RSS: $(peak_rss_mib) MiB"
stop_server
echo
echo '```'
target/release/examples/raw_text sentiment "$seconds"
echo '```'

echo
echo "### generation over HTTP (streams of $tokens tokens, 3 rounds)"
echo
start_server "$(make_repo shakespeare '' shakespeare)"
echo '```'
for streams in 1 16; do
  target/release/examples/gen_load "http://127.0.0.1:$port" "$streams" "$tokens" 3 | tail -n 1 | sed "s/^/$streams stream(s): /"
done
echo '```'
echo
echo "peak RSS: $(peak_rss_mib) MiB"
stop_server
echo
echo '```'
target/release/examples/raw_text generate "$tokens"
echo '```'
