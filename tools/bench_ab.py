#!/usr/bin/env python3
"""Compares gclip binaries on this noisy kind of machine: runs `gclip bench ARGS --json` for each
binary in turn, ROUNDS times (A B A B ...), and prints per configuration the median and the
range of items/s of each binary and the ratio of the medians to the first binary's.

A single pair of runs misleads on the shared 2-core VMs: a neighbour's load moves one binary's
throughput by 20-30 % from one minute to the next, so only interleaved rounds compare builds.

    tools/bench_ab.py --rounds 5 /tmp/gclip-old target/release/gclip -- \
        --threads 2 bench --arch ViT-B-32 --batch 32 --tokens 16,77 --precision bf16 --seconds 2
"""
import argparse
import collections
import json
import statistics
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("binaries", nargs="+", help="gclip binaries; then -- and the gclip arguments")
    argv = sys.argv[1:]
    if "--" not in argv:
        ap.error("give the gclip arguments after --")
    split = argv.index("--")
    args = ap.parse_args(argv[:split])
    gclip_args = argv[split + 1:]
    if "bench" not in gclip_args:
        ap.error("the gclip arguments must run `bench`")
    results = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in range(args.rounds):
        for binary in args.binaries:
            out = subprocess.run([binary, *gclip_args, "--json"], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{binary} failed: {out.stderr.strip()}", file=sys.stderr)
                return 1
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    d = json.loads(line)
                    key = (d["tower"], d["batch"], d.get("tokens") or "-", d["precision"])
                    results[key][binary].append(d["items_per_s"])
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
    base = args.binaries[0]
    head = "| tower | batch | tokens | precision | " + " | ".join(
        f"{b} median (min-max)" for b in args.binaries) + " | " + " | ".join(
        f"{b} / {base}" for b in args.binaries[1:]) + " |"
    print(head)
    print("|---" * (4 + 2 * len(args.binaries) - 1) + "|")
    for key, per_bin in sorted(results.items(), key=lambda kv: str(kv[0])):
        med = {b: statistics.median(v) for b, v in per_bin.items()}
        cells = [f"{med[b]:.1f} ({min(per_bin[b]):.1f}-{max(per_bin[b]):.1f})" for b in args.binaries]
        ratios = [f"{med[b] / med[base]:.3f}" for b in args.binaries[1:]]
        print("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells + ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
