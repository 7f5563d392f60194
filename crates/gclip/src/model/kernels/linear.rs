//! Linear: `y = x·W + b` in one gemm call (the bias pre-fills the destination), optionally
//! applying the MLP's activation to its input, and its gradients.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::activation::{activate, activate_rows, Activation, ActivationGradInPlace};
use super::rows::ColumnSumOp;
use super::{contiguous_f32, matmul_parallelism};
use crate::model::mixed;
use crate::model::precision::DenseProducts;

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
/// operands to bf16 and accumulate in f32 ([`crate::model::mixed`]); the weight stays f32.
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
        let act = self.input_activation;
        let grad_x = match act {
            None => grad_in,
            Some(act) => {
                // `grad_in` is this function's own new tensor: the gradient through the
                // activation overwrites it.
                let grad_in = grad_in.contiguous()?;
                grad_in.inplace_op2(&x2.contiguous()?, &ActivationGradInPlace { act })?;
                grad_in
            }
        };
        let grad_x = grad_x.reshape(x.shape())?;
        if !param_grads {
            return Ok((grad_x, None));
        }
        let grad_w = match self.products {
            DenseProducts::F32 => {
                let input = match act {
                    None => x2,
                    Some(act) => activate(&x2.contiguous()?, act)?,
                };
                input.t()?.matmul(&g2)?
            }
            // The bf16 product activates the input as it reads it.
            DenseProducts::Bf16(kernel) => x2.contiguous()?.apply_op2_no_bwd(
                &g2.contiguous()?,
                &mixed::WeightGradOp {
                    kernel,
                    input_activation: act,
                },
            )?,
        };
        let grad_b = g2.contiguous()?.apply_op1_no_bwd(&ColumnSumOp)?;
        Ok((grad_x, Some((grad_w, grad_b))))
    }
}
