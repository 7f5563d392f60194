//! LayerNorm over the last dimension: the fused forward op and its gradient.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::math::{sum_lanes, sum_sq_dev_lanes, LANES};
use super::rows::rows_with_column_sums;
use super::{contiguous_f32, fusable};

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

#[cfg(test)]
mod tests {
    use super::super::{test_max_abs_diff, test_tensor};
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
}
