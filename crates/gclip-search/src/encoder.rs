//! What the search engine needs from a model: texts and images in, unit vectors out. The
//! library's [`Embedder`] is one; the server wraps it in a dynamic batcher that is another.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use gclip::embed::{Embedder, LoadOptions};
use gclip::model::Precision;
use gclip::source::ModelSource;

use crate::error::{Result, SearchError};
use crate::store::ModelIdentity;

/// Turns texts and images into unit-length vectors.
pub trait Encoder: Send + Sync {
    /// Embedding dimension.
    fn dim(&self) -> usize;
    /// One vector per text, in order.
    fn texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
    /// One result per file, in order: a vector, or why that file failed.
    fn image_files(&self, paths: &[PathBuf]) -> Result<Vec<Result<Vec<f32>, String>>>;
    /// An image given as encoded bytes (PNG, JPEG, …); `name` is used in messages.
    fn image_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>>;
}

impl Encoder for Embedder {
    fn dim(&self) -> usize {
        self.clip().config.embed_dim
    }

    fn texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let e = self.embed_texts(texts, true, &|_| {})?;
        Ok(e.rows().map(<[f32]>::to_vec).collect())
    }

    fn image_files(&self, paths: &[PathBuf]) -> Result<Vec<Result<Vec<f32>, String>>> {
        let r = self.embed_image_files(paths, true, &|_| {})?;
        let mut out: Vec<Result<Vec<f32>, String>> =
            vec![Err("not embedded".to_string()); paths.len()];
        for (row, &i) in r.embeddings.rows().zip(&r.indices) {
            out[i] = Ok(row.to_vec());
        }
        for (i, e) in r.failures {
            out[i] = Err(e.to_string());
        }
        Ok(out)
    }

    fn image_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        let pre = self.inputs().preprocessor();
        let size = pre.config().crop_size;
        let pixels = pre
            .pixels_from_bytes(bytes, name)
            .map_err(|e| SearchError::Invalid(format!("image {name}: {e}")))?;
        let t = Tensor::from_vec(pixels, (1, 3, size, size), &Device::Cpu)
            .map_err(|e| SearchError::Invalid(format!("image {name}: {e}")))?;
        let e = self
            .clip()
            .encode_pixels(&t, true)
            .map_err(gclip::embed::EmbedError::from)?;
        Ok(e.data)
    }
}

/// Loads the model a collection was created with ([`ModelIdentity`]), in `precision` (the
/// recorded one when `None`), with `batch_size` items per forward pass.
pub fn load_model(
    model: &ModelIdentity,
    precision: Option<Precision>,
    batch_size: usize,
) -> Result<Embedder> {
    let source = ModelSource::resolve(&model.model, model.arch.as_deref())
        .map_err(|e| SearchError::Invalid(format!("collection model {}: {e}", model.describe())))?;
    let options = LoadOptions {
        precision: precision.unwrap_or(model.precision),
        ..Default::default()
    };
    let mut e = Embedder::load_with(&source, &Device::Cpu, options)
        .map_err(|e| SearchError::Invalid(format!("loading model {}: {e}", model.describe())))?;
    e.batch_size = batch_size.max(1);
    Ok(e)
}

/// A collection's model, loaded the first time something is embedded (an update that changes
/// no embedded field needs no model).
pub struct LazyEncoder {
    model: ModelIdentity,
    precision: Option<Precision>,
    embedder: OnceLock<Embedder>,
}

impl LazyEncoder {
    /// The model of `model`, in `precision` (the recorded one when `None`), not loaded yet.
    pub fn new(model: ModelIdentity, precision: Option<Precision>) -> Self {
        Self {
            model,
            precision,
            embedder: OnceLock::new(),
        }
    }

    /// The model, loaded on the first call.
    pub fn get(&self) -> Result<&Embedder> {
        if let Some(e) = self.embedder.get() {
            return Ok(e);
        }
        let e = load_model(&self.model, self.precision, 32)?;
        Ok(self.embedder.get_or_init(|| e))
    }
}

impl Encoder for LazyEncoder {
    fn dim(&self) -> usize {
        self.model.dim
    }
    fn texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.get()?.texts(texts)
    }
    fn image_files(&self, paths: &[PathBuf]) -> Result<Vec<Result<Vec<f32>, String>>> {
        self.get()?.image_files(paths)
    }
    fn image_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        self.get()?.image_bytes(bytes, name)
    }
}
