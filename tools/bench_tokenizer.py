#!/usr/bin/env python3
"""Time open_clip's and transformers' CLIP tokenizers on the captions that
`cargo run --release -p gclip --example bench_tokenizer` uses, on one core.

    taskset -c 0 env RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
        /work/venv-ref/py/bin/python tools/bench_tokenizer.py [--n 50000]

Needs open_clip_torch and transformers (the fixture directory tests/fixtures/tokenizer/hf).
"""

import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BRANDS = ["Samsung", "Apple", "Nike", "IKEA", "Sony", "Bosch", "LEGO", "Philips", "Adidas", "Canon", "Müller", "Café Noir"]
ITEMS = [
    "Wireless Headphones", "Running Shoes", "Smart TV", "Coffee Maker", "Desk Lamp", "Backpack", "Water Bottle",
    "Gaming Mouse", "T-Shirt", "Office Chair", "Phone Case", "Blender", "Sunglasses", "Wall Clock", "Yoga Mat",
    "Kitchen Knife Set",
]
COLOURS = ["Black", "White", "Navy Blue", "Red", "Grey", "Green", "Rose Gold", "Silver", "Beige", "Pink"]
EXTRAS = ["2-Pack", "XL", "(2024 Model)", "- Waterproof", "with USB-C", "500ml", "Men's", "for Kids"]


def captions(n):
    """Same generator (64-bit LCG) as the Rust example, so both time the same strings."""
    state = 42
    mask = (1 << 64) - 1

    def nxt():
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) & mask
        return state >> 33

    out = []
    for i in range(n):
        b = BRANDS[nxt() % len(BRANDS)]
        it = ITEMS[nxt() % len(ITEMS)]
        c = COLOURS[nxt() % len(COLOURS)]
        e = EXTRAS[nxt() % len(EXTRAS)]
        num = nxt() % 1000
        out.append(f"{b} {it} {c} {e} {num}" + (" – Free Shipping!" if i % 10 == 0 else ""))
    return out


def report(name, n, secs):
    print(f"{name:<52} {n / secs:>9.0f} captions/s  {n / secs * 60 / 1e6:>6.2f} M/min  {secs * 1e6 / n:>7.2f} µs/caption (n={n})")


def main():
    n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 50000
    texts = captions(n)
    print("example caption:", repr(texts[1]))

    import open_clip
    from transformers import CLIPTokenizerFast

    tok = open_clip.get_tokenizer("ViT-B-32")
    t = time.perf_counter()
    ids = tok(texts)
    report("open_clip.tokenize(list), first pass", n, time.perf_counter() - t)
    t = time.perf_counter()
    tok(texts)
    report("open_clip.tokenize(list), warm cache", n, time.perf_counter() - t)

    hf = CLIPTokenizerFast.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "hf"))
    kw = dict(padding="max_length", truncation=True, max_length=77)
    t = time.perf_counter()
    hf(texts, **kw)
    report("CLIPTokenizerFast(list), batch", n, time.perf_counter() - t)
    m = min(n, 20000)
    t = time.perf_counter()
    for s in texts[:m]:
        hf(s, **kw)
    report("CLIPTokenizerFast(str), one call per caption", m, time.perf_counter() - t)
    print("checksum", int(ids[:, 1].sum()))


if __name__ == "__main__":
    main()
