#!/usr/bin/env bash
# Rebuilds docs/gallery/ through ember's own HTTP API (so the pictures are what a user gets): three photos no
# style network was trained on, each restyled by both fast style models and by the optimisation method with
# both paintings, all at 256 px. Run after `make build models`:  docs/make_gallery.sh
set -euo pipefail
cd "$(dirname "$0")/.."
port=18083
out=docs/gallery
source bench/lib.sh
require "build models"

start_server models
mkdir -p "$out"
for photo in chelsea.png china.jpg rocket.jpg; do
  name=${photo%.*}
  input=tests/data/images/$photo
  # The photo itself at the gallery's size: strength 0 returns it unstyled.
  curl -sf -o "$out/$name.jpg" --data-binary "@$input" -H "Content-Type: image/${photo##*.}" \
    "http://127.0.0.1:$port/v1/stylize?max_size=256&strength=0&format=jpeg"
  for style in starry_night graffiti; do
    curl -sf -o "$out/${name}_$style.jpg" --data-binary "@$input" -H "Content-Type: image/${photo##*.}" \
      "http://127.0.0.1:$port/v1/stylize?style=$style&max_size=256&format=jpeg"
    painting=$(ls tests/data/styles/$style.*)
    curl -sf -o "$out/${name}_${style}_optimised.jpg" -F "content=@$input" -F "style=@$painting" \
      -F size=256 -F steps=150 -F format=jpeg "http://127.0.0.1:$port/v1/style-transfer"
  done
  echo "$name done"
done
for style in starry_night graffiti; do
  painting=$(ls tests/data/styles/$style.*)
  curl -sf -o "$out/painting_$style.jpg" --data-binary "@$painting" -H "Content-Type: image/${painting##*.}" \
    "http://127.0.0.1:$port/v1/stylize?max_size=256&strength=0&format=jpeg"
done
stop_server
