#!/usr/bin/env bash
# Side-by-side throughput of gclip and PyTorch (transformers CLIPModel, fp32) for one
# architecture, in one sitting: the two alternate ROUNDS times and the best round of each
# configuration is kept, so a burst of load from other processes penalises neither side alone.
# Usage: tools/bench_engine.sh [ARCH] [ROUNDS] [SECONDS]   (needs the reference venv, see
# tools/setup_ref_env.sh; PYTHON overrides its interpreter, GCLIP the gclip binary)
set -euo pipefail
arch="${1:-ViT-B-32}"; rounds="${2:-3}"; secs="${3:-3}"
# GCLIP=path/to/gclip uses an existing release binary instead of building one.
source "$(dirname "$0")/bench_common.sh"
out="$(mktemp -d)"
for r in $(seq "$rounds"); do
  "$gclip" bench --arch "$arch" --seconds "$secs" --json >> "$out/gclip.jsonl"
  "$py" "$root/tools/bench_torch.py" --arch "$arch" --threads "$threads" --seconds "$secs" --json 2>/dev/null | grep '^{' >> "$out/torch.jsonl"
done
"$py" - "$out" "$arch" "$threads" <<'PY'
import json, sys, collections
out, arch, threads = sys.argv[1], sys.argv[2], sys.argv[3]
best = collections.defaultdict(dict)
for impl in ("gclip", "torch"):
    for line in open(f"{out}/{impl}.jsonl"):
        d = json.loads(line)
        key = (d["tower"], d["batch"], d["tokens"])
        best[key][impl] = max(best[key].get(impl, 0.0), d["items_per_s"])
print(f"{arch} fp32, {threads} threads, best of the rounds, items/s")
print(f"| tower | batch | tokens | gclip | PyTorch | gclip / PyTorch |")
print(f"|---|---|---|---|---|---|")
for (tower, batch, tokens), v in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][2] or 0, kv[0][1])):
    g, t = v.get("gclip", 0), v.get("torch", 0)
    ratio = f"{g / t:.2f}" if t else "-"
    print(f"| {tower} | {batch} | {tokens if tokens else '-'} | {g:.1f} | {t:.1f} | {ratio} |")
PY
