//! The text tower: a causal Transformer as in CLIP.

use candle_core::{Result, Tensor};

use super::config::{TextConfig, TextPooling};
use super::layers::{EmbeddingTable, LayerNorm, StackShape, Transformer};
use super::weights::Weights;
use super::ModelError;

/// Token and position embeddings, causal residual blocks, final LayerNorm, pooling at the
/// end-of-text token and the projection into the shared space.
#[derive(Debug, Clone)]
pub struct TextTower {
    pub config: TextConfig,
    pub token_embedding: EmbeddingTable,
    pub position_embedding: Tensor,
    pub transformer: Transformer,
    pub ln_final: LayerNorm,
    /// `[embed, width]`
    pub projection: Tensor,
}

impl TextTower {
    pub(crate) fn load(
        w: &Weights,
        c: &TextConfig,
        embed_dim: usize,
    ) -> std::result::Result<Self, ModelError> {
        Ok(Self {
            token_embedding: EmbeddingTable::load(
                w,
                "text.token_embedding",
                [c.vocab_size, c.width],
            )?,
            position_embedding: w.get("text.position_embedding", &[c.context_length, c.width])?,
            transformer: Transformer::load(
                w,
                "text",
                &StackShape {
                    width: c.width,
                    layers: c.layers,
                    heads: c.heads,
                    mlp_dim: c.mlp_dim,
                    activation: c.activation,
                    layer_norm_eps: c.layer_norm_eps,
                },
            )?,
            ln_final: LayerNorm::load(w, "text.ln_final", c.width, c.layer_norm_eps)?,
            projection: w.get("text.projection", &[embed_dim, c.width])?,
            config: c.clone(),
        })
    }

    /// The position each row is pooled at, as the reference implementation chooses it.
    pub fn pool_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        ids.iter()
            .map(|row| match self.config.pooling {
                // torch.argmax returns the first maximal index.
                TextPooling::ArgMax => {
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, 0u32),
                            |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
                        )
                        .0
                }
                // (ids == eos).int().argmax() is 0 when the id never occurs.
                TextPooling::FirstId(eos) => row.iter().position(|&v| v == eos).unwrap_or(0),
            })
            .collect()
    }

    /// Token ids (rows of equal length ≤ the context length) → `[batch, embed]`, not normalised.
    ///
    /// The tower is causal, so tokens after the pooled position cannot change the output: the
    /// batch runs only up to its last pooled position.
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let c = &self.config;
        let batch = ids.len();
        let len = ids.first().map_or(0, Vec::len);
        if batch == 0 {
            candle_core::bail!("no texts to encode");
        }
        if len == 0 || len > c.context_length || ids.iter().any(|r| r.len() != len) {
            candle_core::bail!(
                "token rows must all have the same length, between 1 and the context length {}",
                c.context_length
            );
        }
        if let Some(bad) = ids.iter().flatten().find(|&&t| t as usize >= c.vocab_size) {
            candle_core::bail!(
                "token id {bad} is outside the vocabulary of {} ids",
                c.vocab_size
            );
        }
        let pool = self.pool_positions(ids);
        let run = pool.iter().max().copied().unwrap_or(0) + 1;
        let flat: Vec<u32> = ids.iter().flat_map(|r| r[..run].iter().copied()).collect();
        let device = self.position_embedding.device();
        let x = self
            .token_embedding
            .lookup(&flat, device)?
            .reshape((batch, run, c.width))?
            .broadcast_add(&self.position_embedding.narrow(0, 0, run)?)?;
        let x = self.transformer.forward(&x, true)?;
        // Gather the pooled token of each row; LayerNorm is per token, so it can follow.
        let rows: Vec<u32> = pool
            .iter()
            .enumerate()
            .map(|(b, &p)| (b * run + p) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, batch, device)?;
        let pooled = x.reshape((batch * run, c.width))?.index_select(&rows, 0)?;
        self.ln_final
            .forward(&pooled)?
            .matmul(&self.projection.t()?)
    }
}
