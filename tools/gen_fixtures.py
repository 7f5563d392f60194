#!/usr/bin/env python3
"""Generate the small CLIP test fixtures under tests/fixtures/.

Run by hand (never by CI), with the reference venv made by tools/setup_ref_env.sh:

    tools/.venv/bin/python tools/gen_fixtures.py            # writes tests/fixtures/
    tools/.venv/bin/python tools/gen_fixtures.py --full /tmp/vitb32   # big, not committed

Every model here is randomly initialised from a fixed seed, with EVERY parameter
drawn at random (not the libraries' default init), so that a missing, swapped or
mis-transposed tensor in the Rust port changes the outputs.  See
tests/fixtures/README.md for the layout of what is written.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import open_clip
import transformers
from open_clip.model import CLIP as OpenClipCLIP
from transformers import CLIPConfig, CLIPModel

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

LOGIT_SCALE = math.log(1.0 / 0.05)  # ln(20) ~= 2.9957, differs from both libraries' default
SOT = 998  # start-of-text id used by the synthetic (vocab 1000) fixtures
EOT = 999  # end-of-text id; the largest id, so argmax pooling finds it
CONTEXT = 77

# Scales of the random init (see README "Random initialisation").
EMBED_STD = 0.5  # token / positional / class embeddings
LN_W_STD = 0.1  # LayerNorm weight = 1 + 0.1 * randn
BIAS_STD = 0.05  # every bias = 0.05 * randn
QK_GAIN = 2.0  # query/key weights get 2/sqrt(fan_in): sharp, input-dependent attention


# --------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------

SHAPE_A = dict(
    image_size=32, patch=8, v_width=64, v_layers=2, v_heads=4, v_mlp=256,
    vocab=1000, context=CONTEXT, t_width=48, t_layers=2, t_heads=4, t_mlp=192,
    embed=32,
)
SHAPE_B = dict(
    image_size=48, patch=16, v_width=96, v_layers=3, v_heads=3, v_mlp=384,
    vocab=1000, context=CONTEXT, t_width=64, t_layers=3, t_heads=2, t_mlp=256,
    embed=48,
)
SHAPE_FULLVOCAB = dict(
    image_size=32, patch=16, v_width=32, v_layers=1, v_heads=2, v_mlp=128,
    vocab=49408, context=CONTEXT, t_width=16, t_layers=1, t_heads=2, t_mlp=64,
    embed=16,
)


# --------------------------------------------------------------------------------------
# Random initialisation
# --------------------------------------------------------------------------------------

def _randn(shape, gen, std=1.0, mean=0.0):
    return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean


def randomize_hf(model: CLIPModel, gen: torch.Generator) -> None:
    """Overwrite every parameter of a transformers CLIPModel."""
    ln_params = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            ln_params.add(f"{mname}.weight")
            ln_params.add(f"{mname}.bias")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(LOGIT_SCALE)
            elif name in ln_params and name.endswith(".weight"):
                p.copy_(_randn(p.shape, gen, LN_W_STD, 1.0))
            elif name.endswith(".bias"):
                p.copy_(_randn(p.shape, gen, BIAS_STD))
            elif "embedding" in name and "patch_embedding" not in name:
                # token_embedding, position_embedding, class_embedding
                p.copy_(_randn(p.shape, gen, EMBED_STD))
            elif p.dim() >= 2:
                # nn.Linear weight [out, in] / conv weight [out, c, kh, kw]: fan-in scaling
                fan_in = math.prod(p.shape[1:])
                gain = QK_GAIN if name.endswith(("q_proj.weight", "k_proj.weight")) else 1.0
                p.copy_(_randn(p.shape, gen, gain * fan_in ** -0.5))
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")


def randomize_oc(model: OpenClipCLIP, gen: torch.Generator) -> None:
    """Overwrite every parameter of an open_clip CLIP model."""
    ln_params = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            ln_params.add(f"{mname}.weight")
            ln_params.add(f"{mname}.bias")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(LOGIT_SCALE)
            elif name in ln_params and name.endswith(".weight"):
                p.copy_(_randn(p.shape, gen, LN_W_STD, 1.0))
            elif name.endswith("bias"):  # includes attn.in_proj_bias
                p.copy_(_randn(p.shape, gen, BIAS_STD))
            elif name in ("token_embedding.weight", "positional_embedding",
                          "visual.class_embedding", "visual.positional_embedding"):
                p.copy_(_randn(p.shape, gen, EMBED_STD))
            elif name in ("text_projection", "visual.proj"):
                # stored [in, out] (x @ proj): fan-in is dim 0
                p.copy_(_randn(p.shape, gen, p.shape[0] ** -0.5))
            elif p.dim() >= 2:
                # Linear / in_proj weight [out, in], conv1 [out, c, kh, kw]
                fan_in = math.prod(p.shape[1:])
                w = _randn(p.shape, gen, fan_in ** -0.5)
                if name.endswith("attn.in_proj_weight"):
                    w[: 2 * p.shape[1]] *= QK_GAIN  # rows [q; k; v]: scale q and k
                p.copy_(w)
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")


# --------------------------------------------------------------------------------------
# Model builders
# --------------------------------------------------------------------------------------

def hf_config(shape: dict, act: str, eos: int, bos: int, pad: int) -> CLIPConfig:
    text = dict(
        vocab_size=shape["vocab"], hidden_size=shape["t_width"], intermediate_size=shape["t_mlp"],
        num_hidden_layers=shape["t_layers"], num_attention_heads=shape["t_heads"],
        max_position_embeddings=shape["context"], hidden_act=act, layer_norm_eps=1e-5,
        projection_dim=shape["embed"], eos_token_id=eos, bos_token_id=bos, pad_token_id=pad,
    )
    vision = dict(
        hidden_size=shape["v_width"], intermediate_size=shape["v_mlp"],
        num_hidden_layers=shape["v_layers"], num_attention_heads=shape["v_heads"],
        image_size=shape["image_size"], patch_size=shape["patch"], num_channels=3,
        hidden_act=act, layer_norm_eps=1e-5, projection_dim=shape["embed"],
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=shape["embed"],
                      logit_scale_init_value=LOGIT_SCALE)


def build_hf(config: CLIPConfig, seed: int) -> CLIPModel:
    torch.manual_seed(seed)
    model = CLIPModel(config)
    randomize_hf(model, torch.Generator().manual_seed(seed))
    return model.float().eval()


def oc_config(shape: dict, quick_gelu: bool | None, explicit_mlp_ratio: bool) -> dict:
    """An open_clip model config in the format of open_clip's model_configs/*.json."""
    assert shape["v_width"] % shape["v_heads"] == 0
    v_mlp_ratio = shape["v_mlp"] / shape["v_width"]
    t_mlp_ratio = shape["t_mlp"] / shape["t_width"]
    cfg: dict = {"embed_dim": shape["embed"]}
    if quick_gelu is not None:
        cfg["quick_gelu"] = quick_gelu
    vision = {
        "image_size": shape["image_size"],
        "layers": shape["v_layers"],
        "width": shape["v_width"],
        "head_width": shape["v_width"] // shape["v_heads"],
        "patch_size": shape["patch"],
    }
    text = {
        "context_length": shape["context"],
        "vocab_size": shape["vocab"],
        "width": shape["t_width"],
        "heads": shape["t_heads"],
        "layers": shape["t_layers"],
    }
    if explicit_mlp_ratio:
        vision["mlp_ratio"] = v_mlp_ratio
        text["mlp_ratio"] = t_mlp_ratio
    else:
        assert v_mlp_ratio == 4.0 and t_mlp_ratio == 4.0
    cfg["vision_cfg"] = vision
    cfg["text_cfg"] = text
    return cfg


def build_oc_from_cfg(cfg: dict) -> OpenClipCLIP:
    return OpenClipCLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=cfg["vision_cfg"],
        text_cfg=cfg["text_cfg"],
        quick_gelu=cfg.get("quick_gelu", False),
    ).float().eval()


def build_oc(cfg: dict, seed: int) -> OpenClipCLIP:
    torch.manual_seed(seed)
    model = build_oc_from_cfg(cfg)
    randomize_oc(model, torch.Generator().manual_seed(seed))
    return model.eval()


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------

def synthetic_ids(seed: int, first_eos_variant: bool) -> torch.Tensor:
    """[8, 77] int64 ids for the vocab-1000 fixtures.

    Each row: SOT(998), body ids in 1..997, EOT(999), then padding (0, or 999 for the
    rows marked below in the first-eos variant).  Row lengths (SOT..EOT inclusive):
    2 (SOT,EOT only), 5, 23, 42, 77 (EOT at position 76), 12, 9, 61.
    Rows 2 and 6 contain the id 2 in the body (a wrong "first occurrence of
    eos_token_id=2" pooling in hf-gelu would pick it); row 6 also contains 997 and 1.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = [2, 5, 23, 42, 77, 12, 9, 61]
    rows = []
    for r, n in enumerate(lengths):
        body = torch.randint(1, 998, (n - 2,), generator=g)  # 1..997
        if r == 2:
            body[3] = 2
            body[10] = 2
        if r == 6:
            body[:] = torch.tensor([997, 2, 997, 1, 500, 997, 996])
        row = torch.zeros(CONTEXT, dtype=torch.int64)
        row[0] = SOT
        row[1:n - 1] = body
        row[n - 1] = EOT
        if first_eos_variant and r in (0, 3, 5):
            row[n:] = EOT  # padded with the eos id: only the FIRST occurrence is the EOT
        rows.append(row)
    ids = torch.stack(rows)
    assert ids.shape == (8, CONTEXT)
    return ids


def synthetic_pixels(seed: int, size: int, n: int = 4) -> torch.Tensor:
    """[n, 3, size, size] float32 "already normalised" pixels.

    Pure i.i.d. noise images all look alike to a ViT (the CLS token averages the
    patches), so each image is a smooth random field (a 4x4 random grid, bilinearly
    upsampled) plus a random per-channel offset plus pixel noise.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((n, 3, 4, 4), generator=g, dtype=torch.float32)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    offset = 0.5 * torch.randn((n, 3, 1, 1), generator=g, dtype=torch.float32)
    noise = 0.5 * torch.randn((n, 3, size, size), generator=g, dtype=torch.float32)
    return (smooth + offset + noise).contiguous()


FULLVOCAB_CAPTIONS = [
    "a photo of a cat",
    "A DOG!!",
    "two  spaces",
    "emoji 🐈",
    "café",
    "cafe\u0301 (decomposed e + combining acute; ftfy NFC-normalises it)",
    "",
    "  leading and trailing whitespace\tand\na newline  ",
    "It's a dog's life, isn't it? They'll say we've done it.",
    "It\u2019s \u201ccurly\u201d quotes (ftfy straightens them)",
    "numbers 12345 and 3.14, 2nd place",
    "&amp; html entities &lt;b&gt; and &amp;amp;",
    "日本語のテキスト and Ünïcödé ñ",
    # 100 words: far more than 75 BPE tokens, so the tokenizer truncates and puts EOT at 76
    " ".join((
        "the quick brown fox jumps over the lazy dog while a small cat "
        "watches from the old wooden fence nearby"
    ).split() * 5),
]


def _long_caption_words(caption: str) -> int:
    return len(caption.split())


# --------------------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------------------

def _pooled(x):
    """transformers >= 5 returns a BaseModelOutputWithPooling; v4 a tensor."""
    return x if torch.is_tensor(x) else x.pooler_output


def run_hf(model: CLIPModel, ids: torch.Tensor, px: torch.Tensor):
    with torch.inference_mode():
        t = _pooled(model.get_text_features(input_ids=ids)).float()
        i = _pooled(model.get_image_features(pixel_values=px)).float()
    return t.clone(), i.clone()


def run_oc(model: OpenClipCLIP, ids: torch.Tensor, px: torch.Tensor):
    with torch.inference_mode():
        t = model.encode_text(ids).float()
        i = model.encode_image(px).float()
    return t.clone(), i.clone()


def l2norm64(x: torch.Tensor) -> torch.Tensor:
    x64 = x.double()
    return (x64 / x64.norm(dim=-1, keepdim=True)).float()


def check_not_degenerate(name: str, emb: torch.Tensor, max_cos: float = 0.97) -> float:
    sims = emb.double() @ emb.double().T
    n = sims.shape[0]
    off = sims[~torch.eye(n, dtype=torch.bool)]
    worst = off.max().item()
    if worst > max_cos:
        raise AssertionError(f"{name}: embeddings too similar (max off-diagonal cos {worst:.4f})")
    return worst


def write_reference(outdir: Path, ids, px, t_raw, i_raw, logit_scale: float) -> dict:
    tensors = {
        "input_ids": ids.to(torch.int64).contiguous(),
        "pixel_values": px.to(torch.float32).contiguous(),
        "text_embeds": l2norm64(t_raw).contiguous(),
        "image_embeds": l2norm64(i_raw).contiguous(),
        "text_features_raw": t_raw.contiguous(),
        "image_features_raw": i_raw.contiguous(),
        "logit_scale": torch.tensor([logit_scale], dtype=torch.float32),
    }
    save_file(tensors, str(outdir / "reference.safetensors"))
    return tensors


def assert_close(what: str, a: torch.Tensor, b: torch.Tensor, atol=2e-5, rtol=1e-4):
    diff = (a - b).abs().max().item()
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        raise AssertionError(f"{what}: reload mismatch, max abs diff {diff:.3e}")
    return diff


def summarise(name: str, ref: dict):
    t_cos = check_not_degenerate(f"{name} text", ref["text_embeds"])
    i_cos = check_not_degenerate(f"{name} image", ref["image_embeds"])
    print(f"  {name}: max off-diagonal cos text {t_cos:.3f}, image {i_cos:.3f}; "
          f"|text_raw| mean {ref['text_features_raw'].norm(dim=-1).mean():.3f}, "
          f"|image_raw| mean {ref['image_features_raw'].norm(dim=-1).mean():.3f}")


# --------------------------------------------------------------------------------------
# The five fixtures
# --------------------------------------------------------------------------------------

def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _set_eager(model):
    # Compute references with plain (eager) attention; reload checks use the default.
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"


def gen_hf_gelu(root: Path, seed=1001):
    out = _fresh_dir(root / "hf-gelu")
    # eos 2 / bos 0 / pad 1: the legacy openai/clip-vit-* text_config values; with
    # eos_token_id == 2 transformers pools at argmax(input_ids).
    cfg = hf_config(SHAPE_A, "gelu", eos=2, bos=0, pad=1)
    model = build_hf(cfg, seed)
    _set_eager(model)
    ids = synthetic_ids(seed + 1, first_eos_variant=False)
    px = synthetic_pixels(seed + 2, SHAPE_A["image_size"])
    t, i = run_hf(model, ids, px)
    model.save_pretrained(str(out))  # transformers 5: always safetensors (model.safetensors)
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    ref = write_reference(out, ids, px, t, i, model.logit_scale.item())
    reloaded = CLIPModel.from_pretrained(str(out)).eval()
    t2, i2 = run_hf(reloaded, ids, px)
    d = max(assert_close("hf-gelu text", t2, t), assert_close("hf-gelu image", i2, i))
    print(f"  hf-gelu reload max diff {d:.2e}")
    summarise("hf-gelu", ref)


def gen_hf_quickgelu(root: Path, seed=2002):
    out = _fresh_dir(root / "hf-quickgelu")
    # eos 999 != 2: transformers pools at the FIRST position holding eos_token_id.
    cfg = hf_config(SHAPE_B, "quick_gelu", eos=EOT, bos=SOT, pad=1)
    model = build_hf(cfg, seed)
    _set_eager(model)
    ids = synthetic_ids(seed + 1, first_eos_variant=True)
    px = synthetic_pixels(seed + 2, SHAPE_B["image_size"])
    t, i = run_hf(model, ids, px)
    # transformers 5 removed save_pretrained(safe_serialization=False); write the
    # config with save_pretrained and the weights the way transformers 4 did for
    # safe_serialization=False: torch.save(state_dict) in PyTorch's zip format.
    model.save_pretrained(str(out))
    (out / "model.safetensors").unlink()
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, str(out / "pytorch_model.bin"))
    ref = write_reference(out, ids, px, t, i, model.logit_scale.item())
    reloaded = CLIPModel.from_pretrained(str(out)).eval()
    t2, i2 = run_hf(reloaded, ids, px)
    d = max(assert_close("hf-quickgelu text", t2, t), assert_close("hf-quickgelu image", i2, i))
    print(f"  hf-quickgelu reload (from pytorch_model.bin) max diff {d:.2e}")
    summarise("hf-quickgelu", ref)


def _write_oc_config(out: Path, cfg: dict):
    with open(out / "open_clip_config.json", "w") as f:
        json.dump(cfg, f, indent=4)
        f.write("\n")


def _reload_oc(out: Path, weights: str) -> OpenClipCLIP:
    with open(out / "open_clip_config.json") as f:
        cfg = json.load(f)
    model = build_oc_from_cfg(cfg)
    # open_clip's own checkpoint loader: handles {"state_dict": ...}, "module." and .safetensors
    open_clip.load_checkpoint(model, str(out / weights), strict=True)
    return model.eval()


def gen_oc_gelu(root: Path, seed=3003):
    out = _fresh_dir(root / "oc-gelu")
    cfg = oc_config(SHAPE_A, quick_gelu=None, explicit_mlp_ratio=False)
    model = build_oc(cfg, seed)
    ids = synthetic_ids(seed + 1, first_eos_variant=False)
    px = synthetic_pixels(seed + 2, SHAPE_A["image_size"])
    t, i = run_oc(model, ids, px)
    _write_oc_config(out, cfg)
    # exactly torch.save(model.state_dict()): an OrderedDict (with its _metadata attribute)
    torch.save(model.state_dict(), str(out / "open_clip_model.pt"))
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "open_clip_model.safetensors"))
    ref = write_reference(out, ids, px, t, i, model.logit_scale.item())
    d = 0.0
    for w in ("open_clip_model.pt", "open_clip_model.safetensors"):
        t2, i2 = run_oc(_reload_oc(out, w), ids, px)
        d = max(d, assert_close(f"oc-gelu text ({w})", t2, t), assert_close(f"oc-gelu image ({w})", i2, i))
    print(f"  oc-gelu reload max diff {d:.2e}")
    summarise("oc-gelu", ref)


def gen_oc_quickgelu(root: Path, seed=4004):
    out = _fresh_dir(root / "oc-quickgelu")
    cfg = oc_config(SHAPE_B, quick_gelu=True, explicit_mlp_ratio=True)
    model = build_oc(cfg, seed)
    ids = synthetic_ids(seed + 1, first_eos_variant=False)
    px = synthetic_pixels(seed + 2, SHAPE_B["image_size"])
    t, i = run_oc(model, ids, px)
    _write_oc_config(out, cfg)
    # As open_clip's training loop saves it: the state_dict of the DDP-wrapped model
    # (keys "module.<name>", an OrderedDict with _metadata) inside a dict.
    wrapper = torch.nn.Module()
    wrapper.module = model
    sd = wrapper.state_dict()
    assert all(k.startswith("module.") for k in sd)
    torch.save({"epoch": 1, "name": "x", "state_dict": sd}, str(out / "checkpoint.pt"))
    ref = write_reference(out, ids, px, t, i, model.logit_scale.item())
    t2, i2 = run_oc(_reload_oc(out, "checkpoint.pt"), ids, px)
    d = max(assert_close("oc-quickgelu text", t2, t), assert_close("oc-quickgelu image", i2, i))
    print(f"  oc-quickgelu reload max diff {d:.2e}")
    summarise("oc-quickgelu", ref)


def gen_oc_fullvocab(root: Path, seed=5005):
    out = _fresh_dir(root / "oc-fullvocab")
    cfg = oc_config(SHAPE_FULLVOCAB, quick_gelu=False, explicit_mlp_ratio=False)
    model = build_oc(cfg, seed)
    captions = FULLVOCAB_CAPTIONS
    assert _long_caption_words(captions[-1]) >= 100
    ids = open_clip.tokenize(captions)  # the real CLIP tokenizer, context 77
    assert ids.shape == (len(captions), CONTEXT)
    px = synthetic_pixels(seed + 2, SHAPE_FULLVOCAB["image_size"])
    t, i = run_oc(model, ids, px)
    _write_oc_config(out, cfg)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "open_clip_model.safetensors"))
    with open(out / "captions.json", "w", encoding="utf-8") as f:
        json.dump(captions, f, ensure_ascii=False, indent=1)
        f.write("\n")
    ref = write_reference(out, ids, px, t, i, model.logit_scale.item())
    t2, i2 = run_oc(_reload_oc(out, "open_clip_model.safetensors"), ids, px)
    d = max(assert_close("oc-fullvocab text", t2, t), assert_close("oc-fullvocab image", i2, i))
    print(f"  oc-fullvocab reload max diff {d:.2e}")
    summarise("oc-fullvocab", ref)
    for c, row in zip(captions, ids):
        n = int((row != 0).sum())
        print(f"    {n:2d} tokens  {c[:40]!r}")


def copy_bpe(root: Path):
    src = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    # The vocabulary is embedded in the library from its assets folder, not kept twice.
    dst = root.parent.parent / "crates" / "gclip" / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    with gzip.open(dst) as f:
        first = f.readline().decode().strip()
    print(f"  copied {src.name} ({dst.stat().st_size} bytes; first line {first!r})")


# --------------------------------------------------------------------------------------
# --full: a full-size random ViT-B/32 in both layouts
# --------------------------------------------------------------------------------------

def hf_to_open_clip(hf_sd: dict, n_text_layers: int, n_vision_layers: int) -> dict:
    """Map a transformers CLIPModel state dict to open_clip CLIP names.

    Mapping (transformers  ->  open_clip):
      text_model.embeddings.token_embedding.weight       -> token_embedding.weight
      text_model.embeddings.position_embedding.weight    -> positional_embedding          [77, W]
      text_model.encoder.layers.{i}.*                    -> transformer.resblocks.{i}.*
      text_model.final_layer_norm.{weight,bias}          -> ln_final.{weight,bias}
      text_projection.weight            [E, W]           -> text_projection              [W, E]  (transposed)
      vision_model.embeddings.class_embedding            -> visual.class_embedding
      vision_model.embeddings.patch_embedding.weight     -> visual.conv1.weight          [W, 3, P, P]
      vision_model.embeddings.position_embedding.weight  -> visual.positional_embedding  [G*G+1, W]
      vision_model.pre_layrnorm.*  (sic, "layrnorm")     -> visual.ln_pre.*
      vision_model.encoder.layers.{i}.*                  -> visual.transformer.resblocks.{i}.*
      vision_model.post_layernorm.*                      -> visual.ln_post.*
      visual_projection.weight          [E, W]           -> visual.proj                  [W, E]  (transposed)
      logit_scale                                        -> logit_scale
    Inside one encoder layer:
      self_attn.{q,k,v}_proj.weight  (each [W, W])       -> attn.in_proj_weight [3W, W] = cat([q, k, v], dim 0)
      self_attn.{q,k,v}_proj.bias    (each [W])          -> attn.in_proj_bias   [3W]    = cat([q, k, v])
      self_attn.out_proj.{weight,bias}                   -> attn.out_proj.{weight,bias}
      layer_norm1.* / layer_norm2.*                      -> ln_1.* / ln_2.*
      mlp.fc1.* / mlp.fc2.*                              -> mlp.c_fc.* / mlp.c_proj.*
    """
    sd = {}

    def layer(src: str, dst: str, n: int):
        for i in range(n):
            s, d = f"{src}.{i}.", f"{dst}.{i}."
            for kind in ("weight", "bias"):
                sd[d + f"attn.in_proj_{kind}"] = torch.cat(
                    [hf_sd[s + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0)
                sd[d + f"attn.out_proj.{kind}"] = hf_sd[s + f"self_attn.out_proj.{kind}"]
                sd[d + f"ln_1.{kind}"] = hf_sd[s + f"layer_norm1.{kind}"]
                sd[d + f"ln_2.{kind}"] = hf_sd[s + f"layer_norm2.{kind}"]
                sd[d + f"mlp.c_fc.{kind}"] = hf_sd[s + f"mlp.fc1.{kind}"]
                sd[d + f"mlp.c_proj.{kind}"] = hf_sd[s + f"mlp.fc2.{kind}"]

    sd["token_embedding.weight"] = hf_sd["text_model.embeddings.token_embedding.weight"]
    sd["positional_embedding"] = hf_sd["text_model.embeddings.position_embedding.weight"]
    layer("text_model.encoder.layers", "transformer.resblocks", n_text_layers)
    for kind in ("weight", "bias"):
        sd[f"ln_final.{kind}"] = hf_sd[f"text_model.final_layer_norm.{kind}"]
    sd["text_projection"] = hf_sd["text_projection.weight"].t().contiguous()

    sd["visual.class_embedding"] = hf_sd["vision_model.embeddings.class_embedding"]
    sd["visual.conv1.weight"] = hf_sd["vision_model.embeddings.patch_embedding.weight"]
    sd["visual.positional_embedding"] = hf_sd["vision_model.embeddings.position_embedding.weight"]
    for kind in ("weight", "bias"):
        sd[f"visual.ln_pre.{kind}"] = hf_sd[f"vision_model.pre_layrnorm.{kind}"]
        sd[f"visual.ln_post.{kind}"] = hf_sd[f"vision_model.post_layernorm.{kind}"]
    layer("vision_model.encoder.layers", "visual.transformer.resblocks", n_vision_layers)
    sd["visual.proj"] = hf_sd["visual_projection.weight"].t().contiguous()

    sd["logit_scale"] = hf_sd["logit_scale"]
    return {k: v.contiguous() for k, v in sd.items()}


def gen_full(outdir: Path, seed=6006):
    outdir.mkdir(parents=True, exist_ok=True)
    # openai/clip-vit-base-patch32's config
    text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=512, bos_token_id=0, eos_token_id=2,
                pad_token_id=1)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, image_size=224, patch_size=32, num_channels=3,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=512)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=512,
                     logit_scale_init_value=LOGIT_SCALE)
    model = build_hf(cfg, seed)
    _set_eager(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"  full ViT-B/32: {n_params} parameters ({n_params / 1e6:.2f}M)")
    captions = ["a photo of a cat", "a diagram of a neural network",
                "two dogs playing in the snow", "A red car parked next to a house."]
    ids = open_clip.tokenize(captions)
    px = synthetic_pixels(seed + 2, 224, n=2)
    t, i = run_hf(model, ids, px)
    model.save_pretrained(str(outdir))
    write_reference(outdir, ids, px, t, i, model.logit_scale.item())
    with open(outdir / "captions.json", "w") as f:
        json.dump(captions, f, indent=1)

    hf_sd = model.state_dict()
    oc_sd = hf_to_open_clip(hf_sd, 12, 12)
    oc = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).float().eval()
    missing = set(oc.state_dict()) ^ set(oc_sd)
    assert not missing, f"name mapping mismatch: {sorted(missing)}"
    oc.load_state_dict(oc_sd, strict=True)
    torch.save(oc_sd, str(outdir / "open_clip_model.pt"))
    t_oc, i_oc = run_oc(oc, ids, px)
    dt = (t_oc - t).abs().max().item()
    di = (i_oc - i).abs().max().item()
    dtn = (l2norm64(t_oc) - l2norm64(t)).abs().max().item()
    din = (l2norm64(i_oc) - l2norm64(i)).abs().max().item()
    print(f"  open_clip vs transformers: max abs diff raw text {dt:.2e}, raw image {di:.2e}; "
          f"normalised text {dtn:.2e}, image {din:.2e}")
    assert dtn < 1e-4 and din < 1e-4, "open_clip and transformers disagree"
    print(f"  wrote {outdir}")


# --------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURES, help="fixtures root (default tests/fixtures)")
    ap.add_argument("--full", type=Path, metavar="OUTDIR",
                    help="ALSO write a full-size random ViT-B/32 (HF + open_clip layouts) to OUTDIR")
    ap.add_argument("--only-full", action="store_true", help="with --full: skip the small fixtures")
    args = ap.parse_args()

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"open_clip {open_clip.__version__}", file=sys.stderr)

    if not args.only_full:
        root = args.out
        (root / "models").mkdir(parents=True, exist_ok=True)
        models = root / "models"
        print("generating fixtures in", root)
        gen_hf_gelu(models)
        gen_hf_quickgelu(models)
        gen_oc_gelu(models)
        gen_oc_quickgelu(models)
        gen_oc_fullvocab(models)
        copy_bpe(root)
        # loadability check of everything written
        for ref in sorted(models.glob("*/reference.safetensors")):
            tensors = load_file(str(ref))
            print(f"  {ref.relative_to(root)}: " + ", ".join(
                f"{k} {str(v.dtype).replace('torch.', '')}{list(v.shape)}" for k, v in sorted(tensors.items())))
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"  total size of {root}: {total / 1e6:.2f} MB")

    if args.full:
        gen_full(args.full)


if __name__ == "__main__":
    main()
