//! Mixed-precision training's matrix products. A dense layer keeps its f32 weight (the master
//! copy that the optimizer updates) and multiplies in bf16 with f32 accumulation, forward and
//! backward, on the bf16 kernels of [`super::lowp`] (AMX, `avx512_bf16`, or the fallbacks).
//!
//! Each product packs its right-hand side when it runs: the weights change at every step, and
//! packing reads `in × out` values against the product's `rows × in × out` multiply-adds. The
//! three products of a linear layer `y = x·W + b` (`W: [in, out]`) are
//! - forward `x·W`, with `W` packed from its `[in, out]` rows;
//! - input gradient `g·Wᵀ`, with `W` read as PyTorch's `[out, in]` layout of a layer from `out`
//!   to `in`, which is what it is;
//! - weight gradient `xᵀ·g`, a product over the batch's rows: `g` is packed as the right-hand
//!   side (`[rows, out]`, its rows the K pairs) and `x` is read transposed as the left one,
//!   straight into bf16.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::kernels::{contiguous_f32, Activation};
use super::lowp::{self, Bf16Kernel, PackedBf16};

fn kernel_error(what: &str) -> impl FnOnce(String) -> candle_core::Error + '_ {
    move |e| candle_core::Error::Msg(format!("bf16 {what}: {e}"))
}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// `act(x)·W + b` for `x: [rows, in]`, `W: [in, out]` f32 (rounded to bf16 here), `b: [out]`.
pub(crate) fn linear_forward(
    x: &[f32],
    rows: usize,
    (w, in_dim, out_dim): (&[f32], usize, usize),
    bias: &[f32],
    act: Option<Activation>,
    kernel: Bf16Kernel,
) -> Result<Vec<f32>> {
    let packed = PackedBf16::pack_in_out(w, in_dim, out_dim).map_err(kernel_error("linear"))?;
    let fused = lowp::Fused {
        act,
        residual: None,
    };
    lowp::linear_bf16_fused(x, rows, &packed, bias, fused, kernel, threads())
        .map_err(kernel_error("linear"))
}

/// `a·B` for `a: [rows, K]` and a packed `B`, without bias.
fn product(
    a: &[f32],
    rows: usize,
    b: &PackedBf16,
    kernel: Bf16Kernel,
    what: &str,
) -> Result<Vec<f32>> {
    lowp::linear_bf16_fused(a, rows, b, &[], lowp::Fused::default(), kernel, threads())
        .map_err(kernel_error(what))
}

/// `g·Wᵀ` (a [`CustomOp2`] of `g: [rows, out]` and `W: [in, out]`), `[rows, in]`: the gradient
/// of a linear layer's input.
pub(crate) struct InputGradOp {
    pub kernel: Bf16Kernel,
}

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "gclip-bf16-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, out_dim) = gl.shape().dims2()?;
        let (in_dim, w_out) = wl.shape().dims2()?;
        if w_out != out_dim {
            candle_core::bail!("bf16 input gradient: gradient [{rows}, {out_dim}] against weight [{in_dim}, {w_out}]");
        }
        let g = contiguous_f32(gs, gl, "output gradient")?;
        let w = contiguous_f32(ws, wl, "linear weight")?;
        // `W` row-major `[in, out]` is PyTorch's layout of a layer with `out` inputs.
        let packed =
            PackedBf16::pack_out_in(w, out_dim, in_dim).map_err(kernel_error("input gradient"))?;
        let dst = product(g, rows, &packed, self.kernel, "input gradient")?;
        Ok((CpuStorage::F32(dst), Shape::from((rows, in_dim))))
    }
}

/// Rows of `x` and `g` per product of the weight gradient (see [`WeightGradOp`]).
const WEIGHT_GRAD_ROWS: usize = 1024;

/// `act(x)ᵀ·g` (a [`CustomOp2`] of `x: [rows, in]` and `g: [rows, out]`), `[in, out]`: the
/// gradient of a linear layer's weight, summed over the rows in f32; `x` is passed through
/// `input_activation` first when the layer applies one to its input.
pub(crate) struct WeightGradOp {
    pub kernel: Bf16Kernel,
    pub input_activation: Option<Activation>,
}

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "gclip-bf16-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = xl.shape().dims2()?;
        let (g_rows, out_dim) = gl.shape().dims2()?;
        if g_rows != rows {
            candle_core::bail!("bf16 weight gradient: input [{rows}, {in_dim}] against gradient [{g_rows}, {out_dim}]");
        }
        let shape = Shape::from((in_dim, out_dim));
        if rows == 0 {
            return Ok((CpuStorage::F32(vec![0.0; in_dim * out_dim]), shape));
        }
        let x = contiguous_f32(xs, xl, "linear input")?;
        let g = contiguous_f32(gs, gl, "output gradient")?;
        // The rows are the product's K: a batch's thousands of tokens would make each tile's
        // operand strips too long to stay in the core's cache across the tiles that reuse them,
        // so the sum runs over slices of rows, each a product of the kernels' usual depth.
        // Each slice's product adds the sum so far as its residual, in the kernel's last pass
        // over its output, instead of a separate pass that added the slices up.
        let mut dst: Option<Vec<f32>> = None;
        for start in (0..rows).step_by(WEIGHT_GRAD_ROWS) {
            let len = WEIGHT_GRAD_ROWS.min(rows - start);
            let g_slice = &g[start * out_dim..(start + len) * out_dim];
            let packed = PackedBf16::pack_in_out(g_slice, len, out_dim)
                .map_err(kernel_error("weight gradient"))?;
            let x_slice = &x[start * in_dim..(start + len) * in_dim];
            let fused = lowp::Fused {
                act: self.input_activation,
                residual: dst.as_deref(),
            };
            let sum = lowp::transposed_product_bf16(
                x_slice,
                in_dim,
                &packed,
                fused,
                self.kernel,
                threads(),
            )
            .map_err(kernel_error("weight gradient"))?;
            dst = Some(sum);
        }
        let dst = dst.unwrap_or_default();
        Ok((CpuStorage::F32(dst), shape))
    }
}

/// `x·Wᵀ` for `x: [.., in]` and `W: [out, in]` (PyTorch's layout, which the patch embedding
/// keeps as its convolution's weight), `[.., out]`, with bf16 products and f32 accumulation in
/// the forward pass and both gradients: `gᵀ·x` for `W` ([`WeightGradOp`] with the roles
/// swapped), `g·W` for `x` when `x` is part of a graph.
pub(crate) struct OutInLinearOp {
    pub kernel: Bf16Kernel,
}

impl OutInLinearOp {
    /// `(rows, in, out)` of the product, checking that the shapes fit.
    fn dims(x: &Shape, w: &Shape) -> Result<(usize, usize, usize)> {
        let (out_dim, in_dim) = w.dims2()?;
        let x_in = x.dims().last().copied().unwrap_or(0);
        if x.rank() < 2 || x_in != in_dim {
            candle_core::bail!("bf16 linear: input {x:?} against weight [{out_dim}, {in_dim}]");
        }
        Ok((x.elem_count() / in_dim.max(1), in_dim, out_dim))
    }
}

impl CustomOp2 for OutInLinearOp {
    fn name(&self) -> &'static str {
        "gclip-bf16-linear-out-in"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim, out_dim) = Self::dims(xl.shape(), wl.shape())?;
        let x = contiguous_f32(xs, xl, "linear input")?;
        let w = contiguous_f32(ws, wl, "linear weight")?;
        let packed = PackedBf16::pack_out_in(w, in_dim, out_dim).map_err(kernel_error("linear"))?;
        let dst = product(x, rows, &packed, self.kernel, "linear")?;
        let mut dims = xl.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out_dim;
        }
        Ok((CpuStorage::F32(dst), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, in_dim, out_dim) = Self::dims(x.shape(), w.shape())?;
        let g = grad.reshape((rows, out_dim))?;
        let x_rows = x.reshape((rows, in_dim))?;
        let grad_w = g.apply_op2_no_bwd(
            &x_rows,
            &WeightGradOp {
                kernel: self.kernel,
                input_activation: None,
            },
        )?;
        let grad_x = if x.track_op() {
            let op = InputGradOp {
                kernel: self.kernel,
            };
            // `g·W` is `g·Mᵀ` for `M = Wᵀ`, the `[in, out]` weight InputGradOp reads.
            Some(
                g.apply_op2_no_bwd(&w.t()?.contiguous()?, &op)?
                    .reshape(x.shape())?,
            )
        } else {
            None
        };
        Ok((grad_x, Some(grad_w)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor, Var};

    use crate::model::kernels::{activate, test_max_abs_diff as max_abs_diff, test_tensor};
    use crate::model::layers::Linear;
    use crate::model::lowp::{bf16_to_f32, f32_to_bf16, Bf16Kernel};
    use crate::model::precision::DenseProducts;
    use crate::model::Activation;

    /// `t` rounded to bf16, as f64 (exact), for a reference computed without rounding error.
    fn rounded(t: &Tensor) -> Tensor {
        let v: Vec<f64> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|x| bf16_to_f32(f32_to_bf16(x)) as f64)
            .collect();
        Tensor::from_vec(v, t.dims(), t.device()).unwrap()
    }

    /// Output, and gradients of `Σ out ∘ weights` with respect to x, W and b.
    fn run(
        products: DenseProducts,
        (x, w, b): (&Tensor, &Tensor, &Tensor),
        act: Option<Activation>,
        weights: &Tensor,
    ) -> (Tensor, [Tensor; 3]) {
        let vars = [x, w, b].map(|t| Var::from_tensor(t).unwrap());
        let mut layer = Linear::dense(vars[1].as_tensor().clone(), vars[2].as_tensor().clone());
        layer.products = products;
        let out = match act {
            None => layer.forward(vars[0].as_tensor()),
            Some(act) => layer.forward_after(vars[0].as_tensor(), act),
        }
        .unwrap();
        let grads = (&out * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
        (out, [g(&vars[0]), g(&vars[1]), g(&vars[2])])
    }

    /// Each product equals an exact (f64) product of the bf16-rounded operands to f32
    /// accumulation error, for every bf16 kernel this CPU runs; row counts that are not
    /// multiples of the AMX tile height and odd ones (the weight gradient's K) included.
    #[test]
    fn bf16_products_equal_rounded_operands_forward_and_backward() {
        for kernel in Bf16Kernel::available() {
            // 2,100 rows: the weight gradient sums three slices of rows (`WEIGHT_GRAD_ROWS`).
            for (rows, in_dim, out_dim) in [
                (14, 24, 33),
                (15, 40, 7),
                (1, 3, 5),
                (37, 96, 64),
                (2100, 16, 40),
            ] {
                let x = test_tensor(&[rows, in_dim], 1);
                let w = test_tensor(&[in_dim, out_dim], 2);
                let b = test_tensor(&[out_dim], 3);
                let weights = test_tensor(&[rows, out_dim], 4);
                let (out, [gx, gw, gb]) =
                    run(DenseProducts::Bf16(kernel), (&x, &w, &b), None, &weights);
                let (xr, wr, gr) = (rounded(&x), rounded(&w), rounded(&weights));
                let want_out = xr
                    .matmul(&wr)
                    .unwrap()
                    .broadcast_add(&b.to_dtype(DType::F64).unwrap())
                    .unwrap();
                let want_gx = gr.matmul(&wr.t().unwrap()).unwrap();
                let want_gw = xr.t().unwrap().matmul(&gr).unwrap();
                let want_gb = weights.to_dtype(DType::F64).unwrap().sum(0).unwrap();
                let case = format!("{kernel:?} {rows}x{in_dim}x{out_dim}");
                for (what, got, want, tol) in [
                    ("output", &out, &want_out, 1e-5 * in_dim as f64),
                    ("input gradient", &gx, &want_gx, 1e-5 * out_dim as f64),
                    ("weight gradient", &gw, &want_gw, 1e-5 * rows as f64),
                    ("bias gradient", &gb, &want_gb, 1e-5 * rows as f64),
                ] {
                    let d = max_abs_diff(got, want);
                    assert!(d <= tol, "{case}: {what} differs by {d}");
                }
                // The products did round: the f32 layer gives other numbers.
                let (out_f32, [_, gw_f32, _]) =
                    run(DenseProducts::F32, (&x, &w, &b), None, &weights);
                if in_dim > 3 {
                    assert!(max_abs_diff(&out, &out_f32) > 1e-4, "{case}: not rounded");
                    assert!(max_abs_diff(&gw, &gw_f32) > 1e-4, "{case}: not rounded");
                }
            }
        }
    }

    /// With the MLP's activation applied inside the layer, the forward product rounds the
    /// activated input, and the gradients stay within bf16 error of the f32 layer's.
    #[test]
    fn bf16_products_after_an_activation() {
        let kernel = Bf16Kernel::best();
        let (rows, in_dim, out_dim) = (20, 64, 24);
        let x = (test_tensor(&[rows, in_dim], 5) * 3.0).unwrap();
        let w = test_tensor(&[in_dim, out_dim], 6);
        let b = test_tensor(&[out_dim], 7);
        let weights = test_tensor(&[rows, out_dim], 8);
        for act in [Activation::Gelu, Activation::QuickGelu] {
            let (out, grads) = run(
                DenseProducts::Bf16(kernel),
                (&x, &w, &b),
                Some(act),
                &weights,
            );
            let want_out = rounded(&activate(&x, act).unwrap())
                .matmul(&rounded(&w))
                .unwrap()
                .broadcast_add(&b.to_dtype(DType::F64).unwrap())
                .unwrap();
            let d = max_abs_diff(&out, &want_out);
            assert!(d <= 1e-3, "{act:?}: output differs by {d}");
            let (_, grads_f32) = run(DenseProducts::F32, (&x, &w, &b), Some(act), &weights);
            for (i, (g, g32)) in grads.iter().zip(&grads_f32).enumerate() {
                let scale = max_abs_diff(g32, &g32.zeros_like().unwrap());
                let d = max_abs_diff(g, g32);
                assert!(
                    d <= 0.02 * scale,
                    "{act:?}: gradient {i} differs by {d} of {scale}"
                );
                // The bias gradient sums the output gradient alone, in f32 either way.
                assert_eq!(d > 0.0, i < 2, "{act:?}: gradient {i} differs by {d}");
            }
        }
    }

    /// The patch embedding's `x·Wᵀ` with `W: [out, in]`: output and both gradients equal exact
    /// products of the bf16-rounded operands to f32 accumulation error, for every bf16 kernel
    /// this CPU runs, with leading dimensions folded into rows; no input gradient for an input
    /// outside the graph.
    #[test]
    fn out_in_products_equal_rounded_operands_forward_and_backward() {
        use super::OutInLinearOp;
        for kernel in Bf16Kernel::available() {
            for (lead, in_dim, out_dim) in [([2, 7], 48, 20), ([1, 1], 3, 5), ([3, 700], 32, 24)] {
                let rows = lead[0] * lead[1];
                let x = test_tensor(&[lead[0], lead[1], in_dim], 11);
                let w = test_tensor(&[out_dim, in_dim], 12);
                let weights = test_tensor(&[lead[0], lead[1], out_dim], 13);
                let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
                let out = xv
                    .as_tensor()
                    .apply_op2(wv.as_tensor(), OutInLinearOp { kernel })
                    .unwrap();
                assert_eq!(out.dims(), &[lead[0], lead[1], out_dim]);
                let grads = (&out * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let flat = |t: &Tensor, cols: usize| t.reshape((rows, cols)).unwrap();
                let (xr, wr, gr) = (
                    flat(&rounded(&x), in_dim),
                    rounded(&w),
                    flat(&rounded(&weights), out_dim),
                );
                let case = format!("{kernel:?} {rows}x{in_dim}x{out_dim}");
                let got_gx = grads.get(xv.as_tensor()).unwrap();
                let got_gw = grads.get(wv.as_tensor()).unwrap();
                for (what, got, want, tol) in [
                    (
                        "output",
                        flat(&out, out_dim),
                        xr.matmul(&wr.t().unwrap()).unwrap(),
                        in_dim,
                    ),
                    (
                        "input gradient",
                        flat(got_gx, in_dim),
                        gr.matmul(&wr).unwrap(),
                        out_dim,
                    ),
                    (
                        "weight gradient",
                        got_gw.clone(),
                        gr.t().unwrap().matmul(&xr).unwrap(),
                        rows,
                    ),
                ] {
                    let d = max_abs_diff(&got, &want);
                    assert!(d <= 1e-5 * tol as f64, "{case}: {what} differs by {d}");
                }
                // An input outside the graph gets no gradient; the weight's is the same.
                let out = x
                    .apply_op2(wv.as_tensor(), OutInLinearOp { kernel })
                    .unwrap();
                let grads = (&out * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert!(grads.get(&x).is_none(), "{case}");
                let d = max_abs_diff(grads.get(wv.as_tensor()).unwrap(), got_gw);
                assert_eq!(d, 0.0, "{case}: weight gradient without the input's");
            }
        }
        assert!(test_tensor(&[2, 3], 1)
            .apply_op2(
                &test_tensor(&[4, 5], 2),
                OutInLinearOp {
                    kernel: Bf16Kernel::best()
                }
            )
            .is_err());
    }
}
