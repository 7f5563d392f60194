//! gclip: CLIP and Generalized Contrastive Learning in Rust.
//!
//! Data flows one way: [`input`] (tokens, pixels) → [`model`] (the two towers) → embeddings → tasks ([`zeroshot`], [`eval`]).

pub mod allocator;
pub mod bench;
pub mod embed;
pub mod environment;
pub mod eval;
pub mod family;
pub mod fsutil;
pub mod http;
pub mod hub;
pub mod input;
pub mod model;
pub mod output;
pub mod source;
pub mod train;
pub mod zeroshot;
