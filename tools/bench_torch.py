#!/usr/bin/env python3
"""PyTorch side of the gclip benchmark: CPU fp32 throughput of a random CLIP.

    tools/.venv/bin/python tools/bench_torch.py --arch ViT-B-32 --threads 2 --seconds 3 --json

Builds a randomly initialised CLIP of the named architecture (weights do not matter
for speed) with transformers' CLIPModel (default) or open_clip's CLIP (--open-clip),
and reports:
  * images/s of the image tower (get_image_features / encode_image) at batch 1, 8, 32
  * texts/s of the text tower (get_text_features / encode_text) at batch 1, 8, 32 for
    sequence lengths 16 and 77. For transformers, input_ids has shape [B, L] (what the
    tokenizer's padding="longest" gives). open_clip's text tower only accepts the full
    context (77) -- its positional embedding and causal mask are fixed at 77 -- so with
    --open-clip only L=77 is timed.
Token ids are random with the EOT id (49407, the largest) at position L-1.

Each configuration is warmed up (>= --warmup calls and >= 0.5 s), then run repeatedly until at least
--seconds have elapsed; items/s = batch * calls / elapsed. The "median" column (JSON
"median_items_per_s") is batch / median call time, to spot stalls on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ARCHS = {
    # name: (vision width, layers, heads, patch, image size, text width, layers, heads, embed dim)
    "ViT-B-32": dict(v_width=768, v_layers=12, v_heads=12, patch=32, image_size=224,
                     t_width=512, t_layers=12, t_heads=8, embed=512),
    "ViT-B-16": dict(v_width=768, v_layers=12, v_heads=12, patch=16, image_size=224,
                     t_width=512, t_layers=12, t_heads=8, embed=512),
    "ViT-L-14": dict(v_width=1024, v_layers=24, v_heads=16, patch=14, image_size=224,
                     t_width=768, t_layers=12, t_heads=12, embed=768),
}
VOCAB = 49408
CONTEXT = 77
SOT, EOT = 49406, 49407


def build_transformers(arch: str):
    from transformers import CLIPConfig, CLIPModel

    a = ARCHS[arch]
    # The openai/clip-vit-* configs: quick_gelu, mlp = 4 * width, eos_token_id 2 (argmax pooling).
    text = dict(vocab_size=VOCAB, hidden_size=a["t_width"], intermediate_size=4 * a["t_width"],
                num_hidden_layers=a["t_layers"], num_attention_heads=a["t_heads"],
                max_position_embeddings=CONTEXT, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                projection_dim=a["embed"], bos_token_id=0, eos_token_id=2, pad_token_id=1)
    vision = dict(hidden_size=a["v_width"], intermediate_size=4 * a["v_width"],
                  num_hidden_layers=a["v_layers"], num_attention_heads=a["v_heads"],
                  image_size=a["image_size"], patch_size=a["patch"], num_channels=3,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=a["embed"])
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=a["embed"])
    model = CLIPModel(cfg).float().eval()

    def pooled(x):
        return x if torch.is_tensor(x) else x.pooler_output

    def image_fn(px):
        return pooled(model.get_image_features(pixel_values=px))

    def text_fn(ids):
        return pooled(model.get_text_features(input_ids=ids))

    return model, image_fn, text_fn


def build_open_clip(arch: str):
    import open_clip

    model = open_clip.create_model(f"{arch}-quickgelu", pretrained=None).float().eval()

    def image_fn(px):
        return model.encode_image(px)

    def text_fn(ids):
        return model.encode_text(ids)

    return model, image_fn, text_fn


def random_ids(batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    ids = torch.randint(1, SOT, (batch, length), generator=gen)
    ids[:, 0] = SOT
    ids[:, length - 1] = EOT
    return ids


def time_fn(fn, arg, seconds: float, warmup: int) -> list[float]:
    """Per-call wall times of consecutive calls, until their sum reaches `seconds`."""
    # warm up: at least `warmup` calls and at least 0.5 s (first calls of a new shape
    # pay for allocator growth and kernel selection)
    t_end = time.perf_counter() + 0.5
    done = 0
    while done < warmup or time.perf_counter() < t_end:
        fn(arg)
        done += 1
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn(arg)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 - start >= seconds:
            return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-32", choices=sorted(ARCHS))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per config")
    ap.add_argument("--warmup", type=int, default=2, help="minimum untimed warm-up calls per config (also >= 0.5 s)")
    ap.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    ap.add_argument("--lengths", default="16,77", help="comma-separated text lengths")
    ap.add_argument("--towers", default="image,text", help="which towers to time")
    ap.add_argument("--open-clip", action="store_true", help="time open_clip's CLIP instead of transformers'")
    ap.add_argument("--json", action="store_true", help="also print one JSON object per result line")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",") if b]
    lengths = [int(x) for x in args.lengths.split(",") if x]
    towers = [t for t in args.towers.split(",") if t]
    impl_lib = "open_clip" if args.open_clip else "transformers"

    with torch.inference_mode():
        model, image_fn, text_fn = (build_open_clip if args.open_clip else build_transformers)(args.arch)
        n_params = sum(p.numel() for p in model.parameters())
        a = ARCHS[args.arch]
        attn = getattr(getattr(model, "config", None), "_attn_implementation", "nn.MultiheadAttention")
        print(f"# torch {torch.__version__}, {impl_lib}, {args.arch} ({n_params / 1e6:.1f}M params), fp32, "
              f"attention={attn}, threads={torch.get_num_threads()}, >= {args.seconds:g}s per config",
              flush=True)
        print(f"{'tower':<6} {'batch':>5} {'tokens':>6} {'iters':>6} {'seconds':>8} {'items/s':>10} "
              f"{'median':>10}", flush=True)

        gen = torch.Generator().manual_seed(0)
        results = []

        def report(tower, batch, tokens, times):
            iters, elapsed = len(times), sum(times)
            ips = batch * iters / elapsed  # the reported figure: all timed calls
            med = batch / statistics.median(times)  # diagnostic: robust to stalls
            print(f"{tower:<6} {batch:>5} {tokens if tokens is not None else '-':>6} {iters:>6} "
                  f"{elapsed:>8.2f} {ips:>10.2f} {med:>10.2f}", flush=True)
            rec = {"impl": "torch", "arch": args.arch, "tower": tower, "batch": batch,
                   "tokens": tokens, "items_per_s": round(ips, 3),
                   "median_items_per_s": round(med, 3)}
            if args.open_clip:
                rec["lib"] = "open_clip"
            results.append(rec)

        if "image" in towers:
            for b in batches:
                px = torch.randn((b, 3, a["image_size"], a["image_size"]), generator=gen)
                report("image", b, None, time_fn(image_fn, px, args.seconds, args.warmup))
        if "text" in towers:
            for length in lengths:
                if args.open_clip and length != CONTEXT:
                    print(f"# open_clip: skipping text length {length} (encode_text needs {CONTEXT} columns)",
                          flush=True)
                    continue
                for b in batches:
                    ids = random_ids(b, length, gen)
                    report("text", b, length, time_fn(text_fn, ids, args.seconds, args.warmup))

    if args.json:
        for rec in results:
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    sys.exit(main())
