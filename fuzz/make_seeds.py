#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/ (standard library only, plus
libjpeg-turbo's cjpeg for the JPEG seeds). Run from anywhere: python3 fuzz/make_seeds.py

Seeds are small valid inputs (a few KB each) reaching each parser's main paths; the fuzzer
grows its working corpus elsewhere (fuzz/corpus-grown/, ignored by git).
"""
import collections
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMAGES = os.path.join(ROOT, "tests", "fixtures", "images")


def out_dir(target):
    d = os.path.join(HERE, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def write(d, name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def pixels(w, h, ch, seed=1):
    """Gradient plus a little deterministic noise, `ch` interleaved channels."""
    out = bytearray()
    s = seed
    for y in range(h):
        for x in range(w):
            for c in range(ch):
                s = (s * 1103515245 + 12345) & 0x7FFFFFFF
                v = (x * 255 // max(w - 1, 1) * (c + 1) + y * 255 // max(h - 1, 1)) // (c + 2)
                out.append((v + (s >> 16) % 24) & 255)
    return bytes(out)


# --- images -----------------------------------------------------------------------------------

def png(w, h, color_type, depth, rows, extra=b""):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    raw = b"".join(b"\0" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
            + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def bmp(w, h, bits, rows_bottom_up, palette=b"", masks=None):
    header = 40 if masks is None else 56
    stride = (w * bits + 31) // 32 * 4
    data = b"".join(r.ljust(stride, b"\0") for r in rows_bottom_up)
    extra = b"" if masks is None else struct.pack("<4I", *masks)
    offset = 14 + 40 + len(extra) + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40 if masks is None else header, w, h, 1, bits,
                       0 if masks is None else 3, len(data), 2835, 2835,
                       len(palette) // 4, 0)
    if masks is not None:
        info = struct.pack("<I", header) + info[4:]
    return (b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + extra
            + palette + data)


def tiff(w, h, spp, data, photometric, compression=1, extra_samples=None):
    """Little-endian single-strip TIFF, 8 bits per sample."""
    entries = []
    def e(tag, typ, count, value):
        entries.append((tag, typ, count, value))
    n_tags = 10 + (extra_samples is not None)
    ifd_size = 2 + 12 * n_tags + 4
    bps_off = 8 + ifd_size
    data_off = bps_off + 2 * spp
    e(256, 3, 1, w)
    e(257, 3, 1, h)
    e(258, 3, spp, bps_off if spp > 2 else 8 | (8 << 16) if spp == 2 else 8)
    e(259, 3, 1, compression)
    e(262, 3, 1, photometric)
    e(273, 4, 1, data_off)
    e(274, 3, 1, 1)
    e(277, 3, 1, spp)
    e(278, 3, 1, h)
    e(279, 4, 1, len(data))
    if extra_samples is not None:
        e(338, 3, 1, extra_samples)
    entries.sort()
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHII", tag, typ, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<%dH" % spp, *[8] * spp) + data


def gif_2x2():
    """2x2 image, 4-colour global palette, a graphic control block with a transparent index."""
    return (b"GIF89a\x02\x00\x02\x00\xa1\x00\x00"
            b"\xff\x00\x00\x00\xff\x00\x00\x00\xff\xff\xff\xff"
            b"!\xf9\x04\x01\x00\x00\x03\x00"
            b",\x00\x00\x00\x00\x02\x00\x02\x00\x00"
            b"\x02\x03\x44\x34\x05\x00;")


def jpegs(d):
    cjpeg = shutil.which("cjpeg")
    if cjpeg is None:
        sys.exit("cjpeg not found (Debian: apt-get install libjpeg-turbo-progs)")
    variants = [
        ("420", ["-sample", "2x2"]),
        ("422", ["-sample", "2x1"]),
        ("440", ["-sample", "1x2"]),
        ("444", ["-sample", "1x1"]),
        ("411", ["-sample", "4x1"]),
        ("mixed", ["-sample", "2x2,1x2,2x1"]),
        ("grey", ["-grayscale"]),
        ("rgb", ["-rgb"]),
        ("progressive", ["-progressive"]),
        ("progressive_grey", ["-progressive", "-grayscale"]),
        ("restart", ["-restart", "1B"]),
        ("progressive_restart", ["-progressive", "-restart", "2B"]),
        ("optimize_q20", ["-optimize", "-quality", "20"]),
        ("q100", ["-quality", "100"]),
        ("arithmetic", ["-arithmetic"]),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for (w, h) in [(17, 13)]:
            ppm = os.path.join(tmp, "in.ppm")
            with open(ppm, "wb") as f:
                f.write(b"P6\n%d %d\n255\n" % (w, h) + pixels(w, h, 3))
            for name, args in variants:
                data = subprocess.run([cjpeg, *args, ppm], check=True,
                                      capture_output=True).stdout
                write(d, "jpeg_%s.jpg" % name, data)


def images():
    d = out_dir("image_decode")
    for f in ["one_pixel.png", "tiny_5x3.png", "grey1bit.png", "bilevel.png", "grey2bit_trns.png",
              "p4bit.png", "clipart_2.png", "jpeg_tiny_3x3.jpg", "jpeg_narrow_4x37.jpg",
              "jpeg_exif_rotate270.jpg", "bmp_1bit.bmp", "real_gif.gif", "webp_lossy_rgba.webp",
              "webp_lossy.webp", "webp_lossless_rgba.webp"]:
        shutil.copy(os.path.join(IMAGES, f), os.path.join(d, f))
    w, h = 7, 5
    rgb = pixels(w, h, 3)
    rows = [rgb[y * w * 3:(y + 1) * w * 3] for y in range(h)]
    write(d, "png_rgb.png", png(w, h, 2, 8, rows))
    rgba = pixels(w, h, 4)
    write(d, "png_rgba16.png", png(w, h, 6, 16, [rgba[y * w * 4:(y + 1) * w * 4] * 2
                                                  for y in range(h)]))
    grey16 = pixels(w, h, 2)
    write(d, "png_grey16_trns.png", png(w, h, 0, 16, [grey16[y * w * 2:(y + 1) * w * 2]
                                                       for y in range(h)],
                                        extra=b"\0\0\0\x02tRNS\x01\x02" + struct.pack(
                                            ">I", zlib.crc32(b"tRNS\x01\x02"))))
    # BMP: 24-bit, 32-bit with an alpha bitmask, 16-bit 5-6-5, 8-bit palette, 4-bit palette.
    write(d, "bmp_24.bmp", bmp(w, h, 24, [r[::-1] for r in rows]))
    write(d, "bmp_32_alpha.bmp", bmp(w, h, 32, [rgba[y * w * 4:(y + 1) * w * 4] for y in range(h)],
                                     masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000)))
    write(d, "bmp_16_565.bmp", bmp(w, h, 16, [grey16[y * w * 2:(y + 1) * w * 2] for y in range(h)],
                                   masks=(0xF800, 0x7E0, 0x1F, 0)))
    pal = b"".join(bytes([i * 5 % 256, i * 11 % 256, i * 17 % 256, 0]) for i in range(256))
    idx = pixels(w, h, 1)
    write(d, "bmp_8.bmp", bmp(w, h, 8, [idx[y * w:(y + 1) * w] for y in range(h)], pal))
    write(d, "bmp_4.bmp", bmp(w, h, 4, [bytes(b & 0x77 for b in idx[y * w:y * w + 4])
                                        for y in range(h)], pal[:64]))
    write(d, "gif_2x2.gif", gif_2x2())
    write(d, "tiff_rgb.tif", tiff(w, h, 3, rgb, 2))
    write(d, "tiff_grey.tif", tiff(w, h, 1, idx, 1))
    write(d, "tiff_rgba_assoc.tif", tiff(w, h, 4, rgba, 2, extra_samples=1))
    write(d, "tiff_cmyk.tif", tiff(w, h, 4, rgba, 5))
    jpegs(d)


# --- text -------------------------------------------------------------------------------------

def texts():
    d = out_dir("tokenizer")
    samples = [
        "a photo of a cat",
        "A Photo Of THE Dog's bed, it's 3.5m long!!",
        "Broken text&hellip; it&#x2019;s ﬂubberiﬁc!",
        "âœ” No problems",
        "ＬＯＵＤ　ＮＯＩＳＥＳ",
        "<start_of_text>hello<end_of_text> <|startoftext|>x<|endoftext|>",
        "emoji 🌈😀 👩‍👩‍👧 and CJK 猫の写真 and Ελληνικά",
        "tabs\tand\nnew\r\nlines\u00a0nbsp\u2028sep\x1b[31mred\x1b[0m",
        "combining ι\u0345 e\u0301 ﬀ ﬃ",
        "<b>bold</b> &amp; &lt;tag&gt; &#1234; &#xZZ; &notanentity;",
        "ÃƒÂ©tÃƒÂ© mojibake twice",
        "word " * 100,
    ]
    for i, s in enumerate(samples):
        write(d, "text_%02d.txt" % i, s.encode("utf-8"))
    write(d, "invalid_utf8.bin", b"caf\xe9 \xff\xfe \xc3\x28 ok")


def filters():
    d = out_dir("filter_parse")
    samples = [
        'price >= 10 AND (tags:red OR colour = "dark blue") AND NOT sold',
        "count != 3 OR title:'dark blue shirt'",
        "date >= 2024-01-01 AND date < \"2025-01-01\"",
        "id = doc-1",
        "NOT NOT (empty OR none) AND nested",
        "tags:7 AND price < 1e3 AND price > -1.5",
        "sold = false OR sold = true",
        "((((a))))",
        'title = "quote \\" inside" and x <= 0x10',
    ]
    for i, s in enumerate(samples):
        write(d, "filter_%02d.txt" % i, s.encode("utf-8"))


# --- checkpoints ------------------------------------------------------------------------------

def safetensors():
    d = out_dir("safetensors")
    import json

    def st(tensors):
        header, data = {}, b""
        for name, (dtype, shape, raw) in tensors.items():
            header[name] = {"dtype": dtype, "shape": shape,
                            "data_offsets": [len(data), len(data) + len(raw)]}
            data += raw
        header["__metadata__"] = {"format": "pt"}
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        return struct.pack("<Q", len(h)) + h + data

    f32 = lambda vals: struct.pack("<%df" % len(vals), *vals)
    write(d, "open_clip.safetensors", st({
        "visual.conv1.weight": ("F32", [2, 3, 1, 1], f32([0.5 * i for i in range(6)])),
        "token_embedding.weight": ("F16", [4, 2], bytes(range(16))),
        "logit_scale": ("F32", [], f32([4.6])),
        "positional_embedding": ("BF16", [2, 2], bytes(range(8))),
    }))
    write(d, "hf.safetensors", st({
        "vision_model.embeddings.patch_embedding.weight": ("F32", [1, 3, 2, 2], f32([1.0] * 12)),
        "text_model.embeddings.position_ids": ("I64", [1, 3], struct.pack("<3q", 0, 1, 2)),
        "logit_scale": ("F32", [1], f32([2.0])),
        "module.text_model.final_layer_norm.bias": ("F64", [2], struct.pack("<2d", 0, 1)),
        "u8": ("U8", [3], b"\x01\x02\x03"),
    }))


class _Fake:
    """Stands for a torch class in the pickle (module and name as torch writes them)."""


def _fake_module(name, **attrs):
    import types
    m = types.ModuleType(name)
    for k, v in attrs.items():
        v.__module__ = name
        v.__qualname__ = k
        setattr(m, k, v)
    sys.modules[name] = m
    return m


def pytorch():
    d = out_dir("pytorch")

    def rebuild_tensor_v2(*a):
        pass

    def rebuild_parameter(*a):
        pass

    storages = {n: type(n, (), {}) for n in ["FloatStorage", "HalfStorage", "LongStorage",
                                               "BFloat16Storage", "DoubleStorage", "ByteStorage"]}
    _fake_module("torch", **storages)
    _fake_module("torch._utils", _rebuild_tensor_v2=rebuild_tensor_v2,
                 _rebuild_parameter=rebuild_parameter)

    class Storage:
        def __init__(self, kind, key, numel):
            self.kind, self.key, self.numel = kind, key, numel

    class Rebuild:
        def __init__(self, storage, offset, size, stride, param=False):
            self.args = (storage, offset, tuple(size), tuple(stride), False,
                         collections.OrderedDict())
            self.param = param

        def __reduce__(self):
            t = (rebuild_tensor_v2, self.args)
            if self.param:
                return (rebuild_parameter, (_Reduced(t), False, collections.OrderedDict()))
            return t

    class _Reduced:
        def __init__(self, t):
            self.t = t

        def __reduce__(self):
            return self.t

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", storages[obj.kind], obj.key, "cpu", obj.numel)
            return None

    def pt(obj, blobs, prefix="archive"):
        buf = io.BytesIO()
        P(buf, protocol=2).dump(obj)
        z = io.BytesIO()
        with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(prefix + "/data.pkl", buf.getvalue())
            zf.writestr(prefix + "/byteorder", "little")
            for k, v in blobs.items():
                zf.writestr(prefix + "/data/" + k, v)
            zf.writestr(prefix + "/version", "3\n")
        return z.getvalue()

    f32 = lambda vals: struct.pack("<%df" % len(vals), *vals)
    s0 = Storage("FloatStorage", "0", 6)
    s1 = Storage("HalfStorage", "1", 4)
    s2 = Storage("LongStorage", "2", 3)
    sd = collections.OrderedDict([
        ("visual.conv1.weight", Rebuild(s0, 0, [2, 3], [3, 1])),
        ("visual.proj", Rebuild(s0, 0, [3, 2], [1, 3])),  # Fortran order (a transpose)
        ("token_embedding.weight", Rebuild(s1, 1, [3], [1], param=True)),
        ("text.position_ids", Rebuild(s2, 0, [1, 3], [3, 1])),
        ("logit_scale", Rebuild(s0, 5, [], [])),
    ])
    blobs = {"0": f32([0.1 * i for i in range(6)]), "1": bytes(range(8)),
             "2": struct.pack("<3q", 0, 1, 2)}
    write(d, "state_dict.pt", pt(sd, blobs))
    write(d, "wrapped.pt", pt({"state_dict": sd, "epoch": 3}, blobs, prefix="checkpoint"))
    hf = collections.OrderedDict([
        ("vision_model.embeddings.class_embedding", Rebuild(s0, 0, [6], [1])),
        ("module.text_model.final_layer_norm.weight", Rebuild(s0, 2, [2, 2], [2, 1], param=True)),
    ])
    write(d, "hf.bin", pt(hf, {"0": blobs["0"]}))
    # Known issue (fuzz/regressions/pytorch/): a storage claiming 2^31 elements.
    reg = os.path.join(HERE, "regressions", "pytorch")
    os.makedirs(reg, exist_ok=True)
    huge = collections.OrderedDict([
        ("visual.conv1.weight", Rebuild(Storage("FloatStorage", "0", 1 << 31), 0, [1 << 31],
                                        [1])),
    ])
    with open(os.path.join(reg, "huge_storage_claim.pt"), "wb") as f:
        f.write(pt(huge, {"0": f32([1.0, 2.0])}))

    # Known issue: a `_rebuild_tensor_v2` call with fewer than four arguments makes candle's
    # pickle reader index past the argument list (a panic inside `Weights::open`).
    class ShortRebuild:
        def __reduce__(self):
            return (rebuild_tensor_v2, (s0, 0))

    short = collections.OrderedDict([("visual.conv1.weight", ShortRebuild())])
    with open(os.path.join(reg, "short_rebuild_args.pt"), "wb") as f:
        f.write(pt(short, {"0": f32([1.0] * 6)}))


if __name__ == "__main__":
    images()
    texts()
    filters()
    safetensors()
    pytorch()
    total = 0
    for t in sorted(os.listdir(os.path.join(HERE, "corpus"))):
        files = os.listdir(os.path.join(HERE, "corpus", t))
        size = sum(os.path.getsize(os.path.join(HERE, "corpus", t, f)) for f in files)
        total += size
        print("%-14s %3d files %8d bytes" % (t, len(files), size))
    print("total %d bytes" % total)
