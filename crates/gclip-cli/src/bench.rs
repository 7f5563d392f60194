//! `gclip bench`

use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use gclip::bench::{random_model, BenchPlan, BenchResult};
use gclip::embed::LoadOptions;
use gclip::model::{Clip, ClipConfig, KernelChoice, Precision};
use gclip::source::ModelSource;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  gclip bench --arch ViT-B-32 --batch 1,8,32 --tokens 16,77 --json\n  gclip bench --precision fp32,bf16,int8 --batch 32 --image-only\n  gclip bench --model openai/clip-vit-base-patch32 --batch 1,32 --tokens 77"
)]
pub struct BenchArgs {
    /// Architecture name (ViT-B-32, ViT-L-14, …) or an open_clip config JSON: of the random
    /// weights, or of the --model checkpoint file. Default ViT-B-32.
    #[arg(long)]
    arch: Option<String>,
    /// Time a model's own weights, loaded as the task commands load them (fp32 weights used in
    /// place in a safetensors checkpoint or packed in the converted-weights cache, bf16/int8
    /// from that cache): a Hugging
    /// Face id or directory, or an open_clip checkpoint file with --arch. Default: random
    /// weights of --arch.
    #[arg(long)]
    model: Option<String>,
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
    /// Pack the fp32 weights for the f32 panel kernel before timing, as `gclip serve` does
    /// (on AVX2 CPUs other commands read them in place; on AVX-512 CPUs the first product packs
    /// them anyway)
    #[arg(long)]
    pack_f32: bool,
}

/// What is timed: random weights, converted to each precision, or a model's own, loaded in each.
enum Base {
    /// Boxed: a model is hundreds of bytes, the other variant a few dozen.
    Random(Box<Clip>),
    Load(ModelSource),
}

pub fn run(args: BenchArgs) -> Result<()> {
    let arch = args
        .model
        .clone()
        .unwrap_or_else(|| args.arch.clone().unwrap_or_else(|| "ViT-B-32".into()));
    let base = match &args.model {
        Some(model) => Base::Load(ModelSource::resolve(model, args.arch.as_deref())?),
        None => Base::Random(Box::new(
            random_model(&ClipConfig::open_clip(&arch)?, &Device::Cpu, DType::F32)
                .context("building the random model")?,
        )),
    };
    let plan = BenchPlan {
        batches: args.batch,
        token_lengths: args.tokens,
        min_time: Duration::from_secs_f64(args.seconds),
        images: !args.text_only,
        texts: !args.image_only,
    };
    let threads = candle_core::utils::get_num_threads();
    let kernels = if args.portable_kernels {
        KernelChoice::Portable
    } else {
        KernelChoice::Fastest
    };
    for precision in args.precision {
        let model = match &base {
            Base::Random(fp32) => {
                let mut model = Clip::clone(fp32);
                model.convert(precision, kernels)?;
                model
            }
            Base::Load(source) => {
                let options = LoadOptions {
                    precision,
                    kernels,
                    ..Default::default()
                };
                source
                    .load_in(&Device::Cpu, DType::F32, &options)
                    .with_context(|| format!("loading model {arch}"))?
                    .clip
            }
        };
        if args.pack_f32 {
            model.pack_f32_weights()?;
        }
        let kernels = model.kernel_description();
        if !args.json {
            println!("gclip {arch} {precision}, {threads} threads, kernels: {kernels}");
            println!(
                "{:<6} {:>6} {:>7} {:>12} {:>12} {:>12}",
                "tower", "batch", "tokens", "items/s", "ms/batch", "CPU ms/batch"
            );
        }
        let arch = arch.clone();
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
                let cpu = r
                    .cpu_ms_per_batch
                    .map_or("-".to_string(), |c| format!("{c:.1}"));
                println!(
                    "{:<6} {:>6} {:>7} {:>12.1} {:>12.1} {:>12}",
                    r.tower, r.batch, tokens, r.items_per_s, r.ms_per_batch, cpu
                );
            }
        })?;
    }
    Ok(())
}
