//! Exported models reload through gclip's own loader with identical embeddings, in both
//! layouts; what open_clip's format cannot express is refused; the generated tokenizer files
//! tokenize exactly as open_clip's tokenizer.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gclip::input::image::PreprocessConfig;
use gclip::input::tokenizer::ClipTokenizer;
use gclip::model::{Clip, ClipConfig};
use gclip::source::{Convention, ModelSource};
use gclip::train::export::{export_hf, export_open_clip, TokenizerSource};
use gclip::train::init::init_open_clip;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-export-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn tiny() -> ClipConfig {
    let v = serde_json::json!({
        "embed_dim": 24,
        "quick_gelu": true,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}
    });
    ClipConfig::from_open_clip_value(&v, "tiny").unwrap()
}

fn embeddings(clip: &Clip) -> (Vec<f32>, Vec<f32>) {
    let tok = ClipTokenizer::open_clip_default().unwrap();
    let ids = tok.encode_batch(&["a red apple", "two dogs playing in the snow", "x"]);
    let ids: Vec<Vec<u32>> = ids
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|t| t % clip.config.text.vocab_size as u32)
                .collect()
        })
        .collect();
    let s = clip.config.vision.image_size;
    let n = 2 * 3 * s * s;
    let px: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();
    let px = Tensor::from_vec(px, (2, 3, s, s), &Device::Cpu).unwrap();
    (
        clip.encode_text_ids(&ids, false).unwrap().data,
        clip.encode_pixels(&px, false).unwrap().data,
    )
}

fn assert_same(a: &(Vec<f32>, Vec<f32>), b: &(Vec<f32>, Vec<f32>)) {
    assert_eq!(a.0, b.0, "text embeddings differ");
    assert_eq!(a.1, b.1, "image embeddings differ");
}

#[test]
fn trained_model_round_trips_through_both_layouts() {
    let clip = init_open_clip(&tiny(), 11, &Device::Cpu, DType::F32).unwrap();
    let want = embeddings(&clip);
    let pp = PreprocessConfig::open_clip(32);

    let hf = temp_dir("hf");
    let files = export_hf(&clip, &hf, &pp, &TokenizerSource::OpenClip).unwrap();
    assert_eq!(files.len(), 7);
    let src = ModelSource::resolve(hf.to_str().unwrap(), None).unwrap();
    assert_eq!(src, ModelSource::HfDir(hf.clone()));
    let loaded = src.load(&Device::Cpu, DType::F32).unwrap();
    assert!(
        loaded.unused_tensors.is_empty(),
        "{:?}",
        loaded.unused_tensors
    );
    assert_eq!(loaded.convention, Convention::Transformers);
    assert_eq!(loaded.clip.config, clip.config);
    assert_same(&embeddings(&loaded.clip), &want);
    assert_eq!(
        loaded.clip.logit_scale_exp().unwrap(),
        clip.logit_scale_exp().unwrap()
    );
    // The generated tokenizer files tokenize as open_clip does.
    let ours = ClipTokenizer::from_hf_dir(&hf).unwrap();
    let reference = ClipTokenizer::open_clip_default().unwrap();
    for text in [
        "a photo of a cat",
        "Grinning Face With Big Eyes!",
        "naïve café 🍕",
        "",
    ] {
        // Padding differs by convention (transformers pads with the end-of-text id).
        assert_eq!(
            ours.tokenize_unpadded(text),
            reference.tokenize_unpadded(text),
            "{text:?}"
        );
    }
    let pre = PreprocessConfig::from_hf_preprocessor_json(
        hf.join("preprocessor_config.json").to_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        (pre.image_size, pre.crop_size, pre.mean, pre.std),
        (32, 32, pp.mean, pp.std)
    );

    let oc = temp_dir("oc");
    export_open_clip(&clip, &oc, &pp).unwrap();
    let src = ModelSource::resolve(oc.to_str().unwrap(), None).unwrap();
    assert_eq!(src, ModelSource::OpenClipDir(oc.clone()));
    let loaded = src.load(&Device::Cpu, DType::F32).unwrap();
    assert!(loaded.unused_tensors.is_empty());
    assert_eq!(loaded.clip.config, clip.config);
    assert_same(&embeddings(&loaded.clip), &want);
    let _ = std::fs::remove_dir_all(&hf);
    let _ = std::fs::remove_dir_all(&oc);
}

#[test]
fn reference_checkpoints_re_export_exactly() {
    // A transformers checkpoint pooling at the first end-of-text id (eos 999, not argmax).
    let src = ModelSource::resolve(fixture("hf-quickgelu").to_str().unwrap(), None).unwrap();
    let original = src.load(&Device::Cpu, DType::F32).unwrap().clip;
    let dir = temp_dir("hf-quickgelu");
    export_hf(
        &original,
        &dir,
        &PreprocessConfig::transformers_default(),
        &TokenizerSource::OpenClip,
    )
    .unwrap();
    let again = ModelSource::resolve(dir.to_str().unwrap(), None)
        .unwrap()
        .load(&Device::Cpu, DType::F32)
        .unwrap()
        .clip;
    assert_eq!(again.config, original.config);
    assert_same(&embeddings(&again), &embeddings(&original));
    // open_clip's format has no first-id pooling: refused with a reason, nothing written.
    let oc = temp_dir("hf-quickgelu-oc");
    let err = export_open_clip(&original, &oc, &PreprocessConfig::open_clip(48)).unwrap_err();
    assert!(err.to_string().contains("first end-of-text id"), "{err}");
    assert!(!oc.join("open_clip_model.safetensors").exists());

    // An open_clip checkpoint goes to open_clip's layout and back.
    let src = ModelSource::resolve(fixture("oc-gelu").to_str().unwrap(), None).unwrap();
    let original = src.load(&Device::Cpu, DType::F32).unwrap().clip;
    export_open_clip(&original, &oc, &PreprocessConfig::open_clip(32)).unwrap();
    let again = ModelSource::resolve(oc.to_str().unwrap(), None)
        .unwrap()
        .load(&Device::Cpu, DType::F32)
        .unwrap()
        .clip;
    assert_same(&embeddings(&again), &embeddings(&original));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&oc);
}
