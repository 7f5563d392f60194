#!/usr/bin/env python3
"""Check models exported by `gclip export` from Python: transformers and open_clip load them and
give the embeddings gclip gives (run by hand; CI has no Python).

    tools/check_export.py --gclip target/release/gclip --hf EXPORT_HF --open-clip EXPORT_OC \
        --images DIR_OF_PNGS

For each export: embeds a few captions and the images with gclip (`gclip embed`) and with the
reference library (transformers CLIPModel + CLIPProcessor for the Hugging Face layout;
open_clip.create_model with the exported model_cfg + load_checkpoint and open_clip's transform
for open_clip's layout), then reports the largest absolute difference of the L2-normalised
embeddings and fails above --tol.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CAPTIONS = ["a red apple", "grinning face with big eyes", "two dogs playing in the snow", "x"]


def gclip_embed(gclip, model, what, items):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "e.npy"
        subprocess.run([gclip, "embed", what, "--model", str(model), *items, "--output", str(out)],
                       check=True, capture_output=True)
        return np.load(out)


def normalize(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def check_hf(gclip, d, images):
    from transformers import CLIPModel, CLIPProcessor
    model = CLIPModel.from_pretrained(d).eval()
    proc = CLIPProcessor.from_pretrained(d)
    with torch.no_grad():
        t = proc.tokenizer(CAPTIONS, padding="max_length", max_length=model.config.text_config.max_position_embeddings,
                           truncation=True, return_tensors="pt")
        ref_t = model.get_text_features(input_ids=t["input_ids"])
        px = proc.image_processor([Image.open(p) for p in images], return_tensors="pt")["pixel_values"]
        ref_i = model.get_image_features(pixel_values=px)
    ref_t = getattr(ref_t, "pooler_output", ref_t)
    ref_i = getattr(ref_i, "pooler_output", ref_i)
    got_t = gclip_embed(gclip, d, "text", CAPTIONS)
    got_i = gclip_embed(gclip, d, "image", [str(p) for p in images])
    return (np.abs(normalize(ref_t.numpy()) - normalize(got_t)).max(),
            np.abs(normalize(ref_i.numpy()) - normalize(got_i)).max())


def check_open_clip(gclip, d, images):
    import open_clip
    cfg = json.loads((Path(d) / "open_clip_config.json").read_text())
    open_clip.factory._MODEL_CONFIGS["gclip-export"] = cfg["model_cfg"]
    model, _, preprocess = open_clip.create_model_and_transforms(
        "gclip-export", pretrained=str(Path(d) / "open_clip_model.safetensors"),
        image_mean=cfg["preprocess_cfg"]["mean"], image_std=cfg["preprocess_cfg"]["std"])
    model.eval()
    tok = open_clip.get_tokenizer("gclip-export")
    with torch.no_grad():
        ref_t = model.encode_text(tok(CAPTIONS))
        ref_i = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in images]))
    got_t = gclip_embed(gclip, d, "text", CAPTIONS)
    got_i = gclip_embed(gclip, d, "image", [str(p) for p in images])
    return (np.abs(normalize(ref_t.numpy()) - normalize(got_t)).max(),
            np.abs(normalize(ref_i.numpy()) - normalize(got_i)).max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gclip", required=True)
    ap.add_argument("--hf")
    ap.add_argument("--open-clip")
    ap.add_argument("--images", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    images = sorted(Path(a.images).glob("*.png"))[:8]
    worst = 0.0
    for name, d, fn in [("transformers", a.hf, check_hf), ("open_clip", a.open_clip, check_open_clip)]:
        if d:
            dt, di = fn(a.gclip, d, images)
            print(f"{name}: {d}: max |Δ| text {dt:.2e}, image {di:.2e} ({len(images)} images)")
            worst = max(worst, dt, di)
    if worst > a.tol:
        sys.exit(f"embeddings differ by {worst:.2e} > {a.tol}")
    print("ok")


if __name__ == "__main__":
    main()
