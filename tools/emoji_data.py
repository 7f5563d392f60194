#!/usr/bin/env python3
"""Fetch the emoji packages from npm and build gclip's emoji training and evaluation sets.

    tools/emoji_data.py [--mini]          # plain python3; --mini and the cross-vendor sets
                                          # need Pillow (without it they are skipped)

Packages (`npm pack`, into the git-ignored data/emoji/): emoji-datasource-google, -twitter,
-apple, -facebook (64-pixel PNGs, names, categories, sub-categories) and emojilib (keywords per
emoji).

Writes under data/emoji/sets/:

* CLIP: `clip-train-google.jsonl` (each Google emoji three times: its name; its first emojilib
  keywords; and a caption that names only its category, alternately "a CATEGORY emoji" and
  "an emoji of CATEGORY", with "&" spelt "and" — many emoji share this caption, which is how
  the category words get tied to what the emoji of a category look like), `clip-test-{twitter,apple}.jsonl` (name <-> image of another vendor,
  one row per emoji, with its category for zero-shot accuracy), `categories.json`.
* Cross-vendor CLIP (three rotations: train on two vendors, test on the third), with every
  image flattened onto white first (`data/emoji/white/VENDOR/ID.png`, needs Pillow): under
  their transparent pixels Google's and Apple's PNGs store arbitrary colours (orange, red),
  Twitter's black, and open_clip's convention (`convert("RGB")`, gclip's for models trained
  from scratch) shows them, so each vendor would come with its own background; transformers'
  convention (an exported model) composites onto white instead. Flat images look the same to
  both. `clip-train-{twitter-apple,google-apple,google-twitter}.jsonl` and, for a model of all
  three, `clip-train-google-twitter-apple.jsonl` (each emoji once per training vendor and
  caption kind; the default kinds are those of `clip-train-google.jsonl`), and
  `clip-heldout-{google,twitter,apple}.jsonl` (name <-> flat image, with the category, one row
  per emoji). Each training set also comes with Facebook's drawings added where Facebook draws
  the emoji (emoji-datasource-facebook; `clip-train-A-B-facebook.jsonl`,
  `clip-train-google-twitter-apple-facebook.jsonl`): a fourth style, never held out.
  `--captions KINDS --tag T` writes the training sets with other caption kinds as
  `clip-train-A-B-T.jsonl` (kinds: see CAPTIONS).
* GCL (four GS-style splits): queries are emojilib keywords, documents are Google emoji with
  fields `name` (text) and `image`. Relevance of keyword k to emoji e: 1.0 when k is e's name
  or short name, 0.6 when k is in e's emojilib keywords, 0.2 when e shares a sub-category with
  an emoji whose keywords hold k. Queries are split 80/20 and documents 50/50 (seeded):
  `gcl-train.jsonl` (train queries x train documents, all graded pairs), and test sets
  `gcl-in-domain.jsonl` (train queries, train documents), `gcl-novel-query.jsonl`,
  `gcl-novel-document.jsonl`, `gcl-zero-shot.jsonl`, each with a corpus file
  `gcl-corpus-{train,test}.jsonl` of every document of its partition. The same sets with a
  third document field, `keywords` (the emoji's emojilib keywords, comma-separated), are
  written as `gclkw-*.jsonl` (experiment 2c: a field in which a held-out query can be read).

With --mini, also writes tests/fixtures/emoji-mini/: 200 emoji as 24-pixel PNGs from Google
(train) and Twitter (test), and the JSONL files for CI's reduced run.
"""

import argparse
import json
import random
import re
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "emoji"
VENDORS = ["google", "twitter", "apple"]
# Vendors whose drawings only ever add to a training set, never held out: more drawing styles
# per concept. Facebook draws 1,857 of the 1,908 emoji that the three vendors all draw.
EXTRA_VENDORS = ["facebook"]


def fetch():
    DATA.mkdir(parents=True, exist_ok=True)
    for pkg in [f"emoji-datasource-{v}" for v in VENDORS + EXTRA_VENDORS] + ["emojilib"]:
        dest = DATA / pkg
        if (dest / "package").is_dir():
            continue
        out = subprocess.run(["npm", "pack", pkg], cwd=DATA, check=True, capture_output=True, text=True)
        tgz = DATA / out.stdout.strip().splitlines()[-1]
        dest.mkdir(exist_ok=True)
        with tarfile.open(tgz) as t:
            t.extractall(dest)
        tgz.unlink()


def unified_to_char(u):
    return "".join(chr(int(x, 16)) for x in u.split("-"))


def load():
    meta = json.loads((DATA / "emoji-datasource-google/package/emoji.json").read_text())
    lib = json.loads((DATA / "emojilib/package/dist/emoji-en-US.json").read_text())
    rows = []
    for e in sorted(meta, key=lambda e: e["sort_order"]):
        if not e.get("name"):
            continue
        paths = {v: DATA / f"emoji-datasource-{v}/package/img/{v}/64/{e['image']}" for v in VENDORS}
        if not all(p.is_file() for p in paths.values()):
            continue
        for v in EXTRA_VENDORS:
            p = DATA / f"emoji-datasource-{v}/package/img/{v}/64/{e['image']}"
            if p.is_file():
                paths[v] = p
        ch = unified_to_char(e["unified"])
        kws = lib.get(ch) or lib.get(ch.replace("\ufe0f", "")) or []
        rows.append({
            "id": e["unified"].lower(),
            "name": e["name"].lower(),
            "short_names": [s.replace("_", " ").replace("-", " ") for s in e["short_names"]],
            "keywords": [k.replace("_", " ") for k in kws[1:]],
            "category": e["category"],
            "subcategory": e["subcategory"],
            "paths": {v: str(p) for v, p in paths.items()},
        })
    return rows


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def category_words(category):
    return category.lower().replace("&", "and")


def category_caption(r, i):
    cat = category_words(r["category"])
    return f"a {cat} emoji" if i % 2 == 0 else f"an emoji of {cat}"


def clip_sets(rows, out, image_of=lambda r, v: r["paths"][v], category_captions=True):
    train = []
    for i, r in enumerate(rows):
        train.append({"query": {"text": r["name"]}, "doc": {"image": image_of(r, "google")}, "doc_id": r["id"]})
        if r["keywords"]:
            train.append({"query": {"text": ", ".join(r["keywords"][:4])}, "doc": {"image": image_of(r, "google")}, "doc_id": r["id"]})
        if category_captions:
            train.append({"query": {"text": category_caption(r, i)}, "doc": {"image": image_of(r, "google")}, "doc_id": r["id"]})
    write(out / "clip-train-google.jsonl", train)
    for v in ["twitter", "apple"]:
        write(out / f"clip-test-{v}.jsonl", [
            {"query": {"text": r["name"]}, "doc": {"image": image_of(r, v)}, "doc_id": r["id"], "category": r["category"]}
            for r in rows])
    cats = sorted({r["category"] for r in rows})
    (out / "categories.json").write_text(json.dumps(cats, indent=1))


def subcategory_words(sub):
    return sub.replace("-", " ")


# Caption kinds of the cross-vendor training sets: (emoji row, index of the emoji and vendor
# pair) -> caption, or None when the emoji has nothing to say of that kind. Kinds that many
# emoji share (category, subcategory) tie those words to the look of a whole group; the rest
# identify one emoji.
CAPTIONS = {
    "name": lambda r, i: r["name"],
    "keywords": lambda r, i: ", ".join(r["keywords"][:4]) if r["keywords"] else None,
    "category": category_caption,
    # The other phrasing of the category caption: with both kinds, each drawing is paired with
    # both "a CATEGORY emoji" and "an emoji of CATEGORY" (a larger share of category captions).
    "category2": lambda r, i: category_caption(r, i + 1),
    "subcategory": lambda r, i: f"a {subcategory_words(r['subcategory'])} emoji",
    "template": lambda r, i: f"an emoji of {r['name']}" if i % 2 == 0 else f"{r['name']} emoji",
}
DEFAULT_CAPTIONS = ["name", "keywords", "category"]


def flatten(rows):
    """Each vendor's image of each emoji, alpha-composited onto white, as an RGB PNG."""
    from PIL import Image
    out = {}
    for r in rows:
        for v in r["paths"]:
            dest = DATA / "white" / v / f"{r['id']}.png"
            if not dest.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                im = Image.open(r["paths"][v]).convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                bg.alpha_composite(im)
                bg.convert("RGB").save(dest)
            out[(r["id"], v)] = str(dest)
    return out


def rotation_sets(rows, out, captions=DEFAULT_CAPTIONS, tag=""):
    flat = flatten(rows)
    # The three rotations and all three vendors together, each also with the extra vendors'
    # drawings where they exist (`-facebook` in the name; tools/emoji/train.sh's default is all
    # three with them).
    rotations = [[v for v in VENDORS if v != held_out] for held_out in VENDORS] + [VENDORS]
    for train_vendors in rotations + [r + EXTRA_VENDORS for r in rotations]:
        train = []
        for i, r in enumerate(rows):
            for j, v in enumerate(v for v in train_vendors if v in r["paths"]):
                # i + j: the two vendors' drawings of one emoji get the two phrasings.
                for kind in captions:
                    text = CAPTIONS[kind](r, i + j)
                    if text:
                        train.append({"query": {"text": text}, "doc": {"image": flat[(r["id"], v)]}, "doc_id": f"{r['id']}-{v}"})
        write(out / f"clip-train-{'-'.join(train_vendors)}{'-' + tag if tag else ''}.jsonl", train)
    if not tag:
        for v in VENDORS:
            write(out / f"clip-heldout-{v}.jsonl", [
                {"query": {"text": r["name"]}, "doc": {"image": flat[(r["id"], v)]}, "doc_id": r["id"], "category": r["category"]}
                for r in rows])


def gcl_sets(rows, out, seed=1, prefix="gcl", keywords=False):
    by_kw = {}
    for r in rows:
        for k in set(r["keywords"]):
            by_kw.setdefault(k, []).append(r)
    sub = {}
    for r in rows:
        sub.setdefault(r["subcategory"], []).append(r)
    # Queries: keywords naming 2..25 emoji (specific enough to rank).
    queries = sorted(k for k, es in by_kw.items() if 2 <= len(es) <= 25 and re.search(r"[a-z]", k))
    rng = random.Random(seed)
    rng.shuffle(queries)
    docs = list(rows)
    rng.shuffle(docs)
    nq = int(len(queries) * 0.8)
    q_train, q_test = set(queries[:nq]), set(queries[nq:])
    nd = len(docs) // 2
    d_train, d_test = {r["id"] for r in docs[:nd]}, {r["id"] for r in docs[nd:]}

    def graded(k):
        g = {}
        for r in by_kw[k]:
            for s in sub[r["subcategory"]]:
                g.setdefault(s["id"], (0.2, s))
        for r in by_kw[k]:
            g[r["id"]] = (0.6, r)
        for r in rows:
            if k == r["name"] or k in r["short_names"]:
                g[r["id"]] = (1.0, r)
        return g

    def doc(r):
        d = {"name": r["name"], "image": r["paths"]["google"]}
        if keywords and r["keywords"]:  # no field rather than an empty one
            d["keywords"] = ", ".join(r["keywords"])
        return d

    def pairs(qs, ds):
        out_rows = []
        for k in sorted(qs):
            for did, (score, r) in sorted(graded(k).items()):
                if did in ds:
                    out_rows.append({"query": {"text": k}, "doc": doc(r), "score": score, "query_id": k, "doc_id": did})
        return out_rows

    write(out / f"{prefix}-train.jsonl", pairs(q_train, d_train))
    write(out / f"{prefix}-in-domain.jsonl", pairs(q_train, d_train))
    write(out / f"{prefix}-novel-query.jsonl", pairs(q_test, d_train))
    write(out / f"{prefix}-novel-document.jsonl", pairs(q_train, d_test))
    write(out / f"{prefix}-zero-shot.jsonl", pairs(q_test, d_test))
    for name, ds in [("train", d_train), ("test", d_test)]:
        write(out / f"{prefix}-corpus-{name}.jsonl", [
            {"query": {"text": "-"}, "doc": doc(r), "doc_id": r["id"]}
            for r in rows if r["id"] in ds])
    print(f"{prefix}: {len(q_train)} train / {len(q_test)} novel queries, {len(d_train)} / {len(d_test)} documents")


def mini(rows):
    from PIL import Image
    out = ROOT / "tests" / "fixtures" / "emoji-mini"
    rng = random.Random(7)
    picked = sorted(rng.sample(rows, 200), key=lambda r: r["id"])
    for v in ["google", "twitter"]:
        (out / v).mkdir(parents=True, exist_ok=True)
        for r in picked:
            im = Image.open(r["paths"][v]).convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            bg.alpha_composite(im)
            bg.convert("RGB").resize((24, 24), Image.BICUBIC).save(out / v / f"{r['id']}.png", optimize=True)
    # CI's fixture keeps the two captions per emoji it was made with.
    clip_sets(picked, out, image_of=lambda r, v: f"{v}/{r['id']}.png", category_captions=False)
    for f in ["clip-test-apple.jsonl"]:
        (out / f).unlink()
    print(f"mini: {len(picked)} emoji in {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mini", action="store_true")
    ap.add_argument("--captions", help="comma-separated caption kinds of extra cross-vendor training sets")
    ap.add_argument("--tag", help="file-name suffix of those sets")
    a = ap.parse_args()
    fetch()
    rows = load()
    out = DATA / "sets"
    if a.captions:
        kinds = a.captions.split(",")
        if not a.tag or any(k not in CAPTIONS for k in kinds):
            ap.error(f"--captions needs --tag and kinds from {', '.join(CAPTIONS)}")
        rotation_sets(rows, out, kinds, a.tag)
        print(f"cross-vendor sets with captions {a.captions} -> {out}/clip-train-*-{a.tag}.jsonl")
        return
    clip_sets(rows, out)
    try:
        import PIL  # noqa: F401
    except ImportError:
        print("no Pillow: skipping the cross-vendor sets (clip-train-A-B, clip-heldout-*)")
    else:
        rotation_sets(rows, out)
    gcl_sets(rows, out)
    gcl_sets(rows, out, prefix="gclkw", keywords=True)
    print(f"clip: {len(rows)} emoji with images from all three vendors -> {out}")
    if a.mini:
        mini(rows)


if __name__ == "__main__":
    main()
