//! Zero-shot classification accuracy on an image-folder dataset, as CLIP_benchmark reports it:
//! top-1 and top-5 accuracy and mean per-class recall (scikit-learn's balanced accuracy).
//!
//! The dataset is a directory with one sub-folder per class (torchvision's `ImageFolder`):
//! classes are the sub-folders sorted by name, images are found recursively inside each. A
//! class's text is its folder name with underscores as spaces, or the name a JSON file gives.

use std::path::{Path, PathBuf};

use crate::embed::Embedder;
use crate::input::image::ImageError;
use crate::input::items::walk_images;
use crate::zeroshot::{ProgressFn, Stage, ZeroShotClassifier, ZeroShotError};

/// Everything that can stop an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("dataset {path}: {message}")]
    Dataset { path: PathBuf, message: String },
    #[error("class names {path}: {message}")]
    ClassNames { path: PathBuf, message: String },
    #[error("{0}")]
    Shape(String),
    #[error("none of the {failed} images could be read; the first error: {first}")]
    NoImages { failed: usize, first: String },
    #[error(transparent)]
    ZeroShot(#[from] ZeroShotError),
}

/// An image-folder dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolder {
    pub root: PathBuf,
    /// The sub-folder of each class, sorted; a class's index is its position.
    pub folders: Vec<String>,
    /// The text each class is named by in the prompts.
    pub classnames: Vec<String>,
    /// Every image with its class index, by class, then by path.
    pub images: Vec<(PathBuf, usize)>,
}

/// A class name from a folder name: underscores become spaces (`golden_retriever`).
pub fn folder_classname(folder: &str) -> String {
    folder.replace('_', " ")
}

impl ImageFolder {
    /// Reads the class folders under `root` and the images in each (hidden folders skipped).
    pub fn open(root: &Path) -> Result<Self, EvalError> {
        let err = |message: String| EvalError::Dataset {
            path: root.to_path_buf(),
            message,
        };
        let entries = std::fs::read_dir(root).map_err(|e| err(e.to_string()))?;
        let mut folders = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| err(e.to_string()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !name.starts_with('.') {
                folders.push(name);
            }
        }
        folders.sort();
        if folders.is_empty() {
            return Err(err(
                "no class folders: the dataset must hold one sub-folder of images per class".into(),
            ));
        }
        let mut images = Vec::new();
        for (class, folder) in folders.iter().enumerate() {
            let files = walk_images(&root.join(folder)).map_err(|e| err(e.to_string()))?;
            images.extend(files.into_iter().map(|f| (f, class)));
        }
        if images.is_empty() {
            return Err(err(format!(
                "no images (jpg, png, webp, gif, bmp, tiff) in any of the {} class folders",
                folders.len()
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
            classnames: folders.iter().map(|f| folder_classname(f)).collect(),
            folders,
            images,
        })
    }

    /// Number of classes.
    pub fn class_count(&self) -> usize {
        self.folders.len()
    }

    /// Names the classes from a JSON file: an object mapping folder names to class names, or
    /// a list of names in sorted folder order (CLIP_benchmark's `en_classnames.json` style).
    pub fn with_classnames_file(self, path: &Path) -> Result<Self, EvalError> {
        let err = |message: String| EvalError::ClassNames {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        self.with_classnames(&value).map_err(err)
    }

    /// Names the classes from a JSON value (see [`with_classnames_file`](Self::with_classnames_file)).
    pub fn with_classnames(mut self, value: &serde_json::Value) -> Result<Self, String> {
        let as_name = |v: &serde_json::Value, what: &str| -> Result<String, String> {
            v.as_str()
                .map(String::from)
                .ok_or_else(|| format!("the name of {what} must be a string, got {v}"))
        };
        match value {
            serde_json::Value::Object(map) => {
                let missing: Vec<&str> = self
                    .folders
                    .iter()
                    .filter(|f| !map.contains_key(f.as_str()))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "no name for the class folder(s) {}",
                        missing.join(", ")
                    ));
                }
                for key in map.keys() {
                    if !self.folders.contains(key) {
                        tracing::warn!("class names: `{key}` is not a class folder of the dataset");
                    }
                }
                self.classnames = self
                    .folders
                    .iter()
                    .map(|f| as_name(&map[f.as_str()], &format!("folder `{f}`")))
                    .collect::<Result<_, _>>()?;
            }
            serde_json::Value::Array(list) => {
                if list.len() != self.folders.len() {
                    return Err(format!(
                        "{} names for {} class folders",
                        list.len(),
                        self.folders.len()
                    ));
                }
                self.classnames = list
                    .iter()
                    .zip(&self.folders)
                    .map(|(v, f)| as_name(v, &format!("folder `{f}`")))
                    .collect::<Result<_, _>>()?;
            }
            _ => {
                return Err(
                    "expected an object {\"folder\": \"class name\"} or a list of names".into(),
                )
            }
        }
        Ok(self)
    }
}

/// The class embeddings of a prompt ensemble (CLIP's zero-shot recipe): class `c`'s embedding
/// is the normalised mean of its prompts' normalised embeddings. `rows` holds the prompt
/// embeddings of every class, class after class, `counts[c]` rows for class `c`.
pub fn ensemble_class_embeddings(rows: &[f32], dim: usize, counts: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(counts.len() * dim);
    let mut start = 0;
    for &n in counts {
        let mut mean = vec![0.0f32; dim];
        for r in rows[start * dim..(start + n) * dim].chunks_exact(dim) {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            for (m, x) in mean.iter_mut().zip(r) {
                *m += x / norm;
            }
        }
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        out.extend(mean.iter().map(|m| m / norm));
        start += n;
    }
    out
}

/// The 0-based rank of class `target` in a row of logits: how many classes score higher, ties
/// going to the lower class index (the order of a stable descending sort).
pub fn target_rank(logits: &[f32], target: usize) -> usize {
    let t = logits[target];
    logits
        .iter()
        .enumerate()
        .filter(|&(j, &x)| x > t || (x == t && j < target))
        .count()
}

fn check_shape(logits: &[f32], classes: usize, targets: &[usize]) -> Result<(), EvalError> {
    if classes == 0 || logits.len() != classes * targets.len() {
        return Err(EvalError::Shape(format!(
            "{} logits for {} images and {classes} classes",
            logits.len(),
            targets.len()
        )));
    }
    if let Some(&t) = targets.iter().find(|&&t| t >= classes) {
        return Err(EvalError::Shape(format!(
            "target class {t} out of range for {classes} classes"
        )));
    }
    Ok(())
}

/// The fraction of rows whose target class is among the `k` highest logits (`logits` is
/// `targets.len() × classes`, row-major).
pub fn topk_accuracy(
    logits: &[f32],
    classes: usize,
    targets: &[usize],
    k: usize,
) -> Result<f64, EvalError> {
    check_shape(logits, classes, targets)?;
    if targets.is_empty() {
        return Err(EvalError::Shape("no images to score".into()));
    }
    let hits = logits
        .chunks_exact(classes)
        .zip(targets)
        .filter(|(row, &t)| target_rank(row, t) < k)
        .count();
    Ok(hits as f64 / targets.len() as f64)
}

/// Per-class counts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassMetrics {
    pub name: String,
    /// Images of this class that were scored.
    pub images: usize,
    /// Of those, predicted as this class (top-1).
    pub correct: usize,
    /// `correct / images`; `None` for a class without images.
    pub recall: Option<f64>,
}

/// Zero-shot classification metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ZeroShotMetrics {
    pub images: usize,
    pub classes: usize,
    pub top1: f64,
    /// `None` with fewer than 5 classes (CLIP_benchmark reports NaN there).
    pub top5: Option<f64>,
    /// The mean over classes with images of their top-1 recall (balanced accuracy).
    pub mean_per_class_recall: f64,
    pub per_class: Vec<ClassMetrics>,
}

/// Computes the metrics from logits (`targets.len() × classnames.len()`, row-major).
pub fn metrics(
    logits: &[f32],
    targets: &[usize],
    classnames: &[String],
) -> Result<ZeroShotMetrics, EvalError> {
    let classes = classnames.len();
    let top1 = topk_accuracy(logits, classes, targets, 1)?;
    let top5 = if classes >= 5 {
        Some(topk_accuracy(logits, classes, targets, 5)?)
    } else {
        None
    };
    let mut per_class: Vec<ClassMetrics> = classnames
        .iter()
        .map(|n| ClassMetrics {
            name: n.clone(),
            images: 0,
            correct: 0,
            recall: None,
        })
        .collect();
    for (row, &t) in logits.chunks_exact(classes).zip(targets) {
        per_class[t].images += 1;
        if target_rank(row, t) == 0 {
            per_class[t].correct += 1;
        }
    }
    let mut recalls = Vec::new();
    for c in &mut per_class {
        if c.images > 0 {
            let r = c.correct as f64 / c.images as f64;
            c.recall = Some(r);
            recalls.push(r);
        }
    }
    Ok(ZeroShotMetrics {
        images: targets.len(),
        classes,
        top1,
        top5,
        mean_per_class_recall: recalls.iter().sum::<f64>() / recalls.len() as f64,
        per_class,
    })
}

/// One scored image.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub image: PathBuf,
    /// Its class index.
    pub target: usize,
    /// Class indices by descending logit (at most 5).
    pub top: Vec<usize>,
}

/// Options of [`evaluate`], as `gclip eval zeroshot` takes them.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Prompt templates (`{}` is the class name); empty: the class name alone.
    pub templates: Vec<String>,
}

/// The outcome of an evaluation.
#[derive(Debug)]
pub struct ZeroShotEvaluation {
    pub metrics: ZeroShotMetrics,
    /// The images that were scored, in dataset order.
    pub predictions: Vec<Prediction>,
    /// `predictions.len() × classes` logits (`logit_scale · cos`), row-major.
    pub logits: Vec<f32>,
    /// Images that could not be read; they are left out of the metrics.
    pub failures: Vec<(PathBuf, ImageError)>,
}

/// Builds the zero-shot classifier from the class names and templates, embeds every image and
/// computes the metrics. Images that fail are reported and left out; if none can be read, it
/// is an error.
pub fn evaluate(
    embedder: &Embedder,
    dataset: &ImageFolder,
    options: &EvalOptions,
    progress: ProgressFn,
) -> Result<ZeroShotEvaluation, EvalError> {
    let classifier = ZeroShotClassifier::build(
        embedder,
        &dataset.classnames,
        &options.templates,
        None,
        progress,
    )?;
    let paths: Vec<PathBuf> = dataset.images.iter().map(|(p, _)| p.clone()).collect();
    let total = paths.len();
    progress(Stage::Images, 0, total);
    let r = embedder
        .embed_image_files(&paths, true, &|n| progress(Stage::Images, n, total))
        .map_err(ZeroShotError::from)?;
    let classes = dataset.class_count();
    let mut logits = Vec::with_capacity(r.indices.len() * classes);
    let mut targets = Vec::with_capacity(r.indices.len());
    let mut predictions = Vec::with_capacity(r.indices.len());
    for (row, &i) in r.embeddings.rows().zip(&r.indices) {
        let l = classifier.logits(row)?;
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        order.truncate(5);
        let (path, target) = &dataset.images[i];
        predictions.push(Prediction {
            image: path.clone(),
            target: *target,
            top: order,
        });
        targets.push(*target);
        logits.extend(l);
    }
    let failures: Vec<(PathBuf, ImageError)> = r
        .failures
        .into_iter()
        .map(|(i, e)| (paths[i].clone(), e))
        .collect();
    if targets.is_empty() {
        return Err(EvalError::NoImages {
            failed: failures.len(),
            first: failures
                .first()
                .map(|(_, e)| e.to_string())
                .unwrap_or_default(),
        });
    }
    Ok(ZeroShotEvaluation {
        metrics: metrics(&logits, &targets, &dataset.classnames)?,
        predictions,
        logits,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    /// Worked by hand: 4 images, 6 classes.
    #[test]
    fn metrics_on_a_hand_checked_case() {
        #[rustfmt::skip]
        let logits = [
            // target 0: ranked first → top-1 and top-5 hit
            0.9, 0.1, 0.2, 0.3, 0.4, 0.5,
            // target 1: five classes score higher (0.9 .. 0.5) → rank 5, misses top-5
            0.9, 0.0, 0.8, 0.7, 0.6, 0.5,
            // target 2: two higher (0.9, 0.8) → rank 2, top-5 hit only
            0.9, 0.8, 0.7, 0.1, 0.2, 0.3,
            // target 0: tie with class 3 at 0.5, lower index wins → rank 0
            0.5, 0.1, 0.2, 0.5, 0.0, 0.0,
        ];
        let targets = [0, 1, 2, 0];
        let m = metrics(&logits, &targets, &names(6)).unwrap();
        assert_eq!(m.top1, 0.5);
        assert_eq!(m.top5, Some(0.75));
        // class 0: 2/2, class 1: 0/1, class 2: 0/1; classes 3-5 have no images.
        assert!((m.mean_per_class_recall - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.per_class[0].correct, 2);
        assert_eq!(m.per_class[1].recall, Some(0.0));
        assert_eq!(m.per_class[4].recall, None);
        assert_eq!(target_rank(&logits[6..12], 1), 5);
        assert_eq!(target_rank(&logits[18..24], 3), 1);
    }

    #[test]
    fn top5_is_absent_below_five_classes_and_shapes_are_checked() {
        let m = metrics(&[0.1, 0.2, 0.3, 0.3, 0.2, 0.1], &[2, 0], &names(3)).unwrap();
        assert_eq!(m.top5, None);
        assert_eq!(m.top1, 1.0);
        assert!(matches!(
            metrics(&[0.1, 0.2], &[0], &names(3)),
            Err(EvalError::Shape(_))
        ));
        assert!(matches!(
            topk_accuracy(&[0.1, 0.2], 2, &[2], 1),
            Err(EvalError::Shape(_))
        ));
    }

    #[test]
    fn classnames_from_a_map_or_a_list_must_cover_every_folder() {
        let ds = ImageFolder {
            root: PathBuf::from("x"),
            folders: vec!["golden_retriever".into(), "tabby".into()],
            classnames: vec!["golden retriever".into(), "tabby".into()],
            images: vec![],
        };
        let named = ds
            .clone()
            .with_classnames(&serde_json::json!({"tabby": "tabby cat", "golden_retriever": "golden retriever dog", "extra": "x"}))
            .unwrap();
        assert_eq!(named.classnames, ["golden retriever dog", "tabby cat"]);
        let listed = ds
            .clone()
            .with_classnames(&serde_json::json!(["a", "b"]))
            .unwrap();
        assert_eq!(listed.classnames, ["a", "b"]);
        let e = ds
            .clone()
            .with_classnames(&serde_json::json!({"tabby": "cat"}))
            .unwrap_err();
        assert!(e.contains("golden_retriever"), "{e}");
        assert!(ds
            .clone()
            .with_classnames(&serde_json::json!(["a"]))
            .is_err());
        assert!(ds
            .with_classnames(&serde_json::json!({"tabby": 3, "golden_retriever": "d"}))
            .is_err());
    }

    #[test]
    fn ensemble_averages_normalised_prompts_per_class() {
        // Class 0: two prompts of different lengths along x and y: the mean of the normalised
        // rows points at 45°, whatever the lengths. Class 1: one prompt, only normalised.
        let rows = [10.0f32, 0.0, 0.0, 0.5, 0.0, -3.0];
        let e = ensemble_class_embeddings(&rows, 2, &[2, 1]);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert_eq!(e.len(), 4);
        assert!((e[0] - h).abs() < 1e-6 && (e[1] - h).abs() < 1e-6, "{e:?}");
        assert!(
            (e[2] - 0.0).abs() < 1e-6 && (e[3] + 1.0).abs() < 1e-6,
            "{e:?}"
        );
    }
}
