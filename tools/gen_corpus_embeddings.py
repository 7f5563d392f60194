#!/usr/bin/env python3
"""Reference embeddings of the whole tokenizer corpus and every fixture image, end to end
through each reference library's own tokenizer and image preprocessing (run by hand).

- open_clip convention: tests/fixtures/models/oc-fullvocab with `open_clip.tokenize` and
  open_clip's inference transform.
- transformers convention: a new tiny full-vocabulary CLIPModel directory,
  tests/fixtures/models/hf-fullvocab (weights, tokenizer files from tests/fixtures/tokenizer/hf,
  preprocessor_config.json), with `CLIPTokenizer(padding="max_length")` and the PIL backend of
  `CLIPImageProcessor` (`CLIPImageProcessorPil` in transformers 5).

Output: tests/fixtures/corpus/{open_clip,transformers}.safetensors with `text_embeds`
(L2-normalised in float64, stored float32) and `image_embeds`, and images.json (the image file
names, in row order).  Usage: python tools/gen_corpus_embeddings.py
"""
from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import gen_fixtures as gf  # noqa: E402  (shared model builders and randomisers)

import open_clip  # noqa: E402
from transformers import CLIPImageProcessor, CLIPTokenizer  # noqa: E402
# transformers 5's CLIPImageProcessor is torchvision-based; the reference is the PIL one.
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def l2(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return (x / x.norm(dim=-1, keepdim=True)).float()


def corpus() -> list[str]:
    with gzip.open(FIX / "tokenizer" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def images() -> list[Path]:
    return sorted(p for p in (FIX / "images").iterdir() if p.suffix.lower() in IMAGE_EXT)


def build_hf_fullvocab() -> Path:
    out = FIX / "models" / "hf-fullvocab"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shape = dict(vocab=49408, context=77, t_width=16, t_mlp=64, t_layers=1, t_heads=2,
                 image_size=32, patch=16, v_width=32, v_mlp=128, v_layers=1, v_heads=2, embed=16)
    cfg = gf.hf_config(shape, "quick_gelu", eos=49407, bos=49406, pad=49407)
    model = gf.build_hf(cfg, seed=5005)
    model.save_pretrained(out, safe_serialization=True)
    for f in (FIX / "tokenizer" / "hf").iterdir():
        shutil.copy(f, out / f.name)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def main() -> None:
    texts = corpus()
    files = images()
    out = FIX / "corpus"
    out.mkdir(exist_ok=True)
    (out / "images.json").write_text(json.dumps([p.name for p in files], indent=0))

    # open_clip
    oc_dir = FIX / "models" / "oc-fullvocab"
    oc_cfg = json.loads((oc_dir / "open_clip_config.json").read_text())
    model = gf.build_oc_from_cfg(oc_cfg)
    from safetensors.torch import load_file
    model.load_state_dict(load_file(oc_dir / "open_clip_model.safetensors"))
    model.eval()
    transform = open_clip.image_transform(oc_cfg["vision_cfg"]["image_size"], is_train=False)
    with torch.inference_mode():
        t = torch.cat([model.encode_text(open_clip.tokenize(texts[i:i + 256])) for i in range(0, len(texts), 256)])
        px = torch.stack([transform(Image.open(p)) for p in files])
        i = model.encode_image(px)
    save_file({"text_embeds": l2(t), "image_embeds": l2(i)}, out / "open_clip.safetensors")
    print(f"open_clip: {len(texts)} texts, {len(files)} images")

    # transformers
    hf_dir = build_hf_fullvocab()
    hf = gf.CLIPModel.from_pretrained(hf_dir).float().eval()
    gf._set_eager(hf)
    tok = CLIPTokenizer.from_pretrained(hf_dir)
    proc = CLIPImageProcessorPil.from_pretrained(hf_dir)
    with torch.inference_mode():
        ids = tok(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
        t = torch.cat([gf._pooled(hf.get_text_features(input_ids=ids[k:k + 256])) for k in range(0, len(texts), 256)])
        px = proc(images=[Image.open(p) for p in files], return_tensors="pt")["pixel_values"]
        i = gf._pooled(hf.get_image_features(pixel_values=px))
    save_file({"text_embeds": l2(t), "image_embeds": l2(i)}, out / "transformers.safetensors")
    print(f"transformers: {len(texts)} texts, {len(files)} images")


if __name__ == "__main__":
    main()
