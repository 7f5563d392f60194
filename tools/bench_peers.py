#!/usr/bin/env python3
"""The CPU engines a user could pick instead of gclip, on one random CLIP, in one process:

    tools/.venv/bin/python tools/bench_peers.py --arch ViT-B-32 --threads 2 --seconds 3 --json

Engines (--engines, comma-separated; default all):
  torch        PyTorch fp32 (transformers CLIPModel, eval, no_grad)
  torch-bf16   PyTorch with torch.autocast("cpu", dtype=torch.bfloat16)
  ort          ONNX Runtime fp32 on the model exported with torch.onnx.export
  ort-int8     ONNX Runtime on onnxruntime.quantization.quantize_dynamic(QInt8) of that export
  ov           OpenVINO fp32 (INFERENCE_PRECISION_HINT f32) on the same export
  ov-bf16      OpenVINO with INFERENCE_PRECISION_HINT bf16

Configurations: image tower at batch 1 and 32; text tower at batch 1 and 32 with 16 and 77
tokens (token ids random, EOT, the largest id, last: the argmax pooling of openai's configs).
Each is warmed up, then run for --seconds; items/s = batch × calls / elapsed. Every engine's
outputs are compared with PyTorch fp32's on the same inputs: "min_cosine" is the smallest
cosine between corresponding embeddings (1.0 = identical directions).

The weights are random (seeded); the same tensors are written with --save DIR (config.json +
model.safetensors, transformers layout) so gclip can be measured on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

VOCAB, CONTEXT, EOT = 49408, 77, 49407


def build(arch: str, seed: int):
    from transformers import CLIPConfig, CLIPModel

    sizes = {
        "ViT-B-32": (768, 12, 12, 32, 512, 12, 8, 512),
        "ViT-B-16": (768, 12, 12, 16, 512, 12, 8, 512),
        "ViT-L-14": (1024, 24, 16, 14, 768, 12, 12, 768),
    }
    vw, vl, vh, patch, tw, tl, th, embed = sizes[arch]
    text = dict(vocab_size=VOCAB, hidden_size=tw, intermediate_size=4 * tw,
                num_hidden_layers=tl, num_attention_heads=th, max_position_embeddings=CONTEXT,
                hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=embed,
                bos_token_id=0, eos_token_id=2, pad_token_id=1)
    vision = dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl,
                  num_attention_heads=vh, image_size=224, patch_size=patch, num_channels=3,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=embed)
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)
    return CLIPModel(cfg).float().eval()


class ImageTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model.get_image_features(pixel_values=pixel_values)
        return out if torch.is_tensor(out) else out.pooler_output


class TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model.get_text_features(input_ids=input_ids)
        return out if torch.is_tensor(out) else out.pooler_output


def inputs(tower: str, batch: int, tokens: int | None, rng):
    if tower == "image":
        return rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
    ids = rng.integers(1, EOT - 1, size=(batch, tokens), dtype=np.int64)
    ids[:, 0] = EOT - 1
    ids[:, -1] = EOT
    return ids


def export_onnx(module, example: np.ndarray, path: str, name: str, dynamic_tokens: bool):
    axes = {0: "batch"}
    if dynamic_tokens:
        axes[1] = "tokens"
    args = (torch.from_numpy(example),)
    try:
        torch.onnx.export(module, args, path, input_names=[name], output_names=["embeds"],
                          dynamic_axes={name: axes, "embeds": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    except TypeError:
        # Exporters without the `dynamo` switch are the TorchScript one already.
        torch.onnx.export(module, args, path, input_names=[name], output_names=["embeds"],
                          dynamic_axes={name: axes, "embeds": {0: "batch"}}, opset_version=17)


def timed(fn, x, batch: int, seconds: float):
    for _ in range(2):
        fn(x)
    calls, start = 0, time.perf_counter()
    while True:
        fn(x)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return batch * calls / elapsed


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--engines", default="torch,torch-bf16,ort,ort-int8,ov,ov-bf16")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--tokens", default="16,77")
    ap.add_argument("--towers", default="image,text")
    ap.add_argument("--save", help="write the weights here (transformers layout) for gclip")
    ap.add_argument("--seed", type=int, default=6006)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    engines = args.engines.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    token_lengths = [int(t) for t in args.tokens.split(",")]
    model = build(args.arch, args.seed)
    if args.save:
        model.save_pretrained(args.save, safe_serialization=True)
    towers = {"image": ImageTower(model).eval(), "text": TextTower(model).eval()}
    rng = np.random.default_rng(args.seed)
    work = tempfile.mkdtemp(prefix="gclip-peers-")

    sessions = {}
    for tower in args.towers.split(","):
        name = "pixel_values" if tower == "image" else "input_ids"
        example = inputs(tower, 2, 16 if tower == "text" else None, rng)
        onnx_path = os.path.join(work, f"{tower}.onnx")
        if any(e.startswith(("ort", "ov")) for e in engines):
            export_onnx(towers[tower], example, onnx_path, name, tower == "text")
        if "ort" in engines or "ort-int8" in engines:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            if "ort" in engines:
                sessions[("ort", tower)] = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
            if "ort-int8" in engines:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                q_path = os.path.join(work, f"{tower}.int8.onnx")
                quantize_dynamic(onnx_path, q_path, weight_type=QuantType.QInt8)
                sessions[("ort-int8", tower)] = ort.InferenceSession(q_path, so, providers=["CPUExecutionProvider"])
        for engine, hint in (("ov", "f32"), ("ov-bf16", "bf16")):
            if engine in engines:
                import openvino as ov

                core = ov.Core()
                compiled = core.compile_model(core.read_model(onnx_path), "CPU", {
                    "INFERENCE_NUM_THREADS": args.threads,
                    "INFERENCE_PRECISION_HINT": hint,
                    "PERFORMANCE_HINT": "LATENCY",
                })
                sessions[(engine, tower)] = compiled

    def runner(engine: str, tower: str):
        module = towers[tower]
        name = "pixel_values" if tower == "image" else "input_ids"
        if engine == "torch":
            def run(x):
                with torch.no_grad():
                    return module(torch.from_numpy(x)).numpy()
            return run
        if engine == "torch-bf16":
            def run(x):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return module(torch.from_numpy(x)).float().numpy()
            return run
        s = sessions[(engine, tower)]
        if engine.startswith("ort"):
            return lambda x: s.run(None, {name: x})[0]
        request = s.create_infer_request()
        return lambda x: request.infer({0: x})[0].copy()

    threads = args.threads
    for tower in args.towers.split(","):
        configs = [(b, None) for b in batches] if tower == "image" else [
            (b, t) for t in token_lengths for b in batches]
        for batch, tokens in configs:
            x = inputs(tower, batch, tokens, rng)
            reference = runner("torch", tower)(x)
            for engine in engines:
                fn = runner(engine, tower)
                cos = min_cosine(fn(x), reference)
                rate = timed(fn, x, batch, args.seconds)
                row = dict(impl=engine, arch=args.arch, tower=tower, batch=batch, tokens=tokens,
                           threads=threads, items_per_s=rate, min_cosine=cos)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"{engine:<11} {tower:<5} batch {batch:>3} tokens {tokens or '-':>3}: "
                          f"{rate:8.1f} items/s, min cosine to torch fp32 {cos:.6f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
