#!/usr/bin/env python3
"""How close int8 can get to fp32 on one model, outside gclip:

    tools/.venv/bin/python tools/int8_fidelity_peers.py --model /tmp/vitb32 \
        --rounded /tmp/vitb32-rounded tests/fixtures/images/*.jpg ...

1. ONNX Runtime's `quantize_dynamic` (QInt8 weights, per tensor and per channel) of the image
   tower exported with `torch.onnx.export`: min cosine to PyTorch fp32 on the given images
   (preprocessed by transformers' CLIPImageProcessor with openai's defaults).
2. With --rounded DIR: a copy of the model whose attention-output and MLP weights are rounded
   as gclip's int8 packs them (per output channel, symmetric, max|w| / 127, ties to even), all
   else untouched. Embedding both models in fp32 with gclip (`gclip embed image`) then
   measures the cost of the weight rounding alone, a floor for any int8 activation scheme.

--model is a transformers CLIP directory (config.json + model.safetensors).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import ImageTower, export_onnx, min_cosine  # noqa: E402

ROUNDED_LAYERS = ("self_attn.out_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")


def round_weights(model_dir: str, out_dir: str) -> int:
    from safetensors.numpy import load_file, save_file

    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    rounded = 0
    for name, w in weights.items():
        if w.ndim == 2 and name.endswith(ROUNDED_LAYERS):
            scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            weights[name] = (np.clip(np.rint(w / scale), -127, 127) * scale).astype(np.float32)
            rounded += 1
    os.makedirs(out_dir, exist_ok=True)
    save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    for f in os.listdir(model_dir):
        if f != "model.safetensors" and os.path.isfile(os.path.join(model_dir, f)):
            shutil.copy(os.path.join(model_dir, f), os.path.join(out_dir, f))
    return rounded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounded", help="write the weight-rounded copy of the model here")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel

    tower = ImageTower(CLIPModel.from_pretrained(args.model).float().eval())
    pixels = CLIPImageProcessor()(
        images=[Image.open(p).convert("RGB") for p in args.images], return_tensors="np"
    )["pixel_values"].astype(np.float32)
    with torch.no_grad():
        reference = tower(torch.from_numpy(pixels)).numpy()
    tmp = tempfile.mkdtemp()
    try:
        exported = os.path.join(tmp, "image.onnx")
        export_onnx(tower, pixels[:1], exported, "pixel_values", False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        for per_channel in (False, True):
            quantized = os.path.join(tmp, f"image-int8-{per_channel}.onnx")
            quantize_dynamic(exported, quantized, weight_type=QuantType.QInt8,
                             per_channel=per_channel)
            session = ort.InferenceSession(quantized, options,
                                           providers=["CPUExecutionProvider"])
            out = np.concatenate([session.run(None, {"pixel_values": pixels[i:i + 16]})[0]
                                  for i in range(0, len(pixels), 16)])
            print(f"onnxruntime int8 (per_channel={per_channel}): {len(pixels)} images, "
                  f"min cosine to torch fp32 {min_cosine(reference, out):.6f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.rounded:
        n = round_weights(args.model, args.rounded)
        print(f"wrote {args.rounded}: {n} weights rounded to int8 per output channel")


if __name__ == "__main__":
    main()
