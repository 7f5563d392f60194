#!/usr/bin/env bash
# gclip fp32/bf16/int8 next to every peer engine (tools/bench_peers.py: PyTorch fp32 and bf16
# autocast, ONNX Runtime fp32 and dynamic int8, OpenVINO fp32 and bf16), one architecture, in
# one sitting: gclip and the peers alternate ROUNDS times and each keeps its best round per
# configuration. Prints the CPU (lscpu) and a markdown table of items/s with ratios.
# Usage: tools/bench_precision.sh [ARCH] [ROUNDS] [SECONDS]
#   PYTHON: interpreter of the reference venv (tools/setup_ref_env.sh), GCLIP: a gclip binary.
set -euo pipefail
arch="${1:-ViT-B-32}"; rounds="${2:-2}"; secs="${3:-3}"
# GCLIP=path/to/gclip uses an existing release binary instead of building one.
source "$(dirname "$0")/bench_common.sh"
out="$(mktemp -d)"
lscpu | grep -E '^(Model name|CPU family|Model):' | sed 's/  */ /g'
grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for r in $(seq "$rounds"); do
  "$gclip" bench --arch "$arch" --batch 1,32 --tokens 16,77 --seconds "$secs" \
    --precision fp32,bf16,int8 --json >> "$out/gclip.jsonl"
  "$py" "$root/tools/bench_peers.py" --arch "$arch" --threads "$threads" --seconds "$secs" \
    --json 2>/dev/null | grep '^{' >> "$out/peers.jsonl"
done
"$py" - "$out" "$arch" "$threads" <<'PY'
import json, sys, collections
out, arch, threads = sys.argv[1], sys.argv[2], sys.argv[3]
best = collections.defaultdict(dict)
kernels = {}
for f in ("gclip", "peers"):
    for line in open(f"{out}/{f}.jsonl"):
        d = json.loads(line)
        name = f"gclip-{d['precision']}" if f == "gclip" else d["impl"]
        if f == "gclip":
            kernels[name] = d.get("kernels", "")
        key = (d["tower"], d["batch"], d["tokens"])
        best[key][name] = max(best[key].get(name, 0.0), d["items_per_s"])
cols = ["gclip-fp32", "gclip-bf16", "gclip-int8", "torch", "torch-bf16", "ort", "ort-int8", "ov", "ov-bf16"]
print(f"{arch}, {threads} threads, best of the rounds, items/s; gclip kernels: " +
      ", ".join(f"{k}: {v}" for k, v in kernels.items()))
print("| tower | batch | tokens | " + " | ".join(cols) + " | fp32 / best fp32 peer | bf16 / best bf16 peer | int8 / ort-int8 |")
print("|---" * (len(cols) + 6) + "|")
for (tower, batch, tokens), v in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][2] or 0, kv[0][1])):
    cells = [f"{v.get(c, 0):.1f}" for c in cols]
    peer_fp32 = max(v.get("torch", 0), v.get("ort", 0), v.get("ov", 0))
    r0 = f"{v.get('gclip-fp32', 0) / peer_fp32:.2f}" if peer_fp32 else "-"
    peer_bf16 = max(v.get("torch-bf16", 0), v.get("ov-bf16", 0))
    r1 = f"{v.get('gclip-bf16', 0) / peer_bf16:.2f}" if peer_bf16 else "-"
    r2 = f"{v.get('gclip-int8', 0) / v['ort-int8']:.2f}" if v.get("ort-int8") else "-"
    print(f"| {tower} | {batch} | {tokens or '-'} | " + " | ".join(cells) + f" | {r0} | {r1} | {r2} |")
PY
