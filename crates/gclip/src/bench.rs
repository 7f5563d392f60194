//! Throughput measurement of the two towers on random weights of a named architecture, the
//! numbers `gclip bench` prints and docs/BENCHMARKS.md records.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use crate::model::{Clip, ClipConfig, ModelError, Weights};

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    /// `"image"` or `"text"`.
    pub tower: &'static str,
    pub batch: usize,
    /// Tokens per text up to and including the end-of-text token; `None` for images.
    pub tokens: Option<usize>,
    pub items_per_s: f64,
    /// Milliseconds per batch (the median of the timed runs).
    pub ms_per_batch: f64,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub batches: Vec<usize>,
    pub token_lengths: Vec<usize>,
    /// Minimum timed duration per configuration.
    pub min_time: Duration,
    pub images: bool,
    pub texts: bool,
}

/// A model with random weights, as fast to run as a real one of the same architecture.
pub fn random_model(
    config: &ClipConfig,
    device: &Device,
    dtype: DType,
) -> Result<Clip, ModelError> {
    let weights = Weights::random(device, dtype);
    Ok(Clip::load(config, &weights)?.0)
}

/// Token rows of `len` tokens (start, random ids, end-of-text) padded to the context length.
pub fn synthetic_ids(config: &ClipConfig, batch: usize, len: usize) -> Vec<Vec<u32>> {
    let ctx = config.text.context_length;
    let len = len.clamp(2, ctx);
    let vocab = config.text.vocab_size as u32;
    let (sot, eot) = (vocab.saturating_sub(2), vocab.saturating_sub(1));
    (0..batch)
        .map(|b| {
            let mut row = vec![0u32; ctx];
            row[0] = sot;
            for (i, slot) in row.iter_mut().enumerate().take(len - 1).skip(1) {
                *slot = 1 + ((b * 7919 + i * 104_729) as u32 % (vocab.saturating_sub(3)).max(1));
            }
            row[len - 1] = eot;
            row
        })
        .collect()
}

/// Runs `f` once to warm up, then until `min_time` has passed (at least three times); returns
/// the median duration.
fn time_it(
    min_time: Duration,
    mut f: impl FnMut() -> Result<(), ModelError>,
) -> Result<Duration, ModelError> {
    f()?;
    let mut runs = Vec::new();
    let start = Instant::now();
    while runs.len() < 3 || start.elapsed() < min_time {
        let t = Instant::now();
        f()?;
        runs.push(t.elapsed());
    }
    runs.sort();
    Ok(runs[runs.len() / 2])
}

/// Measures the towers of `model` as `plan` says, calling `report` after each configuration.
pub fn run(
    model: &Clip,
    plan: &BenchPlan,
    mut report: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>, ModelError> {
    let mut results = Vec::new();
    let mut push = |r: BenchResult| {
        report(&r);
        results.push(r);
    };
    let c = &model.config;
    if plan.images {
        for &batch in &plan.batches {
            let s = c.vision.image_size;
            let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), model.device())?;
            let d = time_it(plan.min_time, || {
                model.encode_pixels(&pixels, true).map(|_| ())
            })?;
            push(BenchResult {
                tower: "image",
                batch,
                tokens: None,
                items_per_s: batch as f64 / d.as_secs_f64(),
                ms_per_batch: d.as_secs_f64() * 1e3,
            });
        }
    }
    if plan.texts {
        for &len in &plan.token_lengths {
            for &batch in &plan.batches {
                let ids = synthetic_ids(c, batch, len);
                let d = time_it(plan.min_time, || {
                    model.encode_text_ids(&ids, true).map(|_| ())
                })?;
                push(BenchResult {
                    tower: "text",
                    batch,
                    tokens: Some(len),
                    items_per_s: batch as f64 / d.as_secs_f64(),
                    ms_per_batch: d.as_secs_f64() * 1e3,
                });
            }
        }
    }
    Ok(results)
}
