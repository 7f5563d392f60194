#!/usr/bin/env python3
"""Simulates int8 schemes for the q/k/v projections on a fixture model in PyTorch (fake
quantisation: values rounded to the scheme's grid, products in f32) and prints each scheme's
smallest cosine to fp32 over the fixture's reference texts and images. Every other block linear
(attention output, fc1, fc2) is int8 as gclip quantises it: activations per row (token),
weights per output channel, both symmetric, round half to even.

q/k/v schemes: bf16 (gclip's), int8 (per-row activations, per-channel weights), int8 with the
activations in groups of G values along each row (gG), each half alone: int8 activations with
bf16 weights (aq), bf16 activations with int8 weights (wq), and one projection in int8 with
the other two in bf16 (v8: v in int8, k8: k in int8).

    tools/.venv/bin/python tools/sim_int8_qkv.py hf-quickgelu [hf-gelu ...]

Needs the reference venv (tools/setup_ref_env.sh); never run by the tests.
"""
import sys
import types

import torch
from safetensors.torch import load_file
from transformers import CLIPModel

FIXTURES = "tests/fixtures/models"
SCHEMES = ["bf16", "int8", "g32", "g16", "aq", "wq", "v8", "k8"]


def bf16(x):
    return x.to(torch.bfloat16).to(torch.float32)


def int8_rows(x, group=None):
    """Symmetric int8 per row (per group of `group` values of each row)."""
    shape = x.shape
    if group:
        x = x.reshape(*shape[:-1], shape[-1] // group, group)
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
    return (torch.round(x / scale).clamp(-127, 127) * scale).reshape(shape)


def int8_weight(w):
    """Symmetric int8 per output channel of a `[out, in]` weight."""
    scale = w.abs().amax(1, keepdim=True).clamp_min(1e-30) / 127
    return torch.round(w / scale).clamp(-127, 127) * scale


def product(activation, weight):
    def forward(self, x):
        return torch.nn.functional.linear(activation(x), weight(self.weight), self.bias)

    return forward


def qkv_forward(scheme):
    if scheme == "bf16":
        return product(bf16, bf16)
    if scheme == "int8":
        return product(int8_rows, int8_weight)
    if scheme == "aq":
        return product(int8_rows, bf16)
    if scheme == "wq":
        return product(bf16, int8_weight)
    group = int(scheme[1:])
    return product(lambda x: int8_rows(x, group), int8_weight)


def main():
    for name in sys.argv[1:] or ["hf-quickgelu"]:
        directory = f"{FIXTURES}/{name}"
        model = CLIPModel.from_pretrained(directory).eval()
        reference = load_file(f"{directory}/reference.safetensors")
        ids, pixels = reference["input_ids"].long(), reference["pixel_values"]

        def embeddings():
            with torch.no_grad():
                t = model.get_text_features(input_ids=ids)
                i = model.get_image_features(pixel_values=pixels)
            t = getattr(t, "pooler_output", t)
            i = getattr(i, "pooler_output", i)
            return torch.nn.functional.normalize(t, dim=-1), torch.nn.functional.normalize(i, dim=-1)

        text32, image32 = embeddings()
        for scheme in SCHEMES:
            for module_name, module in model.named_modules():
                if not isinstance(module, torch.nn.Linear) or "layers" not in module_name:
                    continue
                in_bf16 = {"v8": ("q_proj", "k_proj"), "k8": ("q_proj", "v_proj")}.get(scheme)
                if in_bf16:
                    keep = module_name.endswith(in_bf16)
                    forward = product(bf16, bf16) if keep else product(int8_rows, int8_weight)
                elif module_name.endswith(("q_proj", "k_proj", "v_proj")):
                    forward = qkv_forward(scheme)
                else:
                    forward = product(int8_rows, int8_weight)
                module.forward = types.MethodType(forward, module)
            try:
                text, image = embeddings()
            except RuntimeError:
                print(f"{name} q/k/v {scheme:5s}: a row width is not a multiple of the group")
                continue
            print(
                f"{name} q/k/v {scheme:5s} min cosine: texts {(text * text32).sum(-1).min():.6f}, "
                f"images {(image * image32).sum(-1).min():.6f}"
            )


if __name__ == "__main__":
    main()
