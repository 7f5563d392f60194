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
//!
//! One file per op: `linear.rs`, `layer_norm.rs`, `activation.rs`, `attention.rs` (with the
//! softmax); what they are built from: `math.rs` (`exp`, `erf` and reductions written to
//! vectorise), `rows.rs` (row passes that also sum columns), `transpose.rs`; `dispatch.rs`
//! compiles each kernel per instruction set and picks one at run time (`simd_dispatch!`).

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

// First, so that the other modules see its `simd_dispatch!`.
#[macro_use]
mod dispatch;

mod activation;
mod attention;
mod layer_norm;
mod linear;
mod math;
mod rows;
mod transpose;

pub use activation::Activation;
pub(crate) use activation::{act_row, activate};
pub(crate) use attention::AttentionOp;
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub use dispatch::{has_avx2_fma, has_avx512};
pub(crate) use layer_norm::LayerNormOp;
pub(crate) use linear::{bias_rows, LinearInput, LinearOp};
pub(crate) use math::{count_non_finite_f32, dot_lanes, sum_of_squares_f64};
pub use transpose::transpose_2d;
#[cfg(test)]
pub(crate) use transpose::transpose_f32;
pub(crate) use transpose::{transpose_blocks, RowBlocks};

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

/// Whether a tensor can go through the fused CPU kernels.
pub(crate) fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

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

/// Deterministic pseudo-random values in [-1, 1) of `shape`, for tests (no RNG dependency).
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
