//! `gclip check COLLECTION [--repair]`: verify a collection and rebuild its derived indexes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use gclip_search::check::{check_collection, CheckOptions};
use gclip_search::sqlite::StoreOptions;
use gclip_search::Location;

#[derive(Args)]
#[command(after_help = "Examples:
  gclip check products
  gclip check products --repair
  gclip check products --repair --quarantine
Checks SQLite's integrity, the generation counter, every document (fields parse; vector of the
collection's dimension, finite, unit length) and the HNSW and lexical indexes against the
database. --repair rebuilds the HNSW and lexical indexes from the database; it never changes or
deletes documents (bad ones are listed by id) unless --quarantine is given: then each bad
document is first written in full (id, stored fields, source path, problems) to
COLLECTION/quarantine/generation-G-TIME.jsonl, synced, and only then removed. Exit status: 0 when no problem remains, 1 otherwise.
The collection must not be open in another process (stop `gclip serve` first).

  gclip check milvus://127.0.0.1:19530/products
A collection on a Milvus server (docs/MILVUS.md): checks that it exists, that its description
names its model and embedding spec, its fields and vector dimension, its vector index (HNSW,
inner product, built), every document (fields an object; vector finite, unit length) and the
server's count. --repair is refused there: Milvus keeps its own indexes.")]
pub struct CheckArgs {
    /// Collection directory, or milvus://HOST:PORT/NAME.
    collection: PathBuf,
    /// Rebuild the derived indexes (HNSW, lexical) from the database, then check again.
    #[arg(long)]
    repair: bool,
    /// With --repair: move bad documents out into COLLECTION/quarantine/ so the rest opens.
    #[arg(long, requires = "repair")]
    quarantine: bool,
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    let options = CheckOptions {
        repair: args.repair,
        quarantine: args.quarantine,
        store: StoreOptions::default(),
    };
    let shown = Location::shown(&args.collection);
    let report = check_collection(&args.collection, &options)
        .with_context(|| format!("checking {shown}"))?;
    println!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
