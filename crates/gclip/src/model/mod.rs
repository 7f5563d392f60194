//! The CLIP dual encoder: configs, weights, layers and the two towers.
//!
//! The tower code sees only gclip's own tensor names and [`config::ClipConfig`]; which file
//! format and naming scheme the weights came from is resolved once, in [`weights`].

pub mod clip;
pub mod config;
pub mod kernels;
pub mod layers;
pub mod text;
pub mod vision;
pub mod weights;

use std::path::PathBuf;

pub use clip::{Clip, Embeddings};
pub use config::{ClipConfig, TextConfig, TextPooling, VisionConfig};
pub use kernels::Activation;
pub use weights::{NamingScheme, Weights};

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("config {source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    #[error(
        "unknown architecture `{name}`: use one of {known}, or a path to an open_clip config JSON"
    )]
    UnknownArchitecture { name: String, known: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("checkpoint {path} has no tensor `{name}` (needed for {needed_for}); is it the right checkpoint for this architecture?")]
    MissingTensor {
        name: String,
        path: PathBuf,
        needed_for: String,
    },
    #[error("checkpoint {path}: tensor `{name}` has shape {found:?}, the architecture needs {expected:?}; is it the right checkpoint for this architecture?")]
    TensorShape {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("invalid model input: {0}")]
    Input(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
}

impl ModelError {
    fn input(e: candle_core::Error) -> Self {
        ModelError::Input(e.to_string())
    }
}
