//! `gclip add C docs.jsonl|docs.csv`, `gclip update C ID`, `gclip delete C ID…`

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use gclip_search::ingest::read_documents;
use gclip_search::{EmbedSpec, Fields};

use gclip_search::encoder::LazyEncoder;

use crate::index::{
    finish_report, load_embedder, open_collection, open_existing_collection, ModelArgs,
};
use crate::progress::Progress;

#[derive(Args)]
#[command(after_help = "Examples:
  gclip add products docs.jsonl --model ./clip-vit-base-patch32 --embed title:0.3,image:0.7
  gclip add products more.csv
Each JSONL line is an object: {\"id\": \"p1\", \"title\": \"red dress\", \"image\": \"img/p1.jpg\",
\"price\": 40, \"tags\": [\"summer\"]}. Documents with an existing id replace it.")]
pub struct AddArgs {
    /// Collection directory (created on first use, with --model), or a collection on a Milvus
    /// server: milvus://HOST:PORT/NAME (docs/MILVUS.md).
    collection: PathBuf,
    /// Documents: .jsonl (one object per line) or .csv (header row; `tags` split on `|`).
    file: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// For a new collection: the embedded fields and weights, `FIELD[:WEIGHT],…`.
    #[arg(long, default_value = "image")]
    embed: String,
    /// Fields that hold image paths (the others are text).
    #[arg(long = "image-field", default_value = "image")]
    image_fields: Vec<String>,
    /// Documents per committed batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Print one line per committed batch on stdout: `committed N LAST_ID`.
    #[arg(long)]
    print_commits: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: AddArgs) -> Result<()> {
    let spec = EmbedSpec::parse(&args.embed, &args.image_fields)?;
    let spec_arg = if gclip_search::Collection::exists(&args.collection) {
        None
    } else {
        Some(spec)
    };
    let collection = open_collection(&args.collection, &args.model, spec_arg)?;
    let inputs = read_documents(&args.file, &collection.info().spec)?;
    let embedder = load_embedder(&collection, 32, args.model.precision)?;
    let progress = Progress::new(inputs.len() as u64, "adding");
    let print_commits = args.print_commits;
    // The server may show the images of documents its operator added (thumbnails): add_local
    // records their folders.
    let report = collection.add_local(&embedder, inputs, args.batch_size, &mut |c| {
        progress.set(c.done as u64);
        if print_commits {
            println!(
                "committed {} {}",
                c.ids.len(),
                c.ids.last().map(String::as_str).unwrap_or("")
            );
        }
    })?;
    progress.finish();
    finish_report(&report, &collection, args.json)
}

#[derive(Args)]
#[command(after_help = "Example:
  gclip update products p1 --set '{\"price\": 35, \"title\": \"red summer dress\"}'
Fields given replace those of the document (null removes one); the vector is recomputed when
an embedded field changed.")]
pub struct UpdateArgs {
    /// Collection directory, or milvus://HOST:PORT/NAME.
    collection: PathBuf,
    /// Document id.
    id: String,
    /// JSON object of fields to set.
    #[arg(long)]
    set: String,
}

pub fn run_update(args: UpdateArgs) -> Result<()> {
    let collection = open_existing_collection(&args.collection)?;
    let patch: Fields = serde_json::from_str(&args.set).context("--set must be a JSON object")?;
    if collection.get(&args.id)?.is_none() {
        bail!(
            "no document with id {:?} in {}",
            args.id,
            // The collection as it names itself: a Milvus address without its token.
            collection.location()
        );
    }
    // The model is loaded only when an embedded field changes.
    let encoder = LazyEncoder::new(collection.info().model.clone(), None);
    let cwd = std::env::current_dir()?;
    let report = collection.update_local(&encoder, &args.id, &patch, &cwd)?;
    let embedded_changed = report.reembedded;
    collection.flush()?;
    eprintln!(
        "updated {}{}",
        args.id,
        if embedded_changed {
            " (re-embedded)"
        } else {
            ""
        }
    );
    Ok(())
}

#[derive(Args)]
#[command(after_help = "Example:
  gclip delete products p1 p2")]
pub struct DeleteArgs {
    /// Collection directory, or milvus://HOST:PORT/NAME.
    collection: PathBuf,
    /// Document ids.
    #[arg(required = true)]
    ids: Vec<String>,
}

pub fn run_delete(args: DeleteArgs) -> Result<()> {
    let collection = open_existing_collection(&args.collection)?;
    let r = collection.delete(&args.ids)?;
    collection.flush()?;
    eprintln!(
        "deleted {} of {}; {} documents left",
        r.count,
        args.ids.len(),
        collection.len()
    );
    Ok(())
}
