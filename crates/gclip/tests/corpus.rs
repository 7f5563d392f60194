//! End to end against the references: the whole tokenizer corpus (1,500 strings) and every
//! fixture image, through gclip's own tokenizer, image pipeline and towers, give the embeddings
//! that open_clip and transformers compute from the same raw inputs with their own pipelines
//! (tools/gen_corpus_embeddings.py).

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::Device;
use gclip::embed::Embedder;
use gclip::source::ModelSource;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn corpus() -> Vec<String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(fixtures().join("tokenizer/corpus.jsonl.gz")).unwrap(),
    )
    .read_to_string(&mut text)
    .unwrap();
    text.split('\n')
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn reference(name: &str, tensor: &str) -> Vec<f32> {
    let r =
        candle_core::safetensors::load(fixtures().join("corpus").join(name), &Device::Cpu).unwrap();
    r[tensor].flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn worst_row(got: &[f32], want: &[f32], dim: usize) -> (usize, f32) {
    assert_eq!(got.len(), want.len(), "different number of values");
    got.chunks(dim)
        .zip(want.chunks(dim))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        })
        .enumerate()
        .fold(
            (0, 0f32),
            |best, (i, d)| if d > best.1 { (i, d) } else { best },
        )
}

fn check(source: ModelSource, reference_file: &str) {
    let embedder = Embedder::load(&source, &Device::Cpu).unwrap();
    let dim = embedder.clip().config.embed_dim;

    let texts = corpus();
    assert_eq!(texts.len(), 1500);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = embedder.embed_texts(&refs, true, &|_| {}).unwrap();
    let (row, d) = worst_row(&got.data, &reference(reference_file, "text_embeds"), dim);
    assert!(
        d <= TOLERANCE,
        "{reference_file}: text {row} ({:?}) differs by {d}",
        texts[row]
    );

    let names: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("corpus/images.json")).unwrap(),
    )
    .unwrap();
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|n| fixtures().join("images").join(n))
        .collect();
    let got = embedder.embed_image_files(&paths, true, &|_| {}).unwrap();
    assert!(
        got.failures.is_empty(),
        "{:?}",
        got.failures
            .iter()
            .map(|(i, e)| format!("{}: {e}", names[*i]))
            .collect::<Vec<_>>()
    );
    let (row, d) = worst_row(
        &got.embeddings.data,
        &reference(reference_file, "image_embeds"),
        dim,
    );
    assert!(
        d <= TOLERANCE,
        "{reference_file}: image {} differs by {d}",
        names[row]
    );
    eprintln!(
        "{reference_file}: {} texts and {} images within {TOLERANCE}",
        texts.len(),
        names.len()
    );
}

#[test]
fn open_clip_convention_corpus_matches_open_clip() {
    let dir = fixtures().join("models/oc-fullvocab");
    check(
        ModelSource::OpenClipFile {
            checkpoint: dir.join("open_clip_model.safetensors"),
            arch: dir.join("open_clip_config.json").display().to_string(),
        },
        "open_clip.safetensors",
    );
}

#[test]
fn transformers_convention_corpus_matches_transformers() {
    check(
        ModelSource::HfDir(fixtures().join("models/hf-fullvocab")),
        "transformers.safetensors",
    );
}
