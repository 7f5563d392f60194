//! GELU and QuickGELU, forward and gradient, row by row; the activation op that the backward
//! pass of a linear layer taking it as input recomputes.

use candle_core::{CpuStorage, CustomOp1, InplaceOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::math::{erf_f32, exp_f32};
use super::{contiguous_f32, fusable};

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

/// One row of the activation gradient in place of the output gradient: `g ← g ∘ act′(z)`.
#[inline(always)]
fn act_grad_row_generic(z: &[f32], g: &mut [f32], act: Activation) {
    let width = z.len();
    let g = &mut g[..width];
    match act {
        Activation::Gelu => {
            // d/dz [z·Φ(z)] = Φ(z) + z·φ(z)
            const INV_SQRT_2PI: f32 = 0.398_942_3;
            for j in 0..width {
                let cdf = 0.5 * (1.0 + erf_f32(z[j] * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = INV_SQRT_2PI * exp_f32(-0.5 * z[j] * z[j]);
                g[j] *= cdf + z[j] * pdf;
            }
        }
        Activation::QuickGelu => {
            // d/dz [z·σ(az)] = σ(az) + a·z·σ(az)·(1 − σ(az))
            for j in 0..width {
                let s = 1.0 / (1.0 + exp_f32(-1.702 * z[j]));
                g[j] *= s + 1.702 * z[j] * s * (1.0 - s);
            }
        }
    }
}
simd_dispatch!(fn act_grad_row(z: &[f32], g: &mut [f32], act: Activation) = act_grad_row_generic);

/// `act(z)` over contiguous rows, in parallel.
pub(super) fn activate_rows(z: &[f32], width: usize, act: Activation) -> Vec<f32> {
    let mut dst = vec![0f32; z.len()];
    dst.par_chunks_mut(width)
        .zip(z.par_chunks(width))
        .with_min_len(8)
        .for_each(|(d, s)| act_row(s, d, act));
    dst
}

/// `act(z)`, with no backward pass of its own: only [`super::LinearOp::bwd`] applies it, without a graph.
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

/// `grad ← grad ∘ act′(z)`, in place of the gradient (the output gradient of a layer whose
/// input is activated, which nothing else reads), given `z`; without a graph.
pub(super) struct ActivationGradInPlace {
    pub(super) act: Activation,
}

impl InplaceOp2 for ActivationGradInPlace {
    fn name(&self) -> &'static str {
        "gclip-activation-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &mut CpuStorage,
        gl: &Layout,
        zs: &CpuStorage,
        zl: &Layout,
    ) -> Result<()> {
        let z = contiguous_f32(zs, zl, "activation backward input")?;
        if zl.shape() != gl.shape() {
            candle_core::bail!(
                "activation backward: input {:?} and gradient {:?} differ",
                zl.shape(),
                gl.shape()
            );
        }
        let (CpuStorage::F32(g), Some((start, end))) = (gs, gl.contiguous_offsets()) else {
            candle_core::bail!("activation backward: the gradient must be contiguous f32");
        };
        let width = zl.shape().dims().last().copied().unwrap_or(0).max(1);
        let act = self.act;
        g[start..end]
            .par_chunks_mut(width)
            .zip(z.par_chunks(width))
            .with_min_len(8)
            .for_each(|(g, z)| act_grad_row(z, g, act));
        Ok(())
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
