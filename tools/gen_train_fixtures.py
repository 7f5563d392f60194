#!/usr/bin/env python3
"""Generate the training reference fixtures under tests/fixtures/train/.

Run by hand (never by CI), with the reference venv made by tools/setup_ref_env.sh:

    tools/.venv/bin/python tools/gen_train_fixtures.py     # rewrites tests/fixtures/train/

gclip's training math was only ever checked against itself (the loss against a Rust
re-derivation, AdamW against the algorithm written out in Rust).  These fixtures come from
PyTorch, so a shared misreading of a formula cannot hide:

* clip_loss.safetensors   open_clip's own `ClipLoss` on one batch: value and gradients with
                          respect to both towers' features (raw and normalised) and the
                          logit scale parameter t (the scale is exp(t)).
* gcl_loss.safetensors    GCL's weighted multi-field loss, transcribed into plain PyTorch from
                          the formula in docs/TRAINING.md (not from gclip's code): value, parts
                          and gradients.
* adamw.safetensors       two `torch.optim.AdamW` steps over the tiny model's parameters with
                          open_clip's parameter groups (open_clip_train/main.py's rule).
* train_step.safetensors  one open_clip training step of the tiny model: forward, ClipLoss,
                          backward, gradient clipping, AdamW, logit-scale clamp (and the
                          same step from a logit scale above the clamp).
* tiny/                   the tiny open_clip model those start from.
* manifest.json           hyper-parameters, the decay groups and the measured numbers.

Everything is seeded and computed on one thread: running it twice with the versions in
tests/fixtures/VERSIONS.txt gives byte-identical files.  See tests/fixtures/train/README.md.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import open_clip
from open_clip.loss import ClipLoss
from open_clip_train.scheduler import cosine_lr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # importing our sibling must not leave tools/__pycache__ behind
from gen_fixtures import build_oc_from_cfg, randomize_oc  # noqa: E402  (our own generator)

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "tests" / "fixtures" / "train"

# The tiny model: every tensor is small so that four copies of its parameters stay well under
# a megabyte each, yet it has two blocks per tower, several heads and argmax pooling.
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2},
}
SOT, EOT = 62, 63  # EOT is the largest id, so open_clip's argmax pooling finds it
N_STEP = 6  # pairs in the training-step batch

# open_clip's defaults for ViT models (open_clip_train/params.py get_default_params).
BETAS = (0.9, 0.98)
EPS = 1e-6
WD = 0.2


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64).clone().requires_grad_(True)


# --------------------------------------------------------------------------------------
# 1. open_clip ClipLoss
# --------------------------------------------------------------------------------------

def clip_loss_fixture(seed=7001) -> dict:
    n, d = 10, 12
    g = gen(seed)
    text = torch.randn(n, d, generator=g)
    # Images correlated with their captions (and of varying norms), so the loss is neither at
    # chance nor saturated and every gradient term matters.
    image = (0.5 * text + 0.9 * torch.randn(n, d, generator=g)) * (
        0.5 + torch.rand(n, 1, generator=g) * 3
    )
    t0 = torch.tensor(math.log(1 / 0.07) - 0.3)
    out = {"image_raw": image, "text_raw": text, "logit_scale": t0.reshape(1)}
    for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
        img = image.to(dtype).clone().requires_grad_(True)
        txt = text.to(dtype).clone().requires_grad_(True)
        t = t0.to(dtype).clone().requires_grad_(True)
        # open_clip's CLIP.forward normalises the features and passes exp(t).
        img_n = F.normalize(img, dim=-1)
        txt_n = F.normalize(txt, dim=-1)
        img_n.retain_grad()
        txt_n.retain_grad()
        loss = ClipLoss()(img_n, txt_n, t.exp())
        loss.backward()
        out[f"loss{suffix}"] = loss.detach().reshape(1)
        out[f"grad_image_raw{suffix}"] = img.grad
        out[f"grad_text_raw{suffix}"] = txt.grad
        out[f"grad_image_normed{suffix}"] = img_n.grad
        out[f"grad_text_normed{suffix}"] = txt_n.grad
        out[f"grad_logit_scale{suffix}"] = t.grad.reshape(1)
    return out


# --------------------------------------------------------------------------------------
# 2. GCL, transcribed from the formula (docs/TRAINING.md "GCL"), not from gclip's code
# --------------------------------------------------------------------------------------

GCL_FIELD_WEIGHTS = {"image": 0.9, "title": 0.1}  # GCL's default document weights
GCL_EXTRA_WEIGHT = 0.5  # lambda of the extra term query text <-> document title
GCL_IMAGE_PRESENT = [1, 1, 1, 0, 1, 1, 0, 1]
# Pairs 0, 1 share a query; pairs 4, 5 share a query; pairs 2 and 6 share a document.
GCL_QUERY_KEYS = [0, 0, 1, 2, 3, 3, 4, 5]
GCL_DOC_KEYS = [10, 11, 12, 13, 14, 15, 12, 16]
GCL_SCORES = [0.9, 0.35, 0.6, 0.05, 1.0, 0.2, 0.75, 0.5]
GCL_SCORE_RANGE = (0.0, 1.0)  # min, max over the (imaginary) training data


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).sum(dim=-1, keepdim=True).sqrt()


def weighted_masked_infonce(left, right, t, w, shared):
    """0.5 * sum_i w_i [(lse_j X_ij - X_ii) + (lse_j X_ji - X_ii)] / sum_i w_i, where
    X = exp(t) L R^T and the entries of pairs sharing a query or document are left out of
    the softmaxes (-inf)."""
    x = t.exp() * left @ right.T
    x_rows = x.masked_fill(shared, float("-inf"))
    x_cols = x.T.masked_fill(shared.T, float("-inf"))
    diag = torch.diagonal(x)
    per_pair = (torch.logsumexp(x_rows, dim=1) - diag) + (torch.logsumexp(x_cols, dim=1) - diag)
    return 0.5 * (w * per_pair).sum() / w.sum()


def gcl_loss_fixture(seed=7002) -> dict:
    n, d = 8, 12
    g = gen(seed)
    query = torch.randn(n, d, generator=g)
    title = 0.5 * query + 0.9 * torch.randn(n, d, generator=g)
    image = (0.5 * query + 0.9 * torch.randn(n, d, generator=g)) * (1 + torch.rand(n, 1, generator=g))
    lo, hi = GCL_SCORE_RANGE
    scores = torch.tensor(GCL_SCORES, dtype=torch.float64)
    # Linear score-to-weight: the score mapped from the data's range onto [0.01, 1].
    weights = 0.01 + 0.99 * (scores - lo) / (hi - lo)
    present = torch.tensor(GCL_IMAGE_PRESENT, dtype=torch.float32)
    qk = torch.tensor(GCL_QUERY_KEYS)
    dk = torch.tensor(GCL_DOC_KEYS)
    shared = ((qk[:, None] == qk[None, :]) | (dk[:, None] == dk[None, :])) & ~torch.eye(n, dtype=torch.bool)
    assert shared.any() and not shared.all()
    t0 = torch.tensor(2.4)
    out = {
        "query_text_raw": query,
        "doc_title_raw": title,
        "doc_image_raw": image,
        "image_present": present,
        # f64, as gclip holds them: an f32 0.9 would move the f64 loss by ~1e-8.
        "field_weights": torch.tensor(
            [GCL_FIELD_WEIGHTS["image"], GCL_FIELD_WEIGHTS["title"]], dtype=torch.float64
        ),
        "extra_weight": torch.tensor([GCL_EXTRA_WEIGHT], dtype=torch.float64),
        "query_keys": qk.to(torch.int64),
        "doc_keys": dk.to(torch.int64),
        "scores": scores,  # f64: both sides map the same numbers
        "score_range": torch.tensor(GCL_SCORE_RANGE, dtype=torch.float64),
        "pair_weights": weights.to(torch.float32),
        "logit_scale": t0.reshape(1),
    }
    for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
        q = query.to(dtype).clone().requires_grad_(True)
        ti = title.to(dtype).clone().requires_grad_(True)
        im = image.to(dtype).clone().requires_grad_(True)
        t = t0.to(dtype).clone().requires_grad_(True)
        w = weights.to(torch.float32).to(dtype)  # the weights gclip holds are f32
        m = present.to(dtype)[:, None]
        # A side's embedding: normalise(sum_k theta_k * m_ik * normalise(e_k)).
        doc = unit(GCL_FIELD_WEIGHTS["image"] * m * unit(im) + GCL_FIELD_WEIGHTS["title"] * unit(ti))
        qry = unit(q)  # one field of weight 1
        main = weighted_masked_infonce(qry, doc, t, w, shared)
        extra = weighted_masked_infonce(unit(q), unit(ti), t, w, shared)
        total = main + GCL_EXTRA_WEIGHT * extra
        total.backward()
        out[f"loss{suffix}"] = total.detach().reshape(1)
        out[f"loss_main{suffix}"] = main.detach().reshape(1)
        out[f"loss_extra{suffix}"] = extra.detach().reshape(1)
        out[f"grad_query_text{suffix}"] = q.grad
        out[f"grad_doc_title{suffix}"] = ti.grad
        out[f"grad_doc_image{suffix}"] = im.grad
        out[f"grad_logit_scale{suffix}"] = t.grad.reshape(1)
    # Rows without an image get no gradient through it.
    assert (out["grad_doc_image"][present == 0] == 0).all()
    return out


# --------------------------------------------------------------------------------------
# The tiny model, open_clip's parameter groups
# --------------------------------------------------------------------------------------

def tiny_model(seed=7003):
    torch.manual_seed(seed)
    model = build_oc_from_cfg(TINY_CFG)
    randomize_oc(model, gen(seed))
    # open_clip's initial temperature (gen_fixtures uses ln 20): a realistic, not saturated
    # softmax for the training step.
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07))
    return model


def no_decay(name: str, p: torch.Tensor) -> bool:
    """open_clip_train/main.py's AdamW groups: no weight decay for tensors with fewer than two
    dimensions and for names mentioning batch/layer norms, biases or the logit scale."""
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def param_groups(model, wd: float):
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": wd},
    ]


def mixed_gradient(p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """N(0,1) scaled by 10^U(-8, 0): some entries far below AdamW's eps, where the update is
    no longer sign-like and eps's placement matters."""
    return torch.randn(p.shape, generator=g) * torch.pow(10.0, -8 * torch.rand(p.shape, generator=g))


# --------------------------------------------------------------------------------------
# 3. AdamW with open_clip's groups
# --------------------------------------------------------------------------------------

ADAMW_LRS = (1e-2, 5e-3)


def adamw_fixture(seed=7004) -> dict:
    model = tiny_model()
    opt = torch.optim.AdamW(param_groups(model, WD), lr=ADAMW_LRS[0], betas=BETAS, eps=EPS)
    g = gen(seed)
    out = {}
    for k, lr in enumerate(ADAMW_LRS, start=1):
        for group in opt.param_groups:
            group["lr"] = lr
        for name, p in model.named_parameters():
            p.grad = mixed_gradient(p, g)
            out[f"step{k}.grad.{name}"] = p.grad.clone()
        opt.step()
        for name, p in model.named_parameters():
            out[f"step{k}.param.{name}"] = p.detach().clone()
    return out


# --------------------------------------------------------------------------------------
# 4. One open_clip training step of the tiny model
# --------------------------------------------------------------------------------------

STEP = {"base_lr": 1e-3, "warmup": 4, "total_steps": 10, "step": 0}


def step_batch(seed=7005):
    g = gen(seed)
    ctx = TINY_CFG["text_cfg"]["context_length"]
    lengths = [2, 8, 5, 3, 7, 4]  # SOT..EOT inclusive: empty text, full context, ...
    ids = torch.zeros(N_STEP, ctx, dtype=torch.int64)
    for r, ln in enumerate(lengths):
        ids[r, 0] = SOT
        ids[r, 1 : ln - 1] = torch.randint(1, SOT, (ln - 2,), generator=g)
        ids[r, ln - 1] = EOT
    s = TINY_CFG["vision_cfg"]["image_size"]
    coarse = torch.randn(N_STEP, 3, 4, 4, generator=g)
    px = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    px = px + 0.5 * torch.randn(N_STEP, 3, 1, 1, generator=g) + 0.3 * torch.randn(N_STEP, 3, s, s, generator=g)
    return ids, px


def open_clip_step(model, ids, px):
    """One iteration of open_clip_train/train.py's loop, without distribution or precision
    options: set the scheduled lr, forward, ClipLoss, backward, clip the gradient norm (here to
    half of it, so the clipping factor is part of the step), AdamW, clamp the logit scale."""
    model.train()
    opt = torch.optim.AdamW(param_groups(model, WD), lr=STEP["base_lr"], betas=BETAS, eps=EPS)
    scheduler = cosine_lr(opt, STEP["base_lr"], STEP["warmup"], STEP["total_steps"])
    lr = scheduler(STEP["step"])
    opt.zero_grad()
    image_features, text_features, scale = model(px, ids)
    loss = ClipLoss()(image_features, text_features, scale)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    norm = torch.sqrt(sum((gr.double() ** 2).sum() for gr in grads.values())).item()
    max_norm = norm / 2
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, norm_type=2.0)
    opt.step()
    before_clamp = model.logit_scale.detach().clone()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    meta = {"lr": lr, "grad_norm": norm, "max_grad_norm": max_norm, "loss": loss.item()}
    return loss, grads, before_clamp, meta


# A start above open_clip's clamp (a checkpoint can hold one): one step moves t by about lr,
# far less than 0.01, so the clamp must bring it back to exactly ln(100).
CLAMP_START = math.log(100) + 0.01


def train_step_fixture() -> tuple[dict, dict]:
    ids, px = step_batch()
    model = tiny_model()
    loss, grads, before_clamp, meta = open_clip_step(model, ids, px)
    assert before_clamp.item() < math.log(100), "the main step does not reach the clamp"
    out = {"input_ids": ids, "pixel_values": px, "loss": loss.detach().reshape(1)}
    for n, gr in grads.items():
        out[f"grad.{n}"] = gr
    for n, p in model.named_parameters():
        out[f"param.{n}"] = p.detach().clone()
    # The clamp: the same step from a logit scale above ln(100); only the scale is kept.
    probe = tiny_model()
    with torch.no_grad():
        probe.logit_scale.fill_(CLAMP_START)
    out["clamp.logit_scale_start"] = probe.logit_scale.detach().clone().reshape(1)
    _, _, before, clamp_meta = open_clip_step(probe, ids, px)
    assert before.item() > math.log(100)
    out["clamp.logit_scale_before_clamp"] = before.reshape(1)
    out["clamp.logit_scale"] = probe.logit_scale.detach().clone().reshape(1)
    meta["clamp_max_grad_norm"] = clamp_meta["max_grad_norm"]
    return out, meta


# --------------------------------------------------------------------------------------

def save(name: str, tensors: dict):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT / name))
    back = load_file(str(OUT / name))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def main():
    torch.set_num_threads(1)  # one summation order, so the files are reproducible
    torch.use_deterministic_algorithms(True)
    # Rewrites its own files; README.md (by hand) stays.
    shutil.rmtree(OUT / "tiny", ignore_errors=True)
    (OUT / "tiny").mkdir(parents=True)

    save("clip_loss.safetensors", clip_loss_fixture())
    save("gcl_loss.safetensors", gcl_loss_fixture())

    model = tiny_model()
    (OUT / "tiny" / "open_clip_config.json").write_text(json.dumps(TINY_CFG, indent=2) + "\n")
    save("tiny/open_clip_model.safetensors", dict(model.state_dict()))
    names = [n for n, _ in model.named_parameters()]
    assert set(names) == set(model.state_dict()), "every state-dict entry is a parameter"
    decayed = [n for n, p in model.named_parameters() if not no_decay(n, p)]
    not_decayed = [n for n, p in model.named_parameters() if no_decay(n, p)]

    save("adamw.safetensors", adamw_fixture())
    step, step_meta = train_step_fixture()
    save("train_step.safetensors", step)

    manifest = {
        "generator": "tools/gen_train_fixtures.py",
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "model": TINY_CFG,
        "parameters": sum(p.numel() for p in model.parameters()),
        "adamw": {
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": WD,
            "lrs": list(ADAMW_LRS),
            "decayed": decayed,
            "not_decayed": not_decayed,
        },
        "gcl": {
            "field_weights": GCL_FIELD_WEIGHTS,
            "extra_weight": GCL_EXTRA_WEIGHT,
            "score_range": list(GCL_SCORE_RANGE),
        },
        "train_step": {**STEP, **step_meta, "batch": N_STEP, "logit_scale_clamp": [0.0, math.log(100)]},
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file() and p.name != "README.md")
    print(json.dumps(manifest["train_step"], indent=2))
    print(f"decayed: {decayed}")
    print(f"not decayed: {not_decayed}")
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
