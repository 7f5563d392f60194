//! What the search engine needs from a model: texts and images in, unit vectors out. The
//! library's [`Embedder`] is one; the server wraps it in a dynamic batcher that is another.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use gclip::embed::Embedder;

use crate::error::{Result, SearchError};

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
