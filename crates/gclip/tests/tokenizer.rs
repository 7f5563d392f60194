//! Token ids and cleaned text compared with open_clip, ftfy and transformers on the fixture corpus
//! (`tests/fixtures/tokenizer/`, made by `tools/gen_tokenizer_fixtures.py`).

use std::io::BufRead;
use std::path::PathBuf;

use gclip::input::text_clean;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer")
}

#[derive(serde::Deserialize)]
struct Record {
    text: String,
    fixed: String,
    clean: String,
    open_clip: Vec<u32>,
    hf: Vec<u32>,
}

fn corpus() -> Vec<Record> {
    let file = std::fs::File::open(fixtures().join("corpus.jsonl.gz")).expect("corpus fixture");
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    reader
        .lines()
        .map(|line| serde_json::from_str(&line.expect("utf-8 line")).expect("json record"))
        .collect()
}

fn show(s: &str) -> String {
    format!("{s:?}").chars().take(120).collect()
}

#[test]
fn fix_text_matches_ftfy() {
    let corpus = corpus();
    let mut bad = Vec::new();
    for r in &corpus {
        let got = text_clean::fix_text(&r.text);
        if got != r.fixed {
            bad.push(format!(
                "{} -> {} (ftfy {})",
                show(&r.text),
                show(&got),
                show(&r.fixed)
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        corpus.len(),
        bad.join("\n")
    );
}

#[test]
fn clean_matches_open_clip() {
    let corpus = corpus();
    let mut bad = Vec::new();
    for r in &corpus {
        let got = text_clean::clean_open_clip(&r.text);
        if got != r.clean {
            bad.push(format!(
                "{} -> {} (open_clip {})",
                show(&r.text),
                show(&got),
                show(&r.clean)
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        corpus.len(),
        bad.join("\n")
    );
}

#[test]
fn corpus_sanity() {
    let corpus = corpus();
    assert!(corpus.len() >= 1000);
    let changed = corpus.iter().filter(|r| r.fixed != r.text).count();
    eprintln!("{} strings, {} changed by ftfy", corpus.len(), changed);
    assert!(changed > 300);
    assert_eq!(text_clean::fix_text("sÃ³"), "só");
}
