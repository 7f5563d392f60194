//! `x·Wᵀ` with `W` read in place in PyTorch's `[out, in]` layout: the fp32 linear layers of an
//! inference load use the checkpoint's own weights, mapped, instead of a transposed copy.
//!
//! On CPUs with AVX-512F a weight's first product packs it once for the f32 panel kernel of
//! [`super::lowp`], which then runs every product of it (the mapped pages are released); on
//! AVX2 CPUs that happens only where a long-lived process asks for it before its first product
//! ([`OutInWeight::pack_now`]). Elsewhere few input rows (one image's 50 tokens, a few short
//! captions) go through the out-in kernel of this module: every output is the dot product of
//! two contiguous rows, so the weight is read once, in place, and never repacked; more rows go
//! through gemm on the transposed strides of the mapped memory, which packs the weight per
//! call. The out-in kernel has AVX-512, AVX2+FMA and portable variants, the fastest this CPU
//! runs chosen at load time ([`OutInKernel::chosen`]).

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};

use super::kernels::{
    bias_rows, contiguous_f32, dot_lanes, matmul_parallelism, Activation, LinearInput, RowBlocks,
};
use super::lowp::{self, effective_threads, on_workers, F32PanelKernel, Fused, PackedF32};
use super::precision::KernelChoice;
use super::weights::MappedF32;

/// Most rows the out-in kernel takes: beyond this gemm's packing pays for itself. On Zen 4 (2
/// threads) the AVX-512 out-in kernel ran at 124–174 GFLOP/s on ViT-B/32's shapes from 48 to
/// 256 rows; gemm over the same weight was slower on every shape up to 256 rows except the
/// image tower's 768 × 3072, which it overtakes at about 160 rows (155 against 149;
/// docs/BENCHMARKS.md, session 25). 64 sent a 77-token text, and two images, to gemm at a third
/// of the speed.
pub const OUT_IN_MAX_ROWS: usize = 160;

/// Variants of the out-in kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutInKernel {
    /// Plain Rust, any CPU: one dot product (16 partial sums) per output.
    Portable,
    /// AVX2 + FMA: 3 input rows × 4 weight rows per register block, 8 lanes.
    Avx2,
    /// AVX-512F: 4 × 4 rows per register block, 16 lanes.
    Avx512,
}

impl OutInKernel {
    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        match self {
            OutInKernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            OutInKernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            OutInKernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The variants this CPU can run, slowest first.
    pub fn available() -> Vec<OutInKernel> {
        [
            OutInKernel::Portable,
            OutInKernel::Avx2,
            OutInKernel::Avx512,
        ]
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
    }

    /// The variant `choice` asks for on this CPU: the fastest, or the portable one.
    pub fn chosen(choice: KernelChoice) -> OutInKernel {
        match choice {
            KernelChoice::Fastest => *Self::available().last().unwrap_or(&OutInKernel::Portable),
            KernelChoice::Portable => OutInKernel::Portable,
        }
    }

    /// The f32 panel kernel of this variant's instruction set, where the CPU runs it; `None`
    /// for the portable variant (asked for, or all the CPU has).
    pub fn panel_kernel(self) -> Option<F32PanelKernel> {
        let kernel = match self {
            OutInKernel::Portable => return None,
            OutInKernel::Avx2 => F32PanelKernel::Avx2,
            OutInKernel::Avx512 => F32PanelKernel::Avx512,
        };
        kernel.is_available().then_some(kernel)
    }

    /// Short name (for `gclip bench`).
    pub fn name(self) -> &'static str {
        match self {
            OutInKernel::Portable => "f32-outin-portable",
            OutInKernel::Avx2 => "f32-outin-avx2",
            OutInKernel::Avx512 => "f32-outin-avx512",
        }
    }
}

/// Weight rows per parallel task: a task's rows (at most 16 × 12 KB for a 3072-wide weight)
/// stay in L2 while every block of input rows passes over them.
const TASK_ROWS: usize = 16;

/// Bytes per cache line: a vector load that straddles two lines costs two.
const LINE: usize = 64;

/// Floats per cache line.
const LINE_FLOATS: usize = LINE / 4;

/// Floats between the cache-line boundary at or before `p` and `p` (`p` is 4-byte aligned, as
/// every `f32` is).
fn line_offset(p: *const f32) -> usize {
    p as usize % LINE / 4
}

/// The `m` rows of `x` (each `k` long) copied so that every row starts at the same offset in a
/// cache line as `w`'s rows do: a kernel that first steps up to `w`'s next line boundary then
/// reads both from whole lines. A weight read in place in a checkpoint starts wherever the file
/// put it, and misaligned loads on both sides measured a third slower on AVX-512.
struct LineAlignedRows {
    buffer: Vec<f32>,
    start: usize,
    stride: usize,
}

impl LineAlignedRows {
    fn new(x: &[f32], m: usize, k: usize, w: *const f32) -> Self {
        // A whole number of lines per row, so every row shares the first row's offset.
        let stride = k.next_multiple_of(LINE_FLOATS);
        // A line of room before the first row: the kernels' first (masked) step addresses the
        // line before a row's first whole one.
        let mut buffer = vec![0f32; m * stride + 2 * LINE_FLOATS];
        let start = LINE_FLOATS
            + (line_offset(w) + LINE_FLOATS - line_offset(buffer.as_ptr())) % LINE_FLOATS;
        for (row, dst) in x
            .chunks_exact(k)
            .take(m)
            .zip(buffer[start..].chunks_exact_mut(stride))
        {
            dst[..k].copy_from_slice(row);
        }
        Self {
            buffer,
            start,
            stride,
        }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.buffer[self.start + i * self.stride..]
    }
}

/// Whether `x` (`m × k`), `w` (`n × k`) and `out` (`m` rows of `ld`, `n` used) are long enough.
fn check_extents(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    out: &[f32],
    ld: usize,
) -> Result<()> {
    let fits = m.checked_mul(k).is_some_and(|len| len <= x.len())
        && n.checked_mul(k).is_some_and(|len| len <= w.len())
        && n <= ld
        && (m.max(1) - 1)
            .checked_mul(ld)
            .and_then(|e| e.checked_add(n))
            .is_some_and(|len| len <= out.len());
    if !fits {
        candle_core::bail!(
            "out-in product: {m}x{k} input, {n}x{k} weight, output rows of {ld}: slices too short"
        );
    }
    Ok(())
}

/// [`out_in_add`] through gemm on the transposed strides of `w` (gemm packs `w` per call, which
/// a product over many rows repays), on candle's thread count.
pub fn gemm_add(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    out: &mut [f32],
    ld: usize,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    check_extents(x, m, w, n, k, out, ld)?;
    // SAFETY: out is m rows of ld (n ≤ ld columns written), x is m × k row-major, w is n × k
    // row-major, read as the k × n matrix Wᵀ (row stride 1, column stride k); the lengths were
    // checked just above, and out aliases neither input (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            ld as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            matmul_parallelism(),
        );
    }
    Ok(())
}

/// `out[i·ld + j] += x[i] · w[j]` for the `m` rows of `x` and the `n` rows of `w`, each `k`
/// long, with `kernel` (an error when this CPU cannot run it or a slice is too short).
#[allow(clippy::too_many_arguments)]
pub fn out_in_add(
    kernel: OutInKernel,
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    out: &mut [f32],
    ld: usize,
) -> Result<()> {
    if !kernel.is_available() {
        candle_core::bail!(
            "the {} kernel needs instructions this CPU lacks",
            kernel.name()
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    check_extents(x, m, w, n, k, out, ld)?;
    // Rows of `w` all share the first row's offset in a line only when a row is whole lines.
    let lead = if k.is_multiple_of(LINE_FLOATS) {
        ((LINE_FLOATS - line_offset(w.as_ptr())) % LINE_FLOATS).min(k)
    } else {
        0
    };
    let x = LineAlignedRows::new(x, m, k, w.as_ptr());
    // One task per TASK_ROWS weight rows, each making an `m × rows` tile; the tiles are added
    // into `out` afterwards (m × n additions, nothing beside the k-long dot products).
    let tiles: Vec<Mutex<Vec<f32>>> = (0..n.div_ceil(TASK_ROWS))
        .map(|_| Mutex::new(Vec::new()))
        .collect();
    on_workers(
        tiles.len(),
        effective_threads(0),
        || (),
        |t, ()| {
            let j0 = t * TASK_ROWS;
            let rows = TASK_ROWS.min(n - j0);
            let mut tile = vec![0f32; m * rows];
            tile_of(
                kernel,
                &x,
                m,
                &w[j0 * k..(j0 + rows) * k],
                rows,
                k,
                lead,
                &mut tile,
            );
            *tiles[t].lock().unwrap_or_else(|e| e.into_inner()) = tile;
        },
    );
    for (t, tile) in tiles.into_iter().enumerate() {
        let tile = tile.into_inner().unwrap_or_else(|e| e.into_inner());
        let j0 = t * TASK_ROWS;
        let rows = tile.len() / m;
        for (i, t) in tile.chunks_exact(rows).enumerate() {
            for (o, v) in out[i * ld + j0..i * ld + j0 + rows].iter_mut().zip(t) {
                *o += v;
            }
        }
    }
    Ok(())
}

/// Rows of `x` and of `w` per register block (the largest of the variants).
const R: usize = 4;

/// `tile[i·n + j] = x[i] · w[j]` for `m` rows of `x` and `n ≤ TASK_ROWS` rows of `w` (lengths
/// checked by the caller; `kernel` available); the first `lead` lanes of each row are stepped
/// alone, so that the rest are read from whole cache lines. The sums are the same, bit for bit,
/// whatever `lead` is: each value meets the same accumulator lane, in the same order.
#[allow(clippy::too_many_arguments)]
fn tile_of(
    kernel: OutInKernel,
    x: &LineAlignedRows,
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    lead: usize,
    tile: &mut [f32],
) {
    let x_rows = match kernel {
        OutInKernel::Avx2 => 3,
        _ => R,
    };
    for i0 in (0..m).step_by(x_rows) {
        for j0 in (0..n).step_by(R) {
            let mut res = [[0f32; R]; R];
            // Rows past the end repeat the last one; their results are dropped below.
            let xr: [&[f32]; R] = std::array::from_fn(|r| &x.row((i0 + r).min(m - 1))[..k]);
            let wr: [&[f32]; R] = std::array::from_fn(|c| &w[(j0 + c).min(n - 1) * k..][..k]);
            match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the variant's instructions were checked available by `out_in_add`;
                // every row slice holds `k` floats.
                OutInKernel::Avx2 => unsafe { x86::block_avx2(&xr, &wr, k, lead, &mut res) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                OutInKernel::Avx512 => unsafe { x86::block_avx512(&xr, &wr, k, lead, &mut res) },
                _ => {
                    for (r, line) in res.iter_mut().enumerate().take(x_rows) {
                        for (c, v) in line.iter_mut().enumerate() {
                            *v = dot_lanes(xr[r], wr[c]);
                        }
                    }
                }
            }
            for (r, line) in res.iter().enumerate().take(x_rows.min(m - i0)) {
                let cols = R.min(n - j0);
                tile[(i0 + r) * n + j0..][..cols].copy_from_slice(&line[..cols]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::R;
    use std::arch::x86_64::*;

    /// `res[r][c] = x[r] · w[c]` for r < 3, c < 4, with 8-lane FMAs (12 accumulators). The
    /// full steps start at lane `lead % 8`, where `w`'s rows are 32-byte aligned; value `d`
    /// still meets one accumulator lane in order of `d` (lane `d % 8` rotated by `lead % 8`,
    /// which the final sum does not see), so any `lead` gives the same bits.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; every row holds `k ≥ lead % 8` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_avx2(
        x: &[&[f32]; R],
        w: &[&[f32]; R],
        k: usize,
        lead: usize,
        res: &mut [[f32; R]; R],
    ) {
        let mut acc = [[_mm256_setzero_ps(); R]; 3];
        // One step of 8 lanes from `d` (an offset that may be negative, for the first step),
        // each vector read by `$load` from pointer `$p` (spelt out, not a closure, so that
        // every load inlines into this AVX2 function).
        macro_rules! step {
            ($d:expr, $p:ident => $load:expr) => {{
                let xv: [__m256; 3] = [
                    {
                        let $p = x[0].as_ptr().wrapping_offset($d);
                        $load
                    },
                    {
                        let $p = x[1].as_ptr().wrapping_offset($d);
                        $load
                    },
                    {
                        let $p = x[2].as_ptr().wrapping_offset($d);
                        $load
                    },
                ];
                for (c, wr) in w.iter().enumerate() {
                    let wv = {
                        let $p = wr.as_ptr().wrapping_offset($d);
                        $load
                    };
                    for r in 0..3 {
                        acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
                    }
                }
            }};
        }
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let rot = lead % 8;
        if rot > 0 {
            // Values 0..rot in lanes 8 - rot..8, read from the 8 floats before value `rot`.
            let mask = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(7 - rot as i32));
            // SAFETY: only the lanes of values 0..rot ≤ k are read; the masked lanes (before
            // the row) are not, and masked loads do not fault on them.
            unsafe { step!(rot as isize - 8, p => _mm256_maskload_ps(p, mask)) };
        }
        let mut d = rot;
        while d + 8 <= k {
            // SAFETY: lanes d..d + 8 ≤ k of rows that hold `k` floats.
            unsafe { step!(d as isize, p => _mm256_loadu_ps(p)) };
            d += 8;
        }
        if d < k {
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((k - d) as i32), lane);
            // SAFETY: lanes d..k are read; the masked lanes past `k` are not.
            unsafe { step!(d as isize, p => _mm256_maskload_ps(p, mask)) };
        }
        // Accumulator lane i holds the values of lane (i + rot) % 8. The sum below adds lanes
        // half a vector apart at every level, pairs that a rotation keeps together: it gives
        // the bits of the unrotated sum without rotating back.
        for r in 0..3 {
            for c in 0..R {
                let v = acc[r][c];
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                res[r][c] = _mm_cvtss_f32(s);
            }
        }
    }

    /// `res[r][c] = x[r] · w[c]` for r, c < 4, with 16-lane FMAs. The full steps start at
    /// lane `lead` (< 16), where `w`'s rows (and the caller's `x` rows, placed alike) start
    /// whole cache lines; value `d` still meets one accumulator lane in order of `d` (lane
    /// `d % 16` rotated by `lead`, which the final sum does not see), so any `lead` gives the
    /// same bits.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; every row holds `k ≥ lead` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_avx512(
        x: &[&[f32]; R],
        w: &[&[f32]; R],
        k: usize,
        lead: usize,
        res: &mut [[f32; R]; R],
    ) {
        let mut acc = [[_mm512_setzero_ps(); R]; R];
        let (x0, x1, x2, x3) = (x[0].as_ptr(), x[1].as_ptr(), x[2].as_ptr(), x[3].as_ptr());
        let (w0, w1, w2, w3) = (w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr());
        // One step of 16 lanes from `d` (an offset that may be negative, for the first step),
        // each vector read by `$load` from pointer `$p` (spelt out, not a closure, so that
        // every load inlines into this function).
        macro_rules! step {
            ($d:expr, $p:ident => $load:expr) => {{
                let xv = [x0, x1, x2, x3].map(|row| {
                    let $p = row.wrapping_offset($d);
                    $load
                });
                let wv = [w0, w1, w2, w3].map(|row| {
                    let $p = row.wrapping_offset($d);
                    $load
                });
                for c in 0..R {
                    for r in 0..R {
                        acc[r][c] = _mm512_fmadd_ps(xv[r], wv[c], acc[r][c]);
                    }
                }
            }};
        }
        let rot = lead % 16;
        if rot > 0 {
            // Values 0..rot in lanes 16 - rot..16, read from the 16 floats before value `rot`.
            let mask = (((1u32 << rot) - 1) << (16 - rot)) as u16;
            // SAFETY: only the lanes of values 0..rot ≤ k are read; the masked lanes (before
            // the row) are not, and masked loads do not fault on them.
            unsafe { step!(rot as isize - 16, p => _mm512_maskz_loadu_ps(mask, p)) };
        }
        let mut d = rot;
        while d + 16 <= k {
            // SAFETY: lanes d..d + 16 ≤ k of rows that hold `k` floats.
            unsafe { step!(d as isize, p => _mm512_loadu_ps(p)) };
            d += 16;
        }
        if d < k {
            let mask = ((1u32 << (k - d)) - 1) as u16;
            // SAFETY: lanes d..k are read; the masked lanes past `k` are not.
            unsafe { step!(d as isize, p => _mm512_maskz_loadu_ps(mask, p)) };
        }
        // Accumulator lane i holds the values of lane (i + rot) % 16. `_mm512_reduce_add_ps`
        // adds lanes half a vector apart at every level, pairs that a rotation keeps together:
        // it gives the bits of the unrotated sum without rotating back (the offsets test holds
        // it to that).
        for r in 0..R {
            for c in 0..R {
                res[r][c] = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
    }
}

/// `x·Wᵀ` for `x: [.., in]` and a tensor `W: [out, in]` read in place, for at most
/// [`OUT_IN_MAX_ROWS`] rows (the patch embedding of one image): a general gemm repacks the
/// whole of `W` on each call (9.4 MB for ViT-B/32's patch embedding), which costs more than the
/// product itself for one image. No gradient: callers use it on weights that are not being
/// trained.
pub(crate) struct OutInMatmulOp {
    pub kernel: OutInKernel,
}

impl CustomOp2 for OutInMatmulOp {
    fn name(&self) -> &'static str {
        "gclip-out-in-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "matmul input")?;
        let w = contiguous_f32(ws, wl, "matmul weight")?;
        let (n, k) = wl.shape().dims2()?;
        let dims = xl.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!(
                "matmul: input {:?} does not fit weight [{n}, {k}]",
                xl.shape()
            );
        }
        let m = x.len() / k.max(1);
        if m > OUT_IN_MAX_ROWS {
            candle_core::bail!("matmul: {m} rows is not a small out-in product");
        }
        let mut out = vec![0f32; m * n];
        out_in_add(self.kernel, x, m, w, n, k, &mut out, n)?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// A linear weight used in place in PyTorch's `[out, in]` layout in a mapped checkpoint: one
/// stored f32 tensor, or several holding consecutive rows (transformers' q, k and v of the
/// fused q/k/v projection), with the out-in kernel chosen for it at load time.
#[derive(Debug, Clone)]
pub struct OutInWeight {
    blocks: Vec<MappedF32>,
    in_dim: usize,
    out_dim: usize,
    kernel: OutInKernel,
    /// The weight packed for the f32 panel kernel, on a CPU that runs it: made by the weight's
    /// first product and used by every product, whatever its rows, so that an input's result
    /// does not depend on what ran before it (packing at the second product made a one-shot
    /// `gclip classify` and a long-lived model differ in the last bits). The AVX-512 panel
    /// kernel runs ViT-B/32's shapes 1.3–1.6× faster than the out-in kernel (16–50 rows) and
    /// gemm (512–1,600 rows; gemm also repacked the weight on every call) on Zen 4. AVX2 CPUs
    /// pack only when asked to, before any product ([`OutInWeight::pack_now`]: see
    /// `panel_kernel`). A load with the converted-weights cache sets it before any product too,
    /// to the copy mapped from the cache file ([`OutInWeight::use_mapped_panels`]) or packed for
    /// that file. The mapped rows are released once a copy is packed.
    panels: OnceLock<std::result::Result<PanelCopy, String>>,
    /// The rows of a weight held only packed ([`OutInWeight::packed_only`]), unpacked when
    /// asked for (converting the model to another precision, or for training).
    unpacked: OnceLock<Vec<f32>>,
}

/// A weight packed for the f32 panel kernel, with the kernel and where the copy came from.
#[derive(Debug, Clone)]
struct PanelCopy {
    packed: PackedF32,
    kernel: F32PanelKernel,
    origin: PanelOrigin,
}

/// Where a weight's copy for the f32 panel kernel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelOrigin {
    /// Packed by the weight's first product (AVX-512 CPUs).
    FirstProduct,
    /// Packed by [`OutInWeight::pack_now`].
    Asked,
    /// Packed as the load read the weight: one that cannot be used in place (a PyTorch
    /// archive, f16 values), which then has no rows of its own ([`OutInWeight::packed_only`]),
    /// or one packed for the converted-weights cache, which later loads map
    /// ([`OutInWeight::pack_at_load`]).
    Load,
    /// Mapped from a converted-weights cache file, packed there by an earlier load
    /// ([`OutInWeight::use_mapped_panels`]).
    Mapped,
}

impl OutInWeight {
    /// The weight whose rows `blocks` hold, in order, each `[rows_i, in_dim]`.
    pub(crate) fn new(blocks: Vec<MappedF32>, kernel: OutInKernel) -> Result<Self> {
        let in_dim = blocks.first().map_or(0, |b| b.dims().1);
        if in_dim == 0 || blocks.iter().any(|b| b.dims().1 != in_dim) {
            candle_core::bail!("an in-place weight needs blocks of equal, non-zero row length");
        }
        let out_dim = blocks.iter().map(|b| b.dims().0).sum();
        Ok(Self {
            blocks,
            in_dim,
            out_dim,
            kernel,
            panels: OnceLock::new(),
            unpacked: OnceLock::new(),
        })
    }

    /// `(in_dim, out_dim)`
    pub fn dims(&self) -> (usize, usize) {
        (self.in_dim, self.out_dim)
    }

    /// The out-in kernel variant this weight runs few rows with.
    pub fn kernel(&self) -> OutInKernel {
        self.kernel
    }

    /// A weight held only packed for the panel kernel of `kernel`'s instruction set (none
    /// where the CPU lacks it: refused), from the packing of a load that could not use the
    /// stored weight in place, or from the converted-weights cache; every product runs the
    /// panel kernel, and [`OutInWeight::rows`] unpacks a copy.
    pub(crate) fn packed_only(
        packed: PackedF32,
        kernel: OutInKernel,
        origin: PanelOrigin,
    ) -> Result<Self> {
        let Some(panel_kernel) = kernel.panel_kernel() else {
            candle_core::bail!("no f32 panel kernel runs {} weights", kernel.name());
        };
        let weight = Self {
            blocks: Vec::new(),
            in_dim: packed.in_dim(),
            out_dim: packed.out_dim(),
            kernel,
            panels: OnceLock::new(),
            unpacked: OnceLock::new(),
        };
        let copy = PanelCopy {
            packed,
            kernel: panel_kernel,
            origin,
        };
        // A fresh lock: the set cannot find a value.
        let _ = weight.panels.set(Ok(copy));
        Ok(weight)
    }

    /// The stored `[out, in]` rows (of a weight held only packed: unpacked, once).
    pub(crate) fn rows(&self) -> Result<RowBlocks<'_>> {
        if self.blocks.is_empty() {
            let copy = self.panel_copy().ok_or_else(|| {
                candle_core::Error::Msg("an f32 weight with neither rows nor panels".into())
            })?;
            let rows = self.unpacked.get_or_init(|| copy.packed.unpack_out_in());
            return RowBlocks::new(vec![rows.as_slice()], self.in_dim);
        }
        RowBlocks::new(
            self.blocks.iter().map(|b| b.values()).collect(),
            self.in_dim,
        )
    }

    /// What runs the products of more than [`OUT_IN_MAX_ROWS`] rows (where the weight is or
    /// will be packed, every product).
    pub fn repeated_kernel_name(&self) -> &'static str {
        match self.panel_copy() {
            Some(copy) => copy.kernel.name(),
            None => self.panel_kernel().map_or("gemm", F32PanelKernel::name),
        }
    }

    /// Whether every product runs the panel kernel: packed by [`OutInWeight::pack_now`], or to
    /// be packed by the first product.
    pub fn runs_panels(&self) -> bool {
        self.panel_copy().is_some() || self.panel_kernel().is_some()
    }

    /// Where the weight's copy for the panel kernel came from, once there is one.
    pub fn panel_origin(&self) -> Option<PanelOrigin> {
        self.panel_copy().map(|copy| copy.origin)
    }

    /// The packed copy's bytes (as [`PackedF32::as_bytes`] gives them), once there is one.
    pub(crate) fn panel_bytes(&self) -> Option<&[u8]> {
        self.panel_copy().map(|copy| copy.packed.as_bytes())
    }

    /// The f32 panel kernel that the first product packs this weight for: the AVX-512 one where
    /// the out-in kernel is AVX-512, else `None`. The AVX2 panel kernel runs Zen 3's products of
    /// 16–77 rows 1.1–1.7× faster than the out-in kernel, but packing at the first product added
    /// 0.1–1.9 s of page faults to a one-shot `gclip classify` there (0.23–0.35 s without;
    /// docs/BENCHMARKS.md, sessions 32 and 33), so on AVX2 CPUs only a process that asks for it
    /// ([`OutInWeight::pack_now`], as the server does) or finds the copy in the
    /// converted-weights cache ([`OutInWeight::use_mapped_panels`]) gets it.
    fn panel_kernel(&self) -> Option<F32PanelKernel> {
        self.kernel
            .panel_kernel()
            .filter(|&kernel| kernel == F32PanelKernel::Avx512)
    }

    /// The packed copy, if it was made.
    fn panel_copy(&self) -> Option<&PanelCopy> {
        self.panels.get().and_then(|made| made.as_ref().ok())
    }

    /// Packs the weight for the f32 panel kernel of this CPU now, on AVX2 CPUs too, so that
    /// every product runs that kernel: for a long-lived process that asks before its first
    /// product, so that no input's result depends on what ran before it. `Ok(false)` where
    /// there is no panel kernel (the portable kernels); a weight already packed stays as it is.
    pub fn pack_now(&self) -> Result<bool> {
        self.pack_for_panels(PanelOrigin::Asked)
    }

    /// Packs the weight for the f32 panel kernel of this CPU as the load reads it, for the
    /// converted-weights cache (as [`OutInWeight::pack_now`], labelled [`PanelOrigin::Load`]).
    pub(crate) fn pack_at_load(&self) -> Result<bool> {
        self.pack_for_panels(PanelOrigin::Load)
    }

    fn pack_for_panels(&self, origin: PanelOrigin) -> Result<bool> {
        let Some(kernel) = self.kernel.panel_kernel() else {
            return Ok(false);
        };
        self.packed_copy(kernel, origin).map(|_| true)
    }

    /// Runs every product over `packed`, this weight packed earlier for the panel kernel (a
    /// converted-weights file's copy, mapped), so that the checkpoint's rows are never read.
    /// Refused where this CPU has no panel kernel for the weight's out-in kernel, where the
    /// dimensions differ, or once a copy exists.
    pub(crate) fn use_mapped_panels(&self, packed: PackedF32) -> Result<()> {
        let Some(kernel) = self.kernel.panel_kernel() else {
            candle_core::bail!("no f32 panel kernel runs {} weights", self.kernel.name());
        };
        if (packed.in_dim(), packed.out_dim()) != self.dims() {
            candle_core::bail!(
                "a packed f32 weight of {} x {} for a {} x {} weight",
                packed.in_dim(),
                packed.out_dim(),
                self.in_dim,
                self.out_dim
            );
        }
        self.panels
            .set(Ok(PanelCopy {
                packed,
                kernel,
                origin: PanelOrigin::Mapped,
            }))
            .map_err(|_| candle_core::Error::Msg("the weight is packed already".into()))
    }

    /// The packed copy for `kernel`, made by this call if no call made it before.
    fn packed_copy(&self, kernel: F32PanelKernel, origin: PanelOrigin) -> Result<&PanelCopy> {
        let made = self.panels.get_or_init(|| {
            let packed = self
                .rows()
                .map_err(|e| e.to_string())
                .and_then(|rows| PackedF32::pack_rows(&rows))?;
            // Every later product reads the packed copy: the mapped rows need not count in
            // the process's memory (ViT-B/32's image tower, 350 MB).
            self.blocks.iter().for_each(MappedF32::release_pages);
            Ok(PanelCopy {
                packed,
                kernel,
                origin,
            })
        });
        match made {
            Ok(copy) => Ok(copy),
            Err(e) => candle_core::bail!("packing an f32 weight: {e}"),
        }
    }

    /// The weight packed for the f32 panel kernel (by [`OutInWeight::pack_now`], or by the
    /// first call where `panel_kernel` says so), or `None` where products read the weight in
    /// place.
    fn panels(&self) -> Result<Option<(&PackedF32, F32PanelKernel)>> {
        let copy = match (self.panel_copy(), self.panel_kernel()) {
            (Some(copy), _) => copy,
            (None, Some(kernel)) => self.packed_copy(kernel, PanelOrigin::FirstProduct)?,
            (None, None) => return Ok(None),
        };
        Ok(Some((&copy.packed, copy.kernel)))
    }
}

/// `act(x)·Wᵀ + b` over an [`OutInWeight`] (a [`CustomOp2`] of `x` and `b`): the out-in kernel
/// for few rows, gemm on the weight's transposed strides for more. Inference only.
pub(crate) struct OutInLinearOp {
    pub weight: Arc<OutInWeight>,
    pub input_activation: Option<Activation>,
}

impl OutInLinearOp {
    /// `act(x)·Wᵀ + b`, plus `residual` (the output's shape) when there is one, added last: the
    /// same sums as adding it afterwards, without a pass and an allocation of their own.
    fn run(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (bs, bl): (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let b = contiguous_f32(bs, bl, "linear bias")?;
        let (in_dim, out_dim) = self.weight.dims();
        let x = contiguous_f32(xs, xl, "linear input")?;
        let rows = x.len() / in_dim.max(1);
        let residual = match residual {
            Some((rs, rl)) => {
                let r = contiguous_f32(rs, rl, "linear residual")?;
                if r.len() != rows * out_dim {
                    candle_core::bail!(
                        "linear: residual {:?} does not fit {rows} rows of {out_dim}",
                        rl.shape()
                    );
                }
                Some(r)
            }
            None => None,
        };
        if let Some((packed, kernel)) = self.weight.panels()? {
            let LinearInput { x, rows, shape } =
                LinearInput::new(x, xl.shape(), (in_dim, out_dim), (b, bl.shape()), None)?;
            let fused = Fused {
                act: self.input_activation,
                residual,
            };
            let out = lowp::linear_f32_fused(&x, rows, packed, b, fused, kernel, 0)
                .map_err(candle_core::Error::Msg)?;
            return Ok((CpuStorage::F32(out), shape));
        }
        let LinearInput { x, rows, shape } = LinearInput::new(
            x,
            xl.shape(),
            (in_dim, out_dim),
            (b, bl.shape()),
            self.input_activation,
        )?;
        let mut dst = bias_rows(b, rows);
        let mut first = 0;
        for block in &self.weight.blocks {
            let (n, k) = block.dims();
            let w = block.values();
            if rows <= OUT_IN_MAX_ROWS {
                out_in_add(
                    self.weight.kernel,
                    &x,
                    rows,
                    w,
                    n,
                    k,
                    &mut dst[first..],
                    out_dim,
                )?;
            } else {
                gemm_add(&x, rows, w, n, k, &mut dst[first..], out_dim)?;
            }
            first += n;
        }
        if let Some(r) = residual {
            for (d, r) in dst.iter_mut().zip(r) {
                *d += r;
            }
        }
        Ok((CpuStorage::F32(dst), shape))
    }
}

impl CustomOp2 for OutInLinearOp {
    fn name(&self) -> &'static str {
        "gclip-out-in-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((xs, xl), (bs, bl), None)
    }
}

/// `act(x)·Wᵀ + b + r` as a [`CustomOp3`] of `x`, `b` and the residual `r`.
impl CustomOp3 for OutInLinearOp {
    fn name(&self) -> &'static str {
        "gclip-out-in-linear-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((xs, xl), (bs, bl), Some((rs, rl)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::test_tensor;

    /// Every variant this CPU runs, forced in turn, against candle's matmul, on shapes with
    /// ragged row blocks and lane tails, written into a wider output at a column offset.
    #[test]
    fn every_available_kernel_matches_candle() {
        let available = OutInKernel::available();
        assert_eq!(available[0], OutInKernel::Portable);
        for kernel in available {
            let mut seed = 5u64;
            for &(m, n, k) in &[
                (1, 1, 1),
                (49, 37, 3072),
                (50, 768, 768),
                (3, 5, 33),
                (64, 9, 16),
                (7, 17, 7),
            ] {
                seed += 2;
                let x = test_tensor(&[m, k], seed);
                let w = test_tensor(&[n, k], seed + 1);
                let want = x.matmul(&w.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
                let (xv, wv) = (
                    x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                // Columns 2..2 + n of rows of n + 3, starting from 1.0.
                let ld = n + 3;
                let mut out = vec![1f32; m * ld];
                out_in_add(kernel, &xv, m, &wv, n, k, &mut out[2..], ld).unwrap();
                for i in 0..m {
                    for j in 0..ld {
                        let got = out[i * ld + j];
                        let want = if (2..2 + n).contains(&j) {
                            1.0 + want[i][j - 2]
                        } else {
                            1.0
                        };
                        assert!(
                            (got - want).abs() <= 1e-5 * (k as f32).sqrt(),
                            "{} {m}x{n}x{k} [{i}][{j}]: {got} vs {want}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    /// A weight read in place starts anywhere in a cache line: every start, with rows of
    /// whole lines (the kernels step to the line boundary first) and without. Each kernel
    /// gives the same bits at every offset (each value meets the same accumulator lane in the
    /// same order), and agrees with the portable kernel.
    #[test]
    fn every_weight_offset_in_a_cache_line_gives_the_same_products() {
        for &(m, n, k) in &[(5, 6, 48), (9, 5, 16), (4, 4, 40), (2, 3, 7), (6, 9, 64)] {
            let x = test_tensor(&[m, k], 31).flatten_all().unwrap();
            let x = x.to_vec1::<f32>().unwrap();
            let w = test_tensor(&[n, k], 32).flatten_all().unwrap();
            let w = w.to_vec1::<f32>().unwrap();
            let mut want = vec![0f32; m * n];
            out_in_add(OutInKernel::Portable, &x, m, &w, n, k, &mut want, n).unwrap();
            let mut buffer = vec![0f32; n * k + 2 * LINE_FLOATS];
            let base = (LINE_FLOATS - line_offset(buffer.as_ptr())) % LINE_FLOATS;
            for kernel in OutInKernel::available() {
                let mut at_line_start: Option<Vec<f32>> = None;
                for offset in 0..LINE_FLOATS {
                    let start = base + offset;
                    buffer[start..start + n * k].copy_from_slice(&w);
                    let placed = &buffer[start..start + n * k];
                    assert_eq!(line_offset(placed.as_ptr()), offset);
                    let mut got = vec![0f32; m * n];
                    out_in_add(kernel, &x, m, placed, n, k, &mut got, n).unwrap();
                    let first = at_line_start.get_or_insert_with(|| got.clone());
                    assert_eq!(
                        &got,
                        first,
                        "{} {m}x{n}x{k}: offset {offset} changed the sums",
                        kernel.name()
                    );
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-5 * (k as f32).sqrt(),
                            "{} {m}x{n}x{k} offset {offset} [{i}]: {g} vs {e}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn short_slices_and_missing_instructions_are_errors() {
        let x = vec![0f32; 8];
        let mut out = vec![0f32; 4];
        let k = OutInKernel::Portable;
        assert!(out_in_add(k, &x, 2, &x, 2, 4, &mut out, 2).is_ok());
        assert!(out_in_add(k, &x, 3, &x, 2, 4, &mut out, 2).is_err());
        assert!(out_in_add(k, &x, 2, &x, 3, 4, &mut out, 3).is_err());
        assert!(out_in_add(k, &x, 2, &x, 2, 4, &mut out[1..], 2).is_err());
        assert!(out_in_add(k, &x, 2, &x, 2, 4, &mut out, 1).is_err());
        for kernel in [OutInKernel::Avx2, OutInKernel::Avx512] {
            let r = out_in_add(kernel, &x, 2, &x, 2, 4, &mut out, 2);
            assert_eq!(r.is_ok(), kernel.is_available(), "{}", kernel.name());
        }
    }

    #[test]
    fn out_in_matmul_matches_candle_and_refuses_many_rows() {
        let kernel = OutInKernel::chosen(KernelChoice::Fastest);
        let x = test_tensor(&[2, 3, 33], 1);
        let w = test_tensor(&[5, 33], 2);
        let got = x.apply_op2_no_bwd(&w, &OutInMatmulOp { kernel }).unwrap();
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        assert_eq!(got.dims(), want.dims());
        let (got, want) = (
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{diff}");
        let x = test_tensor(&[OUT_IN_MAX_ROWS + 1, 8], 3);
        assert!(x
            .apply_op2_no_bwd(&test_tensor(&[3, 8], 4), &OutInMatmulOp { kernel })
            .is_err());
    }
}
