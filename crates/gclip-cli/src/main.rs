//! The `gclip` command: argument parsing and printing; the work is done by the `gclip` library.

mod bench;
mod embed;
mod inputs;
mod progress;
mod source;
mod eval_ranking;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gclip",
    version,
    about = "CLIP and GCL in one binary: embed, classify, train and search without Python",
    after_help = "Example:\n  gclip embed text --model ./clip-vit-base-patch32 --input captions.txt --output captions.npy"
)]
struct Cli {
    /// Cap the number of CPU threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts or images into .npy or .jsonl.
    Embed(embed::EmbedArgs),
    /// Write token ids exactly as the model receives them (int64 [N, context_length] .npy).
    #[command(
        after_help = "Example:\n  gclip tokenize --model ./clip-vit-base-patch32 --input captions.txt --output ids.npy"
    )]
    Tokenize(inputs::InputArgs),
    /// Write preprocessed pixels exactly as the model receives them (float32 [N, 3, H, W] .npy).
    #[command(
        after_help = "Example:\n  gclip preprocess --model ./clip-vit-base-patch32 --input images.txt --output pixels.npy"
    )]
    Preprocess(inputs::InputArgs),
    /// Measure image and text throughput of an architecture on random weights.
    Bench(bench::BenchArgs),
    /// Train a CLIP model with CLIP's loss or GCL (from scratch or from a checkpoint).
    Train(train::TrainArgs),
    /// Write a training checkpoint as a transformers or open_clip model.
    Export(train::ExportArgs),
    /// Evaluate: retrieval (R@K) or ranking (nDCG, MAP, MRR, ERR, RBP; also TREC files).
    #[command(subcommand)]
    Eval(eval_ranking::EvalCommand),
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
        Command::Tokenize(args) => inputs::tokenize(args),
        Command::Preprocess(args) => inputs::preprocess(args),
        Command::Bench(args) => bench::run(args),
        Command::Train(args) => train::run(args),
        Command::Export(args) => train::export(args),
        Command::Eval(cmd) => eval_ranking::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
