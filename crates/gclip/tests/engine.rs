//! The towers against the reference libraries: small random models saved by transformers and
//! open_clip (tools/gen_fixtures.py), their token ids and pixels in, their embeddings out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gclip::model::{ClipConfig, ModelError};
use gclip::source::{Convention, LoadedModel, ModelSource};

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .expect("reference file")
}

fn ids_of(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "different sizes");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loads `source`, embeds the reference inputs and compares with the reference outputs.
fn check_against_reference(dir: &Path, source: ModelSource, convention: Convention) {
    let LoadedModel {
        clip,
        convention: got,
        unused_tensors,
        ..
    } = source.load(&Device::Cpu, DType::F32).expect("model loads");
    assert_eq!(got, convention);
    assert!(
        unused_tensors.is_empty(),
        "unexpected tensors: {unused_tensors:?}"
    );
    let r = reference(dir);
    let flat = |name: &str| r[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();

    let ids = ids_of(&r["input_ids"]);
    let text = clip.encode_text_ids(&ids, true).unwrap();
    let d = max_abs_diff(&text.data, &flat("text_embeds"));
    assert!(
        d <= TOLERANCE,
        "{}: text embeddings differ by {d}",
        dir.display()
    );
    let raw = clip.encode_text_ids(&ids, false).unwrap();
    let d_raw = max_abs_diff(&raw.data, &flat("text_features_raw"));
    assert!(
        d_raw <= TOLERANCE * 10.0,
        "{}: raw text features differ by {d_raw}",
        dir.display()
    );

    let images = clip.encode_pixels(&r["pixel_values"], true).unwrap();
    let d = max_abs_diff(&images.data, &flat("image_embeds"));
    assert!(
        d <= TOLERANCE,
        "{}: image embeddings differ by {d}",
        dir.display()
    );
    let raw = clip.encode_pixels(&r["pixel_values"], false).unwrap();
    let d_raw = max_abs_diff(&raw.data, &flat("image_features_raw"));
    assert!(
        d_raw <= TOLERANCE * 10.0,
        "{}: raw image features differ by {d_raw}",
        dir.display()
    );

    eprintln!(
        "{}: max |Δ| text {:.2e}, image {d:.2e}",
        dir.display(),
        max_abs_diff(&text.data, &flat("text_embeds"))
    );

    // Each weight has run once or twice by now; on AVX-512 CPUs later products of the fp32
    // linears go through the weight packed for the f32 panel kernel, not read in place.
    let again = clip.encode_text_ids(&ids, true).unwrap();
    let d = max_abs_diff(&again.data, &flat("text_embeds"));
    assert!(
        d <= TOLERANCE,
        "{}: text embeddings, third run, differ by {d}",
        dir.display()
    );
    let again = clip.encode_pixels(&r["pixel_values"], true).unwrap();
    let d = max_abs_diff(&again.data, &flat("image_embeds"));
    assert!(
        d <= TOLERANCE,
        "{}: image embeddings, third run, differ by {d}",
        dir.display()
    );

    let scale = clip.logit_scale.to_scalar::<f32>().unwrap();
    assert_eq!(scale, flat("logit_scale")[0]);

    // Embedding one row at a time runs shorter sequences: the result must not change.
    for (i, row) in ids.iter().enumerate() {
        let one = clip
            .encode_text_ids(std::slice::from_ref(row), true)
            .unwrap();
        let d = max_abs_diff(one.row(0), text.row(i));
        assert!(d <= 1e-5, "row {i} alone differs from the batch by {d}");
    }
}

#[test]
fn hf_gelu_safetensors_matches_transformers() {
    let dir = fixture("hf-gelu");
    check_against_reference(
        &dir,
        ModelSource::HfDir(dir.clone()),
        Convention::Transformers,
    );
}

#[test]
fn hf_quickgelu_pytorch_bin_matches_transformers() {
    let dir = fixture("hf-quickgelu");
    check_against_reference(
        &dir,
        ModelSource::HfDir(dir.clone()),
        Convention::Transformers,
    );
}

#[test]
fn open_clip_gelu_matches_open_clip_from_pt_and_safetensors() {
    let dir = fixture("oc-gelu");
    let arch = dir.join("open_clip_config.json").display().to_string();
    for file in ["open_clip_model.pt", "open_clip_model.safetensors"] {
        let source = ModelSource::OpenClipFile {
            checkpoint: dir.join(file),
            arch: arch.clone(),
        };
        check_against_reference(&dir, source, Convention::OpenClip);
    }
}

#[test]
fn open_clip_quickgelu_wrapped_state_dict_matches_open_clip() {
    let dir = fixture("oc-quickgelu");
    let source = ModelSource::resolve(
        dir.join("checkpoint.pt").to_str().unwrap(),
        Some(dir.join("open_clip_config.json").to_str().unwrap()),
    )
    .unwrap();
    check_against_reference(&dir, source, Convention::OpenClip);
}

#[test]
fn open_clip_full_vocabulary_model_matches_open_clip() {
    let dir = fixture("oc-fullvocab");
    let source = ModelSource::OpenClipFile {
        checkpoint: dir.join("open_clip_model.safetensors"),
        arch: dir.join("open_clip_config.json").display().to_string(),
    };
    check_against_reference(&dir, source, Convention::OpenClip);
}

/// Full-size ViT-B/32 (151 M parameters), generated by `tools/gen_fixtures.py --full DIR`
/// (about 600 MB, not committed): run it with
/// `GCLIP_FULL_FIXTURE=DIR cargo test -p gclip --test engine -- --ignored full_size`.
#[test]
#[ignore = "needs the 600 MB full-size fixture: GCLIP_FULL_FIXTURE=DIR from tools/gen_fixtures.py --full"]
fn full_size_vit_b_32_matches_transformers() {
    let dir = std::env::var_os("GCLIP_FULL_FIXTURE")
        .map(PathBuf::from)
        .expect("set GCLIP_FULL_FIXTURE to the directory written by tools/gen_fixtures.py --full");
    check_against_reference(
        &dir,
        ModelSource::HfDir(dir.clone()),
        Convention::Transformers,
    );
    if dir.join("open_clip_model.pt").is_file() {
        let source = ModelSource::OpenClipFile {
            checkpoint: dir.join("open_clip_model.pt"),
            arch: "ViT-B-32-quickgelu".into(),
        };
        check_against_reference(&dir, source, Convention::OpenClip);
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input: clear errors, never panics.

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-engine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load_err(source: ModelSource) -> ModelError {
    match source.load(&Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e,
    }
}

#[test]
fn missing_weight_file_is_a_clear_error() {
    let dir = scratch("missing");
    std::fs::copy(
        fixture("hf-gelu").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let msg = load_err(ModelSource::HfDir(dir.clone())).to_string();
    assert!(
        msg.contains("no weight file") && msg.contains("model.safetensors"),
        "{msg}"
    );

    let msg = ModelSource::resolve(dir.join("nope.pt").to_str().unwrap(), Some("ViT-B-32"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("nope.pt") && msg.contains("no such file"),
        "{msg}"
    );
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let dir = scratch("truncated");
    let src = fixture("hf-gelu");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(ModelSource::HfDir(dir.clone()));
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Checkpoint { .. }), "{msg}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a readable safetensors file"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_tensor_is_named() {
    let dir = scratch("shape");
    let src = fixture("hf-gelu");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let name = "text_model.encoder.layers.1.mlp.fc1.weight";
    tensors.insert(
        name.into(),
        Tensor::zeros((192, 47), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let err = load_err(ModelSource::HfDir(dir.clone()));
    match &err {
        ModelError::TensorShape {
            name: n,
            expected,
            found,
            ..
        } => {
            assert_eq!(n, name);
            assert_eq!(expected, &[192, 48]);
            assert_eq!(found, &[192, 47]);
        }
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn missing_tensor_is_named_and_extra_tensors_are_reported() {
    let dir = scratch("missing-tensor");
    let src = fixture("hf-gelu");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.insert(
        "some.extra.tensor".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let loaded = ModelSource::HfDir(dir.clone())
        .load(&Device::Cpu, DType::F32)
        .unwrap();
    assert_eq!(loaded.unused_tensors, vec!["some.extra.tensor".to_string()]);

    tensors.remove("vision_model.embeddings.class_embedding");
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let msg = load_err(ModelSource::HfDir(dir.clone())).to_string();
    assert!(
        msg.contains("vision_model.embeddings.class_embedding"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture_lists_the_known_ones() {
    let msg = ClipConfig::open_clip("ViT-Q-99").unwrap_err().to_string();
    assert!(
        msg.contains("ViT-Q-99") && msg.contains("ViT-B-32") && msg.contains("ViT-L-14-336"),
        "{msg}"
    );
}

#[test]
fn unsupported_activation_is_rejected() {
    let text = std::fs::read_to_string(fixture("hf-gelu").join("config.json")).unwrap();
    let text = text.replacen("\"gelu\"", "\"silu\"", 1);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let msg = ClipConfig::from_hf_value(&value, "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("hidden_act") && msg.contains("silu") && msg.contains("quick_gelu"),
        "{msg}"
    );
}

#[test]
fn builtin_architectures_parse() {
    for name in ClipConfig::builtin_names() {
        let c = ClipConfig::open_clip(name).unwrap();
        assert_eq!(c.text.context_length, 77, "{name}");
    }
    let b32 = ClipConfig::open_clip("ViT-B-32").unwrap();
    assert_eq!(
        (
            b32.vision.width,
            b32.vision.heads,
            b32.vision.tokens(),
            b32.embed_dim
        ),
        (768, 12, 50, 512)
    );
    let h14 = ClipConfig::open_clip("ViT-H-14").unwrap();
    assert_eq!((h14.vision.heads, h14.vision.mlp_dim), (16, 5120));
}
