//! Where a model comes from: a local directory in Hugging Face layout, an open_clip checkpoint
//! file with its architecture, or a Hugging Face model id, read from the hub cache or downloaded
//! into it ([`crate::hub`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::hub::{Hub, HubConfig, ModelId};
use crate::model::converted::ConvertedCache;
use crate::model::lowp::{Bf16Kernel, Int8Kernel};
use crate::model::{Clip, ClipConfig, KernelChoice, ModelError, Precision, Weights};

pub use crate::hub::DEFAULT_MODEL;

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
    /// Hugging Face model id (`ORG/NAME`, optionally `@REVISION`), read from the hub cache or
    /// downloaded into it, configured from the environment as huggingface_hub is
    /// ([`HubConfig::from_env`]).
    pub fn resolve(model: &str, arch: Option<&str>) -> Result<Self, ModelError> {
        Self::resolve_with(model, arch, &Hub::from_env())
    }

    /// [`ModelSource::resolve`] with an explicit hub client (endpoint, cache, token, offline
    /// mode, progress reporting).
    pub fn resolve_with(model: &str, arch: Option<&str>, hub: &Hub) -> Result<Self, ModelError> {
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
        if let Some(id) = ModelId::parse(model) {
            let dir = hub
                .model_snapshot(&id, arch.is_some())
                .map_err(|e| ModelError::Fetch(Box::new(e)))?;
            return Self::from_dir(&dir, arch);
        }
        Err(ModelError::Io {
            path: path.to_path_buf(),
            message: "no such file or directory, and not a Hugging Face model id (ORG/NAME); \
                      point --model at a local model directory (config.json + model.safetensors), \
                      at an open_clip checkpoint file with --arch, or name a model on the hub \
                      (e.g. openai/clip-vit-base-patch32)"
                .into(),
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
        let config = dir.join("config.json");
        let open_clip = dir.join("open_clip_config.json").is_file();
        // Some open_clip repositories (Marqo's) carry a config.json of their own that is not a
        // transformers CLIP config; their model is the open_clip one.
        if config.is_file()
            && !(open_clip && (!is_clip_config_file(&config) || hf_weight_files(dir).is_err()))
        {
            Ok(Self::HfDir(dir.to_path_buf()))
        } else if open_clip {
            Ok(Self::OpenClipDir(dir.to_path_buf()))
        } else {
            Err(ModelError::Io {
                path: dir.to_path_buf(),
                message: "neither config.json (transformers) nor open_clip_config.json (open_clip) found in the directory".into(),
            })
        }
    }

    /// The architecture, input convention and model directory, without reading weights or
    /// requiring them: a directory with only a config and tokenizer files is enough to
    /// tokenize and preprocess.
    pub fn describe(&self) -> Result<ModelDescription, ModelError> {
        match self {
            Self::HfDir(dir) => Ok(ModelDescription {
                config: ClipConfig::from_hf_file(&dir.join("config.json"))?,
                convention: Convention::Transformers,
                dir: Some(dir.clone()),
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
                })
            }
            Self::OpenClipFile { arch, .. } => Ok(ModelDescription {
                config: ClipConfig::open_clip(arch)?,
                convention: Convention::OpenClip,
                dir: None,
            }),
        }
    }

    /// The files holding the weights: an error when a directory has none.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>, ModelError> {
        match self {
            Self::HfDir(dir) => hf_weight_files(dir),
            Self::OpenClipDir(dir) => Ok(vec![
                first_existing(dir, OPEN_CLIP_WEIGHT_FILES).ok_or_else(|| no_weights(dir))?
            ]),
            Self::OpenClipFile { checkpoint, .. } => Ok(vec![checkpoint.clone()]),
        }
    }

    /// Loads the model on a device, in a dtype, for training: fp32 and every weight a
    /// trainable tensor. (Inference loads go through [`ModelSource::load_in`], whose default
    /// options use the fp32 linear weights in place in the checkpoint.)
    pub fn load(&self, device: &Device, dtype: DType) -> Result<LoadedModel, ModelError> {
        let options = LoadOptions {
            trainable: true,
            ..LoadOptions::default()
        };
        self.load_in(device, dtype, &options)
    }

    /// Loads the model with its transformer blocks' linear layers in the precision of
    /// `options` (bf16 and int8 weights are packed as they are read, or mapped from the
    /// converted-weights cache).
    pub fn load_in(
        &self,
        device: &Device,
        dtype: DType,
        options: &LoadOptions,
    ) -> Result<LoadedModel, ModelError> {
        let LoadOptions {
            precision,
            kernels,
            ref converted_cache,
            trainable,
        } = *options;
        let ModelDescription {
            config,
            convention,
            dir,
        } = self.describe()?;
        let weights = Weights::open(&self.weight_files()?, device, dtype)?
            .with_precision(precision, kernels)
            .for_training(trainable)
            .with_converted_cache(converted_cache);
        let portable = match precision {
            Precision::Fp32 => false,
            Precision::Bf16 => Bf16Kernel::best() == Bf16Kernel::Portable,
            Precision::Int8 => Int8Kernel::best() == Int8Kernel::Portable,
        };
        if portable && kernels == KernelChoice::Fastest {
            tracing::warn!(
                "this CPU lacks the AVX2/AVX-512 instructions of {precision}: it runs on portable \
                 kernels, several times slower than fp32 here (use --precision fp32)"
            );
        }
        let (clip, unused_tensors) = Clip::load(&config, &weights)?;
        weights.save_converted();
        Ok(LoadedModel {
            clip,
            convention,
            dir,
            unused_tensors,
        })
    }
}

/// How to load a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The precision of the transformer weights (fp32, exact, by default).
    pub precision: Precision,
    /// Which kernel variants the bf16/int8 layers run.
    pub kernels: KernelChoice,
    /// Where bf16/int8 weights converted at an earlier load are kept and found, and an fp32
    /// inference load's weights packed for this CPU's f32 panel kernel.
    pub converted_cache: ConvertedCache,
    /// Whether the model will be trained (fp32 only): its linear weights are then trainable
    /// `[in, out]` tensors. Otherwise (the default) fp32 linear weights are used in place in a
    /// mapped safetensors checkpoint, in PyTorch's `[out, in]` layout: no transposed copy.
    pub trainable: bool,
}

/// What a source holds, known before its weights are read.
#[derive(Debug, Clone)]
pub struct ModelDescription {
    pub config: ClipConfig,
    pub convention: Convention,
    /// The directory holding tokenizer and preprocessor files, when the source has one.
    pub dir: Option<PathBuf>,
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
        let shards = crate::hub::weight_map_files(&value);
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

fn is_clip_config_file(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .is_some_and(|v| crate::hub::is_clip_config(&v))
}

/// The hub cache directory, as huggingface_hub computes it from the environment.
pub fn hub_cache_dir() -> PathBuf {
    HubConfig::from_env().cache_dir
}

/// The snapshot directory of a model id (`org/name`) in the hub cache, following `refs/main`,
/// when it holds at least the model's config and weights. Never touches the network.
pub fn hub_cache_snapshot(model_id: &str) -> Option<PathBuf> {
    let id = ModelId::parse(model_id)?;
    Hub::from_env().cached_snapshot(&id, false).map(|s| s.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gclip-source-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fixture(sub: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/models")
            .join(sub)
    }

    #[test]
    fn directories_without_weights_describe_but_do_not_load() {
        let hf = scratch("hf");
        std::fs::copy(fixture("hf-fullvocab/config.json"), hf.join("config.json")).unwrap();
        let oc = scratch("oc");
        std::fs::copy(
            fixture("oc-fullvocab/open_clip_config.json"),
            oc.join("open_clip_config.json"),
        )
        .unwrap();
        for (dir, convention) in [(&hf, Convention::Transformers), (&oc, Convention::OpenClip)] {
            let s = ModelSource::resolve(dir.to_str().unwrap(), None).unwrap();
            let d = s.describe().unwrap();
            assert_eq!(d.convention, convention);
            assert_eq!(d.dir.as_deref(), Some(dir.as_path()));
            assert!(d.config.embed_dim > 0);
            let e = s.weight_files().unwrap_err().to_string();
            assert!(e.contains("no weight file"), "{e}");
            let e = s
                .load(&Device::Cpu, DType::F32)
                .err()
                .expect("no weights to load")
                .to_string();
            assert!(e.contains("no weight file"), "{e}");
        }
        // With weights, the same directory lists them.
        std::fs::copy(
            fixture("hf-fullvocab/model.safetensors"),
            hf.join("model.safetensors"),
        )
        .unwrap();
        let s = ModelSource::resolve(hf.to_str().unwrap(), None).unwrap();
        assert_eq!(s.weight_files().unwrap(), [hf.join("model.safetensors")]);
        let _ = std::fs::remove_dir_all(&hf);
        let _ = std::fs::remove_dir_all(&oc);
    }
}
