//! CLIP byte-level BPE tokenizer, in the open_clip and transformers conventions.
