//! Which files make a model, decided from the files a revision has (the hub's listing or a
//! cached snapshot), so that a download and a cache lookup agree on what is needed.

use serde_json::Value;

use super::{file_name_ok, HubError};

/// The files the transformers convention reads besides config and weights, when the repository
/// has them.
const HF_EXTRA_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
];

/// Weight files of the open_clip convention, preferred first.
const OPEN_CLIP_WEIGHTS: &[&str] = &["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];

/// Weight files a checkpoint given with `--arch` may come from, preferred first (as
/// `ModelSource` looks them up in a directory).
const ARCH_WEIGHTS: &[&str] = &[
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_model.pt",
    "model.safetensors",
    "pytorch_model.bin",
];

/// Whether a parsed `config.json` is a transformers CLIP config (and not, say, a custom
/// wrapper's config that points at open_clip files, as Marqo's models have).
pub fn is_clip_config(config: &Value) -> bool {
    config.get("text_config").is_some_and(Value::is_object)
        || config.get("vision_config").is_some_and(Value::is_object)
}

/// What a plan needs to know about a set of files: the hub's listing, or a cached snapshot.
pub(super) trait FileSet {
    fn has(&self, name: &str) -> bool;
    fn json(&mut self, name: &str) -> Result<Value, HubError>;
}

/// Which files make a model, decided from the files a revision has.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    /// Files the model needs.
    pub(super) required: Vec<String>,
    /// Files read when present (transformers tokenizer and preprocessor files).
    pub(super) optional: Vec<&'static str>,
}

pub(super) fn plan(repo: &str, files: &mut dyn FileSet, arch: bool) -> Result<Plan, HubError> {
    let not_a_model = |reason: &str| HubError::NotAModel {
        repo: repo.to_string(),
        reason: reason.to_string(),
    };
    if arch {
        // A checkpoint for an architecture given by name: its weights are all it takes.
        let w = ARCH_WEIGHTS
            .iter()
            .find(|w| files.has(w))
            .ok_or_else(|| not_a_model(&format!("no weight file ({})", ARCH_WEIGHTS.join(", "))))?;
        return Ok(Plan {
            required: vec![w.to_string()],
            optional: vec![],
        });
    }
    let mut hf_config = false;
    if files.has("config.json") {
        let config = files.json("config.json")?;
        // Said before any weights are downloaded. open_clip repositories (Marqo's) may carry a
        // config.json of another kind beside their own config: theirs decides.
        if let (Some(reason), false) = (
            crate::family::unsupported_family(&config),
            files.has("open_clip_config.json"),
        ) {
            return Err(not_a_model(&reason));
        }
        hf_config = is_clip_config(&config);
    }
    if hf_config {
        let mut required = vec!["config.json".to_string()];
        if files.has("model.safetensors") {
            required.push("model.safetensors".into());
        } else if files.has("model.safetensors.index.json") {
            let index = files.json("model.safetensors.index.json")?;
            let shards = weight_map_files(&index);
            if shards.is_empty() {
                return Err(not_a_model(
                    "model.safetensors.index.json has no `weight_map`",
                ));
            }
            if let Some(bad) = shards.iter().find(|s| !file_name_ok(s)) {
                return Err(not_a_model(&format!(
                    "model.safetensors.index.json names an invalid shard `{bad}`"
                )));
            }
            required.push("model.safetensors.index.json".into());
            required.extend(shards);
        } else if files.has("pytorch_model.bin") {
            required.push("pytorch_model.bin".into());
        } else if !files.has("open_clip_config.json") {
            return Err(not_a_model(
                "config.json but no model.safetensors, model.safetensors.index.json or \
                 pytorch_model.bin",
            ));
        } else {
            hf_config = false;
        }
        if hf_config {
            return Ok(Plan {
                required,
                optional: HF_EXTRA_FILES.to_vec(),
            });
        }
    }
    if files.has("open_clip_config.json") {
        let w = OPEN_CLIP_WEIGHTS
            .iter()
            .find(|w| files.has(w))
            .ok_or_else(|| {
                not_a_model(
                    "open_clip_config.json but no open_clip_model.safetensors or \
                 open_clip_pytorch_model.bin",
                )
            })?;
        return Ok(Plan {
            required: vec!["open_clip_config.json".into(), w.to_string()],
            optional: vec![],
        });
    }
    Err(not_a_model(
        "neither a transformers CLIP config.json (with text_config / vision_config) nor \
         open_clip_config.json",
    ))
}

/// The shard files a `model.safetensors.index.json` names in its `weight_map`, sorted, each
/// once (empty when it has none).
pub(crate) fn weight_map_files(index: &Value) -> Vec<String> {
    let mut shards: Vec<String> = index
        .get("weight_map")
        .and_then(Value::as_object)
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    shards.sort();
    shards.dedup();
    shards
}
