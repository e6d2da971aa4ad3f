#!/usr/bin/env bash
# mobilenet_v2_int8 beside mobilenet_v2, all in one run (bench/RESULTS.md, "mobilenet_v2_int8"):
#
#   bench/int8.sh [seconds-per-case]      (default 20; `make bench-int8` builds what it needs)
#
# 1. The other candidate: mobilenet_v2 quantized for libtorch's x86 engine as TorchScript
#    (bench/int8_torchscript.py), calibrated on the same photos and put through the same gate.
# 2. The raw forward of fp32 and int8 in ONNX Runtime and in TorchScript, batch 1/4/8 on one thread
#    (bench/int8.rs).
# 3. Over HTTP at concurrency 32 (and 1), one server holding the four, two rounds interleaved, posting
#    tests/data/images/china.jpg to the classify route.
# 4. The RSS of each served alone: once ready, and the peak after a concurrency-32 run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
port=18087
image=tests/data/images/china.jpg
source bench/lib.sh
require bench-int8 target/release/examples/int8 "$image" models/mobilenet_v2_int8/1/model.onnx
need_hey

run_heading
echo
candidate="$workdir/torchscript_int8.pt"
.venv/bin/python bench/int8_torchscript.py "$candidate" 2>&1 | grep 'gate'
echo
echo '```'
target/release/examples/int8 5 1.0 "$candidate"
echo '```'

# add_variant REPO NAME SOURCE FORMAT [MODEL.PT]: a non-default copy of SOURCE served in FORMAT; with MODEL.PT,
# its version 1 holds only that file (the TorchScript candidate has no model folder of its own).
add_variant() {
  local repo=$1 name=$2 source=$3 format=$4 model_pt=${5:-}
  add_model "$repo" "$name" "$source" "s/^default = true/default = false/; s/^format = .*/format = \"$format\"/; /^quantized_from/d"
  if [ -n "$model_pt" ]; then
    rm "$repo/$name/1" && mkdir "$repo/$name/1" && ln -s "$model_pt" "$repo/$name/1/model.pt"
  fi
}
repo="$workdir/repo-int8"
add_variant "$repo" onnx_fp32 mobilenet_v2 onnx
add_variant "$repo" onnx_int8 mobilenet_v2_int8 onnx
add_variant "$repo" torchscript_fp32 mobilenet_v2 torchscript
add_variant "$repo" torchscript_int8 mobilenet_v2 torchscript "$candidate"
load() { hey_row "$2" "http://127.0.0.1:$port/v1/models/$1/classify?top_k=1" image/jpeg "$image" | sed "s/^| /| $1 | /"; }

start_server "$repo"
echo
echo "### Over HTTP (2 workers x 1 thread, max_batch_size 4, as committed)"
echo
echo "| model | concurrency | requests/s | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|---|---|"
for round in 1 2; do
  for c in 32 1; do
    models="onnx_fp32 onnx_int8 torchscript_fp32 torchscript_int8"
    [ "$round" = 2 ] && models="torchscript_int8 torchscript_fp32 onnx_int8 onnx_fp32"
    for model in $models; do load "$model" "$c"; done
  done
done
stop_server

echo
echo "### RSS of each served alone"
echo
echo "| model | ready in s | RSS when ready MiB | peak RSS after concurrency 32 MiB |"
echo "|---|---|---|---|"
for model in onnx_fp32 onnx_int8 torchscript_fp32 torchscript_int8; do
  alone="$workdir/repo-alone-$model"
  mkdir -p "$alone" && cp -a "$repo/$model" "$alone/"
  started=$(date +%s.%N)
  start_server "$alone"
  ready=$(echo "$(date +%s.%N) - $started" | bc)
  rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$server_pid/status")
  hey -z 5s -c 32 -m POST -T image/jpeg -D "$image" "http://127.0.0.1:$port/v1/models/$model/classify" > /dev/null
  echo "| $model | $(printf %.2f "$ready") | $rss | $(peak_rss_mib) |"
  stop_server
done
