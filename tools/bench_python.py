"""The Python package against the gclip binary, on the same model, images and cores (issue 13):

- start-up: `import gclip` + `gclip.load(model)` in a fresh interpreter, against the whole of
  `gclip embed text` of one text (process start, load, one forward pass, write); and the like
  for like measure, time to the first embedding: a fresh interpreter's import, load and
  `encode_text` of that one text (numpy, imported by the first result, included);
- encode_image throughput: `model.encode_image(paths)` against `gclip embed image` of the same
  list and batch size (each side's wall time, load excluded on the CLI side by subtracting the
  one-text run's time);
- Spark `local[N]` images/s (`gclip.spark.embed`, session start-up excluded) with --spark.

Rounds alternate the sides and the best of each is kept, so that load from other processes
penalises neither alone. Usage (the test venv, tools/test_python.sh, has everything):
  target/pyenv/bin/python tools/bench_python.py --model DIR [--arch A] --images N [--rounds R]
      [--gclip target/debug/gclip] [--spark]
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = ROOT / "tests" / "fixtures" / "images"
PHOTOS = ["photo_chelsea.jpg", "photo_coffee.webp", "rgb_301x199.png", "tiff_rgb.tif",
          "photo_logo_rgba.png", "l_301x199.png", "jpeg_cmyk.jpg", "gif_transparent.gif"]


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kw)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--arch")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gclip", default=str(ROOT / "target" / "debug" / "gclip"))
    ap.add_argument("--spark", action="store_true")
    a = ap.parse_args()
    model_args = ["--model", a.model] + (["--arch", a.arch] if a.arch else [])
    paths = [str(IMAGES / PHOTOS[i % len(PHOTOS)]) for i in range(a.images)]
    tmp = pathlib.Path(tempfile.mkdtemp())
    lst = tmp / "images.txt"
    lst.write_text("\n".join(paths) + "\n")
    load_py = (f"import gclip; gclip.load({a.model!r}, arch={a.arch!r})")
    first_py = (f"import gclip; gclip.load({a.model!r}, arch={a.arch!r}).encode_text(['a cat'])")
    encode_py = (
        "import sys, time, gclip\n"
        f"m = gclip.load({a.model!r}, arch={a.arch!r}, batch_size={a.batch_size})\n"
        f"paths = open({str(lst)!r}).read().split()\n"
        "t = time.perf_counter(); m.encode_image(paths); print(time.perf_counter() - t)\n"
    )
    best = {}

    def keep(name, value):
        best[name] = min(best.get(name, float("inf")), value)

    for _ in range(a.rounds):
        keep("python import+load", timed([sys.executable, "-c", load_py]))
        keep("python import+load+encode 1 text", timed([sys.executable, "-c", first_py]))
        keep("cli embed 1 text", timed([a.gclip, "embed", "text", *model_args, "a cat",
                                        "--output", str(tmp / "t.npy")]))
        r = subprocess.run([sys.executable, "-c", encode_py], check=True, capture_output=True,
                           text=True)
        keep("python encode_image", float(r.stdout.strip().splitlines()[-1]))
        keep("cli embed image", timed([a.gclip, "embed", "image", *model_args, "--input",
                                       str(lst), "--batch-size", str(a.batch_size),
                                       "--output", str(tmp / "i.npy")]))
    cli_images = best["cli embed image"] - best["cli embed 1 text"]
    print(f"images: {a.images}, batch size {a.batch_size}, best of {a.rounds} rounds, "
          f"{os.cpu_count()} CPUs")
    for k, v in best.items():
        print(f"  {k}: {v:.3f} s")
    print(f"  python encode_image: {a.images / best['python encode_image']:.2f} images/s")
    print(f"  cli embed image (start-up subtracted): {a.images / cli_images:.2f} images/s")
    print(f"  python / cli throughput: {cli_images / best['python encode_image']:.3f}")
    print(f"  python import+load / cli start-up: "
          f"{best['python import+load'] / best['cli embed 1 text']:.3f}")
    print(f"  python first embedding / cli start-up: "
          f"{best['python import+load+encode 1 text'] / best['cli embed 1 text']:.3f}")
    if a.spark:
        spark_bench(a, paths, cli_images)


def spark_bench(a, paths, cli_images):
    from pyspark.sql import SparkSession

    import gclip.spark

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    cores = os.cpu_count()
    spark = (SparkSession.builder.master(f"local[{cores}]")
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.createDataFrame([(i, p) for i, p in enumerate(paths)], "id long, path string")
    df = df.repartition(cores).cache()
    df.count()
    runs = []
    for _ in range(a.rounds):
        out = gclip.spark.embed(df, "path", model=a.model, arch=a.arch, batch_size=a.batch_size)
        t = time.perf_counter()
        n = out.filter("embedding is not null").count()
        runs.append(time.perf_counter() - t)
        assert n == len(paths), n
    # The first run loads the model in each worker; later ones find it cached.
    print(f"spark local[{cores}]: first run {runs[0]:.3f} s (model loads), best later run "
          f"{min(runs[1:] or runs):.3f} s: {len(paths) / min(runs[1:] or runs):.2f} images/s, "
          f"{cli_images / min(runs[1:] or runs):.3f} of the CLI's")
    spark.stop()


if __name__ == "__main__":
    main()
