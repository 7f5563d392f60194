//! Fused CPU kernels for the hot paths of a transformer block, exposed as candle custom ops.
//!
//! candle's generic element-wise ops run on one thread and make one pass (and one allocation)
//! per op; a LayerNorm is six of them, a bias-add-then-GELU three. These kernels do each job in
//! one parallel pass over contiguous rows, and are compiled for the baseline CPU, for AVX2 + FMA
//! and for AVX-512, chosen at run time. Every op has a backward pass (fused kernels
//! of the same kind on this path, candle tensor ops elsewhere), so training gets gradients
//! through the same forward code.
//!
//! The ops only accept contiguous `f32` CPU tensors; [`super::layers`] checks that and falls back
//! to composed candle ops everywhere else (other devices, other dtypes).

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

use super::lowp::{self, Bf16Kernel};
use super::mixed;
use super::precision::DenseProducts;

/// Generates a run-time dispatcher `$name` that calls `$generic` compiled with AVX-512 when the
/// CPU has it, with AVX2 and FMA when it has those (Zen 2/3, Intel before Ice Lake), and the
/// baseline (SSE2) build otherwise. `$generic` must be `#[inline(always)]` so that it is compiled
/// inside each variant. The variants give identical results: Rust never contracts `a * b + c`
/// into an FMA on its own, and the kernels fix their summation order with explicit partial sums.
/// Exported for the other crates' kernels (the search crate's quantized scans).
#[macro_export]
macro_rules! simd_dispatch {
    ($vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)? = $generic:ident) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if $crate::model::kernels::has_avx512() {
                    // SAFETY: `wide` only needs the AVX-512 features checked just above.
                    return unsafe { wide($($arg),*) };
                }
                if $crate::model::kernels::has_avx2_fma() {
                    // SAFETY: `avx2` only needs the AVX2 and FMA features checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// Whether this CPU runs the AVX-512 variants of the kernels (checked once).
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && has_avx2_fma()
    })
}

/// Whether this CPU runs the AVX2 + FMA variants of the kernels (checked once).
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    })
}

/// Number of independent partial sums in reductions: enough lanes for one AVX-512 register, and
/// independent accumulators let the compiler vectorise without reassociating floats itself.
const LANES: usize = 16;

/// `exp(x)` for f32 without branches, so that loops calling it vectorise. Range reduction
/// `x = n·ln2 + r` with |r| ≤ ln2/2, then a degree-7 Taylor polynomial: relative error about
/// 1e-7 over the clamped range, which is what `f32::exp` gives for the values a softmax sees.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5·2^23 rounds to the nearest integer in any rounding-free way.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // `shifted` lies in [2^23, 2^24), where consecutive integers are consecutive bit patterns,
    // so its bits hold n exactly: integer arithmetic that vectorises, where `n as i32` (a
    // saturating conversion) made the compiler fall back to scalar code. A NaN x gives a NaN p,
    // so the scale it gets does not matter.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// `erf(x)` (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7), branch-free.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let y = 1.0 - poly * exp_f32(-ax * ax);
    y.copysign(x)
}

/// The activation functions of CLIP's MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x · Φ(x)` with the exact (erf) normal CDF, as `torch.nn.GELU()`.
    Gelu,
    /// `x · σ(1.702 x)`, OpenAI's original approximation.
    QuickGelu,
}

#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn quick_gelu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-1.702 * x))
}

#[inline(always)]
fn act_row_generic(src: &[f32], dst: &mut [f32], act: Activation) {
    match act {
        Activation::Gelu => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = gelu_f32(*s);
            }
        }
        Activation::QuickGelu => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = quick_gelu_f32(*s);
            }
        }
    }
}
simd_dispatch!(pub(crate) fn act_row(src: &[f32], dst: &mut [f32], act: Activation) = act_row_generic);

#[inline(always)]
fn sum_lanes(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// The largest value of `xs` (−∞ when empty), NaN ignored as `f32::max` does. A plain
/// `fold(f32::max)` compiles to a scalar loop (its NaN rule), which was half of a softmax.
#[inline(always)]
fn max_lanes(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

#[inline(always)]
fn sum_sq_dev_lanes(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

#[inline(always)]
fn layer_norm_row_generic(src: &[f32], dst: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = src.len() as f32;
    let mean = sum_lanes(src) / n;
    let var = sum_sq_dev_lanes(src, mean) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (((d, s), w), b) in dst.iter_mut().zip(src).zip(w).zip(b) {
        *d = (s - mean) * rstd * w + b;
    }
}
simd_dispatch!(fn layer_norm_row(src: &[f32], dst: &mut [f32], w: &[f32], b: &[f32], eps: f32) = layer_norm_row_generic);

/// One row of the LayerNorm gradient: writes `dx` and adds this row's terms of the weight and
/// bias gradients to `dw` and `db`. With `x̂ = (x − μ)·r`, `ĝ = g ∘ w`:
/// `dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ ∘ x̂))`, `dw += g ∘ x̂`, `db += g`.
#[inline(always)]
fn layer_norm_grad_row_generic(
    x: &[f32],
    g: &[f32],
    w: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    let width = x.len();
    let (g, w, dx, dw, db) = (
        &g[..width],
        &w[..width],
        &mut dx[..width],
        &mut dw[..width],
        &mut db[..width],
    );
    let n = width as f32;
    let mean = sum_lanes(x) / n;
    let rstd = 1.0 / (sum_sq_dev_lanes(x, mean) / n + eps).sqrt();
    let mut acc_g = [0f32; LANES];
    let mut acc_gx = [0f32; LANES];
    let full = width / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        for i in 0..LANES {
            let j = base + i;
            let x_hat = (x[j] - mean) * rstd;
            let g_hat = g[j] * w[j];
            acc_g[i] += g_hat;
            acc_gx[i] += g_hat * x_hat;
            dw[j] += g[j] * x_hat;
            db[j] += g[j];
        }
    }
    let mut sum_g: f32 = acc_g.iter().sum();
    let mut sum_gx: f32 = acc_gx.iter().sum();
    for j in full..width {
        let x_hat = (x[j] - mean) * rstd;
        let g_hat = g[j] * w[j];
        sum_g += g_hat;
        sum_gx += g_hat * x_hat;
        dw[j] += g[j] * x_hat;
        db[j] += g[j];
    }
    let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
    for j in 0..width {
        let x_hat = (x[j] - mean) * rstd;
        dx[j] = rstd * (g[j] * w[j] - mean_g - x_hat * mean_gx);
    }
}
simd_dispatch!(fn layer_norm_grad_row(x: &[f32], g: &[f32], w: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) = layer_norm_grad_row_generic);

/// One row of the activation gradient: `dz = g ∘ act′(z)`.
#[inline(always)]
fn act_grad_row_generic(z: &[f32], g: &[f32], act: Activation, dz: &mut [f32]) {
    let width = z.len();
    let (g, dz) = (&g[..width], &mut dz[..width]);
    match act {
        Activation::Gelu => {
            // d/dz [z·Φ(z)] = Φ(z) + z·φ(z)
            const INV_SQRT_2PI: f32 = 0.398_942_3;
            for j in 0..width {
                let cdf = 0.5 * (1.0 + erf_f32(z[j] * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = INV_SQRT_2PI * exp_f32(-0.5 * z[j] * z[j]);
                dz[j] = g[j] * (cdf + z[j] * pdf);
            }
        }
        Activation::QuickGelu => {
            // d/dz [z·σ(az)] = σ(az) + a·z·σ(az)·(1 − σ(az))
            for j in 0..width {
                let s = 1.0 / (1.0 + exp_f32(-1.702 * z[j]));
                dz[j] = g[j] * (s + 1.702 * z[j] * s * (1.0 - s));
            }
        }
    }
}
simd_dispatch!(fn act_grad_row(z: &[f32], g: &[f32], act: Activation, dz: &mut [f32]) = act_grad_row_generic);

/// `act(z)` over contiguous rows, in parallel.
fn activate_rows(z: &[f32], width: usize, act: Activation) -> Vec<f32> {
    let mut dst = vec![0f32; z.len()];
    dst.par_chunks_mut(width)
        .zip(z.par_chunks(width))
        .with_min_len(8)
        .for_each(|(d, s)| act_row(s, d, act));
    dst
}

/// Rows per parallel task for a pass over `rows` rows that also accumulates column sums: about
/// four tasks per thread, each at least 8 rows so that its partial sums pay for themselves.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads().max(1))
        .max(8)
}

/// Adds the partial column sums of two tasks.
fn add_partial_sums(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    for (x, y) in a.iter_mut().zip(&b) {
        *x += y;
    }
    a
}

/// Sums of the columns of a row-major `[rows, width]` matrix: each task adds up a band of rows,
/// then the bands' sums are added (candle's own reduction runs on one thread).
fn column_sums(m: &[f32], width: usize) -> Vec<f32> {
    let band = (rows_per_task(m.len() / width.max(1)) * width).max(1);
    m.par_chunks(band)
        .map(|rows| {
            let mut acc = vec![0f32; width];
            for row in rows.chunks_exact(width) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .reduce(|| vec![0f32; width], add_partial_sums)
}

/// `Σ_rows m` of a `[rows, width]` tensor, as a `[width]` tensor, without a graph.
struct ColumnSumOp;

impl CustomOp1 for ColumnSumOp {
    fn name(&self) -> &'static str {
        "gclip-column-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let m = contiguous_f32(storage, layout, "column sum input")?;
        let (_, width) = layout.shape().dims2()?;
        Ok((CpuStorage::F32(column_sums(m, width)), Shape::from(width)))
    }
}

/// Runs `row(x_row, g_row, out_row, column_sums)` over all rows of `x` and `g` in parallel and
/// returns `[rows + sums, width]`: the per-row outputs, then `sums` rows of column sums (each
/// task accumulates its own partial sums, added up at the end). Gradients of a row-wise op and
/// of its broadcast parameters come out of one pass this way.
fn rows_with_column_sums(
    x: &[f32],
    g: &[f32],
    width: usize,
    sums: usize,
    row: impl Fn(&[f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let rows = x.len() / width;
    let mut out = vec![0f32; (rows + sums) * width];
    let (per_row, tail) = out.split_at_mut(rows * width);
    let chunk_rows = rows_per_task(rows);
    let totals = per_row
        .par_chunks_mut(chunk_rows * width)
        .zip(x.par_chunks(chunk_rows * width))
        .zip(g.par_chunks(chunk_rows * width))
        .map(|((dst, xs), gs)| {
            let mut partial = vec![0f32; sums * width];
            for ((d, xr), gr) in dst
                .chunks_exact_mut(width)
                .zip(xs.chunks_exact(width))
                .zip(gs.chunks_exact(width))
            {
                row(xr, gr, d, &mut partial);
            }
            partial
        })
        .reduce(|| vec![0f32; sums * width], add_partial_sums);
    tail.copy_from_slice(&totals);
    out
}

/// Softmax of `row[..valid]` in place; entries from `valid` on are set to 0 (causal masking).
#[inline(always)]
fn softmax_prefix_generic(row: &mut [f32], valid: usize) {
    let (live, masked) = row.split_at_mut(valid);
    let max = max_lanes(live);
    for v in live.iter_mut() {
        *v = exp_f32(*v - max);
    }
    let inv = 1.0 / sum_lanes(live);
    for v in live.iter_mut() {
        *v *= inv;
    }
    masked.fill(0.0);
}
simd_dispatch!(fn softmax_prefix(row: &mut [f32], valid: usize) = softmax_prefix_generic);

pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: fused kernel needs a contiguous tensor"),
    }
}

/// The rayon thread count that candle's own matmul uses, so `--threads` caps both.
pub(crate) fn matmul_parallelism() -> gemm::Parallelism {
    let n = candle_core::utils::get_num_threads();
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// The transpose of a 2-D tensor, contiguous. f32 CPU tensors go through a tiled copy in
/// parallel (loading a model transposes every linear weight, and candle's generic strided copy
/// took a third of a `gclip classify` process); other tensors through candle.
pub fn transpose_2d(t: &Tensor) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if !fusable(t) || rows == 0 || cols == 0 {
        return t.t()?.contiguous();
    }
    let t = t.contiguous()?;
    let out = {
        let (storage, layout) = t.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("transpose: not a CPU tensor");
        };
        let src = contiguous_f32(cpu, layout, "transpose input")?;
        transpose_f32(src, rows, cols)
    };
    Tensor::from_vec(out, (cols, rows), t.device())
}

/// A row-major `[rows, cols]` f32 matrix held as consecutive blocks of whole rows: a
/// checkpoint that stores q, k and v apart gives the fused q/k/v weight as three blocks, read
/// in place where they lie instead of concatenated into a copy first.
pub(crate) struct RowBlocks<'a> {
    /// Each block with the index of its first row.
    blocks: Vec<(usize, &'a [f32])>,
    rows: usize,
    cols: usize,
}

impl<'a> RowBlocks<'a> {
    /// Blocks of whole rows of `cols` values each, in row order.
    pub(crate) fn new(blocks: Vec<&'a [f32]>, cols: usize) -> Result<Self> {
        let mut rows = 0;
        let mut indexed = Vec::with_capacity(blocks.len());
        for block in blocks {
            if cols == 0 || block.len() % cols != 0 {
                candle_core::bail!(
                    "a block of {} values is not whole rows of {cols} values",
                    block.len()
                );
            }
            indexed.push((rows, block));
            rows += block.len() / cols;
        }
        Ok(Self {
            blocks: indexed,
            rows,
            cols,
        })
    }

    /// One contiguous matrix; `values` holds `rows × cols` values (slicing a row panics
    /// otherwise, so callers check the length first).
    pub(crate) fn whole(values: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            blocks: vec![(0, values)],
            rows,
            cols,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r` (`r < rows`).
    pub(crate) fn row(&self, r: usize) -> &'a [f32] {
        let at = self.blocks.partition_point(|(first, _)| *first <= r) - 1;
        let (first, block) = self.blocks[at];
        &block[(r - first) * self.cols..(r - first + 1) * self.cols]
    }
}

/// `dst[c][r] = src[r][c]` for a row-major `[rows, cols]` matrix: 16 × 16 tiles are read as
/// 16 contiguous row pieces into a local block and written back as 16 contiguous column
/// pieces, so both sides move whole cache lines; bands of 16 destination rows run in parallel.
pub(crate) fn transpose_f32(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    transpose_blocks(&RowBlocks::whole(src, rows, cols))
}

/// [`transpose_f32`] of a matrix held in row blocks.
pub(crate) fn transpose_blocks(src: &RowBlocks) -> Vec<f32> {
    const T: usize = 16;
    let (rows, cols) = (src.rows(), src.cols());
    let mut dst = vec![0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return dst;
    }
    dst.par_chunks_mut(T * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let c0 = band * T;
            let width = out.len() / rows;
            let mut tile = [[0f32; T]; T];
            for r0 in (0..rows).step_by(T) {
                let height = T.min(rows - r0);
                for (r, line) in tile.iter_mut().enumerate().take(height) {
                    let row = src.row(r0 + r);
                    if width == T {
                        // Element by element over a constant length: vector moves, where a
                        // slice copy became a memmove call per 64 bytes.
                        for (d, s) in line.iter_mut().zip(&row[c0..c0 + T]) {
                            *d = *s;
                        }
                    } else {
                        line[..width].copy_from_slice(&row[c0..c0 + width]);
                    }
                }
                for (c, dst_row) in out.chunks_exact_mut(rows).enumerate() {
                    for (r, d) in dst_row[r0..r0 + height].iter_mut().enumerate() {
                        *d = tile[r][c];
                    }
                }
            }
        });
    dst
}

#[inline(always)]
fn count_non_finite_generic(xs: &[f32]) -> usize {
    // Exponent all ones: infinity or NaN. Summed as integers so that the loop vectorises.
    xs.iter()
        .map(|x| usize::from(x.to_bits() & 0x7f80_0000 == 0x7f80_0000))
        .sum()
}

simd_dispatch!(fn count_non_finite_run(xs: &[f32]) -> usize = count_non_finite_generic);

/// How many of `xs` are NaN or infinite, in parallel for long slices (a model load checks
/// every weight).
pub(crate) fn count_non_finite_f32(xs: &[f32]) -> usize {
    const CHUNK: usize = 1 << 16;
    if xs.len() <= CHUNK {
        count_non_finite_run(xs)
    } else {
        xs.par_chunks(CHUNK).map(count_non_finite_run).sum()
    }
}

/// Whether a tensor can go through the fused CPU kernels.
pub(crate) fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

// ---------------------------------------------------------------------------------------------
// Linear: y = x·Wᵀ + b in one gemm call (the bias pre-fills the destination).

/// What a linear op (f32 `LinearOp` or the packed one) computes from: its input rows, checked
/// against the weight's `(in, out)` and the bias, with the MLP's activation applied when asked,
/// and the output's shape.
pub(crate) struct LinearInput<'a> {
    pub x: std::borrow::Cow<'a, [f32]>,
    pub rows: usize,
    pub shape: Shape,
}

impl<'a> LinearInput<'a> {
    pub(crate) fn new(
        x: &'a [f32],
        x_shape: &Shape,
        (in_dim, out_dim): (usize, usize),
        (bias, bias_shape): (&[f32], &Shape),
        act: Option<Activation>,
    ) -> Result<Self> {
        let dims = x_shape.dims();
        if dims.last() != Some(&in_dim) || bias.len() != out_dim {
            candle_core::bail!(
                "linear: input {x_shape:?}, weight [{in_dim}, {out_dim}], bias {bias_shape:?} do \
                 not fit"
            );
        }
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out_dim;
        }
        Ok(Self {
            rows: x.len() / in_dim.max(1),
            x: match act {
                None => std::borrow::Cow::Borrowed(x),
                Some(act) => std::borrow::Cow::Owned(activate_rows(x, in_dim, act)),
            },
            shape: Shape::from(shape),
        })
    }
}

/// `rows` copies of the bias `b`: the destination a linear op's gemm adds its product into.
pub(crate) fn bias_rows(b: &[f32], rows: usize) -> Vec<f32> {
    let mut dst = vec![0f32; rows * b.len()];
    for row in dst.chunks_exact_mut(b.len().max(1)) {
        row.copy_from_slice(b);
    }
    dst
}

/// `x·W + b` with `x: [.., in]`, `W: [in, out]` (PyTorch's weight transposed) and `b: [out]`.
///
/// The weight is kept `[in, out]` because gemm then streams it in place: with PyTorch's
/// `[out, in]` layout it repacks the whole weight matrix on every call, which costs more than
/// the multiplication itself for short inputs (one image, one caption).
///
/// With `input_activation`, the op computes `act(x)·W + b` for the second layer of an MLP: the
/// graph then keeps only the pre-activation `x` (the activated copy is a temporary, recomputed
/// by the backward pass), a quarter of a transformer block's saved activations.
///
/// With `products` bf16, the three products (forward, input and weight gradients) round their
/// operands to bf16 and accumulate in f32 ([`super::mixed`]); the weight stays f32.
pub(crate) struct LinearOp {
    pub input_activation: Option<Activation>,
    pub products: DenseProducts,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "gclip-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = contiguous_f32(ws, wl, "linear weight")?;
        let b = contiguous_f32(bs, bl, "linear bias")?;
        let (in_dim, out_dim) = wl.shape().dims2()?;
        let LinearInput { x, rows, shape } = LinearInput::new(
            contiguous_f32(xs, xl, "linear input")?,
            xl.shape(),
            (in_dim, out_dim),
            (b, bl.shape()),
            self.input_activation,
        )?;
        if let DenseProducts::Bf16(kernel) = self.products {
            // The activation is already applied to `x` (as the f32 path needs it).
            let dst = mixed::linear_forward(&x, rows, (w, in_dim, out_dim), b, None, kernel)?;
            return Ok((CpuStorage::F32(dst), shape));
        }
        let mut dst = bias_rows(b, rows);
        if rows > 0 {
            // SAFETY: dst is rows×out_dim row-major, x rows×in_dim row-major and w in_dim×out_dim
            // row-major; all pointers are valid for those extents and dst aliases neither input.
            unsafe {
                gemm::gemm(
                    rows,
                    out_dim,
                    in_dim,
                    dst.as_mut_ptr(),
                    1,
                    out_dim as isize,
                    true,
                    x.as_ptr(),
                    1,
                    in_dim as isize,
                    w.as_ptr(),
                    1,
                    out_dim as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    matmul_parallelism(),
                );
            }
        }
        Ok((CpuStorage::F32(dst), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, params) = self.grads(x, w, grad, true)?;
        let (grad_w, grad_b) = params.unzip();
        Ok((Some(grad_x), grad_w, grad_b))
    }
}

impl LinearOp {
    /// The gradients of `y = act(x)·W + b` given `∂loss/∂y`: that of `x` and, with
    /// `param_grads`, those of `W` and `b` (a frozen layer skips its largest product).
    pub(crate) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        param_grads: bool,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        // Inputs are detached (here and in the other backward passes): a gradient computed from
        // tracked tensors would carry their graph, and the gradients that candle keeps for the
        // parameters would then hold every intermediate of the backward pass alive.
        let (x, w) = (x.detach(), w.detach());
        let (in_dim, out_dim) = w.dims2()?;
        let g2 = grad.reshape(((), out_dim))?;
        let x2 = x.reshape(((), in_dim))?;
        let grad_in = match self.products {
            DenseProducts::F32 => g2.matmul(&w.t()?)?,
            DenseProducts::Bf16(kernel) => g2
                .contiguous()?
                .apply_op2_no_bwd(&w.contiguous()?, &mixed::InputGradOp { kernel })?,
        };
        let (input, grad_x) = match self.input_activation {
            None => (x2, grad_in),
            Some(act) => {
                let x2 = x2.contiguous()?;
                let grad_x = x2.apply_op2_no_bwd(&grad_in, &ActivationGradOp { act })?;
                (activate(&x2, act)?, grad_x)
            }
        };
        let grad_x = grad_x.reshape(x.shape())?;
        if !param_grads {
            return Ok((grad_x, None));
        }
        let grad_w = match self.products {
            DenseProducts::F32 => input.t()?.matmul(&g2)?,
            DenseProducts::Bf16(kernel) => input
                .contiguous()?
                .apply_op2_no_bwd(&g2.contiguous()?, &mixed::WeightGradOp { kernel })?,
        };
        let grad_b = g2.contiguous()?.apply_op1_no_bwd(&ColumnSumOp)?;
        Ok((grad_x, Some((grad_w, grad_b))))
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm over the last dimension.

pub(crate) struct LayerNormOp {
    pub eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "gclip-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "layer norm input")?;
        let w = contiguous_f32(ws, wl, "layer norm weight")?;
        let b = contiguous_f32(bs, bl, "layer norm bias")?;
        let width = xl.shape().dims().last().copied().unwrap_or(0);
        if width == 0 || w.len() != width || b.len() != width {
            candle_core::bail!(
                "layer norm: input {:?}, weight {:?}, bias {:?} do not fit",
                xl.shape(),
                wl.shape(),
                bl.shape()
            );
        }
        let mut dst = vec![0f32; x.len()];
        let eps = self.eps;
        dst.par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .with_min_len(16)
            .for_each(|(d, s)| layer_norm_row(s, d, w, b, eps));
        Ok((CpuStorage::F32(dst), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w, grad_b) = self.grads(x, w, grad)?;
        Ok((Some(grad_x), Some(grad_w), Some(grad_b)))
    }
}

impl LayerNormOp {
    /// The gradients of the input, the weight and the bias, given `∂loss/∂output`.
    pub(crate) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (x, w) = (x.detach(), w.detach());
        let width = w.dim(0)?;
        if fusable(&x) && fusable(&w) && fusable(grad) {
            let rows = x.elem_count() / width;
            let packed = x.contiguous()?.apply_op3_no_bwd(
                &w.contiguous()?,
                &grad.contiguous()?,
                &LayerNormGradOp { eps: self.eps },
            )?;
            // The two small gradients are copied out so that they do not keep the large
            // buffer alive in the gradient store. `force_contiguous` allocates the view's own
            // size; `copy` would clone the whole buffer (a row-sized view of a copy of all
            // `rows + 2` rows: 0.9 GiB of ViT-B/32's training peak at batch 64).
            return Ok((
                packed.narrow(0, 0, rows)?.reshape(x.shape())?,
                packed
                    .narrow(0, rows, 1)?
                    .reshape(width)?
                    .force_contiguous()?,
                packed
                    .narrow(0, rows + 1, 1)?
                    .reshape(width)?
                    .force_contiguous()?,
            ));
        }
        let x2 = x.reshape(((), width))?;
        let g2 = grad.reshape(((), width))?;
        let mean = x2.mean_keepdim(1)?;
        let centered = x2.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(1)?;
        let rstd = (var + self.eps as f64)?.sqrt()?.recip()?;
        let x_hat = centered.broadcast_mul(&rstd)?;
        let grad_w = (&g2 * &x_hat)?.sum(0)?;
        let grad_b = g2.sum(0)?;
        let g_hat = g2.broadcast_mul(&w)?;
        let mean_g = g_hat.mean_keepdim(1)?;
        let mean_gx = (&g_hat * &x_hat)?.mean_keepdim(1)?;
        let grad_x = g_hat
            .broadcast_sub(&mean_g)?
            .sub(&x_hat.broadcast_mul(&mean_gx)?)?
            .broadcast_mul(&rstd)?
            .reshape(x.shape())?;
        Ok((grad_x, grad_w, grad_b))
    }
}

// ---------------------------------------------------------------------------------------------
// Activation, recomputed by the backward pass of a linear layer that takes it as input.

/// `act(z)`, with no backward pass of its own: only [`LinearOp::bwd`] applies it, without a graph.
struct ActivationOp {
    act: Activation,
}

impl CustomOp1 for ActivationOp {
    fn name(&self) -> &'static str {
        "gclip-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = contiguous_f32(storage, layout, "activation input")?;
        let width = layout.shape().dims().last().copied().unwrap_or(0).max(1);
        Ok((
            CpuStorage::F32(activate_rows(z, width, self.act)),
            layout.shape().clone(),
        ))
    }
}

/// `grad ∘ act′(z)` given `(z, grad)`, without a graph.
struct ActivationGradOp {
    act: Activation,
}

impl CustomOp2 for ActivationGradOp {
    fn name(&self) -> &'static str {
        "gclip-activation-backward"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = contiguous_f32(zs, zl, "activation backward input")?;
        let g = contiguous_f32(gs, gl, "activation backward gradient")?;
        if zl.shape() != gl.shape() {
            candle_core::bail!(
                "activation backward: input {:?} and gradient {:?} differ",
                zl.shape(),
                gl.shape()
            );
        }
        let width = zl.shape().dims().last().copied().unwrap_or(0).max(1);
        let mut dz = vec![0f32; z.len()];
        let act = self.act;
        dz.par_chunks_mut(width)
            .zip(z.par_chunks(width).zip(g.par_chunks(width)))
            .with_min_len(8)
            .for_each(|(d, (zr, gr))| act_grad_row(zr, gr, act, d));
        Ok((CpuStorage::F32(dz), zl.shape().clone()))
    }
}

/// `act(z)`: one fused pass on CPU f32, candle ops elsewhere (differentiable there).
pub(crate) fn activate(z: &Tensor, act: Activation) -> Result<Tensor> {
    if fusable(z) && !z.track_op() {
        return z.contiguous()?.apply_op1_no_bwd(&ActivationOp { act });
    }
    match act {
        Activation::Gelu => z.gelu_erf(),
        Activation::QuickGelu => z.broadcast_mul(&candle_nn::ops::sigmoid(&(z * 1.702)?)?),
    }
}

/// The gradient of [`LayerNormOp`] given `(x, weight, grad)`: `[rows + 2, width]` holding the
/// input gradient, then the weight and bias gradients.
struct LayerNormGradOp {
    eps: f32,
}

impl CustomOp3 for LayerNormGradOp {
    fn name(&self) -> &'static str {
        "gclip-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "layer norm backward input")?;
        let w = contiguous_f32(ws, wl, "layer norm backward weight")?;
        let g = contiguous_f32(gs, gl, "layer norm backward gradient")?;
        let width = w.len();
        if width == 0 || xl.shape() != gl.shape() || xl.shape().dims().last() != Some(&width) {
            candle_core::bail!(
                "layer norm backward: input {:?}, weight {:?}, gradient {:?} do not fit",
                xl.shape(),
                wl.shape(),
                gl.shape()
            );
        }
        let eps = self.eps;
        let out = rows_with_column_sums(x, g, width, 2, |xr, gr, dx, sums| {
            let (dw, db) = sums.split_at_mut(width);
            layer_norm_grad_row(xr, gr, w, eps, dx, dw, db);
        });
        let rows = x.len() / width;
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, width))))
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-head attention on a fused q/k/v projection.

/// Scaled dot-product attention over `qkv: [batch, tokens, 3·width]` (q, k, v side by side,
/// heads contiguous inside each) giving `[batch, tokens, width]`. Each (sequence, head) pair
/// is one task: two single-threaded gemm calls read q, k and v in place through strides, so
/// nothing is permuted or copied, and the causal mask is applied by never reading the future.
pub(crate) struct AttentionOp {
    pub heads: usize,
    pub causal: bool,
    /// `Bf16(Amx)` runs the forward's two products in bf16 on AMX tiles where the CPU has
    /// them ([`lowp::attention_amx_bf16`]); anything else, and the backward pass, in f32.
    pub products: DenseProducts,
}

impl AttentionOp {
    fn check(&self, shape: &Shape) -> Result<(usize, usize, usize, usize)> {
        let (batch, tokens, three_width) = shape.dims3()?;
        if three_width % 3 != 0 || (three_width / 3) % self.heads != 0 {
            candle_core::bail!(
                "attention: qkv width {three_width} is not 3 × heads ({}) × head width",
                self.heads
            );
        }
        let width = three_width / 3;
        Ok((batch, tokens, width, width / self.heads))
    }

    /// The same computation with candle ops: reference for tests and the backward pass.
    pub(crate) fn composed(&self, qkv: &Tensor) -> Result<Tensor> {
        let (batch, tokens, width, head_dim) = self.check(qkv.shape())?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * width, width)?
                .reshape((batch, tokens, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if self.causal {
            let mask = causal_mask(tokens, qkv.device())?.to_dtype(qkv.dtype())?;
            scores = scores.broadcast_add(&mask)?;
        }
        // candle-nn's `softmax_last_dim` has no backward pass (it would silently stop the
        // gradient of q and k); the composed softmax is differentiable.
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, tokens, width))
    }
}

/// `[tokens, tokens]` additive mask: 0 on and below the diagonal, −∞ above.
pub(crate) fn causal_mask(tokens: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..tokens)
        .flat_map(|i| (0..tokens).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (tokens, tokens), device)
}

/// `P = softmax(scale·Q·Kᵀ)` for one (sequence, head) into `probs` (`tokens × tokens`), rows
/// masked causally when asked: the shared first step of the attention forward and backward.
///
/// # Safety
/// `q` and `k` must each address `tokens` rows of `head_dim` floats with row stride `row`, and
/// `probs` must hold `tokens × tokens` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn attention_probs(
    probs: &mut [f32],
    q: *const f32,
    k: *const f32,
    tokens: usize,
    head_dim: usize,
    row: usize,
    scale: f32,
    causal: bool,
) {
    debug_assert!(probs.len() >= tokens * tokens);
    // SAFETY: the caller guarantees the extents of q and k; probs is checked above.
    unsafe {
        gemm::gemm(
            tokens,
            tokens,
            head_dim,
            probs.as_mut_ptr(),
            1,
            tokens as isize,
            false,
            q,
            1,
            row as isize,
            k,
            row as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    for (i, r) in probs.chunks_exact_mut(tokens).take(tokens).enumerate() {
        softmax_prefix(r, if causal { i + 1 } else { tokens });
    }
}

/// A raw pointer that may cross threads; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only for disjoint writes from rayon tasks, see `AttentionOp::cpu_fwd`.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "gclip-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, "attention input")?;
        let (batch, tokens, width, head_dim) = self.check(layout.shape())?;
        let heads = self.heads;
        if self.products == DenseProducts::Bf16(Bf16Kernel::Amx) {
            if let Some(out) =
                lowp::attention_amx_bf16(qkv, batch, tokens, width, heads, self.causal)
            {
                return Ok((CpuStorage::F32(out), Shape::from((batch, tokens, width))));
            }
        }
        let row = 3 * width;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut out = vec![0f32; batch * tokens * width];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let causal = self.causal;
        lowp::on_workers(
            batch * heads,
            lowp::effective_threads(0),
            || vec![0f32; tokens * tokens],
            |task, scores| {
                let (b, h) = (task / heads, task % heads);
                let seq = &qkv[b * tokens * row..(b + 1) * tokens * row];
                let q = seq[h * head_dim..].as_ptr();
                let k = seq[width + h * head_dim..].as_ptr();
                let v = seq[2 * width + h * head_dim..].as_ptr();
                // SAFETY: q and k address tokens×head_dim blocks with row stride `row` inside
                // `seq`. The result block written through `dst` below (rows of sequence b,
                // columns of head h) is touched by this task only.
                unsafe { attention_probs(scores, q, k, tokens, head_dim, row, scale, causal) };
                let dst = out_ptr;
                // SAFETY: see above; dst + offset addresses tokens×head_dim elements with row
                // stride `width`, inside `out`, disjoint from every other task's block.
                unsafe {
                    gemm::gemm(
                        tokens,
                        head_dim,
                        tokens,
                        dst.0.add(b * tokens * width + h * head_dim),
                        1,
                        width as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        tokens as isize,
                        v,
                        1,
                        row as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((batch, tokens, width))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        self.grads(qkv, grad).map(Some)
    }
}

impl AttentionOp {
    /// The gradient of `qkv` given `∂loss/∂output`.
    pub(crate) fn grads(&self, qkv: &Tensor, grad: &Tensor) -> Result<Tensor> {
        if fusable(qkv) && fusable(grad) {
            let op = AttentionBackwardOp {
                heads: self.heads,
                causal: self.causal,
            };
            return qkv.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op);
        }
        // Recompute the forward with differentiable ops and back-propagate through it.
        let var = candle_core::Var::from_tensor(&qkv.detach())?;
        let out = self.composed(var.as_tensor())?;
        let loss = (out * grad.detach())?.sum_all()?;
        let grads = loss.backward()?;
        match grads.get(var.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => var.as_tensor().zeros_like(),
        }
    }
}

/// The gradient of [`AttentionOp`] with respect to `qkv`, given the gradient of its output.
///
/// Per (sequence, head), with `P = softmax(s·QKᵀ)` recomputed exactly as the forward pass does
/// (nothing of size tokens² is kept between the passes):
/// `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP − rowsum(P ∘ dP))`, `dQ = s·dS·K`, `dK = s·dSᵀ·Q`.
/// Every product is one single-threaded gemm call reading its operands in place through strides;
/// tasks write disjoint column blocks of the result.
pub(crate) struct AttentionBackwardOp {
    pub heads: usize,
    pub causal: bool,
}

impl CustomOp2 for AttentionBackwardOp {
    fn name(&self) -> &'static str {
        "gclip-attention-backward"
    }

    fn cpu_fwd(
        &self,
        qkv_s: &CpuStorage,
        qkv_l: &Layout,
        g_s: &CpuStorage,
        g_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let fwd = AttentionOp {
            heads: self.heads,
            causal: self.causal,
            products: DenseProducts::F32,
        };
        let qkv = contiguous_f32(qkv_s, qkv_l, "attention backward input")?;
        let grad = contiguous_f32(g_s, g_l, "attention backward gradient")?;
        let (batch, tokens, width, head_dim) = fwd.check(qkv_l.shape())?;
        if g_l.shape().dims() != [batch, tokens, width] {
            candle_core::bail!(
                "attention backward: gradient {:?} does not fit input {:?}",
                g_l.shape(),
                qkv_l.shape()
            );
        }
        let heads = self.heads;
        let row = 3 * width;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let causal = self.causal;
        let mut out = vec![0f32; batch * tokens * row];
        let out_ptr = SharedMut(out.as_mut_ptr());
        lowp::on_workers(
            batch * heads,
            lowp::effective_threads(0),
            || (vec![0f32; tokens * tokens], vec![0f32; tokens * tokens]),
            |task, (probs, dp)| {
                let (b, h) = (task / heads, task % heads);
                let seq = &qkv[b * tokens * row..(b + 1) * tokens * row];
                let q = seq[h * head_dim..].as_ptr();
                let k = seq[width + h * head_dim..].as_ptr();
                let v = seq[2 * width + h * head_dim..].as_ptr();
                let d_out = grad[b * tokens * width + h * head_dim..].as_ptr();
                let dst = out_ptr;
                // SAFETY (all gemm calls below): q, k, v address tokens×head_dim blocks with row
                // stride `row` inside this sequence of `qkv`; d_out a tokens×head_dim block with
                // row stride `width` inside `grad`; probs and dp are tokens×tokens scratch
                // buffers of this task. The destination blocks (rows of sequence b, the q/k/v
                // columns of head h, row stride `row`) lie inside `out` and are written by this
                // task only.
                unsafe {
                    let dq = dst.0.add(b * tokens * row + h * head_dim);
                    let dv = dq.add(2 * width);
                    // P recomputed exactly as the forward pass computes it.
                    attention_probs(probs, q, k, tokens, head_dim, row, scale, causal);
                    // dV = Pᵀ·dO
                    gemm::gemm(
                        tokens,
                        head_dim,
                        tokens,
                        dv,
                        1,
                        row as isize,
                        false,
                        probs.as_ptr(),
                        tokens as isize,
                        1,
                        d_out,
                        1,
                        width as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    // dP = dO·Vᵀ
                    gemm::gemm(
                        tokens,
                        tokens,
                        head_dim,
                        dp.as_mut_ptr(),
                        1,
                        tokens as isize,
                        false,
                        d_out,
                        1,
                        width as isize,
                        v,
                        row as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                // dS = P ∘ (dP − rowsum(P ∘ dP)), in place of dP; masked entries have P = 0.
                for (i, (p_row, d_row)) in probs
                    .chunks_exact(tokens)
                    .zip(dp.chunks_exact_mut(tokens))
                    .enumerate()
                {
                    let valid = if causal { i + 1 } else { tokens };
                    let dot = dot_lanes(&p_row[..valid], &d_row[..valid]);
                    for (d, p) in d_row[..valid].iter_mut().zip(&p_row[..valid]) {
                        *d = p * (*d - dot);
                    }
                    d_row[valid..].fill(0.0);
                }
                // SAFETY: as above.
                unsafe {
                    let dq = dst.0.add(b * tokens * row + h * head_dim);
                    let dk = dq.add(width);
                    // dQ = s·dS·K
                    gemm::gemm(
                        tokens,
                        head_dim,
                        tokens,
                        dq,
                        1,
                        row as isize,
                        false,
                        dp.as_ptr(),
                        1,
                        tokens as isize,
                        k,
                        1,
                        row as isize,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    // dK = s·dSᵀ·Q
                    gemm::gemm(
                        tokens,
                        head_dim,
                        tokens,
                        dk,
                        1,
                        row as isize,
                        false,
                        dp.as_ptr(),
                        tokens as isize,
                        1,
                        q,
                        1,
                        row as isize,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(out), qkv_l.shape().clone()))
    }
}

#[inline(always)]
pub(crate) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Deterministic pseudo-random values in [-1, 1) of `shape`, for tests (no RNG dependency).
/// The largest `|a − b|` of two tensors of one shape, compared in f64.
#[cfg(test)]
pub(crate) fn test_max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[cfg(test)]
pub(crate) fn test_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many values the storage behind `t` holds (its own and any it is a view of).
    fn storage_len(t: &Tensor) -> usize {
        match &*t.storage_and_layout().0 {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => v.len(),
            other => panic!("an f32 CPU tensor expected, got {:?}", other.dtype()),
        }
    }

    #[test]
    fn layer_norm_parameter_gradients_hold_only_their_own_values() {
        // They live in the gradient store until the optimiser step: a view of the buffer the
        // kernel writes all three gradients into would keep the input gradient's rows alive.
        let (rows, width) = (37, 24);
        let x = test_tensor(&[rows, width], 1);
        let w = test_tensor(&[width], 2);
        let g = test_tensor(&[rows, width], 3);
        let (grad_x, grad_w, grad_b) = LayerNormOp { eps: 1e-5 }.grads(&x, &w, &g).unwrap();
        assert_eq!(grad_x.dims(), [rows, width]);
        assert_eq!(
            (grad_w.dims(), grad_b.dims()),
            ([width].as_slice(), [width].as_slice())
        );
        assert_eq!(storage_len(&grad_w), width);
        assert_eq!(storage_len(&grad_b), width);
        // The same values as the unfused formula (the fallback below the fused branch).
        let x_hat = {
            let mean = x.mean_keepdim(1).unwrap();
            let c = x.broadcast_sub(&mean).unwrap();
            let var = c.sqr().unwrap().mean_keepdim(1).unwrap();
            c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
        };
        let want_w = (&g * &x_hat).unwrap().sum(0).unwrap();
        assert!(test_max_abs_diff(&grad_w, &want_w) < 1e-4);
        assert!(test_max_abs_diff(&grad_b, &g.sum(0).unwrap()) < 1e-5);
    }

    #[test]
    fn tiled_transpose_equals_candles_on_edge_shapes() {
        for (rows, cols) in [(1, 1), (1, 70), (70, 1), (33, 65), (64, 32), (100, 257)] {
            let data: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 7.0).collect();
            let t = Tensor::from_vec(data, (rows, cols), &candle_core::Device::Cpu).unwrap();
            let ours = transpose_2d(&t).unwrap();
            assert_eq!(ours.dims(), [cols, rows]);
            let want = t.t().unwrap().contiguous().unwrap();
            assert_eq!(
                ours.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap(),
                "{rows}x{cols}"
            );
        }
    }

    #[test]
    fn row_blocks_read_like_their_concatenation() {
        // Blocks of 5, 16 and 12 rows (tiles of 16 straddle the block boundaries).
        let cols = 19;
        let data: Vec<f32> = (0..33 * cols).map(|i| i as f32 * 0.25 - 3.0).collect();
        let (a, rest) = data.split_at(5 * cols);
        let (b, c) = rest.split_at(16 * cols);
        let blocks = RowBlocks::new(vec![a, b, c], cols).unwrap();
        assert_eq!((blocks.rows(), blocks.cols()), (33, cols));
        for r in 0..33 {
            assert_eq!(blocks.row(r), &data[r * cols..(r + 1) * cols], "row {r}");
        }
        assert_eq!(transpose_blocks(&blocks), transpose_f32(&data, 33, cols));
        assert!(RowBlocks::new(vec![&data[..cols + 1]], cols).is_err());
    }

    #[test]
    fn max_lanes_is_the_max_and_ignores_nan() {
        for len in 0..40usize {
            let mut xs: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32) - 11.5).collect();
            if len > 3 {
                xs[len / 2] = f32::NAN;
            }
            let want = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_lanes(&xs), want, "length {len}");
        }
        assert_eq!(max_lanes(&[f32::NAN, -3.0]), -3.0);
        assert_eq!(max_lanes(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn exp_matches_std_over_softmax_range() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp_f32(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.013;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn erf_matches_reference_values() {
        // erf values from the definition, computed in f64 by series for |x| ≤ 3.
        fn erf64(x: f64) -> f64 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 || n < 5.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut x = -3.0f64;
        while x <= 3.0 {
            let d = (erf_f32(x as f32) as f64 - erf64(x)).abs();
            assert!(d < 3e-7, "erf({x}) off by {d}");
            x += 0.01;
        }
    }
}
