//! The residual block's backward pass, written out instead of left to candle's autograd.
//!
//! candle's backward pass keeps every activation of a graph until the whole pass ends, and
//! accumulates each gradient into a zero tensor of its own (an extra allocation, fill and sum per
//! edge). Training walks the towers block by block instead (`train::blockwise`): a block's forward
//! pass keeps the few tensors its backward pass reads ([`BlockActivations`]), and the backward
//! pass below chains the fused kernels' gradients, dropping each activation as soon as it has
//! been read. The LayerNorm outputs are recomputed rather than kept (a row pass against the
//! width-sized tensor they would cost).
//!
//! Only blocks whose weights are dense f32 CPU tensors (what training builds) run here; others
//! ([`ResidualBlock::owns_backward`] false) keep candle's graph.

use candle_core::{Device, Result, Shape, Storage, Tensor};

use super::kernels::{contiguous_f32, fusable, AttentionOp, LayerNormOp, LinearOp};
use super::layers::{LayerNorm, Linear, LinearWeight, ResidualBlock};
use super::lowp::{bf16_bits_of, f32_of_bf16_bits};

/// What a block's backward pass reads: its input, the q/k/v projection, the heads' mixed values,
/// the residual stream after attention and the MLP's pre-activation (`10 × width` numbers per
/// token in all).
#[derive(Debug)]
pub struct BlockActivations {
    /// `[batch, tokens, width]`
    x: Tensor,
    /// `[batch, tokens, 3·width]`
    qkv: Kept,
    /// `[batch, tokens, width]`
    mixed: Kept,
    /// `[batch, tokens, width]`
    after_attention: Tensor,
    /// `[batch, tokens, mlp]`
    pre_activation: Kept,
}

/// The precision a block keeps the outputs of its products in (the q/k/v projection, the
/// attention's mixed values, the MLP's pre-activation: 8 of the 10 numbers per token and width
/// it keeps) between its forward and backward passes. The forward pass computes in f32 either
/// way; the residual stream (the block's input and the stream after attention, which the
/// LayerNorms' gradients read) stays f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum KeptPrecision {
    #[default]
    F32,
    /// Rounded to bf16 (to nearest, ties to even), as PyTorch's bf16 autocast keeps the outputs
    /// of its bf16 products: half the memory. The weight gradients of the attention's output
    /// projection and of the MLP's second layer read bf16 inputs anyway in bf16 training.
    Bf16,
}

impl KeptPrecision {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for KeptPrecision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!(
                "unknown precision for kept activations {s:?}: choose f32 or bf16"
            )),
        }
    }
}

impl TryFrom<String> for KeptPrecision {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<KeptPrecision> for String {
    fn from(p: KeptPrecision) -> Self {
        p.name().into()
    }
}

impl std::fmt::Display for KeptPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A product's output kept between the passes.
#[derive(Debug)]
enum Kept {
    F32(Tensor),
    /// The values rounded to bf16, as bits (converted by the kernels' own row loops on all
    /// threads: candle's dtype conversion runs on one).
    Bf16 {
        bits: Vec<u16>,
        shape: Shape,
    },
}

impl Kept {
    fn new(t: Tensor, precision: KeptPrecision) -> Result<Self> {
        if precision == KeptPrecision::F32 || !fusable(&t) {
            return Ok(Self::F32(t));
        }
        let t = t.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("kept activations in bf16 need a CPU tensor");
        };
        let bits = bf16_bits_of(contiguous_f32(cpu, layout, "kept activation")?);
        Ok(Self::Bf16 {
            bits,
            shape: t.shape().clone(),
        })
    }

    /// The f32 tensor the kernels read.
    fn into_f32(self) -> Result<Tensor> {
        match self {
            Self::F32(t) => Ok(t),
            Self::Bf16 { bits, shape } => {
                Tensor::from_vec(f32_of_bf16_bits(&bits), shape, &Device::Cpu)
            }
        }
    }
}

impl BlockActivations {
    fn kept_in(self, precision: KeptPrecision) -> Result<Self> {
        Ok(Self {
            qkv: Kept::new(self.qkv.into_f32()?, precision)?,
            mixed: Kept::new(self.mixed.into_f32()?, precision)?,
            pre_activation: Kept::new(self.pre_activation.into_f32()?, precision)?,
            ..self
        })
    }
}

/// A parameter tensor of a block and the gradient of the loss with respect to it.
pub type ParamGrad = (Tensor, Tensor);

fn dense_weight(l: &Linear) -> Option<&Tensor> {
    match &l.weight {
        LinearWeight::Dense(w) => Some(w),
        LinearWeight::Packed(_) | LinearWeight::Mapped(_) => None,
    }
}

fn layer_norm(ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    x.apply_op3_no_bwd(&ln.weight, &ln.bias, &LayerNormOp { eps: ln.eps as f32 })
}

/// `layer.forward` (with the activation of `after` applied to its input) without a graph.
fn linear(layer: &Linear, x: &Tensor, after: Option<super::kernels::Activation>) -> Result<Tensor> {
    let Some(w) = dense_weight(layer) else {
        candle_core::bail!("a block's own backward pass needs dense weights");
    };
    x.apply_op3_no_bwd(w, &layer.bias, &linear_op(layer, after))
}

fn linear_op(layer: &Linear, after: Option<super::kernels::Activation>) -> LinearOp {
    LinearOp {
        input_activation: after,
        products: layer.products,
    }
}

/// The gradient of a linear layer's input, pushing those of its weight and bias when they are
/// trainable (a frozen layer skips its weight-gradient product).
fn linear_grads(
    layer: &Linear,
    x: &Tensor,
    after: Option<super::kernels::Activation>,
    grad: &Tensor,
    grads: &mut Vec<ParamGrad>,
) -> Result<Tensor> {
    let Some(w) = dense_weight(layer) else {
        candle_core::bail!("a block's own backward pass needs dense weights");
    };
    let trains = w.is_variable() || layer.bias.is_variable();
    let (grad_x, params) = linear_op(layer, after).grads(x, w, grad, trains)?;
    if let Some((grad_w, grad_b)) = params {
        push_if_trained(grads, w, grad_w);
        push_if_trained(grads, &layer.bias, grad_b);
    }
    Ok(grad_x)
}

fn layer_norm_grads(
    ln: &LayerNorm,
    x: &Tensor,
    grad: &Tensor,
    grads: &mut Vec<ParamGrad>,
) -> Result<Tensor> {
    let op = LayerNormOp { eps: ln.eps as f32 };
    let (grad_x, grad_w, grad_b) = op.grads(x, &ln.weight, grad)?;
    push_if_trained(grads, &ln.weight, grad_w);
    push_if_trained(grads, &ln.bias, grad_b);
    Ok(grad_x)
}

fn push_if_trained(grads: &mut Vec<ParamGrad>, param: &Tensor, grad: Tensor) {
    if param.is_variable() {
        grads.push((param.clone(), grad));
    }
}

impl ResidualBlock {
    /// The block's parameter tensors: LayerNorm gains and biases, linear weights and biases.
    pub fn parameters(&self) -> Vec<&Tensor> {
        let mut all = vec![&self.ln_1.weight, &self.ln_1.bias];
        for l in [&self.attn.qkv, &self.attn.out, &self.fc1, &self.fc2] {
            all.extend(dense_weight(l));
            all.push(&l.bias);
        }
        all.extend([&self.ln_2.weight, &self.ln_2.bias]);
        all
    }

    /// Whether any parameter of the block trains (is held as a `Var`).
    pub fn trains(&self) -> bool {
        self.parameters().iter().any(|t| t.is_variable())
    }

    /// Whether [`Self::forward_kept`] and [`Self::backward`] run on `x`: the fused CPU kernels
    /// need f32 CPU tensors and dense weights.
    pub fn owns_backward(&self, x: &Tensor) -> bool {
        let linears = [&self.attn.qkv, &self.attn.out, &self.fc1, &self.fc2];
        fusable(x)
            && linears
                .iter()
                .all(|l| dense_weight(l).is_some_and(fusable) && fusable(&l.bias))
            && [&self.ln_1, &self.ln_2]
                .iter()
                .all(|ln| fusable(&ln.weight) && fusable(&ln.bias))
    }

    /// [`Self::forward`] without a graph (the same kernels in the same order, so the same
    /// values), keeping what [`Self::backward`] reads.
    ///
    /// `[batch, tokens, width]` → `[batch, tokens, width]`
    pub fn forward_kept(
        &self,
        x: &Tensor,
        causal: bool,
        precision: KeptPrecision,
    ) -> Result<(Tensor, BlockActivations)> {
        let kept = self.activations_f32(x, causal)?;
        let Kept::F32(pre_activation) = &kept.pre_activation else {
            candle_core::bail!("a block's own forward pass keeps f32 until it is done");
        };
        let y =
            (&kept.after_attention + linear(&self.fc2, pre_activation, Some(self.activation))?)?;
        Ok((y, kept.kept_in(precision)?))
    }

    /// What [`Self::backward`] reads, without the block's output: a recomputation for
    /// checkpointing skips the MLP's second product (a third of the block's multiply-adds).
    /// The same values as [`Self::forward_kept`] keeps for `precision`.
    pub fn activations(
        &self,
        x: &Tensor,
        causal: bool,
        precision: KeptPrecision,
    ) -> Result<BlockActivations> {
        self.activations_f32(x, causal)?.kept_in(precision)
    }

    fn activations_f32(&self, x: &Tensor, causal: bool) -> Result<BlockActivations> {
        let x = x.detach();
        let qkv = linear(&self.attn.qkv, &layer_norm(&self.ln_1, &x)?, None)?;
        let mixed = qkv.apply_op1_no_bwd(&AttentionOp {
            heads: self.attn.heads,
            causal,
            products: self.attn.products,
        })?;
        let after_attention = (&x + linear(&self.attn.out, &mixed, None)?)?;
        let pre_activation = linear(&self.fc1, &layer_norm(&self.ln_2, &after_attention)?, None)?;
        Ok(BlockActivations {
            x,
            qkv: Kept::F32(qkv),
            mixed: Kept::F32(mixed),
            after_attention,
            pre_activation: Kept::F32(pre_activation),
        })
    }

    /// Back-propagates `grad_y` (`∂loss/∂y` of the output of [`Self::forward_kept`]) through the
    /// block: returns `∂loss/∂x` and pushes onto `grads` the gradient of every trainable
    /// parameter (those held as `Var`s). Each kept activation is dropped once read.
    pub fn backward(
        &self,
        kept: BlockActivations,
        grad_y: &Tensor,
        causal: bool,
        grads: &mut Vec<ParamGrad>,
    ) -> Result<Tensor> {
        let BlockActivations {
            x,
            qkv,
            mixed,
            after_attention,
            pre_activation,
        } = kept;
        // y = a + fc2(act(fc1(ln_2(a)))), a = x + out(attention(qkv(ln_1(x))))
        let pre_activation = pre_activation.into_f32()?;
        let grad_pre = linear_grads(
            &self.fc2,
            &pre_activation,
            Some(self.activation),
            grad_y,
            grads,
        )?;
        drop(pre_activation);
        let normed = layer_norm(&self.ln_2, &after_attention)?;
        let grad_normed = linear_grads(&self.fc1, &normed, None, &grad_pre, grads)?;
        drop((normed, grad_pre));
        let grad_a =
            (grad_y + layer_norm_grads(&self.ln_2, &after_attention, &grad_normed, grads)?)?;
        drop((after_attention, grad_normed));
        let mixed = mixed.into_f32()?;
        let grad_mixed = linear_grads(&self.attn.out, &mixed, None, &grad_a, grads)?;
        drop(mixed);
        let attention = AttentionOp {
            heads: self.attn.heads,
            causal,
            products: self.attn.products,
        };
        let qkv = qkv.into_f32()?;
        let grad_qkv = attention.grads(&qkv, &grad_mixed)?;
        drop((qkv, grad_mixed));
        let normed = layer_norm(&self.ln_1, &x)?;
        let grad_normed = linear_grads(&self.attn.qkv, &normed, None, &grad_qkv, grads)?;
        drop((normed, grad_qkv));
        grad_a + layer_norm_grads(&self.ln_1, &x, &grad_normed, grads)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{test_max_abs_diff, test_tensor, Activation};
    use crate::model::layers::Attention;
    use crate::model::lowp::Bf16Kernel;
    use crate::model::precision::DenseProducts;
    use candle_core::Var;

    const WIDTH: usize = 32;
    const MLP: usize = 4 * WIDTH;

    /// A block with random weights, as `Var`s except those `frozen` names.
    fn block(seed: u64, frozen: &[&str], products: DenseProducts) -> ResidualBlock {
        let param = |name: &str, shape: &[usize], offset: u64| -> Tensor {
            let t = (test_tensor(shape, seed * 100 + offset) * 0.2).unwrap();
            let t = if name.ends_with("ln_1.weight") || name.ends_with("ln_2.weight") {
                (t + 1.0).unwrap()
            } else {
                t
            };
            if frozen.contains(&name) {
                t
            } else {
                Var::from_tensor(&t).unwrap().as_tensor().clone()
            }
        };
        let linear = |name: &str, in_dim: usize, out_dim: usize, offset: u64| {
            let mut l = Linear::dense(
                param(&format!("{name}.weight"), &[in_dim, out_dim], offset),
                param(&format!("{name}.bias"), &[out_dim], offset + 1),
            );
            l.products = products;
            l
        };
        let ln = |name: &str, offset: u64| LayerNorm {
            weight: param(&format!("{name}.weight"), &[WIDTH], offset),
            bias: param(&format!("{name}.bias"), &[WIDTH], offset + 1),
            eps: 1e-5,
        };
        ResidualBlock {
            ln_1: ln("ln_1", 1),
            attn: Attention {
                qkv: linear("qkv", WIDTH, 3 * WIDTH, 3),
                out: linear("out", WIDTH, WIDTH, 5),
                heads: 4,
                products,
            },
            ln_2: ln("ln_2", 7),
            fc1: linear("fc1", WIDTH, MLP, 9),
            fc2: linear("fc2", MLP, WIDTH, 11),
            activation: Activation::QuickGelu,
        }
    }

    /// The owned backward pass against candle's autograd over `forward`: the same output, the
    /// same input gradient and the same gradient for exactly the trainable parameters.
    fn check(frozen: &[&str], products: DenseProducts, causal: bool) {
        let b = block(3, frozen, products);
        let x = test_tensor(&[2, 7, WIDTH], 40);
        let grad_y = test_tensor(&[2, 7, WIDTH], 41);
        // candle's autograd over the graph of `forward`.
        let leaf = Var::from_tensor(&x).unwrap();
        let y_graph = b.forward(leaf.as_tensor(), causal).unwrap();
        let store = (&y_graph * &grad_y)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // The owned pass.
        assert!(b.owns_backward(&x));
        let (y, kept) = b.forward_kept(&x, causal, KeptPrecision::F32).unwrap();
        assert_eq!(test_max_abs_diff(&y, &y_graph), 0.0, "forward differs");
        let mut grads = Vec::new();
        let grad_x = b.backward(kept, &grad_y, causal, &mut grads).unwrap();
        let scale = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let expected_x = store.get(leaf.as_tensor()).unwrap();
        let d = test_max_abs_diff(&grad_x, expected_x);
        assert!(
            d <= 1e-5 * scale(expected_x),
            "input gradient differs by {d}"
        );
        let trained: Vec<&Tensor> = b
            .parameters()
            .into_iter()
            .filter(|p| p.is_variable())
            .collect();
        assert_eq!(b.parameters().len(), 12);
        assert_eq!(b.trains(), !trained.is_empty());
        assert_eq!(
            grads.len(),
            trained.len(),
            "one gradient per trainable parameter"
        );
        for &p in &trained {
            let (_, g) = grads
                .iter()
                .find(|(q, _)| q.id() == p.id())
                .expect("every trainable parameter gets a gradient");
            let expected = store.get(p).unwrap();
            let d = test_max_abs_diff(g, expected);
            assert!(
                d <= 1e-5 * scale(expected).max(1e-3),
                "parameter gradient {:?} differs by {d}",
                p.dims()
            );
        }
    }

    #[test]
    fn owned_block_backward_equals_autograd() {
        for causal in [false, true] {
            check(&[], DenseProducts::F32, causal);
        }
    }

    #[test]
    fn owned_block_backward_skips_frozen_parameters() {
        check(
            &["qkv.weight", "qkv.bias", "ln_2.weight", "fc2.bias"],
            DenseProducts::F32,
            true,
        );
    }

    #[test]
    fn owned_block_backward_equals_autograd_in_bf16_products() {
        for kernel in Bf16Kernel::available() {
            for causal in [false, true] {
                check(&[], DenseProducts::Bf16(kernel), causal);
            }
        }
    }

    /// Kept in bf16, the products' outputs are bf16 bits (half the memory); the residual stream
    /// stays f32 and the block's output is the same.
    #[test]
    fn activations_kept_in_bf16_are_rounded_bits() {
        let b = block(4, &[], DenseProducts::F32);
        let x = test_tensor(&[2, 5, WIDTH], 7);
        let (y32, kept32) = b.forward_kept(&x, true, KeptPrecision::F32).unwrap();
        let (y16, kept16) = b.forward_kept(&x, true, KeptPrecision::Bf16).unwrap();
        assert_eq!(test_max_abs_diff(&y32, &y16), 0.0);
        let BlockActivations {
            x: x16,
            after_attention: after16,
            qkv,
            mixed,
            pre_activation,
        } = kept16;
        for (f32_kept, bf16_kept) in [
            (&kept32.qkv, qkv),
            (&kept32.mixed, mixed),
            (&kept32.pre_activation, pre_activation),
        ] {
            let Kept::F32(f32_kept) = f32_kept else {
                panic!("kept in bf16 for f32")
            };
            let Kept::Bf16 { bits, .. } = &bf16_kept else {
                panic!("kept in f32 for bf16")
            };
            assert_eq!(bits.len(), f32_kept.elem_count());
            let back = bf16_kept.into_f32().unwrap();
            assert_eq!(back.shape(), f32_kept.shape());
            let d = test_max_abs_diff(&back, f32_kept);
            let scale = f32_kept.abs().unwrap().max_all().unwrap();
            let scale = f64::from(scale.to_scalar::<f32>().unwrap());
            assert!(
                d > 0.0 && d <= scale / 256.0,
                "rounded by {d} (scale {scale})"
            );
        }
        for (a, b) in [(&kept32.x, &x16), (&kept32.after_attention, &after16)] {
            assert_eq!(b.dtype(), candle_core::DType::F32);
            assert_eq!(test_max_abs_diff(a, b), 0.0);
        }
    }

    #[test]
    fn packed_blocks_keep_candle_graphs() {
        let b = block(5, &[], DenseProducts::F32);
        let mut packed = b.clone();
        packed.fc1 = packed
            .fc1
            .to_precision(
                crate::model::Precision::Bf16,
                crate::model::precision::KernelChoice::default(),
            )
            .unwrap();
        let x = test_tensor(&[1, 3, WIDTH], 1);
        assert!(b.owns_backward(&x));
        assert!(!packed.owns_backward(&x));
        assert!(!b.owns_backward(&x.to_dtype(candle_core::DType::F64).unwrap()));
    }
}
