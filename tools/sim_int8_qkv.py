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

    tools/.venv/bin/python tools/sim_int8_qkv.py hf-quickgelu hf-gelu oc-gelu oc-fullvocab

transformers fixtures (hf-*) run in transformers; open_clip fixtures (oc-*) in open_clip, rebuilt
as tools/gen_fixtures.py reloads them, with each block's fused q/k/v projection split into its
three thirds.

Needs the reference venv (tools/setup_ref_env.sh); never run by the tests.
"""
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_fixtures  # noqa: E402  (the fixtures' own open_clip loader)

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


def projection_forward(scheme, projection):
    """The forward of q/k/v projection `projection` ("q", "k" or "v") under `scheme`."""
    in_bf16 = {"v8": ("q", "k"), "k8": ("q", "v")}.get(scheme)
    if in_bf16:
        return product(bf16, bf16) if projection in in_bf16 else product(int8_rows, int8_weight)
    return qkv_forward(scheme)


def linear_with(forward, weight, bias):
    """A `Linear`-like module holding `weight`/`bias` that runs `forward`."""
    module = torch.nn.Module()
    module.weight, module.bias = weight, bias
    module.forward = types.MethodType(forward, module)
    return module


class SplitAttention(torch.nn.Module):
    """open_clip's `nn.MultiheadAttention` (batch first, self-attention) with its fused q/k/v
    weight run as three projections, each under the scheme, and the output projection in int8."""

    def __init__(self, attention, scheme):
        super().__init__()
        self.heads = attention.num_heads
        weights = attention.in_proj_weight.detach().chunk(3)
        biases = attention.in_proj_bias.detach().chunk(3)
        self.projections = [
            linear_with(projection_forward(scheme, p), w, b) for p, w, b in zip("qkv", weights, biases)
        ]
        out = attention.out_proj
        self.out = linear_with(product(int8_rows, int8_weight), out.weight.detach(), out.bias.detach())

    def forward(self, q_x, k_x, v_x, need_weights=False, attn_mask=None):
        batch, tokens, width = q_x.shape
        q, k, v = (
            p(x).reshape(batch, tokens, self.heads, width // self.heads).transpose(1, 2)
            for p, x in zip(self.projections, (q_x, k_x, v_x))
        )
        mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(mixed.transpose(1, 2).reshape(batch, tokens, width)), None


def transformers_model(name, directory):
    model = CLIPModel.from_pretrained(directory).eval()

    def embed(ids, pixels):
        t = model.get_text_features(input_ids=ids)
        i = model.get_image_features(pixel_values=pixels)
        return getattr(t, "pooler_output", t), getattr(i, "pooler_output", i)

    def quantise(scheme):
        for module_name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or "layers" not in module_name:
                continue
            for projection in "qkv":
                if module_name.endswith(f"{projection}_proj"):
                    forward = projection_forward(scheme, projection)
                    break
            else:
                forward = product(int8_rows, int8_weight)
            module.forward = types.MethodType(forward, module)

    return embed, quantise


def open_clip_model(name, directory):
    checkpoint = next(
        f for f in ("open_clip_model.safetensors", "checkpoint.pt") if (Path(directory) / f).exists()
    )
    model = gen_fixtures._reload_oc(Path(directory), checkpoint)
    blocks = [
        m for m in model.modules() if hasattr(m, "attn") and isinstance(m.attn, torch.nn.MultiheadAttention)
    ]
    originals = [(b, b.attn) for b in blocks]

    def embed(ids, pixels):
        return model.encode_text(ids), model.encode_image(pixels)

    def quantise(scheme):
        for block, attention in originals:
            block.attn = SplitAttention(attention, scheme)
            for layer in (block.mlp.c_fc, block.mlp.c_proj):
                layer.forward = types.MethodType(product(int8_rows, int8_weight), layer)

    return embed, quantise


def main():
    for name in sys.argv[1:] or ["hf-quickgelu"]:
        directory = f"{FIXTURES}/{name}"
        load = open_clip_model if name.startswith("oc-") else transformers_model
        embed, quantise = load(name, directory)
        reference = load_file(f"{directory}/reference.safetensors")
        ids, pixels = reference["input_ids"].long(), reference["pixel_values"]

        def embeddings():
            with torch.no_grad():
                t, i = embed(ids, pixels)
            return torch.nn.functional.normalize(t, dim=-1), torch.nn.functional.normalize(i, dim=-1)

        text32, image32 = embeddings()
        for scheme in SCHEMES:
            quantise(scheme)
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
