#!/usr/bin/env bash
# Training throughput and peak memory of gclip next to open_clip, in one sitting: for each of
# ROUNDS rounds, every configuration runs once as its own process (gclip bench-train and
# tools/bench_train_torch.py alternating), and each keeps its best round's samples/s and its
# largest peak resident set. Prints the CPU (lscpu) and a markdown table with ratios to
# open_clip fp32 and to open_clip amp_bf16.
# Usage: tools/bench_train.sh [ARCH] [BATCH] [STEPS] [ROUNDS]
#   PYTHON: interpreter of the reference venv (tools/setup_ref_env.sh), GCLIP: a gclip binary,
#   CONFIGS: which rows to run (default all), e.g. "gclip:fp32 gclip:bf16:ckpt torch:amp_bf16";
#   gclip:bf16:ckpt=0.5 checkpoints half of each tower's blocks (--checkpoint-share 0.5);
#   gclip:bf16:kept=bf16 keeps the blocks' activations in bf16 (--kept-activations bf16), and
#   options combine: gclip:bf16:ckpt=0.1:kept=bf16.
set -euo pipefail
arch="${1:-ViT-B-32}"; batch="${2:-64}"; steps="${3:-2}"; rounds="${4:-1}"
# GCLIP=path/to/gclip uses an existing release binary instead of building one.
source "$(dirname "$0")/bench_common.sh"
configs="${CONFIGS:-gclip:fp32 gclip:fp32:ckpt gclip:bf16 gclip:bf16:ckpt torch:fp32 torch:fp32:ckpt torch:amp_bf16 torch:amp_bf16:ckpt}"
out="$(mktemp -d)"
lscpu | grep -E '^(Model name|CPU family|Model):' | sed 's/  */ /g'
grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
echo "started $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
  for c in $configs; do
    IFS=: read -r impl precision rest <<< "$c"
    # ckpt=SHARE: gclip checkpoints that share of each tower's blocks (--checkpoint-share).
    ckpt=""; share=""; kept=""
    IFS=: read -ra options <<< "$rest"
    for o in "${options[@]}"; do
      case "$o" in
        ckpt) ckpt=1 ;;
        ckpt=*) ckpt=1; share="${o#ckpt=}" ;;
        kept=*) kept="${o#kept=}" ;;
        *) echo "unknown option '$o' in configuration $c" >&2; exit 2 ;;
      esac
    done
    if [ "$impl" = gclip ]; then
      "$gclip" --threads "$threads" bench-train --arch "$arch" --batch "$batch" --steps "$steps" \
        --tokens 77 --precision "$precision" ${ckpt:+--activation-checkpointing} \
        ${share:+--checkpoint-share "$share"} ${kept:+--kept-activations "$kept"} --json \
        | tail -n 1 | sed "s/^{/{\"config\":\"$c\",/" >> "$out/runs.jsonl"
    else
      "$py" "$root/tools/bench_train_torch.py" --arch "$arch" --batch "$batch" --steps "$steps" \
        --threads "$threads" --precision "$precision" ${ckpt:+--grad-checkpointing} \
        | tail -n 1 | sed "s/^{/{\"config\":\"$c\",/" >> "$out/runs.jsonl"
    fi
    echo "  round $r $c done $(date -u +%H:%M:%S)" >&2
  done
done
echo "ended $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$out/runs.jsonl" "$arch" "$batch" "$threads" "$rounds" <<'PY'
import json, sys
path, arch, batch, threads, rounds = sys.argv[1:]
best = {}
for line in open(path):
    d = json.loads(line)
    c = d["config"]
    sps, rss = d["samples_per_s"], d.get("peak_rss_mib") or 0
    b = best.setdefault(c, {"sps": 0.0, "rss": 0.0, "all": []})
    b["sps"] = max(b["sps"], sps)
    b["rss"] = max(b["rss"], rss)
    b["all"].append(sps)
names = {"fp32": "fp32", "bf16": "bf16", "amp_bf16": "amp_bf16"}
def label(c):
    impl, precision, *options = c.split(":")
    text = ("gclip" if impl == "gclip" else "open_clip") + " " + precision
    for o in options:
        name, _, value = o.partition("=")
        if name == "ckpt":
            text += " + checkpointing" + (f" of {value} of the blocks" if value else "")
        elif name == "kept":
            text += f", activations kept in {value}"
    return text
ref = best.get("torch:fp32")
amp = best.get("torch:amp_bf16")
print(f"\n{arch}, batch {batch}, 77 tokens, {threads} threads, best of {rounds} round(s)\n")
print("| configuration | samples/s (each round) | peak RSS MiB | × open_clip fp32 speed | × open_clip amp_bf16 speed | RSS ÷ open_clip fp32 |")
print("| --- | --- | --- | --- | --- | --- |")
for c, b in best.items():
    rounds_txt = " / ".join(f"{s:.2f}" for s in b["all"])
    r1 = f"{b['sps'] / ref['sps']:.2f}" if ref else "-"
    r2 = f"{b['sps'] / amp['sps']:.2f}" if amp else "-"
    r3 = f"{b['rss'] / ref['rss']:.0%}" if ref and ref["rss"] else "-"
    print(f"| {label(c)} | **{b['sps']:.2f}** ({rounds_txt}) | {b['rss']:,.0f} | {r1} | {r2} | {r3} |")
PY
