#!/usr/bin/env python3
"""Time Pillow doing what open_clip's eval transform does before its float steps: open and
decode the file, Resize(size, BICUBIC) of the shorter side, CenterCrop(size), convert("RGB").
One core: run with OMP_NUM_THREADS=1 (Pillow itself is single-threaded).

    OMP_NUM_THREADS=1 python tools/bench_pillow_preprocess.py data/bench/photo_4000x3000.jpg data/bench/photo_640x480.png
"""
import sys
import time

import open_clip
from PIL import Image

size = 224
steps = open_clip.image_transform(size, is_train=False).transforms[:-2]  # Resize, CenterCrop, convert


def run(path):
    im = Image.open(path)
    for s in steps:
        im = s(im)
    return im


for path in sys.argv[1:]:
    run(path)  # warm the page cache
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 5.0 or n < 5:
        run(path)
        n += 1
    dt = time.perf_counter() - t0
    print(f"{path}: Pillow {Image.__version__}: {n / dt:.1f} images/s ({1000 * dt / n:.1f} ms/image), size {size}")
