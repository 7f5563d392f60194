//! The `gclip` command: argument parsing and printing; the work is done by the `gclip` library.

mod add;
mod bench;
mod embed;
mod index;
mod progress;
mod search;
mod serve;

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
    /// Measure image and text throughput of an architecture on random weights.
    Bench(bench::BenchArgs),
    /// Index a folder of images into a collection (incremental).
    Index(index::IndexArgs),
    /// Add documents (JSONL or CSV) to a collection; existing ids are replaced.
    Add(add::AddArgs),
    /// Change fields of a document by id.
    Update(add::UpdateArgs),
    /// Delete documents by id.
    Delete(add::DeleteArgs),
    /// Search a collection by text, image, weighted parts, with filters.
    Search(search::SearchArgs),
    /// Measure HNSW recall and latency against exact search on random vectors.
    SearchBench(search::SearchBenchArgs),
    /// Serve collections over HTTP: JSON API and a web page.
    Serve(serve::ServeArgs),
    /// Measure server requests/s under concurrent clients against the engine's batched throughput.
    ServeBench(serve::ServeBenchArgs),
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
        Command::Bench(args) => bench::run(args),
        Command::Index(args) => index::run(args),
        Command::Add(args) => add::run(args),
        Command::Update(args) => add::run_update(args),
        Command::Delete(args) => add::run_delete(args),
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
