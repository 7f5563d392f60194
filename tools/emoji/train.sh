#!/usr/bin/env bash
# Issue 14's emoji recipe in one command: fetch the emoji data, train a small CLIP from scratch
# on the chosen vendors' drawings (tools/emoji/clip-vendors.toml) and export it as a Hugging
# Face model directory.
#
#     tools/emoji/train.sh OUT_DIR [--vendors google,twitter,apple[,facebook]] [--seed N] [--threads N] [--average N]
#
# --vendors: the vendors to train on: two or three of google, twitter, apple, and facebook to add
# Facebook's drawings (a fourth style, never held out; default all four). With two of the three,
# the third is held out: the run evaluates on it every 400 steps and the script prints its
# retrieval metrics and zero-shot category accuracy at the end (docs/TRAINING.md, experiment 1b).
# The run directory (log, checkpoints) is data/emoji/runs/recipe-VENDORS-seedN.
# --average: the exported model is the mean of the weights of the run's last N checkpoints
# (default 12, every one the recipe keeps: steps 1,400-3,600; 1 exports the last alone).
# Needs npm and Python with Pillow (tools/emoji_data.py); the gclip binary is $GCLIP, else built here
# (with the emoji_zeroshot example, or $EMOJI_ZEROSHOT).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
usage() { echo "usage: $0 OUT_DIR [--vendors google,twitter,apple[,facebook]] [--seed N] [--threads N] [--average N]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out="$1"; shift
vendors=google,twitter,apple,facebook seed=0 threads=2 average=12
while [ $# -gt 0 ]; do
  case "$1" in
    --vendors) vendors="${2:?}"; shift 2 ;;
    --seed) seed="${2:?}"; shift 2 ;;
    --threads) threads="${2:?}"; shift 2 ;;
    --average) average="${2:?}"; shift 2 ;;
    *) usage ;;
  esac
done
# The data script names sets by vendor in this order, whatever order --vendors gives.
train=() held=()
for v in google twitter apple; do
  if [[ ",$vendors," == *",$v,"* ]]; then train+=("$v"); else held+=("$v"); fi
done
for v in ${vendors//,/ }; do
  case "$v" in google|twitter|apple|facebook) ;; *) echo "unknown vendor: $v" >&2; exit 2 ;; esac
done
if [ ${#train[@]} -lt 2 ]; then
  echo "--vendors needs two or three of google, twitter, apple (one vendor: tools/emoji/clip.toml)" >&2
  exit 2
fi
tag="$(IFS=-; echo "${train[*]}")"
if [[ ",$vendors," == *",facebook,"* ]]; then tag="$tag-facebook"; fi

if [ -z "${GCLIP:-}" ]; then
  cargo build --release -q -p gclip-cli --manifest-path "$root/Cargo.toml"
  cargo build --release -q -p gclip --example emoji_zeroshot --manifest-path "$root/Cargo.toml"
fi
gclip="${GCLIP:-${CARGO_TARGET_DIR:-$root/target}/release/gclip}"
zeroshot="${EMOJI_ZEROSHOT:-$(dirname "$gclip")/examples/emoji_zeroshot}"

# Pillow (for the flat images): $PYTHON, else the tools' virtual environment, else python3.
py="${PYTHON:-$root/tools/.venv/bin/python}"
[ -x "$py" ] || py=python3
if ! "$py" -c "import PIL" 2>/dev/null; then
  echo "$py has no Pillow, which the cross-vendor sets need: set PYTHON to a Python with Pillow" >&2
  exit 1
fi
"$py" "$root/tools/emoji_data.py"
sets="$root/data/emoji/sets"
run="$root/data/emoji/runs/recipe-$tag-seed$seed"
rm -rf "$run"
config="$root/tools/emoji/clip-vendors.toml"
args=(--set "data.path=\"$sets/clip-train-$tag.jsonl\"")
if [ ${#held[@]} -gt 0 ]; then
  test="$sets/clip-heldout-${held[0]}.jsonl"
  args+=(--set "eval.path=\"$test\"")
else
  # No vendor is held out: the same recipe without its [eval] section.
  config="$(mktemp --suffix=.toml)"
  trap 'rm -f "$config"' EXIT
  awk '/^\[/ { skip = ($0 == "[eval]") } !skip' "$root/tools/emoji/clip-vendors.toml" \
    | sed "s#^arch = \"\(.*\)\"#arch = \"$root/tools/emoji/\1\"#" > "$config"
fi
start=$(date +%s)
RAYON_NUM_THREADS="$threads" "$gclip" --threads "$threads" train --config "$config" \
  --seed "$seed" --output "$run" "${args[@]}"
echo "trained in $(( $(date +%s) - start )) s"
last="$(ls -d "$run"/checkpoints/step-* | sort | tail -1)"
mkdir -p "$out"
"$gclip" export --checkpoint "$last" --format hf --output "$out" --average "$average"
if [ ${#held[@]} -gt 0 ]; then
  echo "held-out vendor ${held[0]}:"
  "$gclip" --threads "$threads" eval retrieval --model "$out" --data "$test" --json
  if [ -x "$zeroshot" ]; then
    "$zeroshot" "$out" "$test"
  else
    echo "zero-shot category accuracy: no $zeroshot (set EMOJI_ZEROSHOT)" >&2
  fi
fi
