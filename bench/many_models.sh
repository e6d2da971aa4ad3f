#!/usr/bin/env bash
# Many models under one memory budget (bench/RESULTS.md, "Many models"): a repository of 24 on-demand
# classifiers (16 mobilenet_v2 and 8 sentiment: one of each a variant fine-tuned here by `ember train`, unless
# FINE_TUNED=0, the rest copies) served under a budget that holds a quarter of them, driven by
# bench/many_models.rs: cold loads, a loaded model's p99 beside loads, SECONDS_ZIPF (300) seconds of Zipf
# traffic from CLIENTS (16) clients.
#
#   bench/many_models.sh [port]        (make bench-many-models; run `make build models` first)
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:-8097}
source bench/lib.sh
require models models/mobilenet_v2/1/model.pt models/sentiment/1/model.pt
cargo build --release --example many_models
seconds=${SECONDS_ZIPF:-300}
clients=${CLIENTS:-16}
repo="$workdir/many"
on_demand='s/^default = true/default = false/; s/^format = .*/format = "torchscript"/; $a [serving]\nload = "on-demand"'
names=()
for i in $(seq -f %02g 1 16); do add_model "$repo" "mobilenet_v2_$i" mobilenet_v2 "$on_demand"; names+=("mobilenet_v2_$i"); done
for i in $(seq -f %02g 1 8); do add_model "$repo" "sentiment_$i" sentiment "$on_demand"; names+=("sentiment_$i"); done
if [ "${FINE_TUNED:-1}" = 1 ]; then
  # One fine-tuned variant of each kind in place of its last copy (version 2, published by `ember train`): onto
  # two labels from crops of two test photos (as tests/fine_tune.rs makes them), and onto a few reviews.
  .venv/bin/python - "$workdir/photos" <<'PY'
import pathlib, sys
from PIL import Image, ImageOps
out = pathlib.Path(sys.argv[1])
for label, name in (("cat", "chelsea.png"), ("cup", "coffee.png")):
    image = Image.open(f"tests/data/images/{name}").convert("RGB")
    w, h = image.size
    (out / label).mkdir(parents=True, exist_ok=True)
    for i, (x, y) in enumerate([(0, 0), (w // 8, h // 8), (w // 4, 0), (0, h // 4)]):
        crop = image.crop((x, y, x + w * 3 // 4, y + h * 3 // 4))
        crop.save(out / label / f"{i}.png")
        ImageOps.mirror(crop).save(out / label / f"{i}_mirrored.png")
PY
  {
    echo "text,label"
    for i in 1 2 3 4 5 6 7 8; do
      echo "\"A wonderful film, take $i: warm, funny and beautifully acted.\",positive"
      echo "\"A dull film, take $i: flat, long and badly acted.\",negative"
    done
  } > "$workdir/reviews.csv"
  small=(--epochs 2 --batch-size 4 --validation-split 0.25 --time-limit-minutes 5)
  "$ember" train --model-repo "$repo" --model mobilenet_v2_16 --data "$workdir/photos" --image-size 64 \
    --freeze-backbone --learning-rate 0.01 "${small[@]}" > "$workdir/train-image.json"
  "$ember" train --model-repo "$repo" --model sentiment_08 --data "$workdir/reviews.csv" "${small[@]}" \
    > "$workdir/train-text.json"
  echo "Fine-tuned variants: mobilenet_v2_16 and sentiment_08 serve version 2 (ember train)"
fi
# A quarter of the 24 models' measured costs (resident_bytes: about 55 MiB a mobilenet_v2 copy, 110 MiB a
# sentiment one, bench/RESULTS.md); a sentiment copy's first load reserves 236 MiB (twice its files + 64 MiB).
budget=${BUDGET:-$(( (16 * 55 + 8 * 110) / 4 ))MiB}
start_server "$repo" --model-memory-budget "$budget" --watch-interval-ms 0
budget_bytes=$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^ember_model_memory_budget_bytes / {print $2}')
echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), budget $budget"
echo
target/release/examples/many_models "http://127.0.0.1:$port" "$server_pid" "$budget_bytes" "$seconds" "$clients" "${names[@]}"
echo "Evictions logged: $(grep -c 'model evicted' "$workdir/server.log")"
stop_server
