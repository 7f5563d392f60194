//! The building blocks shared by both towers: LayerNorm, linear layers, multi-head attention and
//! the pre-norm residual block. Each uses the fused CPU kernels of [`super::kernels`] when the
//! tensors allow it, and composed candle ops otherwise (other devices and dtypes), so the towers
//! never branch on device or precision themselves.

use std::sync::Arc;

use candle_core::{Result, Tensor, D};

use super::kernels::{
    activate, fusable, transpose_2d, transpose_blocks, Activation, AttentionOp, LayerNormOp,
    LinearOp, RowBlocks,
};
use super::lowp::Bf16Kernel;
use super::outin::{OutInLinearOp, OutInWeight, PanelOrigin};
use super::packed::{PackedLinearOp, PackedMlpOp, PackedWeight};
use super::precision::{DenseProducts, KernelChoice, Precision};
use super::weights::{MappedF32, Weights};
use super::ModelError;

/// A lookup table (the text tower's token embedding): a tensor, or used in place in the
/// mapped checkpoint, where a lookup reads only the rows it needs (49,408 × 512 f32 is 101 MB,
/// of which a caption touches a few KB).
#[derive(Debug, Clone)]
pub enum EmbeddingTable {
    Tensor(Tensor),
    Mapped(MappedF32),
}

impl EmbeddingTable {
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        shape: [usize; 2],
    ) -> std::result::Result<Self, ModelError> {
        Ok(match w.mapped_f32(name, shape)? {
            Some(table) => EmbeddingTable::Mapped(table),
            None => EmbeddingTable::Tensor(w.get(name, &shape)?),
        })
    }

    /// Rows `ids` (each below the row count), `[ids.len(), width]`, on `device`.
    pub fn lookup(&self, ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        match self {
            EmbeddingTable::Tensor(t) => {
                t.index_select(&Tensor::from_slice(ids, ids.len(), t.device())?, 0)
            }
            EmbeddingTable::Mapped(table) => {
                let (rows, width) = table.dims();
                let values = table.values();
                let mut out = Vec::with_capacity(ids.len() * width);
                for &id in ids {
                    let id = id as usize;
                    if id >= rows {
                        candle_core::bail!("row {id} is outside the table of {rows} rows");
                    }
                    out.extend_from_slice(&values[id * width..(id + 1) * width]);
                }
                Tensor::from_vec(out, (ids.len(), width), device)
            }
        }
    }

    /// The table as a tensor (trainable), copied out of the mapping the first time.
    pub fn tensor_mut(&mut self) -> Result<&mut Tensor> {
        if let EmbeddingTable::Mapped(table) = self {
            *self = EmbeddingTable::Tensor(Tensor::from_slice(
                table.values(),
                table.dims(),
                &candle_core::Device::Cpu,
            )?);
        }
        match self {
            EmbeddingTable::Tensor(t) => Ok(t),
            EmbeddingTable::Mapped(_) => candle_core::bail!("embedding table not materialised"),
        }
    }
}

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

/// `y = x·W + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: LinearWeight,
    /// `[out]`
    pub bias: Tensor,
    /// How a dense weight multiplies (f32, or bf16 products for mixed-precision training);
    /// packed and mapped weights run their own kernels.
    pub products: DenseProducts,
}

/// The weight of a linear layer, in the form its precision runs from.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// `[in, out]`, transposed from PyTorch's `[out, in]`, because that is the layout the matmul
    /// kernel reads without repacking (see `LinearOp`). Any dtype and device; trainable.
    Dense(Tensor),
    /// Packed for the bf16 or int8 CPU kernels; inference only.
    Packed(Arc<PackedWeight>),
    /// PyTorch's `[out, in]` f32, used in place in the mapped checkpoint (fp32 inference loads:
    /// no transposed copy); made trainable by copying it out ([`Linear::dense_weight_mut`]).
    Mapped(Arc<OutInWeight>),
}

impl Linear {
    /// Reads a linear layer and builds it in `precision`: fp32 uses the stored `[out, in]`
    /// weight in place when the load is not for training and the checkpoint is a mapped f32
    /// one, else transposes it to `[in, out]`; bf16 and int8 pack it straight from `[out, in]`.
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        precision: Precision,
    ) -> std::result::Result<Self, ModelError> {
        let bias = w.get(&format!("{name}.bias"), &[out_dim])?;
        if precision != Precision::Fp32 && !fusable(&bias) {
            return Err(ModelError::Unsupported(format!(
                "{precision} weights run on the CPU in f32 activations only (this model loads \
                 {:?} on {:?})",
                bias.dtype(),
                bias.device()
            )));
        }
        let weight_name = format!("{name}.weight");
        if precision != Precision::Fp32 {
            let weight = w.packed_linear(&weight_name, [out_dim, in_dim], precision)?;
            return Ok(Self {
                weight: LinearWeight::Packed(weight),
                bias,
                products: DenseProducts::F32,
            });
        }
        if !w.trainable() {
            let shape = [out_dim, in_dim];
            let weight = match w.mapped_linear(&weight_name, shape)? {
                Some(weight) => Some(weight),
                None if fusable(&bias) => w.packed_f32_linear(&weight_name, shape)?,
                None => None,
            };
            if let Some(weight) = weight {
                return Ok(Self {
                    weight: LinearWeight::Mapped(weight),
                    bias,
                    products: DenseProducts::F32,
                });
            }
        }
        let weight = w.with_f32(&weight_name, [out_dim, in_dim], |stored| {
            Ok(LinearWeight::Dense(Tensor::from_vec(
                transpose_blocks(stored),
                (in_dim, out_dim),
                &candle_core::Device::Cpu,
            )?))
        })?;
        let weight = match weight {
            // Other devices and dtypes keep what `Weights::get` gives (the fused CPU path is
            // f32 only), as before.
            LinearWeight::Dense(t) if !fusable(&bias) => {
                LinearWeight::Dense(t.to_dtype(bias.dtype())?.to_device(bias.device())?)
            }
            other => other,
        };
        Ok(Self {
            weight,
            bias,
            products: DenseProducts::F32,
        })
    }

    /// A layer without a bias whose `[out, in]` f32 CPU weight is packed for `precision` (not
    /// fp32): the reduced-precision form of a product stored without a layer of its own (the
    /// image tower's patch embedding), and of a dense layer's transposed weight.
    pub(crate) fn packed_without_bias(
        weight: &Tensor,
        precision: Precision,
        kernels: KernelChoice,
    ) -> std::result::Result<Self, ModelError> {
        if !fusable(weight) {
            return Err(ModelError::Unsupported(format!(
                "{precision} weights need f32 weights on the CPU (this layer holds {:?} on {:?})",
                weight.dtype(),
                weight.device()
            )));
        }
        let (out_dim, in_dim) = weight.dims2()?;
        let stored = weight.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            weight: packed(
                &RowBlocks::whole(&stored, out_dim, in_dim),
                precision,
                kernels,
            )?,
            bias: Tensor::zeros(out_dim, candle_core::DType::F32, weight.device())?,
            products: DenseProducts::F32,
        })
    }

    /// A linear layer from its weight `[in, out]` and bias `[out]`.
    pub fn dense(weight_t: Tensor, bias: Tensor) -> Self {
        Self {
            weight: LinearWeight::Dense(weight_t),
            bias,
            products: DenseProducts::F32,
        }
    }

    /// The trainable weight `[in, out]`, when the layer has one (packed layers do not); a
    /// weight used in place in the checkpoint is copied out, transposed, the first time.
    pub fn dense_weight_mut(&mut self) -> Result<Option<&mut Tensor>> {
        if let LinearWeight::Mapped(w) = &self.weight {
            let (in_dim, out_dim) = w.dims();
            self.weight = LinearWeight::Dense(Tensor::from_vec(
                transpose_blocks(&w.rows()?),
                (in_dim, out_dim),
                &candle_core::Device::Cpu,
            )?);
        }
        Ok(match &mut self.weight {
            LinearWeight::Dense(w) => Some(w),
            LinearWeight::Packed(_) | LinearWeight::Mapped(_) => None,
        })
    }

    /// The same layer with its weight packed for `precision` (a copy of the dense layer for
    /// fp32). Only f32 CPU weights can be packed.
    pub fn to_precision(
        &self,
        precision: Precision,
        kernels: KernelChoice,
    ) -> std::result::Result<Self, ModelError> {
        let w = match (&self.weight, precision) {
            (_, Precision::Fp32) | (LinearWeight::Packed(_), _) => return Ok(self.clone()),
            (LinearWeight::Mapped(w), _) => {
                return Ok(Self {
                    weight: packed(&w.rows()?, precision, kernels)?,
                    bias: self.bias.clone(),
                    products: DenseProducts::F32,
                })
            }
            (LinearWeight::Dense(w), _) => w,
        };
        let packed = Self::packed_without_bias(&transpose_2d(w)?, precision, kernels)?;
        Ok(Self {
            bias: self.bias.clone(),
            ..packed
        })
    }

    /// `[.., in]` → `[.., out]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_activated(x, None)
    }

    /// `act(x)·W + b`: an MLP's second layer applies the activation of the first layer's output,
    /// so that training keeps only the pre-activation for the backward pass.
    pub fn forward_after(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.forward_activated(x, Some(act))
    }

    /// `residual + self.forward_activated(&x, act)`; packed layers add the residual inside their
    /// kernel (the same sum, one pass fewer). `x` is taken so that it is freed before the sum is
    /// allocated, which can then reuse its memory instead of faulting in fresh pages.
    fn forward_residual(
        &self,
        x: Tensor,
        act: Option<Activation>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Packed(w) if fusable(&x) && fusable(residual) => {
                x.contiguous()?.apply_op3(
                    &self.bias,
                    &residual.contiguous()?,
                    PackedLinearOp {
                        weight: w.clone(),
                        input_activation: act,
                    },
                )
            }
            LinearWeight::Mapped(w) if fusable(&x) && fusable(residual) => {
                x.contiguous()?.apply_op3(
                    &self.bias,
                    &residual.contiguous()?,
                    OutInLinearOp {
                        weight: w.clone(),
                        input_activation: act,
                    },
                )
            }
            _ => {
                let y = self.forward_activated(&x, act)?;
                drop(x);
                residual + y
            }
        }
    }

    fn forward_activated(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) if fusable(x) => x.contiguous()?.apply_op3(
                w,
                &self.bias,
                LinearOp {
                    input_activation: act,
                    products: self.products,
                },
            ),
            LinearWeight::Dense(w) => {
                let x = match act {
                    Some(act) => activate(x, act)?,
                    None => x.clone(),
                };
                let (in_dim, out_dim) = w.dims2()?;
                let mut shape = x.dims().to_vec();
                let y = x.reshape(((), in_dim))?.matmul(w)?;
                if let Some(last) = shape.last_mut() {
                    *last = out_dim;
                }
                y.reshape(shape)?.broadcast_add(&self.bias)
            }
            LinearWeight::Packed(w) if fusable(x) => x.contiguous()?.apply_op2(
                &self.bias,
                PackedLinearOp {
                    weight: w.clone(),
                    input_activation: act,
                },
            ),
            LinearWeight::Packed(w) => candle_core::bail!(
                "{} weights run on f32 CPU inputs only, not {:?} on {:?}",
                w.precision(),
                x.dtype(),
                x.device()
            ),
            LinearWeight::Mapped(w) if fusable(x) => x.contiguous()?.apply_op2(
                &self.bias,
                OutInLinearOp {
                    weight: w.clone(),
                    input_activation: act,
                },
            ),
            LinearWeight::Mapped(_) => candle_core::bail!(
                "in-place f32 weights run on f32 CPU inputs only, not {:?} on {:?}",
                x.dtype(),
                x.device()
            ),
        }
    }
}

/// Multi-head self-attention with a fused q/k/v projection.
#[derive(Debug, Clone)]
pub struct Attention {
    pub qkv: Linear,
    pub out: Linear,
    pub heads: usize,
    /// How the scores and the mix are multiplied: f32, or bf16 in a reduced-precision model
    /// (AMX or AVX-512 BF16) or in bf16 training on a CPU with AMX (see [`attention_products`]
    /// and [`Transformer::set_dense_products`]).
    pub products: DenseProducts,
}

impl Attention {
    /// `[batch, tokens, width]` → `[batch, tokens, width]`
    pub fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        self.out.forward(&self.mix(x, causal)?)
    }

    /// `residual + self.forward(x, causal)`, the sum made by the output projection's kernel
    /// where it can.
    fn forward_residual(&self, x: &Tensor, causal: bool, residual: &Tensor) -> Result<Tensor> {
        self.out
            .forward_residual(self.mix(x, causal)?, None, residual)
    }

    /// The heads' attention-weighted values, before the output projection.
    fn mix(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let op = AttentionOp {
            heads: self.heads,
            causal,
            products: self.products,
        };
        if fusable(&qkv) {
            qkv.contiguous()?.apply_op1(op)
        } else {
            op.composed(&qkv)
        }
    }
}

/// A linear weight packed for `precision` from `stored`, row-major `[out, in]`.
fn packed(
    stored: &RowBlocks,
    precision: Precision,
    kernels: KernelChoice,
) -> std::result::Result<LinearWeight, ModelError> {
    let packed = PackedWeight::pack(stored, precision, kernels).map_err(ModelError::Unsupported)?;
    Ok(LinearWeight::Packed(Arc::new(packed)))
}

/// The precision of the q/k/v projection in a model of `precision`. In int8 it stays bf16: its
/// errors are amplified by the attention softmax, and measurement put it alone between int8 and
/// a cosine of 0.999 to fp32 (small fixture models: text 0.9984 with it in int8, 0.9991 in
/// bf16; keeping one of the other three layers in bf16 instead changed little). It is a
/// quarter of a block's multiply-adds.
fn qkv_precision(precision: Precision) -> Precision {
    match precision {
        Precision::Int8 => Precision::Bf16,
        p => p,
    }
}

/// How the attention of a model of `precision` multiplies its scores and mix: in bf16 for a
/// bf16 or int8 model with the fastest kernels, on AMX tiles where the CPU has AMX-BF16 and with
/// AVX-512 BF16 dot products where it has those, in f32 otherwise. A head's two products of
/// 50-77 tokens are too small for the f32 gemm to reach speed (see
/// [`super::lowp::attention_bf16`]).
fn attention_products(precision: Precision, kernels: KernelChoice) -> DenseProducts {
    if precision == Precision::Fp32 || kernels != KernelChoice::Fastest {
        return DenseProducts::F32;
    }
    [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16]
        .into_iter()
        .find(|k| k.is_available())
        .map_or(DenseProducts::F32, DenseProducts::Bf16)
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
        let (precision, kernels) = w.precision();
        let qkv_precision = qkv_precision(precision);
        Ok(Self {
            ln_1: LayerNorm::load(w, &format!("{prefix}.ln_1"), s.width, s.layer_norm_eps)?,
            attn: Attention {
                qkv: Linear::load(
                    w,
                    &format!("{prefix}.attn.qkv"),
                    3 * s.width,
                    s.width,
                    qkv_precision,
                )?,
                out: Linear::load(
                    w,
                    &format!("{prefix}.attn.out"),
                    s.width,
                    s.width,
                    precision,
                )?,
                heads: s.heads,
                products: attention_products(precision, kernels),
            },
            ln_2: LayerNorm::load(w, &format!("{prefix}.ln_2"), s.width, s.layer_norm_eps)?,
            fc1: Linear::load(
                w,
                &format!("{prefix}.mlp.fc1"),
                s.mlp_dim,
                s.width,
                precision,
            )?,
            fc2: Linear::load(
                w,
                &format!("{prefix}.mlp.fc2"),
                s.width,
                s.mlp_dim,
                precision,
            )?,
            activation: s.activation,
        })
    }

    /// `[batch, tokens, width]` → `[batch, tokens, width]`
    pub fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        if matches!(self.fc2.weight, LinearWeight::Dense(_)) {
            // Dense f32 layers keep the plain sums: routed through `forward_residual` (its
            // fallback adds after the product), image batch 32 measured 5-10 % slower (more
            // fresh pages faulted in per block). In-place f32 weights add the residual in their
            // kernels' stores, like packed ones: text 32 x 16 158-162 against 142 texts/s on Zen
            // 4 with the f32 panel kernel.
            let x = (x + self.attn.forward(&self.ln_1.forward(x)?, causal)?)?;
            let pre_activation = self.fc1.forward(&self.ln_2.forward(&x)?)?;
            return x + self.fc2.forward_after(&pre_activation, self.activation)?;
        }
        let x = self
            .attn
            .forward_residual(&self.ln_1.forward(x)?, causal, x)?;
        let h = self.ln_2.forward(&x)?;
        if let (LinearWeight::Packed(w1), LinearWeight::Packed(w2)) =
            (&self.fc1.weight, &self.fc2.weight)
        {
            if let Some(op) = PackedMlpOp::new(w1, &self.fc1.bias, w2, self.activation) {
                if fusable(&h) && fusable(&x) {
                    return h
                        .contiguous()?
                        .apply_op3(&self.fc2.bias, &x.contiguous()?, op);
                }
            }
        }
        let pre_activation = self.fc1.forward(&h)?;
        self.fc2
            .forward_residual(pre_activation, Some(self.activation), &x)
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

    /// Packs the weights of every block's linear layers for `precision`, one layer at a time
    /// (the f32 weight of a layer is dropped as soon as its packed form exists). Models read
    /// from files are packed as they load instead ([`Weights::with_precision`]).
    pub fn convert(
        &mut self,
        precision: Precision,
        kernels: KernelChoice,
    ) -> std::result::Result<(), ModelError> {
        for b in &mut self.blocks {
            b.attn.qkv = b.attn.qkv.to_precision(qkv_precision(precision), kernels)?;
            for l in [&mut b.attn.out, &mut b.fc1, &mut b.fc2] {
                *l = l.to_precision(precision, kernels)?;
            }
            b.attn.products = attention_products(precision, kernels);
        }
        Ok(())
    }

    /// How every block's dense linear layers and attention multiply in training (see
    /// [`DenseProducts`]; the attention takes bf16 only on AMX tiles, whose backward pass is
    /// bf16 too, and f32 with any other kernel).
    pub fn set_dense_products(&mut self, products: DenseProducts) {
        let attention = match products {
            DenseProducts::Bf16(Bf16Kernel::Amx) => products,
            _ => DenseProducts::F32,
        };
        for b in &mut self.blocks {
            for l in [&mut b.attn.qkv, &mut b.attn.out, &mut b.fc1, &mut b.fc2] {
                l.products = products;
            }
            b.attn.products = attention;
        }
    }

    /// Packs every fp32 weight used in place for this CPU's f32 panel kernel now (see
    /// [`super::outin::OutInWeight::pack_now`]); returns how many were packed.
    pub fn pack_f32_weights(&self) -> Result<usize> {
        let mut packed = 0;
        for b in &self.blocks {
            for l in [&b.attn.qkv, &b.attn.out, &b.fc1, &b.fc2] {
                if let LinearWeight::Mapped(w) = &l.weight {
                    packed += usize::from(w.pack_now()?);
                }
            }
        }
        Ok(packed)
    }

    /// The precision the stack was converted to (fp32 for an empty stack): that of the MLP,
    /// which every precision packs as asked.
    pub fn precision(&self) -> Precision {
        match self.blocks.first().map(|b| &b.fc1.weight) {
            Some(LinearWeight::Packed(w)) => w.precision(),
            _ => Precision::Fp32,
        }
    }

    /// The kernels of the first block's layers, e.g. `qkv bf16-avx512bf16, out/fc1/fc2
    /// int8-avx512vnni`, `gemm f32`, `f32 in place (f32-outin-avx2, gemm)` (the out-in kernel
    /// for products of few rows, gemm for the others) or, where a weight is packed for the
    /// panel kernel at its first product and every product runs that, `f32 packed at first use
    /// (f32-panels-avx512)`, `f32 packed when asked (f32-panels-avx2)` after
    /// [`Transformer::pack_f32_weights`], `f32 packed at load (f32-panels-avx2)` where the load
    /// packed them (for the converted-weights cache, or read from an archive), or `f32 packed,
    /// mapped from the converted cache (f32-panels-avx2)` where a load found them packed in the
    /// converted-weights cache.
    pub fn kernel_description(&self) -> String {
        let Some(b) = self.blocks.first() else {
            return "none".into();
        };
        let name = |l: &Linear| match &l.weight {
            LinearWeight::Packed(w) => w.kernel_name(),
            LinearWeight::Dense(_) => "gemm f32".into(),
            LinearWeight::Mapped(w) if w.runs_panels() => {
                let how = match w.panel_origin() {
                    Some(PanelOrigin::Asked) => "packed when asked",
                    Some(PanelOrigin::Load) => "packed at load",
                    Some(PanelOrigin::Mapped) => "packed, mapped from the converted cache",
                    Some(PanelOrigin::FirstProduct) | None => "packed at first use",
                };
                format!("f32 {how} ({})", w.repeated_kernel_name())
            }
            LinearWeight::Mapped(w) => format!(
                "f32 in place ({}, {})",
                w.kernel().name(),
                w.repeated_kernel_name()
            ),
        };
        let (qkv, rest) = (name(&b.attn.qkv), name(&b.fc1));
        let linear = if qkv == rest {
            rest
        } else {
            format!("qkv {qkv}, out/fc1/fc2 {rest}")
        };
        match b.attn.products {
            DenseProducts::Bf16(k) => format!("{linear}, attention {}", k.name()),
            DenseProducts::F32 => linear,
        }
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
    use candle_core::{DType, Var};

    use crate::model::kernels::test_tensor as rand;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::model::kernels::test_max_abs_diff(a, b) as f32
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
                Linear::dense(t[1].clone(), t[2].clone())
                    .forward(&t[0])
                    .unwrap()
            },
            2e-4,
        );
        for act in [Activation::Gelu, Activation::QuickGelu] {
            check_fused_against_composed(
                &inputs,
                |t| {
                    Linear::dense(t[1].clone(), t[2].clone())
                        .forward_after(&t[0], act)
                        .unwrap()
                },
                2e-4,
            );
        }
    }

    #[test]
    fn attention_fused_matches_composed_with_gradients() {
        // 70 tokens as well as 9: softmax rows and causal masks several SIMD vectors long.
        for (causal, tokens) in [(false, 9), (true, 9), (false, 70), (true, 70)] {
            let inputs = [rand(&[3, tokens, 3 * 16], 7)];
            check_fused_against_composed(
                &inputs,
                |t| {
                    let op = AttentionOp {
                        heads: 4,
                        causal,
                        products: DenseProducts::F32,
                    };
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
