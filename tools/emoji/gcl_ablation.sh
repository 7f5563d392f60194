#!/usr/bin/env bash
# The GCL paper's ablation on the emoji ranking task (docs/TRAINING.md, experiment 2b): four
# losses, the same model, data, batches and budget, several seeds, every run evaluated on GCL's
# four splits.
#
#   tools/emoji/gcl_ablation.sh [RUNS_DIR] [SEEDS] [JOBS]
#
# RUNS_DIR defaults to data/emoji/runs/ablation, SEEDS to "0 1 2", JOBS (runs at once, one thread
# each) to 2. Needs the emoji sets (python3 tools/emoji_data.py) and `gclip` on PATH (or GCLIP).
# Arms (every one on `tools/emoji/gcl.toml`: 500 steps of 128 pairs, `unique` batches):
#   clip-image   CLIP's loss on (query, image): every pair weighs 1, documents are images only
#   clip-fused   CLIP's loss on the fused document (image 0.9 + name 0.1)
#   gcl-image    GCL's weights (linear, floor 0.2) on (query, image)
#   gcl-fused    GCL's weights on the fused document: GCL as the paper runs it
#   clip-fused3, gcl-fused3   the same two on documents with a third field, `keywords` (the
#                emoji's emojilib keywords; sets gclkw-*), fields weighted equally: a field in
#                which a held-out query can be read (experiment 2c)
# ARMS (environment) picks the arms, default "clip-image clip-fused gcl-image gcl-fused".
# Writes RUNS_DIR/ARM-sSEED/ (the run) and RUNS_DIR/ARM-sSEED/eval-SPLIT.json, then prints a
# table of nDCG@10 and ERR per split, arm and seed, and the mean and spread over seeds.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
runs="${1:-$root/data/emoji/runs/ablation}"
seeds="${2:-0 1 2}"
jobs="${3:-2}"
gclip="${GCLIP:-gclip}"
arms="${ARMS:-clip-image clip-fused gcl-image gcl-fused}"
sets="$root/data/emoji/sets"
[ -e "$sets/gcl-train.jsonl" ] || { echo "no $sets/gcl-train.jsonl: run python3 tools/emoji_data.py first" >&2; exit 2; }
mkdir -p "$runs"

arm_args() {
  case "$1" in
    clip-*) printf '%s\n' --set 'loss.score_to_weight="none"' --set loss.mask_shared=false ;;
    gcl-*) printf '%s\n' --set loss.weight_floor=0.2 ;;
  esac
  case "$1" in
    *-image) printf '%s\n' --set 'loss.doc_fields=[{ name = "image", kind = "image", weight = 1.0 }]' ;;
    *-fused3) printf '%s\n' --set 'loss.doc_fields=[{ name = "image", kind = "image", weight = 1.0 }, { name = "name", kind = "text", weight = 1.0 }, { name = "keywords", kind = "text", weight = 1.0 }]' \
      --set "data.path=\"$sets/gclkw-train.jsonl\"" ;;
  esac
}

doc_fields() {
  case "$1" in
    *-image) echo image ;;
    *-fused3) echo image:1,name:1,keywords:1 ;;
    *) echo image:0.9,name:0.1 ;;
  esac
}

sets_prefix() {
  case "$1" in
    *-fused3) echo gclkw ;;
    *) echo gcl ;;
  esac
}

one_run() {
  local arm="$1" seed="$2" out="$runs/$1-s$2" prefix
  prefix="$(sets_prefix "$arm")"
  if [ ! -e "$out/done" ]; then
    mapfile -t extra < <(arm_args "$arm")
    "$gclip" train --config "$root/tools/emoji/gcl.toml" --threads 1 --seed "$seed" \
      --output "$out" "${extra[@]}" > "$out.log" 2>&1
    touch "$out/done"
  fi
  for split in in-domain:train novel-query:train novel-document:test zero-shot:test; do
    local s="${split%%:*}" c="${split##*:}"
    [ -e "$out/eval-$s.json" ] && continue
    "$gclip" eval ranking --threads 1 --model "$out" --data "$sets/$prefix-$s.jsonl" \
      --corpus "$sets/$prefix-corpus-$c.jsonl" --query-fields text --doc-fields "$(doc_fields "$arm")" \
      --json > "$out/eval-$s.json.tmp"
    mv "$out/eval-$s.json.tmp" "$out/eval-$s.json"
  done
  echo "$arm seed $seed done"
}
export -f one_run arm_args doc_fields sets_prefix
export runs sets gclip root

for seed in $seeds; do
  for arm in $arms; do
    echo "$arm $seed"
  done
done | xargs -P "$jobs" -L 1 bash -c 'one_run "$0" "$1"'

python3 - "$runs" "$arms" $seeds <<'EOF'
import json, statistics, sys
from pathlib import Path
runs, arms, seeds = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3:]
splits = ["in-domain", "novel-query", "novel-document", "zero-shot"]
sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
def scores(arm, split, metric):
    return [json.loads((runs / f"{arm}-s{s}" / f"eval-{split}.json").read_text())[metric] for s in seeds]
print("| split | arm | " + " | ".join(f"nDCG@10 s{s}" for s in seeds) + " | nDCG@10 mean ± sd | ERR mean ± sd |")
print("|---|---|" + "---|" * len(seeds) + "---|---|")
for split in splits:
    for arm in arms:
        nd, er = scores(arm, split, "ndcg@10"), scores(arm, split, "err")
        print(f"| {split} | {arm} | " + " | ".join(f"{v:.4f}" for v in nd)
              + f" | {statistics.mean(nd):.4f} ± {sd(nd):.4f} | {statistics.mean(er):.4f} ± {sd(er):.4f} |")
# GCL against CLIP with the same documents: the difference per seed (same seed, same batches).
pairs = [(g, "clip-" + g[4:]) for g in arms if g.startswith("gcl-") and "clip-" + g[4:] in arms]
if pairs:
    print()
    print("| split | GCL vs CLIP | nDCG@10 difference per seed | mean | relative to CLIP's mean |")
    print("|---|---|---|---|---|")
    for split in splits:
        for g, c in pairs:
            gv, cv = scores(g, split, "ndcg@10"), scores(c, split, "ndcg@10")
            d = [a - b for a, b in zip(gv, cv)]
            rel = statistics.mean(d) / statistics.mean(cv) * 100
            print(f"| {split} | {g} vs {c} | " + " ".join(f"{x:+.4f}" for x in d)
                  + f" | {statistics.mean(d):+.4f} | {rel:+.0f} % |")
EOF
