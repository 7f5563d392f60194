//! The tokenizer and image preprocessing that belong to a model, chosen by its convention.

use std::path::Path;

use super::image::{ImageError, PreprocessConfig, Preprocessor};
use super::tokenizer::ClipTokenizer;
use super::Convention;

/// Text and image inputs prepared as the model's reference library prepares them.
pub struct InputPipeline {
    tokenizer: Result<ClipTokenizer, String>,
    preprocessor: Preprocessor,
}

impl InputPipeline {
    /// open_clip models get open_clip's tokenizer and transform (with `preprocess_cfg` mean and
    /// std from an `open_clip_config.json` in `dir`, when present); transformers directories get
    /// their own tokenizer files and `preprocessor_config.json`. A model without tokenizer files
    /// still preprocesses images; asking it for tokens gives the reason.
    pub fn new(
        convention: Convention,
        dir: Option<&Path>,
        context_length: usize,
        image_size: usize,
    ) -> Result<Self, ImageError> {
        let (tokenizer, config) = match convention {
            Convention::OpenClip => {
                let tok = ClipTokenizer::open_clip_default()
                    .map(|t| t.with_context_length(context_length))
                    .map_err(|e| e.to_string());
                let mut cfg = PreprocessConfig::open_clip(image_size);
                if let Some(d) = dir {
                    apply_open_clip_preprocess_cfg(&mut cfg, &d.join("open_clip_config.json"))?;
                }
                (tok, cfg)
            }
            Convention::Transformers => {
                let tok = match dir {
                    Some(d) => ClipTokenizer::from_hf_dir(d)
                        .map(|t| t.with_context_length(context_length))
                        .map_err(|e| e.to_string()),
                    None => Err("no model directory to read tokenizer files from".to_string()),
                };
                let pp = dir.map(|d| d.join("preprocessor_config.json"));
                let cfg = match pp {
                    Some(p) if p.is_file() => {
                        PreprocessConfig::from_hf_preprocessor_json(&p.display().to_string())?
                    }
                    _ => {
                        tracing::warn!("no preprocessor_config.json: using CLIPImageProcessor's defaults at {image_size} px");
                        PreprocessConfig {
                            image_size,
                            crop_size: image_size,
                            ..PreprocessConfig::transformers_default()
                        }
                    }
                };
                (tok, cfg)
            }
        };
        Ok(Self {
            tokenizer,
            preprocessor: Preprocessor::new(config),
        })
    }

    /// The tokenizer, or why the model has none (a transformers directory without tokenizer files).
    pub fn tokenizer(&self) -> Result<&ClipTokenizer, &str> {
        self.tokenizer.as_ref().map_err(String::as_str)
    }

    /// The tokenizer (or why the model has none) and the image preprocessing, taken apart: a
    /// trainer's data loader and its evaluation keep them.
    pub fn into_parts(self) -> (Result<ClipTokenizer, String>, Preprocessor) {
        (self.tokenizer, self.preprocessor)
    }

    /// The image preprocessing.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }
}

/// open_clip's hub directories may set mean and std in `open_clip_config.json`'s `preprocess_cfg`.
fn apply_open_clip_preprocess_cfg(
    cfg: &mut PreprocessConfig,
    path: &Path,
) -> Result<(), ImageError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ImageError::Config(format!("{}: not valid JSON: {e}", path.display())))?;
    let Some(pp) = value.get("preprocess_cfg") else {
        return Ok(());
    };
    let triple = |key: &str| -> Result<Option<[f32; 3]>, ImageError> {
        let Some(v) = pp.get(key) else {
            return Ok(None);
        };
        let a = v.as_array().filter(|a| a.len() == 3).ok_or_else(|| {
            ImageError::Config(format!(
                "{}: preprocess_cfg.{key} must be a list of three numbers",
                path.display()
            ))
        })?;
        let mut out = [0f32; 3];
        for (o, x) in out.iter_mut().zip(a) {
            *o = x.as_f64().ok_or_else(|| {
                ImageError::Config(format!(
                    "{}: preprocess_cfg.{key} must hold numbers",
                    path.display()
                ))
            })? as f32;
        }
        Ok(Some(out))
    };
    if let Some(mean) = triple("mean")? {
        cfg.mean = mean;
    }
    if let Some(std) = triple("std")? {
        cfg.std = std;
    }
    Ok(())
}
