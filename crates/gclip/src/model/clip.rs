//! Both towers and the logit scale: the CLIP dual encoder.

use candle_core::{Device, Tensor};

use super::config::ClipConfig;
use super::precision::{DenseProducts, KernelChoice, Precision};
use super::text::TextTower;
use super::vision::{l2_normalize, VisionTower};
use super::weights::Weights;
use super::ModelError;

/// A loaded CLIP model.
#[derive(Debug, Clone)]
pub struct Clip {
    pub config: ClipConfig,
    pub vision: VisionTower,
    pub text: TextTower,
    /// The learnt temperature, stored as its logarithm (as in both reference libraries).
    pub logit_scale: Tensor,
}

/// Rows of embedding vectors, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Embeddings {
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th vector.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Iterates over the vectors.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim.max(1))
    }

    pub(crate) fn from_tensor(t: &Tensor) -> Result<Self, ModelError> {
        let (_, dim) = t.dims2()?;
        let data = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self { dim, data })
    }
}

impl Clip {
    /// Builds the model from a checkpoint, strictly: every tensor must be present with its
    /// shape. Tensors the checkpoint holds beyond those are returned (and logged as a warning).
    pub fn load(config: &ClipConfig, weights: &Weights) -> Result<(Self, Vec<String>), ModelError> {
        let model = Self {
            vision: VisionTower::load(weights, &config.vision, config.embed_dim)?,
            text: TextTower::load(weights, &config.text, config.embed_dim)?,
            logit_scale: weights.get_scalar("logit_scale")?,
            config: config.clone(),
        };
        let unused = weights.unused();
        if !unused.is_empty() {
            tracing::warn!(
                checkpoint = %weights.path().display(),
                "{} unexpected tensors in the checkpoint were ignored: {}",
                unused.len(),
                unused.join(", ")
            );
        }
        Ok((model, unused))
    }

    /// Converts both towers' transformer weights to `precision` (see [`super::precision`]).
    /// Converting to the model's own precision changes nothing; a converted model cannot be
    /// converted again (its f32 weights are gone).
    pub fn convert(
        &mut self,
        precision: Precision,
        kernels: KernelChoice,
    ) -> Result<(), ModelError> {
        if precision == self.precision() {
            return Ok(());
        }
        if self.precision() != Precision::Fp32 {
            return Err(ModelError::Unsupported(format!(
                "the model is already {}; load it again to run it in {precision}",
                self.precision()
            )));
        }
        self.vision.convert(precision, kernels)?;
        self.text.transformer.convert(precision, kernels)
    }

    /// How the transformer blocks' trainable linear layers, their attention and the patch
    /// embedding multiply, in both towers: f32, or bf16 products with f32 accumulation for
    /// mixed-precision training (the weights stay f32). Layers that are not dense (packed or
    /// mapped weights) are not affected.
    pub fn set_dense_products(&mut self, products: DenseProducts) {
        self.vision.transformer.set_dense_products(products);
        self.vision.patch_embed_products = products;
        self.text.transformer.set_dense_products(products);
    }

    /// Packs both towers' fp32 weights that are used in place for this CPU's f32 panel kernel
    /// now, for a long-lived process (a server) to call before its first product: on AVX2 CPUs
    /// these weights are otherwise read in place by every product, and the panel kernel runs
    /// products of few rows 1.1–1.7× faster (Zen 3, docs/BENCHMARKS.md session 33); on AVX-512
    /// CPUs the first product would pack them anyway. The cost is the packing's memory (the
    /// mapped weights' pages are released) and its page faults, 0.1–2 s for ViT-B/32. A load
    /// with the converted-weights cache has them packed already (mapped from the cache file, or
    /// packed for it): nothing is packed again. Returns how many weights are packed (none with
    /// the portable kernels or other precisions).
    pub fn pack_f32_weights(&self) -> Result<usize, ModelError> {
        Ok(self.vision.transformer.pack_f32_weights()?
            + self.text.transformer.pack_f32_weights()?)
    }

    /// Which kernels the transformer's linear layers run (`gemm f32`, `bf16-avx512bf16`, …),
    /// chosen at load time for this CPU.
    pub fn kernel_description(&self) -> String {
        self.vision.transformer.kernel_description()
    }

    /// The precision the transformer weights run in.
    pub fn precision(&self) -> Precision {
        self.vision.transformer.precision()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.logit_scale.device()
    }

    /// `exp(logit_scale)`: the factor applied to cosine similarities before a softmax.
    pub fn logit_scale_exp(&self) -> Result<f32, ModelError> {
        Ok(self
            .logit_scale
            .to_dtype(candle_core::DType::F32)?
            .exp()?
            .to_scalar::<f32>()?)
    }

    /// Text embeddings of token-id rows (all of one length, at most the context length).
    pub fn encode_text_ids(
        &self,
        ids: &[Vec<u32>],
        normalize: bool,
    ) -> Result<Embeddings, ModelError> {
        let out = self.text.forward(ids).map_err(ModelError::input)?;
        let out = if normalize { l2_normalize(&out)? } else { out };
        Embeddings::from_tensor(&out)
    }

    /// Image embeddings of normalised pixels `[batch, 3, size, size]`.
    pub fn encode_pixels(
        &self,
        pixels: &Tensor,
        normalize: bool,
    ) -> Result<Embeddings, ModelError> {
        let pixels = pixels
            .to_device(self.device())?
            .to_dtype(self.logit_scale.dtype())?;
        let out = self.vision.forward(&pixels).map_err(ModelError::input)?;
        let out = if normalize { l2_normalize(&out)? } else { out };
        Embeddings::from_tensor(&out)
    }
}
