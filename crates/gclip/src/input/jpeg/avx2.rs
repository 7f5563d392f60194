//! The accurate integer IDCT and the YCbCr → RGB conversion written with AVX2 intrinsics:
//! eight lanes of 32-bit integers, one lane per column (first pass) or row (second pass), the
//! same operations in the same order as the portable code in [`super::idct`] and
//! [`super::color`], so the results are identical.

use std::arch::x86_64::*;

use super::idct::{CONST_BITS, PASS1_BITS};

#[inline(always)]
unsafe fn c(v: i32) -> __m256i {
    _mm256_set1_epi32(v)
}

#[inline(always)]
unsafe fn mul(a: __m256i, k: i32) -> __m256i {
    _mm256_mullo_epi32(a, c(k))
}

#[inline(always)]
unsafe fn pass(x: [__m256i; 8], bias: i32, shift: i32) -> [__m256i; 8] {
    let add = _mm256_add_epi32;
    let sub = _mm256_sub_epi32;
    // Even part.
    let z1 = mul(add(x[2], x[6]), 4433);
    let tmp2 = sub(z1, mul(x[6], 15137));
    let tmp3 = add(z1, mul(x[2], 6270));
    let tmp0 = _mm256_slli_epi32::<{ CONST_BITS as i32 }>(add(x[0], x[4]));
    let tmp1 = _mm256_slli_epi32::<{ CONST_BITS as i32 }>(sub(x[0], x[4]));
    let tmp10 = add(tmp0, tmp3);
    let tmp13 = sub(tmp0, tmp3);
    let tmp11 = add(tmp1, tmp2);
    let tmp12 = sub(tmp1, tmp2);
    // Odd part.
    let (t0, t1, t2, t3) = (x[7], x[5], x[3], x[1]);
    let z1 = add(t0, t3);
    let z2 = add(t1, t2);
    let z3 = add(t0, t2);
    let z4 = add(t1, t3);
    let z5 = mul(add(z3, z4), 9633);
    let t0 = mul(t0, 2446);
    let t1 = mul(t1, 16819);
    let t2 = mul(t2, 25172);
    let t3 = mul(t3, 12299);
    let z1 = mul(z1, -7373);
    let z2 = mul(z2, -20995);
    let z3 = add(mul(z3, -16069), z5);
    let z4 = add(mul(z4, -3196), z5);
    let t0 = add(add(t0, z1), z3);
    let t1 = add(add(t1, z2), z4);
    let t2 = add(add(t2, z2), z3);
    let t3 = add(add(t3, z1), z4);
    let b = c(bias);
    let sh = _mm_cvtsi32_si128(shift);
    let d = |v: __m256i| _mm256_sra_epi32(add(v, b), sh);
    [
        d(add(tmp10, t3)),
        d(add(tmp11, t2)),
        d(add(tmp12, t1)),
        d(add(tmp13, t0)),
        d(sub(tmp13, t0)),
        d(sub(tmp12, t1)),
        d(sub(tmp11, t2)),
        d(sub(tmp10, t3)),
    ]
}

#[inline(always)]
unsafe fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// YCbCr → RGB for as many whole groups of 16 pixels as the row has, with the same
/// fixed-point arithmetic as [`super::color::ycc_to_rgb`]; returns the number of pixels done.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn ycc_to_rgb_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) -> usize {
    let n = y.len().min(cb.len()).min(cr.len()).min(out.len() / 3);
    // Byte shuffles that interleave 16 R, G and B bytes into three 16-byte blocks.
    let mut masks = [[[0i8; 16]; 3]; 3];
    for (block, m) in masks.iter_mut().enumerate() {
        for j in 0..16 {
            let at = block * 16 + j;
            for (ch, mc) in m.iter_mut().enumerate() {
                mc[j] = if at % 3 == ch { (at / 3) as i8 } else { -1 };
            }
        }
    }
    let load = |m: &[i8; 16]| _mm_loadu_si128(m.as_ptr() as *const __m128i);
    let convert = |yv: __m128i, cbv: __m128i, crv: __m128i| {
        let y = _mm256_cvtepu8_epi32(yv);
        let cb = _mm256_sub_epi32(_mm256_cvtepu8_epi32(cbv), c(128));
        let cr = _mm256_sub_epi32(_mm256_cvtepu8_epi32(crv), c(128));
        let half = c(32768);
        let r = _mm256_add_epi32(
            y,
            _mm256_srai_epi32::<16>(_mm256_add_epi32(mul(cr, 91881), half)),
        );
        let g = _mm256_add_epi32(
            y,
            _mm256_srai_epi32::<16>(_mm256_add_epi32(
                _mm256_add_epi32(mul(cb, -22554), mul(cr, -46802)),
                half,
            )),
        );
        let b = _mm256_add_epi32(
            y,
            _mm256_srai_epi32::<16>(_mm256_add_epi32(mul(cb, 116130), half)),
        );
        (r, g, b)
    };
    let to_bytes = |lo: __m256i, hi: __m256i| {
        let w = _mm256_permute4x64_epi64::<0b11011000>(_mm256_packs_epi32(lo, hi));
        _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w))
    };
    let mut x = 0;
    while x + 16 <= n {
        let yv = _mm_loadu_si128(y.as_ptr().add(x) as *const __m128i);
        let cbv = _mm_loadu_si128(cb.as_ptr().add(x) as *const __m128i);
        let crv = _mm_loadu_si128(cr.as_ptr().add(x) as *const __m128i);
        let (r0, g0, b0) = convert(yv, cbv, crv);
        let (r1, g1, b1) = convert(
            _mm_srli_si128::<8>(yv),
            _mm_srli_si128::<8>(cbv),
            _mm_srli_si128::<8>(crv),
        );
        let (r, g, b) = (to_bytes(r0, r1), to_bytes(g0, g1), to_bytes(b0, b1));
        for (block, m) in masks.iter().enumerate() {
            let v = _mm_or_si128(
                _mm_or_si128(
                    _mm_shuffle_epi8(r, load(&m[0])),
                    _mm_shuffle_epi8(g, load(&m[1])),
                ),
                _mm_shuffle_epi8(b, load(&m[2])),
            );
            _mm_storeu_si128(out.as_mut_ptr().add(3 * x + 16 * block) as *mut __m128i, v);
        }
        x += 16;
    }
    x
}

/// # Safety
/// The CPU must support AVX2 and `out` must hold `7 * stride + 8` bytes.
#[target_feature(enable = "avx2")]
pub unsafe fn idct_islow(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
    let cp = coef.as_ptr() as *const __m256i;
    let ac_mask = _mm256_setr_epi16(
        0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let any = _mm256_or_si256(
        _mm256_or_si256(
            _mm256_and_si256(_mm256_loadu_si256(cp), ac_mask),
            _mm256_loadu_si256(cp.add(1)),
        ),
        _mm256_or_si256(_mm256_loadu_si256(cp.add(2)), _mm256_loadu_si256(cp.add(3))),
    );
    if _mm256_testz_si256(any, any) == 1 {
        let dc = (coef[0] as i32).wrapping_mul(q[0] as i32);
        let v = super::idct::range_limit(
            (dc.wrapping_shl(PASS1_BITS as u32)
                .wrapping_add(1 << (PASS1_BITS + 2)))
                >> (PASS1_BITS + 3),
        );
        for r in 0..8 {
            out[r * stride..r * stride + 8].fill(v);
        }
        return;
    }
    let mut x = [_mm256_setzero_si256(); 8];
    for (i, xi) in x.iter_mut().enumerate() {
        let cv = _mm256_cvtepi16_epi32(_mm_loadu_si128(coef.as_ptr().add(8 * i) as *const __m128i));
        let qv = _mm256_cvtepu16_epi32(_mm_loadu_si128(q.as_ptr().add(8 * i) as *const __m128i));
        *xi = _mm256_mullo_epi32(cv, qv);
    }
    let ws = pass(
        x,
        1 << (CONST_BITS - PASS1_BITS - 1),
        (CONST_BITS - PASS1_BITS) as i32,
    );
    let shift = (CONST_BITS + PASS1_BITS + 3) as i32;
    let y = transpose(pass(transpose(ws), 1 << (shift - 1), shift));
    // Range limit as libjpeg's table does: u = (v + 128) mod 1024; u < 256 → u,
    // u < 640 → 255, else 0.
    let m1023 = c(1023);
    for (r, row) in y.iter().enumerate() {
        let u = _mm256_and_si256(_mm256_add_epi32(*row, c(128)), m1023);
        let v = _mm256_andnot_si256(_mm256_cmpgt_epi32(u, c(639)), _mm256_min_epi32(u, c(255)));
        let w16 = _mm256_packus_epi32(v, v);
        let w16 = _mm256_permute4x64_epi64::<0b1000>(w16);
        let b8 = _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_castsi256_si128(w16));
        _mm_storel_epi64(out.as_mut_ptr().add(r * stride) as *mut __m128i, b8);
    }
}
