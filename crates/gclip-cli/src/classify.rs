//! `gclip classify`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use gclip::zeroshot::{classify_with, ZeroShotClassifier};

use crate::args::{
    collect_images, looks_like_image, positive_count, ModelArgs, StageProgress, TemplateArgs,
};
use crate::wording::count;

#[derive(Args)]
#[command(after_help = "Examples:
  gclip classify --labels \"a photo of a cat\" \"a photo of a dog\" cat.jpg
  gclip classify --model ./clip-vit-base-patch32 --labels cat dog bird \\
      --templates openai-imagenet --json photos/
  gclip classify --model marqo-gcl-vitb32.pt --arch ViT-B-32 --labels-file labels.txt \\
      --template \"a photo of a {}.\" --logit-scale 10 --input images.txt

Images may follow the labels directly: the trailing values that name existing files or
directories, or end in an image extension, are the images (or put them after `--`).")]
pub struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Labels or captions to score each image against.
    #[arg(long, num_args = 1.., value_name = "LABEL")]
    labels: Vec<String>,
    /// A file with one label per line (blank lines skipped).
    #[arg(long, value_name = "FILE")]
    labels_file: Option<PathBuf>,
    #[command(flatten)]
    templates: TemplateArgs,
    /// Image files and directories (walked recursively).
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,
    /// A list of images: JSONL ({"image": path} per line) or plain lines.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Labels shown per image in the table.
    #[arg(long, default_value_t = 5, value_parser = positive_count)]
    top_k: usize,
    /// One JSON object per line and image, all labels, most probable first:
    /// {"image": PATH, "labels": [{"label": L, "probability": P, "cosine": C}, …]}.
    #[arg(long)]
    json: bool,
    /// Multiply cosine similarities by this instead of the checkpoint's exp(logit_scale).
    #[arg(long, value_name = "X")]
    logit_scale: Option<f32>,
}

/// The labels from --labels and --labels-file, and the images that trail --labels when none
/// were given elsewhere.
fn split_labels(args: &mut ClassifyArgs) -> Result<Vec<String>> {
    if args.images.is_empty() && args.input.is_none() {
        let n = args
            .labels
            .iter()
            .rev()
            .take_while(|v| looks_like_image(v))
            .count();
        let at = args.labels.len() - n;
        args.images = args.labels.split_off(at);
    }
    let mut labels = std::mem::take(&mut args.labels);
    if let Some(f) = &args.labels_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading labels from {}", f.display()))?;
        labels.extend(
            text.lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.trim().is_empty())
                .map(String::from),
        );
    }
    if labels.is_empty() {
        bail!("no labels: give --labels L1 L2 … or --labels-file FILE");
    }
    Ok(labels)
}

pub fn run(mut args: ClassifyArgs, device: &Device) -> Result<()> {
    let labels = split_labels(&mut args)?;
    let images = collect_images(args.input.as_deref(), &args.images)?;
    if images.is_empty() {
        bail!("no images to classify: give image files or directories after the labels, or --input FILE");
    }
    let templates = args.templates.resolve(crate::args::TemplateChoice::None);
    let embedder = args.model.load(device)?;
    let progress = StageProgress::new();
    let report = |s, d, t| progress.update(s, d, t);
    let classifier =
        ZeroShotClassifier::build(&embedder, &labels, &templates, args.logit_scale, &report)?;
    let paths: Vec<PathBuf> = images
        .iter()
        .filter_map(|i| i.path.as_ref().ok().cloned())
        .collect();
    let result = classify_with(&embedder, &classifier, &paths, &report)?;
    progress.finish();

    // Image errors name their file; list-line errors are named here.
    let mut rankings = result.rankings.into_iter();
    let mut failed = Vec::new();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (n, image) in images.iter().enumerate() {
        let ranked = match &image.path {
            Ok(_) => rankings
                .next()
                .context("internal error: fewer results than images")?
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{}: {e}", image.shown)),
        };
        match ranked {
            Ok(ranked) if args.json => {
                let obj = serde_json::json!({ "image": image.shown, "labels": ranked });
                writeln!(out, "{obj}")?;
            }
            Ok(ranked) => {
                if n > 0 {
                    writeln!(out)?;
                }
                writeln!(out, "{}", image.shown)?;
                for s in ranked.iter().take(args.top_k) {
                    writeln!(out, "  {:>7.2}%  {}", 100.0 * s.probability, s.label)?;
                }
            }
            Err(e) => {
                if args.json {
                    let obj = serde_json::json!({ "image": image.shown, "error": e });
                    writeln!(out, "{obj}")?;
                }
                failed.push(format!("  {e}"));
            }
        }
    }
    out.flush()?;
    if !failed.is_empty() {
        eprintln!(
            "classified {} of {}; {} failed:\n{}",
            images.len() - failed.len(),
            count(images.len(), "image", "images"),
            failed.len(),
            failed.join("\n")
        );
        bail!(
            "{} of {} failed",
            failed.len(),
            count(images.len(), "image", "images")
        );
    }
    Ok(())
}
