#!/usr/bin/env bash
# Rebuilds docs/gallery/ through ember's own HTTP API (so the pictures are what a user gets): three photos no
# style network was trained on, each restyled by both fast style models and by the optimisation method with
# both paintings, all at 256 px, then joins them into docs/gallery.jpg (the README's picture).
# Run after `make build models`:  docs/make_gallery.sh
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

# One sheet: a row per photo (photo, then each style by both methods), the paintings on top.
.venv/bin/python - "$out" <<'PYTHON'
import sys
from pathlib import Path
from PIL import Image, ImageDraw
out = Path(sys.argv[1])
columns = ["{}", "{}_starry_night", "{}_starry_night_optimised", "{}_graffiti", "{}_graffiti_optimised"]
rows = [["", "painting_starry_night", "", "painting_graffiti", ""]]
rows += [[c.format(photo) for c in columns] for photo in ["chelsea", "china", "rocket"]]
cell, label = 256, 18
titles = ["photo", "starry_night, fast", "starry_night, optimised", "graffiti, fast", "graffiti, optimised"]
sheet = Image.new("RGB", (cell * len(columns), label + cell * len(rows)), "white")
draw = ImageDraw.Draw(sheet)
for x, title in enumerate(titles):
    draw.text((x * cell + 6, 3), title, fill="black")
for y, row in enumerate(rows):
    for x, name in enumerate(row):
        if name:
            picture = Image.open(out / f"{name}.jpg")
            picture.thumbnail((cell, cell))
            sheet.paste(picture, (x * cell + (cell - picture.width) // 2, label + y * cell + (cell - picture.height) // 2))
sheet.save(out.parent / "gallery.jpg", quality=85)
print(f"wrote {out.parent / 'gallery.jpg'}")
PYTHON
