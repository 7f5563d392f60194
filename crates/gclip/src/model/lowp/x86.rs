//! The x86 kernels besides AMX: AVX-512 (bf16 `vdpbf16ps`, int8 `vpdpbusd`, bf16 widened to
//! f32 FMA) and AVX2 + FMA (staged bf16, int8 `vpmaddubsw`), and the activation packing
//! compiled for each; chosen at run time by [`super::Bf16Kernel`] / [`super::Int8Kernel`].

use super::{Activation, Tile, NR};
use std::arch::x86_64::*;

pub const BF16_MR: usize = 12;
pub const AVX512_MR: usize = 8;
/// Rows of the f32 kernel: 28 accumulators, two weight vectors and the broadcast fill the 32
/// registers.
pub const F32_MR: usize = 14;
pub const VNNI_MR: usize = 12;
pub const AVX2_BF16_MR: usize = 6;
pub const AVX2_INT8_MR: usize = 4;
/// Rows of the AVX2 f32 panel kernel: 12 accumulators, two weight vectors and the broadcast of
/// the 16 registers.
pub const AVX2_F32_MR: usize = 6;

/// Lane masks for the two 16-column halves of a tile with `ncols` columns.
#[inline(always)]
pub(super) fn masks(ncols: usize) -> (__mmask16, __mmask16) {
    let full = if ncols >= NR {
        u32::MAX
    } else {
        (1u32 << ncols) - 1
    };
    (full as u16, (full >> 16) as u16)
}

/// The tile's bias in the two 16-column halves (`ncols` lanes kept by the masks), zeros
/// when it has none.
///
/// # Safety
/// Tile contract: a non-null `t.bias` holds `t.ncols` values; the CPU supports avx512f.
#[inline(always)]
pub(super) unsafe fn bias_halves(t: &Tile, k0: __mmask16, k1: __mmask16) -> (__m512, __m512) {
    if t.bias.is_null() {
        return (_mm512_setzero_ps(), _mm512_setzero_ps());
    }
    // SAFETY: the masks keep the `ncols` lanes that the bias holds.
    unsafe {
        (
            _mm512_maskz_loadu_ps(k0, t.bias),
            _mm512_maskz_loadu_ps(k1, t.bias.add(16)),
        )
    }
}

/// The accumulators a K block starts from: the bias (or zeros) in the first block, the
/// tile's partial sums in later ones.
///
/// # Safety
/// Tile contract with `M` valid rows; CPU supports avx512f.
#[inline(always)]
unsafe fn start_acc<const M: usize>(t: &Tile, k0: __mmask16, k1: __mmask16) -> [[__m512; 2]; M] {
    // SAFETY: a non-null bias holds `ncols` values and `c` holds `M` rows of `ncols` at
    // stride `ldc` (Tile contract); the masks keep every load inside them.
    unsafe {
        if t.init {
            let (b0, b1) = if t.bias.is_null() {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            } else {
                (
                    _mm512_maskz_loadu_ps(k0, t.bias),
                    _mm512_maskz_loadu_ps(k1, t.bias.add(16)),
                )
            };
            [[b0, b1]; M]
        } else {
            std::array::from_fn(|i| {
                let c = t.c.add(i * t.ldc);
                [
                    _mm512_maskz_loadu_ps(k0, c),
                    _mm512_maskz_loadu_ps(k1, c.add(16)),
                ]
            })
        }
    }
}

/// Stores f32 accumulators into the tile, adding the residual in the
/// last K block when there is one.
///
/// # Safety
/// Tile contract with `M` valid rows.
#[inline(always)]
unsafe fn store_f32<const M: usize>(
    t: &Tile,
    acc: &[[__m512; 2]; M],
    k0: __mmask16,
    k1: __mmask16,
) {
    let resid = t.fin && !t.resid.is_null();
    for (i, r) in acc.iter().enumerate() {
        // SAFETY: rows `< M` of `c` (and of the residual, which has the
        // tile's shape and stride) hold the `ncols` lanes the masks keep.
        unsafe {
            let c = t.c.add(i * t.ldc);
            let (mut v0, mut v1) = (r[0], r[1]);
            if resid {
                let p = t.resid.add(i * t.ldc);
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, p));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, p.add(16)));
            }
            _mm512_mask_storeu_ps(c, k0, v0);
            _mm512_mask_storeu_ps(c.add(16), k1, v1);
        }
    }
}

/// Stores a tile's sums as bf16 at `t.c_bf16`, each value passed through `t.act` first when
/// there is one ([`activate_avx512`]) and rounded to nearest even: fc1 of a fused MLP writing
/// fc2's packed input, with the bits the activated input packing would give.
///
/// # Safety
/// Tile contract with `sums.len()` valid rows and a non-null `c_bf16`; CPU supports avx512f,
/// avx512bw and avx512bf16.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn store_activated_bf16(t: &Tile, sums: &[[f32; NR]]) {
    let (k0, k1) = masks(t.ncols);
    let keep = u32::from(k0) | (u32::from(k1) << 16);
    for (i, row) in sums.iter().enumerate() {
        // SAFETY: rows `< sums.len()` of `c_bf16` hold the `ncols` values the mask keeps (the
        // contract); the loads read the row's 32 sums.
        unsafe {
            let v0 = _mm512_loadu_ps(row.as_ptr());
            let v1 = _mm512_loadu_ps(row.as_ptr().add(16));
            let (v0, v1) = match t.act {
                Some(act) => (activate_avx512(v0, act), activate_avx512(v1, act)),
                None => (v0, v1),
            };
            let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(v1, v0));
            _mm512_mask_storeu_epi16(t.c_bf16.add(i * t.ldc).cast(), keep, halves);
        }
    }
}

/// Runs `step(a, b)` over the tile's `t.k` K-steps, A advancing `a_step` elements and B `NR`
/// per step. During the first `M` steps it also asks for the output rows' cache lines in the
/// exclusive state (`prefetchw`), one row per step: the tile's stores at the end then find
/// them in cache instead of each waiting for its line. The outputs are megabytes written once:
/// a microbenchmark of the bf16 tile loop on Zen 4 ran at 99 % of `vdpbf16ps`'s ceiling with a
/// small output and 89-92 % with a product's 15 MB one. `bench_lowp` on one thread, three
/// alternating rounds: bf16 ViT-B/32 shapes at 1,600 rows 86-92 % of the ceiling without,
/// 86-95 % with (the attention output 86-89 against 92-95 %); f32 panels on the text tower's
/// 512 rows 91-95 % against 95-100 %; int8 within the runs' spread.
///
/// # Safety
/// `a` and `b` hold the tile's `t.k` steps (Tile contract).
#[inline(always)]
unsafe fn k_loop<const M: usize, A, B>(
    t: &Tile,
    mut a: *const A,
    a_step: usize,
    mut b: *const B,
    mut step: impl FnMut(*const A, *const B),
) {
    let warm = t.k.min(M);
    // The rows the tile stores: f32, or bf16 for a kernel finishing a fused MLP's fc1.
    let (out, row_bytes) = if t.c.is_null() {
        (t.c_bf16.cast::<u8>(), t.ldc * 2)
    } else {
        (t.c.cast::<u8>(), t.ldc * 4)
    };
    // SAFETY: the steps stay inside the tile's `t.k` steps of A and B (the caller's
    // contract); prefetches never fault, whatever the address.
    unsafe {
        for i in 0..warm {
            let c = out.wrapping_add(i * row_bytes);
            _mm_prefetch::<_MM_HINT_ET0>(c.cast());
            _mm_prefetch::<_MM_HINT_ET0>(c.wrapping_add(64).cast());
            step(a, b);
            a = a.add(a_step);
            b = b.add(NR);
        }
        for _ in warm..t.k {
            step(a, b);
            a = a.add(a_step);
            b = b.add(NR);
        }
    }
}

macro_rules! dispatch_m {
    ($name:ident, $inner:ident, $feat:literal, $($m:literal)*) => {
        /// # Safety
        /// `t` must satisfy the `Tile` contract and the CPU must support
        #[doc = $feat]
        pub unsafe fn $name(t: &Tile, m: usize) {
            // SAFETY: forwarded contract; `m` selects the instantiation.
            unsafe {
                match m {
                    $($m => $inner::<$m>(t),)*
                    _ => {}
                }
            }
        }
    };
}

/// # Safety
/// Tile contract with `M` valid rows, one bf16-pair word per A entry; CPU
/// supports avx512f, avx512bw and avx512bf16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn bf16dp<const M: usize>(t: &Tile) {
    let (k0, k1) = masks(t.ncols);
    // SAFETY (whole body): pointers are valid for the extents in the Tile
    // contract; masked loads/stores never touch lanes beyond `ncols`.
    unsafe {
        let mut acc = start_acc::<M>(t, k0, k1);
        k_loop::<M, _, _>(t, t.a, 1, t.b, |a, b| {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
            for (i, r) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i * t.lda) as i32));
                r[0] = _mm512_dpbf16_ps(r[0], av, b0);
                r[1] = _mm512_dpbf16_ps(r[1], av, b1);
            }
        });
        if t.c_bf16.is_null() {
            store_f32(t, &acc, k0, k1);
        } else {
            // Through memory: the accumulators passed by reference, or activated in this body,
            // were kept on the stack and stored there at every K-step (the towers ran at half
            // speed); a store of each, unrolled like `store_f32`, leaves the loop's registers
            // alone.
            let mut sums = [[0f32; NR]; M];
            for (s, r) in sums.iter_mut().zip(&acc) {
                _mm512_storeu_ps(s.as_mut_ptr(), r[0]);
                _mm512_storeu_ps(s.as_mut_ptr().add(16), r[1]);
            }
            store_activated_bf16(t, &sums);
        }
    }
}
dispatch_m!(kern_bf16dp, bf16dp, "avx512f, avx512bw and avx512bf16.", 1 2 3 4 5 6 7 8 9 10 11 12);

/// # Safety
/// Tile contract with `M` valid rows, f32-pair A entries; CPU supports
/// avx512f.
#[target_feature(enable = "avx512f")]
unsafe fn bf16fma<const M: usize>(t: &Tile) {
    let (k0, k1) = masks(t.ncols);
    // SAFETY (whole body): as in `bf16dp`.
    unsafe {
        let mut acc = start_acc::<M>(t, k0, k1);
        let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
        k_loop::<M, _, _>(t, t.a.cast::<f32>(), 2, t.b, |a, b| {
            let w0 = _mm512_loadu_si512(b.cast());
            let w1 = _mm512_loadu_si512(b.add(16).cast());
            let e0 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w0));
            let o0 = _mm512_castsi512_ps(_mm512_and_si512(w0, hi));
            let e1 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w1));
            let o1 = _mm512_castsi512_ps(_mm512_and_si512(w1, hi));
            for (i, r) in acc.iter_mut().enumerate() {
                let ae = _mm512_set1_ps(*a.add(i * t.lda));
                let ao = _mm512_set1_ps(*a.add(i * t.lda + 1));
                r[0] = _mm512_fmadd_ps(ae, e0, r[0]);
                r[1] = _mm512_fmadd_ps(ae, e1, r[1]);
                r[0] = _mm512_fmadd_ps(ao, o0, r[0]);
                r[1] = _mm512_fmadd_ps(ao, o1, r[1]);
            }
        });
        store_f32(t, &acc, k0, k1);
    }
}
dispatch_m!(kern_bf16fma, bf16fma, "avx512f.", 1 2 3 4 5 6 7 8);

/// # Safety
/// Tile contract with `M` valid rows, one f32 (as its bits) per A entry and `NR` f32 weights
/// per K-step of the panel ([`super::PackedF32`]); CPU supports avx512f.
#[target_feature(enable = "avx512f")]
unsafe fn f32fma<const M: usize>(t: &Tile) {
    let (k0, k1) = masks(t.ncols);
    // SAFETY (whole body): as in `bf16dp`.
    unsafe {
        let mut acc = start_acc::<M>(t, k0, k1);
        k_loop::<M, _, _>(t, t.a.cast::<f32>(), 1, t.b.cast::<f32>(), |a, b| {
            let w0 = _mm512_loadu_ps(b);
            let w1 = _mm512_loadu_ps(b.add(16));
            for (i, r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(i * t.lda));
                r[0] = _mm512_fmadd_ps(av, w0, r[0]);
                r[1] = _mm512_fmadd_ps(av, w1, r[1]);
            }
        });
        store_f32(t, &acc, k0, k1);
    }
}
dispatch_m!(kern_f32fma, f32fma, "avx512f.", 1 2 3 4 5 6 7 8 9 10 11 12 13 14);

/// # Safety
/// Tile contract with `M` valid rows, one u8-quad word per A entry,
/// non-null corr/wscale/xscale; CPU supports avx512f + avx512vnni.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn vnni<const M: usize>(t: &Tile) {
    let (k0, k1) = masks(t.ncols);
    let mut acc = [[_mm512_setzero_si512(); 2]; M];
    // SAFETY (whole body): as in `bf16dp`; `corr`/`wscale` hold `NR`
    // values (padded arrays), `xscale` holds `M`.
    unsafe {
        if t.init {
            let c0 = _mm512_loadu_si512(t.corr.cast());
            let c1 = _mm512_loadu_si512(t.corr.add(16).cast());
            for r in acc.iter_mut() {
                *r = [c0, c1];
            }
        } else {
            for (i, r) in acc.iter_mut().enumerate() {
                let c = t.c.add(i * t.ldc).cast::<i32>();
                *r = [
                    _mm512_maskz_loadu_epi32(k0, c),
                    _mm512_maskz_loadu_epi32(k1, c.add(16)),
                ];
            }
        }
        k_loop::<M, _, _>(t, t.a, 1, t.b, |a, b| {
            let b0 = _mm512_loadu_si512(b.cast());
            let b1 = _mm512_loadu_si512(b.add(16).cast());
            for (i, r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(*a.add(i * t.lda) as i32);
                r[0] = _mm512_dpbusd_epi32(r[0], av, b0);
                r[1] = _mm512_dpbusd_epi32(r[1], av, b1);
            }
        });
        if t.fin {
            let s0 = _mm512_loadu_ps(t.wscale);
            let s1 = _mm512_loadu_ps(t.wscale.add(16));
            let (bi0, bi1) = bias_halves(t, k0, k1);
            let mut out = [[_mm512_setzero_ps(); 2]; M];
            for ((o, r), i) in out.iter_mut().zip(&acc).zip(0..) {
                let xs = _mm512_set1_ps(*t.xscale.add(i));
                let v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(r[0]), _mm512_mul_ps(xs, s0));
                let v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(r[1]), _mm512_mul_ps(xs, s1));
                *o = [_mm512_add_ps(v0, bi0), _mm512_add_ps(v1, bi1)];
            }
            store_f32(t, &out, k0, k1);
        } else {
            for (i, r) in acc.iter().enumerate() {
                let c = t.c.add(i * t.ldc).cast::<i32>();
                _mm512_mask_storeu_epi32(c, k0, r[0]);
                _mm512_mask_storeu_epi32(c.add(16), k1, r[1]);
            }
        }
    }
}
dispatch_m!(kern_vnni, vnni, "avx512f and avx512vnni.", 1 2 3 4 5 6 7 8 9 10 11 12);

// AVX2 has 16 vector registers and no lane masks: the kernels below run a tile's 32
// columns as two halves of 16 (two 8-lane vectors), so that the accumulators of MR rows,
// the weights and a broadcast fit in registers, and they read or write the columns past a
// narrow tile's edge through `vmaskmov` lane masks.

/// The lane mask of the first `n` (0..=8) of 8 lanes.
#[inline(always)]
fn lane_mask(n: usize) -> __m256i {
    // SAFETY: only needs AVX, which every caller's target features include.
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

/// The 16 columns `col0..col0 + 16` of a tile as two 8-lane halves: how many of each
/// half's lanes are inside the tile, and their masks.
struct Half16 {
    n: [usize; 2],
    mask: [__m256i; 2],
}

#[inline(always)]
fn half16(ncols: usize, col0: usize) -> Half16 {
    let rest = ncols.saturating_sub(col0);
    let n = [rest.min(8), rest.saturating_sub(8).min(8)];
    Half16 {
        n,
        mask: [lane_mask(n[0]), lane_mask(n[1])],
    }
}

/// Loads the lanes of `p` that the half holds (zeros elsewhere).
///
/// # Safety
/// `p` is valid for reading `n` f32; CPU supports AVX.
#[inline(always)]
unsafe fn load8(p: *const f32, n: usize, mask: __m256i) -> __m256 {
    // SAFETY: a full load when all 8 lanes are valid, else a masked one that touches
    // only the first `n` lanes.
    unsafe {
        if n == 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, mask)
        }
    }
}

/// Stores the lanes of `v` that the half holds.
///
/// # Safety
/// `p` is valid for writing `n` f32; CPU supports AVX.
#[inline(always)]
unsafe fn store8(p: *mut f32, n: usize, mask: __m256i, v: __m256) {
    // SAFETY: as in `load8`, for writing.
    unsafe {
        if n == 8 {
            _mm256_storeu_ps(p, v)
        } else if n > 0 {
            _mm256_maskstore_ps(p, mask, v)
        }
    }
}

/// Stores f32 accumulators of 16 columns from `col0`, adding the residual in the last
/// K block when there is one.
///
/// # Safety
/// Tile contract with `M` valid rows; CPU supports AVX2.
#[inline(always)]
unsafe fn store_f32_avx2<const M: usize>(
    t: &Tile,
    col0: usize,
    h: &Half16,
    acc: &[[__m256; 2]; M],
) {
    let resid = t.fin && !t.resid.is_null();
    for (i, r) in acc.iter().enumerate() {
        // SAFETY: rows `< M` of `c` (and of the residual, which has the tile's shape and
        // stride) hold the lanes the half keeps.
        unsafe {
            let c = t.c.add(i * t.ldc + col0);
            let (mut v0, mut v1) = (r[0], r[1]);
            if resid {
                let p = t.resid.add(i * t.ldc + col0);
                v0 = _mm256_add_ps(v0, load8(p, h.n[0], h.mask[0]));
                v1 = _mm256_add_ps(v1, load8(p.add(8), h.n[1], h.mask[1]));
            }
            store8(c, h.n[0], h.mask[0], v0);
            store8(c.add(8), h.n[1], h.mask[1], v1);
        }
    }
}

/// Widens `ksteps` K-steps of a bf16 weight panel to f32 in the order
/// [`kern_bf16_avx2`] reads them: the panel's two 16-column halves one after the other,
/// each `2 * ksteps` rows of 16 values (row `2s` the even K of step `s`, row `2s + 1` the
/// odd one). Widening once per block, not once per row block that uses it, is what lets
/// the multiply-adds run at the f32 rate: widened in the inner loop (two more vector
/// operations per two multiply-adds, and an extra broadcast per row), the kernel ran at
/// about 65 % of it on Zen 1.
///
/// # Safety
/// `b` is valid for `ksteps * NR` words, `out` for `STAGED_FLOATS_PER_STEP * ksteps`
/// floats; the CPU supports avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn stage_bf16_avx2(b: *const u32, ksteps: usize, out: *mut f32) {
    let hi = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    for half in 0..2 {
        // SAFETY: the reads stay in the `ksteps * NR` words of `b`, the writes in the
        // `2 * ksteps * NR` floats of `out` (half `h` owns `[h * 2 * ksteps * 16, ..)`).
        unsafe {
            let dst = out.add(half * 2 * ksteps * 16);
            for s in 0..ksteps {
                let src = b.add(s * NR + half * 16);
                let w0 = _mm256_loadu_si256(src.cast());
                let w1 = _mm256_loadu_si256(src.add(8).cast());
                // Even k: the low bf16 of each word shifted up; odd k: the high one kept.
                let even = dst.add(2 * s * 16);
                _mm256_storeu_ps(even, _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w0)));
                _mm256_storeu_ps(
                    even.add(8),
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w1)),
                );
                let odd = even.add(16);
                _mm256_storeu_ps(odd, _mm256_castsi256_ps(_mm256_and_si256(w0, hi)));
                _mm256_storeu_ps(odd.add(8), _mm256_castsi256_ps(_mm256_and_si256(w1, hi)));
            }
        }
    }
}

/// Runs `step(k)` for every K value `k` of the `half`-th pass over a tile of `kvalues` K values,
/// in order, fetching into L2 one line of `t.prefetch` with each: the lines from
/// `half * kvalues`, so that the tile's passes together fetch its `prefetch_lines`.
#[inline(always)]
fn steps_fetching_ahead(t: &Tile, half: usize, kvalues: usize, mut step: impl FnMut(usize)) {
    let first_line = half * kvalues;
    let fetched = t.prefetch_lines.saturating_sub(first_line).min(kvalues);
    // `wrapping_add`: the address is only ever prefetched (which never faults), not read.
    let ahead = t.prefetch.wrapping_add(first_line * 64);
    for k in 0..fetched {
        // SAFETY: a prefetch is a hint that never faults, whatever the address; SSE is part
        // of x86_64.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(k * 64).cast()) };
        step(k);
    }
    for k in fetched..kvalues {
        step(k);
    }
}

/// The f32 FMA core of the AVX2 bf16 and f32 kernels: the tile's 16 columns from `col0`,
/// `kvalues` K values, each row's value `k` at `t.a` (as f32) + `row * t.lda + k` times the 16
/// weights at `b + k * b_stride`; bias (or the partial sums) first, then every K value in order,
/// so both kernels give the AVX-512 f32 panel kernel's sums. The `half`-th half of the tile's
/// K values: it fetches the lines of `t.prefetch` from `half * kvalues`, one per K value.
///
/// # Safety
/// Tile contract with `M` valid rows whose A rows hold `kvalues` f32; `b` is valid for
/// `kvalues` rows of 16 floats `b_stride` apart; CPU supports avx2 and fma.
#[inline(always)]
unsafe fn fma_half_avx2<const M: usize>(
    t: &Tile,
    col0: usize,
    kvalues: usize,
    b: *const f32,
    b_stride: usize,
    half: usize,
) {
    let h = half16(t.ncols, col0);
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    // SAFETY (whole body): pointers are valid for the extents in the Tile contract and the
    // caller's; `load8`/`store8` touch only the lanes inside the tile.
    unsafe {
        if t.init {
            if !t.bias.is_null() {
                let b0 = load8(t.bias.add(col0), h.n[0], h.mask[0]);
                let b1 = load8(t.bias.add(col0 + 8), h.n[1], h.mask[1]);
                for r in acc.iter_mut() {
                    *r = [b0, b1];
                }
            }
        } else {
            for (i, r) in acc.iter_mut().enumerate() {
                let c = t.c.add(i * t.ldc + col0);
                *r = [
                    load8(c, h.n[0], h.mask[0]),
                    load8(c.add(8), h.n[1], h.mask[1]),
                ];
            }
        }
        // One pointer per row, indexed by k: the rows' addresses are not recomputed in the
        // loop.
        let rows: [*const f32; M] = std::array::from_fn(|i| t.a.add(i * t.lda).cast());
        steps_fetching_ahead(t, half, kvalues, |k| {
            let w0 = _mm256_loadu_ps(b.add(b_stride * k));
            let w1 = _mm256_loadu_ps(b.add(b_stride * k + 8));
            for (r, row) in acc.iter_mut().zip(&rows) {
                let av = _mm256_broadcast_ss(&*row.add(k));
                r[0] = _mm256_fmadd_ps(av, w0, r[0]);
                r[1] = _mm256_fmadd_ps(av, w1, r[1]);
            }
        });
        store_f32_avx2(t, col0, &h, &acc);
    }
}

/// # Safety
/// Tile contract with `M` valid rows and f32-pair A entries, except that `t.b` points at
/// `t.k` K-steps of weights staged by [`stage_bf16_avx2`] (f32, not bf16 words); CPU
/// supports avx2 and fma.
#[target_feature(enable = "avx2,fma")]
unsafe fn bf16avx2<const M: usize>(t: &Tile) {
    // Every accumulator takes the even then the odd k of each step, as the unstaged kernel
    // did, so the sums are the same bits.
    let kvalues = 2 * t.k;
    for (half, col0) in [0, 16].into_iter().enumerate() {
        if col0 >= t.ncols {
            break;
        }
        // SAFETY: each staged half holds `kvalues` rows of 16 floats whatever `ncols` is, the
        // A rows `kvalues` f32 (f32 pairs); the rest is the caller's contract.
        unsafe {
            let b = t.b.cast::<f32>().add(half * kvalues * 16);
            fma_half_avx2::<M>(t, col0, kvalues, b, 16, half);
        }
    }
}
dispatch_m!(kern_bf16_avx2, bf16avx2, "avx2 and fma.", 1 2 3 4 5 6);

/// The f32 panel kernel on AVX2 + FMA: [`f32fma`]'s tile in two 16-column halves of 6 rows, the
/// panel's weights read in place (`NR` per K-step), the same sums in the same order.
///
/// # Safety
/// Tile contract with `M` valid rows, one f32 (as its bits) per A entry and `NR` f32 weights
/// per K-step of the panel ([`super::PackedF32`]); CPU supports avx2 and fma.
#[target_feature(enable = "avx2,fma")]
unsafe fn f32fma_avx2<const M: usize>(t: &Tile) {
    for (half, col0) in [0, 16].into_iter().enumerate() {
        if col0 >= t.ncols {
            break;
        }
        // SAFETY: the panel holds `t.k` steps of `NR` floats (padded with zeros past
        // `ncols`), so the 16 from `col0` of each step are inside it; the A rows hold `t.k`
        // f32.
        unsafe { fma_half_avx2::<M>(t, col0, t.k, t.b.cast::<f32>().add(col0), NR, half) };
    }
}
dispatch_m!(kern_f32fma_avx2, f32fma_avx2, "avx2 and fma.", 1 2 3 4 5 6);

/// # Safety
/// Tile contract with `M` valid rows, one i8-quad word per A entry (the signed codes),
/// non-null wscale/xscale; CPU supports avx2 and fma.
#[target_feature(enable = "avx2,fma")]
unsafe fn int8avx2<const M: usize>(t: &Tile) {
    let ones = _mm256_set1_epi16(1);
    for (half, col0) in [0, 16].into_iter().enumerate() {
        if col0 >= t.ncols {
            break;
        }
        let h = half16(t.ncols, col0);
        // The signed A codes need no correction term: a first K block starts from zero.
        let mut acc = [[_mm256_setzero_si256(); 2]; M];
        // SAFETY (whole body): as in `bf16avx2`; `wscale` holds `NR` values (padded
        // arrays), `xscale` holds `M`; i32 and f32 have the same size and alignment.
        unsafe {
            if !t.init {
                for (i, r) in acc.iter_mut().enumerate() {
                    let c = t.c.add(i * t.ldc + col0);
                    *r = [
                        _mm256_castps_si256(load8(c, h.n[0], h.mask[0])),
                        _mm256_castps_si256(load8(c.add(8), h.n[1], h.mask[1])),
                    ];
                }
            }
            // One pointer per row, indexed by k: the rows' addresses are not recomputed
            // in the loop.
            let rows: [*const u32; M] = std::array::from_fn(|i| t.a.add(i * t.lda));
            let b = t.b.add(col0);
            steps_fetching_ahead(t, half, t.k, |k| {
                let w0 = _mm256_loadu_si256(b.add(k * NR).cast());
                let w1 = _mm256_loadu_si256(b.add(k * NR + 8).cast());
                for (r, row) in acc.iter_mut().zip(&rows) {
                    let av = _mm256_set1_epi32(*row.add(k) as i32);
                    let aa = _mm256_abs_epi8(av);
                    // |a| * (w with a's sign) = a * w; each pair sum is at most
                    // 2 * 127 * 127 < 2^15, so `vpmaddubsw` never saturates.
                    let p0 = _mm256_maddubs_epi16(aa, _mm256_sign_epi8(w0, av));
                    let p1 = _mm256_maddubs_epi16(aa, _mm256_sign_epi8(w1, av));
                    r[0] = _mm256_add_epi32(r[0], _mm256_madd_epi16(p0, ones));
                    r[1] = _mm256_add_epi32(r[1], _mm256_madd_epi16(p1, ones));
                }
            });
            if t.fin {
                let s0 = _mm256_loadu_ps(t.wscale.add(col0));
                let s1 = _mm256_loadu_ps(t.wscale.add(col0 + 8));
                let (bi0, bi1) = if t.bias.is_null() {
                    (_mm256_setzero_ps(), _mm256_setzero_ps())
                } else {
                    (
                        load8(t.bias.add(col0), h.n[0], h.mask[0]),
                        load8(t.bias.add(col0 + 8), h.n[1], h.mask[1]),
                    )
                };
                let mut out = [[_mm256_setzero_ps(); 2]; M];
                for ((o, r), i) in out.iter_mut().zip(&acc).zip(0..) {
                    let xs = _mm256_set1_ps(*t.xscale.add(i));
                    let v0 = _mm256_mul_ps(_mm256_cvtepi32_ps(r[0]), _mm256_mul_ps(xs, s0));
                    let v1 = _mm256_mul_ps(_mm256_cvtepi32_ps(r[1]), _mm256_mul_ps(xs, s1));
                    *o = [_mm256_add_ps(v0, bi0), _mm256_add_ps(v1, bi1)];
                }
                store_f32_avx2(t, col0, &h, &out);
            } else {
                for (i, r) in acc.iter().enumerate() {
                    let c = t.c.add(i * t.ldc + col0);
                    store8(c, h.n[0], h.mask[0], _mm256_castsi256_ps(r[0]));
                    store8(c.add(8), h.n[1], h.mask[1], _mm256_castsi256_ps(r[1]));
                }
            }
        }
    }
}
dispatch_m!(kern_int8_avx2, int8avx2, "avx2 and fma.", 1 2 3 4);

/// [`super::pack_row_f32pair`] compiled for AVX2.
///
/// # Safety
/// CPU supports avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn pack_row_f32pair_avx2(xr: &[f32], out: &mut [u32]) {
    super::pack_row_f32pair(xr, out)
}

/// Same result as [`super::pack_row_u8`] (bit for bit), with AVX2 intrinsics: compiled from the
/// portable loops it stayed scalar (5 % of the int8 image tower at batch 32 on Zen 3).
///
/// # Safety
/// CPU supports avx2 and fma; `out.len() >= xr.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn pack_row_u8_avx2(xr: &[f32], out: &mut [u8]) -> f32 {
    assert!(
        out.len() >= xr.len(),
        "pack_row_u8_avx2: out shorter than the row"
    );
    let n = xr.len();
    let whole = n / 32 * 32;
    let p = xr.as_ptr();
    // For non-negative floats the bit patterns order like the values, and every NaN/inf pattern
    // is >= 0x7F80_0000.
    let absmask = _mm256_set1_epi32(0x7FFF_FFFF);
    let mut mx = _mm256_setzero_si256();
    let mut c = 0;
    while c + 8 <= n {
        // SAFETY: `xr[c..c + 8]` is in bounds.
        let v = unsafe { _mm256_loadu_si256(p.add(c).cast()) };
        mx = _mm256_max_epu32(mx, _mm256_and_si256(v, absmask));
        c += 8;
    }
    let mut lanes = [0u32; 8];
    // SAFETY: `lanes` holds 8 u32.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), mx) };
    let maxbits = xr[c..]
        .iter()
        .map(|v| v.to_bits() & 0x7FFF_FFFF)
        .chain(lanes)
        .max()
        .unwrap_or(0);
    if maxbits >= 0x7F80_0000 || maxbits == 0 {
        out.fill(128);
        return if maxbits == 0 { 0.0 } else { f32::NAN };
    }
    let max = f32::from_bits(maxbits);
    let inv_scalar = 127.0 / max;
    let inv = _mm256_set1_ps(inv_scalar);
    let lo = _mm256_set1_epi32(-127);
    let hi = _mm256_set1_epi32(127);
    let off = _mm256_set1_epi32(128);
    // The packs interleave the 128-bit lanes: this puts the 32 bytes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let o = out.as_mut_ptr();
    let mut c = 0;
    while c < whole {
        // SAFETY: `xr[c..c + 32]` and `out[c..c + 32]` are in bounds (`c + 32 <= n <=
        // out.len()`). The conversion rounds to nearest even (default MXCSR), as `quant` does
        // for these magnitudes (|v * inv| <= 127 + rounding); the codes 1..=255 pass both
        // saturating packs unchanged.
        unsafe {
            let code = |i: usize| {
                let v = _mm256_loadu_ps(p.add(c + 8 * i));
                let q = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv));
                _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(q, lo), hi), off)
            };
            let words01 = _mm256_packs_epi32(code(0), code(1));
            let words23 = _mm256_packs_epi32(code(2), code(3));
            let bytes = _mm256_packus_epi16(words01, words23);
            let bytes = _mm256_permutevar8x32_epi32(bytes, order);
            _mm256_storeu_si256(o.add(c).cast(), bytes);
        }
        c += 32;
    }
    for (d, &v) in out[whole..n].iter_mut().zip(&xr[whole..]) {
        *d = (super::quant(v, inv_scalar) as i32 + 128) as u8;
    }
    out[n..].fill(128);
    max / 127.0
}

/// Converts one row to bf16 (RNE, `vcvtneps2bf16`), zero padded to
/// `2 * out.len()` values.
///
/// # Safety
/// CPU supports avx512f, avx512bw, avx512vl and avx512bf16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn pack_row_bf16(xr: &[f32], out: &mut [u32]) {
    let total = 2 * out.len();
    let dst = out.as_mut_ptr().cast::<u16>();
    let mut c = 0;
    while c < total {
        let nx = xr.len().saturating_sub(c).min(16);
        let nd = (total - c).min(16);
        let mx = ((1u32 << nx) - 1) as u16;
        let md = ((1u32 << nd) - 1) as u16;
        // SAFETY: the masked load reads only `xr[c..c + nx]` (in bounds)
        // and the masked store writes only the `nd` u16 at `c..c + nd`,
        // which lie inside `out` (2 u16 per word).
        unsafe {
            let v = _mm512_maskz_loadu_ps(mx, xr.as_ptr().add(c.min(xr.len())));
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(dst.add(c).cast(), md, h);
        }
        c += 16;
    }
}

/// Columns `r0..` of a row-major `[k, rows]` matrix as rows of `lda` words of bf16 (`k` values
/// in memory order, the rest zero), one per row of `out`, rounded as [`pack_row_bf16`] rounds:
/// each 32 values of a column are two gathers and one conversion, with the band's columns read
/// side by side so that the gathered cache lines serve all of them.
///
/// # Safety
/// CPU supports avx512f, avx512bw, avx512vl and avx512bf16; `x` holds `k` rows of `rows` values;
/// `out` holds whole rows of `lda >= k.div_ceil(2)` words, and `r0 + out.len() / lda <= rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn pack_columns_bf16(
    x: &[f32],
    k: usize,
    rows: usize,
    r0: usize,
    out: &mut [u32],
    lda: usize,
) {
    let n = out.len() / lda;
    let mask = |lanes: usize| ((1u32 << lanes.min(16)) - 1) as __mmask16;
    // Lane j reads row j of a block of 16: byte offsets up to 15·rows·4 must be i32s. Wider
    // matrices (none that a model makes) gather through a small buffer instead.
    let gather = rows <= i32::MAX as usize / 64;
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(if gather { rows as i32 } else { 0 }),
    );
    let zero = _mm512_setzero_ps();
    let column_block = |start: *const f32, lanes: usize| -> __m512 {
        if lanes == 0 {
            return zero;
        }
        if gather {
            // SAFETY: the `lanes` rows read lie inside `x` (the caller's contract and
            // `kb + lanes <= k`); masked-off lanes are not read.
            unsafe { _mm512_mask_i32gather_ps::<4>(zero, mask(lanes), offsets, start.cast()) }
        } else {
            let mut block = [0f32; 16];
            for (j, v) in block.iter_mut().enumerate().take(lanes) {
                // SAFETY: as above, row `j < lanes` of the block is inside `x`.
                *v = unsafe { *start.add(j * rows) };
            }
            // SAFETY: `block` holds 16 floats.
            unsafe { _mm512_loadu_ps(block.as_ptr()) }
        }
    };
    let dst = out.as_mut_ptr();
    let mut kb = 0;
    while kb < k {
        let nk = (k - kb).min(32);
        let words = mask(nk.div_ceil(2));
        for i in 0..n {
            // SAFETY: `kb < k` and `r0 + i < rows`, so this element and the blocks below
            // (rows `kb..kb + nk`) are inside `x`; the store writes words `kb / 2..` of row `i`,
            // at most `k.div_ceil(2) <= lda` of them.
            unsafe {
                let first = x.as_ptr().add(kb * rows + r0 + i);
                let lo = column_block(first, nk.min(16));
                let hi = if nk > 16 {
                    column_block(first.add(16 * rows), nk - 16)
                } else {
                    zero
                };
                let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi32(dst.add(i * lda + kb / 2).cast(), words, h);
            }
        }
        kb += 32;
    }
    for row in out.chunks_exact_mut(lda) {
        row[k.div_ceil(2)..].fill(0);
    }
}

/// [`super::pack_row_f32pair`] compiled for AVX-512.
///
/// # Safety
/// CPU supports avx512f.
#[target_feature(enable = "avx512f")]
pub unsafe fn pack_row_f32pair_avx512(xr: &[f32], out: &mut [u32]) {
    super::pack_row_f32pair(xr, out)
}

/// Same result as [`super::pack_row_u8`] (bit for bit), with intrinsics.
///
/// # Safety
/// CPU supports avx512f and avx512bw; `out.len() >= xr.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn pack_row_u8_avx512(xr: &[f32], out: &mut [u8]) -> f32 {
    let n = xr.len();
    let p = xr.as_ptr();
    // For non-negative floats the bit patterns order like the values, and
    // every NaN/inf pattern is >= 0x7F80_0000.
    let absmask = _mm512_set1_epi32(0x7FFF_FFFF);
    let mut mx = _mm512_setzero_si512();
    let mut c = 0;
    while c < n {
        let m = ((1u32 << (n - c).min(16)) - 1) as u16;
        // SAFETY: masked load of `xr[c..c + min(16, n - c)]`, in bounds.
        let v = unsafe { _mm512_maskz_loadu_epi32(m, p.add(c).cast()) };
        mx = _mm512_max_epu32(mx, _mm512_and_si512(v, absmask));
        c += 16;
    }
    let maxbits = _mm512_reduce_max_epu32(mx);
    if maxbits >= 0x7F80_0000 || maxbits == 0 {
        out.fill(128);
        return if maxbits == 0 { 0.0 } else { f32::NAN };
    }
    let max = f32::from_bits(maxbits);
    let inv = _mm512_set1_ps(127.0 / max);
    let lo = _mm512_set1_epi32(-127);
    let hi = _mm512_set1_epi32(127);
    let off = _mm512_set1_epi32(128);
    let o = out.as_mut_ptr();
    let mut c = 0;
    while c < n {
        let m = ((1u32 << (n - c).min(16)) - 1) as u16;
        // SAFETY: masked load of in-bounds `xr` values and masked store of
        // the same count of bytes into `out` (`out.len() >= n`). The
        // conversion rounds to nearest even (default MXCSR), matching
        // `quant` for these magnitudes (|v * inv| <= 127 + rounding).
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, p.add(c));
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
            let q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), off);
            _mm512_mask_cvtepi32_storeu_epi8(o.add(c).cast(), m, q);
        }
        c += 16;
    }
    out[n..].fill(128);
    max / 127.0
}

/// `2^t` for `t` in [-126, 126] (the callers clamp): `2^f` for the fraction
/// `f = t - round(t)` in [-½, ½] by its Taylor series to the fifth power (relative error below
/// 2.5e-6), scaled by `2^round(t)` with `vscalefps`.
#[inline(always)]
unsafe fn exp2_avx512(t: __m512) -> __m512 {
    // (ln 2)^k / k!
    const C: [f32; 5] = [
        std::f32::consts::LN_2,
        0.240_226_5,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
    ];
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let mut p = _mm512_set1_ps(C[4]);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C[3]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C[2]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C[0]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
    _mm512_scalef_ps(p, n)
}

/// `1 / d` from `vrcp14ps` and one Newton step (relative error about 1e-8 where `d` is a
/// normal number above 1).
#[inline(always)]
unsafe fn reciprocal_avx512(d: __m512) -> __m512 {
    let r = _mm512_rcp14_ps(d);
    // r · (2 − d·r)
    _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)))
}

/// [`crate::model::kernels::act_row`] for values that are rounded to bf16 or quantised to int8
/// right after (the low-precision layers' activated inputs): the same functions with FMAs, a
/// shorter exp series, `vscalefps` and a reciprocal instead of a division. Relative error
/// below 1e-5 against the f32 layers' activation (tested), where bf16 keeps 8 bits (3.9e-3).
/// The exact kind cost a tenth of the bf16 towers (text 32 × 16: 11 % of the samples).
///
/// # Safety
/// CPU supports avx512f; `dst.len() >= src.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn act_row_avx512(src: &[f32], dst: &mut [f32], act: Activation) {
    let n = src.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut c = 0;
    while c < n {
        let m = ((1u32 << (n - c).min(16)) - 1) as u16;
        // SAFETY: masked load of `src[c..c + 16)` ∩ `src` and masked store of the same lanes
        // into `dst`, which is at least as long.
        unsafe {
            let x = _mm512_maskz_loadu_ps(m, s.add(c));
            _mm512_mask_storeu_ps(d.add(c), m, activate_avx512(x, act));
        }
        c += 16;
    }
}

/// `act` of 16 values as [`act_row_avx512`] computes it (lane by lane, so a fused kernel that
/// activates its accumulators gets the bits of the activated input packing).
///
/// # Safety
/// CPU supports avx512f.
#[inline(always)]
unsafe fn activate_avx512(x: __m512, act: Activation) -> __m512 {
    // SAFETY: register arithmetic only, on a CPU with avx512f (the caller's contract).
    unsafe {
        match act {
            Activation::QuickGelu => {
                // x / (1 + 2^(−1.702·log2(e)·x)); clamping keeps 2^t finite and normal, and
                // a NaN x stays NaN through the last product.
                let t = _mm512_mul_ps(x, _mm512_set1_ps(-1.702 * std::f32::consts::LOG2_E));
                let t = _mm512_min_ps(
                    _mm512_max_ps(t, _mm512_set1_ps(-126.0)),
                    _mm512_set1_ps(126.0),
                );
                let e = exp2_avx512(t);
                _mm512_mul_ps(x, reciprocal_avx512(_mm512_add_ps(e, _mm512_set1_ps(1.0))))
            }
            Activation::Gelu => {
                // ½·x·(1 + erf(x/√2)), erf as `math::erf_f32` (Abramowitz & Stegun 7.1.26).
                const P: f32 = 0.327_591_1;
                const A: [f32; 5] = [
                    0.254_829_6,
                    -0.284_496_74,
                    1.421_413_8,
                    -1.453_152_1,
                    1.061_405_4,
                ];
                let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
                // erf(10) is 1 in f32; the bound keeps the reciprocal finite (an infinite
                // x made it 0 · ∞) and takes a NaN to 1, the NaN then kept by ½·x.
                let az = _mm512_min_ps(_mm512_abs_ps(z), _mm512_set1_ps(10.0));
                let t =
                    reciprocal_avx512(_mm512_fmadd_ps(az, _mm512_set1_ps(P), _mm512_set1_ps(1.0)));
                let mut poly = _mm512_set1_ps(A[4]);
                for a in A[..4].iter().rev() {
                    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(*a));
                }
                poly = _mm512_mul_ps(poly, t);
                // exp(−z²) = 2^(−z²·log2 e), clamped below as `exp_f32` clamps.
                let q = _mm512_mul_ps(
                    _mm512_mul_ps(az, az),
                    _mm512_set1_ps(-std::f32::consts::LOG2_E),
                );
                let e = exp2_avx512(_mm512_max_ps(q, _mm512_set1_ps(-126.0)));
                let erf_abs = _mm512_fnmadd_ps(poly, e, _mm512_set1_ps(1.0));
                // erf is odd: the sign bit of z and the other bits of |erf| (0xD8: c ? b : a).
                let sign = _mm512_set1_epi32(i32::MIN);
                let erf = _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xD8>(
                    _mm512_castps_si512(erf_abs),
                    _mm512_castps_si512(z),
                    sign,
                ));
                let half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
                _mm512_fmadd_ps(half_x, erf, half_x)
            }
        }
    }
}

/// Independent accumulator chains of the peak loops: more than any of the three instructions'
/// latency × throughput on the CPUs seen (4–5 cycles × 1–2 per cycle), so the loop is bound by
/// throughput alone.
pub(super) const PEAK_CHAINS: usize = 12;

/// `iters` rounds of `step` on each of [`PEAK_CHAINS`] independent accumulators: the body of
/// the peak loops below, inlined into each so that `step` compiles to its one instruction.
#[inline(always)]
fn peak_chains<T: Copy>(iters: usize, zero: T, step: impl Fn(T) -> T) -> [T; PEAK_CHAINS] {
    let mut acc = [zero; PEAK_CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = step(*a);
        }
    }
    acc
}

/// `iters` rounds of [`PEAK_CHAINS`] `vfmadd231ps` on zmm registers, no memory operands: the
/// f32 ceiling the kernels' rates are read against. Returns a sum of the accumulators so the
/// work cannot be dropped.
///
/// # Safety
/// The CPU supports avx512f.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn peak_f32_fma(iters: usize, seed: f32) -> f32 {
    let (x, y) = (_mm512_set1_ps(seed), _mm512_set1_ps(1.0 - seed));
    let acc = peak_chains(iters, _mm512_setzero_ps(), |a| _mm512_fmadd_ps(x, y, a));
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

/// As [`peak_f32_fma`] with `vdpbf16ps` (two bf16 multiply-adds per f32 lane).
///
/// # Safety
/// The CPU supports avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn peak_bf16_dot(iters: usize, seed: f32) -> f32 {
    let v = _mm512_set1_ps(seed);
    let x = _mm512_cvtne2ps_pbh(v, v);
    let acc = peak_chains(iters, _mm512_setzero_ps(), |a| _mm512_dpbf16_ps(a, x, x));
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

/// As [`peak_f32_fma`] with `vpdpbusd` (four u8 × i8 multiply-adds per i32 lane).
///
/// # Safety
/// The CPU supports avx512f and avx512vnni.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn peak_int8_dot(iters: usize, seed: f32) -> f32 {
    let x = _mm512_set1_epi8((seed * 4.0) as i8);
    let acc = peak_chains(iters, _mm512_setzero_si512(), |a| {
        _mm512_dpbusd_epi32(a, x, x)
    });
    acc.iter().map(|&a| _mm512_reduce_add_epi32(a) as f32).sum()
}
