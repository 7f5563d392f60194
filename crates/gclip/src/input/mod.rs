//! Turning raw text and image files into exactly the token ids and pixel tensors that the
//! reference pipeline of each model produces.

pub mod decode;
pub mod format;
pub mod image;
pub mod items;
pub mod jpeg;
pub mod pipeline;
pub mod resample;
pub mod text_clean;
pub mod tokenizer;

/// Which reference pipeline a model follows for tokenisation and preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// open_clip checkpoints: open_clip's tokenizer and transforms.
    OpenClip,
    /// Hugging Face `CLIPModel` directories: transformers' tokenizer and image processor.
    Transformers,
}
