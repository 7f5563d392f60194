//! Zero-shot classification and caption scoring, as in the CLIP tutorials: prompt templates,
//! class vectors, and a softmax over `logit_scale · cos` between an image and each class.
//!
//! A class vector is built as open_clip's `build_zero_shot_classifier` does: every template is
//! filled with the label, the filled prompts are embedded and L2-normalised, averaged, and the
//! mean is normalised again. Without templates a label is used as the text itself, which is
//! caption scoring (`"a photo of a cat"` against `"a photo of a dog"`).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use gclip::embed::Embedder;
//! use gclip::source::ModelSource;
//! use gclip::zeroshot::{classify_image_files, ClassifyOptions};
//!
//! let source = ModelSource::resolve("openai/clip-vit-base-patch32", None)?;
//! let embedder = Embedder::load(&source, &candle_core::Device::Cpu)?;
//! let captions = ["a photo of a cat", "a photo of a dog"].map(String::from);
//! let images = ["cat1.jpg", "cat2.jpg", "cat3.jpg"].map(std::path::PathBuf::from);
//! let result = classify_image_files(&embedder, &captions, &images, &ClassifyOptions::default(), &|_, _, _| {})?;
//! for (image, ranked) in images.iter().zip(&result.rankings) {
//!     match ranked {
//!         Ok(ranked) => println!("{}: {} ({:.3})", image.display(), ranked[0].label, ranked[0].probability),
//!         Err(e) => eprintln!("{e}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! (The same code is in README.md; `crates/gclip-cli/tests/tasks.rs` checks they agree.)

use std::collections::HashMap;
use std::path::PathBuf;

use crate::embed::{EmbedError, Embedder};
use crate::input::image::ImageError;
use crate::model::Embeddings;

/// The 80 prompt templates of the CLIP paper's ImageNet notebook
/// (`Prompt_Engineering_for_ImageNet.ipynb`), as open_clip ships them; `{}` is the label.
pub const OPENAI_IMAGENET_TEMPLATES: &[&str] = &[
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
];

/// The 7-template subset of [`OPENAI_IMAGENET_TEMPLATES`] that the same notebook selects.
pub const SIMPLE_IMAGENET_TEMPLATES: &[&str] = &[
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
];

/// Everything that can stop a zero-shot or similarity call as a whole (a bad image only fails
/// its own item).
#[derive(Debug, thiserror::Error)]
pub enum ZeroShotError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("no labels to classify into: give at least one label")]
    NoLabels,
    #[error("template {template:?} has no `{{}}` (or `{{c}}`) where the label goes")]
    NoPlaceholder { template: String },
    #[error("unknown template set `{0}`: use openai-imagenet (80 templates) or simple (7)")]
    UnknownTemplateSet(String),
    #[error("the logit scale must be a positive finite number, got {0}")]
    LogitScale(f32),
    #[error("{what} has {found} values per vector, the classifier has {expected}")]
    Dimension {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{labels} labels but {vectors} class vectors")]
    LabelCount { labels: usize, vectors: usize },
}

impl From<crate::model::ModelError> for ZeroShotError {
    fn from(e: crate::model::ModelError) -> Self {
        ZeroShotError::Embed(EmbedError::Model(e))
    }
}

/// A named set of prompt templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSet {
    /// The 80 templates of the CLIP paper: [`OPENAI_IMAGENET_TEMPLATES`].
    OpenaiImagenet,
    /// Their 7-template subset: [`SIMPLE_IMAGENET_TEMPLATES`].
    Simple,
}

impl TemplateSet {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TemplateSet::OpenaiImagenet => "openai-imagenet",
            TemplateSet::Simple => "simple",
        }
    }

    /// The set called `name` (`openai-imagenet` or `simple`).
    pub fn from_name(name: &str) -> Result<Self, ZeroShotError> {
        match name {
            "openai-imagenet" | "openai_imagenet" | "openai" => Ok(TemplateSet::OpenaiImagenet),
            "simple" => Ok(TemplateSet::Simple),
            _ => Err(ZeroShotError::UnknownTemplateSet(name.to_string())),
        }
    }

    /// The templates, `{}` standing for the label.
    pub fn templates(self) -> Vec<String> {
        let t = match self {
            TemplateSet::OpenaiImagenet => OPENAI_IMAGENET_TEMPLATES,
            TemplateSet::Simple => SIMPLE_IMAGENET_TEMPLATES,
        };
        t.iter().map(|s| s.to_string()).collect()
    }
}

/// Puts `label` where the template has `{}` or `{c}` (the placeholder of CLIP_benchmark's
/// template files); every placeholder is filled. A template without one is an error, since
/// it would give every class the same vector.
pub fn fill_template(template: &str, label: &str) -> Result<String, ZeroShotError> {
    let mut out = String::with_capacity(template.len() + label.len());
    let mut rest = template;
    let mut filled = false;
    while let Some(pos) = rest.find('{') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{}").or_else(|| tail.strip_prefix("{c}")) {
            out.push_str(label);
            filled = true;
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if filled {
        Ok(out)
    } else {
        Err(ZeroShotError::NoPlaceholder {
            template: template.to_string(),
        })
    }
}

/// A label with its probability and its cosine. The same two names, with the same meanings, in
/// `gclip classify --json` and the server's `/api/classify`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabelScore {
    pub label: String,
    /// The softmax over every label of `logit_scale · cosine`.
    pub probability: f32,
    /// The cosine similarity between the image and the label's (templated, averaged) text.
    pub cosine: f32,
}

/// What a progress callback is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Texts (labels or filled templates) being embedded.
    Texts,
    /// Images being decoded and embedded.
    Images,
}

/// A progress callback: the stage, items done, items in the stage.
pub type ProgressFn<'a> = &'a dyn Fn(Stage, usize, usize);

/// Scales `v` to unit length (left as is when its norm is 0), as `F.normalize` does.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let d = norm.max(1e-12);
    v.iter_mut().for_each(|x| *x /= d);
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The softmax of a row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&x| f64::from(x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// The class vectors of `labels`: with templates, the renormalised mean of the normalised
/// embeddings of every filled template (open_clip's zero-shot classifier); without, the
/// normalised embedding of each label itself. `progress` is told how many texts are done.
pub fn class_vectors(
    embedder: &Embedder,
    labels: &[String],
    templates: &[String],
    progress: ProgressFn,
) -> Result<Embeddings, ZeroShotError> {
    if labels.is_empty() {
        return Err(ZeroShotError::NoLabels);
    }
    for t in templates {
        fill_template(t, "")?;
    }
    let per_class = templates.len().max(1);
    let total = labels.len() * per_class;
    let dim = embedder.clip().config.embed_dim;
    let mut out = Embeddings {
        dim,
        data: Vec::with_capacity(labels.len() * dim),
    };
    // A few hundred prompts at a time, so 1000 classes × 80 templates never sit in memory.
    let classes_per_chunk = (256 / per_class).max(1);
    let mut done = 0;
    progress(Stage::Texts, 0, total);
    for chunk in labels.chunks(classes_per_chunk) {
        let prompts: Vec<String> = if templates.is_empty() {
            chunk.to_vec()
        } else {
            let mut p = Vec::with_capacity(chunk.len() * per_class);
            for label in chunk {
                for t in templates {
                    p.push(fill_template(t, label)?);
                }
            }
            p
        };
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let e = embedder.embed_texts(&refs, true, &|n| progress(Stage::Texts, done + n, total))?;
        done += refs.len();
        for c in 0..chunk.len() {
            let mut mean = vec![0f32; dim];
            for r in 0..per_class {
                for (m, x) in mean.iter_mut().zip(e.row(c * per_class + r)) {
                    *m += x;
                }
            }
            mean.iter_mut().for_each(|m| *m /= per_class as f32);
            l2_normalize(&mut mean);
            out.data.extend_from_slice(&mean);
        }
    }
    Ok(out)
}

fn check_logit_scale(s: f32) -> Result<f32, ZeroShotError> {
    if s.is_finite() && s > 0.0 {
        Ok(s)
    } else {
        Err(ZeroShotError::LogitScale(s))
    }
}

/// Labels with their class vectors and the logit scale: scores any image embedding.
#[derive(Debug, Clone)]
pub struct ZeroShotClassifier {
    labels: Vec<String>,
    class_vectors: Embeddings,
    logit_scale: f32,
}

impl ZeroShotClassifier {
    /// Embeds the labels (through the templates, if any) with the embedder's model. The logit
    /// scale is `logit_scale` when given, otherwise the checkpoint's `exp(logit_scale)`.
    pub fn build(
        embedder: &Embedder,
        labels: &[String],
        templates: &[String],
        logit_scale: Option<f32>,
        progress: ProgressFn,
    ) -> Result<Self, ZeroShotError> {
        let scale = match logit_scale {
            Some(s) => check_logit_scale(s)?,
            None => embedder.clip().logit_scale_exp()?,
        };
        let vectors = class_vectors(embedder, labels, templates, progress)?;
        Self::new(labels.to_vec(), vectors, scale)
    }

    /// A classifier from class vectors computed elsewhere (each row is normalised here).
    pub fn new(
        labels: Vec<String>,
        mut class_vectors: Embeddings,
        logit_scale: f32,
    ) -> Result<Self, ZeroShotError> {
        if labels.is_empty() {
            return Err(ZeroShotError::NoLabels);
        }
        if class_vectors.len() != labels.len()
            || !class_vectors.data.len().is_multiple_of(labels.len())
        {
            return Err(ZeroShotError::LabelCount {
                labels: labels.len(),
                vectors: class_vectors.len(),
            });
        }
        let dim = class_vectors.dim.max(1);
        class_vectors.data.chunks_mut(dim).for_each(l2_normalize);
        Ok(Self {
            labels,
            class_vectors,
            logit_scale: check_logit_scale(logit_scale)?,
        })
    }

    /// The labels, in the order of the class vectors.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// One unit vector per label.
    pub fn class_vectors(&self) -> &Embeddings {
        &self.class_vectors
    }

    /// The factor applied to cosine similarities before the softmax.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// Replaces the logit scale.
    pub fn set_logit_scale(&mut self, logit_scale: f32) -> Result<(), ZeroShotError> {
        self.logit_scale = check_logit_scale(logit_scale)?;
        Ok(())
    }

    /// `logit_scale · cos(image, class)` for every class; the image embedding is normalised
    /// first, so raw projections work too.
    pub fn logits(&self, image_embedding: &[f32]) -> Result<Vec<f32>, ZeroShotError> {
        if image_embedding.len() != self.class_vectors.dim {
            return Err(ZeroShotError::Dimension {
                what: "the image embedding",
                expected: self.class_vectors.dim,
                found: image_embedding.len(),
            });
        }
        let mut image = image_embedding.to_vec();
        l2_normalize(&mut image);
        Ok(self
            .class_vectors
            .rows()
            .map(|c| self.logit_scale * dot(&image, c))
            .collect())
    }

    /// The softmax of [`logits`](Self::logits): one probability per label, in label order.
    pub fn probabilities(&self, image_embedding: &[f32]) -> Result<Vec<f32>, ZeroShotError> {
        Ok(softmax(&self.logits(image_embedding)?))
    }

    /// Every label with its probability and cosine, most probable first (ties keep label
    /// order).
    pub fn rank(&self, image_embedding: &[f32]) -> Result<Vec<LabelScore>, ZeroShotError> {
        let logits = self.logits(image_embedding)?;
        let probabilities = softmax(&logits);
        let mut ranked: Vec<LabelScore> = self
            .labels
            .iter()
            .zip(logits.iter().zip(probabilities))
            .map(|(label, (logit, probability))| LabelScore {
                label: label.clone(),
                probability,
                cosine: logit / self.logit_scale,
            })
            .collect();
        ranked.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        Ok(ranked)
    }
}

/// Options of [`classify_image_files`], as `gclip classify` takes them.
#[derive(Debug, Clone, Default)]
pub struct ClassifyOptions {
    /// Prompt templates (`{}` is the label); empty: each label is the text itself.
    pub templates: Vec<String>,
    /// Overrides the checkpoint's `exp(logit_scale)` (Marqo's GCL demo uses 10).
    pub logit_scale: Option<f32>,
}

/// The outcome of classifying image files.
#[derive(Debug)]
pub struct Classification {
    /// One entry per input path, in input order: every label ranked by probability, or why the
    /// image could not be read.
    pub rankings: Vec<Result<Vec<LabelScore>, ImageError>>,
    /// The logit scale that was applied.
    pub logit_scale: f32,
}

impl Classification {
    /// How many images failed.
    pub fn failures(&self) -> usize {
        self.rankings.iter().filter(|r| r.is_err()).count()
    }
}

/// Zero-shot classification of image files into `labels`: softmax over `logit_scale · cos`
/// between each image and each class vector.
pub fn classify_image_files(
    embedder: &Embedder,
    labels: &[String],
    paths: &[PathBuf],
    options: &ClassifyOptions,
    progress: ProgressFn,
) -> Result<Classification, ZeroShotError> {
    let classifier = ZeroShotClassifier::build(
        embedder,
        labels,
        &options.templates,
        options.logit_scale,
        progress,
    )?;
    classify_with(embedder, &classifier, paths, progress)
}

/// Classifies image files with a classifier built beforehand (to reuse it across calls).
pub fn classify_with(
    embedder: &Embedder,
    classifier: &ZeroShotClassifier,
    paths: &[PathBuf],
    progress: ProgressFn,
) -> Result<Classification, ZeroShotError> {
    let total = paths.len();
    progress(Stage::Images, 0, total);
    let r = embedder.embed_image_files(paths, true, &|n| progress(Stage::Images, n, total))?;
    let mut rankings: Vec<Option<Result<Vec<LabelScore>, ImageError>>> =
        (0..paths.len()).map(|_| None).collect();
    for (row, &i) in r.embeddings.rows().zip(&r.indices) {
        rankings[i] = Some(Ok(classifier.rank(row)?));
    }
    for (i, e) in r.failures {
        rankings[i] = Some(Err(e));
    }
    Ok(Classification {
        rankings: rankings
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| {
                    Err(ImageError::Config(format!(
                        "{}: not embedded",
                        paths[i].display()
                    )))
                })
            })
            .collect(),
        logit_scale: classifier.logit_scale(),
    })
}

/// A text or an image file, for [`similarity`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Item {
    Text(String),
    Image(PathBuf),
}

impl Item {
    /// `"text"` or `"image"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::Text(_) => "text",
            Item::Image(_) => "image",
        }
    }

    /// The text, or the path as written.
    pub fn value(&self) -> String {
        match self {
            Item::Text(t) => t.clone(),
            Item::Image(p) => p.display().to_string(),
        }
    }
}

/// What the entries of a similarity matrix are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scores {
    /// Cosine similarity of the normalised embeddings, in [-1, 1].
    #[default]
    Cosine,
    /// `logit_scale · cos`, what CLIP's `logits_per_image` holds.
    Logits,
    /// The softmax of each row of logits (`logits_per_image.softmax(dim=1)` in the tutorials).
    Probabilities,
}

/// Options of [`similarity`], as `gclip similarity` takes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimilarityOptions {
    pub scores: Scores,
    /// Overrides the checkpoint's `exp(logit_scale)` for [`Scores::Logits`] and
    /// [`Scores::Probabilities`].
    pub logit_scale: Option<f32>,
}

/// A similarity matrix between rows and columns of items.
#[derive(Debug)]
pub struct SimilarityMatrix {
    /// Indices of the requested rows that could be embedded, in order.
    pub rows: Vec<usize>,
    /// Indices of the requested columns that could be embedded, in order.
    pub columns: Vec<usize>,
    /// `rows.len() × columns.len()` values, row-major.
    pub values: Vec<f32>,
    /// The logit scale (applied unless the scores are cosines).
    pub logit_scale: f32,
    /// Images that could not be read (each once, however often it was requested).
    pub failures: Vec<(PathBuf, ImageError)>,
}

impl SimilarityMatrix {
    /// The values of the `r`-th kept row.
    pub fn row(&self, r: usize) -> &[f32] {
        let n = self.columns.len();
        &self.values[r * n..(r + 1) * n]
    }
}

/// The similarity of every row item with every column item, texts and images mixed freely;
/// each distinct item is embedded once. Images that fail are left out of the matrix and listed
/// in [`SimilarityMatrix::failures`].
pub fn similarity(
    embedder: &Embedder,
    rows: &[Item],
    columns: &[Item],
    options: &SimilarityOptions,
    progress: ProgressFn,
) -> Result<SimilarityMatrix, ZeroShotError> {
    let logit_scale = match options.logit_scale {
        Some(s) => check_logit_scale(s)?,
        None => embedder.clip().logit_scale_exp()?,
    };
    // Distinct texts and images, embedded once each.
    let mut texts: Vec<&str> = Vec::new();
    let mut images: Vec<PathBuf> = Vec::new();
    let mut slot: HashMap<&Item, usize> = HashMap::new();
    for item in rows.iter().chain(columns) {
        if slot.contains_key(item) {
            continue;
        }
        let s = match item {
            Item::Text(t) => {
                texts.push(t);
                texts.len() - 1
            }
            Item::Image(p) => {
                images.push(p.clone());
                images.len() - 1
            }
        };
        slot.insert(item, s);
    }
    let text_vectors = if texts.is_empty() {
        None
    } else {
        let total = texts.len();
        progress(Stage::Texts, 0, total);
        Some(embedder.embed_texts(&texts, true, &|n| progress(Stage::Texts, n, total))?)
    };
    let mut image_rows: Vec<Option<usize>> = vec![None; images.len()];
    let mut failures = Vec::new();
    let image_vectors = if images.is_empty() {
        None
    } else {
        let total = images.len();
        progress(Stage::Images, 0, total);
        let r =
            embedder.embed_image_files(&images, true, &|n| progress(Stage::Images, n, total))?;
        for (row, &i) in r.indices.iter().enumerate() {
            image_rows[i] = Some(row);
        }
        for (i, e) in r.failures {
            failures.push((images[i].clone(), e));
        }
        Some(r.embeddings)
    };
    let vector = |item: &Item| -> Option<&[f32]> {
        let s = slot[item];
        match item {
            Item::Text(_) => text_vectors.as_ref().map(|e| e.row(s)),
            Item::Image(_) => image_rows[s].and_then(|r| image_vectors.as_ref().map(|e| e.row(r))),
        }
    };
    let keep = |items: &[Item]| -> Vec<usize> {
        (0..items.len())
            .filter(|&i| vector(&items[i]).is_some())
            .collect()
    };
    let (kept_rows, kept_columns) = (keep(rows), keep(columns));
    let mut values = Vec::with_capacity(kept_rows.len() * kept_columns.len());
    for &r in &kept_rows {
        let a = vector(&rows[r]).unwrap_or_default();
        let row: Vec<f32> = kept_columns
            .iter()
            .map(|&c| dot(a, vector(&columns[c]).unwrap_or_default()))
            .collect();
        match options.scores {
            Scores::Cosine => values.extend(row),
            Scores::Logits => values.extend(row.iter().map(|x| logit_scale * x)),
            Scores::Probabilities => {
                let logits: Vec<f32> = row.iter().map(|x| logit_scale * x).collect();
                values.extend(softmax(&logits));
            }
        }
    }
    Ok(SimilarityMatrix {
        rows: kept_rows,
        columns: kept_columns,
        values,
        logit_scale,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_the_papers_sets() {
        assert_eq!(OPENAI_IMAGENET_TEMPLATES.len(), 80);
        assert_eq!(SIMPLE_IMAGENET_TEMPLATES.len(), 7);
        for t in SIMPLE_IMAGENET_TEMPLATES {
            assert!(OPENAI_IMAGENET_TEMPLATES.contains(t), "{t}");
        }
        for t in OPENAI_IMAGENET_TEMPLATES {
            assert!(fill_template(t, "x").is_ok(), "{t}");
        }
        assert_eq!(
            TemplateSet::from_name("simple").unwrap().templates().len(),
            7
        );
        assert!(matches!(
            TemplateSet::from_name("imagenet"),
            Err(ZeroShotError::UnknownTemplateSet(_))
        ));
    }

    #[test]
    fn fill_template_fills_every_placeholder_once() {
        assert_eq!(
            fill_template("a photo of a {}.", "cat").unwrap(),
            "a photo of a cat."
        );
        assert_eq!(
            fill_template("a {c} or a {}", "dog").unwrap(),
            "a dog or a dog"
        );
        // A label holding braces is inserted, not expanded again.
        assert_eq!(fill_template("{} {x}", "{}").unwrap(), "{} {x}");
        assert!(matches!(
            fill_template("a photo", "cat"),
            Err(ZeroShotError::NoPlaceholder { .. })
        ));
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        // exp(89) overflows f32: only a max-shifted softmax gets these right.
        let p = softmax(&[88.0, 89.0, -1000.0]);
        let e = std::f32::consts::E;
        assert!((p[0] - 1.0 / (1.0 + e)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - e / (1.0 + e)).abs() < 1e-6, "{p:?}");
        assert_eq!(p[2], 0.0);
    }

    #[test]
    fn classifier_scores_scaled_cosines() {
        let labels = vec!["x".to_string(), "y".to_string(), "xy".to_string()];
        // Class vectors are normalised on the way in.
        let vectors = Embeddings {
            dim: 2,
            data: vec![2.0, 0.0, 0.0, 1.0, 1.0, 1.0],
        };
        let c = ZeroShotClassifier::new(labels, vectors, 10.0).unwrap();
        // An unnormalised image along x: cosines 1, 0, 1/√2.
        let l = c.logits(&[3.0, 0.0]).unwrap();
        let want = [10.0, 0.0, 10.0 / 2f32.sqrt()];
        for (a, b) in l.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{l:?}");
        }
        let ranked = c.rank(&[3.0, 0.0]).unwrap();
        let order: Vec<&str> = ranked.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(order, ["x", "xy", "y"]);
        let z = 1.0 + (-10f32 + 10.0 / 2f32.sqrt()).exp() + (-10f32).exp();
        assert!((ranked[0].probability - 1.0 / z).abs() < 1e-6);
        // The image [3, 0] normalised is [1, 0]: its cosine with the class "x" is 1.
        assert!((ranked[0].cosine - 1.0).abs() < 1e-6);
        assert!(matches!(
            c.logits(&[1.0, 0.0, 0.0]),
            Err(ZeroShotError::Dimension { .. })
        ));
        let mut c = c;
        assert!(c.set_logit_scale(0.0).is_err() && c.set_logit_scale(f32::NAN).is_err());
        assert!(ZeroShotClassifier::new(
            vec!["a".into()],
            Embeddings {
                dim: 2,
                data: vec![1.0, 0.0, 0.0, 1.0]
            },
            1.0
        )
        .is_err());
    }
}
