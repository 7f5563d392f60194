//! Which model family a transformers `config.json` describes, so that a model gclip cannot run
//! (SigLIP, BLIP, …) is named as such instead of failing on the first key its config lacks.
//! Read by the hub client (before downloading weights) and by the config parser.

use serde_json::Value;

/// The `model_type` of the configs gclip runs: transformers' `CLIPModel`.
const SUPPORTED_MODEL_TYPE: &str = "clip";

/// What gclip runs, for the messages that name an unsupported family.
pub const SUPPORTED_FAMILIES: &str =
    "CLIP (transformers CLIPModel, open_clip ViT checkpoints, Marqo GCL)";

/// Names people know families by, from transformers' `model_type`.
const FAMILY_NAMES: &[(&str, &str)] = &[
    ("siglip", "SigLIP"),
    ("siglip2", "SigLIP 2"),
    ("chinese_clip", "Chinese-CLIP"),
    ("altclip", "AltCLIP"),
    ("align", "ALIGN"),
    ("blip", "BLIP"),
    ("blip-2", "BLIP-2"),
    ("owlvit", "OWL-ViT"),
    ("owlv2", "OWLv2"),
    (
        "clip_vision_model",
        "A CLIP vision tower alone (CLIPVisionModel)",
    ),
    ("clip_text_model", "A CLIP text tower alone (CLIPTextModel)"),
];

/// Why gclip cannot run the model of this `config.json`, naming its family from `model_type`
/// (else `architectures`); None for a CLIP config, or one that names no family at all.
pub fn unsupported_family(config: &Value) -> Option<String> {
    let model_type = config.get("model_type").and_then(Value::as_str);
    let architecture = config
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let supported = match (model_type, architecture) {
        (Some(t), _) => t.eq_ignore_ascii_case(SUPPORTED_MODEL_TYPE),
        (None, Some(a)) => a.starts_with("CLIP"),
        (None, None) => true,
    };
    if supported {
        return None;
    }
    let named = model_type.and_then(|t| {
        FAMILY_NAMES
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(t))
            .map(|(_, name)| *name)
    });
    let what = match (named, model_type, architecture) {
        (Some(name), Some(t), _) => format!("{name} (model_type `{t}`)"),
        (None, Some(t), Some(a)) => format!("{a} (model_type `{t}`)"),
        (None, Some(t), None) => format!("model_type `{t}`"),
        (_, None, Some(a)) => a.to_string(),
        (_, None, None) => return None,
    };
    Some(format!(
        "{what} is not supported (supported: {SUPPORTED_FAMILIES})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clip_configs_are_supported() {
        assert_eq!(unsupported_family(&json!({"model_type": "clip"})), None);
        assert_eq!(
            unsupported_family(&json!({"architectures": ["CLIPModel"]})),
            None
        );
        // Fixtures and old exports may name nothing: they are read as CLIP.
        assert_eq!(unsupported_family(&json!({"text_config": {}})), None);
    }

    #[test]
    fn other_families_are_named() {
        let siglip = json!({"model_type": "siglip", "architectures": ["SiglipModel"],
                            "text_config": {}, "vision_config": {}});
        let message = unsupported_family(&siglip).unwrap();
        assert!(
            message.starts_with("SigLIP (model_type `siglip`) is not supported (supported: CLIP"),
            "{message}"
        );
        let unknown = json!({"model_type": "fancy", "architectures": ["FancyModel"]});
        assert!(unsupported_family(&unknown)
            .unwrap()
            .starts_with("FancyModel (model_type `fancy`) is not supported"));
        let only_architecture = json!({"architectures": ["BlipModel"]});
        assert!(unsupported_family(&only_architecture)
            .unwrap()
            .starts_with("BlipModel is not supported"));
    }
}
