//! Damaged collections: stored data that does not read back is an error naming the collection
//! and what is wrong (never a default); derived indexes are rebuilt loudly; `check` finds each
//! kind of damage and `repair` rebuilds the derived indexes without touching documents.
//!
//! Each test builds a small collection, damages it with rusqlite or on disk, and reopens it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gclip_search::check::{check_collection, CheckOptions, Component};
use gclip_search::sqlite::{StoreOptions, DB_FILE};
use gclip_search::{Collection, EmbedSpec, ModelIdentity, NewDocument, SearchError};
use rusqlite::{params, Connection};
use serde_json::json;

const DIM: usize = 8;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-integrity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A unit vector that differs per document.
fn vector(k: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM)
        .map(|i| ((k * 7 + i * 3) % 11) as f32 + 1.0)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// The HNSW index kept from 10 documents (the collections here hold 24).
fn options() -> StoreOptions {
    StoreOptions { exact_below: 10 }
}

/// A collection of 24 documents `d0`…`d23` with a title and a price, flushed and closed.
fn build(name: &str) -> PathBuf {
    let dir = scratch(name).join("coll");
    let spec = EmbedSpec::parse("title", &[]).unwrap();
    let identity = ModelIdentity {
        model: "fake".into(),
        arch: None,
        dim: DIM,
        precision: Default::default(),
    };
    let c = Collection::create_with(&dir, identity, spec, options()).unwrap();
    let docs = (0..24)
        .map(|k| NewDocument {
            id: format!("d{k}"),
            fields: json!({"title": format!("document number {k}"), "price": k})
                .as_object()
                .cloned()
                .unwrap(),
            vector: vector(k),
            source: None,
        })
        .collect();
    c.upsert(docs).unwrap();
    c.flush().unwrap();
    dir
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join(DB_FILE)).unwrap()
}

fn open(dir: &Path) -> gclip_search::Result<Collection> {
    Collection::open_with(dir, options())
}

/// The error of opening a damaged collection: `Corrupt`, naming the collection's directory.
fn corrupt_message(dir: &Path) -> String {
    match open(dir) {
        Err(e @ SearchError::Corrupt { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&dir.display().to_string()), "{text}");
            text
        }
        Err(e) => panic!("expected a Corrupt error, got {e:?}"),
        Ok(_) => panic!("a damaged collection opened"),
    }
}

fn check(dir: &Path, repair: bool) -> gclip_search::check::CheckReport {
    check_collection(
        dir,
        &CheckOptions {
            repair,
            store: options(),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn fields_that_do_not_parse_are_an_error_naming_the_document() {
    let dir = build("fields");
    db(&dir)
        .execute(
            "UPDATE documents SET fields = '{\"title\": \"trunc' WHERE id = 'd3'",
            [],
        )
        .unwrap();
    let m = corrupt_message(&dir);
    assert!(m.contains("documents table"), "{m}");
    assert!(m.contains("\"d3\""), "{m}");
    assert!(m.contains("EOF while parsing"), "{m}");
    // Valid JSON that is not an object is no better.
    db(&dir)
        .execute("UPDATE documents SET fields = '[1, 2]' WHERE id = 'd3'", [])
        .unwrap();
    let m = corrupt_message(&dir);
    assert!(
        m.contains("\"d3\"") && m.contains("not a JSON object"),
        "{m}"
    );
    let report = check(&dir, false);
    assert_eq!(report.bad_documents(), vec!["d3"]);
    // Only the document: the lexical index is not blamed for lacking its unreadable text.
    assert_eq!(report.problems.len(), 1, "{report}");
}

#[test]
fn a_damaged_or_missing_collection_info_keeps_its_reason() {
    let dir = build("info");
    db(&dir)
        .execute(
            "UPDATE meta SET value = '{\"model\": 3}' WHERE key = 'info'",
            [],
        )
        .unwrap();
    let m = corrupt_message(&dir);
    assert!(m.contains("key \"info\""), "{m}");
    assert!(m.contains("invalid type: integer `3`"), "{m}");
    let report = check(&dir, false);
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_eq!(report.problems[0].component, Component::Meta);

    db(&dir)
        .execute("DELETE FROM meta WHERE key = 'info'", [])
        .unwrap();
    let m = corrupt_message(&dir);
    assert!(m.contains("key \"info\" is missing"), "{m}");
}

#[test]
fn a_damaged_generation_counter_is_an_error_on_open_and_on_write() {
    let dir = build("generation");
    db(&dir)
        .execute(
            "UPDATE meta SET value = 'seven' WHERE key = 'generation'",
            [],
        )
        .unwrap();
    let m = corrupt_message(&dir);
    assert!(m.contains("key \"generation\" holds \"seven\""), "{m}");

    // Damaged while the collection is open: the next write fails instead of restarting at 0.
    db(&dir)
        .execute("UPDATE meta SET value = '1' WHERE key = 'generation'", [])
        .unwrap();
    let c = open(&dir).unwrap();
    db(&dir)
        .execute("UPDATE meta SET value = '-4' WHERE key = 'generation'", [])
        .unwrap();
    let doc = NewDocument {
        id: "new".into(),
        fields: Default::default(),
        vector: vector(99),
        source: None,
    };
    match c.upsert(vec![doc]) {
        Err(e @ SearchError::Corrupt { .. }) => {
            assert!(e.to_string().contains("\"-4\""), "{e}")
        }
        other => panic!("expected a Corrupt error, got {other:?}"),
    }
    drop(c);
    // The failed write left nothing behind.
    let n: i64 = db(&dir)
        .query_row("SELECT COUNT(*) FROM documents WHERE id = 'new'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 0);

    // A counter behind the rows written (reset by hand, restored from elsewhere) is reported.
    db(&dir)
        .execute("UPDATE meta SET value = '0' WHERE key = 'generation'", [])
        .unwrap();
    let report = check(&dir, false);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.component == Component::Meta
                && p.message.contains("rows written at generation 1")),
        "{report}"
    );
}

#[test]
fn bad_vectors_are_errors_naming_the_document() {
    let dir = build("vectors");
    let mut blob: Vec<u8> = vector(5).iter().flat_map(|x| x.to_le_bytes()).collect();
    blob.extend([0, 0]);
    db(&dir)
        .execute(
            "UPDATE documents SET vector = ?1 WHERE id = 'd5'",
            params![blob],
        )
        .unwrap();
    let m = corrupt_message(&dir);
    assert!(m.contains("\"d5\" has a vector of 34 bytes"), "{m}");

    let mut v = vector(5);
    v[2] = f32::NAN;
    let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    db(&dir)
        .execute(
            "UPDATE documents SET vector = ?1 WHERE id = 'd5'",
            params![blob],
        )
        .unwrap();
    let m = corrupt_message(&dir);
    assert!(
        m.contains("\"d5\" has a non-finite vector (NaN at index 2)"),
        "{m}"
    );
}

#[test]
fn listing_past_the_end_is_empty_even_at_the_largest_offset() {
    let dir = build("offset");
    let c = open(&dir).unwrap();
    let first = c.list(0, 3).unwrap();
    assert_eq!(first.len(), 3);
    for offset in [
        u64::MAX as usize,
        i64::MAX as usize + 1,
        i64::MAX as usize,
        24,
    ] {
        assert!(c.list(offset, 10).unwrap().is_empty(), "offset {offset}");
    }
    assert_eq!(c.list(22, usize::MAX).unwrap().len(), 2);
    assert_eq!(c.list(0, usize::MAX).unwrap().len(), 24);
    assert_eq!(c.list(1, 1).unwrap()[0].id, first[1].id);
}

/// Collects what `tracing` logs while `f` runs.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

#[test]
fn damaged_derived_indexes_are_rebuilt_with_a_warning_naming_them() {
    let dir = build("derived");
    std::fs::write(dir.join("hnsw.json"), b"{\"generation\": ").unwrap();
    std::fs::write(dir.join("lexical/meta.json"), b"garbage").unwrap();
    let (c, log) = logged(|| open(&dir).unwrap());
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("hnsw.json: does not parse"), "{log}");
    assert!(
        log.contains(&format!("{}", dir.join("lexical").display())),
        "{log}"
    );
    assert!(log.contains("does not open"), "{log}");
    // Rebuilt: both kinds of search find every document.
    assert_eq!(c.len(), 24);
    let hits = c
        .search(&gclip_search::SearchRequest {
            text: Some("number 17".into()),
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(hits[0].id, "d17");
    c.flush().unwrap();
    drop(c);
    assert!(check(&dir, false).is_clean());

    // A missing index (a new collection, or removed by hand) is rebuilt without a warning.
    std::fs::remove_dir_all(dir.join("lexical")).unwrap();
    let (_c, log) = logged(|| open(&dir).unwrap());
    assert!(!log.contains("WARN"), "{log}");
    assert!(log.contains("building lexical index"), "{log}");
}

#[test]
fn a_sound_collection_checks_clean_and_a_stale_index_is_only_a_note() {
    let dir = build("clean");
    let report = check(&dir, false);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.documents, 24);
    assert!(report.notes.is_empty(), "{report}");
    assert!(report.to_string().ends_with("ok: no problems found"));

    // Writes after the last flush: the indexes lag the database, and the next open catches up.
    let c = open(&dir).unwrap();
    c.delete(&["d0".to_string()]).unwrap();
    drop(c);
    let report = check(&dir, false);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.notes.len(), 2, "{report}");
    assert!(
        report.notes[0].contains("HNSW index saved at generation 1"),
        "{report}"
    );
}

#[test]
fn check_reports_a_nan_vector_by_id_and_repair_leaves_the_document() {
    let dir = build("nan");
    let mut v = vector(7);
    v[0] = f32::NAN;
    let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    db(&dir)
        .execute(
            "UPDATE documents SET vector = ?1 WHERE id = 'd7'",
            params![blob],
        )
        .unwrap();
    // And one that is finite but not unit length.
    let blob: Vec<u8> = [0.5f32; DIM].iter().flat_map(|x| x.to_le_bytes()).collect();
    db(&dir)
        .execute(
            "UPDATE documents SET vector = ?1 WHERE id = 'd8'",
            params![blob],
        )
        .unwrap();
    let report = check(&dir, false);
    assert_eq!(report.bad_documents(), vec!["d7", "d8"], "{report}");
    assert!(
        report.problems[0].message.contains("non-finite"),
        "{report}"
    );
    assert!(
        report.problems[1].message.contains("length 1.41"),
        "{report}"
    );

    let repaired = check(&dir, true);
    assert!(!repaired.is_clean());
    assert!(repaired.repaired.is_empty());
    assert!(
        repaired.notes.iter().any(|n| n.starts_with("not repaired")),
        "{repaired}"
    );
    let n: i64 = db(&dir)
        .query_row("SELECT COUNT(*) FROM documents", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 24, "repair never deletes documents");
}

/// A name, how to damage a collection, and what check must then say about which part.
type Damage = (&'static str, fn(&Path), Component, &'static str);

#[test]
fn check_finds_damaged_derived_indexes_and_repair_rebuilds_them() {
    // Each kind of damage, then a repair and a second, clean, check.
    let damages: [Damage; 5] = [
        (
            "hnsw-deleted",
            |d| std::fs::remove_file(d.join("hnsw.usearch")).unwrap(),
            Component::Hnsw,
            "hnsw.usearch: missing",
        ),
        (
            "hnsw-garbage",
            |d| std::fs::write(d.join("hnsw.usearch"), b"not an index").unwrap(),
            Component::Hnsw,
            "does not load",
        ),
        (
            "hnsw-future",
            |d| {
                let meta = std::fs::read_to_string(d.join("hnsw.json")).unwrap();
                let meta = meta.replace("\"generation\":1", "\"generation\":99");
                std::fs::write(d.join("hnsw.json"), meta).unwrap()
            },
            Component::Hnsw,
            "after the database's 1",
        ),
        (
            "lexical-meta",
            |d| std::fs::write(d.join("lexical/meta.json"), b"{").unwrap(),
            Component::Lexical,
            "lexical",
        ),
        (
            "lexical-segment",
            |d| {
                for e in std::fs::read_dir(d.join("lexical")).unwrap() {
                    let p = e.unwrap().path();
                    if p.extension().is_some_and(|x| x == "fast") {
                        std::fs::write(&p, b"").unwrap();
                    }
                }
            },
            Component::Lexical,
            "lexical",
        ),
    ];
    for (name, damage, component, says) in damages {
        let dir = build(name);
        damage(&dir);
        let report = check(&dir, false);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.component == component && p.message.contains(says)),
            "{name}: {report}"
        );
        assert!(report.bad_documents().is_empty(), "{name}: {report}");
        let repaired = check(&dir, true);
        assert!(repaired.is_clean(), "{name}: {repaired}");
        assert_eq!(repaired.repaired.len(), 1, "{name}");
        let again = check(&dir, false);
        assert!(again.is_clean(), "{name}: {again}");
        assert_eq!(again.documents, 24);
    }
}

#[test]
fn check_refuses_a_collection_open_elsewhere_and_a_missing_one() {
    let dir = build("locked");
    let c = open(&dir).unwrap();
    match check_collection(&dir, &CheckOptions::default()) {
        Err(SearchError::Invalid(m)) => assert!(m.contains("open in another process"), "{m}"),
        other => panic!("{other:?}"),
    }
    drop(c);
    assert!(matches!(
        check_collection(&dir.join("nope"), &CheckOptions::default()),
        Err(SearchError::NotACollection(_))
    ));
}

#[test]
fn quarantine_moves_bad_documents_out_and_the_rest_opens() {
    let dir = build("quarantine");
    let mut v = vector(5);
    v[2] = f32::INFINITY;
    let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    db(&dir)
        .execute(
            "UPDATE documents SET vector = ?1 WHERE id = 'd5'",
            params![blob],
        )
        .unwrap();
    db(&dir)
        .execute("UPDATE documents SET fields = '[1]' WHERE id = 'd9'", [])
        .unwrap();
    corrupt_message(&dir);

    let report = check_collection(
        &dir,
        &CheckOptions {
            repair: true,
            quarantine: true,
            store: options(),
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.documents, 22, "{report}");
    assert!(
        report.repaired[0].contains("moved 2 bad document(s)"),
        "{report}"
    );

    // Nothing is lost: both documents are in the quarantine file, with what was wrong.
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&files[0])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "d5");
    assert!(lines[0]["fields"]
        .as_str()
        .unwrap()
        .contains("document number 5"));
    assert!(lines[0]["problems"][0]
        .as_str()
        .unwrap()
        .contains("non-finite"));
    assert_eq!(lines[1]["id"], "d9");
    assert_eq!(lines[1]["fields"], "[1]");

    // The collection opens and searches without them.
    let c = open(&dir).unwrap();
    assert_eq!(c.len(), 22);
    assert!(c.get("d5").unwrap().is_none());
    assert!(c.get("d4").unwrap().is_some());
}

#[test]
fn quarantine_leaves_a_damaged_database_alone() {
    let dir = build("quarantine-meta");
    db(&dir)
        .execute("UPDATE meta SET value = 'x' WHERE key = 'generation'", [])
        .unwrap();
    let report = check_collection(
        &dir,
        &CheckOptions {
            repair: true,
            quarantine: true,
            store: options(),
        },
    )
    .unwrap();
    assert!(!report.is_clean());
    assert!(!dir.join("quarantine").exists());
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("not quarantined")),
        "{report}"
    );
}
