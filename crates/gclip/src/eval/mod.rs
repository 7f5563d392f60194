//! Evaluation: metrics computed the way the reference benchmarks compute them.

pub mod zeroshot;
