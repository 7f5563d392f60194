//! `gclip bench-train`

use anyhow::Result;
use clap::Args;
use gclip::model::backward::KeptPrecision;
use gclip::model::ClipConfig;
use gclip::train::bench::{TrainBenchPlan, TrainBenchStep};
use gclip::train::params::Freeze;
use gclip::train::precision::TrainPrecision;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  gclip --threads 2 bench-train --arch ViT-B-32 --batch 64 --steps 3 --tokens 77 --json\n  gclip bench-train --batch 64 --activation-checkpointing --precision bf16\n  gclip bench-train --batch 1024 --grad-cache-chunk 64 --activation-checkpointing --steps 1"
)]
pub struct BenchTrainArgs {
    /// Architecture name (ViT-B-32, ViT-L-14, …) or an open_clip config JSON.
    #[arg(long, default_value = "ViT-B-32")]
    arch: String,
    /// Pairs per contrastive batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed optimiser steps, after one untimed warm-up step.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Tokens per caption, start and end tokens included (77: what open_clip always computes).
    #[arg(long, default_value_t = 77)]
    tokens: usize,
    /// Recompute each residual block in the backward pass instead of keeping its activations.
    #[arg(long)]
    activation_checkpointing: bool,
    /// With --activation-checkpointing, the share of each tower's blocks recomputed, in (0, 1]
    /// (the others keep their activations: faster, more memory).
    #[arg(long, default_value_t = 1.0)]
    checkpoint_share: f64,
    /// Precision of the linear layers' products: fp32, or bf16 (mixed precision, f32 weights).
    #[arg(long, default_value = "fp32")]
    precision: TrainPrecision,
    /// Precision the blocks keep their products' outputs in between the forward and backward
    /// passes: f32, or bf16 (half their memory, as PyTorch's bf16 autocast keeps them);
    /// by default that of --precision.
    #[arg(long)]
    kept_activations: Option<KeptPrecision>,
    /// Gradient caching: embed and back-propagate the batch in chunks of this many pairs.
    #[arg(long)]
    grad_cache_chunk: Option<usize>,
    /// Freeze a tower: `image` or `text` (to see where time and memory go).
    #[arg(long, value_parser = ["image", "text"])]
    lock: Option<String>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchTrainArgs) -> Result<()> {
    let config = ClipConfig::open_clip(&args.arch)?;
    let kept = args
        .kept_activations
        .unwrap_or_else(|| args.precision.kept_activations());
    let plan = TrainBenchPlan {
        config,
        batch: args.batch,
        steps: args.steps,
        tokens: args.tokens,
        activation_checkpointing: args.activation_checkpointing,
        checkpoint_share: args.checkpoint_share,
        grad_cache_chunk: args.grad_cache_chunk,
        precision: args.precision,
        kept_precision: kept,
        freeze: Freeze {
            lock_image: args.lock.as_deref() == Some("image"),
            lock_text: args.lock.as_deref() == Some("text"),
            ..Default::default()
        },
    };
    let threads = candle_core::utils::get_num_threads();
    let mib = |m: Option<f64>| m.map_or("-".to_string(), |m| format!("{m:.0}"));
    let json = args.json;
    let result = gclip::train::bench::run(&plan, |s: &TrainBenchStep| {
        if json {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["event"] = "step".into();
            println!("{v}");
        } else {
            let what = if s.step == 0 { " (warm-up)" } else { "" };
            println!(
                "step {}{what}: {:.2} s, loss {:.4}, resident {} MiB",
                s.step,
                s.seconds,
                s.loss,
                mib(s.rss_mib)
            );
        }
    })?;
    if json {
        let mut v = serde_json::to_value(&result)?;
        v["impl"] = "gclip".into();
        v["arch"] = args.arch.clone().into();
        v["batch"] = args.batch.into();
        v["tokens"] = args.tokens.into();
        v["steps"] = args.steps.into();
        v["threads"] = threads.into();
        v["precision"] = args.precision.name().into();
        v["activation_checkpointing"] = args.activation_checkpointing.into();
        v["checkpoint_share"] = args.checkpoint_share.into();
        v["kept_activations"] = kept.name().into();
        v["grad_cache_chunk"] = args.grad_cache_chunk.into();
        println!("{v}");
    } else {
        println!(
            "gclip {} {}, batch {}, {} tokens, {threads} threads{}, activations kept in {kept}: {:.2} samples/s, {:.2} s/step, peak resident {} MiB",
            args.arch,
            args.precision,
            args.batch,
            args.tokens,
            if args.activation_checkpointing { ", activation checkpointing" } else { "" },
            result.samples_per_s,
            result.seconds_per_step,
            mib(result.peak_rss_mib)
        );
    }
    Ok(())
}
