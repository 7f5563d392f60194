//! Image decoding into the pixel layout Pillow would hold after `Image.open`.
//!
//! Both reference pipelines start from a Pillow image, and the open_clip convention resizes
//! *before* converting to RGB, so what Pillow keeps about an image decides the result: whether
//! it is a palette image (resized with nearest neighbour), whether it has alpha (resized
//! premultiplied), whether it is 16-bit grey (resized in 16 bits), and which colour the file
//! marks as transparent (used by the transformers convention when compositing onto white).
//! [`Decoded`] keeps exactly that, in one of Pillow's modes ([`Mode`]).
//!
//! Per format, the mode Pillow picks (from its plugin documentation and behaviour):
//! * PNG: grey 1-bit → `1`; grey 2/4/8-bit → `L` (values scaled to 0..255); grey 16-bit →
//!   `I;16`; grey+alpha 8-bit → `LA`, 16-bit → `RGBA`; RGB(A) 16-bit → 8-bit by keeping the high
//!   byte; indexed → `P`. `tRNS` becomes the transparency key (a palette index when exactly one
//!   entry is fully transparent and the rest opaque, else per-entry alphas).
//! * JPEG: `L`, `RGB`, or `CMYK` (4-channel files are read with Adobe's inverted polarity).
//! * GIF: the first frame on the logical screen; `L` when the palette is the identity grey
//!   ramp, else `P`; the graphic-control transparent index is kept.
//! * BMP: 1/4/8-bit → `P`, or `1`/`L` when the palette is the black-white / grey ramp; 16-bit
//!   → `RGB` (5-5-5 or 5-6-5); 24/32-bit → `RGB` (32-bit alpha only with an alpha bitmask).
//! * WebP: `RGB`, or `RGBA` when the file has alpha.
//! * TIFF: `1`, `L`, `I;16`, `LA`, `RGB`, `RGBA` (associated alpha un-premultiplied as Pillow
//!   does), `CMYK`; 16-bit colour keeps the high byte. Palette TIFFs are not supported.
//!
//! Not supported (a typed [`DecodeError::Unsupported`] error, where Pillow would decode):
//! arithmetic-coded, 12-bit, lossless and hierarchical JPEG; palette TIFF, TIFF with 32-bit
//! integer or float samples (Pillow's `I` and `F` modes), and TIFF compressions other than
//! none, PackBits, LZW and Deflate; BMP with RLE or embedded JPEG/PNG. Animated GIF and WebP
//! give their first frame, as with Pillow before `seek`.

use std::io::Cursor;

pub use super::format::{DecodeError, Format};

/// Pillow image modes that decoding can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bilevel (`1`); stored as 0 or 255 per pixel.
    Bilevel,
    /// 8-bit grey.
    L,
    /// 8-bit grey and alpha.
    La,
    /// 8-bit palette indices.
    P,
    /// 8-bit RGB.
    Rgb,
    /// 8-bit RGB with (non-premultiplied) alpha.
    Rgba,
    /// 8-bit CMYK.
    Cmyk,
    /// 16-bit grey (`I;16`).
    I16,
}

impl Mode {
    /// Interleaved channels per pixel.
    pub fn channels(self) -> usize {
        match self {
            Mode::Bilevel | Mode::L | Mode::P | Mode::I16 => 1,
            Mode::La => 2,
            Mode::Rgb => 3,
            Mode::Rgba | Mode::Cmyk => 4,
        }
    }

    /// Pillow's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Bilevel => "1",
            Mode::L => "L",
            Mode::La => "LA",
            Mode::P => "P",
            Mode::Rgb => "RGB",
            Mode::Rgba => "RGBA",
            Mode::Cmyk => "CMYK",
            Mode::I16 => "I;16",
        }
    }

    /// The mode Pillow calls `name`, if decoding can produce it.
    pub fn from_name(name: &str) -> Option<Mode> {
        [
            Mode::Bilevel,
            Mode::L,
            Mode::La,
            Mode::P,
            Mode::Rgb,
            Mode::Rgba,
            Mode::Cmyk,
            Mode::I16,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

/// The colour a file marks as transparent (Pillow's `info["transparency"]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transparency {
    /// A grey value for `1`, `L` and `I;16` images, as stored in the file.
    Grey(u16),
    /// An RGB value for `RGB` images, as stored in the file (16-bit for 16-bit PNGs).
    Rgb([u16; 3]),
    /// One fully transparent palette index.
    Index(u8),
    /// Alpha for the first palette entries.
    Alphas(Vec<u8>),
}

/// Pixel samples: 8-bit for every mode but `I;16`.
#[derive(Clone, Debug)]
pub enum Samples {
    /// Interleaved 8-bit samples, `mode.channels()` per pixel, rows top to bottom.
    U8(Vec<u8>),
    /// 16-bit grey samples (mode `I;16`).
    U16(Vec<u16>),
}

/// A decoded image in one of Pillow's modes.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// The format it came from.
    pub format: Format,
    /// Pillow's mode.
    pub mode: Mode,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The samples.
    pub samples: Samples,
    /// RGB palette of `P` images (up to 256 entries).
    pub palette: Vec<[u8; 3]>,
    /// Transparency key, if the file has one.
    pub transparency: Option<Transparency>,
    /// EXIF orientation tag (1..=8), when present.
    pub orientation: Option<u16>,
}

impl Decoded {
    /// An image from pixels already in memory, as Pillow's `Image.frombytes(mode, size, data)`
    /// takes them: `width * height * mode.channels()` interleaved samples, rows top to bottom
    /// (8-bit; `I;16` takes 16-bit samples as [`Samples::U16`]). `palette` is for `P` images
    /// (RGB triples, at most 256); a `1` image holds 0 or 255 per pixel. The size is checked
    /// against `max_pixels` as a decoded file's is.
    pub fn from_pixels(
        mode: Mode,
        width: usize,
        height: usize,
        samples: Samples,
        palette: Vec<[u8; 3]>,
        transparency: Option<Transparency>,
        max_pixels: u64,
    ) -> Result<Decoded, DecodeError> {
        let unsupported = |m: String| DecodeError::Unsupported(Format::Pixels, m);
        check_size(width as u64, height as u64, max_pixels)?;
        let want = width * height * mode.channels();
        let (len, bits) = match &samples {
            Samples::U8(v) => (v.len(), 8),
            Samples::U16(v) => (v.len(), 16),
        };
        if (mode == Mode::I16) != (bits == 16) {
            return Err(unsupported(format!(
                "mode {} takes {} samples, not {bits}-bit ones",
                mode.name(),
                if mode == Mode::I16 { "16-bit" } else { "8-bit" }
            )));
        }
        if len != want {
            return Err(DecodeError::Corrupt(
                Format::Pixels,
                format!(
                    "{width}x{height} {} needs {want} samples, got {len}",
                    mode.name()
                ),
            ));
        }
        if mode == Mode::P && (palette.is_empty() || palette.len() > 256) {
            return Err(unsupported(format!(
                "a P image needs a palette of 1 to 256 colours, got {}",
                palette.len()
            )));
        }
        if mode == Mode::Bilevel {
            if let Samples::U8(v) = &samples {
                if v.iter().any(|&x| x != 0 && x != 255) {
                    return Err(unsupported(
                        "a 1 (bilevel) image holds 0 or 255 per pixel".into(),
                    ));
                }
            }
        }
        Ok(Decoded {
            format: Format::Pixels,
            mode,
            width,
            height,
            samples,
            palette: if mode == Mode::P { palette } else { Vec::new() },
            transparency,
            orientation: None,
        })
    }
}

fn check_size(w: u64, h: u64, max_pixels: u64) -> Result<(), DecodeError> {
    if w == 0 || h == 0 {
        return Err(DecodeError::ZeroSized(w, h));
    }
    if w.saturating_mul(h) > max_pixels {
        return Err(DecodeError::TooLarge(w, h, max_pixels));
    }
    Ok(())
}

/// Decode a whole file, refusing images of more than `max_pixels` pixels before their
/// pixel data is decoded.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = Format::sniff(bytes).ok_or(DecodeError::UnknownFormat)?;
    let result = std::panic::catch_unwind(|| match format {
        Format::Png => decode_png(bytes, max_pixels),
        Format::Jpeg => decode_jpeg(bytes, max_pixels),
        Format::Gif => decode_gif(bytes, max_pixels),
        Format::Bmp => decode_bmp(bytes, max_pixels),
        Format::Webp => decode_webp(bytes, max_pixels),
        Format::Tiff => decode_tiff(bytes, max_pixels),
        // `sniff` never answers this: raw pixels are not a file format.
        Format::Pixels => Err(DecodeError::UnknownFormat),
    });
    match result {
        Ok(r) => r,
        // Third-party decoders should not panic on bad input; if one does, report the file
        // as corrupt rather than bringing down a batch.
        Err(_) => Err(DecodeError::Corrupt(format, "decoder panicked".into())),
    }
}

fn new_decoded(
    format: Format,
    mode: Mode,
    width: usize,
    height: usize,
    samples: Samples,
) -> Decoded {
    Decoded {
        format,
        mode,
        width,
        height,
        samples,
        palette: Vec::new(),
        transparency: None,
        orientation: None,
    }
}

// ---------------------------------------------------------------------------------------------
// PNG

fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    let corrupt = |e: png::DecodingError| DecodeError::Corrupt(Format::Png, e.to_string());
    // The size sits at a fixed place in the IHDR chunk: check it before the decoder reads on.
    if bytes.len() >= 24 && &bytes[12..16] == b"IHDR" {
        let be = |o: usize| {
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as u64
        };
        check_size(be(16), be(20), max_pixels)?;
    }
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    decoder.set_limits(png::Limits { bytes: usize::MAX });
    // The header alone tells the size: check it before any pixel data is inflated.
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let (w, h, color, depth, palette, trns, exif) = {
        let info = reader.info();
        (
            info.width as usize,
            info.height as usize,
            info.color_type,
            info.bit_depth as u8,
            info.palette.as_ref().map(|p| p.to_vec()),
            info.trns.as_ref().map(|t| t.to_vec()),
            info.exif_metadata.as_ref().map(|e| e.to_vec()),
        )
    };
    check_size(w as u64, h as u64, max_pixels)?;
    let size = reader
        .output_buffer_size()
        .ok_or(DecodeError::TooLarge(w as u64, h as u64, max_pixels))?;
    // Deflate expands at most 1032:1, so compressed data too short for the declared size means
    // a corrupt or truncated file: refuse it before allocating the declared size.
    if let Some(compressed) = png_idat_bytes(bytes) {
        if size as u64 > compressed.saturating_mul(DEFLATE_MAX_RATIO) + 1024 {
            return Err(DecodeError::Corrupt(
                Format::Png,
                format!(
                    "image data is truncated: {compressed} bytes of compressed data cannot \
                     hold a {w}x{h} image"
                ),
            ));
        }
    }
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(corrupt)?;
    let line = out.line_size;
    let rows = buf.chunks_exact(line).take(h);
    use png::ColorType as C;
    let i16be = |s: &[u8], i: usize| u16::from_be_bytes([s[2 * i], s[2 * i + 1]]);
    let mut d = match (color, depth) {
        (C::Grayscale, 1) => {
            let mut v = Vec::with_capacity(w * h);
            for r in rows {
                v.extend((0..w).map(|x| {
                    if r[x / 8] >> (7 - x % 8) & 1 == 1 {
                        255
                    } else {
                        0
                    }
                }));
            }
            new_decoded(Format::Png, Mode::Bilevel, w, h, Samples::U8(v))
        }
        (C::Grayscale | C::Indexed, 1 | 2 | 4) => {
            let bits = depth as usize;
            let per = 8 / bits;
            let mask = (1u8 << bits) - 1;
            // Pillow scales packed grey to 0..255; palette indices stay as they are.
            let scale = if color == C::Grayscale { 255 / mask } else { 1 };
            let mut v = Vec::with_capacity(w * h);
            for r in rows {
                v.extend((0..w).map(|x| {
                    let shift = 8 - bits * (x % per + 1);
                    ((r[x / per] >> shift) & mask) * scale
                }));
            }
            let mode = if color == C::Grayscale {
                Mode::L
            } else {
                Mode::P
            };
            new_decoded(Format::Png, mode, w, h, Samples::U8(v))
        }
        (C::Grayscale, 8) => new_decoded(
            Format::Png,
            Mode::L,
            w,
            h,
            Samples::U8(rows.flat_map(|r| r[..w].iter().copied()).collect()),
        ),
        (C::Indexed, 8) => new_decoded(
            Format::Png,
            Mode::P,
            w,
            h,
            Samples::U8(rows.flat_map(|r| r[..w].iter().copied()).collect()),
        ),
        (C::Grayscale, 16) => {
            let mut v = Vec::with_capacity(w * h);
            for r in rows {
                v.extend((0..w).map(|x| i16be(r, x)));
            }
            new_decoded(Format::Png, Mode::I16, w, h, Samples::U16(v))
        }
        (C::Rgb, 8) => new_decoded(
            Format::Png,
            Mode::Rgb,
            w,
            h,
            Samples::U8(rows.flat_map(|r| r[..w * 3].iter().copied()).collect()),
        ),
        (C::Rgba, 8) => new_decoded(
            Format::Png,
            Mode::Rgba,
            w,
            h,
            Samples::U8(rows.flat_map(|r| r[..w * 4].iter().copied()).collect()),
        ),
        (C::GrayscaleAlpha, 8) => new_decoded(
            Format::Png,
            Mode::La,
            w,
            h,
            Samples::U8(rows.flat_map(|r| r[..w * 2].iter().copied()).collect()),
        ),
        // 16-bit colour keeps the high byte of each sample.
        (C::Rgb, 16) => new_decoded(
            Format::Png,
            Mode::Rgb,
            w,
            h,
            Samples::U8(
                rows.flat_map(|r| r[..w * 6].iter().step_by(2).copied())
                    .collect(),
            ),
        ),
        (C::Rgba, 16) => new_decoded(
            Format::Png,
            Mode::Rgba,
            w,
            h,
            Samples::U8(
                rows.flat_map(|r| r[..w * 8].iter().step_by(2).copied())
                    .collect(),
            ),
        ),
        (C::GrayscaleAlpha, 16) => {
            let mut v = Vec::with_capacity(w * h * 4);
            for r in rows {
                for x in 0..w {
                    let (l, a) = (r[4 * x], r[4 * x + 2]);
                    v.extend_from_slice(&[l, l, l, a]);
                }
            }
            new_decoded(Format::Png, Mode::Rgba, w, h, Samples::U8(v))
        }
        (c, b) => {
            return Err(DecodeError::Unsupported(
                Format::Png,
                format!("{c:?} at {b} bits"),
            ))
        }
    };
    if d.mode == Mode::P {
        let p = palette.ok_or_else(|| {
            DecodeError::Corrupt(Format::Png, "indexed image without PLTE".into())
        })?;
        d.palette = p.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    }
    if let Some(t) = trns {
        // The png crate keeps 16-bit keys as big-endian pairs and shortens lower-depth keys
        // to their low byte.
        let be = |i: usize| -> u16 {
            if depth == 16 {
                t.get(2 * i..2 * i + 2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(0)
            } else {
                t.get(i).copied().unwrap_or(0) as u16
            }
        };
        d.transparency = match d.mode {
            Mode::P => {
                // One fully transparent entry among opaque ones: Pillow keeps just its index.
                let zeros = t.iter().filter(|&&a| a == 0).count();
                let simple = zeros == 1 && t.iter().all(|&a| a == 0 || a == 255);
                if simple {
                    t.iter()
                        .position(|&a| a == 0)
                        .map(|i| Transparency::Index(i as u8))
                } else {
                    Some(Transparency::Alphas(t.clone()))
                }
            }
            Mode::Bilevel => Some(Transparency::Grey(if be(0) != 0 { 255 } else { 0 })),
            Mode::L | Mode::I16 => Some(Transparency::Grey(be(0))),
            Mode::Rgb if color == C::Rgb => Some(Transparency::Rgb([be(0), be(1), be(2)])),
            _ => None,
        };
    }
    d.orientation = exif.as_deref().and_then(exif_orientation);
    Ok(d)
}

/// The largest expansion of deflate: a 258-byte match coded in two bits.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// Total length of a PNG's `IDAT` chunks, or `None` when the chunk list is malformed (the
/// decoder then reports what is wrong).
fn png_idat_bytes(bytes: &[u8]) -> Option<u64> {
    let mut pos = 8usize;
    let mut total = 0u64;
    loop {
        let head = bytes.get(pos..pos.checked_add(8)?)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        match &head[4..8] {
            // Only the bytes present count (a cut-off chunk declares more than it has).
            b"IDAT" => total += len.min(bytes.len() - pos - 8) as u64,
            b"IEND" => return Some(total),
            _ => {}
        }
        pos = pos.checked_add(12)?.checked_add(len)?;
        if pos >= bytes.len() {
            // A file cut short: count what it has.
            return Some(total);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JPEG

fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    let img = super::jpeg::decode(bytes, max_pixels)?;
    let (mode, mut px) = match img.color {
        super::jpeg::JpegColor::Grey => (Mode::L, img.pixels),
        super::jpeg::JpegColor::Rgb => (Mode::Rgb, img.pixels),
        super::jpeg::JpegColor::Cmyk => (Mode::Cmyk, img.pixels),
    };
    if mode == Mode::Cmyk {
        // Pillow reads every CMYK JPEG with Adobe's inverted polarity ("CMYK;I").
        for v in px.iter_mut() {
            *v = 255 - *v;
        }
    }
    let mut d = new_decoded(Format::Jpeg, mode, img.width, img.height, Samples::U8(px));
    d.orientation = img.exif.as_deref().and_then(exif_orientation);
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// GIF

fn decode_gif(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    let corrupt = |e: gif::DecodingError| DecodeError::Corrupt(Format::Gif, e.to_string());
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    opts.check_frame_consistency(false);
    opts.set_memory_limit(gif::MemoryLimit::Unlimited);
    let mut dec = opts.read_info(Cursor::new(bytes)).map_err(corrupt)?;
    let (sw, sh) = (dec.width() as usize, dec.height() as usize);
    let global = dec.global_palette().map(|p| p.to_vec());
    let frame = dec
        .next_frame_info()
        .map_err(corrupt)?
        .ok_or_else(|| DecodeError::Corrupt(Format::Gif, "no image in file".into()))?;
    let (left, top, fw, fh) = (
        frame.left as usize,
        frame.top as usize,
        frame.width as usize,
        frame.height as usize,
    );
    let transparent = frame.transparent;
    let local = frame.palette.clone();
    // A frame reaching past the logical screen enlarges the image, as in Pillow.
    let (w, h) = (sw.max(left + fw), sh.max(top + fh));
    check_size(w as u64, h as u64, max_pixels)?;
    let mut buf = vec![0u8; fw * fh];
    dec.read_into_buffer(&mut buf).map_err(corrupt)?;
    let palette = local.or(global);
    // Pillow drops a palette that is the identity grey ramp and calls the image "L".
    let palette_needed = palette
        .as_ref()
        .map(|p| {
            p.chunks_exact(3)
                .enumerate()
                .any(|(i, c)| !(i == c[0] as usize && c[0] == c[1] && c[1] == c[2]))
        })
        .unwrap_or(false);
    let fill = transparent.unwrap_or(0);
    let mut px = vec![fill; w * h];
    for y in 0..fh {
        px[(top + y) * w + left..(top + y) * w + left + fw]
            .copy_from_slice(&buf[y * fw..(y + 1) * fw]);
    }
    let mode = if palette_needed { Mode::P } else { Mode::L };
    let mut d = new_decoded(Format::Gif, mode, w, h, Samples::U8(px));
    if palette_needed {
        d.palette = palette
            .unwrap_or_default()
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        d.transparency = transparent.map(Transparency::Index);
    } else {
        d.transparency = transparent.map(|t| Transparency::Grey(t as u16));
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// BMP

fn decode_bmp(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    let bad = |m: &str| DecodeError::Corrupt(Format::Bmp, m.to_string());
    let u16le = |o: usize| -> Result<u16, DecodeError> {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("truncated header"))
    };
    let u32le = |o: usize| -> Result<u32, DecodeError> {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("truncated header"))
    };
    let offset = u32le(10)? as usize;
    let header = u32le(14)? as usize;
    let (width, height, bits, compression, colors, pal_entry);
    if header == 12 {
        width = u16le(18)? as i64;
        height = u16le(20)? as i16 as i64;
        bits = u16le(24)?;
        compression = 0;
        colors = 0;
        pal_entry = 3;
    } else if header >= 40 {
        width = u32le(18)? as i32 as i64;
        height = u32le(22)? as i32 as i64;
        bits = u16le(28)?;
        compression = u32le(30)?;
        colors = u32le(46)? as usize;
        pal_entry = 4;
    } else {
        return Err(DecodeError::Unsupported(
            Format::Bmp,
            format!("header size {header}"),
        ));
    }
    let top_down = height < 0;
    let (w, h) = (
        width.unsigned_abs() as usize,
        height.unsigned_abs() as usize,
    );
    check_size(w as u64, h as u64, max_pixels)?;
    // Bit masks: in the header for V4/V5, after the 40-byte header for BITFIELDS.
    let masks = if compression == 3 || compression == 6 {
        let base = 14 + 40;
        let m = |i: usize| {
            u32le(if header >= 52 {
                14 + 40 + 4 * i
            } else {
                base + 4 * i
            })
        };
        let alpha = if header >= 56 || compression == 6 {
            m(3)?
        } else {
            0
        };
        Some([m(0)?, m(1)?, m(2)?, alpha])
    } else if compression == 0 {
        None
    } else {
        return Err(DecodeError::Unsupported(
            Format::Bmp,
            format!("compression {compression} (RLE and embedded JPEG/PNG are not supported)"),
        ));
    };
    let stride = (w * bits as usize).div_ceil(32) * 4;
    let need = offset
        .checked_add(stride.checked_mul(h).ok_or_else(|| bad("size overflow"))?)
        .ok_or_else(|| bad("size overflow"))?;
    if bytes.len() < need {
        return Err(bad("truncated pixel data"));
    }
    let row = |y: usize| -> &[u8] {
        let r = if top_down { y } else { h - 1 - y };
        &bytes[offset + r * stride..offset + (r + 1) * stride]
    };
    match bits {
        1 | 4 | 8 => {
            let n = if colors == 0 || colors > 256 {
                1usize << bits
            } else {
                colors
            };
            let pstart = 14 + header;
            let pal_bytes = bytes
                .get(pstart..pstart + n * pal_entry)
                .ok_or_else(|| bad("truncated palette"))?;
            let palette: Vec<[u8; 3]> = pal_bytes
                .chunks_exact(pal_entry)
                .map(|c| [c[2], c[1], c[0]])
                .collect();
            let per = 8 / bits as usize;
            let mask = ((1u16 << bits) - 1) as u8;
            let mut px = Vec::with_capacity(w * h);
            for y in 0..h {
                let r = row(y);
                px.extend((0..w).map(|x| {
                    let shift = 8 - bits as usize * (x % per + 1);
                    (r[x / per] >> shift) & mask
                }));
            }
            // Pillow turns a black-white or grey-ramp palette into mode "1" or "L".
            let ramp: Vec<u8> = if n == 2 {
                vec![0, 255]
            } else {
                (0..n).map(|i| i as u8).collect()
            };
            let grey = palette.iter().zip(&ramp).all(|(c, &v)| c == &[v, v, v]);
            if grey {
                let mode = if n == 2 { Mode::Bilevel } else { Mode::L };
                let px = if n == 2 {
                    px.iter().map(|&i| if i != 0 { 255 } else { 0 }).collect()
                } else {
                    px
                };
                Ok(new_decoded(Format::Bmp, mode, w, h, Samples::U8(px)))
            } else {
                let mut d = new_decoded(Format::Bmp, Mode::P, w, h, Samples::U8(px));
                d.palette = palette;
                Ok(d)
            }
        }
        16 => {
            let five65 = matches!(masks, Some([0xF800, 0x7E0, 0x1F, _]));
            if let Some(m) = masks {
                if !five65 && m[..3] != [0x7C00, 0x3E0, 0x1F] {
                    return Err(DecodeError::Unsupported(
                        Format::Bmp,
                        "16-bit bitfields layout".into(),
                    ));
                }
            }
            let mut px = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                let r = row(y);
                for x in 0..w {
                    let p = u16::from_le_bytes([r[2 * x], r[2 * x + 1]]) as u32;
                    if five65 {
                        px.extend_from_slice(
                            &[
                                ((p >> 11) & 31) * 255 / 31,
                                ((p >> 5) & 63) * 255 / 63,
                                (p & 31) * 255 / 31,
                            ]
                            .map(|v| v as u8),
                        );
                    } else {
                        px.extend_from_slice(
                            &[
                                ((p >> 10) & 31) * 255 / 31,
                                ((p >> 5) & 31) * 255 / 31,
                                (p & 31) * 255 / 31,
                            ]
                            .map(|v| v as u8),
                        );
                    }
                }
            }
            Ok(new_decoded(Format::Bmp, Mode::Rgb, w, h, Samples::U8(px)))
        }
        24 => {
            if let Some(m) = masks {
                if m[..3] != [0xFF0000, 0xFF00, 0xFF] {
                    return Err(DecodeError::Unsupported(
                        Format::Bmp,
                        "24-bit bitfields layout".into(),
                    ));
                }
            }
            let mut px = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                for p in row(y)[..w * 3].chunks_exact(3) {
                    px.extend_from_slice(&[p[2], p[1], p[0]]);
                }
            }
            Ok(new_decoded(Format::Bmp, Mode::Rgb, w, h, Samples::U8(px)))
        }
        32 => {
            // Without bit masks Pillow reads 32-bit BMPs as BGRX: the fourth byte is ignored.
            let m = masks.unwrap_or([0xFF0000, 0xFF00, 0xFF, 0]);
            let shift = |mask: u32| mask.trailing_zeros();
            let ok = m[..3]
                .iter()
                .all(|&c| c.count_ones() == 8 && c >> shift(c) == 0xFF)
                && (m[3] == 0 || (m[3].count_ones() == 8 && m[3] >> shift(m[3]) == 0xFF));
            let m = if m == [0, 0, 0, 0] {
                [0xFF0000, 0xFF00, 0xFF, 0xFF000000]
            } else {
                m
            };
            if !ok && m != [0xFF0000, 0xFF00, 0xFF, 0xFF000000] {
                return Err(DecodeError::Unsupported(
                    Format::Bmp,
                    "32-bit bitfields layout".into(),
                ));
            }
            let alpha = m[3] != 0;
            let mode = if alpha { Mode::Rgba } else { Mode::Rgb };
            let mut px = Vec::with_capacity(w * h * mode.channels());
            for y in 0..h {
                for p in row(y)[..w * 4].chunks_exact(4) {
                    let v = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                    let ch = |mask: u32| ((v & mask) >> shift(mask)) as u8;
                    px.extend_from_slice(&[ch(m[0]), ch(m[1]), ch(m[2])]);
                    if alpha {
                        px.push(ch(m[3]));
                    }
                }
            }
            Ok(new_decoded(Format::Bmp, mode, w, h, Samples::U8(px)))
        }
        b => Err(DecodeError::Unsupported(
            Format::Bmp,
            format!("{b} bits per pixel"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// WebP

fn decode_webp(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    let corrupt = |e: image_webp::DecodingError| DecodeError::Corrupt(Format::Webp, e.to_string());
    let mut dec = image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(corrupt)?;
    let (w, h) = dec.dimensions();
    let (w, h) = (w as usize, h as usize);
    check_size(w as u64, h as u64, max_pixels)?;
    let mode = if dec.has_alpha() {
        Mode::Rgba
    } else {
        Mode::Rgb
    };
    let mut px = vec![0u8; w * h * mode.channels()];
    dec.read_image(&mut px).map_err(corrupt)?;
    let mut d = new_decoded(Format::Webp, mode, w, h, Samples::U8(px));
    d.orientation = dec
        .exif_metadata()
        .ok()
        .flatten()
        .as_deref()
        .and_then(exif_orientation);
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// TIFF

fn decode_tiff(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    use tiff::decoder::DecodingResult;
    use tiff::tags::Tag;
    use tiff::ColorType as C;
    let corrupt = |e: tiff::TiffError| match e {
        tiff::TiffError::UnsupportedError(u) => {
            DecodeError::Unsupported(Format::Tiff, u.to_string())
        }
        e => DecodeError::Corrupt(Format::Tiff, e.to_string()),
    };
    let mut dec = tiff::decoder::Decoder::new(Cursor::new(bytes)).map_err(corrupt)?;
    let (w, h) = dec.dimensions().map_err(corrupt)?;
    let (w, h) = (w as usize, h as usize);
    check_size(w as u64, h as u64, max_pixels)?;
    // The pixel cap bounds the image buffer; a tag's values must lie within the file, so a
    // tag claiming more than the file holds is refused instead of allocated.
    let mut limits = tiff::decoder::Limits::unlimited();
    limits.ifd_value_size = bytes.len();
    dec = dec.with_limits(limits);
    let color = dec.colortype().map_err(corrupt)?;
    let associated_alpha = dec
        .find_tag(Tag::ExtraSamples)
        .ok()
        .flatten()
        .and_then(|v| v.into_u16().ok())
        == Some(1);
    let orientation = dec
        .find_tag(Tag::Orientation)
        .ok()
        .flatten()
        .and_then(|v| v.into_u16().ok());
    let colormap = if matches!(color, C::Palette(_)) {
        dec.get_tag_u16_vec(Tag::ColorMap).ok()
    } else {
        None
    };
    let image = dec.read_image().map_err(corrupt)?;
    let unsupported = |c: &C| Err(DecodeError::Unsupported(Format::Tiff, format!("{c:?}")));
    let mut d = match (&color, image) {
        (C::Gray(8), DecodingResult::U8(v)) => {
            new_decoded(Format::Tiff, Mode::L, w, h, Samples::U8(v))
        }
        (C::Gray(16), DecodingResult::U16(v)) => {
            new_decoded(Format::Tiff, Mode::I16, w, h, Samples::U16(v))
        }
        (C::Gray(1), DecodingResult::U8(v)) => {
            let stride = w.div_ceil(8);
            let mut px = Vec::with_capacity(w * h);
            for y in 0..h {
                px.extend((0..w).map(|x| {
                    if v[y * stride + x / 8] >> (7 - x % 8) & 1 == 1 {
                        255
                    } else {
                        0
                    }
                }));
            }
            new_decoded(Format::Tiff, Mode::Bilevel, w, h, Samples::U8(px))
        }
        (C::GrayA(8), DecodingResult::U8(v)) => {
            new_decoded(Format::Tiff, Mode::La, w, h, Samples::U8(v))
        }
        (C::RGB(8), DecodingResult::U8(v)) => {
            new_decoded(Format::Tiff, Mode::Rgb, w, h, Samples::U8(v))
        }
        (C::RGBA(8), DecodingResult::U8(mut v)) => {
            if associated_alpha {
                // Pillow un-premultiplies associated alpha on load ("RGBa" raw mode).
                for p in v.chunks_exact_mut(4) {
                    let a = p[3] as u32;
                    if a == 0 {
                        p.fill(0);
                    } else if a != 255 {
                        for s in &mut p[..3] {
                            *s = (*s as u32 * 255 / a).min(255) as u8;
                        }
                    }
                }
            }
            new_decoded(Format::Tiff, Mode::Rgba, w, h, Samples::U8(v))
        }
        (C::CMYK(8), DecodingResult::U8(v)) => {
            new_decoded(Format::Tiff, Mode::Cmyk, w, h, Samples::U8(v))
        }
        (C::RGB(16), DecodingResult::U16(v)) => new_decoded(
            Format::Tiff,
            Mode::Rgb,
            w,
            h,
            Samples::U8(v.iter().map(|&s| (s >> 8) as u8).collect()),
        ),
        (C::RGBA(16), DecodingResult::U16(v)) => new_decoded(
            Format::Tiff,
            Mode::Rgba,
            w,
            h,
            Samples::U8(v.iter().map(|&s| (s >> 8) as u8).collect()),
        ),
        (C::Palette(8), DecodingResult::U8(v)) => {
            let map = colormap.ok_or_else(|| {
                DecodeError::Corrupt(Format::Tiff, "palette image without ColorMap".into())
            })?;
            let n = map.len() / 3;
            let mut d = new_decoded(Format::Tiff, Mode::P, w, h, Samples::U8(v));
            d.palette = (0..n)
                .map(|i| {
                    [
                        (map[i] >> 8) as u8,
                        (map[n + i] >> 8) as u8,
                        (map[2 * n + i] >> 8) as u8,
                    ]
                })
                .collect();
            d
        }
        (c, _) => return unsupported(c),
    };
    let expected = w * h * d.mode.channels();
    let len = match &d.samples {
        Samples::U8(v) => v.len(),
        Samples::U16(v) => v.len(),
    };
    if len < expected {
        return Err(DecodeError::Corrupt(
            Format::Tiff,
            "short pixel data".into(),
        ));
    }
    // Only the eight EXIF orientations mean anything (as in the JPEG and WebP paths).
    d.orientation = orientation.filter(|o| (1..=8).contains(o));
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// EXIF

/// The Orientation tag (0x0112) of an EXIF block (a TIFF structure, optionally preceded by
/// `Exif\0\0`).
pub fn exif_orientation(exif: &[u8]) -> Option<u16> {
    let t = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
    let le = match t.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |o: usize| {
        t.get(o..o + 2).map(|b| {
            if le {
                u16::from_le_bytes([b[0], b[1]])
            } else {
                u16::from_be_bytes([b[0], b[1]])
            }
        })
    };
    let u32_at = |o: usize| {
        t.get(o..o + 4).map(|b| {
            if le {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            } else {
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            }
        })
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    for i in 0..n {
        let e = ifd + 2 + 12 * i;
        if u16_at(e)? == 0x0112 {
            let v = u16_at(e + 8)?;
            return (1..=8).contains(&v).then_some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(Format::sniff(b"\x89PNG\r\n\x1a\n...."), Some(Format::Png));
        assert_eq!(Format::sniff(b"hello"), None);
    }

    #[test]
    fn exif_orientation_both_byte_orders() {
        let mut le = b"Exif\0\0II*\0\x08\0\0\0\x01\0".to_vec();
        le.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
        assert_eq!(exif_orientation(&le), Some(6));
        let mut be = b"MM\0*\0\0\0\x08\0\x01".to_vec();
        be.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 8, 0, 0]);
        assert_eq!(exif_orientation(&be), Some(8));
        assert_eq!(exif_orientation(b"junk"), None);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(decode(b"", 1000), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(b"not an image", 1000),
            Err(DecodeError::UnknownFormat)
        ));
        assert!(matches!(
            decode(b"\x89PNG\r\n\x1a\n\0\0", 1000),
            Err(DecodeError::Corrupt(..))
        ));
    }
}
