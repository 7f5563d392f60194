#!/usr/bin/env python3
"""Make the benchmark inputs under data/bench/ (git-ignored): a 4000x3000 JPEG tiled from
upscaled real photos with mild sensor-like noise (about the size of a phone photo), and a
640x480 PNG photo. Needs tools/fetch_data.sh to have run. Usage: python tools/make_bench_images.py"""
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(__file__).resolve().parent.parent
data = root / "data"
out = data / "bench"
out.mkdir(parents=True, exist_ok=True)
photos = [data / "skimage" / n for n in ("chelsea.png", "coffee.png", "astronaut.png", "motorcycle_left.png")]
photos.append(data / "sklearn" / "china.jpg")
canvas = Image.new("RGB", (4000, 3000))
tiles = [Image.open(p).convert("RGB") for p in photos]
for i, (x, y) in enumerate([(0, 0), (2000, 0), (0, 1500), (2000, 1500)]):
    canvas.paste(tiles[i].resize((2000, 1500), Image.Resampling.LANCZOS), (x, y))
a = np.asarray(canvas).astype(np.float32)
a += np.random.default_rng(0).normal(0, 4, a.shape)
Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(out / "photo_4000x3000.jpg", quality=90)
tiles[4].resize((640, 480), Image.Resampling.LANCZOS).save(out / "photo_640x480.png")
for p in sorted(out.iterdir()):
    print(p, p.stat().st_size)
