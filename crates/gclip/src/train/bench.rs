//! Training throughput, the numbers `gclip bench-train` prints: samples/s of full optimiser
//! steps (forward, CLIP loss, backward, AdamW) of a randomly initialised CLIP, and the
//! process's peak resident memory.
//!
//! Text rows are [`crate::bench::synthetic_ids`] of the given length (the text tower runs only
//! up to the end token, so a length below 77 measures real captions; 77 is what open_clip
//! always computes); pixels are standard normal.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::init::init_open_clip;
use super::loss::{FieldKind, FieldSpec, GclSpec, ScoreToWeight};
use super::optim::{AdamW, AdamWConfig};
use super::params::{Freeze, ParamSet};
use super::precision::TrainPrecision;
use super::rng::Rng;
use super::step::{loss_and_grads_planned, Batch, FieldBatch, FieldData, MemoryPlan};
use super::TrainError;
use crate::model::backward::KeptPrecision;
use crate::model::ClipConfig;

/// What to measure.
#[derive(Debug, Clone)]
pub struct TrainBenchPlan {
    pub config: ClipConfig,
    pub batch: usize,
    /// Timed steps, after one untimed warm-up step.
    pub steps: usize,
    /// Tokens per caption, start and end tokens included.
    pub tokens: usize,
    pub activation_checkpointing: bool,
    /// With checkpointing, the share of each tower's blocks recomputed, in (0, 1].
    pub checkpoint_share: f64,
    pub grad_cache_chunk: Option<usize>,
    pub precision: TrainPrecision,
    /// The precision the blocks keep their products' outputs in ([`KeptPrecision`]).
    pub kept_precision: KeptPrecision,
    pub freeze: Freeze,
}

/// One step (the warm-up is step 0).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainBenchStep {
    pub step: usize,
    pub seconds: f64,
    pub loss: f64,
    /// Resident memory after the step, MiB (`None` where the OS does not say).
    pub rss_mib: Option<f64>,
}

/// The whole measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainBenchResult {
    pub samples_per_s: f64,
    pub seconds_per_step: f64,
    /// The process's peak resident memory so far, MiB (`None` where the OS does not say).
    pub peak_rss_mib: Option<f64>,
}

/// A field of `/proc/self/status` in MiB (`VmRSS`, `VmHWM`); `None` off Linux.
pub fn process_memory_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs `1 + plan.steps` optimiser steps on one synthetic batch, reporting each to `on_step`.
pub fn run(
    plan: &TrainBenchPlan,
    mut on_step: impl FnMut(&TrainBenchStep),
) -> Result<TrainBenchResult, TrainError> {
    if plan.batch < 2 {
        return Err(TrainError::Config(format!(
            "a contrastive batch needs at least 2 pairs, got {}",
            plan.batch
        )));
    }
    if plan.steps == 0 {
        return Err(TrainError::Config("time at least one step".into()));
    }
    MemoryPlan::check_share(plan.checkpoint_share, plan.activation_checkpointing, "")
        .map_err(TrainError::Config)?;
    if plan.grad_cache_chunk == Some(0) {
        return Err(TrainError::Config(
            "grad_cache_chunk must be at least 1".into(),
        ));
    }
    let config = &plan.config;
    crate::allocator::retain_freed_memory();
    let mut clip = init_open_clip(config, 0, &Device::Cpu, DType::F32)?;
    clip.set_dense_products(plan.precision.products());
    let params = ParamSet::attach(&mut clip, &plan.freeze)?;
    let mut optimizer = AdamW::new(&params, AdamWConfig::default());
    let size = config.vision.image_size;
    let n = plan.batch;
    let mut rng = Rng::new(1);
    let pixels: Vec<f32> = (0..n * 3 * size * size)
        .map(|_| rng.normal() as f32)
        .collect();
    let field = |name: &str, kind| FieldSpec {
        name: name.into(),
        kind,
        weight: 1.0,
    };
    let spec = GclSpec {
        score_to_weight: ScoreToWeight::None,
        query_fields: vec![field("text", FieldKind::Text)],
        doc_fields: vec![field("image", FieldKind::Image)],
        extra_terms: vec![],
        mask_shared: false,
        weight_floor: 0.0,
    };
    let batch = Batch {
        query: vec![FieldBatch {
            name: "text".into(),
            data: FieldData::Text(crate::bench::synthetic_ids(config, n, plan.tokens)),
            present: None,
        }],
        doc: vec![FieldBatch {
            name: "image".into(),
            data: FieldData::Image(Tensor::from_vec(pixels, (n, 3, size, size), &Device::Cpu)?),
            present: None,
        }],
        weights: vec![1.0; n],
        query_keys: (0..n as u64).collect(),
        doc_keys: (0..n as u64).collect(),
    };
    let mut timed = 0.0;
    for step in 0..=plan.steps {
        let start = Instant::now();
        let out = loss_and_grads_planned(
            &clip,
            &params,
            &spec,
            &batch,
            MemoryPlan {
                grad_cache_chunk: plan.grad_cache_chunk,
                activation_checkpointing: plan.activation_checkpointing,
                checkpoint_share: plan.checkpoint_share,
                kept_precision: plan.kept_precision,
            },
        )?;
        optimizer.step(&params, &out.grads, 1e-5, None)?;
        drop(out.grads);
        let seconds = start.elapsed().as_secs_f64();
        if step > 0 {
            timed += seconds;
        }
        on_step(&TrainBenchStep {
            step,
            seconds,
            loss: out.loss,
            rss_mib: process_memory_mib("VmRSS"),
        });
    }
    Ok(TrainBenchResult {
        samples_per_s: (n * plan.steps) as f64 / timed,
        seconds_per_step: timed / plan.steps as f64,
        peak_rss_mib: process_memory_mib("VmHWM"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::gradcheck::tiny_config;

    #[test]
    fn reports_every_step_and_refuses_bad_plans() {
        let plan = TrainBenchPlan {
            config: tiny_config(false),
            batch: 4,
            steps: 2,
            tokens: 5,
            activation_checkpointing: true,
            checkpoint_share: 0.5,
            grad_cache_chunk: Some(3),
            precision: TrainPrecision::Bf16,
            kept_precision: KeptPrecision::F32,
            freeze: Freeze::default(),
        };
        let mut steps = Vec::new();
        let result = run(&plan, |s| steps.push(s.clone())).unwrap();
        assert_eq!(steps.iter().map(|s| s.step).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(steps.iter().all(|s| s.loss.is_finite() && s.seconds > 0.0));
        assert!(result.samples_per_s > 0.0 && result.samples_per_s.is_finite());
        if cfg!(target_os = "linux") {
            assert!(result.peak_rss_mib.is_some_and(|m| m > 1.0));
        }
        for bad in [
            TrainBenchPlan {
                batch: 1,
                ..plan.clone()
            },
            TrainBenchPlan {
                steps: 0,
                ..plan.clone()
            },
            TrainBenchPlan {
                grad_cache_chunk: Some(0),
                ..plan.clone()
            },
            TrainBenchPlan {
                checkpoint_share: 0.0,
                ..plan.clone()
            },
            TrainBenchPlan {
                checkpoint_share: 1.5,
                ..plan.clone()
            },
            TrainBenchPlan {
                checkpoint_share: f64::NAN,
                ..plan.clone()
            },
            TrainBenchPlan {
                activation_checkpointing: false,
                ..plan.clone()
            },
        ] {
            assert!(matches!(run(&bad, |_| {}), Err(TrainError::Config(_))));
        }
    }
}
