//! Evaluation metrics.
//!
//! * [`retrieval`]: text→image and image→text Recall@K, mean and median rank (open_clip).
//! * [`ranking`]: graded-relevance ranking metrics of GCL's evaluation (nDCG, MAP, MRR, recall,
//!   precision, ERR, RBP), TREC qrels and run files.

pub mod ranking;
pub mod retrieval;
