//! `gclip tokenize` and `gclip preprocess`: the model's inputs exactly as it receives them.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use gclip::input::items::{resolve_image_path, ItemKind};
use gclip::input::pipeline::InputPipeline;

use crate::embed::{collect_items, describe};
use crate::wording::count;

#[derive(Args)]
pub struct InputArgs {
    #[arg(long, default_value = gclip::source::DEFAULT_MODEL, help = crate::source::MODEL_HELP)]
    model: String,
    /// open_clip architecture name (ViT-B-32, …) or config JSON, for checkpoint files.
    // Only with --model: on its own it would be silently ignored.
    #[arg(long, requires = "model")]
    arch: Option<String>,
    /// Input list: JSONL ({"text": …} or {"image": path} per line) or plain lines.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Items given directly (texts, or image files and directories).
    items: Vec<String>,
    /// Output .npy file.
    #[arg(long)]
    output: PathBuf,
}

fn pipeline(args: &InputArgs) -> Result<InputPipeline> {
    if args.output.extension().is_none_or(|e| e != "npy") {
        bail!("--output {} must end in .npy", args.output.display());
    }
    let source = crate::source::resolve(&args.model, args.arch.as_deref())?;
    let d = source.describe()?;
    Ok(InputPipeline::new(
        d.convention,
        d.dir.as_deref(),
        d.config.text.context_length,
        d.config.vision.image_size,
    )?)
}

/// Token ids as int64 `[N, context_length]`.
pub fn tokenize(args: InputArgs) -> Result<()> {
    let pipeline = pipeline(&args)?;
    let tokenizer = pipeline
        .tokenizer()
        .map_err(|e| anyhow::anyhow!("this model has no tokenizer: {e}"))?;
    let items = collect_items(args.input.as_deref(), &args.items, ItemKind::Text)?;
    let mut failed = Vec::new();
    let texts: Vec<&str> = items
        .iter()
        .filter_map(|i| match &i.value {
            Ok(t) => Some(t.as_str()),
            Err(e) => {
                failed.push(format!("  {}: {e}", describe(i, "")));
                None
            }
        })
        .collect();
    let ids = tokenizer.encode_batch(&texts);
    let width = tokenizer.context_length();
    let flat: Vec<i64> = ids.iter().flatten().map(|&v| v as i64).collect();
    Tensor::from_vec(flat, (ids.len(), width), &Device::Cpu)?
        .write_npy(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    finish(items.len(), failed, ("text", "texts"), &args.output)
}

/// Normalised pixels as float32 `[N, 3, H, W]`.
pub fn preprocess(args: InputArgs) -> Result<()> {
    let pipeline = pipeline(&args)?;
    let pre = pipeline.preprocessor();
    let items = collect_items(args.input.as_deref(), &args.items, ItemKind::Image)?;
    let paths: Vec<Option<PathBuf>> = items
        .iter()
        .map(|i| {
            i.value
                .as_ref()
                .ok()
                .map(|v| resolve_image_path(v, args.input.as_deref()))
        })
        .collect();
    let good: Vec<PathBuf> = paths.iter().flatten().cloned().collect();
    let mut results = pre.batch_from_paths(&good).into_iter();
    let mut failed = Vec::new();
    let mut data = Vec::new();
    let mut rows = 0;
    for (item, path) in items.iter().zip(&paths) {
        let raw = item.value.as_deref().unwrap_or("");
        match (path, &item.value) {
            (Some(_), _) => match results.next() {
                Some(Ok(px)) => {
                    data.extend_from_slice(&px);
                    rows += 1;
                }
                Some(Err(e)) => failed.push(format!("  {}: {e}", describe(item, raw))),
                None => failed.push(format!("  {}: not processed", describe(item, raw))),
            },
            (None, Err(e)) => failed.push(format!("  {}: {e}", describe(item, raw))),
            (None, Ok(_)) => failed.push(format!("  {}: not processed", describe(item, raw))),
        }
    }
    let s = pre.config().crop_size;
    Tensor::from_vec(data, (rows, 3, s, s), &Device::Cpu)?
        .write_npy(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    finish(items.len(), failed, ("image", "images"), &args.output)
}

/// `what`: the item's noun, singular and plural.
fn finish(
    total: usize,
    failed: Vec<String>,
    what: (&str, &str),
    output: &std::path::Path,
) -> Result<()> {
    eprintln!(
        "wrote {} of {} to {}",
        total - failed.len(),
        count(total, what.0, what.1),
        output.display()
    );
    if !failed.is_empty() {
        eprintln!("{} failed:\n{}", failed.len(), failed.join("\n"));
        bail!(
            "{} of {} failed",
            failed.len(),
            count(total, "input", "inputs")
        );
    }
    Ok(())
}
