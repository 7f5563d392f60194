#!/usr/bin/env python3
"""Python side of the classify latency benchmark: the CLIP tutorial code (transformers
CLIPModel + CLIPProcessor), one image against six captions.

    python tools/bench_classify.py MODEL_DIR IMAGE            # the whole script, as a user runs it
    python tools/bench_classify.py MODEL_DIR IMAGE --warm 20  # then 20 timed calls in-process

Prints the probabilities (like the tutorial) and, on stderr, how long the imports, the
loading and the call took. Run the first form under `/usr/bin/time -v` (see
tools/bench_classify.sh) for the process's wall time and peak memory.
"""

import sys
import time

t0 = time.perf_counter()

import argparse  # noqa: E402

from PIL import Image  # noqa: E402
from transformers import CLIPModel, CLIPProcessor  # noqa: E402

t_import = time.perf_counter()

CAPTIONS = [
    "a photo of a cat",
    "a photo of a dog",
    "a photo of two cats",
    "a cat sleeping on a sofa",
    "a drawing of a cat",
    "a photo of a car",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--warm", type=int, default=0, help="timed in-process calls after the first")
    args = ap.parse_args()

    # The tutorial, as written.
    model = CLIPModel.from_pretrained(args.model)
    processor = CLIPProcessor.from_pretrained(args.model)
    t_load = time.perf_counter()

    def call():
        image = Image.open(args.image)
        inputs = processor(text=CAPTIONS, images=image, return_tensors="pt", padding=True)
        outputs = model(**inputs)
        logits_per_image = outputs.logits_per_image
        return logits_per_image.softmax(dim=1)

    probs = call()
    t_call = time.perf_counter()
    for c, p in sorted(zip(CAPTIONS, probs[0].tolist()), key=lambda x: -x[1]):
        print(f"{100 * p:7.2f}%  {c}")
    print(f"imports {1e3 * (t_import - t0):.0f} ms, load {1e3 * (t_load - t_import):.0f} ms, "
          f"first call {1e3 * (t_call - t_load):.0f} ms", file=sys.stderr)
    if args.warm:
        times = []
        for _ in range(args.warm):
            t = time.perf_counter()
            call()
            times.append(1e3 * (time.perf_counter() - t))
        times.sort()
        import torch
        print(f"warm call: median {times[len(times) // 2]:.1f} ms, min {times[0]:.1f} ms, "
              f"max {times[-1]:.1f} ms ({len(times)} runs, {torch.get_num_threads()} threads)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
