//! The building blocks shared by both towers: LayerNorm, linear layers, multi-head attention and
//! the pre-norm residual block. Each uses the fused CPU kernels of [`super::kernels`] when the
//! tensors allow it, and composed candle ops otherwise (other devices and dtypes), so the towers
//! never branch on device or precision themselves.

use candle_core::{Result, Tensor, D};

use super::kernels::{activate, fusable, Activation, AttentionOp, LayerNormOp, LinearOp};
use super::weights::Weights;
use super::ModelError;

/// LayerNorm over the last dimension, differentiable.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        width: usize,
        eps: f64,
    ) -> std::result::Result<Self, ModelError> {
        Ok(Self {
            weight: w.get(&format!("{name}.weight"), &[width])?,
            bias: w.get(&format!("{name}.bias"), &[width])?,
            eps,
        })
    }

    /// `[.., width]` → `[.., width]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fusable(x) {
            return x.contiguous()?.apply_op3(
                &self.weight,
                &self.bias,
                LayerNormOp {
                    eps: self.eps as f32,
                },
            );
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// `y = x·W + b`. The weight is held `[in, out]`, transposed from PyTorch's `[out, in]`,
/// because that is the layout the matmul kernel reads without repacking (see `LinearOp`).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[in, out]`
    pub weight_t: Tensor,
    /// `[out]`
    pub bias: Tensor,
}

impl Linear {
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> std::result::Result<Self, ModelError> {
        Ok(Self {
            weight_t: w
                .get(&format!("{name}.weight"), &[out_dim, in_dim])?
                .t()?
                .contiguous()?,
            bias: w.get(&format!("{name}.bias"), &[out_dim])?,
        })
    }

    /// `[.., in]` → `[.., out]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fusable(x) {
            return x.contiguous()?.apply_op3(
                &self.weight_t,
                &self.bias,
                LinearOp {
                    input_activation: None,
                },
            );
        }
        self.forward_no_bias(x)?.broadcast_add(&self.bias)
    }

    fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        let (in_dim, out_dim) = self.weight_t.dims2()?;
        let mut shape = x.dims().to_vec();
        let flat = x.reshape(((), in_dim))?;
        let y = flat.matmul(&self.weight_t)?;
        if let Some(last) = shape.last_mut() {
            *last = out_dim;
        }
        y.reshape(shape)
    }

    /// `act(x)·W + b`: an MLP's second layer applies the activation of the first layer's output,
    /// so that training keeps only the pre-activation for the backward pass.
    pub fn forward_after(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if fusable(x) {
            return x.contiguous()?.apply_op3(
                &self.weight_t,
                &self.bias,
                LinearOp {
                    input_activation: Some(act),
                },
            );
        }
        self.forward(&activate(x, act)?)
    }
}

/// Multi-head self-attention with a fused q/k/v projection.
#[derive(Debug, Clone)]
pub struct Attention {
    pub qkv: Linear,
    pub out: Linear,
    pub heads: usize,
}

impl Attention {
    /// `[batch, tokens, width]` → `[batch, tokens, width]`
    pub fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let op = AttentionOp {
            heads: self.heads,
            causal,
        };
        let mixed = if fusable(&qkv) {
            qkv.contiguous()?.apply_op1(op)?
        } else {
            op.composed(&qkv)?
        };
        self.out.forward(&mixed)
    }
}

/// Pre-norm residual block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub activation: Activation,
}

/// The shape of a transformer stack, for loading.
pub(crate) struct StackShape {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
}

impl ResidualBlock {
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        s: &StackShape,
    ) -> std::result::Result<Self, ModelError> {
        Ok(Self {
            ln_1: LayerNorm::load(w, &format!("{prefix}.ln_1"), s.width, s.layer_norm_eps)?,
            attn: Attention {
                qkv: Linear::load(w, &format!("{prefix}.attn.qkv"), 3 * s.width, s.width)?,
                out: Linear::load(w, &format!("{prefix}.attn.out"), s.width, s.width)?,
                heads: s.heads,
            },
            ln_2: LayerNorm::load(w, &format!("{prefix}.ln_2"), s.width, s.layer_norm_eps)?,
            fc1: Linear::load(w, &format!("{prefix}.mlp.fc1"), s.mlp_dim, s.width)?,
            fc2: Linear::load(w, &format!("{prefix}.mlp.fc2"), s.width, s.mlp_dim)?,
            activation: s.activation,
        })
    }

    /// `[batch, tokens, width]` → `[batch, tokens, width]`
    pub fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, causal)?)?;
        let pre_activation = self.fc1.forward(&self.ln_2.forward(&x)?)?;
        x + self.fc2.forward_after(&pre_activation, self.activation)?
    }
}

/// A stack of residual blocks.
#[derive(Debug, Clone)]
pub struct Transformer {
    pub blocks: Vec<ResidualBlock>,
}

impl Transformer {
    pub(crate) fn load(
        w: &Weights,
        tower: &str,
        s: &StackShape,
    ) -> std::result::Result<Self, ModelError> {
        let blocks = (0..s.layers)
            .map(|i| ResidualBlock::load(w, &format!("{tower}.layers.{i}"), s))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self { blocks })
    }

    /// `[batch, tokens, width]` → `[batch, tokens, width]`
    pub fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        self.blocks
            .iter()
            .try_fold(x.clone(), |x, b| b.forward(&x, causal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        // Deterministic pseudo-random values in [-1, 1) without a RNG dependency.
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
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Runs `f` on the fused path (f32) and on the composed path (f64, which never fuses) and
    /// compares outputs and the gradients of a weighted sum with respect to every input.
    fn check_fused_against_composed(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor, tol: f32) {
        let weights = {
            let out = f(inputs);
            rand(out.dims(), 99)
        };
        let run = |dtype: DType| {
            let vars: Vec<Var> = inputs
                .iter()
                .map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let out = f(&ts);
            let loss = (&out * weights.to_dtype(dtype).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let gs: Vec<Tensor> = ts
                .iter()
                .map(|t| {
                    grads
                        .get(t)
                        .expect("gradient reaches every input")
                        .to_dtype(DType::F32)
                        .unwrap()
                })
                .collect();
            (out.to_dtype(DType::F32).unwrap(), gs)
        };
        let (fused_out, fused_grads) = run(DType::F32);
        let (ref_out, ref_grads) = run(DType::F64);
        assert!(
            max_diff(&fused_out, &ref_out) < tol,
            "forward differs by {}",
            max_diff(&fused_out, &ref_out)
        );
        for (i, (a, b)) in fused_grads.iter().zip(&ref_grads).enumerate() {
            assert!(
                max_diff(a, b) < tol,
                "gradient of input {i} differs by {}",
                max_diff(a, b)
            );
        }
    }

    #[test]
    fn layer_norm_fused_matches_composed_with_gradients() {
        let inputs = [
            rand(&[3, 5, 40], 1),
            (rand(&[40], 2) + 1.0).unwrap(),
            rand(&[40], 3),
        ];
        check_fused_against_composed(
            &inputs,
            |t| {
                LayerNorm {
                    weight: t[1].clone(),
                    bias: t[2].clone(),
                    eps: 1e-5,
                }
                .forward(&t[0])
                .unwrap()
            },
            2e-4,
        );
    }

    #[test]
    fn linear_and_activations_match_composed_with_gradients() {
        let inputs = [rand(&[2, 7, 24], 4), rand(&[24, 33], 5), rand(&[33], 6)];
        check_fused_against_composed(
            &inputs,
            |t| {
                Linear {
                    weight_t: t[1].clone(),
                    bias: t[2].clone(),
                }
                .forward(&t[0])
                .unwrap()
            },
            2e-4,
        );
        for act in [Activation::Gelu, Activation::QuickGelu] {
            check_fused_against_composed(
                &inputs,
                |t| {
                    Linear {
                        weight_t: t[1].clone(),
                        bias: t[2].clone(),
                    }
                    .forward_after(&t[0], act)
                    .unwrap()
                },
                2e-4,
            );
        }
    }

    #[test]
    fn attention_fused_matches_composed_with_gradients() {
        for causal in [false, true] {
            let inputs = [rand(&[3, 9, 3 * 16], 7)];
            check_fused_against_composed(
                &inputs,
                |t| {
                    let op = AttentionOp { heads: 4, causal };
                    if fusable(&t[0]) {
                        t[0].apply_op1(op).unwrap()
                    } else {
                        op.composed(&t[0]).unwrap()
                    }
                },
                2e-4,
            );
        }
    }
}
