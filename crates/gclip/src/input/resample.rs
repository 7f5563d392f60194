//! Resampling that reproduces Pillow's `Image.resize` bit for bit.
//!
//! Written from Pillow's documented behaviour (see "Filters" in its concepts page and the
//! `Image.resize` reference), checked against Pillow 13 on generated fixtures:
//!
//! * Convolution filters (box, bilinear, hamming, bicubic with `a = -0.5`, lanczos with
//!   three lobes) are evaluated separably. For each output position the filter is centred
//!   at `(x + 0.5) * scale` in input coordinates; when downscaling, its support widens by the
//!   scale factor (this is Pillow's antialiasing). The weights of one output position are
//!   divided by their sum.
//! * For 8-bit data the weights become signed fixed-point integers with 22 fractional bits,
//!   rounded half away from zero; each output is `(Σ pixel·weight + 2²¹) >> 22`, clamped to
//!   `0..=255`. Normally the horizontal pass runs first (on the rows the vertical pass will
//!   read) and its 8-bit result feeds the vertical pass. Integer sums are exact, so the order of the
//!   additions does not matter here and the loops are free to be vectorised.
//! * Pillow 13 runs the vertical pass first instead when the height shrinks by more than
//!   twice as many pixels as the width; the order matters because the intermediate image is
//!   rounded to 8 bits.
//! * 16-bit single-channel data (Pillow's `I;16`) is filtered in double precision, summed in
//!   tap order, rounded half away from zero and clamped to `0..=65535` after each pass.
//! * Nearest-neighbour (used by Pillow for palette and bilevel images whatever filter is
//!   asked for) samples at `(x + 0.5) * scale`, accumulated step by step in double precision
//!   exactly as Pillow's affine scaler walks the image.
//!
//! Alpha premultiplication and the per-mode choice of filter belong to the caller
//! (`image.rs`), which knows the image mode.

/// A resampling filter, numbered as in Pillow (`Image.Resampling`) and in
/// `preprocessor_config.json` files (`"resample": 3` is bicubic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Nearest neighbour (Pillow id 0).
    Nearest,
    /// Lanczos, three lobes (Pillow id 1).
    Lanczos,
    /// Bilinear (triangle) filter (Pillow id 2).
    Bilinear,
    /// Bicubic convolution with `a = -0.5` (Pillow id 3).
    Bicubic,
    /// Box filter (Pillow id 4).
    Box,
    /// Hamming-windowed sinc (Pillow id 5).
    Hamming,
}

impl Filter {
    /// The filter with Pillow's numeric id, if there is one.
    pub fn from_pil_id(id: i64) -> Option<Filter> {
        Some(match id {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }

    /// Half-width of the filter at scale 1, in input pixels.
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes these two constants as single-precision literals.
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Normalised filter weights for one axis: output position `i` reads input positions
/// `start[i] .. start[i] + len[i]` with weights `k[i * ksize ..][.. len[i]]`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    k: Vec<f64>,
}

fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // Pillow takes the source box as single-precision floats; whole sizes convert exactly.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;
    let mut k = vec![0.0f64; out_size * ksize];
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        // C's float-to-int conversion truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let row = &mut k[xx * ksize..xx * ksize + n];
        let mut ww = 0.0;
        for (x, w) in row.iter_mut().enumerate() {
            *w = filter.eval(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
            ww += *w;
        }
        if ww != 0.0 {
            for w in row.iter_mut() {
                *w /= ww;
            }
        }
        start.push(xmin);
        len.push(n);
    }
    Coeffs {
        ksize,
        start,
        len,
        k,
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn fixed_point(k: &[f64]) -> Vec<i32> {
    let one = (1u32 << PRECISION_BITS) as f64;
    k.iter()
        .map(|&w| {
            if w < 0.0 {
                (-0.5 + w * one) as i32
            } else {
                (0.5 + w * one) as i32
            }
        })
        .collect()
}

#[inline(always)]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize an 8-bit image of `channels` interleaved channels (1 to 4) like Pillow's
/// `Image.resize` for modes `L`, `RGB`, `CMYK`, premultiplied `La`/`RGBa`, and (with
/// [`Filter::Nearest`]) `P` and `1`.
pub fn resize_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * height * channels);
    if (width, height) == (out_w, out_h) {
        return src.to_vec();
    }
    if filter == Filter::Nearest {
        return nearest(src, width, height, channels, out_w, out_h);
    }
    resample_u8(src, width, height, channels, out_w, out_h, filter)
}

/// One call of Pillow's separable resampler on 8-bit data (see [`horizontal_first`] for the
/// order of the passes). Uses AVX2 when the CPU has it; the integer results are the same.
fn resample_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { resample_u8_avx2(src, width, height, channels, out_w, out_h, filter) };
    }
    resample_u8_impl::<false>(src, width, height, channels, out_w, out_h, filter)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resample_u8_avx2(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    resample_u8_impl::<true>(src, width, height, channels, out_w, out_h, filter)
}

#[inline(always)]
fn resample_u8_impl<const AVX2: bool>(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    let need_h = out_w != width;
    let need_v = out_h != height;
    if !need_h && !need_v {
        return src.to_vec();
    }
    let horizontal = |rows: &[u8], out_w: usize| {
        let horiz = precompute(width, out_w, filter);
        let kk = fixed_point(&horiz.k);
        match channels {
            #[cfg(target_arch = "x86_64")]
            3 | 4 if AVX2 => {
                // SAFETY: AVX2 is only requested from `resample_u8_avx2`, which runs on CPUs
                // that have it.
                unsafe { avx2::horizontal(rows, width, channels, out_w, &horiz, &kk) }
            }
            1 => horizontal_u8::<1>(rows, width, out_w, &horiz, &kk),
            2 => horizontal_u8::<2>(rows, width, out_w, &horiz, &kk),
            3 => horizontal_u8::<3>(rows, width, out_w, &horiz, &kk),
            _ => horizontal_u8::<4>(rows, width, out_w, &horiz, &kk),
        }
    };
    let vert = precompute(height, out_h, filter);
    if !horizontal_first(width, height, out_w, out_h) {
        let kk = fixed_point(&vert.k);
        let tmp = vertical_u8(src, width * channels, 0, out_h, &vert, &kk);
        return if need_h { horizontal(&tmp, out_w) } else { tmp };
    }
    let (rows_first, rows_last) = if need_h && need_v {
        let last = out_h - 1;
        (vert.start[0], vert.start[last] + vert.len[last])
    } else {
        (0, height)
    };
    let tmp;
    let (img, img_w, row0) = if need_h {
        let rows = &src[rows_first * width * channels..rows_last * width * channels];
        tmp = horizontal(rows, out_w);
        (&tmp[..], out_w, rows_first)
    } else {
        (src, width, 0)
    };
    if !need_v {
        return img.to_vec();
    }
    let kk = fixed_point(&vert.k);
    vertical_u8(img, img_w * channels, row0, out_h, &vert, &kk)
}

/// Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
/// pixels as the width does (the horizontal pass then has fewer rows to filter).
fn horizontal_first(width: usize, height: usize, out_w: usize, out_h: usize) -> bool {
    let dy = height as i64 - out_h as i64;
    let dx = width as i64 - out_w as i64;
    !(dy > 0 && dy > dx * 2)
}

#[inline(always)]
fn horizontal_u8<const C: usize>(
    rows: &[u8],
    width: usize,
    out_w: usize,
    co: &Coeffs,
    kk: &[i32],
) -> Vec<u8> {
    let n_rows = rows.len() / (width * C);
    let mut out = vec![0u8; n_rows * out_w * C];
    for (line_in, line_out) in rows
        .chunks_exact(width * C)
        .zip(out.chunks_exact_mut(out_w * C))
    {
        for xx in 0..out_w {
            let xmin = co.start[xx];
            let n = co.len[xx];
            let k = &kk[xx * co.ksize..xx * co.ksize + n];
            let px = &line_in[xmin * C..(xmin + n) * C];
            let mut ss = [1i32 << (PRECISION_BITS - 1); C];
            for (p, &w) in px.chunks_exact(C).zip(k) {
                for c in 0..C {
                    ss[c] += p[c] as i32 * w;
                }
            }
            for c in 0..C {
                line_out[xx * C + c] = clip8(ss[c]);
            }
        }
    }
    out
}

/// `img` holds whole rows of `stride` bytes; row `r` of the coefficient bounds is row
/// `r - row0` of `img`.
#[inline(always)]
fn vertical_u8(
    img: &[u8],
    stride: usize,
    row0: usize,
    out_h: usize,
    co: &Coeffs,
    kk: &[i32],
) -> Vec<u8> {
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for (yy, line_out) in out.chunks_exact_mut(stride).enumerate() {
        let ymin = co.start[yy] - row0;
        let n = co.len[yy];
        let k = &kk[yy * co.ksize..yy * co.ksize + n];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (y, &w) in k.iter().enumerate() {
            let line_in = &img[(ymin + y) * stride..(ymin + y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(line_in) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in line_out.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// The horizontal pass for 3- and 4-channel rows with AVX2: two taps per step, each pixel's
/// channels in four 32-bit lanes, products and sums in 32-bit integers exactly as in
/// [`horizontal_u8`].
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Coeffs, PRECISION_BITS};

    /// # Safety
    /// The CPU must support AVX2. `channels` is 3 or 4.
    #[target_feature(enable = "avx2")]
    pub unsafe fn horizontal(
        rows: &[u8],
        width: usize,
        channels: usize,
        out_w: usize,
        co: &Coeffs,
        kk: &[i32],
    ) -> Vec<u8> {
        let c = channels;
        let n_rows = rows.len() / (width * c);
        let mut out = vec![0u8; n_rows * out_w * c];
        // Each step loads 8 bytes; a padded copy of the row keeps the last loads in bounds.
        let mut line = vec![0u8; width * c + 16];
        // Bytes of two consecutive pixels spread to [p0 c0..c3 | p1 c0..c3] (3 channels: a zero
        // byte in the fourth place).
        let spread = if c == 3 {
            _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, -1, -1, -1, -1, -1, -1, -1, -1)
        } else {
            _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -1, -1, -1, -1, -1, -1, -1, -1)
        };
        let dup = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let half = 1i32 << (PRECISION_BITS - 1);
        for (line_in, line_out) in rows
            .chunks_exact(width * c)
            .zip(out.chunks_exact_mut(out_w * c))
        {
            line[..width * c].copy_from_slice(line_in);
            let base = line.as_ptr();
            for xx in 0..out_w {
                let xmin = co.start[xx];
                let n = co.len[xx];
                let k = &kk[xx * co.ksize..xx * co.ksize + n];
                let mut acc = _mm256_setzero_si256();
                let mut t = 0;
                while t + 2 <= n {
                    // SAFETY: pixel xmin + t + 1 < width, and the row copy has 16 spare bytes.
                    let px = _mm_loadl_epi64(base.add((xmin + t) * c) as *const __m128i);
                    let px = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(px, spread));
                    let kv = _mm_loadl_epi64(k.as_ptr().add(t) as *const __m128i);
                    let kv = _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(kv), dup);
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(px, kv));
                    t += 2;
                }
                let mut sum = _mm_add_epi32(
                    _mm256_castsi256_si128(acc),
                    _mm256_extracti128_si256::<1>(acc),
                );
                if t < n {
                    let px = _mm_cvtsi32_si128(
                        (base.add((xmin + t) * c) as *const i32).read_unaligned(),
                    );
                    let px = _mm_cvtepu8_epi32(px);
                    sum = _mm_add_epi32(sum, _mm_mullo_epi32(px, _mm_set1_epi32(k[t])));
                }
                let sum = _mm_add_epi32(sum, _mm_set1_epi32(half));
                let v = _mm_srai_epi32::<{ PRECISION_BITS as i32 }>(sum);
                let mut lanes = [0i32; 4];
                _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, v);
                for (o, &l) in line_out[xx * c..xx * c + c].iter_mut().zip(&lanes) {
                    *o = l.clamp(0, 255) as u8;
                }
            }
        }
        out
    }
}

/// Pillow's rounding of a double to an integer: half away from zero, through a
/// single-precision `0.5`.
#[inline(always)]
fn round_up(f: f64) -> i64 {
    if f >= 0.0 {
        (f + 0.5f32 as f64) as i64
    } else {
        (f - 0.5f32 as f64) as i64
    }
}

/// Resize 16-bit single-channel data (Pillow's `I;16`) like `Image.resize`.
pub fn resize_u16(
    src: &[u16],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u16> {
    debug_assert_eq!(src.len(), width * height);
    if (width, height) == (out_w, out_h) {
        return src.to_vec();
    }
    if filter == Filter::Nearest {
        return nearest(src, width, height, 1, out_w, out_h);
    }
    resample_u16(src, width, height, out_w, out_h, filter)
}

fn resample_u16(
    src: &[u16],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u16> {
    let need_h = out_w != width;
    let need_v = out_h != height;
    if !need_h && !need_v {
        return src.to_vec();
    }
    let vert = precompute(height, out_h, filter);
    if !horizontal_first(width, height, out_w, out_h) {
        let tmp = vertical_u16(src, width, 0, out_h, &vert);
        return if need_h {
            horizontal_u16(&tmp, width, out_w, filter)
        } else {
            tmp
        };
    }
    let (rows_first, rows_last) = if need_h && need_v {
        let last = out_h - 1;
        (vert.start[0], vert.start[last] + vert.len[last])
    } else {
        (0, height)
    };
    if !need_h {
        return vertical_u16(src, width, 0, out_h, &vert);
    }
    let tmp = horizontal_u16(
        &src[rows_first * width..rows_last * width],
        width,
        out_w,
        filter,
    );
    if !need_v {
        return tmp;
    }
    vertical_u16(&tmp, out_w, rows_first, out_h, &vert)
}

fn clip16(f: f64) -> u16 {
    round_up(f).clamp(0, 65535) as u16
}

fn horizontal_u16(rows: &[u16], width: usize, out_w: usize, filter: Filter) -> Vec<u16> {
    let co = precompute(width, out_w, filter);
    let mut out = vec![0u16; rows.len() / width * out_w];
    for (line_in, line_out) in rows.chunks_exact(width).zip(out.chunks_exact_mut(out_w)) {
        for (xx, o) in line_out.iter_mut().enumerate() {
            let (xmin, n) = (co.start[xx], co.len[xx]);
            let k = &co.k[xx * co.ksize..xx * co.ksize + n];
            let mut ss = 0.0f64;
            for (&p, &w) in line_in[xmin..xmin + n].iter().zip(k) {
                ss += p as f64 * w;
            }
            *o = clip16(ss);
        }
    }
    out
}

fn vertical_u16(img: &[u16], img_w: usize, row0: usize, out_h: usize, vert: &Coeffs) -> Vec<u16> {
    let mut out = vec![0u16; out_h * img_w];
    for (yy, line_out) in out.chunks_exact_mut(img_w).enumerate() {
        let (ymin, n) = (vert.start[yy] - row0, vert.len[yy]);
        let k = &vert.k[yy * vert.ksize..yy * vert.ksize + n];
        for (xx, o) in line_out.iter_mut().enumerate() {
            let mut ss = 0.0f64;
            for (y, &w) in k.iter().enumerate() {
                ss += img[(ymin + y) * img_w + xx] as f64 * w;
            }
            *o = clip16(ss);
        }
    }
    out
}

/// Pillow's nearest-neighbour scaling (its affine scaler): the sample position starts at
/// half a step and is advanced by repeated double-precision additions; positions that fall
/// outside the source leave the output at zero.
pub fn nearest<T: Copy + Default>(
    src: &[T],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<T> {
    let a0 = (width as f32) as f64 / out_w as f64;
    let a4 = (height as f32) as f64 / out_h as f64;
    let coord = |v: f64| -> i64 {
        if v < 0.0 {
            -1
        } else {
            v as i64
        }
    };
    let mut xin = Vec::with_capacity(out_w);
    let mut xo = a0 * 0.5;
    for _ in 0..out_w {
        let x = coord(xo);
        xin.push(if x >= 0 && (x as usize) < width {
            Some(x as usize)
        } else {
            None
        });
        xo += a0;
    }
    let mut out = vec![T::default(); out_w * out_h * channels];
    let mut yo = a4 * 0.5;
    for line_out in out.chunks_exact_mut(out_w * channels) {
        let y = coord(yo);
        yo += a4;
        if y < 0 || y as usize >= height {
            continue;
        }
        let line_in = &src[y as usize * width * channels..(y as usize + 1) * width * channels];
        for (xx, x) in xin.iter().enumerate() {
            if let Some(x) = x {
                line_out[xx * channels..(xx + 1) * channels]
                    .copy_from_slice(&line_in[x * channels..(x + 1) * channels]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let src: Vec<u8> = (0..48).map(|i| i as u8).collect();
        assert_eq!(resize_u8(&src, 4, 4, 3, 4, 4, Filter::Bicubic), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![200u8; 37 * 23 * 3];
        let out = resize_u8(&src, 37, 23, 3, 11, 29, Filter::Bicubic);
        assert!(out.iter().all(|&v| v == 200));
        let src16 = vec![40000u16; 37 * 23];
        let out16 = resize_u16(&src16, 37, 23, 11, 29, Filter::Bicubic);
        assert!(out16.iter().all(|&v| v == 40000));
    }

    #[test]
    fn weights_sum_to_one() {
        for filter in [
            Filter::Bicubic,
            Filter::Lanczos,
            Filter::Bilinear,
            Filter::Box,
            Filter::Hamming,
        ] {
            let co = precompute(1000, 77, filter);
            for i in 0..77 {
                let s: f64 = co.k[i * co.ksize..i * co.ksize + co.len[i]].iter().sum();
                assert!((s - 1.0).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn avx2_paths_match_portable_paths() {
        let mut seed = 99u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for &(w, h, ow, oh) in &[
            (97, 61, 40, 25),
            (40, 25, 97, 61),
            (300, 20, 31, 77),
            (5, 3, 64, 64),
        ] {
            for c in 1..=4 {
                let src: Vec<u8> = (0..w * h * c).map(|_| next() as u8).collect();
                for filter in [Filter::Bicubic, Filter::Lanczos, Filter::Bilinear] {
                    let portable = resample_u8_impl::<false>(&src, w, h, c, ow, oh, filter);
                    assert_eq!(
                        resample_u8(&src, w, h, c, ow, oh, filter),
                        portable,
                        "{w}x{h}x{c} -> {ow}x{oh} {filter:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn nearest_picks_centres() {
        let src: Vec<u8> = (0..10).collect();
        assert_eq!(nearest(&src, 10, 1, 1, 5, 1), vec![1, 3, 5, 7, 9]);
    }
}
