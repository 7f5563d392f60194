//! Zero-shot emoji category accuracy of a trained model (docs/TRAINING.md, experiment 1).
//!
//!     cargo run --release -p gclip --example emoji_zeroshot -- RUN_DIR data/emoji/sets/clip-test-twitter.jsonl
//!
//! Each test image (a row of the JSONL, with its `category`) is assigned the category whose
//! prompt — the category's name in lower case, as the model saw names in training — embeds
//! closest. Prints the accuracy and chance (1 / number of categories).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use gclip::input::image::{PreprocessConfig, Preprocessor};
use gclip::input::tokenizer::ClipTokenizer;
use gclip::train::checkpoint::{list_checkpoints, load_checkpoint};
use gclip::train::evaluate::{zero_shot_accuracy, Embedding};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (run, test) = match (args.get(1), args.get(2)) {
        (Some(r), Some(t)) => (PathBuf::from(r), PathBuf::from(t)),
        _ => return Err("usage: emoji_zeroshot RUN_DIR TEST.jsonl".into()),
    };
    let dir = match list_checkpoints(&run.join("checkpoints"))?.pop() {
        Some((_, d)) => d,
        None => run.clone(),
    };
    let clip = load_checkpoint(&dir, &Device::Cpu)?.clip;
    let tokenizer =
        ClipTokenizer::open_clip_default()?.with_context_length(clip.config.text.context_length);
    let pp = Preprocessor::new(PreprocessConfig::open_clip(clip.config.vision.image_size));
    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    let mut images = Vec::new();
    let mut labels_text = Vec::new();
    let base = test.parent().unwrap_or(Path::new(""));
    for line in std::fs::read_to_string(&test)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let (Some(img), Some(cat)) = (v["doc"]["image"].as_str(), v["category"].as_str()) else {
            continue;
        };
        let p = PathBuf::from(img);
        images.push(if p.is_absolute() { p } else { base.join(p) });
        let n = classes.len();
        classes.entry(cat.to_string()).or_insert(n);
        labels_text.push(cat.to_string());
    }
    let names: Vec<String> = {
        let mut v: Vec<(&String, &usize)> = classes.iter().collect();
        v.sort_by_key(|(_, &i)| i);
        v.into_iter().map(|(c, _)| c.to_lowercase()).collect()
    };
    let labels: Vec<usize> = labels_text.iter().map(|c| classes[c]).collect();
    let e = Embedding {
        clip: &clip,
        tokenizer: &tokenizer,
        preprocessor: &pp,
        batch_size: 64,
    };
    let acc = zero_shot_accuracy(&e, &images, &labels, &names)?;
    println!(
        "{{\"checkpoint\": \"{}\", \"images\": {}, \"classes\": {}, \"accuracy\": {acc:.4}, \"chance\": {:.4}}}",
        dir.display(),
        images.len(),
        names.len(),
        1.0 / names.len() as f64
    );
    Ok(())
}
