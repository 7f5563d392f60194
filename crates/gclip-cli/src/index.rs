//! `gclip index DIR --collection C`, and what the collection commands share: opening or
//! creating a collection, loading its model, printing what was ingested.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use gclip::embed::Embedder;
use gclip::input::items::{walk_images, IMAGE_TYPES};
use gclip::model::Precision;
use gclip_search::encoder::load_model;
use gclip_search::ingest::{index_directory, IndexOptions, IngestReport};
use gclip_search::{model_identity, Collection, EmbedSpec, Location};

use crate::progress::Progress;
use crate::wording::{about, count};

/// How a collection is found, or created on first use.
#[derive(Args, Clone, Default)]
pub struct ModelArgs {
    /// Model for a new collection: a Hugging Face model directory, or an open_clip checkpoint
    /// file with --arch. An existing collection remembers its model; giving it again checks it.
    #[arg(long)]
    pub model: Option<String>,
    /// open_clip architecture name (ViT-B-32, …) or config JSON, for checkpoint files.
    // Only with --model: on its own it would be silently ignored.
    #[arg(long, requires = "model")]
    pub arch: Option<String>,
    /// Precision of the model: fp32, bf16 or int8. A new collection records it; an existing
    /// one runs its recorded precision unless this asks for another (with a warning).
    #[arg(long)]
    pub precision: Option<Precision>,
}

/// Opens an existing collection, for the commands that cannot create one (search, update,
/// delete): the error for a directory that is not a collection says how to create one.
pub fn open_existing_collection(dir: &Path) -> Result<Collection> {
    Ok(Collection::open(dir)?)
}

/// Opens the collection in `dir`, creating it with `--model` and `spec` when it does not exist.
pub fn open_collection(
    dir: &Path,
    model: &ModelArgs,
    spec: Option<EmbedSpec>,
) -> Result<Collection> {
    let identity = match &model.model {
        Some(m) => Some(
            model_identity(
                m,
                model.arch.as_deref(),
                model.precision.unwrap_or_default(),
            )?
            .0,
        ),
        None => None,
    };
    if identity.is_none() && !Collection::exists(dir) {
        bail!(
            "{} is not a collection yet: give --model (and --arch for a checkpoint file) to create it",
            Location::shown(dir)
        );
    }
    Collection::open_or_create(dir, identity, spec)
        .with_context(|| format!("opening collection {}", Location::shown(dir)))
}

/// Loads the model a collection was created with, in the collection's precision unless
/// `precision` asks for another (which is said on stderr: the vectors then differ slightly).
pub fn load_embedder(
    collection: &Collection,
    batch_size: usize,
    precision: Option<Precision>,
) -> Result<Embedder> {
    let recorded = collection.info().model.precision;
    let precision = precision.unwrap_or(recorded);
    if precision != recorded {
        eprintln!(
            "note: collection {} holds {recorded} vectors; this command embeds in {precision}",
            collection.location()
        );
    }
    Ok(load_model(
        &collection.info().model,
        Some(precision),
        batch_size,
    )?)
}

/// Prints an ingestion summary (JSON with `--json`) and fails when some inputs failed.
pub fn finish_report(report: &IngestReport, collection: &Collection, json: bool) -> Result<()> {
    collection.flush()?;
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        eprintln!(
            "{} written, {} unchanged, {} touched, {} removed, {} failed; collection {} holds {}",
            report.written,
            report.unchanged,
            report.touched,
            report.removed,
            report.failed.len(),
            collection.location(),
            count(collection.len(), "document", "documents")
        );
    }
    if !report.failed.is_empty() {
        let lines: Vec<String> = report
            .failed
            .iter()
            .map(|(what, e)| format!("  {}", about(what, e)))
            .collect();
        eprintln!("{} failed:\n{}", report.failed.len(), lines.join("\n"));
        bail!("{} failed", count(report.failed.len(), "input", "inputs"));
    }
    Ok(())
}

#[derive(Args)]
#[command(after_help = "Examples:
  gclip index ~/Pictures --collection photos --model ./clip-vit-base-patch32
  gclip index ~/Pictures --collection photos --prune      # again: only new/changed files")]
pub struct IndexArgs {
    /// Folder of images, walked recursively (JPEG, PNG, WebP, GIF, BMP, TIFF).
    dir: PathBuf,
    /// Collection directory (created on first use, with --model), or a collection on a Milvus
    /// server: milvus://HOST:PORT/NAME (docs/MILVUS.md).
    #[arg(long)]
    collection: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Images per committed batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Remove documents whose file under DIR has vanished.
    #[arg(long)]
    prune: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: IndexArgs) -> Result<()> {
    if !args.dir.is_dir() {
        bail!("{} is not a directory", args.dir.display());
    }
    // Checked before the collection is opened, so that a wrong folder creates no empty
    // collection. index_directory walks the folder again: a walk reads directory entries
    // only, little next to embedding.
    if walk_images(&args.dir)?.is_empty() {
        bail!(
            "{} holds no images ({IMAGE_TYPES}, searched recursively): nothing to index",
            args.dir.display()
        );
    }
    let collection = open_collection(&args.collection, &args.model, Some(EmbedSpec::image()))
        .or_else(|e| {
            // An existing collection with another spec may still have an image field.
            if Collection::exists(&args.collection) {
                open_collection(&args.collection, &args.model, None)
            } else {
                Err(e)
            }
        })?;
    // A Milvus collection has no directory to record the folder in; a server names its
    // folders with --files-root.
    if let Some(dir) = collection.dir() {
        gclip_search::roots::record_roots(dir, std::slice::from_ref(&args.dir))?;
    }
    let embedder = load_embedder(&collection, 32, args.model.precision)?;
    let mut progress: Option<Progress> = None;
    let report = index_directory(
        collection.store(),
        &embedder,
        &args.dir,
        &IndexOptions {
            batch_size: args.batch_size,
            prune: args.prune,
        },
        &mut |c| {
            let p = progress.get_or_insert_with(|| Progress::new(c.total as u64, "indexing"));
            p.set(c.done as u64);
            tracing::info!(
                done = c.done,
                total = c.total,
                generation = c.generation,
                "committed"
            );
        },
    )?;
    if let Some(p) = progress {
        p.finish();
    }
    finish_report(&report, &collection, args.json)
}
