//! The marker segments: quantisation and Huffman tables, frame and scan headers, and the walk
//! through them that runs each decoding stage.

use super::color::{assemble, output_color, InColor};
use super::entropy::{decode_scan, Huffman};
use super::idct::idct_blocks;
use super::{
    corrupt, unsupported, Component, DecodeError, Frame, JpegColor, JpegImage, MIN_BLOCKS_PER_BYTE,
    TRUNCATION_SLACK, ZIGZAG,
};

/// Decode a JPEG file. Images above `max_pixels` are refused after the frame header.
pub fn decode(data: &[u8], max_pixels: u64) -> Result<JpegImage, DecodeError> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(corrupt("missing start-of-image marker"));
    }
    let mut pos = 2;
    let mut qt = [[0u16; 64]; 4];
    let mut dc_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut frame: Option<Frame> = None;
    let mut restart_interval = 0usize;
    let mut exif = None;
    let mut jfif = false;
    let mut adobe: Option<u8> = None;
    let mut eobrun = 0u32;
    let mut scans = 0usize;
    loop {
        // Find the next marker (skipping fill bytes).
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1;
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        if pos >= data.len() {
            if scans > 0 {
                break; // missing EOI after complete data: tolerated
            }
            return Err(corrupt("image data is truncated"));
        }
        let marker = data[pos];
        pos += 1;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 => break,
            _ => {}
        }
        let len = match data.get(pos..pos + 2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
            None => return Err(corrupt("image data is truncated")),
        };
        if len < 2 || pos + len > data.len() {
            return Err(corrupt("image data is truncated"));
        }
        let seg = &data[pos + 2..pos + len];
        pos += len;
        match marker {
            0xDB => {
                let mut s = seg;
                while !s.is_empty() {
                    let pq = s[0] >> 4;
                    let tq = (s[0] & 15) as usize;
                    if tq > 3 {
                        return Err(corrupt("bad quantisation table id"));
                    }
                    let n = if pq == 0 { 64 } else { 128 };
                    if s.len() < 1 + n {
                        return Err(corrupt("short quantisation table"));
                    }
                    for i in 0..64 {
                        qt[tq][ZIGZAG[i]] = if pq == 0 {
                            s[1 + i] as u16
                        } else {
                            u16::from_be_bytes([s[1 + 2 * i], s[2 + 2 * i]])
                        };
                    }
                    s = &s[1 + n..];
                }
            }
            0xC4 => {
                let mut s = seg;
                while !s.is_empty() {
                    if s.len() < 17 {
                        return Err(corrupt("short Huffman table"));
                    }
                    let class = s[0] >> 4;
                    let id = (s[0] & 15) as usize;
                    let mut counts = [0u8; 16];
                    counts.copy_from_slice(&s[1..17]);
                    let total: usize = counts.iter().map(|&c| c as usize).sum();
                    if s.len() < 17 + total || id > 3 {
                        return Err(corrupt("bad Huffman table"));
                    }
                    let table = Huffman::new(&counts, s[17..17 + total].to_vec())?;
                    if class == 0 {
                        dc_tables[id] = Some(table);
                    } else {
                        ac_tables[id] = Some(table);
                    }
                    s = &s[17 + total..];
                }
            }
            0xDD => {
                if seg.len() < 2 {
                    return Err(corrupt("short restart interval"));
                }
                restart_interval = u16::from_be_bytes([seg[0], seg[1]]) as usize;
            }
            0xE0 if seg.starts_with(b"JFIF\0") => jfif = true,
            0xE1 if seg.starts_with(b"Exif\0\0") && exif.is_none() => exif = Some(seg.to_vec()),
            0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => adobe = Some(seg[11]),
            0xC0..=0xC2 => {
                if frame.is_some() {
                    return Err(corrupt("more than one frame"));
                }
                frame = Some(parse_frame(
                    seg,
                    marker == 0xC2,
                    max_pixels,
                    data.len() - pos,
                )?);
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(unsupported(
                    "lossless, hierarchical or arithmetic-coded JPEG",
                ));
            }
            0xDA => {
                let f = frame
                    .as_mut()
                    .ok_or_else(|| corrupt("scan before frame header"))?;
                pos = decode_scan(
                    f,
                    seg,
                    data,
                    pos,
                    &qt,
                    &dc_tables,
                    &ac_tables,
                    restart_interval,
                    &mut eobrun,
                )?;
                scans += 1;
            }
            _ => {}
        }
    }
    let mut f = frame.ok_or_else(|| corrupt("no frame header"))?;
    if scans == 0 {
        return Err(corrupt("no image data"));
    }
    if f.progressive {
        for c in f.comps.iter_mut() {
            let q = qt[c.tq];
            c.plane = vec![0u8; c.bw * 8 * c.bh * 8];
            idct_blocks(&c.coefs, c.bw, c.bw, &q, &mut c.plane);
            c.coefs = Vec::new();
        }
    }
    let color = output_color(&f, jfif, adobe)?;
    let pixels = assemble(&f, color);
    let out_color = match color {
        InColor::Grey => JpegColor::Grey,
        InColor::Rgb | InColor::YCbCr => JpegColor::Rgb,
        InColor::Cmyk | InColor::Ycck => JpegColor::Cmyk,
    };
    Ok(JpegImage {
        width: f.width,
        height: f.height,
        color: out_color,
        pixels,
        exif,
    })
}

/// Width and height from the frame header, without decoding (for size checks).
pub fn dimensions(data: &[u8]) -> Option<(usize, usize)> {
    let mut pos = 2;
    while pos + 4 <= data.len() {
        if data[pos] != 0xFF {
            pos += 1;
            continue;
        }
        let m = data[pos + 1];
        if m == 0xFF || m == 0xD8 || m == 0x01 || (0xD0..=0xD7).contains(&m) {
            pos += 1;
            continue;
        }
        let len = u16::from_be_bytes([data[pos + 2], data[pos + 3]]) as usize;
        if matches!(m, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            let s = data.get(pos + 4..pos + 9)?;
            return Some((
                u16::from_be_bytes([s[3], s[4]]) as usize,
                u16::from_be_bytes([s[1], s[2]]) as usize,
            ));
        }
        pos += 2 + len;
    }
    None
}

/// Parses a frame header and allocates the component planes. `data_after` is the number of
/// bytes that follow the header: the planes are only allocated when those bytes could hold
/// the image (see [`MIN_BLOCKS_PER_BYTE`]), so a small file cannot claim a large allocation.
fn parse_frame(
    seg: &[u8],
    progressive: bool,
    max_pixels: u64,
    data_after: usize,
) -> Result<Frame, DecodeError> {
    if seg.len() < 6 {
        return Err(corrupt("short frame header"));
    }
    if seg[0] != 8 {
        return Err(unsupported(format!("{}-bit samples", seg[0])));
    }
    let height = u16::from_be_bytes([seg[1], seg[2]]) as usize;
    let width = u16::from_be_bytes([seg[3], seg[4]]) as usize;
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSized(width as u64, height as u64));
    }
    if (width as u64) * (height as u64) > max_pixels {
        return Err(DecodeError::TooLarge(
            width as u64,
            height as u64,
            max_pixels,
        ));
    }
    let n = seg[5] as usize;
    if !matches!(n, 1 | 3 | 4) || seg.len() < 6 + 3 * n {
        return Err(unsupported(format!("{n} components")));
    }
    let mut comps = Vec::with_capacity(n);
    for i in 0..n {
        let c = &seg[6 + 3 * i..9 + 3 * i];
        let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
            return Err(corrupt("bad sampling factors"));
        }
        comps.push(Component {
            id: c[0],
            h,
            v,
            tq: c[2] as usize,
            w_samples: 0,
            h_samples: 0,
            bw: 0,
            bh: 0,
            dc_table: 0,
            ac_table: 0,
            pred: 0,
            coefs: Vec::new(),
            plane: Vec::new(),
        });
    }
    let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
    // libjpeg upsamples by whole factors only ("fractional sampling not implemented").
    if comps
        .iter()
        .any(|c| !hmax.is_multiple_of(c.h) || !vmax.is_multiple_of(c.v))
    {
        return Err(unsupported(format!(
            "fractional sampling factors ({})",
            comps
                .iter()
                .map(|c| format!("{}x{}", c.h, c.v))
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    // Every scan codes each of its blocks in at least one bit, and some component must be
    // coded: fewer bytes than the smallest component's blocks need cannot be the image.
    let fewest_blocks = comps
        .iter()
        .map(|c| {
            ((width * c.h).div_ceil(hmax).div_ceil(8)) * ((height * c.v).div_ceil(vmax).div_ceil(8))
        })
        .min()
        .unwrap_or(0);
    if fewest_blocks > MIN_BLOCKS_PER_BYTE * (data_after + TRUNCATION_SLACK) {
        return Err(corrupt(format!(
            "image data is truncated: a {width}x{height} image needs more than the {data_after} \
             bytes that follow its frame header"
        )));
    }
    let mcus_x = width.div_ceil(8 * hmax);
    let mcus_y = height.div_ceil(8 * vmax);
    for c in comps.iter_mut() {
        c.w_samples = (width * c.h).div_ceil(hmax);
        c.h_samples = (height * c.v).div_ceil(vmax);
        c.bw = mcus_x * c.h;
        c.bh = mcus_y * c.v;
        if progressive {
            c.coefs = vec![0i16; c.bw * c.bh * 64];
        } else {
            c.plane = vec![0u8; c.bw * 8 * c.bh * 8];
        }
    }
    Ok(Frame {
        width,
        height,
        progressive,
        comps,
        hmax,
        vmax,
        mcus_x,
        mcus_y,
    })
}
