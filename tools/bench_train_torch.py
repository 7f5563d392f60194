#!/usr/bin/env python3
"""PyTorch side of the training benchmark: open_clip's training step on CPU.

    tools/.venv/bin/python tools/bench_train_torch.py --arch ViT-B-32 --batch 64 --steps 3 --threads 2

A randomly initialised open_clip CLIP (or an open_clip config JSON via --config), AdamW with
open_clip's two parameter groups (lr 1e-5, betas 0.9/0.98, eps 1e-6, wd 0.2), ClipLoss; each
step: zero_grad, forward, loss, backward, step, logit-scale clamp (open_clip_train's
train_one_epoch). --precision amp_bf16 runs forward and loss under
torch.autocast("cpu", dtype=torch.bfloat16), as open_clip_train's `--precision amp_bf16` does;
--grad-checkpointing calls model.set_grad_checkpointing(True), as its `--grad-checkpointing`
does (torch.utils.checkpoint per residual block). Random pixels, random token ids with the end token at --tokens-1
(open_clip's text tower always computes all 77 positions). One untimed warm-up step. Prints one
JSON line: samples/s and the process's peak resident memory (ru_maxrss).
"""

import argparse
import contextlib
import json
import math
import resource
import time

import torch
import open_clip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--config")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--precision", choices=["fp32", "amp_bf16"], default="fp32")
    ap.add_argument("--grad-checkpointing", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    name = a.arch
    if a.config:
        name = "bench-config"
        open_clip.factory._MODEL_CONFIGS[name] = json.load(open(a.config))
    model = open_clip.create_model(name)
    model.train()
    if a.grad_checkpointing:
        model.set_grad_checkpointing(True)
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16))
                if a.precision == "amp_bf16" else contextlib.nullcontext)
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(a.batch, 3, size, size)
    ctx = model.context_length
    text = torch.zeros(a.batch, ctx, dtype=torch.long)
    text[:, 0] = 49406
    text[:, 1:a.tokens - 1] = torch.randint(1, 49000, (a.batch, a.tokens - 2))
    text[:, a.tokens - 1] = 49407
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        with autocast():
            out = model(images, text)
            if isinstance(out, dict):
                img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
            else:
                img, txt, scale = out[:3]
            loss = loss_fn(img, txt, scale)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        dt = time.perf_counter() - t0
        if i > 0:
            times.append(dt)
        print(f"step {i}: {dt:.2f} s, loss {loss.item():.4f}", flush=True)
    total = sum(times)
    print(json.dumps({"impl": "open_clip (PyTorch)", "arch": a.config or a.arch, "batch": a.batch,
                      "tokens": a.tokens, "threads": a.threads, "steps": a.steps,
                      "precision": a.precision, "grad_checkpointing": a.grad_checkpointing,
                      "samples_per_s": round(a.batch * a.steps / total, 3),
                      "s_per_step": round(total / a.steps, 3),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main()
