//! Zero-shot emoji category accuracy of a trained model (docs/TRAINING.md, experiment 1).
//!
//!     cargo run --release -p gclip --example emoji_zeroshot -- RUN_OR_CHECKPOINT_DIR data/emoji/sets/clip-test-twitter.jsonl
//!
//! RUN_OR_CHECKPOINT_DIR is a run directory (its newest checkpoint is used), one checkpoint
//! (`RUN/checkpoints/step-NNNNNNNN`) or a model directory (`gclip export`'s). Each test image (a row of the JSONL, with its `category`)
//! is assigned the category whose prompts embed closest, two ways:
//!
//! * `accuracy_name`: one prompt, the category's name in lower case ("animals & nature");
//! * `accuracy_prompts`: the normalised mean of the prompts "a CATEGORY emoji" and "an emoji of
//!   CATEGORY", with "&" spelt "and" (the phrasing of the training captions that mention
//!   categories, `tools/emoji_data.py`).
//!
//! Prints both with uniform chance (1 / number of categories) and the majority-class rate (the
//! accuracy of always answering the most frequent category of the test set).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gclip::input::image::{PreprocessConfig, Preprocessor};
use gclip::input::tokenizer::ClipTokenizer;
use gclip::model::Precision;
use gclip::train::evaluate::{
    load_model, zero_shot_accuracy, zero_shot_accuracy_ensemble, Embedding,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (run, test) = match (args.get(1), args.get(2)) {
        (Some(r), Some(t)) => (PathBuf::from(r), PathBuf::from(t)),
        _ => return Err("usage: emoji_zeroshot RUN_OR_CHECKPOINT_DIR TEST.jsonl".into()),
    };
    let run = run.to_string_lossy().into_owned();
    let embedder = load_model(&run, None, Precision::Fp32)?;
    let clip = embedder.clip();
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
    let prompts: Vec<Vec<String>> = names
        .iter()
        .map(|c| {
            let c = c.replace('&', "and");
            vec![format!("a {c} emoji"), format!("an emoji of {c}")]
        })
        .collect();
    let labels: Vec<usize> = labels_text.iter().map(|c| classes[c]).collect();
    let mut freq = vec![0usize; names.len()];
    for &l in &labels {
        freq[l] += 1;
    }
    let majority = freq.iter().copied().max().unwrap_or(0) as f64 / labels.len().max(1) as f64;
    let e = Embedding {
        clip,
        tokenizer: &tokenizer,
        preprocessor: &pp,
        batch_size: 64,
    };
    let acc_name = zero_shot_accuracy(&e, &images, &labels, &names)?;
    let acc_prompts = zero_shot_accuracy_ensemble(&e, &images, &labels, &prompts)?;
    println!(
        "{{\"checkpoint\": \"{}\", \"images\": {}, \"classes\": {}, \"accuracy_name\": {acc_name:.4}, \"accuracy_prompts\": {acc_prompts:.4}, \"chance\": {:.4}, \"majority\": {majority:.4}}}",
        run,
        images.len(),
        names.len(),
        1.0 / names.len() as f64
    );
    Ok(())
}
