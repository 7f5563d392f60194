//! `gclip eval zeroshot` (retrieval and ranking are in `eval_ranking.rs`)

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use gclip::eval::zeroshot::{evaluate, EvalOptions, ImageFolder};

use crate::args::{ModelArgs, StageProgress, TemplateArgs, TemplateChoice};

#[derive(Args)]
#[command(after_help = "Examples:
  gclip eval zeroshot --dataset ./imagenette/val
  gclip eval zeroshot --model ./clip-vit-base-patch32 --dataset ./pets \\
      --classnames pets_names.json --templates simple --json

The dataset holds one sub-folder of images per class (as torchvision's ImageFolder). A class
is named by its folder name with underscores as spaces, or by --classnames: a JSON object
{\"folder\": \"class name\", …} or a list of names in sorted folder order. Prompts default to
the CLIP paper's 80 ImageNet templates; --template replaces them, --templates none drops them.")]
pub struct ZeroShotArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The dataset directory: one sub-folder per class.
    #[arg(long, value_name = "DIR")]
    dataset: PathBuf,
    /// Class names: a JSON object folder → name, or a list in sorted folder order.
    #[arg(long, value_name = "FILE")]
    classnames: Option<PathBuf>,
    #[command(flatten)]
    templates: TemplateArgs,
    /// One JSON object, as CLIP_benchmark writes: {"metrics": {"acc1", "acc5",
    /// "mean_per_class_recall"}, …}.
    #[arg(long)]
    json: bool,
    /// Also write each image's class and top-5 predictions as JSONL.
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
}

pub fn zeroshot(args: ZeroShotArgs, device: &Device) -> Result<()> {
    let mut dataset = ImageFolder::open(&args.dataset)?;
    if let Some(f) = &args.classnames {
        dataset = dataset.with_classnames_file(f)?;
    }
    let templates = args.templates.resolve(TemplateChoice::OpenaiImagenet);
    let embedder = args.model.load(device)?;
    let progress = StageProgress::new();
    let result = evaluate(
        &embedder,
        &dataset,
        &EvalOptions {
            templates: templates.clone(),
        },
        &|s, d, t| progress.update(s, d, t),
    )?;
    progress.finish();
    let m = &result.metrics;

    if let Some(path) = &args.predictions {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        for p in &result.predictions {
            let top: Vec<&str> = p
                .top
                .iter()
                .map(|&c| dataset.classnames[c].as_str())
                .collect();
            let obj = serde_json::json!({
                "image": p.image.display().to_string(),
                "class": dataset.classnames[p.target],
                "top5": top,
                "correct": p.top.first() == Some(&p.target),
            });
            writeln!(w, "{obj}")?;
        }
        for (path, e) in &result.failures {
            let obj =
                serde_json::json!({ "image": path.display().to_string(), "error": e.to_string() });
            writeln!(w, "{obj}")?;
        }
        w.flush()?;
    }

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        let obj = serde_json::json!({
            "dataset": args.dataset.display().to_string(),
            "model": args.model.model,
            "task": "zeroshot_classification",
            "templates": templates.len(),
            "images": m.images,
            "classes": m.classes,
            "metrics": {
                "acc1": m.top1,
                "acc5": m.top5,
                "mean_per_class_recall": m.mean_per_class_recall,
            },
            "per_class": m.per_class,
            "failures": result.failures.iter().map(|(p, e)| serde_json::json!({
                "image": p.display().to_string(), "error": e.to_string()
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{obj}")?;
    } else {
        let pct = |x: f64| format!("{:6.2}%", 100.0 * x);
        writeln!(
            out,
            "{}: {} images, {} classes, {} templates",
            args.dataset.display(),
            m.images,
            m.classes,
            templates.len()
        )?;
        writeln!(out, "top-1 accuracy         {}", pct(m.top1))?;
        match m.top5 {
            Some(t) => writeln!(out, "top-5 accuracy         {}", pct(t))?,
            None => writeln!(out, "top-5 accuracy         n/a (fewer than 5 classes)")?,
        }
        writeln!(
            out,
            "mean per-class recall  {}",
            pct(m.mean_per_class_recall)
        )?;
        let w = m
            .per_class
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        writeln!(out, "per class (top-1 recall):")?;
        for c in &m.per_class {
            let r = c.recall.map_or("      -".to_string(), pct);
            writeln!(out, "  {:w$}  {r}  ({}/{})", c.name, c.correct, c.images)?;
        }
    }
    out.flush()?;
    if !result.failures.is_empty() {
        eprintln!(
            "{} of {} images could not be read and were left out:",
            result.failures.len(),
            dataset.images.len()
        );
        for (_, e) in &result.failures {
            eprintln!("  {e}");
        }
        bail!(
            "{} of {} images failed",
            result.failures.len(),
            dataset.images.len()
        );
    }
    Ok(())
}
