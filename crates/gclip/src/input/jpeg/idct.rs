//! Dequantisation and the accurate integer inverse DCT (ISLOW) with libjpeg's range limiting.

use std::num::Wrapping as W;

pub(super) const CONST_BITS: usize = 13;
pub(super) const PASS1_BITS: usize = 2;
const FIX_0_298631336: W<i32> = W(2446);
const FIX_0_390180644: W<i32> = W(3196);
const FIX_0_541196100: W<i32> = W(4433);
const FIX_0_765366865: W<i32> = W(6270);
const FIX_0_899976223: W<i32> = W(7373);
const FIX_1_175875602: W<i32> = W(9633);
const FIX_1_501321110: W<i32> = W(12299);
const FIX_1_847759065: W<i32> = W(15137);
const FIX_1_961570560: W<i32> = W(16069);
const FIX_2_053119869: W<i32> = W(16819);
const FIX_2_562915447: W<i32> = W(20995);
const FIX_3_072711026: W<i32> = W(25172);

/// One 1-D pass of the accurate integer IDCT over eight lanes at once: `x[i][lane]` is input
/// `i` of the transform for that lane. Returns the eight outputs, descaled by `shift` after
/// adding `bias`.
#[inline(always)]
fn idct_1d(x: &[[W<i32>; 8]; 8], shift: usize, bias: W<i32>) -> [[W<i32>; 8]; 8] {
    let mut out = [[W(0i32); 8]; 8];
    for l in 0..8 {
        // Even part.
        let z2 = x[2][l];
        let z3 = x[6][l];
        let z1 = (z2 + z3) * FIX_0_541196100;
        let tmp2 = z1 - z3 * FIX_1_847759065;
        let tmp3 = z1 + z2 * FIX_0_765366865;
        let tmp0 = (x[0][l] + x[4][l]) << CONST_BITS;
        let tmp1 = (x[0][l] - x[4][l]) << CONST_BITS;
        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;
        // Odd part.
        let t0 = x[7][l];
        let t1 = x[5][l];
        let t2 = x[3][l];
        let t3 = x[1][l];
        let z1 = t0 + t3;
        let z2 = t1 + t2;
        let z3 = t0 + t2;
        let z4 = t1 + t3;
        let z5 = (z3 + z4) * FIX_1_175875602;
        let t0 = t0 * FIX_0_298631336;
        let t1 = t1 * FIX_2_053119869;
        let t2 = t2 * FIX_3_072711026;
        let t3 = t3 * FIX_1_501321110;
        let z1 = -(z1 * FIX_0_899976223);
        let z2 = -(z2 * FIX_2_562915447);
        let z3 = -(z3 * FIX_1_961570560) + z5;
        let z4 = -(z4 * FIX_0_390180644) + z5;
        let t0 = t0 + z1 + z3;
        let t1 = t1 + z2 + z4;
        let t2 = t2 + z2 + z3;
        let t3 = t3 + z1 + z4;
        out[0][l] = (tmp10 + t3 + bias) >> shift;
        out[7][l] = (tmp10 - t3 + bias) >> shift;
        out[1][l] = (tmp11 + t2 + bias) >> shift;
        out[6][l] = (tmp11 - t2 + bias) >> shift;
        out[2][l] = (tmp12 + t1 + bias) >> shift;
        out[5][l] = (tmp12 - t1 + bias) >> shift;
        out[3][l] = (tmp13 + t0 + bias) >> shift;
        out[4][l] = (tmp13 - t0 + bias) >> shift;
    }
    out
}

/// libjpeg's post-IDCT range limit: the descaled value plus 128, clamped, with values far out of
/// range wrapping modulo 1024 as its lookup table does.
#[inline(always)]
pub(crate) fn range_limit(x: i32) -> u8 {
    let t = x & 1023;
    if t < 128 {
        (t + 128) as u8
    } else if t < 512 {
        255
    } else if t < 896 {
        0
    } else {
        (t - 896) as u8
    }
}

/// Inverse-transform rows of blocks: `coefs` holds blocks of 64 coefficients, `bw` per row
/// of blocks, of which the first `cols` are transformed into `plane` (`bw * 8` samples per
/// row). Uses AVX2 when the CPU has it (the arithmetic is the same integer arithmetic).
pub(super) fn idct_blocks(coefs: &[i16], cols: usize, bw: usize, q: &[u16; 64], plane: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { idct_blocks_avx2(coefs, cols, bw, q, plane) };
        return;
    }
    idct_blocks_generic(coefs, cols, bw, q, plane);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn idct_blocks_avx2(coefs: &[i16], cols: usize, bw: usize, q: &[u16; 64], plane: &mut [u8]) {
    let stride = bw * 8;
    let rows = (coefs.len() / 64 / bw).min(plane.len() / (8 * stride));
    for by in 0..rows {
        for bx in 0..cols {
            let i = (by * bw + bx) * 64;
            let block: &[i16; 64] = coefs[i..i + 64].try_into().expect("64 coefficients");
            let out = &mut plane[by * 8 * stride + bx * 8..];
            assert!(out.len() >= 7 * stride + 8);
            // SAFETY: AVX2 is enabled for this function; `out` holds 8 rows of 8 samples.
            unsafe { super::avx2::idct_islow(block, q, out, stride) };
        }
    }
}

#[inline(always)]
fn idct_blocks_generic(coefs: &[i16], cols: usize, bw: usize, q: &[u16; 64], plane: &mut [u8]) {
    let stride = bw * 8;
    let rows = (coefs.len() / 64 / bw).min(plane.len() / (8 * stride));
    for by in 0..rows {
        for bx in 0..cols {
            let i = (by * bw + bx) * 64;
            let block: &[i16; 64] = coefs[i..i + 64].try_into().expect("64 coefficients");
            idct_islow(block, q, &mut plane[by * 8 * stride + bx * 8..], stride);
        }
    }
}

/// Dequantise and inverse-transform one block into `out` (8 rows of `stride`).
#[inline(always)]
pub(super) fn idct_islow(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
    if coef[1..].iter().all(|&c| c == 0) {
        // DC only: both passes reduce to one descaled value (exactly what the full
        // computation gives).
        let dc = W(coef[0] as i32) * W(q[0] as i32);
        let v =
            range_limit((((dc << PASS1_BITS) + W(1 << (PASS1_BITS + 2))) >> (PASS1_BITS + 3)).0);
        for r in 0..8 {
            out[r * stride..r * stride + 8].fill(v);
        }
        return;
    }
    // Columns first: lane = column, x[i] = row i.
    let mut x = [[W(0i32); 8]; 8];
    for i in 0..8 {
        for l in 0..8 {
            x[i][l] = W(coef[i * 8 + l] as i32) * W(q[i * 8 + l] as i32);
        }
    }
    if coef[8..].iter().all(|&c| c == 0) {
        // Only the first row of coefficients: every column is flat.
        let dc: [W<i32>; 8] = std::array::from_fn(|l| x[0][l] << PASS1_BITS);
        x = [dc; 8];
    } else {
        x = idct_1d(
            &x,
            CONST_BITS - PASS1_BITS,
            W(1 << (CONST_BITS - PASS1_BITS - 1)),
        );
    }
    // Rows: transpose so that lane = row, x[i] = column i.
    let mut t = [[W(0i32); 8]; 8];
    for (i, row) in x.iter().enumerate() {
        for (l, v) in row.iter().enumerate() {
            t[l][i] = *v;
        }
    }
    let shift = CONST_BITS + PASS1_BITS + 3;
    let y = idct_1d(&t, shift, W(1 << (shift - 1)));
    for r in 0..8 {
        let line = &mut out[r * stride..r * stride + 8];
        for (c, o) in line.iter_mut().enumerate() {
            *o = range_limit(y[c][r].0);
        }
    }
}
