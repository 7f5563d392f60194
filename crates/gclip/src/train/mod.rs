//! Training: CLIP's contrastive loss and Generalized Contrastive Learning (GCL), from scratch or
//! from a checkpoint, on the same model code that serves inference.
//!
//! * [`params`]: the model's parameters by name; trainable ones become `Var`s in place.
//! * [`init`]: open_clip's random initialisation, seeded.
//! * [`loss`]: CLIP and GCL objectives on embeddings.
//! * [`rng`]: the seedable generator behind every random draw of training.

pub mod init;
pub mod loss;
pub mod params;
pub mod rng;

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
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
