//! Image decoding and preprocessing, in the open_clip and transformers conventions.
//! Turning raw text and image files into exactly the token ids and pixel tensors that the
//! reference pipeline of each model produces.

pub mod decode;
pub mod image;
pub mod items;
pub mod text_clean;
pub mod jpeg;
pub mod resample;
pub mod tokenizer;
