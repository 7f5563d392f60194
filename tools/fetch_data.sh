#!/usr/bin/env bash
# Fetch real images (photos, clip art, emoji) into the git-ignored data/ folder at the repo root.
# Only package registries are used: PyPI (scikit-image, scikit-learn wheels carry sample
# photos), Debian (openclipart-png) and npm (emoji-datasource-*). Nothing here is needed by CI;
# tools/gen_image_fixtures.py reads these files to make the committed fixtures.
# Usage: tools/fetch_data.sh [PYTHON]   (PYTHON: an interpreter with pip, default python3)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="$root/data"
py="${1:-python3}"
mkdir -p "$data/wheels" "$data/skimage" "$data/sklearn" "$data/openclipart" "$data/emoji"

if [ ! -e "$data/skimage/.done" ]; then
  "$py" -m pip download --no-deps --only-binary=:all: -d "$data/wheels" scikit-image scikit-learn
  for w in "$data"/wheels/scikit_image-*.whl; do
    "$py" -m zipfile -e "$w" "$data/wheels/skimage_unz"
  done
  find "$data/wheels/skimage_unz" -path '*skimage/data/*' \( -name '*.png' -o -name '*.jpg' -o -name '*.jpeg' -o -name '*.gif' -o -name '*.bmp' -o -name '*.tif' -o -name '*.tiff' -o -name '*.webp' \) -exec cp {} "$data/skimage/" \;
  for w in "$data"/wheels/scikit_learn-*.whl; do
    "$py" -m zipfile -e "$w" "$data/wheels/sklearn_unz"
  done
  find "$data/wheels/sklearn_unz" -path '*datasets/images/*' -name '*.jpg' -exec cp {} "$data/sklearn/" \;
  rm -rf "$data/wheels/skimage_unz" "$data/wheels/sklearn_unz"
  touch "$data/skimage/.done"
fi

if [ ! -e "$data/openclipart/.done" ]; then
  (cd "$data/openclipart" && apt-get download openclipart-png && dpkg -x openclipart-png_*.deb extracted && rm -f openclipart-png_*.deb)
  touch "$data/openclipart/.done"
fi

if [ ! -e "$data/emoji/.done" ]; then
  (cd "$data/emoji" && for p in emoji-datasource-google emoji-datasource-twitter emoji-datasource-apple; do
     npm pack "$p" >/dev/null && mkdir -p "$p" && tar -xzf "$p"-*.tgz -C "$p" && rm -f "$p"-*.tgz
   done)
  touch "$data/emoji/.done"
fi
echo "data ready under $data"
