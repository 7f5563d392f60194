#!/usr/bin/env python3
"""Make the image fixtures under tests/fixtures/images/ and their reference outputs.

Run by hand (CI never needs Python), with an interpreter that has Pillow, numpy, torch,
torchvision, open_clip_torch and transformers:

    tools/fetch_data.sh /path/to/python     # real photos, clip art, emoji into data/
    /path/to/python tools/gen_image_fixtures.py

For every input image and every case in manifest.json the expected 8-bit RGB pixels (HWC,
raw bytes in a `.rgb` file) are produced by the reference pipelines themselves, stopped just
before their float steps:

* open_clip: `open_clip.image_transform(size, is_train=False)` with its last two steps
  (`MaybeToTensor`, `Normalize`) left out; the remaining steps (torchvision `Resize`,
  `CenterCrop`, `MaybeConvertMode`) return a PIL RGB image, taken with `np.array`.
* transformers: `CLIPImageProcessorPil` (the PIL backend of `CLIPImageProcessor`) called with
  `do_rescale=False, do_normalize=False`; its output is checked to be integral and cast to
  uint8.

For a few cases the full pipelines' float32 tensors (CHW) are stored too (`.f32`, little
endian), and the script checks that rescaling and normalising the stored 8-bit pixels gives
back those tensors.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import open_clip
import torchvision.transforms as T
from PIL import Image, ImageOps
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
OUT = ROOT / "tests" / "fixtures" / "images"

rng = np.random.default_rng(1234)


# ------------------------------------------------------------------------------------------
# Helpers to make images


def smooth_rgb(w: int, h: int, seed: int) -> np.ndarray:
    """A colourful image with gradients, edges and noise (so every resize tap matters)."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack(
        [
            127 + 120 * np.sin(x / max(w, 1) * 6.0 + seed),
            127 + 120 * np.cos(y / max(h, 1) * 5.0 + seed * 0.5),
            (x * 3 + y * 7) % 256,
        ],
        axis=-1,
    )
    img[(x // 7 + y // 5) % 9 == 0] = [250, 20, 40]
    img += r.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_png(path: Path, w: int, h: int, color_type: int, depth: int, rows: list[bytes], plte=None, trns=None, exif=None):
    """A minimal PNG writer for bit depths and chunks Pillow cannot write itself."""
    raw = b"".join(b"\0" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
    if plte is not None:
        out += png_chunk(b"PLTE", plte)
    if trns is not None:
        out += png_chunk(b"tRNS", trns)
    if exif is not None:
        out += png_chunk(b"eXIf", exif)
    out += png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")
    path.write_bytes(out)


def pack_bits(values: np.ndarray, depth: int) -> bytes:
    """Pack one row of small integers MSB first."""
    per = 8 // depth
    vals = list(values) + [0] * ((-len(values)) % per)
    out = bytearray()
    for i in range(0, len(vals), per):
        b = 0
        for v in vals[i : i + per]:
            b = (b << depth) | int(v)
        out.append(b)
    return bytes(out)


def bmp16(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit 5-5-5 BMP (Pillow cannot write one)."""
    h, w, _ = rgb.shape
    stride = (w * 2 + 3) & ~3
    px = bytearray()
    for y in range(h - 1, -1, -1):
        row = bytearray()
        for x in range(w):
            r, g, b = (int(v) >> 3 for v in rgb[y, x])
            row += struct.pack("<H", (r << 10) | (g << 5) | b)
        row += b"\0" * (stride - len(row))
        px += row
    header = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 0, len(px), 2835, 2835, 0, 0)
    path.write_bytes(b"BM" + struct.pack("<IHHI", 14 + 40 + len(px), 0, 0, 54) + header + px)


def exif_orientation_block(value: int) -> bytes:
    return b"II*\0\x08\0\0\0\x01\0" + struct.pack("<HHIHH", 0x0112, 3, 1, value, 0) + b"\0\0\0\0"


# ------------------------------------------------------------------------------------------
# The corpus


def make_inputs() -> list[dict]:
    """Write the input images; return manifest entries (file name, cases)."""
    OUT.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []

    def add(name: str, sizes=(64,), extra_cases=(), tensor=False):
        entries.append({"file": name, "sizes": list(sizes), "extra": list(extra_cases), "tensor": tensor})

    def save(im: Image.Image, name: str, **kw):
        im.save(OUT / name, **kw)

    # --- synthetic PNGs: every PNG colour type and bit depth Pillow maps to a mode
    rgb = smooth_rgb(301, 199, 1)
    save(Image.fromarray(rgb), "rgb_301x199.png")
    add("rgb_301x199.png", sizes=(64, 224), tensor=True)

    # odd sizes whose crop offset is a half pixel: (67-64)/2 = 1.5 rounds to 2 in open_clip,
    # floors to 1 in transformers; (71-64)/2 = 3.5 -> 4 vs 3.
    save(Image.fromarray(smooth_rgb(315, 300, 2)), "rgb_half_pixel_315x300.png")
    add("rgb_half_pixel_315x300.png")
    save(Image.fromarray(smooth_rgb(200, 222, 3)), "rgb_half_pixel_200x222.png")
    add("rgb_half_pixel_200x222.png")

    # already the target size, and only one axis to resize
    save(Image.fromarray(smooth_rgb(64, 64, 4)), "rgb_exact_64.png")
    add("rgb_exact_64.png")
    save(Image.fromarray(smooth_rgb(64, 97, 5)), "rgb_one_axis_64x97.png")
    add("rgb_one_axis_64x97.png")

    # tiny (smaller than the crop: upscaled) and panoramic / very tall images
    save(Image.fromarray(smooth_rgb(5, 3, 6)), "tiny_5x3.png")
    add("tiny_5x3.png")
    save(Image.fromarray(smooth_rgb(1, 1, 7)), "one_pixel.png")
    add("one_pixel.png")
    save(Image.fromarray(smooth_rgb(1000, 41, 8)), "panorama_1000x41.png")
    add("panorama_1000x41.png")
    save(Image.fromarray(smooth_rgb(33, 700, 9)), "tall_33x700.png")
    add("tall_33x700.png")
    # more than 100 times taller than wide and shrinking: Pillow resizes vertically first
    tall = np.repeat(smooth_rgb(70, 70, 10), 100, axis=0)[:7100]
    save(Image.fromarray(tall), "very_tall_70x7100.png")
    add("very_tall_70x7100.png")

    # RGBA with strong colours under fully transparent pixels and partial alpha
    rgba = np.dstack([smooth_rgb(157, 123, 11), np.zeros((123, 157), np.uint8)])
    yy, xx = np.mgrid[0:123, 0:157]
    rgba[..., 3] = np.clip((xx * 2.3 + yy) - 60, 0, 255).astype(np.uint8)
    rgba[(xx // 9 + yy // 9) % 4 == 0, 3] = 0
    rgba[40:60, 40:100, :3] = [0, 255, 0]
    rgba[40:60, 40:100, 3] = 0
    save(Image.fromarray(rgba, "RGBA"), "rgba_hidden_colour.png")
    add("rgba_hidden_colour.png", sizes=(64, 224), tensor=True)

    # LA 8-bit
    la = np.dstack([rgb[..., 0], (np.tile(np.arange(301), (199, 1)) % 256).astype(np.uint8)])
    save(Image.fromarray(la, "LA"), "la_301x199.png")
    add("la_301x199.png")

    # grey 8-bit and with a tRNS key
    grey = rgb[..., 1].copy()
    save(Image.fromarray(grey, "L"), "l_301x199.png")
    add("l_301x199.png")
    im = Image.fromarray(grey, "L")
    im.info["transparency"] = int(grey[50, 50])
    save(im, "l_trns.png", transparency=int(grey[50, 50]))
    add("l_trns.png")

    # grey 1, 2, 4 bit
    g = smooth_rgb(97, 61, 12)[..., 0]
    for depth in (1, 2, 4):
        vals = (g.astype(np.int32) >> (8 - depth)).astype(np.uint8)
        write_png(OUT / f"grey{depth}bit.png", 97, 61, 0, depth, [pack_bits(r, depth) for r in vals])
        add(f"grey{depth}bit.png")
    # grey 2-bit with a tRNS key (compared by Pillow against the scaled samples)
    vals = (g.astype(np.int32) >> 6).astype(np.uint8)
    write_png(OUT / "grey2bit_trns.png", 97, 61, 0, 2, [pack_bits(r, 2) for r in vals], trns=struct.pack(">H", 2))
    add("grey2bit_trns.png")

    # grey 16 bit (I;16), plain and with a tRNS key
    g16 = (smooth_rgb(131, 89, 13)[..., 2].astype(np.uint16) * 257 + rng.integers(0, 257, (89, 131))).astype(">u2")
    g16[10:20, :] = 100  # values below 256 survive convert("RGB") as themselves
    write_png(OUT / "grey16.png", 131, 89, 0, 16, [r.tobytes() for r in g16])
    add("grey16.png")
    write_png(OUT / "grey16_trns.png", 131, 89, 0, 16, [r.tobytes() for r in g16], trns=struct.pack(">H", 100))
    add("grey16_trns.png")

    # grey+alpha 16 bit (Pillow: RGBA), RGB 16, RGBA 16
    ga16 = np.dstack([g16.astype(np.uint16), (np.tile(np.arange(131), (89, 1)) * 500).astype(np.uint16)]).astype(">u2")
    write_png(OUT / "la16.png", 131, 89, 4, 16, [r.tobytes() for r in ga16])
    add("la16.png")
    rgb16 = (smooth_rgb(131, 89, 14).astype(np.uint16) * 257 + rng.integers(0, 257, (89, 131, 3))).astype(">u2")
    write_png(OUT / "rgb16.png", 131, 89, 2, 16, [r.tobytes() for r in rgb16])
    add("rgb16.png")
    rgba16 = np.dstack([rgb16.astype(np.uint16), ga16[..., 1].astype(np.uint16)]).astype(">u2")
    write_png(OUT / "rgba16.png", 131, 89, 6, 16, [r.tobytes() for r in rgba16])
    add("rgba16.png")

    # RGB with a tRNS colour key
    rgbk = smooth_rgb(120, 90, 15)
    rgbk[30:60, 30:60] = [12, 34, 56]
    write_png(OUT / "rgb_trns.png", 120, 90, 2, 8, [r.tobytes() for r in rgbk], trns=struct.pack(">HHH", 12, 34, 56))
    add("rgb_trns.png")

    # palette images: plain, one transparent index, per-entry alphas, 4-bit, short palette
    pim = Image.fromarray(smooth_rgb(143, 101, 16)).quantize(200)
    save(pim, "p_plain.png")
    add("p_plain.png")
    save(pim, "p_trns_index.png", transparency=7)
    add("p_trns_index.png")
    alphas = bytes((i * 37) % 256 for i in range(150))
    save(pim, "p_trns_alphas.png", transparency=alphas)
    add("p_trns_alphas.png")
    idx4 = (smooth_rgb(77, 55, 17)[..., 0] >> 4).astype(np.uint8)
    plte = bytes(np.random.default_rng(5).integers(0, 256, 16 * 3, dtype=np.uint8))
    write_png(OUT / "p4bit.png", 77, 55, 3, 4, [pack_bits(r, 4) for r in idx4], plte=plte, trns=bytes([255, 0, 128]))
    add("p4bit.png")

    # 1-bit image from Pillow (mode "1")
    save(Image.fromarray(smooth_rgb(90, 70, 18)[..., 0] > 128), "bilevel.png")
    add("bilevel.png")

    # EXIF orientation (references ignore it; the exif case applies ImageOps.exif_transpose)
    ex = smooth_rgb(90, 60, 19)
    ex[:20, :30] = [255, 0, 0]
    write_png(OUT / "exif_rotate90.png", 90, 60, 2, 8, [r.tobytes() for r in ex], exif=exif_orientation_block(6))
    add("exif_rotate90.png", extra_cases=[{"convention": "open_clip", "size": 64, "exif": True}, {"convention": "transformers", "size": 64, "exif": True}])

    # sizes smaller than the crop: Resize(56) then CenterCrop(64) pads with zeros
    add("rgb_301x199.png", sizes=(), extra_cases=[{"convention": "open_clip", "size": 56, "crop": 64}, {"convention": "transformers", "size": 56, "crop": 64}])
    add("p_trns_index.png", sizes=(), extra_cases=[{"convention": "open_clip", "size": 55, "crop": 64}, {"convention": "transformers", "size": 55, "crop": 64}])

    # --- JPEG
    base = smooth_rgb(333, 251, 20)
    save(Image.fromarray(base), "jpeg_420_q85.jpg", quality=85)
    add("jpeg_420_q85.jpg", tensor=True)
    save(Image.fromarray(base), "jpeg_444_q95.jpg", quality=95, subsampling=0)
    add("jpeg_444_q95.jpg")
    save(Image.fromarray(base), "jpeg_422.jpg", quality=90, subsampling=1)
    add("jpeg_422.jpg")
    save(Image.fromarray(base), "jpeg_progressive.jpg", quality=80, progressive=True)
    add("jpeg_progressive.jpg")
    save(Image.fromarray(base[..., 1]), "jpeg_grey.jpg", quality=90)
    add("jpeg_grey.jpg")
    save(Image.fromarray(base).convert("CMYK"), "jpeg_cmyk.jpg", quality=90)
    add("jpeg_cmyk.jpg")

    # Sampling layouts, restart markers and colour spaces Pillow cannot write: libjpeg-turbo's
    # cjpeg (Debian package libjpeg-turbo-progs), when installed.
    if shutil.which("cjpeg"):
        ppm = OUT / "tmp_src.ppm"
        Image.fromarray(base).save(ppm)
        for name, args in [
            ("jpeg_440.jpg", ["-sample", "1x2", "-quality", "90"]),
            ("jpeg_411.jpg", ["-sample", "4x1", "-quality", "90"]),
            ("jpeg_mixed_sampling.jpg", ["-sample", "2x2,2x1,1x2", "-quality", "85"]),
            ("jpeg_restart.jpg", ["-restart", "5B", "-quality", "80"]),
            ("jpeg_rgb_adobe.jpg", ["-rgb", "-quality", "90"]),
            ("jpeg_progressive_restart.jpg", ["-progressive", "-restart", "1", "-quality", "75"]),
        ]:
            subprocess.run(["cjpeg", *args, "-outfile", str(OUT / name), str(ppm)], check=True)
            add(name)
        ppm.unlink()
    else:
        print("cjpeg not found: skipping the extra JPEG layouts", file=sys.stderr)
    # chroma planes at most two samples wide (plain replication instead of the triangle filter)
    save(Image.fromarray(smooth_rgb(3, 3, 28)), "jpeg_tiny_3x3.jpg", quality=90)
    add("jpeg_tiny_3x3.jpg")
    save(Image.fromarray(smooth_rgb(4, 37, 29)), "jpeg_narrow_4x37.jpg", quality=90)
    add("jpeg_narrow_4x37.jpg")
    # EXIF orientation in a JPEG
    exif = Image.Exif()
    exif[0x0112] = 8
    save(Image.fromarray(smooth_rgb(120, 80, 30)), "jpeg_exif_rotate270.jpg", quality=90, exif=exif)
    add("jpeg_exif_rotate270.jpg", extra_cases=[{"convention": "open_clip", "size": 64, "exif": True}, {"convention": "transformers", "size": 64, "exif": True}])

    # --- WebP
    save(Image.fromarray(smooth_rgb(181, 133, 21)), "webp_lossless.webp", lossless=True)
    add("webp_lossless.webp")
    save(Image.fromarray(rgba[:100, :150]), "webp_lossless_rgba.webp", lossless=True, exact=True)
    add("webp_lossless_rgba.webp")
    save(Image.fromarray(smooth_rgb(181, 133, 22)), "webp_lossy.webp", quality=80)
    add("webp_lossy.webp")
    save(Image.fromarray(rgba), "webp_lossy_rgba.webp", quality=80)
    add("webp_lossy_rgba.webp")

    # --- GIF
    save(pim, "gif_palette.gif")
    add("gif_palette.gif")
    save(pim, "gif_transparent.gif", transparency=7)
    add("gif_transparent.gif")
    save(Image.fromarray(grey, "L"), "gif_grey.gif")
    add("gif_grey.gif")

    # --- BMP
    save(Image.fromarray(smooth_rgb(101, 67, 23)), "bmp_24.bmp")
    add("bmp_24.bmp")
    save(pim, "bmp_8bit_palette.bmp")
    add("bmp_8bit_palette.bmp")
    save(Image.fromarray(grey, "L"), "bmp_grey.bmp")
    add("bmp_grey.bmp")
    save(Image.fromarray(smooth_rgb(90, 70, 18)[..., 0] > 128), "bmp_1bit.bmp")
    add("bmp_1bit.bmp")
    save(Image.fromarray(rgba), "bmp_32_rgba.bmp")
    add("bmp_32_rgba.bmp")
    bmp16(OUT / "bmp_16.bmp", smooth_rgb(61, 45, 24))
    add("bmp_16.bmp")

    # --- TIFF
    save(Image.fromarray(smooth_rgb(111, 79, 25)), "tiff_rgb.tif")
    add("tiff_rgb.tif")
    save(Image.fromarray(smooth_rgb(111, 79, 26)), "tiff_rgb_lzw.tif", compression="tiff_lzw")
    add("tiff_rgb_lzw.tif")
    save(Image.fromarray(rgba), "tiff_rgba.tif", compression="tiff_adobe_deflate")
    add("tiff_rgba.tif")
    # associated (premultiplied) alpha: Pillow cannot write it, so patch ExtraSamples 2 -> 1
    pre = rgba.astype(np.uint32)
    pre[..., :3] = pre[..., :3] * pre[..., 3:] // 255
    save(Image.fromarray(pre.astype(np.uint8), "RGBA"), "tiff_rgba_associated.tif")
    raw = (OUT / "tiff_rgba_associated.tif").read_bytes()
    entry = struct.pack("<HHIHH", 338, 3, 1, 2, 0)
    assert raw.count(entry) == 1
    (OUT / "tiff_rgba_associated.tif").write_bytes(raw.replace(entry, struct.pack("<HHIHH", 338, 3, 1, 1, 0)))
    assert Image.open(OUT / "tiff_rgba_associated.tif").tag_v2[338] in (1, (1,))
    add("tiff_rgba_associated.tif")
    save(Image.fromarray(grey, "L"), "tiff_grey.tif")
    add("tiff_grey.tif")
    save(Image.fromarray(g16.astype(np.uint16)), "tiff_grey16.tif")
    add("tiff_grey16.tif")
    save(Image.fromarray(smooth_rgb(111, 79, 27)).convert("CMYK"), "tiff_cmyk.tif")
    add("tiff_cmyk.tif")

    # --- real photographs, clip art, emoji (downscaled copies keep the fixtures small)
    def real(src: Path, name: str, max_side: int | None = None, **kw):
        if not src.exists():
            print(f"missing {src}: run tools/fetch_data.sh", file=sys.stderr)
            return
        im = Image.open(src)
        im.load()
        if max_side and max(im.size) > max_side:
            im = im.resize((max(1, im.width * max_side // max(im.size)), max(1, im.height * max_side // max(im.size))), Image.Resampling.LANCZOS)
        if max_side is None and Path(name).suffix == src.suffix:
            (OUT / name).write_bytes(src.read_bytes())
        else:
            im.save(OUT / name, **kw)
        add(name)

    sk = DATA / "skimage"
    real(sk / "astronaut.png", "photo_astronaut.png", 300)
    real(sk / "chelsea.png", "photo_chelsea.jpg", None, quality=90)
    real(sk / "coffee.png", "photo_coffee.webp", 320, quality=85)
    real(sk / "camera.png", "photo_camera_grey.png", 256)
    real(sk / "logo.png", "photo_logo_rgba.png", 200)
    real(sk / "rocket.jpg", "photo_rocket.jpg")
    real(sk / "motorcycle_left.png", "photo_motorcycle.png", 240)
    real(sk / "no_time_for_that_tiny.gif", "real_gif.gif")
    real(sk / "horse.png", "photo_horse_mask.png")
    real(DATA / "sklearn" / "china.jpg", "photo_china.jpg")
    entries[-1]["sizes"] = [64, 224]
    entries[-1]["tensor"] = True

    clips = sorted((DATA / "openclipart").rglob("*.png"))
    picked = [c for c in clips if c.stat().st_size < 40_000]
    random.Random(3).shuffle(picked)
    for i, c in enumerate(picked[:4]):
        name = f"clipart_{i}.png"
        (OUT / name).write_bytes(c.read_bytes())
        add(name)
    for vendor in ("google", "twitter", "apple"):
        folder = DATA / "emoji" / f"emoji-datasource-{vendor}" / "package" / "img" / vendor / "64"
        files = sorted(folder.glob("*.png"))
        for f in (f for f in files if f.name in ("1f600.png", "1f308.png")):
            name = f"emoji_{vendor}_{f.stem}.png"
            (OUT / name).write_bytes(f.read_bytes())
            add(name)
    return entries


# ------------------------------------------------------------------------------------------
# References


def open_clip_rgb(im: Image.Image, size: int, crop: int) -> np.ndarray:
    if size == crop:
        tf = open_clip.image_transform(size, is_train=False)
        steps = tf.transforms[:-2]
        assert type(tf.transforms[-2]).__name__ == "MaybeToTensor"
        assert isinstance(tf.transforms[-1], T.Normalize)
    else:
        # open_clip's steps, with a crop larger than the resize (to exercise the padding)
        steps = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop), lambda x: x.convert("RGB")]
    for s in steps:
        im = s(im)
    return np.asarray(im, dtype=np.uint8)


def open_clip_tensor(im: Image.Image, size: int) -> np.ndarray:
    return open_clip.image_transform(size, is_train=False)(im).numpy()


def hf_processor(size: int, crop: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop})


def transformers_rgb(im: Image.Image, size: int, crop: int) -> np.ndarray:
    out = hf_processor(size, crop)(im, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
    assert np.all(out == np.round(out)) and out.min() >= 0 and out.max() <= 255
    return np.transpose(out, (1, 2, 0)).astype(np.uint8)


def transformers_tensor(im: Image.Image, size: int) -> np.ndarray:
    return hf_processor(size, size)(im, return_tensors="np")["pixel_values"][0].astype(np.float32)


def main() -> None:
    entries = make_inputs()
    manifest = []
    for e in entries:
        path = OUT / e["file"]
        cases = [{"convention": c, "size": s, "crop": s, "exif": False} for s in e["sizes"] for c in ("open_clip", "transformers")]
        cases += [{"crop": c.get("size"), "exif": False, **c} for c in e["extra"]]
        for c in cases:
            im = Image.open(path)
            mode = im.mode
            if c["exif"]:
                im = ImageOps.exif_transpose(im)
            if c["convention"] == "open_clip":
                arr = open_clip_rgb(im, c["size"], c["crop"])
            else:
                arr = transformers_rgb(im, c["size"], c["crop"])
            assert arr.shape == (c["crop"], c["crop"], 3), (e["file"], arr.shape)
            stem = f"{e['file']}.{c['convention']}.{c['size']}x{c['crop']}{'.exif' if c['exif'] else ''}"
            (OUT / "expected").mkdir(exist_ok=True)
            (OUT / "expected" / f"{stem}.rgb").write_bytes(arr.tobytes())
            case = {"file": e["file"], "pil_mode": mode, "format": Image.open(path).format, **c, "expected": f"expected/{stem}.rgb"}
            if e["tensor"] and c["size"] == c["crop"] == 64 and not c["exif"]:
                im2 = Image.open(path)
                t = open_clip_tensor(im2, c["size"]) if c["convention"] == "open_clip" else transformers_tensor(im2, c["size"])
                assert t.shape == (3, c["crop"], c["crop"])
                (OUT / "expected" / f"{stem}.f32").write_bytes(t.astype("<f4").tobytes())
                case["tensor"] = f"expected/{stem}.f32"
            manifest.append(case)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    files = sorted({c["file"] for c in manifest})
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(files)} images, {len(manifest)} cases, {total / 1e6:.2f} MB under {OUT}")


if __name__ == "__main__":
    main()
