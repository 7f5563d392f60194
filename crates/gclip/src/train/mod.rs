//! Training: CLIP's contrastive loss and Generalized Contrastive Learning (GCL), from scratch or
//! from a checkpoint, on the same model code that serves inference.
//!
//! * [`data`], [`augment`]: training pairs (JSONL, Marqo-GS) and open_clip's train transform.
//! * [`loader`]: batches built on a worker thread through a bounded queue.
//! * [`config`]: the `train.toml` file and the assembly of a run; [`evaluate`]: metrics of
//!   a model on held-out pairs.
//! * [`checkpoint`]: atomic training checkpoints with optimiser state.
//! * [`export`]: Hugging Face and open_clip model layouts, atomic file writes.
//! * [`params`]: the model's parameters by name; trainable ones become `Var`s in place.
//! * [`init`]: open_clip's random initialisation, seeded.
//! * [`loss`]: CLIP and GCL objectives on embeddings.
//! * [`optim`]: AdamW with open_clip's decay groups, schedules, gradient clipping.
//! * [`precision`]: fp32 or bf16 mixed-precision products (`train.precision`).
//! * [`rng`]: the seedable generator behind every random draw of training.
//! * [`step`]: a batch's loss and gradients, plain or with gradient caching.
//! * [`trainer`]: the loop, its log, evaluations, checkpoints and exact resumption.

pub mod augment;
pub mod bench;
pub mod blockwise;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod export;
pub mod gs_ranking;
pub mod init;
pub mod loader;
pub mod loss;
pub mod optim;
pub mod params;
pub mod precision;
pub mod rng;
pub mod run;
pub mod step;
pub mod trainer;

#[cfg(test)]
mod gradcheck;

use std::path::PathBuf;

use crate::model::ModelError;

/// Everything that can stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("data: {0}")]
    Data(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A model loaded to embed with could not be read, or cannot embed text.
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    /// A tensor operation failed (shown without any captured backtrace; see
    /// [`crate::model::error_message`]).
    #[error("{}", crate::model::error_message(.0))]
    Tensor(candle_core::Error),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Tensor(e)
    }
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        TrainError::Io {
            path: path.into(),
            message: e.to_string(),
        }
    }
}
