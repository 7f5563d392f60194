//! Evaluation, with metrics computed the way the reference benchmarks compute them.
//!
//! * [`zeroshot`]: zero-shot classification accuracy (top-1, top-5) on image-folder datasets.
//! * [`retrieval`]: text→image and image→text Recall@K, mean and median rank (open_clip).
//! * [`marqo_gs`]: Marqo-GS evaluation files (corpus, ground truth) and GCL's sampling of test
//!   queries.
//! * [`ranking`]: graded-relevance ranking metrics of GCL's evaluation (nDCG, MAP, MRR, recall,
//!   precision, ERR, RBP), TREC qrels and run files.

pub mod marqo_gs;
pub mod ranking;
pub mod retrieval;
pub mod zeroshot;
