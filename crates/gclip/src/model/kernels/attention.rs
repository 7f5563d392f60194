//! Multi-head attention on a fused q/k/v projection: the causal softmax, the forward op and
//! its gradient.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

use super::math::{dot_lanes, exp_f32, max_lanes, sum_lanes};
use super::{contiguous_f32, fusable};
use crate::model::lowp::{self, Bf16Kernel};
use crate::model::precision::DenseProducts;

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

/// Scaled dot-product attention over `qkv: [batch, tokens, 3·width]` (q, k, v side by side,
/// heads contiguous inside each) giving `[batch, tokens, width]`. Each (sequence, head) pair
/// is one task: two single-threaded gemm calls read q, k and v in place through strides, so
/// nothing is permuted or copied, and the causal mask is applied by never reading the future.
pub(crate) struct AttentionOp {
    pub heads: usize,
    pub causal: bool,
    /// `Bf16(Amx)` runs the products in bf16 on AMX tiles where the CPU has them, the
    /// forward's two ([`lowp::attention_bf16`]) and the backward's five; `Bf16(Avx512Bf16)`
    /// the forward's two with `vdpbf16ps` (inference only: [`Transformer::set_dense_products`]
    /// keeps training's attention in f32 without AMX); anything else in f32.
    ///
    /// [`Transformer::set_dense_products`]: crate::model::layers::Transformer::set_dense_products
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
        if let DenseProducts::Bf16(kernel) = self.products {
            if let Some(out) =
                lowp::attention_bf16(kernel, qkv, batch, tokens, width, heads, self.causal)
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
                products: self.products,
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
    /// As [`AttentionOp::products`]: `Bf16(Amx)` runs the five products in bf16 on AMX tiles
    /// ([`lowp::attention_backward_amx_bf16`]) where the CPU has them.
    pub products: DenseProducts,
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
        if self.products == DenseProducts::Bf16(Bf16Kernel::Amx) {
            if let Some(out) = lowp::attention_backward_amx_bf16(
                qkv,
                grad,
                batch,
                tokens,
                width,
                heads,
                self.causal,
            ) {
                return Ok((CpuStorage::F32(out), qkv_l.shape().clone()));
            }
        }
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
