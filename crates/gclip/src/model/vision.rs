//! The image tower: a Vision Transformer (ViT) as in CLIP.

use candle_core::{Result, Tensor, D};

use super::config::VisionConfig;
use super::kernels::fusable;
use super::layers::{LayerNorm, Linear, StackShape, Transformer};
use super::mixed::OutInLinearOp;
use super::outin::{OutInKernel, OutInMatmulOp, OUT_IN_MAX_ROWS};
use super::precision::{DenseProducts, KernelChoice, Precision};
use super::weights::Weights;
use super::ModelError;

/// Patch embedding, class token, position embeddings, pre-LayerNorm, residual blocks,
/// post-LayerNorm on the class token and the projection into the shared space.
#[derive(Debug, Clone)]
pub struct VisionTower {
    pub config: VisionConfig,
    /// `[width, 3·patch·patch]`: the patch convolution (no bias) as a matrix.
    pub patch_embed: Tensor,
    /// The patch embedding packed in bf16 when the transformer runs in bf16 or int8 (as
    /// PyTorch's bf16 autocast runs the convolution): its f32 gemm was 8-10 % of those towers'
    /// time. `None` in fp32.
    pub patch_embed_packed: Option<Linear>,
    /// How the dense patch embedding multiplies: f32, or bf16 products with f32 accumulation
    /// for mixed-precision training, as the blocks' linear layers (see
    /// [`super::Clip::set_dense_products`]).
    pub patch_embed_products: DenseProducts,
    pub class_embedding: Tensor,
    pub position_embedding: Tensor,
    pub ln_pre: LayerNorm,
    pub transformer: Transformer,
    pub ln_post: LayerNorm,
    /// `[embed, width]`
    pub projection: Tensor,
}

impl VisionTower {
    pub(crate) fn load(
        w: &Weights,
        c: &VisionConfig,
        embed_dim: usize,
    ) -> std::result::Result<Self, ModelError> {
        let p = c.patch_size;
        let patch = w
            .get("vision.patch_embed.weight", &[c.width, 3, p, p])?
            .reshape((c.width, 3 * p * p))?;
        let (precision, kernels) = w.precision();
        Ok(Self {
            patch_embed_packed: packed_patch_embed(&patch, precision, kernels)?,
            patch_embed: patch,
            patch_embed_products: DenseProducts::F32,
            class_embedding: w.get("vision.class_embedding", &[c.width])?,
            position_embedding: w.get("vision.position_embedding", &[c.tokens(), c.width])?,
            ln_pre: LayerNorm::load(w, "vision.ln_pre", c.width, c.layer_norm_eps)?,
            transformer: Transformer::load(
                w,
                "vision",
                &StackShape {
                    width: c.width,
                    layers: c.layers,
                    heads: c.heads,
                    mlp_dim: c.mlp_dim,
                    activation: c.activation,
                    layer_norm_eps: c.layer_norm_eps,
                },
            )?,
            ln_post: LayerNorm::load(w, "vision.ln_post", c.width, c.layer_norm_eps)?,
            projection: w.get("vision.projection", &[embed_dim, c.width])?,
            config: c.clone(),
        })
    }

    /// Converts the transformer's weights and the patch embedding to `precision` (see
    /// [`super::precision`]).
    pub(crate) fn convert(
        &mut self,
        precision: Precision,
        kernels: KernelChoice,
    ) -> std::result::Result<(), ModelError> {
        self.transformer.convert(precision, kernels)?;
        self.patch_embed_packed = packed_patch_embed(&self.patch_embed, precision, kernels)?;
        Ok(())
    }

    /// `[batch, 3, size, size]` normalised pixels → `[batch, embed]` (not normalised).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.head(&self.transformer.forward(&self.stem(pixels)?, false)?)
    }

    /// The residual stream entering the first block, `[batch, tokens, width]`: patch embedding,
    /// class token, position embeddings and the pre-LayerNorm.
    pub fn stem(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (batch, channels, h, w) = pixels.dims4()?;
        if channels != 3 || h != c.image_size || w != c.image_size {
            candle_core::bail!(
                "the image tower expects [batch, 3, {s}, {s}] pixels, got {:?}",
                pixels.dims(),
                s = c.image_size
            );
        }
        let (g, p) = (c.grid(), c.patch_size);
        // A stride-p convolution with a p×p kernel is a matmul over flattened patches, in the
        // conv weight's (channel, row, column) order.
        let patches = pixels
            .reshape((batch, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch, g * g, 3 * p * p))?;
        // For one image the weight read in place beats a gemm that repacks all of it per call.
        let tokens = if let Some(packed) = &self.patch_embed_packed {
            packed.forward(&patches)?
        } else if let DenseProducts::Bf16(kernel) = self.patch_embed_products {
            patches.apply_op2(&self.patch_embed, OutInLinearOp { kernel })?
        } else if !self.patch_embed.track_op()
            && fusable(&patches)
            && fusable(&self.patch_embed)
            && self.patch_embed.is_contiguous()
            && batch * g * g <= OUT_IN_MAX_ROWS
        {
            let kernel = OutInKernel::chosen(KernelChoice::Fastest);
            patches.apply_op2_no_bwd(&self.patch_embed, &OutInMatmulOp { kernel })?
        } else {
            patches.broadcast_matmul(&self.patch_embed.t()?)?
        };
        let class = self
            .class_embedding
            .reshape((1, 1, c.width))?
            .broadcast_as((batch, 1, c.width))?;
        let x = Tensor::cat(&[&class, &tokens], 1)?.broadcast_add(&self.position_embedding)?;
        self.ln_pre.forward(&x)
    }

    /// The residual stream after the last block → `[batch, embed]`: the class token's
    /// post-LayerNorm and the projection.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        // LayerNorm acts per token, so normalising only the class token equals normalising all.
        let pooled = self.ln_post.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        pooled.matmul(&self.projection.t()?)
    }
}

/// The patch embedding of a model of `precision`: packed in bf16 for bf16 and int8 models (int8
/// keeps it in bf16 as it keeps q/k/v: the first product feeds every later layer; int8 pixels
/// were not tried), none for fp32.
fn packed_patch_embed(
    weight: &Tensor,
    precision: Precision,
    kernels: KernelChoice,
) -> std::result::Result<Option<Linear>, ModelError> {
    match precision {
        Precision::Fp32 => Ok(None),
        Precision::Bf16 | Precision::Int8 => {
            Linear::packed_without_bias(weight, Precision::Bf16, kernels).map(Some)
        }
    }
}

/// L2-normalises the last dimension.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm)
}
