//! The `gclip` command: argument parsing and printing; the work is done by the `gclip` library.

mod add;
mod args;
mod bench;
mod bench_train;
mod check;
mod classify;
mod embed;
mod eval;
mod eval_ranking;
mod index;
mod inputs;
mod interrupt;
mod progress;
mod search;
mod serve;
mod similarity;
mod source;
mod train;
mod wording;

use std::io::IsTerminal;

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
    /// Merge the .npy files of `gclip embed --shard` runs into one, in input order.
    Merge(embed::MergeArgs),
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
    /// Zero-shot classification: score images against labels or captions.
    Classify(classify::ClassifyArgs),
    /// Similarity matrix between texts and images, in any mix.
    Similarity(similarity::SimilarityArgs),
    /// Measure image and text throughput of an architecture on random weights.
    Bench(bench::BenchArgs),
    /// Measure training throughput (samples/s) and peak memory on random weights.
    BenchTrain(bench_train::BenchTrainArgs),
    /// Index a folder of images into a collection (incremental).
    Index(index::IndexArgs),
    /// Add documents (JSONL or CSV) to a collection; existing ids are replaced.
    Add(add::AddArgs),
    /// Change fields of a document by id.
    Update(add::UpdateArgs),
    /// Delete documents by id.
    Delete(add::DeleteArgs),
    /// Verify a collection (database, documents, indexes); --repair rebuilds the derived indexes.
    Check(check::CheckArgs),
    /// Search a collection by text, image, weighted parts, with filters.
    Search(search::SearchArgs),
    /// Measure HNSW recall and latency against exact search on random vectors.
    SearchBench(search::SearchBenchArgs),
    /// Serve collections over HTTP: JSON API and a web page.
    Serve(serve::ServeArgs),
    /// Measure server requests/s under concurrent clients against the engine's batched throughput.
    ServeBench(serve::ServeBenchArgs),
    /// Train a CLIP model with CLIP's loss or GCL (from scratch or from a checkpoint).
    Train(train::TrainArgs),
    /// Write a training checkpoint as a transformers or open_clip model.
    Export(train::ExportArgs),
    /// Evaluate: zero-shot accuracy, retrieval (R@K) or ranking (nDCG, MAP, MRR, ERR, RBP; also TREC files).
    #[command(subcommand)]
    Eval(EvalTask),
}

/// `gclip eval …`: one sub-command per kind of evaluation.
#[derive(Subcommand)]
enum EvalTask {
    /// Zero-shot classification accuracy (top-1, top-5) on an image-folder dataset.
    Zeroshot(eval::ZeroShotArgs),
    #[command(flatten)]
    Metrics(eval_ranking::EvalCommand),
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
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("GCLIP_LOG").unwrap_or_else(|_| "warn".into());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // On a terminal, colours and times help; in a pipe or a log file they are noise
    // (escape codes, and a time the file's own records already carry).
    if std::io::stderr().is_terminal() {
        log.init();
    } else {
        log.with_ansi(false).without_time().init();
    }
    // Every command that runs batches reuses its freed buffers instead of faulting in fresh
    // pages for each one (see the module's figures).
    gclip::allocator::retain_freed_memory();
    if let Some(n) = cli.threads {
        // Read by rayon's global pool and by candle's matmul; set before either starts.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    let result: Result<()> = match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Merge(args) => embed::run_merge(args),
        Command::Tokenize(args) => inputs::tokenize(args),
        Command::Preprocess(args) => inputs::preprocess(args),
        Command::Classify(args) => classify::run(args, &cli.device.device()),
        Command::Similarity(args) => similarity::run(args, &cli.device.device()),
        Command::Bench(args) => bench::run(args),
        Command::BenchTrain(args) => bench_train::run(args),
        Command::Train(args) => match train::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Export(args) => train::export(args),
        Command::Eval(EvalTask::Zeroshot(args)) => eval::zeroshot(args, &cli.device.device()),
        Command::Eval(EvalTask::Metrics(cmd)) => eval_ranking::run(cmd),
        Command::Index(args) => index::run(args),
        Command::Add(args) => add::run(args),
        Command::Update(args) => add::run_update(args),
        Command::Delete(args) => add::run_delete(args),
        Command::Check(args) => match check::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Search(args) => search::run(args),
        Command::SearchBench(args) => search::run_bench(args),
        Command::Serve(args) => serve::run(args),
        Command::ServeBench(args) => serve::run_bench(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
