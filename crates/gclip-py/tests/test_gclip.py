"""Tests of the Python package against the `gclip` binary on the committed fixture models.

The binary is $GCLIP_BIN (CI sets it; default: the workspace's target/debug/gclip). Vectors
must be bit-identical: the package and the binary run the same library code.
"""

import gc
import json
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

import gclip

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
IMAGES = FIXTURES / "images"
OC = FIXTURES / "models" / "oc-fullvocab"
OC_MODEL = str(OC / "open_clip_model.safetensors")
OC_ARCH = str(OC / "open_clip_config.json")
HF = str(FIXTURES / "models" / "hf-fullvocab")
GCLIP_BIN = os.environ.get("GCLIP_BIN", str(ROOT / "target" / "debug" / "gclip"))

# Lossless files of every mode Pillow decodes into (PIL and gclip read the same pixels).
MODE_FILES = [
    "bilevel.png",  # 1
    "l_301x199.png",  # L
    "la_301x199.png",  # LA
    "p_plain.png",  # P
    "p_trns_index.png",  # P, transparency index
    "p_trns_alphas.png",  # P, palette alphas
    "rgb_301x199.png",  # RGB
    "rgb_trns.png",  # RGB, transparency key
    "photo_logo_rgba.png",  # RGBA
    "grey16.png",  # I;16
    "l_trns.png",  # L, transparency key
    "gif_transparent.gif",
    "bmp_8bit_palette.bmp",
]
CLI_IMAGES = MODE_FILES + ["photo_chelsea.jpg", "photo_coffee.webp", "jpeg_cmyk.jpg", "tiff_rgb.tif"]
TEXTS = ["a photo of a cat", "a drawing of a dog", "", "ça coûte 3€ — naïve café", "x " * 100]

MODELS = {
    "open_clip": dict(model=OC_MODEL, arch=OC_ARCH),
    "transformers": dict(model=HF, arch=None),
}


def cli(*args):
    r = subprocess.run([GCLIP_BIN, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"gclip {' '.join(args)} failed:\n{r.stderr}")
    return r


def model_args(which):
    m = MODELS[which]
    return ["--model", m["model"]] + (["--arch", m["arch"]] if m["arch"] else [])


@pytest.fixture(scope="module", params=sorted(MODELS))
def which(request):
    return request.param


@pytest.fixture(scope="module")
def model(which):
    return gclip.load(**MODELS[which])


@pytest.fixture(scope="module")
def oc():
    return gclip.load(OC_MODEL, arch=OC_ARCH)


def test_text_is_bit_identical_to_cli(which, model, tmp_path):
    for normalize in (True, False):
        out = tmp_path / f"t{normalize}.npy"
        cli("embed", "text", *model_args(which), *TEXTS, "--output", str(out),
            *([] if normalize else ["--no-normalize"]))
        want = np.load(out)
        got = model.encode_text(TEXTS, normalize=normalize)
        assert got.dtype == np.float32 and got.shape == (len(TEXTS), model.embed_dim)
        assert np.array_equal(got, want)


def test_images_are_bit_identical_to_cli(which, model, tmp_path):
    paths = [str(IMAGES / f) for f in CLI_IMAGES]
    out = tmp_path / "i.npy"
    cli("embed", "image", *model_args(which), *paths, "--output", str(out))
    want = np.load(out)
    got = model.encode_image(paths)
    assert got.shape == (len(paths), model.embed_dim)
    assert np.array_equal(got, want)
    # Unnormalised too, and through a batch size that splits the list (the same on both sides:
    # the model's sums depend on a batch's size).
    cli("embed", "image", *model_args(which), *paths, "--output", str(out), "--no-normalize",
        "--batch-size", "3")
    small = gclip.load(**MODELS[which], batch_size=3)
    assert np.array_equal(small.encode_image(paths, normalize=False), np.load(out))


def test_every_input_kind_gives_the_files_vector(which, model):
    from PIL import Image

    for name in MODE_FILES:
        path = IMAGES / name
        want = model.encode_image([str(path)])
        img = Image.open(path)
        img.load()
        kinds = {
            "pathlib": path,
            "bytes": path.read_bytes(),
            "bytearray": bytearray(path.read_bytes()),
            "PIL": img,
        }
        if img.mode in ("L", "RGB", "RGBA") and "transparency" not in img.info:
            kinds["numpy"] = np.asarray(img)
        for kind, item in kinds.items():
            got = model.encode_image([item])
            assert np.array_equal(got, want), f"{name} as {kind} ({img.mode})"


def test_numpy_views_and_modes(oc):
    from PIL import Image

    rgb = np.asarray(Image.open(IMAGES / "rgb_301x199.png"))
    want = oc.encode_image([rgb])
    # A non-contiguous view of the same pixels gives the same vector.
    padded = np.zeros((rgb.shape[0], rgb.shape[1] * 2, 3), np.uint8)
    padded[:, ::2] = rgb
    assert np.array_equal(oc.encode_image([padded[:, ::2]]), want)
    grey = np.asarray(Image.open(IMAGES / "l_301x199.png"))
    assert np.array_equal(oc.encode_image([grey]), oc.encode_image([str(IMAGES / "l_301x199.png")]))
    _, errors = oc.encode_image([rgb.astype(np.float32), rgb[:, :, :2]], errors="return")
    assert [i for i, _ in errors] == [0, 1]
    assert "uint8" in errors[0][1] and "shape" in errors[1][1]


def test_packed_f32_weights_give_the_same_vectors_within_rounding(monkeypatch, tmp_path):
    # Without the converted-weights cache, which would hand both loads the weights packed.
    monkeypatch.setenv("GCLIP_CONVERTED_CACHE", "off")
    packed = gclip.load(OC_MODEL, arch=OC_ARCH)
    count = packed.pack_f32_weights()
    # Every transformer linear of both towers (4 per block) where the CPU has AVX2 and FMA.
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.exists() else []
    assert (count > 0) == ("avx2" in flags and "fma" in flags), count
    assert count % 4 == 0
    assert packed.pack_f32_weights() == count
    in_place = gclip.load(OC_MODEL, arch=OC_ARCH)
    for encode, items in [
        ("encode_text", TEXTS),
        ("encode_image", [str(IMAGES / "rgb_301x199.png"), str(IMAGES / "photo_chelsea.jpg")]),
    ]:
        got, want = getattr(packed, encode)(items), getattr(in_place, encode)(items)
        cosine = (got * want).sum(axis=1)
        assert cosine.min() >= 1 - 1e-6, (encode, cosine)
    # With the cache: the first load packs them for it, the second maps them from it; both run
    # as the load that was asked to pack, to the bit.
    monkeypatch.setenv("GCLIP_CONVERTED_CACHE", str(tmp_path / "converted"))
    for _ in range(2):
        cached = gclip.load(OC_MODEL, arch=OC_ARCH)
        assert cached.pack_f32_weights() == count
        assert np.array_equal(cached.encode_text(TEXTS), packed.encode_text(TEXTS))
    written = list((tmp_path / "converted").glob("*-fp32.gclipcv"))
    assert len(written) == (1 if count else 0), written


def test_a_bad_item_is_named_and_the_rest_are_embedded(oc, tmp_path):
    good = [str(IMAGES / "photo_chelsea.jpg"), str(IMAGES / "rgb_301x199.png")]
    missing = str(tmp_path / "missing.jpg")
    items = [good[0], missing, b"not an image at all", good[1], 42]
    with pytest.raises(gclip.GclipError) as e:
        oc.encode_image(items)
    msg = str(e.value)
    assert "3 of 5 images failed" in msg
    assert f"[1] {missing}" in msg and "[2] item 2 (bytes)" in msg and "[4] int" in msg
    assert [i for i, _ in e.value.errors] == [1, 2, 4]
    rows, errors = oc.encode_image(items, errors="return")
    assert [i for i, _ in errors] == [1, 2, 4]
    want = oc.encode_image(good)
    assert np.array_equal(rows[[0, 3]], want)
    assert np.isnan(rows[[1, 2, 4]]).all()
    assert np.array_equal(e.value.result[[0, 3]], want)


def test_two_threads_embed_at_once(oc):
    paths = [str(IMAGES / f) for f in CLI_IMAGES] * 4
    want_images = oc.encode_image(paths)
    want_texts = oc.encode_text(TEXTS * 20)
    results = {}
    start = threading.Barrier(2)

    def work(name, fn):
        start.wait()
        results[name] = [fn() for _ in range(3)]

    threads = [
        threading.Thread(target=work, args=("images", lambda: oc.encode_image(paths))),
        threading.Thread(target=work, args=("texts", lambda: oc.encode_text(TEXTS * 20))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads)
    assert len(results["images"]) == 3 and len(results["texts"]) == 3
    assert all(np.array_equal(r, want_images) for r in results["images"])
    assert all(np.array_equal(r, want_texts) for r in results["texts"])


def test_tokenize_and_preprocess_match_cli(which, model, tmp_path):
    out = tmp_path / "ids.npy"
    cli("tokenize", *model_args(which), *TEXTS, "--output", str(out))
    ids = model.tokenize(TEXTS)
    assert ids.dtype == np.int64 and np.array_equal(ids, np.load(out))
    paths = [str(IMAGES / f) for f in CLI_IMAGES]
    out = tmp_path / "px.npy"
    cli("preprocess", *model_args(which), *paths, "--output", str(out))
    px = model.preprocess(paths)
    s = model.image_size
    assert px.shape == (len(paths), 3, s, s) and np.array_equal(px, np.load(out))


def test_classify_matches_cli(oc):
    labels = ["a photo of a cat", "a photo of a dog", "a photo of a car"]
    images = [str(IMAGES / "photo_chelsea.jpg"), str(IMAGES / "photo_coffee.webp")]
    r = cli("classify", "--model", OC_MODEL, "--arch", OC_ARCH, "--json", "--labels", *labels,
            "--", *images)
    probs = oc.classify(images, labels)
    assert probs.shape == (2, 3)
    for row, line in zip(probs, r.stdout.strip().splitlines()):
        for entry in json.loads(line)["labels"]:
            assert row[labels.index(entry["label"])] == np.float32(entry["probability"])
    t = oc.classify(images, ["cat", "dog"], templates="simple")
    assert np.allclose(t.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(gclip.GclipError, match="unknown"):
        oc.classify(images, ["cat"], templates="no-such-set")


def test_similarity_and_logit_scale(oc):
    images = [str(IMAGES / "photo_chelsea.jpg"), str(IMAGES / "rgb_301x199.png")]
    texts = ["a cat", "a dog", "a car"]
    cos = oc.similarity(images, texts)
    want = oc.encode_image(images) @ oc.encode_text(texts).T
    assert cos.shape == (2, 3) and np.array_equal(cos, want)
    assert oc.logit_scale > 0
    logits = oc.similarity(images, texts, scores="logits")
    assert np.allclose(logits, cos * oc.logit_scale)
    probs = oc.similarity(images, texts, scores="probs")
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_load_errors_carry_gclips_message(tmp_path):
    with pytest.raises(gclip.GclipError, match="needs --arch"):
        gclip.load(OC_MODEL)
    with pytest.raises(gclip.GclipError, match="precision"):
        gclip.load(OC_MODEL, arch=OC_ARCH, precision="fp8")
    with pytest.raises(gclip.GclipError, match="batch_size"):
        gclip.load(OC_MODEL, arch=OC_ARCH, batch_size=0)
    with pytest.raises(TypeError):
        gclip.load(OC_MODEL, arch=OC_ARCH).encode_text("one string")


def test_collection_round_trip(tmp_path):
    path = tmp_path / "shop"
    c = gclip.Collection.create(path, OC_MODEL, arch=OC_ARCH, embed="title:0.5,image:0.5")
    docs = [
        {"id": "p1", "title": "a striped cat", "image": str(IMAGES / "photo_chelsea.jpg"),
         "price": 40, "tags": ["summer"]},
        {"id": "p2", "title": "a cup of coffee", "image": str(IMAGES / "photo_coffee.webp"),
         "price": 12, "tags": ["winter"]},
        {"id": "p3", "title": "a rocket", "image": "rgb_301x199.png", "price": 99},
    ]
    report = c.add(docs, base=IMAGES)
    assert report["written"] == 3 and len(c) == 3
    with pytest.raises(gclip.GclipError, match="1 of 1 documents failed") as e:
        c.add([{"id": "bad", "title": "x", "image": str(tmp_path / "none.png")}])
    assert "none.png" in str(e.value) and len(c) == 3
    hits = c.search(q="a striped cat", limit=3)
    assert [h["id"] for h in hits] and {h["id"] for h in hits} == {"p1", "p2", "p3"}
    assert all(-1.0001 <= h["score"] <= 1.0001 for h in hits)
    cheap = c.search(q="anything", filter="price < 50", limit=10)
    assert {h["id"] for h in cheap} == {"p1", "p2"}
    assert [h["id"] for h in c.search(like="p2", limit=1)] == ["p2"]
    by_image = c.search(image=IMAGES / "photo_coffee.webp", limit=3)
    assert len(by_image) == 3
    by_bytes = c.search(image=(IMAGES / "photo_coffee.webp").read_bytes(), limit=3)
    assert [h["id"] for h in by_bytes] == [h["id"] for h in by_image]
    assert c.update("p2", {"price": 60, "tags": None}) is False
    assert c.get("p2")["fields"]["price"] == 60 and "tags" not in c.get("p2")["fields"]
    assert c.update("p2", {"title": "a mug"}) is True
    assert c.delete(["p3", "nope"]) == 1 and len(c) == 2
    with pytest.raises(gclip.GclipError, match="filter"):
        c.search(q="x", filter="price <")
    # The exceptions' tracebacks hold the collection (frames of its methods): drop them too.
    del c, e
    gc.collect()
    c = gclip.Collection.open(path)
    assert len(c) == 2 and c.get("p3") is None
    assert {h["id"] for h in c.search(q="a mug", limit=5)} == {"p1", "p2"}
    assert c.info["spec"]["fields"][0]["name"] == "title"
    with pytest.raises(gclip.GclipError, match="already holds"):
        gclip.Collection.create(path, OC_MODEL, arch=OC_ARCH)


def test_eval_ranking_matches_cli(tmp_path):
    qrels = {"q1": {"d1": 2, "d2": 0, "d3": 1}, "q2": {"d4": 1}}
    run = {"q1": {"d1": 0.2, "d2": 0.9, "d3": 0.5}, "q2": {"d5": 0.7, "d4": 0.1}}
    (tmp_path / "qrels").write_text(
        "".join(f"{q} 0 {d} {g}\n" for q, ds in qrels.items() for d, g in ds.items()))
    (tmp_path / "run.json").write_text(json.dumps(run))
    r = cli("eval", "ranking", "--qrels", str(tmp_path / "qrels"), "--run",
            str(tmp_path / "run.json"), "--json")
    want = json.loads(r.stdout)
    got = gclip.eval_ranking(qrels, run)
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    # Both queries find their first relevant document second: reciprocal rank 1/2.
    assert got["mrr@10"] == pytest.approx(0.5)


def test_parquet_output_reads_in_pyarrow_as_the_npy(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [str(IMAGES / f) for f in CLI_IMAGES[:5]]
    args = ["embed", "image", "--model", OC_MODEL, "--arch", OC_ARCH, *paths]
    cli(*args, "--output", str(tmp_path / "x.npy"))
    cli(*args, "--output", str(tmp_path / "x.parquet"))
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.column_names == ["index", "line", "image", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.field("element", pa.float32(), False))
    want = np.load(tmp_path / "x.npy")
    got = np.array(table.column("embedding").to_pylist(), np.float32)
    assert np.array_equal(got, want)
    assert table.column("image").to_pylist() == paths
    assert table.column("index").to_pylist() == list(range(5))
    assert table.column("line").null_count == 5
    # What pyarrow writes back (nullable columns, Snappy) merges as gclip's own file does.
    pq.write_table(table, tmp_path / "again.parquet")
    cli("merge", str(tmp_path / "again.parquet"), "--output", str(tmp_path / "again.npy"))
    assert np.array_equal(np.load(tmp_path / "again.npy"), want)


def test_collection_close_context_manager_and_lexical_search(tmp_path):
    path = tmp_path / "shop"
    with gclip.Collection.create(path, OC_MODEL, arch=OC_ARCH, embed="title") as c:
        c.add([{"id": "p1", "title": "a striped cat"}, {"id": "p2", "title": "a cup of coffee"}])
        assert [h["id"] for h in c.search(q="striped", lexical=True)] == ["p1"]
        hybrid = c.search(q="coffee", hybrid=True, fusion="weighted", limit=2)
        assert hybrid[0]["id"] == "p2"
        with pytest.raises(gclip.GclipError, match="need query text"):
            c.search(like="p1", lexical=True)
        with pytest.raises(gclip.GclipError, match="fusion"):
            c.search(q="x", hybrid=True, fusion="max")
    assert c.closed
    with pytest.raises(gclip.GclipError, match="closed"):
        len(c)
    with pytest.raises(gclip.GclipError, match="closed"):
        c.search(q="x")
    c.close()  # a second close does nothing
    # Closed, the collection opens again at once (no garbage collection needed).
    again = gclip.Collection.open(path)
    assert len(again) == 2 and again.get("p1")["fields"]["title"] == "a striped cat"
    again.close()


def tiny_training_config(tmp_path, steps):
    """The tiny CLIP of the CLI's training tests (crates/gclip-cli/tests/interrupt.rs) on the
    emoji fixture, as a dict."""
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 24, "patch_size": 6, "width": 32, "layers": 2,
                       "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 2},
    }))
    return {
        "model": {"arch": str(arch)},
        "data": {"path": str(FIXTURES / "emoji-mini" / "clip-train-google.jsonl")},
        "train": {"steps": steps, "batch_size": 4, "lr": 1e-3, "warmup": 0, "seed": 0,
                  "output": str(tmp_path / "run"), "checkpoint_every": 0},
    }


def test_train_from_python_as_the_cli(tmp_path):
    config = tiny_training_config(tmp_path, steps=3)
    events = []
    summary = gclip.train(config, callback=events.append)
    assert summary["steps_done"] == 3 and not summary["stopped_early"]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert all(np.isfinite(e["loss"]) for e in steps)
    assert any(e["event"] == "checkpoint" for e in events)
    checkpoint = pathlib.Path(summary["last_checkpoint"])
    assert (checkpoint / "state.json").is_file()
    log = [json.loads(line) for line in open(summary["log"])]
    assert [r["loss"] for r in log if r.get("event") == "step"] == [e["loss"] for e in steps]
    # The same run from a TOML file with --set-style overrides, into another directory, through
    # the CLI: the same losses (same seed, same data order).
    toml = tmp_path / "train.toml"
    toml.write_text(
        f'[model]\narch = "arch.json"\n[data]\npath = "{config["data"]["path"]}"\n'
        "[train]\nsteps = 99\nbatch_size = 4\nlr = 1e-3\nwarmup = 0\nseed = 0\n"
        'output = "cli-run"\ncheckpoint_every = 0\n'
    )
    cli("--threads", "2", "train", "--config", str(toml), "--set", "train.steps=3")
    cli_log = [json.loads(line) for line in open(tmp_path / "cli-run" / "log.jsonl")]
    cli_losses = [r["loss"] for r in cli_log if r.get("event") == "step"]
    py_file = gclip.train(toml, overrides={"train.steps": 3}, output=tmp_path / "py-run")
    py_log = [json.loads(line) for line in open(py_file["log"])]
    py_losses = [r["loss"] for r in py_log if r.get("event") == "step"]
    assert len(py_losses) == 3 and np.allclose(py_losses, cli_losses, rtol=1e-4)
    # A callback returning False stops after that step, with a checkpoint; resume continues.
    stopped = gclip.train(tiny_training_config(tmp_path, steps=4), output=tmp_path / "stop",
                          callback=lambda e: not (e["event"] == "step" and e["step"] == 2))
    assert stopped["steps_done"] == 2 and stopped["stopped_early"]
    resumed = gclip.train(tiny_training_config(tmp_path, steps=4), output=tmp_path / "stop",
                          resume=True)
    assert resumed["steps_done"] == 4 and not resumed["stopped_early"]
    with pytest.raises(gclip.GclipError, match="invalid training configuration"):
        gclip.train({"train": {"stepz": 1}})
    with pytest.raises(gclip.GclipError, match="nonexistent"):
        gclip.train(tiny_training_config(tmp_path, steps=1), overrides=["data.path=/nonexistent"])


def test_import_and_load_leave_numpy_for_the_first_result():
    # A fresh interpreter: numpy is imported by the first result, not by `import gclip` or
    # `load` (its import costs more than gclip's start-up), and arrays still work afterwards.
    script = f"""
import sys
import gclip
m = gclip.load({OC_MODEL!r}, arch={OC_ARCH!r})
before = "numpy" in sys.modules
v = m.encode_text(["a photo of a cat"])
import numpy as np
assert isinstance(v, np.ndarray) and v.shape[0] == 1, (type(v), getattr(v, "shape", None))
s = m.similarity([np.zeros((8, 8, 3), np.uint8)], ["a cat", "a dog"], scores="probs")
assert s.shape == (1, 2) and abs(float(s.sum()) - 1.0) < 1e-5, s
print(before)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False", r.stdout
