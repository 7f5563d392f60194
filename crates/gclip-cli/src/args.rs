//! Argument groups shared by the task commands (classify, similarity, eval): the model, prompt
//! templates, image lists, and a progress bar per stage.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use gclip::embed::{Embedder, LoadOptions};
use gclip::input::items::{is_image_path, read_items, resolve_image_path, walk_images, ItemKind};
use gclip::model::Precision;
use gclip::source::ModelSource;
use gclip::zeroshot::{Stage, TemplateSet};

use crate::progress::Progress;

/// The model every task command loads.
#[derive(Args)]
pub struct ModelArgs {
    /// Model: a Hugging Face model id or directory, or an open_clip checkpoint file with --arch.
    #[arg(long, default_value = "openai/clip-vit-base-patch32")]
    pub model: String,
    /// open_clip architecture name (ViT-B-32, …) or config JSON, for checkpoint files.
    // Only with --model: on its own it would be silently ignored.
    #[arg(long, requires = "model")]
    pub arch: Option<String>,
    /// Items per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Precision of the transformer weights: fp32 (exact), bf16 or int8 (faster, vectors within
    /// a cosine of about 0.999 of fp32).
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
}

impl ModelArgs {
    pub fn load(&self, device: &Device) -> Result<Embedder> {
        let source = ModelSource::resolve(&self.model, self.arch.as_deref())?;
        let options = LoadOptions {
            precision: self.precision,
            ..Default::default()
        };
        let mut embedder = Embedder::load_with(&source, device, options)
            .with_context(|| format!("loading model {}", self.model))?;
        embedder.batch_size = self.batch_size.max(1);
        Ok(embedder)
    }
}

/// A built-in template set, or none.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TemplateChoice {
    /// The CLIP paper's 80 ImageNet templates.
    OpenaiImagenet,
    /// 7 of them, as the CLIP notebook selects.
    Simple,
    /// No templates: each label is the text itself.
    None,
}

/// Prompt templates.
#[derive(Args)]
pub struct TemplateArgs {
    /// A prompt template, `{}` standing for the label; repeat for an ensemble (each class
    /// vector is then the renormalised mean of its prompts' embeddings).
    #[arg(long = "template", value_name = "TEMPLATE")]
    pub template: Vec<String>,
    /// A built-in template set (any --template is added to it).
    #[arg(long, value_enum, value_name = "SET")]
    pub templates: Option<TemplateChoice>,
}

impl TemplateArgs {
    /// The templates to use: the set named by --templates (or `default` when neither option is
    /// given) followed by each --template.
    pub fn resolve(&self, default: TemplateChoice) -> Vec<String> {
        let set = match (self.templates, self.template.is_empty()) {
            (Some(s), _) => s,
            (None, true) => default,
            (None, false) => TemplateChoice::None,
        };
        let mut out = match set {
            TemplateChoice::OpenaiImagenet => TemplateSet::OpenaiImagenet.templates(),
            TemplateChoice::Simple => TemplateSet::Simple.templates(),
            TemplateChoice::None => Vec::new(),
        };
        out.extend(self.template.iter().cloned());
        out
    }
}

/// An image named on the command line or in a list, resolved to a path (or why its list line
/// is unusable).
pub struct ImageArg {
    /// How messages and outputs name it: the path, as given or as found in a directory.
    pub shown: String,
    pub path: Result<PathBuf, String>,
}

/// Images from a list file (JSONL `{"image": …}` or plain lines) and the command line, in that
/// order; directories are walked recursively.
pub fn collect_images(list: Option<&Path>, direct: &[String]) -> Result<Vec<ImageArg>> {
    let mut out = Vec::new();
    if let Some(list) = list {
        for item in read_items(list, ItemKind::Image)? {
            out.push(match item.value {
                Ok(v) => {
                    let p = resolve_image_path(&v, Some(list));
                    ImageArg {
                        shown: p.display().to_string(),
                        path: Ok(p),
                    }
                }
                Err(e) => ImageArg {
                    shown: format!("{} line {}", list.display(), item.line),
                    path: Err(e),
                },
            });
        }
    }
    for d in direct {
        let p = Path::new(d);
        if p.is_dir() {
            out.extend(walk_images(p)?.into_iter().map(|f| ImageArg {
                shown: f.display().to_string(),
                path: Ok(f),
            }));
        } else {
            out.push(ImageArg {
                shown: d.clone(),
                path: Ok(p.to_path_buf()),
            });
        }
    }
    Ok(out)
}

/// A count that must be at least 1 (`--limit`, `--top-k`): 0 would silently show nothing.
pub fn positive_count(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (0 would show nothing)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{value}` is not a whole number: {e}")),
    }
}

/// Whether a command-line value names an image: an existing file or directory, or a name with
/// an image extension.
pub fn looks_like_image(value: &str) -> bool {
    let p = Path::new(value);
    p.exists() || is_image_path(p)
}

/// One progress bar per stage (texts, then images), on a terminal only.
pub struct StageProgress(RefCell<Option<(Stage, Progress)>>);

impl StageProgress {
    pub fn new() -> Self {
        Self(RefCell::new(None))
    }

    pub fn update(&self, stage: Stage, done: usize, total: usize) {
        let mut current = self.0.borrow_mut();
        if current.as_ref().is_none_or(|(s, _)| *s != stage) {
            if let Some((_, p)) = current.take() {
                p.finish();
            }
            let what = match stage {
                Stage::Texts => "texts",
                Stage::Images => "images",
            };
            *current = Some((stage, Progress::new(total as u64, what)));
        }
        if let Some((_, p)) = current.as_ref() {
            p.set(done as u64);
        }
    }

    pub fn finish(&self) {
        if let Some((_, p)) = self.0.borrow_mut().take() {
            p.finish();
        }
    }
}
