//! The CLIP dual encoder: configs, weights, layers and the two towers.
//!
//! The tower code sees only gclip's own tensor names and [`config::ClipConfig`]; which file
//! format and naming scheme the weights came from is resolved once, in [`weights`].

pub mod backward;
pub mod clip;
pub mod config;
pub mod converted;
pub mod kernels;
pub mod layers;
pub mod lowp;
pub mod mixed;
pub mod outin;
pub mod packed;
pub mod precision;
pub mod text;
pub mod vision;
pub mod weights;

use std::path::PathBuf;

pub use clip::{Clip, Embeddings};
pub use config::{ClipConfig, TextConfig, TextPooling, VisionConfig};
pub use converted::ConvertedCache;
pub use kernels::Activation;
pub use precision::{DenseProducts, KernelChoice, Precision};
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
    #[error("checkpoint {path}: tensor `{name}` holds {count} non-finite values (NaN or infinity) among {total}; the checkpoint is damaged or its training diverged")]
    NonFinite {
        name: String,
        path: PathBuf,
        count: usize,
        total: usize,
    },
    #[error("invalid model input: {0}")]
    Input(String),
    /// A precision, device or operation this model or machine cannot run.
    #[error("{0}")]
    Unsupported(String),
    /// A tensor operation failed. Shown without the backtrace candle may have captured (with
    /// `RUST_BACKTRACE` set), and not exposed as a `source`, so that no error chain prints one.
    #[error("{}", error_message(.0))]
    Tensor(candle_core::Error),
    /// The model's files could not be fetched from where they are kept (a model hub, say).
    /// The model layer does not know the fetchers, so the error is theirs, shown as it is;
    /// callers that need its kind downcast it.
    #[error(transparent)]
    Fetch(Box<dyn std::error::Error + Send + Sync>),
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Tensor(e)
    }
}

impl ModelError {
    fn input(e: candle_core::Error) -> Self {
        ModelError::Input(error_message(&e))
    }
}

/// The message of a candle error without the backtraces candle captures when `RUST_BACKTRACE`
/// (or `RUST_LIB_BACKTRACE`) is set: user-facing errors carry what went wrong, never a stack.
pub fn error_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => error_message(inner),
        E::Context { inner, context } => format!("{context}: {}", error_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), error_message(inner)),
        other => other.to_string(),
    }
}
