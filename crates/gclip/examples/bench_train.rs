//! Training throughput: samples/s of full optimiser steps (forward, CLIP loss, backward,
//! AdamW) of a randomly initialised CLIP, and the process's peak resident memory.
//!
//!     cargo run --release -p gclip --example bench_train -- ViT-B-32 64 3 77
//!     (arch name or open_clip config JSON, batch, timed steps, text length incl. start/end)
//!
//! One untimed warm-up step comes first. Threads: RAYON_NUM_THREADS. Text rows are
//! `gclip::bench::synthetic_ids` of the given length (the tower runs only up to the end token,
//! so a length below 77 measures real captions; 77 is what open_clip always computes).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use gclip::model::ClipConfig;
use gclip::train::init::init_open_clip;
use gclip::train::loss::{FieldKind, FieldSpec, GclSpec, ScoreToWeight};
use gclip::train::optim::{AdamW, AdamWConfig};
use gclip::train::params::{Freeze, ParamSet};
use gclip::train::rng::Rng;
use gclip::train::step::{loss_and_grads, Batch, FieldBatch, FieldData};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).map_or("ViT-B-32", String::as_str);
    let batch: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let steps: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let tokens: usize = args.get(4).map_or(Ok(77), |s| s.parse())?;
    let config = ClipConfig::open_clip(arch)?;
    let mut clip = init_open_clip(&config, 0, &Device::Cpu, DType::F32)?;
    // BENCH_LOCK=image|text freezes a tower (to see where time and memory go).
    let lock = std::env::var("BENCH_LOCK").unwrap_or_default();
    let freeze = Freeze {
        lock_image: lock == "image",
        lock_text: lock == "text",
        ..Default::default()
    };
    let params = ParamSet::attach(&mut clip, &freeze)?;
    let mut opt = AdamW::new(&params, AdamWConfig::default());
    let s = config.vision.image_size;
    let mut rng = Rng::new(1);
    let px: Vec<f32> = (0..batch * 3 * s * s)
        .map(|_| rng.normal() as f32)
        .collect();
    let spec = GclSpec {
        score_to_weight: ScoreToWeight::None,
        query_fields: vec![FieldSpec {
            name: "text".into(),
            kind: FieldKind::Text,
            weight: 1.0,
        }],
        doc_fields: vec![FieldSpec {
            name: "image".into(),
            kind: FieldKind::Image,
            weight: 1.0,
        }],
        extra_terms: vec![],
        mask_shared: false,
        weight_floor: 0.0,
    };
    let b = Batch {
        query: vec![FieldBatch {
            name: "text".into(),
            data: FieldData::Text(gclip::bench::synthetic_ids(&config, batch, tokens)),
            present: None,
        }],
        doc: vec![FieldBatch {
            name: "image".into(),
            data: FieldData::Image(Tensor::from_vec(px, (batch, 3, s, s), &Device::Cpu)?),
            present: None,
        }],
        weights: vec![1.0; batch],
        query_keys: (0..batch as u64).collect(),
        doc_keys: (0..batch as u64).collect(),
    };
    if std::env::var("BENCH_PROBE").is_ok() {
        // Resident memory around one image-tower forward and backward.
        let FieldData::Image(px) = &b.doc[0].data else {
            unreachable!()
        };
        eprintln!("probe: model + optimiser state: {:.0} MiB", rss_mib());
        let emb = clip.vision.forward(px)?;
        eprintln!(
            "probe: after image forward with graph: {:.0} MiB",
            rss_mib()
        );
        let grads = emb.sum_all()?.backward()?;
        eprintln!(
            "probe: after backward (graph and grads alive): {:.0} MiB",
            rss_mib()
        );
        let ids: Vec<_> = grads.get_ids().copied().collect();
        let mut bytes = 0usize;
        for id in &ids {
            if let Some(g) = grads.get_id(*id) {
                bytes += g.elem_count() * 4;
            }
        }
        eprintln!(
            "probe: grad store {} tensors, {:.0} MiB",
            ids.len(),
            bytes as f64 / 1048576.0
        );
        drop(grads);
        drop(emb);
        eprintln!("probe: after dropping both: {:.0} MiB", rss_mib());
        return Ok(());
    }
    let mut times = Vec::new();
    for i in 0..=steps {
        let t0 = Instant::now();
        let before = rss_mib();
        let out = loss_and_grads(&clip, &params, &spec, &b)?;
        let after_grads = (rss_mib(), peak_rss_mib());
        opt.step(&params, &out.grads, 1e-5, None)?;
        let dt = t0.elapsed().as_secs_f64();
        eprintln!(
            "memory (MiB): {before:.0} before the step, {:.0} after backward (peak so far {:.0}), {:.0} after the update",
            after_grads.0,
            after_grads.1,
            rss_mib()
        );
        if i > 0 {
            times.push(dt);
        }
        eprintln!("step {i}: {dt:.2} s, loss {:.4}", out.loss);
    }
    let total: f64 = times.iter().sum();
    println!(
        "{{\"impl\": \"gclip\", \"arch\": \"{arch}\", \"batch\": {batch}, \"tokens\": {tokens}, \"threads\": {}, \"steps\": {steps}, \"samples_per_s\": {:.3}, \"s_per_step\": {:.3}, \"peak_rss_mib\": {:.0}}}",
        candle_core::utils::get_num_threads(),
        (batch * steps) as f64 / total,
        total / steps as f64,
        peak_rss_mib()
    );
    Ok(())
}
