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
        let stem = self.stem(ids)?;
        self.head(&self.transformer.forward(&stem.x, true)?, &stem.pooled_rows)
    }

    /// The residual stream entering the first (causal) block: token and position embeddings,
    /// up to the batch's last pooled position, and where [`Self::head`] pools each row.
    pub fn stem(&self, ids: &[Vec<u32>]) -> Result<TextStem> {
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
        let rows: Vec<u32> = pool
            .iter()
            .enumerate()
            .map(|(b, &p)| (b * run + p) as u32)
            .collect();
        Ok(TextStem {
            x,
            pooled_rows: Tensor::from_vec(rows, batch, device)?,
        })
    }

    /// The residual stream after the last block, `[batch, run, width]`, → `[batch, embed]`:
    /// the pooled token of each row (`pooled_rows` from [`Self::stem`]), the final LayerNorm
    /// and the projection.
    pub fn head(&self, x: &Tensor, pooled_rows: &Tensor) -> Result<Tensor> {
        let (batch, run, width) = x.dims3()?;
        // LayerNorm is per token, so it can follow the gather.
        let pooled = x
            .reshape((batch * run, width))?
            .index_select(pooled_rows, 0)?;
        self.ln_final
            .forward(&pooled)?
            .matmul(&self.projection.t()?)
    }
}

/// What the text tower's first block receives.
#[derive(Debug, Clone)]
pub struct TextStem {
    /// `[batch, run, width]`, `run` the batch's last pooled position + 1.
    pub x: Tensor,
    /// `[batch]` u32: the flat row (`b * run + position`) that each text is pooled at.
    pub pooled_rows: Tensor,
}
