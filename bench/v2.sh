#!/usr/bin/env bash
# The Open Inference Protocol's cost beside REST, in one run on one server (bench/RESULTS.md, "KServe v2"):
# MobileNetV2 on chelsea.png through POST /v1/classify (the PNG; ember decodes and preprocesses it) and through
# POST /v2/models/mobilenet_v2/infer with the preprocessed FP32 [1, 3, 224, 224] tensor, as JSON and as binary
# tensor data (what tritonclient sends by default), at concurrency 1 and 8; then the iris tensor model (JSON).
#
#   bench/v2.sh [seconds-per-case]      (default 20; run `make build models` first)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
port=18082
photo=tests/data/images/chelsea.png
source bench/lib.sh
require models "$photo" .venv/bin/python
need_hey

# The request bodies: the photo preprocessed as the tritonclient test does it (tests/kserve/preprocess.py),
# written once as JSON and as binary tensor data; the binary header's length goes in a header.
PYTHONPATH=tests/kserve .venv/bin/python - "$photo" "$workdir" <<'PY'
import json, sys
from preprocess import preprocessed

photo, out = sys.argv[1], sys.argv[2]
tensor = preprocessed(photo)
inputs = {"name": "image", "shape": list(tensor.shape), "datatype": "FP32"}
with open(f"{out}/json.body", "w") as f:
    json.dump({"inputs": [dict(inputs, data=tensor.ravel().tolist())]}, f)
header = json.dumps({"inputs": [dict(inputs, parameters={"binary_data_size": tensor.nbytes})],
                     "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
with open(f"{out}/binary.body", "wb") as f:
    f.write(header + tensor.tobytes())
with open(f"{out}/binary.length", "w") as f:
    f.write(str(len(header)))
json.dump({"inputs": [{"name": "measurements", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]},
          open(f"{out}/iris.body", "w"))
PY

repo=$(make_repo mobilenet_v2 "" v2)
mkdir -p "$repo/iris" && cp models/iris/model.toml "$repo/iris/" && ln -s "$PWD/models/iris/1" "$repo/iris/1"
start_server "$repo"
v2=http://127.0.0.1:$port/v2/models
echo "| route | body | concurrency | requests/s | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|---|---|---|"
for c in 1 8; do
  echo -n "| /v1/classify | PNG $(stat -c %s "$photo") B "
  hey_row "$c" "http://127.0.0.1:$port/v1/classify?top_k=5" image/png "$photo"
  echo -n "| /v2 infer | binary $(stat -c %s "$workdir/binary.body") B "
  hey_row "$c" "$v2/mobilenet_v2/infer" application/octet-stream "$workdir/binary.body" \
    "Inference-Header-Content-Length: $(cat "$workdir/binary.length")"
  echo -n "| /v2 infer | JSON $(stat -c %s "$workdir/json.body") B "
  hey_row "$c" "$v2/mobilenet_v2/infer" application/json "$workdir/json.body"
done
echo -n "| /v2 infer iris | JSON $(stat -c %s "$workdir/iris.body") B "
hey_row 1 "$v2/iris/infer" application/json "$workdir/iris.body"
echo
echo "peak RSS: $(peak_rss_mib) MiB"
stop_server
