//! Durability: `gclip add` is killed with SIGKILL in the middle of ingestion. After a restart,
//! every batch it acknowledged is there, no document is partial, and the HNSW and lexical
//! indexes agree with SQLite; ingesting again completes the collection.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gclip_search::sqlite::StoreOptions;
use gclip_search::{Collection, SearchMode, SearchRequest};
use serde_json::json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

const WORDS: &[&str] = &[
    "cat", "dog", "car", "tree", "house", "boat", "bird", "river", "cup", "lamp",
];

fn doc_title(i: usize) -> String {
    format!(
        "a photo of a {} near a {} tag{i}x",
        WORDS[i % 10],
        WORDS[(i / 10) % 10]
    )
}

#[test]
fn sigkill_during_ingestion_loses_no_acknowledged_batch() {
    let dir = std::env::temp_dir().join(format!("gclip-durability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let n = 3000;
    let batch = 4;
    let docs = dir.join("docs.jsonl");
    let text: String = (0..n)
        .map(|i| {
            json!({"id": format!("d{i:05}"), "title": doc_title(i), "n": i}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&docs, text).unwrap();
    let coll = dir.join("coll");
    let m = fixtures().join("models/oc-fullvocab");
    let args = |extra: bool| {
        let mut a: Vec<String> = vec![
            "add".into(),
            coll.display().to_string(),
            docs.display().to_string(),
            "--embed".into(),
            "title".into(),
            "--batch-size".into(),
            batch.to_string(),
            "--print-commits".into(),
        ];
        if extra {
            a.extend([
                "--model".into(),
                m.join("open_clip_model.safetensors").display().to_string(),
                "--arch".into(),
                m.join("open_clip_config.json").display().to_string(),
            ]);
        }
        a
    };
    // A low threshold so that the HNSW index exists and is updated while ingesting.
    let mut child = Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(args(true))
        .env("GCLIP_EXACT_BELOW", "40")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked: Vec<String> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("committed ") {
            let (count, last) = rest.split_once(' ').unwrap();
            assert_eq!(count, batch.to_string());
            acked.push(last.to_string());
            if acked.len() == 30 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the process was killed, not finished");
    assert_eq!(acked.len(), 30);

    let options = StoreOptions { exact_below: 40 };
    let c = Collection::open_with(&coll, options.clone()).unwrap();
    let present = c.len();
    // Every acknowledged batch is there; batches are whole (one transaction each).
    assert!(
        present >= 30 * batch,
        "{present} documents after 30 acknowledged batches"
    );
    assert!(present < n, "killed before the end");
    assert_eq!(present % batch, 0, "a partial batch was written");
    let last_acked: usize = acked.last().unwrap()[1..].parse().unwrap();
    assert!(
        last_acked < present,
        "the last acknowledged document d{last_acked:05} is there"
    );
    for i in 0..present {
        let id = format!("d{i:05}");
        let d = c
            .get(&id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id} missing"));
        // No partial document: every field as written, and a unit vector.
        assert_eq!(d.fields["title"], json!(doc_title(i)));
        assert_eq!(d.fields["n"], json!(i));
        let v = c.vector(&id).unwrap().unwrap();
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert!(c.get(&format!("d{present:05}")).unwrap().is_none());
    // The HNSW index (caught up or rebuilt on open) holds exactly the documents SQLite holds.
    let ann_ids = |c: &Collection, n: usize| -> std::collections::BTreeSet<String> {
        let v = c.vector("d00000").unwrap().unwrap();
        c.search(&SearchRequest {
            vector: Some(v),
            limit: n + 10,
            mode: SearchMode::Ann,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect()
    };
    let want: std::collections::BTreeSet<String> =
        (0..present).map(|i| format!("d{i:05}")).collect();
    assert_eq!(ann_ids(&c, present), want, "HNSW disagrees with SQLite");
    // The lexical index holds exactly the documents SQLite holds.
    let lex = c
        .search(&SearchRequest {
            text: Some("photo".into()),
            limit: n,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(lex.len(), present);
    for i in [0, present / 2, present - 1] {
        let hits = c
            .search(&SearchRequest {
                text: Some(format!("tag{i}x")),
                limit: 5,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].id, format!("d{i:05}"));
    }
    drop(c);

    // Ingesting again completes the collection (ids already present are replaced).
    let o = Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(args(false))
        .env("GCLIP_EXACT_BELOW", "40")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = Collection::open_with(&coll, options).unwrap();
    assert_eq!(c.len(), n);
    let want: std::collections::BTreeSet<String> = (0..n).map(|i| format!("d{i:05}")).collect();
    assert_eq!(ann_ids(&c, n), want);
    let _ = std::fs::remove_dir_all(&dir);
}
