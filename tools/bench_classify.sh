#!/usr/bin/env bash
# Latency of one zero-shot classify call: one image, six captions, model already on disk.
# gclip (the whole `gclip classify` process, and a warm library call) next to the Python
# tutorial code (transformers CLIPModel + CLIPProcessor), on the same machine, in one sitting.
#
# Usage: tools/bench_classify.sh [FULL_MODEL_DIR] [IMAGE] [PYTHON]
#   FULL_MODEL_DIR  a full-size ViT-B/32 in transformers layout (config.json + model.safetensors),
#                   e.g. from `tools/gen_fixtures.py --full /tmp/vitb32` (default /tmp/vitb32);
#                   random weights cost the same time as openai/clip-vit-base-patch32's.
#   IMAGE           default tests/fixtures/images/photo_chelsea.jpg (451×300 JPEG of a cat)
#   PYTHON          an interpreter with torch and transformers (default tools/.venv/bin/python)
# Environment: RUNS (process runs per tool, default 10), WARM (in-process calls, default 20).
# gclip runs in fp32, bf16 and int8 from a converted-weights cache of the run's own (bf16/int8
# weights converted, fp32 ones packed for the CPU's f32 panel kernel where it has one), made by
# a first run of each that is timed apart.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-/tmp/vitb32}"
image="${2:-$root/tests/fixtures/images/photo_chelsea.jpg}"
py="${3:-$root/tools/.venv/bin/python}"
runs="${RUNS:-10}"
warm="${WARM:-20}"
target="${CARGO_TARGET_DIR:-$root/target}"

# The model directory as the hub has it: weights, config, tokenizer files and
# openai/clip-vit-base-patch32's preprocessor_config.json.
model="${TMPDIR:-/tmp}/gclip-bench-classify-vitb32"
mkdir -p "$model"
ln -sf "$(realpath "$src/model.safetensors")" "$model/model.safetensors"
cp "$src/config.json" "$model/config.json"
cp "$root"/tests/fixtures/tokenizer/hf/{vocab.json,merges.txt,tokenizer_config.json} "$model/"
cp "$root/tests/fixtures/tokenizer/hf_json/tokenizer.json" "$model/"
cat > "$model/preprocessor_config.json" <<'EOF'
{
  "crop_size": 224,
  "do_center_crop": true,
  "do_normalize": true,
  "do_resize": true,
  "feature_extractor_type": "CLIPFeatureExtractor",
  "image_mean": [0.48145466, 0.4578275, 0.40821073],
  "image_std": [0.26862954, 0.26130258, 0.27577711],
  "resample": 3,
  "size": 224
}
EOF

(cd "$root" && cargo build --release -q -p gclip-cli && cargo build --release -q -p gclip --example classify_latency)
gclip="$target/release/gclip"
captions=("a photo of a cat" "a photo of a dog" "a photo of two cats" "a cat sleeping on a sofa" "a drawing of a cat" "a photo of a car")

cat "$model/model.safetensors" > /dev/null  # on disk and in the page cache, for both tools

tmp=$(mktemp -d)

# One timed run: appends "wall_ms cpu_ms rss_kb" to the file named by $1.
timed() {
  local out="$1"; shift
  local t0 t1
  t0=$(date +%s%N)
  /usr/bin/time -f "%U %S %M" -o "$tmp/time" "$@" > /dev/null 2>&1
  t1=$(date +%s%N)
  read -r u s m < <(tail -1 "$tmp/time")
  echo "$(( (t1 - t0) / 1000000 )) $(awk -v u="$u" -v s="$s" 'BEGIN { printf "%d", (u + s) * 1000 }') $m" >> "$out"
}

# Median and minimum of a column.
stat() {
  local col="$1" file="$2"
  local n; n=$(wc -l < "$file")
  printf '%6d (min %5d)' "$(cut -d' ' -f"$col" "$file" | sort -n | sed -n "$(( (n + 1) / 2 ))p")" \
    "$(cut -d' ' -f"$col" "$file" | sort -n | head -1)"
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "gclip classify output:"
"$gclip" classify --model "$model" --labels "${captions[@]}" -- "$image"
gclip_cmd=("$gclip" classify --model "$model" --labels "${captions[@]}" -- "$image")
gclip_bf16=("$gclip" classify --precision bf16 --model "$model" --labels "${captions[@]}" -- "$image")
gclip_int8=("$gclip" classify --precision int8 --model "$model" --labels "${captions[@]}" -- "$image")
py_cmd=("$py" "$root/tools/bench_classify.py" "$model" "$image")
imp_cmd=("$py" -c "import torch, transformers; from transformers import CLIPModel, CLIPProcessor")
# Converted weights go to a cache of this run's own: the first run of each precision (timed
# apart) converts and writes it, the timed runs map it.
export GCLIP_CONVERTED_CACHE="$tmp/converted"
timed "$tmp/first-fp32" "${gclip_cmd[@]}"
timed "$tmp/first-bf16" "${gclip_bf16[@]}"
timed "$tmp/first-int8" "${gclip_int8[@]}"
"${gclip_cmd[@]}" > /dev/null 2>&1; "${py_cmd[@]}" > /dev/null 2>&1  # warm-up
# Interleaved, so that both tools see the same machine.
for _ in $(seq "$runs"); do
  timed "$tmp/gclip" "${gclip_cmd[@]}"
  timed "$tmp/gclip-bf16" "${gclip_bf16[@]}"
  timed "$tmp/gclip-int8" "${gclip_int8[@]}"
  timed "$tmp/py" "${py_cmd[@]}"
  timed "$tmp/imp" "${imp_cmd[@]}"
done
for p in fp32 bf16 int8; do
  read -r w c m < "$tmp/first-$p"
  echo "gclip classify --precision $p, first run (converts, writes the cache): $w ms wall, $c ms CPU, $(( m / 1024 )) MB"
done
printf '%-40s %-20s %-20s %s\n' "whole process, $runs runs" "wall ms" "CPU ms (user+sys)" "peak RSS MB"
for t in gclip:"gclip classify" gclip-bf16:"gclip classify --precision bf16" \
  gclip-int8:"gclip classify --precision int8" py:"python tutorial script" \
  imp:"python: import torch+transformers"; do
  f="$tmp/${t%%:*}"
  printf '%-40s %s  %s  %6d\n' "${t#*:}" "$(stat 1 "$f")" "$(stat 2 "$f")" \
    "$(( $(cut -d' ' -f3 "$f" | sort -n | sed -n "$(( (runs + 1) / 2 ))p") / 1024 ))"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "gclip library, warm:"
"$target/release/examples/classify_latency" "$model" "$image" --runs "$warm"
echo "python tutorial code, warm:"
"$py" "$root/tools/bench_classify.py" "$model" "$image" --warm "$warm" 2>&1 >/dev/null
