//! The CLIP dual encoder: configs, weights, layers and the two towers.
