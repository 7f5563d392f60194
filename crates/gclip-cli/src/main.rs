//! The `gclip` command: argument parsing and printing; the work is done by the `gclip` library.

mod args;
mod bench;
mod classify;
mod embed;
mod eval;
mod progress;
mod similarity;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gclip",
    version,
    about = "CLIP and GCL in one binary: embed, classify, train and search without Python",
    after_help = "Examples:
  gclip classify --labels \"a photo of a cat\" \"a photo of a dog\" cat.jpg
  gclip similarity --text \"a photo of a cat\" --image cat.jpg --image dog.jpg
  gclip embed text --model ./clip-vit-base-patch32 --input captions.txt --output captions.npy
  gclip eval zeroshot --model ./clip-vit-base-patch32 --dataset ./imagenette/val"
)]
struct Cli {
    /// Cap the number of CPU threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where the model runs: `cpu` (the only device this build supports).
    #[arg(long, global = true, default_value = "cpu", value_parser = parse_device)]
    device: DeviceArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts or images into .npy or .jsonl.
    Embed(embed::EmbedArgs),
    /// Zero-shot classification: score images against labels or captions.
    Classify(classify::ClassifyArgs),
    /// Similarity matrix between texts and images, in any mix.
    Similarity(similarity::SimilarityArgs),
    /// Evaluate a model on a dataset (zero-shot classification accuracy).
    Eval(eval::EvalArgs),
    /// Measure image and text throughput of an architecture on random weights.
    Bench(bench::BenchArgs),
}

/// A device named by `--device`.
#[derive(Clone, Copy)]
enum DeviceArg {
    Cpu,
}

fn parse_device(s: &str) -> Result<DeviceArg, String> {
    match s.to_ascii_lowercase().as_str() {
        "cpu" => Ok(DeviceArg::Cpu),
        other => Err(format!(
            "`{other}` is not available: this gclip runs on the CPU only (use --device cpu)"
        )),
    }
}

impl DeviceArg {
    fn device(self) -> candle_core::Device {
        match self {
            DeviceArg::Cpu => candle_core::Device::Cpu,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GCLIP_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(n) = cli.threads {
        // Read by rayon's global pool and by candle's matmul; set before either starts.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    let result: Result<()> = match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Classify(args) => classify::run(args, &cli.device.device()),
        Command::Similarity(args) => similarity::run(args, &cli.device.device()),
        Command::Eval(args) => eval::run(args, &cli.device.device()),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
