//! `gclip similarity`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use gclip::input::items::{read_items, ItemKind};
use gclip::zeroshot::{similarity, Item, Scores, SimilarityOptions};

use crate::args::{collect_images, ModelArgs, StageProgress};
use crate::wording::count;

#[derive(Clone, Copy, ValueEnum)]
enum Values {
    /// Cosine similarity, in [-1, 1].
    Cosine,
    /// logit_scale · cosine (CLIP's logits_per_image).
    Logits,
    /// Softmax of each row of logits.
    Probs,
}

#[derive(Args)]
#[command(after_help = "Examples:
  gclip similarity --text \"a photo of a cat\" --text \"a photo of a dog\" --image cat.jpg --image dog.jpg
  gclip similarity --model ./clip-vit-base-patch32 --image photos/ --json
  gclip similarity --text \"a cat\" --image cat.jpg --image dog.jpg --full --values probs

With texts and images, rows are images and columns texts (as logits_per_image in the
tutorials); with one kind only, it is compared with itself; --full compares everything with
everything (texts first, then images).")]
pub struct SimilarityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A text (repeatable).
    #[arg(long = "text", value_name = "TEXT")]
    texts: Vec<String>,
    /// An image file or a directory of images (repeatable).
    #[arg(long = "image", value_name = "PATH")]
    images: Vec<String>,
    /// A list of texts: JSONL ({"text": …} per line) or plain lines.
    #[arg(long, value_name = "FILE")]
    text_file: Option<PathBuf>,
    /// A list of images: JSONL ({"image": path} per line) or plain lines.
    #[arg(long, value_name = "FILE")]
    image_file: Option<PathBuf>,
    /// The square matrix of every input against every input.
    #[arg(long)]
    full: bool,
    /// What the matrix holds.
    #[arg(long, value_enum, default_value = "cosine")]
    values: Values,
    /// Multiply cosines by this instead of the checkpoint's exp(logit_scale) (logits, probs).
    #[arg(long, value_name = "X")]
    logit_scale: Option<f32>,
    /// One JSON object: rows, columns, the matrix and any failures.
    #[arg(long)]
    json: bool,
}

fn item_json(item: &Item) -> serde_json::Value {
    serde_json::json!({ item.kind(): item.value() })
}

/// A short, one-line name for a table.
fn short(item: &Item, width: usize) -> String {
    let s = match item {
        Item::Text(t) => format!("{t:?}"),
        Item::Image(p) => p.display().to_string(),
    };
    if s.chars().count() <= width {
        s
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(width - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        match item {
            // Paths are told apart by their ends, texts by their starts.
            Item::Image(_) => format!("…{tail}"),
            Item::Text(_) => format!("{}…", s.chars().take(width - 1).collect::<String>()),
        }
    }
}

pub fn run(args: SimilarityArgs, device: &Device) -> Result<()> {
    let mut texts: Vec<Item> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    if let Some(f) = &args.text_file {
        for item in read_items(f, ItemKind::Text)? {
            match item.value {
                Ok(t) => texts.push(Item::Text(t)),
                Err(e) => failed.push(format!("{} line {}: {e}", f.display(), item.line)),
            }
        }
    }
    texts.extend(args.texts.iter().cloned().map(Item::Text));
    let mut images: Vec<Item> = Vec::new();
    for i in collect_images(args.image_file.as_deref(), &args.images)? {
        match i.path {
            Ok(p) => images.push(Item::Image(p)),
            Err(e) => failed.push(format!("{}: {e}", i.shown)),
        }
    }
    if texts.is_empty() && images.is_empty() {
        bail!("nothing to compare: give --text and/or --image (or --text-file, --image-file)");
    }
    let (rows, columns) = if args.full || texts.is_empty() || images.is_empty() {
        let all: Vec<Item> = texts.into_iter().chain(images).collect();
        (all.clone(), all)
    } else {
        (images, texts)
    };
    let options = SimilarityOptions {
        scores: match args.values {
            Values::Cosine => Scores::Cosine,
            Values::Logits => Scores::Logits,
            Values::Probs => Scores::Probabilities,
        },
        logit_scale: args.logit_scale,
    };
    let embedder = args.model.load(device)?;
    let progress = StageProgress::new();
    let m = similarity(&embedder, &rows, &columns, &options, &|s, d, t| {
        progress.update(s, d, t)
    })?;
    progress.finish();
    failed.extend(m.failures.iter().map(|(_, e)| e.to_string()));

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let values_name = match args.values {
        Values::Cosine => "cosine",
        Values::Logits => "logits",
        Values::Probs => "probs",
    };
    if args.json {
        let matrix: Vec<&[f32]> = (0..m.rows.len()).map(|r| m.row(r)).collect();
        let obj = serde_json::json!({
            "values": values_name,
            "logit_scale": m.logit_scale,
            "rows": m.rows.iter().map(|&r| item_json(&rows[r])).collect::<Vec<_>>(),
            "columns": m.columns.iter().map(|&c| item_json(&columns[c])).collect::<Vec<_>>(),
            "matrix": matrix,
            "failures": failed,
        });
        writeln!(out, "{obj}")?;
    } else {
        writeln!(out, "{values_name} similarity; columns:")?;
        for (k, &c) in m.columns.iter().enumerate() {
            writeln!(
                out,
                "  [{}] {} {}",
                k + 1,
                columns[c].kind(),
                short(&columns[c], 70)
            )?;
        }
        let names: Vec<String> = m.rows.iter().map(|&r| short(&rows[r], 60)).collect();
        let w = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        write!(out, "{:w$}", "")?;
        for k in 0..m.columns.len() {
            write!(out, " {:>8}", format!("[{}]", k + 1))?;
        }
        writeln!(out)?;
        for (r, name) in names.iter().enumerate() {
            write!(out, "{name:w$}")?;
            for v in m.row(r) {
                write!(out, " {v:>8.4}")?;
            }
            writeln!(out)?;
        }
    }
    out.flush().context("writing the matrix")?;
    if !failed.is_empty() {
        let n = count(failed.len(), "input", "inputs");
        eprintln!("{n} failed:\n  {}", failed.join("\n  "));
        bail!("{n} failed");
    }
    Ok(())
}
