//! `gclip check` and `gclip check --repair` on a collection built by `gclip add` with a real
//! model, with its derived indexes damaged on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-check-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs gclip with an HNSW threshold of 3 documents, so that the collection keeps one.
fn gclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(args)
        .env("GCLIP_EXACT_BELOW", "3")
        .output()
        .expect("gclip runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn check_reports_damaged_indexes_and_repair_rebuilds_them() {
    let dir = scratch("repair");
    let docs = dir.join("docs.jsonl");
    let mut text = String::new();
    for (k, t) in ["a photo of a cat", "a photo of a dog", "a red car", "soup"]
        .iter()
        .enumerate()
    {
        text += &serde_json::json!({"id": format!("d{k}"), "title": t}).to_string();
        text.push('\n');
    }
    std::fs::write(&docs, text).unwrap();
    let coll = dir.join("coll");
    let c = coll.to_str().unwrap();
    let model = fixtures().join("models/oc-fullvocab");
    let (weights, config) = (
        model.join("open_clip_model.safetensors"),
        model.join("open_clip_config.json"),
    );
    let add = gclip(&[
        "add",
        c,
        docs.to_str().unwrap(),
        "--embed",
        "title",
        "--model",
        weights.to_str().unwrap(),
        "--arch",
        config.to_str().unwrap(),
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(
        coll.join("hnsw.usearch").is_file(),
        "the collection keeps an HNSW index"
    );

    let clean = gclip(&["check", c]);
    assert!(
        clean.status.success(),
        "{}{}",
        stdout(&clean),
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(stdout(&clean).contains("4 documents"), "{}", stdout(&clean));
    assert!(
        stdout(&clean).contains("ok: no problems found"),
        "{}",
        stdout(&clean)
    );

    // Damage both derived indexes.
    std::fs::remove_file(coll.join("hnsw.usearch")).unwrap();
    std::fs::write(coll.join("lexical/meta.json"), b"{ not json").unwrap();
    let damaged = gclip(&["check", c]);
    let report = stdout(&damaged);
    assert!(!damaged.status.success(), "{report}");
    assert!(report.contains("problem: HNSW index"), "{report}");
    assert!(report.contains("hnsw.usearch: missing"), "{report}");
    assert!(report.contains("problem: lexical index"), "{report}");
    assert!(report.contains("gclip check --repair"), "{report}");

    let repaired = gclip(&["check", c, "--repair"]);
    let report = stdout(&repaired);
    assert!(
        repaired.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert!(
        report.contains("repaired: rebuilt the HNSW index and the lexical index"),
        "{report}"
    );
    assert!(coll.join("hnsw.usearch").is_file());

    let again = gclip(&["check", c]);
    assert!(again.status.success(), "{}", stdout(&again));
    assert!(stdout(&again).contains("ok: no problems found"));
    // The documents are all still there and searchable through both indexes.
    let hits = gclip(&["search", c, "a photo of a dog", "--json", "--limit", "1"]);
    assert!(stdout(&hits).contains("\"d1\""), "{}", stdout(&hits));

    // Not a collection: an error, not a report.
    let none = gclip(&["check", dir.join("nothing").to_str().unwrap()]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("is not a gclip collection"));
    let _ = std::fs::remove_dir_all(&dir);
}
