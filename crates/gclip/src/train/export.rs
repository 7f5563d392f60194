//! Writing models: the Hugging Face layout (`config.json`, `model.safetensors`, tokenizer and
//! preprocessor files) that `transformers.CLIPModel.from_pretrained` loads, and open_clip's
//! (`open_clip_config.json` + `open_clip_model.safetensors`, a plain state dict) that
//! `open_clip.create_model` + `load_checkpoint` load. Both go through gclip's own loader too.
//!
//! Tensor names come from the loader's own name map (`model::weights`), inverted: a name the
//! loader reads is exactly the name the exporter writes. Every file is written atomically
//! (temporary file, `fsync`, rename, `fsync` of the directory).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::{json, Value};

use super::params::canonical_tensors;
use super::TrainError;
use crate::input::image::PreprocessConfig;
use crate::model::weights::{checkpoint_source, SourceSpec};
use crate::model::{Activation, Clip, ClipConfig, NamingScheme, TextPooling};

/// Writes `bytes` to `path` whole or not at all ([`crate::fsutil::write_file_atomically`]).
fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    crate::fsutil::write_file_atomically(path, bytes).map_err(|e| TrainError::io(path, e))
}

/// Serialises tensors as safetensors bytes (names sorted, so output is deterministic).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, TrainError> {
    let mut sorted: Vec<(&String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n, t.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize(sorted.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| TrainError::Config(format!("cannot serialise tensors: {e}")))
}

/// The model's tensors under the checkpoint names of `scheme`, in the shapes those checkpoints
/// hold (transformers' q/k/v split, open_clip's projections transposed).
pub fn checkpoint_tensors(
    clip: &Clip,
    scheme: NamingScheme,
) -> Result<Vec<(String, Tensor)>, TrainError> {
    let mut out = Vec::new();
    for (name, t) in canonical_tensors(clip)? {
        let t = t.to_dtype(candle_core::DType::F32)?;
        match checkpoint_source(scheme, &name) {
            SourceSpec::Single { name, transpose } => {
                let t = if transpose { t.t()?.contiguous()? } else { t };
                out.push((name, t));
            }
            SourceSpec::Concat(parts) => {
                let rows = t.dim(0)? / parts.len();
                for (i, p) in parts.into_iter().enumerate() {
                    out.push((p, t.narrow(0, i * rows, rows)?.contiguous()?));
                }
            }
        }
    }
    Ok(out)
}

fn act_name(a: Activation) -> &'static str {
    match a {
        Activation::Gelu => "gelu",
        Activation::QuickGelu => "quick_gelu",
    }
}

/// A transformers `CLIPConfig` describing `cfg`. Argmax pooling is written as
/// `eos_token_id = 2`, which selects transformers' argmax path; first-id pooling as the id.
pub fn hf_config_json(cfg: &ClipConfig) -> Value {
    let t = &cfg.text;
    let v = &cfg.vision;
    let eos = match t.pooling {
        TextPooling::ArgMax => 2,
        TextPooling::FirstId(id) => id as usize,
    };
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": t.mlp_dim,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": act_name(t.activation),
            "layer_norm_eps": t.layer_norm_eps,
            "projection_dim": cfg.embed_dim,
            "bos_token_id": t.vocab_size.saturating_sub(2),
            "eos_token_id": eos,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_size": v.width,
            "intermediate_size": v.mlp_dim,
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "hidden_act": act_name(v.activation),
            "layer_norm_eps": v.layer_norm_eps,
            "projection_dim": cfg.embed_dim,
        }
    })
}

/// An open_clip model config (`embed_dim`, `quick_gelu`, `vision_cfg`, `text_cfg`) describing
/// `cfg`, or why open_clip cannot express it.
pub fn open_clip_config_json(cfg: &ClipConfig) -> Result<Value, TrainError> {
    let (t, v) = (&cfg.text, &cfg.vision);
    let refuse = |why: String| {
        Err(TrainError::Config(format!(
            "open_clip's config format cannot express this model: {why}; export the Hugging Face layout instead"
        )))
    };
    if t.activation != v.activation {
        return refuse("the two towers use different activations".into());
    }
    if t.pooling != TextPooling::ArgMax {
        return refuse(
            "the text tower pools at the first end-of-text id, not at the argmax".into(),
        );
    }
    if t.layer_norm_eps != 1e-5 || v.layer_norm_eps != 1e-5 {
        return refuse("LayerNorm eps is not 1e-5".into());
    }
    let value = json!({
        "embed_dim": cfg.embed_dim,
        "quick_gelu": v.activation == Activation::QuickGelu,
        "vision_cfg": {
            "image_size": v.image_size,
            "layers": v.layers,
            "width": v.width,
            "head_width": v.width / v.heads,
            "mlp_ratio": v.mlp_dim as f64 / v.width as f64,
            "patch_size": v.patch_size,
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
            "mlp_ratio": t.mlp_dim as f64 / t.width as f64,
        }
    });
    // open_clip derives heads and MLP widths from ratios; make sure they come back exactly.
    let back = ClipConfig::from_open_clip_value(&value, "export")?;
    if &back != cfg {
        return refuse(format!(
            "its widths do not survive open_clip's ratios (vision {}×{} heads, mlp {}; text mlp {})",
            v.width, v.heads, v.mlp_dim, t.mlp_dim
        ));
    }
    Ok(value)
}

/// transformers' `preprocessor_config.json` for a `CLIPImageProcessor` doing `pp`.
pub fn hf_preprocessor_json(pp: &PreprocessConfig) -> Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": pp.do_resize,
        "size": {"shortest_edge": pp.image_size},
        "resample": 3,
        "do_center_crop": pp.do_center_crop,
        "crop_size": {"height": pp.crop_size, "width": pp.crop_size},
        "do_rescale": true,
        "rescale_factor": pp.rescale_factor,
        "do_normalize": pp.do_normalize,
        "image_mean": pp.mean,
        "image_std": pp.std,
        "do_convert_rgb": true,
    })
}

/// CLIP's tokenizer files in transformers' slow format (`vocab.json`, `merges.txt`), built
/// from the vocabulary gclip embeds: the same ids as open_clip's tokenizer.
fn clip_tokenizer_files(context_length: usize) -> Result<Vec<(&'static str, Vec<u8>)>, TrainError> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(crate::input::tokenizer::OPEN_CLIP_BPE_GZ)
        .read_to_string(&mut text)
        .map_err(|e| TrainError::Config(format!("embedded vocabulary: {e}")))?;
    let merges: Vec<&str> = text.split('\n').skip(1).take(49152 - 256 - 2).collect();
    let alphabet = crate::input::tokenizer::byte_alphabet();
    let mut vocab = serde_json::Map::new();
    let mut next = 0u32;
    let mut push = |t: String, vocab: &mut serde_json::Map<String, Value>| {
        vocab.insert(t, json!(next));
        next += 1;
    };
    for &(_, c) in &alphabet {
        push(c.to_string(), &mut vocab);
    }
    for &(_, c) in &alphabet {
        push(format!("{c}</w>"), &mut vocab);
    }
    for m in &merges {
        push(m.split_whitespace().collect::<String>(), &mut vocab);
    }
    push("<|startoftext|>".into(), &mut vocab);
    push("<|endoftext|>".into(), &mut vocab);
    let mut merges_txt = String::from("#version: 0.2\n");
    for m in &merges {
        merges_txt.push_str(m);
        merges_txt.push('\n');
    }
    let config = json!({
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    });
    let special = json!({
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    });
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    Ok(vec![
        (
            "vocab.json",
            serde_json::to_vec(&Value::Object(vocab)).unwrap_or_default(),
        ),
        ("merges.txt", merges_txt.into_bytes()),
        ("tokenizer_config.json", pretty(&config)),
        ("special_tokens_map.json", pretty(&special)),
    ])
}

/// Tokenizer files a transformers model directory may carry.
const HF_TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Where an exported model's tokenizer comes from.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// open_clip's vocabulary, shipped inside gclip (the files are generated).
    OpenClip,
    /// The tokenizer files of a transformers model directory, copied.
    HfDir(PathBuf),
}

/// Writes `clip` in the Hugging Face layout into `dir` (created if needed). Returns the files
/// written.
pub fn export_hf(
    clip: &Clip,
    dir: &Path,
    preprocess: &PreprocessConfig,
    tokenizer: &TokenizerSource,
) -> Result<Vec<PathBuf>, TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<(), TrainError> {
        let p = dir.join(name);
        atomic_write(&p, bytes)?;
        written.push(p);
        Ok(())
    };
    let tensors = checkpoint_tensors(clip, NamingScheme::HuggingFace)?;
    put("model.safetensors", &safetensors_bytes(&tensors)?)?;
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    put("config.json", &pretty(&hf_config_json(&clip.config)))?;
    put(
        "preprocessor_config.json",
        &pretty(&hf_preprocessor_json(preprocess)),
    )?;
    match tokenizer {
        TokenizerSource::OpenClip => {
            for (name, bytes) in clip_tokenizer_files(clip.config.text.context_length)? {
                put(name, &bytes)?;
            }
        }
        TokenizerSource::HfDir(src) => {
            let mut any = false;
            for name in HF_TOKENIZER_FILES {
                let p = src.join(name);
                if p.is_file() {
                    let bytes = std::fs::read(&p).map_err(|e| TrainError::io(&p, e))?;
                    put(name, &bytes)?;
                    any = true;
                }
            }
            if !any {
                return Err(TrainError::Config(format!(
                    "{} holds no tokenizer files to copy",
                    src.display()
                )));
            }
        }
    }
    Ok(written)
}

/// Writes `clip` as open_clip publishes models on the hub: `open_clip_config.json`
/// (`model_cfg` and `preprocess_cfg`) and `open_clip_model.safetensors` (the state dict).
pub fn export_open_clip(
    clip: &Clip,
    dir: &Path,
    preprocess: &PreprocessConfig,
) -> Result<Vec<PathBuf>, TrainError> {
    let model_cfg = open_clip_config_json(&clip.config)?;
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let tensors = checkpoint_tensors(clip, NamingScheme::OpenClip)?;
    let weights = dir.join("open_clip_model.safetensors");
    atomic_write(&weights, &safetensors_bytes(&tensors)?)?;
    let cfg = json!({
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": preprocess.mean,
            "std": preprocess.std,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }
    });
    let cfg_path = dir.join("open_clip_config.json");
    atomic_write(
        &cfg_path,
        &serde_json::to_vec_pretty(&cfg).unwrap_or_default(),
    )?;
    Ok(vec![cfg_path, weights])
}

/// Tensors by name from a safetensors file (for optimiser state).
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>, TrainError> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
        TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("unreadable safetensors file: {e}"),
        }
    })
}
