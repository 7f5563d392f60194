#!/usr/bin/env python3
"""Generate the zero-shot fixtures under tests/fixtures/zeroshot/.

Run by hand (never by CI), with the reference venv (tools/setup_ref_env.sh) and the emoji
packages fetched by tools/fetch_data.sh:

    tools/.venv/bin/python tools/gen_zeroshot_fixtures.py

Writes:
  emoji/<category>/<vendor>_<code>.png   a small image-folder dataset: Noto (Google, Apache-2.0)
                                         and Twemoji (Twitter, CC-BY 4.0) emoji at 64 px, with
                                         the emoji-datasource `category` as the class
  emoji_classnames.json                  folder -> category name, as the package spells it
  eval_reference.json                    open_clip + numpy on the oc-fullvocab fixture model:
                                         per-image logits, top-1/top-5, mean per-class recall
  classify_reference.json                class vectors, probabilities and a similarity matrix
  metrics_reference.json                 random logits and targets -> numpy top-k accuracy and
                                         balanced accuracy (scikit-learn's definition)

Everything is computed here independently of gclip (open_clip's tokenizer, transforms,
build_zero_shot_classifier; numpy for the metrics), so the Rust tests compare two
implementations.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "zeroshot"
MODEL_DIR = FIXTURES / "models" / "oc-fullvocab"
EMOJI = ROOT / "data" / "emoji"
VENDORS = ("google", "twitter")  # Apple's images are not freely licensed: not committed
PER_CATEGORY = 2  # emoji per category, each in both vendors' artwork
SEED = 7


def slug(category: str) -> str:
    return "_".join(w.lower() for w in category.replace("&", " ").split())


def build_emoji_dataset() -> dict[str, str]:
    meta = json.loads((EMOJI / "emoji-datasource-google" / "package" / "emoji.json").read_text())
    rng = random.Random(SEED)
    by_cat: dict[str, list[dict]] = {}
    for e in meta:
        if e["category"] == "Component":  # five skin-tone swatches, not a class
            continue
        if all(e.get(f"has_img_{v}") for v in VENDORS):
            by_cat.setdefault(e["category"], []).append(e)
    dataset = OUT / "emoji"
    if dataset.exists():
        shutil.rmtree(dataset)
    names = {}
    for cat in sorted(by_cat):
        folder = dataset / slug(cat)
        folder.mkdir(parents=True)
        names[slug(cat)] = cat
        for e in rng.sample(sorted(by_cat[cat], key=lambda e: e["unified"]), PER_CATEGORY):
            for v in VENDORS:
                src = EMOJI / f"emoji-datasource-{v}" / "package" / "img" / v / "64" / e["image"]
                shutil.copyfile(src, folder / f"{v}_{e['image']}")
    (OUT / "emoji_classnames.json").write_text(json.dumps(names, indent=1) + "\n")
    return names


def load_model():
    cfg = json.loads((MODEL_DIR / "open_clip_config.json").read_text())
    model = open_clip.model.CLIP(
        embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
        quick_gelu=cfg.get("quick_gelu", False),
    ).float().eval()
    open_clip.load_checkpoint(model, str(MODEL_DIR / "open_clip_model.safetensors"), strict=True)
    preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    return model, open_clip.get_tokenizer("ViT-B-32"), preprocess


def image_features(model, preprocess, paths):
    with torch.no_grad():
        px = torch.stack([preprocess(Image.open(p)) for p in paths])
        return model.encode_image(px, normalize=True)


def templates_of(ts):
    return [t("{}") for t in ts]


def topk_hits(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((order == targets[:, None]).any(axis=1).mean())


def balanced_accuracy(targets: np.ndarray, preds: np.ndarray, n_classes: int) -> float:
    # scikit-learn's balanced_accuracy_score: recall per class present in y_true, averaged.
    cm = np.zeros((n_classes, n_classes))
    np.add.at(cm, (targets, preds), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = np.diag(cm) / cm.sum(axis=1)
    return float(np.nanmean(per_class))


def metric_summary(logits: np.ndarray, targets: np.ndarray) -> dict:
    n_classes = logits.shape[1]
    preds = logits.argmax(axis=1)
    return {
        "top1": topk_hits(logits, targets, 1),
        "top5": topk_hits(logits, targets, 5) if n_classes >= 5 else None,
        "mean_per_class_recall": balanced_accuracy(targets, preds, n_classes),
    }


def gen_eval(model, tokenizer, preprocess, names: dict[str, str]) -> None:
    dataset = OUT / "emoji"
    folders = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    images, targets = [], []
    for c, f in enumerate(folders):
        for p in sorted((dataset / f).rglob("*.png")):
            images.append(p)
            targets.append(c)
    feats = image_features(model, preprocess, images)
    scale = model.logit_scale.exp().item()
    runs = []
    for name, classnames, templates in (
        ("simple, names from emoji_classnames.json", [names[f] for f in folders],
         SIMPLE_IMAGENET_TEMPLATES),
        ("openai-imagenet, names from folders", [f.replace("_", " ") for f in folders],
         OPENAI_IMAGENET_TEMPLATES),
    ):
        with torch.no_grad():
            w = build_zero_shot_classifier(model, tokenizer, classnames, templates)
        logits = (scale * feats @ w).numpy()
        t = np.array(targets)
        runs.append({
            "name": name,
            "classnames": classnames,
            "templates": templates_of(templates),
            "logits": logits.round(7).tolist(),
            **metric_summary(logits, t),
        })
        print(f"  eval {name}: {runs[-1]['top1']:.4f} / {runs[-1]['top5']:.4f} / "
              f"{runs[-1]['mean_per_class_recall']:.4f}")
    ref = {
        "model": "tests/fixtures/models/oc-fullvocab",
        "logit_scale": scale,
        "images": [str(p.relative_to(dataset)) for p in images],
        "targets": targets,
        "runs": runs,
    }
    (OUT / "eval_reference.json").write_text(json.dumps(ref) + "\n")


CLASSIFY_IMAGES = ["photo_chelsea.jpg", "photo_astronaut.png", "clipart_0.png"]
CAPTIONS = ["a photo of a cat", "a photo of a dog", "a photo of two cats",
            "a cat sleeping on a sofa", "a drawing of a cat", "a photo of a car"]
LABELS = ["cat", "dog", "astronaut", "coffee", "rocket", "horse"]


def gen_classify(model, tokenizer, preprocess) -> None:
    paths = [FIXTURES / "images" / n for n in CLASSIFY_IMAGES]
    feats = image_features(model, preprocess, paths)
    ckpt_scale = model.logit_scale.exp().item()
    cases = []
    for name, labels, templates, scale in (
        ("captions, no templates", CAPTIONS, None, None),
        ("labels, three templates, logit scale 10", LABELS,
         ["a photo of a {}.", "a drawing of a {}.", "art of the {}."], 10.0),
        ("labels, simple templates", LABELS, templates_of(SIMPLE_IMAGENET_TEMPLATES), None),
    ):
        with torch.no_grad():
            if templates is None:
                w = model.encode_text(tokenizer(labels), normalize=True).T
            else:
                w = build_zero_shot_classifier(model, tokenizer, labels, templates)
        s = ckpt_scale if scale is None else scale
        probs = (s * feats @ w).softmax(dim=-1)
        cases.append({
            "name": name,
            "labels": labels,
            "templates": templates or [],
            "logit_scale": scale,
            "class_vectors": w.T.numpy().round(7).tolist(),
            "probabilities": probs.numpy().round(7).tolist(),
        })
    texts = ["a photo of a cat", "a dog"]
    with torch.no_grad():
        t = model.encode_text(tokenizer(texts), normalize=True)
    items = torch.cat([t, feats[:2]])
    ref = {
        "model": "tests/fixtures/models/oc-fullvocab",
        "checkpoint_logit_scale": ckpt_scale,
        "images": CLASSIFY_IMAGES,
        "cases": cases,
        "similarity": {
            "texts": texts,
            "images": CLASSIFY_IMAGES[:2],
            "cosine": (items @ items.T).numpy().round(7).tolist(),
        },
    }
    (OUT / "classify_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"  classify: {len(cases)} cases, top label of image 0 in case 0: "
          f"{CAPTIONS[int(np.argmax(cases[0]['probabilities'][0]))]}")


def gen_metrics() -> None:
    rng = np.random.default_rng(SEED)
    cases = []
    for n, k in ((60, 7), (10, 4), (25, 12)):
        logits = rng.standard_normal((n, k)).astype(np.float32)
        # Leave the last class without images (balanced accuracy skips it).
        targets = rng.integers(0, k - 1, n)
        # Make the model right more often than chance so the metrics are not all small.
        logits[np.arange(n), targets] += rng.uniform(0, 1.5, n).astype(np.float32)
        cases.append({"logits": logits.tolist(), "targets": targets.tolist(),
                      **metric_summary(logits, targets)})
    (OUT / "metrics_reference.json").write_text(json.dumps(cases) + "\n")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    names = build_emoji_dataset()
    model, tokenizer, preprocess = load_model()
    gen_eval(model, tokenizer, preprocess, names)
    gen_classify(model, tokenizer, preprocess)
    gen_metrics()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
