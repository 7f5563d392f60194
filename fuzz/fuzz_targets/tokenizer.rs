//! Tokenisation in both conventions and the text cleaning before it, on any UTF-8 text (invalid
//! input bytes are replaced, as a lossy read of a file would).
//!
//! Checked: every output has exactly the context length, starts with the start token (context
//! length > 1) and holds the end token; ids stay inside the vocabulary; the cleaners terminate.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use gclip::input::text_clean;
use gclip::input::tokenizer::ClipTokenizer;
use libfuzzer_sys::fuzz_target;

/// Both conventions, each at the default context length and at short ones (which cut).
fn tokenizers() -> &'static [ClipTokenizer] {
    static T: OnceLock<Vec<ClipTokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let hf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/hf-fullvocab");
        let mut all = Vec::new();
        for ctx in [None, Some(0), Some(1), Some(2), Some(5)] {
            for tok in [
                ClipTokenizer::open_clip_default().expect("embedded vocabulary"),
                ClipTokenizer::from_hf_dir(&hf).expect("fixture tokenizer"),
            ] {
                all.push(match ctx {
                    Some(n) => tok.with_context_length(n),
                    None => tok,
                });
            }
        }
        all
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for (i, t) in tokenizers().iter().enumerate() {
        let ctx = t.context_length();
        let ids = t.encode(&text);
        assert_eq!(ids.len(), ctx);
        if ctx > 1 {
            assert_eq!(ids[0], t.sot_id());
        }
        if ctx > 0 {
            assert!(ids.contains(&t.eot_id()));
        }
        assert!(ids.iter().all(|&id| (id as usize) < t.vocab_size()));
        if i < 2 {
            // Uncut: every id of the text, which the cut output must begin with.
            let all = t.tokenize_unpadded(&text);
            assert!(all.iter().all(|&id| (id as usize) < t.vocab_size()));
            let body = &ids[1..ids.len().min(all.len() + 1)];
            assert!(all.starts_with(body.strip_suffix(&[t.eot_id()]).unwrap_or(body)));
        }
    }
    let _ = text_clean::clean_open_clip(&text);
    let _ = text_clean::fix_text(&text);
    let _ = text_clean::fix_encoding(&text);
    let _ = text_clean::html_unescape(&text);
    let _ = text_clean::collapse_whitespace(&text);
    let _ = text_clean::is_bad(&text);
});
