#!/bin/bash
# Generation under a burst of long prompts (bench/RESULTS.md, issue 15): 16 running streams while 16 prompts of
# 4000 tokens arrive at once, 3 rounds per binary, the binaries alternated twice in one run.
#   bench/gen_burst.sh BEFORE_BINARY BEFORE_REPO [AFTER_BINARY AFTER_REPO ...]
# Each repository holds one shakespeare model (model.toml and its version 1); `name=binary:repo` arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example gen_burst
run() { # name binary repo
  "$2" serve --model-repo "$3" --port 18120 --grpc-port 0 > "/tmp/burst-$1.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -sf localhost:18120/health/ready >/dev/null && break; sleep 0.2; done
  echo "== $1"
  target/release/examples/gen_burst http://127.0.0.1:18120 16 16 4000 3
  kill "$pid"; wait "$pid" || true
}
for pass in 1 2; do
  for setup in "$@"; do
    name=${setup%%=*}; rest=${setup#*=}
    run "$name" "${rest%%:*}" "${rest#*:}"
  done
done
