//! Turning raw text and image files into exactly the token ids and pixel tensors that the
//! reference pipeline of each model produces.

pub mod image;
pub mod items;
pub mod text_clean;
pub mod tokenizer;
