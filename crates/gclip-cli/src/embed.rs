//! `gclip embed text|image`

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use gclip::embed::Embedder;
use gclip::input::items::{
    is_image_path, read_items, resolve_image_path, walk_images, InputItem, ItemKind, IMAGE_TYPES,
};
use gclip::model::Embeddings;
use gclip::output::{merge, sidecar_path, write_embeddings, FileFormat, RowId, Shard};
use gclip_search::remote::{is_url, RemoteImages};

use crate::progress::Progress;
use crate::wording::count;

#[derive(Clone, Copy, ValueEnum)]
pub enum What {
    Text,
    Image,
}

#[derive(Args)]
#[command(after_help = "Examples:
  gclip embed text --input captions.txt --output captions.npy   # openai/clip-vit-base-patch32
  gclip embed image --model laion/CLIP-ViT-B-32-laion2B-s34B-b79K photos/ --output photos.npy
  gclip embed text --model ./clip-vit-base-patch32 --input captions.txt --output captions.npy
  gclip embed image --model ViT-B-32.pt --arch ViT-B-32 photos/ --output photos.jsonl
  gclip embed text --model ./clip-vit-base-patch32 \"a cat\" \"a dog\" --output pets.npy
  gclip embed image photos/ --shard 0/4 --output part0.npy   # then: gclip merge part*.npy --output all.npy
  gclip embed image photos/ --output photos.parquet   # index, line, image, embedding (list<float32>)
An .npy output comes with X.ids.jsonl: per row, its input index, list line and text or image.
A .parquet output holds the same columns and the embedding, as clip-retrieval's users load it.")]
pub struct EmbedArgs {
    /// What to embed.
    what: What,
    #[arg(long, default_value = gclip::source::DEFAULT_MODEL, help = crate::source::MODEL_HELP)]
    model: String,
    /// open_clip architecture name (ViT-B-32, …) or config JSON, for checkpoint files.
    // Only with --model: on its own it would be silently ignored.
    #[arg(long, requires = "model")]
    arch: Option<String>,
    /// Input list: JSONL ({"text": …} or {"image": path} per line) or plain lines.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Items given directly: texts, or image files and directories (walked recursively).
    items: Vec<String>,
    /// Output file: .npy (float32 [N, D], rows of the inputs that succeeded, in input order,
    /// with an .ids.jsonl sidecar), .parquet (the same rows with their ids, the embedding as a
    /// list<float32> column) or .jsonl (each input beside its vector or its error).
    #[arg(long)]
    output: PathBuf,
    /// Keep the raw projections instead of L2-normalising them.
    #[arg(long)]
    no_normalize: bool,
    /// Items per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Precision of the transformer weights: fp32 (exact), bf16 or int8.
    #[arg(long, default_value = "fp32")]
    precision: gclip::model::Precision,
    /// Embed only shard I of N of the input list (0-based; a contiguous, deterministic part),
    /// e.g. one job per shard on a cluster; `gclip merge` joins the shards' .npy files.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
}

enum OutputFormat {
    /// `.npy` with its sidecar, or `.parquet`: the rows that succeeded, with their ids.
    Rows,
    /// Every input beside its vector or its error.
    Jsonl,
}

fn output_format(path: &Path) -> Result<OutputFormat> {
    if FileFormat::of(path).is_some() {
        return Ok(OutputFormat::Rows);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => Ok(OutputFormat::Jsonl),
        _ => bail!(
            "--output {} must end in .npy, .parquet or .jsonl",
            path.display()
        ),
    }
}

/// Collects the items of the list file and of the command line, in that order. When nothing is
/// left, the error names what was given and was empty (a list without items, a folder without
/// images), or asks for input when none was given.
pub fn collect_items(
    input: Option<&Path>,
    direct: &[String],
    kind: ItemKind,
) -> Result<Vec<InputItem>> {
    let mut empty_sources = Vec::new();
    let mut items = match input {
        Some(p) => read_items(p, kind)?,
        None => Vec::new(),
    };
    if let (Some(p), true) = (input, items.is_empty()) {
        empty_sources.push(format!("--input {} holds no items", p.display()));
    }
    for d in direct {
        if kind == ItemKind::Image && Path::new(d).is_dir() {
            let files = walk_images(Path::new(d))?;
            if files.is_empty() {
                empty_sources.push(format!("folder {d} holds no images ({IMAGE_TYPES})"));
            }
            items.extend(files.into_iter().map(|f| InputItem {
                line: 0,
                value: Ok(f.display().to_string()),
            }));
        } else {
            if kind == ItemKind::Text && looks_like_an_image_file(d) {
                bail!(
                    "{d} is an image file, which as a text would be read as its name: for the \
                     image use `gclip embed image {d}` (a text that is a file name can go in an \
                     --input list, taken as written)"
                );
            }
            items.push(InputItem {
                line: 0,
                value: Ok(d.clone()),
            });
        }
    }
    if items.is_empty() {
        if empty_sources.is_empty() {
            bail!("nothing to embed: give --input FILE or items on the command line");
        }
        bail!("nothing to embed: {}", empty_sources.join("; "));
    }
    Ok(items)
}

/// An existing file whose extension is an image type: given to a text command, it is almost
/// certainly meant as an image.
fn looks_like_an_image_file(value: &str) -> bool {
    let path = Path::new(value);
    path.is_file() && is_image_path(path)
}

/// How an item is named in messages: its value, and its line when it came from a file.
pub fn describe(item: &InputItem, raw: &str) -> String {
    if item.line > 0 {
        format!("line {} ({raw})", item.line)
    } else {
        raw.to_string()
    }
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let format = output_format(&args.output)?;
    let kind = match args.what {
        What::Text => ItemKind::Text,
        What::Image => ItemKind::Image,
    };
    let all = collect_items(args.input.as_deref(), &args.items, kind)?;
    // Items keep their index in the whole list, whichever shard this is.
    let range = match args.shard {
        Some(s) => s.range(all.len()),
        None => 0..all.len(),
    };
    let first = range.start;
    let items = &all[range];
    let source = crate::source::resolve(&args.model, args.arch.as_deref())?;
    let options = gclip::embed::LoadOptions {
        precision: args.precision,
        ..Default::default()
    };
    let mut embedder = Embedder::load_with(&source, &Device::Cpu, options)
        .with_context(|| format!("loading model {}", args.model))?;
    embedder.batch_size = args.batch_size.max(1);
    let normalize = !args.no_normalize;

    // Items whose line was unusable fail before the model sees anything.
    let mut errors: Vec<Option<String>> = items
        .iter()
        .map(|i| i.value.as_ref().err().cloned())
        .collect();
    let good: Vec<usize> = (0..items.len()).filter(|&i| errors[i].is_none()).collect();
    let values: Vec<&str> = good
        .iter()
        .map(|&i| items[i].value.as_deref().unwrap_or(""))
        .collect();
    let progress = Progress::new(good.len() as u64, "embedding");
    let dim = embedder.clip().config.embed_dim;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; items.len()];
    match kind {
        ItemKind::Text => {
            let e = embedder.embed_texts(&values, normalize, &|n| progress.set(n as u64))?;
            for (row, &i) in e.rows().zip(&good) {
                vectors[i] = Some(row.to_vec());
            }
        }
        ItemKind::Image => {
            // URLs are fetched into the image cache first, as `search --image` and `add` do;
            // one that cannot be fetched fails alone.
            let urls: Vec<&str> = values.iter().copied().filter(|v| is_url(v)).collect();
            let mut fetched = RemoteImages::shared().fetch_all(&urls).into_iter();
            // (index into `good`, local file) of the images that reach the model.
            let mut files: Vec<(usize, PathBuf)> = Vec::with_capacity(values.len());
            for (k, v) in values.iter().enumerate() {
                if !is_url(v) {
                    files.push((k, resolve_image_path(v, args.input.as_deref())));
                    continue;
                }
                match fetched.next() {
                    Some(Ok(path)) => files.push((k, path)),
                    Some(Err(e)) => errors[good[k]] = Some(e),
                    None => errors[good[k]] = Some(format!("{v}: not fetched")),
                }
            }
            let paths: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
            let r = embedder.embed_image_files(&paths, normalize, &|n| progress.set(n as u64))?;
            for (row, &f) in r.embeddings.rows().zip(&r.indices) {
                vectors[good[files[f].0]] = Some(row.to_vec());
            }
            for (f, e) in r.failures {
                errors[good[files[f].0]] = Some(e.to_string());
            }
        }
    }
    progress.finish();

    match format {
        OutputFormat::Rows => {
            let data: Vec<f32> = vectors.iter().flatten().flatten().copied().collect();
            let ids: Vec<RowId> = items
                .iter()
                .enumerate()
                .filter(|(i, _)| vectors[*i].is_some())
                .map(|(i, item)| RowId {
                    index: first + i,
                    line: item.line,
                    kind,
                    value: item.value.clone().unwrap_or_default(),
                })
                .collect();
            write_embeddings(&args.output, &Embeddings { dim, data }, &ids, kind)?;
        }
        OutputFormat::Jsonl => {
            let file = std::fs::File::create(&args.output)
                .with_context(|| format!("creating {}", args.output.display()))?;
            let mut w = std::io::BufWriter::new(file);
            for (i, item) in items.iter().enumerate() {
                let mut obj = serde_json::Map::new();
                let value = item.value.clone().unwrap_or_default();
                obj.insert("index".into(), (first + i).into());
                obj.insert(kind.field().into(), value.into());
                if item.line > 0 {
                    obj.insert("line".into(), item.line.into());
                }
                match (&vectors[i], &errors[i]) {
                    (Some(v), _) => obj.insert("embedding".into(), v.clone().into()),
                    (None, Some(e)) => obj.insert("error".into(), e.clone().into()),
                    (None, None) => obj.insert("error".into(), "not embedded".into()),
                };
                writeln!(w, "{}", serde_json::Value::Object(obj))?;
            }
            w.flush()?;
        }
    }
    let failed: Vec<String> = items
        .iter()
        .zip(&errors)
        .filter_map(|(item, e)| {
            e.as_ref().map(|e| {
                let raw = item.value.as_deref().unwrap_or("");
                // Image errors begin with the file they are about: not named twice.
                match (e.starts_with(raw) && !raw.is_empty(), item.line) {
                    (true, 0) => format!("  {e}"),
                    (true, line) => format!("  line {line}: {e}"),
                    (false, _) => format!("  {}: {e}", describe(item, raw)),
                }
            })
        })
        .collect();
    let ok = items.len() - failed.len();
    let shard = match args.shard {
        Some(s) => format!(" (shard {s} of {} inputs)", all.len()),
        None => String::new(),
    };
    let noun = format!("{}s", kind.field());
    eprintln!(
        "embedded {ok} of {}{shard} into {}",
        count(items.len(), kind.field(), &noun),
        args.output.display()
    );
    if !failed.is_empty() {
        eprintln!("{} failed:\n{}", failed.len(), failed.join("\n"));
        bail!(
            "{} of {} failed",
            failed.len(),
            count(items.len(), "input", "inputs")
        );
    }
    Ok(())
}

#[derive(Args)]
#[command(after_help = "Examples:
  gclip merge part0.npy part1.npy part2.npy part3.npy --output photos.npy
  gclip merge part*.parquet --output photos.parquet
Each .npy part's rows are named by its X.ids.jsonl sidecar (written by gclip embed), each
.parquet part's by its own columns; parts of both formats may be mixed. The merged rows are in
input order, as one run over the whole list writes them.")]
pub struct MergeArgs {
    /// The shards' files (.npy with their .ids.jsonl sidecars, or .parquet), in any order.
    #[arg(required = true)]
    parts: Vec<PathBuf>,
    /// The merged file: .npy (its sidecar is written beside it) or .parquet.
    #[arg(long)]
    output: PathBuf,
}

pub fn run_merge(args: MergeArgs) -> Result<()> {
    let Some(format) = FileFormat::of(&args.output) else {
        bail!(
            "--output {} must end in .npy or .parquet",
            args.output.display()
        );
    };
    let (embeddings, ids) = merge(&args.parts)?;
    // Shards of no rows name no kind; such a merge holds none either.
    let kind = ids.first().map_or(ItemKind::Text, |id| id.kind);
    write_embeddings(&args.output, &embeddings, &ids, kind)?;
    let sidecar = match format {
        FileFormat::Npy => format!(" (ids in {})", sidecar_path(&args.output).display()),
        FileFormat::Parquet => String::new(),
    };
    eprintln!(
        "merged {} rows from {} files into {}{sidecar}",
        ids.len(),
        args.parts.len(),
        args.output.display(),
    );
    Ok(())
}
