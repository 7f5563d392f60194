//! `gclip bench`

use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use gclip::bench::{random_model, BenchPlan, BenchResult};
use gclip::model::{ClipConfig, KernelChoice, Precision};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  gclip bench --arch ViT-B-32 --batch 1,8,32 --tokens 16,77 --json\n  gclip bench --precision fp32,bf16,int8 --batch 32 --image-only"
)]
pub struct BenchArgs {
    /// Architecture name (ViT-B-32, ViT-L-14, …) or an open_clip config JSON.
    #[arg(long, default_value = "ViT-B-32")]
    arch: String,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch: Vec<usize>,
    /// Text lengths in tokens (including start and end tokens), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,77")]
    tokens: Vec<usize>,
    /// Minimum seconds timed per configuration.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Only the image tower.
    #[arg(long, conflicts_with = "text_only")]
    image_only: bool,
    /// Only the text tower.
    #[arg(long)]
    text_only: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Precisions to time, comma-separated (fp32, bf16, int8).
    #[arg(long, value_delimiter = ',', default_value = "fp32")]
    precision: Vec<Precision>,
    /// Run bf16/int8 on the portable kernels that every CPU has, as a CPU without AVX2 or
    /// AVX-512 would (the default is the fastest this CPU runs).
    #[arg(long)]
    portable_kernels: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let config = ClipConfig::open_clip(&args.arch)?;
    let fp32 =
        random_model(&config, &Device::Cpu, DType::F32).context("building the random model")?;
    let plan = BenchPlan {
        batches: args.batch,
        token_lengths: args.tokens,
        min_time: Duration::from_secs_f64(args.seconds),
        images: !args.text_only,
        texts: !args.image_only,
    };
    let threads = candle_core::utils::get_num_threads();
    for precision in args.precision {
        let mut model = fp32.clone();
        let kernels = if args.portable_kernels {
            KernelChoice::Portable
        } else {
            KernelChoice::Fastest
        };
        model.convert(precision, kernels)?;
        let kernels = model.kernel_description();
        if !args.json {
            println!(
                "gclip {} {precision}, {threads} threads, kernels: {kernels}",
                args.arch
            );
            println!(
                "{:<6} {:>6} {:>7} {:>12} {:>12}",
                "tower", "batch", "tokens", "items/s", "ms/batch"
            );
        }
        let arch = args.arch.clone();
        let json = args.json;
        gclip::bench::run(&model, &plan, |r: &BenchResult| {
            if json {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["impl"] = "gclip".into();
                v["arch"] = arch.clone().into();
                v["threads"] = threads.into();
                v["precision"] = precision.name().into();
                v["kernels"] = kernels.clone().into();
                println!("{v}");
            } else {
                let tokens = r.tokens.map_or("-".to_string(), |t| t.to_string());
                println!(
                    "{:<6} {:>6} {:>7} {:>12.1} {:>12.1}",
                    r.tower, r.batch, tokens, r.items_per_s, r.ms_per_batch
                );
            }
        })?;
    }
    Ok(())
}
