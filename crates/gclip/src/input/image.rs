//! Image decoding and preprocessing, in the open_clip and transformers conventions.
