#!/usr/bin/env bash
# The Open Inference Protocol over gRPC beside HTTP, in one run on one server (bench/RESULTS.md, "KServe v2 over
# gRPC"): bench/v2_transports.rs sends the same request both ways, alternating, at concurrency 1, 8 and 32:
# MobileNetV2 with chelsea.png preprocessed to FP32 [1, 3, 224, 224] (602 KB a request), then the iris tensor
# model with one row (16 bytes: what the protocol itself costs).
#
#   make bench-grpc, or bench/grpc.sh [seconds-per-case] (default 15) once make bench-grpc has built the client
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
port=18086
grpc_port=18087
photo=tests/data/images/chelsea.png
source bench/lib.sh
require models "$photo" .venv/bin/python
require bench-grpc target/release/examples/v2_transports

# The photo preprocessed as the tritonclient tests do it; one iris flower.
.venv/bin/python tests/kserve/preprocess.py "$photo" "$workdir/chelsea.f32"
.venv/bin/python -c "import numpy as np; np.array([[5.1, 3.5, 1.4, 0.2]], dtype='<f4').tofile('$workdir/iris.f32')"

repo=$(make_repo mobilenet_v2 "" grpc)
mkdir -p "$repo/iris" && cp models/iris/model.toml "$repo/iris/" && ln -s "$PWD/models/iris/1" "$repo/iris/1"
start_server "$repo"
client=target/release/examples/v2_transports
echo "mobilenet_v2, FP32 [1, 3, 224, 224]:"
"$client" "127.0.0.1:$port" "127.0.0.1:$grpc_port" "$seconds" 1,8,32 mobilenet_v2 image 1,3,224,224 "$workdir/chelsea.f32"
echo
echo "iris, FP32 [1, 4]:"
"$client" "127.0.0.1:$port" "127.0.0.1:$grpc_port" "$seconds" 1,8,32 iris measurements 1,4 "$workdir/iris.f32"
