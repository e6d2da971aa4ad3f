#!/usr/bin/env bash
# Fine-tunes mobilenet_v2 onto Fashion-MNIST (Debian `dataset-fashion-mnist`) with `ember train`, then measures
# the new model on the 10,000-image test set with `ember eval`. The result is a new model, `fashion_mnist`, in a
# scratch copy of the repository (bench/out/fashion-repo), so the served ImageNet classifier is left alone.
#
# Usage: bench/fine_tune_fashion.sh   (after `make build models`; about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
EMBER=target/release/ember
DATA=.venv/sources/fashion-mnist
if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  work=$(mktemp -d)
  (cd "$work" && apt-get download dataset-fashion-mnist >/dev/null 2>&1 && dpkg-deb -x dataset-fashion-mnist_*.deb x)
  mkdir -p "$DATA" && cp "$work"/x/usr/share/datasets/fashion-mnist/*.gz "$DATA"/ && rm -rf "$work"
fi
REPO=bench/out/fashion-repo
rm -rf "$REPO" && mkdir -p "$REPO" && cp -r models/mobilenet_v2 "$REPO"/
/usr/bin/time -f "ember train: %e s wall, %M KiB peak RSS" \
  "$EMBER" train --model-repo "$REPO" --model mobilenet_v2 --into fashion_mnist \
    --data "$DATA/train-images-idx3-ubyte.gz" --label-names bench/fashion_mnist_labels.txt \
    --image-size 64 --epochs 1 --batch-size 64 --optimizer adam --learning-rate 0.001 \
    --validation-split 0.05 --time-limit-minutes 13 > bench/out/fashion_train.json
/usr/bin/time -f "ember eval: %e s wall" \
  "$EMBER" eval --model-repo "$REPO" --model fashion_mnist \
    --data "$DATA/t10k-images-idx3-ubyte.gz" --label-names bench/fashion_mnist_labels.txt
