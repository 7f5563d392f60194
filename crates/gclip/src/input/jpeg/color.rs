//! Chroma upsampling ("fancy" triangle filters or replication) and conversion to the output
//! colour space.

use super::{unsupported, Component, DecodeError, Frame};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum InColor {
    Grey,
    Rgb,
    YCbCr,
    Cmyk,
    Ycck,
}

pub(super) fn output_color(
    f: &Frame,
    jfif: bool,
    adobe: Option<u8>,
) -> Result<InColor, DecodeError> {
    Ok(match f.comps.len() {
        1 => InColor::Grey,
        3 => {
            if jfif {
                InColor::YCbCr
            } else if let Some(t) = adobe {
                if t == 0 {
                    InColor::Rgb
                } else {
                    InColor::YCbCr
                }
            } else {
                let ids: Vec<u8> = f.comps.iter().map(|c| c.id).collect();
                if ids == [82, 71, 66] {
                    InColor::Rgb
                } else {
                    InColor::YCbCr
                }
            }
        }
        4 => match adobe {
            Some(0) | None => InColor::Cmyk,
            Some(_) => InColor::Ycck,
        },
        n => return Err(unsupported(format!("{n} components"))),
    })
}

/// Upsample row `y` of component `c` to full resolution into `out` (at least `width` samples
/// are written; a few more may be). `sums` is scratch space of at least `c.w_samples` entries.
#[inline(always)]
fn upsample_row(c: &Component, f: &Frame, y: usize, out: &mut [u8], sums: &mut [u32]) {
    let w = f.width;
    let stride = c.bw * 8;
    let (fx, fy) = (f.hmax / c.h, f.vmax / c.v);
    let (cw, ch) = (c.w_samples, c.h_samples);
    let row = |y: usize| &c.plane[y * stride..y * stride + cw];
    // The frame header guarantees whole ratios.
    if fx == 1 && fy == 1 {
        out[..w].copy_from_slice(&row(y)[..w]);
    } else if fx == 2 && fy == 1 {
        if cw > 2 {
            h2_fancy(row(y), out);
        } else {
            replicate(row(y), out, 2);
        }
    } else if fx == 1 && fy == 2 {
        let (cur, near, bias) = v2_rows(y, ch);
        for ((o, &a), &b) in out[..w].iter_mut().zip(row(cur)).zip(row(near)) {
            *o = ((a as u32 * 3 + b as u32 + bias) >> 2) as u8;
        }
    } else if fx == 2 && fy == 2 && cw > 2 {
        let (cur, near, _) = v2_rows(y, ch);
        for ((s, &a), &b) in sums[..cw].iter_mut().zip(row(cur)).zip(row(near)) {
            *s = a as u32 * 3 + b as u32;
        }
        h2v2_horizontal(&sums[..cw], out);
    } else {
        // Plain replication (libjpeg's integral-factor upsampler).
        replicate(row((y / fy).min(ch - 1)), out, fx);
    }
}

/// For 2:1 vertical upsampling: the input row of output row `y`, its nearer neighbour (the row
/// above for even rows, below for odd ones, edges replicated), and the rounding bias.
#[inline(always)]
fn v2_rows(y: usize, ch: usize) -> (usize, usize, u32) {
    let cur = (y / 2).min(ch - 1);
    if y.is_multiple_of(2) {
        (cur, cur.saturating_sub(1), 1)
    } else {
        (cur, (cur + 1).min(ch - 1), 2)
    }
}

#[inline(always)]
fn replicate(src: &[u8], out: &mut [u8], f: usize) {
    for (o, &s) in out.chunks_exact_mut(f).zip(src) {
        o.fill(s);
    }
}

/// 2:1 horizontal triangle filter on one row of `n > 2` samples.
#[inline(always)]
fn h2_fancy(s: &[u8], out: &mut [u8]) {
    let n = s.len();
    out[0] = s[0];
    out[1] = ((s[0] as u32 * 3 + s[1] as u32 + 2) >> 2) as u8;
    for (i, o) in out[2..2 * n - 2].chunks_exact_mut(2).enumerate() {
        let c = s[i + 1] as u32 * 3;
        o[0] = ((c + s[i] as u32 + 1) >> 2) as u8;
        o[1] = ((c + s[i + 2] as u32 + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((s[n - 1] as u32 * 3 + s[n - 2] as u32 + 1) >> 2) as u8;
    out[2 * n - 1] = s[n - 1];
}

/// Horizontal half of the 2:1 × 2:1 triangle filter, on column sums `3·near + far`.
#[inline(always)]
fn h2v2_horizontal(s: &[u32], out: &mut [u8]) {
    let n = s.len();
    out[0] = ((s[0] * 4 + 8) >> 4) as u8;
    out[1] = ((s[0] * 3 + s[1] + 7) >> 4) as u8;
    for (i, o) in out[2..2 * n - 2].chunks_exact_mut(2).enumerate() {
        let c = s[i + 1] * 3;
        o[0] = ((c + s[i] + 8) >> 4) as u8;
        o[1] = ((c + s[i + 2] + 7) >> 4) as u8;
    }
    out[2 * n - 2] = ((s[n - 1] * 3 + s[n - 2] + 8) >> 4) as u8;
    out[2 * n - 1] = ((s[n - 1] * 4 + 7) >> 4) as u8;
}

#[inline(always)]
fn clamp8(x: i32) -> u8 {
    x.clamp(0, 255) as u8
}

/// YCbCr → RGB of one pixel with libjpeg's 16-bit fixed-point constants (the values its lookup
/// tables hold: FIX(1.402) = 91881, FIX(0.34414) = 22554, FIX(0.71414) = 46802,
/// FIX(1.772) = 116130, rounding constant 2^15).
#[inline(always)]
pub(super) fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (y as i32, cb as i32 - 128, cr as i32 - 128);
    [
        clamp8(y + ((91881 * cr + 32768) >> 16)),
        clamp8(y + ((-22554 * cb - 46802 * cr + 32768) >> 16)),
        clamp8(y + ((116130 * cb + 32768) >> 16)),
    ]
}

/// Upsample every component and convert to the output colour space, row by row.
pub(super) fn assemble(f: &Frame, color: InColor) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { assemble_avx2(f, color) };
    }
    assemble_generic::<false>(f, color)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn assemble_avx2(f: &Frame, color: InColor) -> Vec<u8> {
    assemble_generic::<true>(f, color)
}

#[inline(always)]
fn assemble_generic<const AVX2: bool>(f: &Frame, color: InColor) -> Vec<u8> {
    let (w, h) = (f.width, f.height);
    let k = f.comps.len();
    let mut out = vec![0u8; w * h * k];
    let widest = f
        .comps
        .iter()
        .map(|c| c.w_samples * (f.hmax / c.h).max(1))
        .max()
        .unwrap_or(0)
        .max(w)
        + 8;
    let mut rows = vec![vec![0u8; widest]; k];
    let mut sums = vec![0u32; widest];
    for (y, line) in out.chunks_exact_mut(w * k).enumerate() {
        for (c, r) in f.comps.iter().zip(rows.iter_mut()) {
            upsample_row(c, f, y, r, &mut sums);
        }
        match (color, k) {
            (InColor::Grey, _) => line.copy_from_slice(&rows[0][..w]),
            (InColor::YCbCr, 3) => {
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if AVX2 {
                    // SAFETY: AVX2 is only requested from `assemble_avx2`.
                    done = unsafe {
                        super::avx2::ycc_to_rgb_row(
                            &rows[0][..w],
                            &rows[1][..w],
                            &rows[2][..w],
                            line,
                        )
                    };
                }
                for (((o, &yy), &cb), &cr) in line[done * 3..]
                    .chunks_exact_mut(3)
                    .zip(&rows[0][done..w])
                    .zip(&rows[1][done..w])
                    .zip(&rows[2][done..w])
                {
                    o.copy_from_slice(&ycc_to_rgb(yy, cb, cr));
                }
            }
            (InColor::Ycck, 4) => {
                for (x, o) in line.chunks_exact_mut(4).enumerate() {
                    let [r, g, b] = ycc_to_rgb(rows[0][x], rows[1][x], rows[2][x]);
                    o.copy_from_slice(&[255 - r, 255 - g, 255 - b, rows[3][x]]);
                }
            }
            _ => {
                for (x, o) in line.chunks_exact_mut(k).enumerate() {
                    for (ci, v) in o.iter_mut().enumerate() {
                        *v = rows[ci][x];
                    }
                }
            }
        }
    }
    out
}
