//! Architecture configs, read from a Hugging Face `config.json` or an open_clip model config,
//! and the open_clip configs shipped inside the binary.

use std::path::Path;

use serde_json::Value;

use super::kernels::Activation;
use super::ModelError;

/// The image tower: a Vision Transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Side of the square input image, in pixels.
    pub image_size: usize,
    /// Side of the square patches.
    pub patch_size: usize,
    /// Residual stream width.
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    /// Hidden width of each MLP.
    pub mlp_dim: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: one per patch plus the class token.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// Where the text tower reads its pooled output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPooling {
    /// At the largest token id (the end-of-text token is the largest id in CLIP's vocabulary).
    /// open_clip always does this; transformers does when `eos_token_id == 2` (legacy configs).
    ArgMax,
    /// At the first position holding this id (transformers with a real `eos_token_id`).
    FirstId(u32),
}

/// The text tower: a causal Transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    /// Maximum number of tokens (77 for every CLIP model).
    pub context_length: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
    pub pooling: TextPooling,
}

/// Both towers and the shared embedding space.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// Dimension of the shared embedding space.
    pub embed_dim: usize,
}

/// The open_clip model configs compiled into the binary: `(name, JSON)`.
const BUILTIN_OPEN_CLIP: &[(&str, &str)] = &[
    ("ViT-B-32", include_str!("configs/ViT-B-32.json")),
    (
        "ViT-B-32-quickgelu",
        include_str!("configs/ViT-B-32-quickgelu.json"),
    ),
    ("ViT-B-16", include_str!("configs/ViT-B-16.json")),
    (
        "ViT-B-16-quickgelu",
        include_str!("configs/ViT-B-16-quickgelu.json"),
    ),
    ("ViT-L-14", include_str!("configs/ViT-L-14.json")),
    (
        "ViT-L-14-quickgelu",
        include_str!("configs/ViT-L-14-quickgelu.json"),
    ),
    ("ViT-L-14-336", include_str!("configs/ViT-L-14-336.json")),
    ("ViT-H-14", include_str!("configs/ViT-H-14.json")),
];

impl ClipConfig {
    /// Names of the open_clip architectures shipped with gclip.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN_OPEN_CLIP.iter().map(|(name, _)| *name)
    }

    /// An open_clip architecture by name (`ViT-B-32`, …) or a path to an open_clip config JSON.
    pub fn open_clip(name_or_path: &str) -> Result<Self, ModelError> {
        if let Some((_, json)) = BUILTIN_OPEN_CLIP.iter().find(|(n, _)| *n == name_or_path) {
            let value: Value = serde_json::from_str(json).map_err(|e| ModelError::Config {
                source_name: name_or_path.to_string(),
                message: e.to_string(),
            })?;
            return Self::from_open_clip_value(&value, name_or_path);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "json") || path.is_file() {
            return Self::from_open_clip_file(path);
        }
        Err(ModelError::UnknownArchitecture {
            name: name_or_path.to_string(),
            known: Self::builtin_names().collect::<Vec<_>>().join(", "),
        })
    }

    /// Reads an open_clip model config file.
    pub fn from_open_clip_file(path: &Path) -> Result<Self, ModelError> {
        let value = read_json(path)?;
        Self::from_open_clip_value(&value, &path.display().to_string())
    }

    /// Reads a Hugging Face `config.json` of a `CLIPModel`.
    pub fn from_hf_file(path: &Path) -> Result<Self, ModelError> {
        let value = read_json(path)?;
        Self::from_hf_value(&value, &path.display().to_string())
    }

    /// Parses an open_clip model config (`embed_dim`, `vision_cfg`, `text_cfg`, `quick_gelu`).
    pub fn from_open_clip_value(v: &Value, source_name: &str) -> Result<Self, ModelError> {
        let c = Cfg {
            v,
            source_name,
            section: "",
        };
        let embed_dim = c.usize("embed_dim")?;
        let activation = if c.opt_bool("quick_gelu")?.unwrap_or(false) {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        };
        let vc = c.section("vision_cfg")?;
        for unsupported in ["timm_model_name", "attentional_pool", "ls_init_value"] {
            vc.reject_truthy(unsupported)?;
        }
        if vc.v.get("layers").is_some_and(|l| !l.is_u64()) {
            return Err(c.err("vision_cfg.layers is a list: ResNet towers are not supported"));
        }
        vc.reject_unless("pool_type", &["tok"])?;
        vc.reject_truthy("final_ln_after_pool")?;
        vc.reject_truthy("no_ln_pre")?;
        let width = vc.usize("width")?;
        let head_width = vc.opt_usize("head_width")?.unwrap_or(64);
        let mlp_ratio = vc.opt_f64("mlp_ratio")?.unwrap_or(4.0);
        let vision = VisionConfig {
            image_size: vc.image_size()?,
            patch_size: vc.usize("patch_size")?,
            width,
            layers: vc.usize("layers")?,
            heads: width / head_width.max(1),
            mlp_dim: (width as f64 * mlp_ratio) as usize,
            activation,
            layer_norm_eps: 1e-5,
        };
        let tc = c.section("text_cfg")?;
        for unsupported in [
            "hf_model_name",
            "ls_init_value",
            "embed_cls",
            "no_causal_mask",
            "proj_bias",
        ] {
            tc.reject_truthy(unsupported)?;
        }
        tc.reject_unless("pool_type", &["argmax"])?;
        let twidth = tc.opt_usize("width")?.unwrap_or(512);
        let tmlp = tc.opt_f64("mlp_ratio")?.unwrap_or(4.0);
        let text = TextConfig {
            vocab_size: tc.opt_usize("vocab_size")?.unwrap_or(49408),
            context_length: tc.opt_usize("context_length")?.unwrap_or(77),
            width: twidth,
            layers: tc.opt_usize("layers")?.unwrap_or(12),
            heads: tc.opt_usize("heads")?.unwrap_or(8),
            mlp_dim: (twidth as f64 * tmlp) as usize,
            activation,
            layer_norm_eps: 1e-5,
            pooling: TextPooling::ArgMax,
        };
        let cfg = ClipConfig {
            vision,
            text,
            embed_dim,
        };
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    /// Parses a Hugging Face `CLIPConfig` (`text_config`, `vision_config`, `projection_dim`).
    pub fn from_hf_value(v: &Value, source_name: &str) -> Result<Self, ModelError> {
        if let Some(message) = crate::family::unsupported_family(v) {
            return Err(ModelError::Config {
                source_name: source_name.to_string(),
                message,
            });
        }
        let c = Cfg {
            v,
            source_name,
            section: "",
        };
        let embed_dim = c.opt_usize("projection_dim")?.unwrap_or(512);
        let vc = c.section("vision_config")?;
        let vision = VisionConfig {
            image_size: vc.opt_usize("image_size")?.unwrap_or(224),
            patch_size: vc.opt_usize("patch_size")?.unwrap_or(32),
            width: vc.opt_usize("hidden_size")?.unwrap_or(768),
            layers: vc.opt_usize("num_hidden_layers")?.unwrap_or(12),
            heads: vc.opt_usize("num_attention_heads")?.unwrap_or(12),
            mlp_dim: vc.opt_usize("intermediate_size")?.unwrap_or(3072),
            activation: vc.activation()?,
            layer_norm_eps: vc.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
        };
        let tc = c.section("text_config")?;
        let eos = tc.opt_usize("eos_token_id")?.unwrap_or(2);
        let text = TextConfig {
            vocab_size: tc.opt_usize("vocab_size")?.unwrap_or(49408),
            context_length: tc.opt_usize("max_position_embeddings")?.unwrap_or(77),
            width: tc.opt_usize("hidden_size")?.unwrap_or(512),
            layers: tc.opt_usize("num_hidden_layers")?.unwrap_or(12),
            heads: tc.opt_usize("num_attention_heads")?.unwrap_or(8),
            mlp_dim: tc.opt_usize("intermediate_size")?.unwrap_or(2048),
            activation: tc.activation()?,
            layer_norm_eps: tc.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
            pooling: if eos == 2 {
                TextPooling::ArgMax
            } else {
                TextPooling::FirstId(eos as u32)
            },
        };
        let cfg = ClipConfig {
            vision,
            text,
            embed_dim,
        };
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    fn validate(&self, source_name: &str) -> Result<(), ModelError> {
        let bad = |message: String| ModelError::Config {
            source_name: source_name.to_string(),
            message,
        };
        let v = &self.vision;
        if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(bad(format!(
                "vision image size {} is not a multiple of the patch size {}",
                v.image_size, v.patch_size
            )));
        }
        for (tower, width, heads) in [
            ("vision", v.width, v.heads),
            ("text", self.text.width, self.text.heads),
        ] {
            if heads == 0 || width == 0 || width % heads != 0 {
                return Err(bad(format!(
                    "{tower} width {width} is not divisible by {heads} heads"
                )));
            }
        }
        if self.text.context_length == 0 || self.text.vocab_size == 0 || self.embed_dim == 0 {
            return Err(bad(
                "context length, vocabulary size and embedding dimension must be positive".into(),
            ));
        }
        Ok(())
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        source_name: path.display().to_string(),
        message: format!("not valid JSON: {e}"),
    })
}

/// A view of one JSON object of a config file, for typed field access with errors that name
/// the file and the field.
struct Cfg<'a> {
    v: &'a Value,
    source_name: &'a str,
    section: &'a str,
}

impl<'a> Cfg<'a> {
    fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            source_name: self.source_name.to_string(),
            message: message.into(),
        }
    }

    fn field_name(&self, key: &str) -> String {
        if self.section.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.section)
        }
    }

    fn section(&self, key: &'a str) -> Result<Cfg<'a>, ModelError> {
        match self.v.get(key) {
            Some(v) if v.is_object() => Ok(Cfg {
                v,
                source_name: self.source_name,
                section: key,
            }),
            _ => Err(self.err(format!("missing object `{key}`"))),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(format!(
                    "`{}` must be a non-negative integer, got {v}",
                    self.field_name(key)
                ))
            }),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("missing `{}`", self.field_name(key))))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.err(format!(
                    "`{}` must be a number, got {v}",
                    self.field_name(key)
                ))
            }),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                self.err(format!(
                    "`{}` must be true or false, got {v}",
                    self.field_name(key)
                ))
            }),
        }
    }

    /// open_clip allows `image_size` as an int or a `[h, w]` pair; only square images are supported.
    fn image_size(&self) -> Result<usize, ModelError> {
        match self.v.get("image_size") {
            Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => a[0]
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.err("`vision_cfg.image_size` must hold integers")),
            Some(Value::Array(a)) => Err(self.err(format!(
                "`vision_cfg.image_size` {a:?} is not square; only square images are supported"
            ))),
            _ => self.usize("image_size"),
        }
    }

    /// Options gclip does not implement: an error rather than a silently different model.
    fn reject_truthy(&self, key: &str) -> Result<(), ModelError> {
        match self.v.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
            Some(Value::String(s)) if s.is_empty() => Ok(()),
            Some(v) => Err(self.err(format!(
                "`{}` = {v} is not supported by gclip",
                self.field_name(key)
            ))),
        }
    }

    fn reject_unless(&self, key: &str, allowed: &[&str]) -> Result<(), ModelError> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(v) => Err(self.err(format!(
                "`{}` = {v} is not supported by gclip (supported: {})",
                self.field_name(key),
                allowed.join(", ")
            ))),
        }
    }

    fn activation(&self) -> Result<Activation, ModelError> {
        match self.v.get("hidden_act").and_then(Value::as_str) {
            None => Ok(Activation::QuickGelu),
            Some("quick_gelu") => Ok(Activation::QuickGelu),
            Some("gelu") => Ok(Activation::Gelu),
            Some(other) => Err(self.err(format!(
                "`{}` = \"{other}\" is not supported (supported: gelu, quick_gelu)",
                self.field_name("hidden_act")
            ))),
        }
    }
}
