#!/usr/bin/env bash
# The reliability suite of bench/RESULTS.md ("Reliability"): overload at 3x capacity, 1,000 half-open
# connections, SOAK_SECONDS (600) of mixed traffic with a fine-tuning job, SIGTERM under load, against a release
# server with every default model (bench/soak.rs says what each phase checks). Not part of `make test`.
#
#   bench/soak.sh [port]        (make soak; run `make build models` first)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -e tests/data/images/chelsea.png ] || { echo "run 'make models' first" >&2; exit 1; }
cargo build --release --bin ember --example soak
target/release/examples/soak "$@"
