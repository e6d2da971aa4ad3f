#!/usr/bin/env bash
# The model formats of bench/RESULTS.md ("Model formats"), all in one run:
#
#   bench/formats.sh [seconds-per-case]      (default 15; `make bench-formats` builds what it needs)
#
# 1. The raw forward of every format on one thread (bench/formats.rs), with MobileNetV2 also exported with the
#    exporter's own optimisation (batch norms folded into the weights), to compare with the served graph.
# 2. mobilenet_v2 over HTTP in each format at concurrency 1, 8 and 32, one server holding the three (two rounds,
#    the formats interleaved), posting tests/data/images/china.jpg; then the thread layouts at concurrency 1 and
#    32: TorchScript with and without borrow_idle_threads, ONNX as 2 workers x 1 thread and 1 worker x 2 threads.
# 3. The server's CPU time while idle for 10 s after all of that (a spinning thread pool would show here), and
#    the idle RSS of all the default models served as TorchScript against served in the formats `auto` picks.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
port=18086
image=tests/data/images/china.jpg
source bench/lib.sh
require bench-formats target/release/examples/formats "$image" models/mobilenet_v2/1/model.pt2
need_hey

run_heading

folded="$workdir/mobilenet_v2_folded.onnx"
.venv/bin/python - "$folded" <<'EOF' > /dev/null 2>&1
import sys, warnings, torch
sys.path.insert(0, "models/export")
from mobilenet_v2 import build_model
warnings.simplefilter("ignore")
batch = torch.export.Dim("batch", min=1, max=4096)
program = torch.onnx.export(build_model(), (torch.randn(2, 3, 224, 224),), input_names=["image"], output_names=["logits"],
                            dynamic_shapes=({0: batch},), dynamo=True, optimize=True)
program.save(sys.argv[1], external_data=False)
EOF
echo
echo '```'
target/release/examples/formats 5 1.0 "$folded"
echo '```'

# A copy of a default model that is not its task's default (several serve side by side), as lib.sh's add_model.
add_copy() { add_model "$1" "$2" "$3" "s/^default = true/default = false/; ${4:-}"; }

repo="$workdir/repo-formats"
add_copy "$repo" torchscript mobilenet_v2 's/^format = .*/format = "torchscript"/'
add_copy "$repo" onnx mobilenet_v2 's/^format = .*/format = "onnx"/'
add_copy "$repo" aoti mobilenet_v2 's/^format = .*/format = "aoti"/'
add_copy "$repo" torchscript_no_borrow mobilenet_v2 's/^format = .*/format = "torchscript"/; s/^borrow_idle_threads = .*/borrow_idle_threads = false/'
add_copy "$repo" onnx_1x2 mobilenet_v2 's/^format = .*/format = "onnx"/; s/^workers = .*/workers = 1/; s/^intra_op_threads = .*/intra_op_threads = 2/'
start_server "$repo"
load() { hey_row "$2" "http://127.0.0.1:$port/v1/models/$1/classify?top_k=1" image/jpeg "$image" | sed "s/^| /| $1 | /"; }

echo
echo "### mobilenet_v2 over HTTP, per format (2 workers x 1 thread, max_batch_size 4, as committed)"
echo
echo "| format | concurrency | requests/s | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|---|---|"
for round in 1 2; do
  for c in 1 8 32; do
    formats="torchscript onnx aoti"
    [ "$round" = 2 ] && formats="aoti onnx torchscript"
    for format in $formats; do load "$format" "$c"; done
  done
done

echo
echo "### Thread layouts (the same server)"
echo
echo "| model | concurrency | requests/s | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|---|---|"
for round in 1 2; do
  for c in 1 32; do
    for model in torchscript torchscript_no_borrow onnx onnx_1x2; do load "$model" "$c"; done
  done
done

ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
sleep 2
before=$(ticks)
sleep 10
after=$(ticks)
echo
echo "idle CPU over 10 s after the load, five mobilenet_v2 models loaded (two of them ONNX): $(( (after - before) * 1000 / $(getconf CLK_TCK) )) ms"
echo "peak RSS of that server: $(peak_rss_mib) MiB"
stop_server

# Idle RSS of all the default models: as TorchScript, then in the formats `auto` picks.
for variant in torchscript auto; do
  all="$workdir/repo-all-$variant"
  for model in $(ls models | grep -v export); do
    add_model "$all" "$model" "$model" "s/^format = \"auto\"/format = \"$variant\"/"
  done
  started=$(date +%s.%N)
  start_server "$all"
  ready=$(echo "$(date +%s.%N) - $started" | bc)
  sleep 3
  echo "all default models, format $variant: ready in ${ready}s, idle RSS $(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$server_pid/status") MiB ($(curl -s "http://127.0.0.1:$port/metrics" | grep -c 'format="onnx"') served from ONNX)"
  stop_server
done
