#!/usr/bin/env bash
# Serving during a fine-tuning job (bench/RESULTS.md): classify latency at concurrency 8, first with the server
# idle, then while a fine-tuning job of mobilenet_v2 runs in the same process (admin API, default job settings:
# one intra-op thread at nice 19). The job trains on 64 crops of the sample photos at 128 px.
#
#   bench/fine_tune_load.sh [seconds-per-case]   (default 20; after `make build models`)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
port=18093
photo=tests/data/images/chelsea.png
source bench/lib.sh
require build "$photo"
need_hey
export EMBER_ADMIN_TOKEN=bench-admin-token
auth="Authorization: Bearer $EMBER_ADMIN_TOKEN"

# Two classes of 32 crops each (cats: chelsea; things: the other photos), packed as a tar.gz.
.venv/bin/python - "$workdir/data" <<'PY'
import pathlib, random, sys
from PIL import Image
root = pathlib.Path(sys.argv[1]) / "photos"
rng = random.Random(0)
for label, files in {"cat": ["chelsea.png"], "thing": ["coffee.png", "rocket.jpg", "china.jpg", "motorcycle.png"]}.items():
    (root / label).mkdir(parents=True)
    for i in range(32):
        image = Image.open(f"tests/data/images/{files[i % len(files)]}").convert("RGB")
        w, h = image.size
        x, y = rng.randrange(w // 3), rng.randrange(h // 3)
        image.crop((x, y, x + w * 2 // 3, y + h * 2 // 3)).save(root / label / f"{i}.jpg")
PY
tar czf "$workdir/photos.tar.gz" -C "$workdir/data" photos

start_server "$(make_repo mobilenet_v2 's/^default = .*/default = true/' load)"
url="http://127.0.0.1:$port/v1/models/mobilenet_v2/classify"
echo "## Classify during fine-tuning, $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores (${seconds}s per case)"
echo
echo "| server | concurrency | requests/s | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|---|---|"
hey_row 8 "$url" image/png "$photo" | sed "s/^|/| idle |/"

settings='{"epochs": 1000, "batch_size": 16, "image_size": 128, "validation_split": 0.25}'
job=$(curl -sf -H "$auth" -F "data=@$workdir/photos.tar.gz" -F "settings=$settings" \
  "http://127.0.0.1:$port/admin/models/mobilenet_v2/fine-tune" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
status() { curl -sf -H "$auth" "http://127.0.0.1:$port/admin/jobs/$job"; }
until status | grep -q '"step":[1-9]'; do sleep 0.5; done
before=$(status)
hey_row 8 "$url" image/png "$photo" | sed "s/^|/| fine-tuning |/"
after=$(status)
curl -sf -X DELETE -H "$auth" "http://127.0.0.1:$port/admin/jobs/$job" >/dev/null
echo
.venv/bin/python - "$before" "$after" "$seconds" <<'PY'
import json, sys
before, after, seconds = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
steps = lambda j: (j["progress"]["epoch"] - 1) * j["progress"]["steps_per_epoch"] + j["progress"]["step"]
print(f"the job ran {steps(after) - steps(before)} training steps of 16 images during the {seconds:.0f}s loaded case "
      f"({after['progress']['examples_per_second']:.1f} examples/s by its own count); it was then cancelled")
PY
echo "peak RSS: $(peak_rss_mib) MiB"
stop_server
