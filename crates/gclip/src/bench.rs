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
    /// CPU milliseconds of the whole process per batch (all threads, the mean over the timed
    /// runs): the figure to compare on a machine that other work loads, where wall time
    /// stretches with the load and CPU time does not. `None` where the OS does not say.
    pub cpu_ms_per_batch: Option<f64>,
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

/// A model with random weights, as fast to run as a real one of the same architecture: loaded
/// for inference, so fp32 linear weights run in place as a checkpoint's do.
pub fn random_model(
    config: &ClipConfig,
    device: &Device,
    dtype: DType,
) -> Result<Clip, ModelError> {
    let weights = Weights::random(device, dtype).for_training(false);
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

/// CPU time of this process so far (user + system, all threads), from `/proc/self/stat`
/// (Linux; clock ticks of 1/100 s, the fixed `USER_HZ` of Linux's ABI).
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) close with ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields of the line, 12th and 13th after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// What [`time_it`] measured: the median wall time of a run, and the process's mean CPU time
/// per run.
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

/// Runs `f` once to warm up, then until `min_time` has passed (at least three times).
fn time_it(
    min_time: Duration,
    mut f: impl FnMut() -> Result<(), ModelError>,
) -> Result<Timing, ModelError> {
    f()?;
    let mut runs = Vec::new();
    let start = Instant::now();
    let cpu_start = process_cpu_time();
    while runs.len() < 3 || start.elapsed() < min_time {
        let t = Instant::now();
        f()?;
        runs.push(t.elapsed());
    }
    let cpu = match (cpu_start, process_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) / runs.len() as u32),
        _ => None,
    };
    runs.sort();
    Ok(Timing {
        wall: runs[runs.len() / 2],
        cpu,
    })
}

impl BenchResult {
    fn new(tower: &'static str, batch: usize, tokens: Option<usize>, t: Timing) -> Self {
        Self {
            tower,
            batch,
            tokens,
            items_per_s: batch as f64 / t.wall.as_secs_f64(),
            ms_per_batch: t.wall.as_secs_f64() * 1e3,
            cpu_ms_per_batch: t.cpu.map(|c| c.as_secs_f64() * 1e3),
        }
    }
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
            let t = time_it(plan.min_time, || {
                model.encode_pixels(&pixels, true).map(|_| ())
            })?;
            push(BenchResult::new("image", batch, None, t));
        }
    }
    if plan.texts {
        for &len in &plan.token_lengths {
            for &batch in &plan.batches {
                let ids = synthetic_ids(c, batch, len);
                let t = time_it(plan.min_time, || {
                    model.encode_text_ids(&ids, true).map(|_| ())
                })?;
                push(BenchResult::new("text", batch, Some(len), t));
            }
        }
    }
    Ok(results)
}
