//! Where a model comes from: a local directory in Hugging Face layout, an open_clip checkpoint
//! file with its architecture, or a Hugging Face model id already in the local hub cache.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::model::{Clip, ClipConfig, ModelError, Weights};

pub use crate::input::Convention;

/// A model location, resolved but not yet loaded.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A directory with `config.json` and `model.safetensors` / `pytorch_model.bin` (transformers).
    HfDir(PathBuf),
    /// A directory as open_clip publishes on the hub: `open_clip_config.json` (with `model_cfg`)
    /// and `open_clip_model.safetensors` / `open_clip_pytorch_model.bin`.
    OpenClipDir(PathBuf),
    /// An open_clip checkpoint file and an architecture name or config path.
    OpenClipFile { checkpoint: PathBuf, arch: String },
}

/// A loaded model with what is needed to feed it.
pub struct LoadedModel {
    pub clip: Clip,
    pub convention: Convention,
    /// The directory holding tokenizer and preprocessor files, when the source has one.
    pub dir: Option<PathBuf>,
    /// Checkpoint tensors that the architecture does not use.
    pub unused_tensors: Vec<String>,
}

impl ModelSource {
    /// Interprets a `--model` value: a directory, a checkpoint file (requires `arch`), or a
    /// Hugging Face id found in the local hub cache.
    pub fn resolve(model: &str, arch: Option<&str>) -> Result<Self, ModelError> {
        let path = Path::new(model);
        if path.is_file() {
            let arch = arch.ok_or_else(|| ModelError::Config {
                source_name: model.to_string(),
                message: "a checkpoint file needs --arch NAME|CONFIG.json (e.g. --arch ViT-B-32)"
                    .into(),
            })?;
            return Ok(Self::OpenClipFile {
                checkpoint: path.to_path_buf(),
                arch: arch.to_string(),
            });
        }
        if path.is_dir() {
            return Self::from_dir(path, arch);
        }
        if let Some(dir) = hub_cache_snapshot(model) {
            return Self::from_dir(&dir, arch);
        }
        Err(ModelError::Io {
            path: path.to_path_buf(),
            message: format!(
                "no such file or directory, and `{model}` is not in the Hugging Face cache ({}); \
                 point --model at a local model directory (config.json + model.safetensors) or at \
                 an open_clip checkpoint file with --arch",
                hub_cache_dir().display()
            ),
        })
    }

    fn from_dir(dir: &Path, arch: Option<&str>) -> Result<Self, ModelError> {
        if let Some(arch) = arch {
            let checkpoint =
                first_existing(dir, OPEN_CLIP_WEIGHT_FILES).ok_or_else(|| no_weights(dir))?;
            return Ok(Self::OpenClipFile {
                checkpoint,
                arch: arch.to_string(),
            });
        }
        if dir.join("config.json").is_file() {
            Ok(Self::HfDir(dir.to_path_buf()))
        } else if dir.join("open_clip_config.json").is_file() {
            Ok(Self::OpenClipDir(dir.to_path_buf()))
        } else {
            Err(ModelError::Io {
                path: dir.to_path_buf(),
                message: "neither config.json (transformers) nor open_clip_config.json (open_clip) found in the directory".into(),
            })
        }
    }

    /// The architecture, input convention and model directory, without reading any weights.
    pub fn describe(&self) -> Result<ModelDescription, ModelError> {
        match self {
            Self::HfDir(dir) => Ok(ModelDescription {
                config: ClipConfig::from_hf_file(&dir.join("config.json"))?,
                convention: Convention::Transformers,
                dir: Some(dir.clone()),
                weight_files: hf_weight_files(dir)?,
            }),
            Self::OpenClipDir(dir) => {
                let cfg_path = dir.join("open_clip_config.json");
                let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::Io {
                    path: cfg_path.clone(),
                    message: e.to_string(),
                })?;
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| ModelError::Config {
                        source_name: cfg_path.display().to_string(),
                        message: format!("not valid JSON: {e}"),
                    })?;
                // The hub's open_clip_config.json nests the model config under `model_cfg`.
                let model_cfg = value.get("model_cfg").unwrap_or(&value);
                Ok(ModelDescription {
                    config: ClipConfig::from_open_clip_value(
                        model_cfg,
                        &cfg_path.display().to_string(),
                    )?,
                    convention: Convention::OpenClip,
                    dir: Some(dir.clone()),
                    weight_files: vec![first_existing(dir, OPEN_CLIP_WEIGHT_FILES)
                        .ok_or_else(|| no_weights(dir))?],
                })
            }
            Self::OpenClipFile { checkpoint, arch } => Ok(ModelDescription {
                config: ClipConfig::open_clip(arch)?,
                convention: Convention::OpenClip,
                dir: None,
                weight_files: vec![checkpoint.clone()],
            }),
        }
    }

    /// Loads the model on a device, in a dtype.
    pub fn load(&self, device: &Device, dtype: DType) -> Result<LoadedModel, ModelError> {
        let ModelDescription {
            config,
            convention,
            dir,
            weight_files,
        } = self.describe()?;
        let weights = Weights::open(&weight_files, device, dtype)?;
        let (clip, unused_tensors) = Clip::load(&config, &weights)?;
        Ok(LoadedModel {
            clip,
            convention,
            dir,
            unused_tensors,
        })
    }
}

/// What a source holds, known before its weights are read.
#[derive(Debug, Clone)]
pub struct ModelDescription {
    pub config: ClipConfig,
    pub convention: Convention,
    /// The directory holding tokenizer and preprocessor files, when the source has one.
    pub dir: Option<PathBuf>,
    pub weight_files: Vec<PathBuf>,
}

const OPEN_CLIP_WEIGHT_FILES: &[&str] = &[
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_model.pt",
    "model.safetensors",
    "pytorch_model.bin",
];

fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

fn no_weights(dir: &Path) -> ModelError {
    ModelError::Io {
        path: dir.to_path_buf(),
        message: "no weight file found in the directory (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin, open_clip_model.safetensors, open_clip_pytorch_model.bin)".into(),
    }
}

/// The weight files of a transformers directory: one file, or the shards of an index.
fn hf_weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                source_name: index.display().to_string(),
                message: format!("not valid JSON: {e}"),
            })?;
        let mut shards: Vec<String> = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        if shards.is_empty() {
            return Err(ModelError::Config {
                source_name: index.display().to_string(),
                message: "no `weight_map` entries".into(),
            });
        }
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(vec![bin]);
    }
    Err(no_weights(dir))
}

/// The hub cache directory, as huggingface_hub computes it.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    home.join("huggingface").join("hub")
}

/// The snapshot directory of a model id (`org/name`) in the hub cache, following `refs/main`.
pub fn hub_cache_snapshot(model_id: &str) -> Option<PathBuf> {
    let (org, name) = model_id.split_once('/')?;
    if org.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    let repo = hub_cache_dir().join(format!("models--{org}--{name}"));
    let commit = std::fs::read_to_string(repo.join("refs").join("main")).ok()?;
    let snapshot = repo.join("snapshots").join(commit.trim());
    snapshot.is_dir().then_some(snapshot)
}
