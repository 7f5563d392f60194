//! Collections on a real Milvus server (the standalone server of the `milvus` Python package,
//! 2.3.5), started here on a free loopback port and stopped at the end (`support/
//! milvus_server.rs`), checked against the embedded backend on the same documents.
//!
//! The server is found through `GCLIP_MILVUS_SERVER` (the `milvus-server` script of a virtual
//! environment with `pip install milvus`), else in `target/milvus-venv`; `tools/test.sh` and
//! `.ci/run` install it there. Without it these tests fail and say how to install it: CI must
//! not pass by skipping them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gclip_search::document::normalize;
use gclip_search::milvus::{MilvusAddress, MilvusOptions, MilvusStore};
use gclip_search::sqlite::{SqliteStore, StoreOptions};
use gclip_search::store::{CollectionInfo, FileState, Store};
use gclip_search::{
    Collection, EmbedSpec, Filter, Hit, ModelIdentity, NewDocument, SearchError, SearchMode,
    SearchRequest,
};
use milvus::data::FieldColumn;
use milvus::schema::FieldSchema;
use milvus::value::ValueVec;
use serde_json::json;

#[path = "support/milvus_server.rs"]
mod milvus_server;
use milvus_server::{free_port, Server};

const DIM: usize = 16;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn unit_vector(seed: u64) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM as u64)
        .map(|i| (splitmix(seed * 1_000_003 + i) % 20_001) as f32 / 10_000.0 - 1.0)
        .collect();
    normalize(&mut v);
    v
}

const COLOURS: [&str; 3] = ["red", "blue", "green"];

fn document(i: u64) -> NewDocument {
    let mut tags = vec!["all"];
    if i.is_multiple_of(3) {
        tags.push("summer");
    }
    if i.is_multiple_of(4) {
        tags.push("winter");
    }
    let fields = json!({
        "colour": COLOURS[(i % 3) as usize],
        "price": (i * 7 % 50) as f64 + 0.5,
        "tags": tags,
        "date": format!("2024-{:02}-01", i % 12 + 1),
        "image": format!("/images/{i}.png"),
    });
    NewDocument {
        id: format!("d{i:03}"),
        fields: fields.as_object().cloned().unwrap(),
        vector: unit_vector(i),
        source: i.is_multiple_of(5).then(|| FileState {
            path: format!("/images/{i}.png"),
            size: i * 100,
            mtime_ns: i as i64 * 1_000,
            hash: format!("{i:032x}"),
        }),
    }
}

fn identity(model: &str) -> ModelIdentity {
    ModelIdentity {
        model: model.into(),
        arch: None,
        dim: DIM,
        precision: Default::default(),
    }
}

fn request(vector: Vec<f32>, limit: usize, offset: usize, filter: Option<&str>) -> SearchRequest {
    SearchRequest {
        vector: Some(vector),
        limit,
        offset,
        filter: filter.map(|f| Filter::parse(f).unwrap()),
        mode: SearchMode::Exact,
        ..Default::default()
    }
}

fn ids(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

/// Same ids in the same order, same fields and image, scores equal to float rounding.
fn assert_same_hits(milvus: &[Hit], embedded: &[Hit], what: &str) {
    assert_eq!(ids(milvus), ids(embedded), "{what}");
    for (m, e) in milvus.iter().zip(embedded) {
        assert!(
            (m.score - e.score).abs() < 1e-5,
            "{what}: {} {} vs {}",
            m.id,
            m.score,
            e.score
        );
        assert_eq!(m.fields, e.fields, "{what}: fields of {}", m.id);
        assert_eq!(m.image, e.image, "{what}: image of {}", m.id);
    }
}

/// Each search of `queries` (seeds of query vectors) × `filters` × `pages` (limit, offset), in
/// exact mode, answers as the embedded backend does (`assert_same_hits`).
fn assert_same_searches(
    milvus: &MilvusStore,
    embedded: &SqliteStore,
    queries: &[u64],
    filters: &[Option<&str>],
    pages: &[(usize, usize)],
    what: &str,
) {
    for &q in queries {
        for &f in filters {
            for &(limit, offset) in pages {
                let r = request(unit_vector(q), limit, offset, f);
                let m = milvus
                    .search(&r)
                    .unwrap_or_else(|e| panic!("{what} {f:?}: {e}"));
                let e = embedded.search(&r).unwrap();
                assert_same_hits(
                    &m,
                    &e,
                    &format!("{what}: query {q} filter {f:?} limit {limit} offset {offset}"),
                );
            }
        }
    }
}

/// A document of a JSONL file for `add_documents`, labelled `docs.jsonl:ID`.
fn input(id: &str, fields: serde_json::Value) -> gclip_search::ingest::InputDocument {
    gclip_search::ingest::InputDocument {
        label: format!("docs.jsonl:{id}"),
        doc: Ok(gclip_search::Document {
            id: id.into(),
            fields: fields.as_object().cloned().unwrap(),
        }),
    }
}

/// The collection info of the tests: the test model, images embedded.
fn image_info() -> CollectionInfo {
    CollectionInfo {
        model: identity("test-model"),
        spec: EmbedSpec::image(),
        created: 0,
    }
}

/// Creates a collection through Milvus' REST API (quick create: int64 ids, a vector field, a
/// dynamic JSON field), as another tool would.
fn rest_create(server: &Server, body: serde_json::Value) {
    let reply = ureq::post(&format!(
        "http://127.0.0.1:{}/v1/vector/collections/create",
        server.port
    ))
    .header("Content-Type", "application/json")
    .send(body.to_string())
    .unwrap()
    .into_body()
    .read_to_string()
    .unwrap();
    assert!(reply.contains("200"), "{body}: {reply}");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-milvus-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_milvus_collection_answers_as_the_embedded_one_does() {
    let server = Server::shared();
    let address = server.address("products");
    let info = image_info();

    // Created through the collection API, as the CLI does, and beside it the embedded backend.
    let c = Collection::create(Path::new(&address), info.model.clone(), info.spec.clone()).unwrap();
    assert!(c.dir().is_none());
    assert_eq!(c.location().to_string(), address);
    let dir = scratch("embedded");
    let embedded = SqliteStore::create(&dir, info.clone(), StoreOptions::default()).unwrap();
    let docs: Vec<NewDocument> = (0..80).map(document).collect();
    for batch in docs.chunks(25) {
        let r = c.upsert(batch.to_vec()).unwrap();
        assert_eq!(r.count, batch.len());
        embedded.upsert(batch.to_vec()).unwrap();
    }
    assert_eq!(c.len(), 80);

    // Exact top-k, with filters of every kind that translates, and pages.
    let filters = [
        None,
        Some("colour = red"),
        Some("price >= 10 AND price < 30.5"),
        Some("tags:summer"),
        Some("NOT colour = blue"),
        Some("colour != red OR price > 40"),
        Some("tags = winter AND NOT price < 10"),
        Some("date >= '2024-06-01'"),
        Some("id = d007 OR id = d012"),
        Some("id < d010"),
        Some("colour != red AND colour != green"),
    ];
    for q in 0..4u64 {
        let v = unit_vector(1_000 + q);
        for f in filters {
            for (limit, offset) in [(10, 0), (5, 5), (7, 3)] {
                let r = request(v.clone(), limit, offset, f);
                let m = c.search(&r).unwrap_or_else(|e| panic!("{f:?}: {e}"));
                let e = embedded.search(&r).unwrap();
                assert_same_hits(
                    &m,
                    &e,
                    &format!("query {q} filter {f:?} limit {limit} offset {offset}"),
                );
            }
        }
    }
    // The default mode (HNSW, ef from the embedded index's defaults) finds the same here.
    let mut auto = request(unit_vector(7), 10, 0, None);
    auto.mode = SearchMode::Auto;
    assert_same_hits(
        &c.search(&auto).unwrap(),
        &embedded.search(&auto).unwrap(),
        "auto",
    );

    // Reading back: documents, vectors, listing in id order, file states.
    let d5 = c.get("d005").unwrap().unwrap();
    assert_eq!(d5.fields, docs[5].fields);
    assert_eq!(c.vector("d005").unwrap().unwrap(), docs[5].vector);
    assert!(c.get("nope").unwrap().is_none());
    for (skip, limit) in [(0, 100), (10, 5), (75, 10), (200, 5)] {
        assert_eq!(
            c.list(skip, limit).unwrap(),
            embedded.list(skip, limit).unwrap(),
            "list {skip} {limit}"
        );
    }
    let mut sources = c.sources().unwrap();
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = embedded.sources().unwrap();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(sources, want);
    let touched = vec![(
        "d010".to_string(),
        FileState {
            path: "/moved/10.png".into(),
            size: 1,
            mtime_ns: 2,
            hash: "ab".into(),
        },
    )];
    assert_eq!(c.update_sources(&touched).unwrap().count, 1);
    embedded.update_sources(&touched).unwrap();
    assert!(c.sources().unwrap().contains(&touched[0]));
    assert_eq!(c.get("d010").unwrap().unwrap().fields, docs[10].fields);

    // Updates: fields kept with the vector, a replaced vector, both visible at once.
    let new_fields = json!({"colour": "purple", "price": 1.0})
        .as_object()
        .cloned()
        .unwrap();
    c.update_fields("d003", new_fields.clone()).unwrap();
    embedded.update_fields("d003", new_fields.clone()).unwrap();
    assert_eq!(c.get("d003").unwrap().unwrap().fields, new_fields);
    assert_eq!(c.vector("d003").unwrap().unwrap(), docs[3].vector);
    assert!(matches!(
        c.update_fields("nope", new_fields.clone()),
        Err(SearchError::NotFound(_))
    ));
    let mut replaced = document(4);
    replaced.vector = unit_vector(4_004);
    c.upsert(vec![replaced.clone()]).unwrap();
    embedded.upsert(vec![replaced.clone()]).unwrap();
    assert_eq!(c.vector("d004").unwrap().unwrap(), replaced.vector);
    let purple = request(unit_vector(3), 5, 0, Some("colour = purple"));
    assert_eq!(ids(&c.search(&purple).unwrap()), ["d003"]);

    // Deletes count what went.
    let r = c
        .delete(&["d001".into(), "d002".into(), "nope".into()])
        .unwrap();
    assert_eq!(r.count, 2);
    embedded.delete(&["d001".into(), "d002".into()]).unwrap();
    assert!(c.get("d001").unwrap().is_none());
    assert_eq!(c.len(), 78);
    let v = unit_vector(2);
    assert_same_hits(
        &c.search(&request(v.clone(), 10, 0, None)).unwrap(),
        &embedded.search(&request(v.clone(), 10, 0, None)).unwrap(),
        "after delete",
    );

    // Listing walks pages in id order whatever their size.
    let small_pages = MilvusStore::open(
        &MilvusAddress::parse_with(&address, |_| None).unwrap(),
        MilvusOptions {
            page: 7,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        small_pages.list(0, 100).unwrap(),
        embedded.list(0, 100).unwrap()
    );
    assert_eq!(
        small_pages.list(20, 9).unwrap(),
        embedded.list(20, 9).unwrap()
    );
    drop(small_pages);

    // Reopened: the same collection, model and answers.
    drop(c);
    let c = Collection::open(Path::new(&address)).unwrap();
    assert_eq!(c.info().model, info.model);
    assert_eq!(c.info().spec, info.spec);
    assert_eq!(c.len(), 78);
    let r = request(v.clone(), 10, 0, Some("tags:summer"));
    assert_same_hits(
        &c.search(&r).unwrap(),
        &embedded.search(&r).unwrap(),
        "reopened",
    );

    // Bad input: each a clear error naming the collection address.
    let other =
        Collection::open_or_create(Path::new(&address), Some(identity("other-model")), None);
    assert!(
        matches!(other, Err(SearchError::ModelMismatch { .. })),
        "{:?}",
        other.err()
    );
    let mut short = document(90);
    short.vector.pop();
    assert!(matches!(
        c.upsert(vec![short]),
        Err(SearchError::Dimension { got: 15, want: 16 })
    ));
    assert!(matches!(
        c.search(&request(vec![0.5; 15], 5, 0, None)),
        Err(SearchError::Dimension { .. })
    ));
    let e = c
        .search(&request(v.clone(), 5, 0, Some("sold AND price > 3")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&address) && e.contains("bare field `sold`"),
        "{e}"
    );
    let mut hybrid = request(v.clone(), 5, 0, None);
    hybrid.text = Some("red".into());
    let e = c.search(&hybrid).unwrap_err().to_string();
    assert!(e.contains(&address) && e.contains("BM25"), "{e}");
    let e = c
        .search(&request(v.clone(), 10, 16_380, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("16384"), "{e}");

    // A token never shows in errors (this server checks none).
    let with_token = format!("{}?token=root:sup3rsecret", server.address("absent"));
    let e = Collection::open(Path::new(&with_token)).err().unwrap();
    assert!(matches!(e, SearchError::NoCollectionAt(_)), "{e:?}");
    let shown = format!("{e} {e:?}");
    assert!(
        !shown.contains("sup3rsecret") && shown.contains(&server.address("absent")),
        "{shown}"
    );

    // A collection another tool made (Milvus' REST quick create: int64 ids, no gclip model).
    rest_create(
        server,
        json!({"collectionName": "foreign", "dimension": DIM, "metricType": "IP"}),
    );
    let e = Collection::open(Path::new(&server.address("foreign")))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&server.address("foreign")) && e.contains("not a gclip collection"),
        "{e}"
    );

    // Creating where a collection exists is refused.
    let again = Collection::create(Path::new(&address), info.model.clone(), info.spec.clone());
    assert!(again
        .err()
        .unwrap()
        .to_string()
        .contains("already holds a collection"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_server_is_a_prompt_error_naming_the_address() {
    // A loopback port nothing listens on.
    let port = free_port();
    let address = format!("milvus://127.0.0.1:{port}/photos?token=root:hunter2");
    let start = Instant::now();
    let e = Collection::open(Path::new(&address)).err().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let shown = format!("{e} {e:?}");
    assert!(
        shown.contains(&format!("milvus://127.0.0.1:{port}/photos")),
        "{shown}"
    );
    assert!(shown.contains("cannot connect"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    // `exists` says true when it cannot ask, so that opening reports why.
    assert!(Collection::exists(Path::new(&address)));
}

/// Cluster settings: the shards a collection is created with, and a replica count the server
/// cannot give (a standalone server has one query node) refused with the address and the count.
#[test]
fn shards_are_set_at_creation_and_an_impossible_replica_count_is_refused() {
    let server = Server::shared();
    let info = image_info();
    let options = |shards: Option<u32>, replicas: Option<u32>| MilvusOptions {
        shards,
        replicas,
        ..Default::default()
    };
    // The server's refusal, after the address and what was asked; not a deadline passing.
    let assert_refused = |e: String, address: &str| {
        assert!(e.contains(address) && e.contains("2 replicas"), "{e}");
        assert!(
            !e.contains("no answer within"),
            "refused, not timed out: {e}"
        );
    };
    for shards in [2, 3] {
        let address = server.address(&format!("sharded{shards}"));
        let a = MilvusAddress::parse_with(&address, |_| None).unwrap();
        let store = MilvusStore::create(&a, info.clone(), options(Some(shards), None)).unwrap();
        assert_eq!(store.shards().unwrap(), shards, "{address}");
        store.upsert((0..10).map(document).collect()).unwrap();
        assert_eq!(store.len(), 10);
        drop(store);
        // Reopened with the replica count it is loaded with, or none asked: as it was.
        for replicas in [None, Some(1)] {
            let store = MilvusStore::open(&a, options(None, replicas)).unwrap();
            assert_eq!((store.shards().unwrap(), store.len()), (shards, 10));
        }
        let e = MilvusStore::open(&a, options(None, Some(2)))
            .err()
            .unwrap()
            .to_string();
        assert_refused(e, &address);
    }
    // An unloaded collection asked for more replicas than the server has query nodes.
    let address = server.address("two_replicas");
    let a = MilvusAddress::parse_with(&address, |_| None).unwrap();
    let e = MilvusStore::create(&a, info.clone(), options(None, Some(2)))
        .err()
        .unwrap()
        .to_string();
    assert_refused(e, &address);
}

/// `gclip check` of a Milvus collection: a sound one is clean and says what it checked; a
/// document with a vector that is not unit length is reported by id; `--repair` is refused;
/// a missing collection, and one whose vector dimension is not its model's, are errors naming
/// the address and never the token.
#[test]
fn check_reports_a_milvus_collection_and_its_bad_documents() {
    use gclip_search::check::{check_collection, CheckOptions, Component};
    let server = Server::shared();
    let address = server.address("checked");
    let secret = "root:ch3cksecret";
    let with_token = format!("{address}?token={secret}");
    let c = Collection::create(
        Path::new(&address),
        identity("test-model"),
        EmbedSpec::image(),
    )
    .unwrap();
    c.upsert((0..30).map(document).collect()).unwrap();

    let report = check_collection(Path::new(&with_token), &CheckOptions::default()).unwrap();
    let shown = report.to_string();
    assert!(report.is_clean(), "{shown}");
    assert_eq!(report.documents, 30, "{shown}");
    assert!(
        shown.starts_with(&format!("collection {address}: 30 documents")),
        "{shown}"
    );
    assert!(
        shown.contains("model test-model (16 dimensions)"),
        "{shown}"
    );
    assert!(
        shown.contains("HNSW, metric IP, M 32, efConstruction 128"),
        "{shown}"
    );
    assert!(!shown.contains("ch3cksecret"), "{shown}");

    // A vector of length 2 (the store writes what it is given; gclip's writers normalise).
    let mut long = document(77);
    long.id = "long".into();
    long.vector.iter_mut().for_each(|x| *x *= 2.0);
    c.upsert(vec![long]).unwrap();
    let report = check_collection(Path::new(&address), &CheckOptions::default()).unwrap();
    assert_eq!(report.documents, 31);
    assert_eq!(report.bad_documents(), ["long"], "{report}");
    assert!(
        report.problems[0].component == Component::Document("long".into())
            && report.problems[0]
                .message
                .contains("its vector has length 1.99"),
        "{report}"
    );
    assert!(!report.is_clean());
    // What to do names what works on a server (a repair is refused there).
    let shown = report.to_string();
    assert!(
        shown.ends_with("1 problem(s); a check changes nothing on a Milvus server: write the documents named again (gclip add) or delete them (gclip delete)"),
        "{shown}"
    );

    // --repair is refused; nothing was changed.
    let repair = CheckOptions {
        repair: true,
        ..Default::default()
    };
    let e = check_collection(Path::new(&with_token), &repair)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&address) && e.contains("--repair"), "{e}");
    assert!(!e.contains("ch3cksecret"), "{e}");
    assert_eq!(c.len(), 31);

    // No collection there.
    let absent = format!("{}?token={secret}", server.address("absent"));
    let e = check_collection(Path::new(&absent), &CheckOptions::default()).unwrap_err();
    assert!(matches!(e, SearchError::NoCollectionAt(_)), "{e:?}");
    let shown = format!("{e} {e:?}");
    assert!(
        shown.contains(&server.address("absent")) && !shown.contains("ch3cksecret"),
        "{shown}"
    );

    // A collection whose description names a model of 16 dimensions and whose vectors have 8
    // (made with Milvus' REST quick create, as another tool would).
    let info = CollectionInfo {
        model: identity("test-model"),
        spec: EmbedSpec::image(),
        created: 1,
    };
    let description = format!(
        "{}{}",
        gclip_search::milvus::DESCRIPTION_PREFIX,
        serde_json::to_string(&info).unwrap()
    );
    rest_create(
        server,
        json!({"collectionName": "narrow", "dimension": 8, "metricType": "IP",
               "description": description}),
    );
    let narrow = format!("{}?token={secret}", server.address("narrow"));
    let e = check_collection(Path::new(&narrow), &CheckOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&server.address("narrow"))
            && e.contains("not a gclip collection")
            && e.contains("FloatVector(dim 8)")
            && e.contains("model dimension 16"),
        "{e}"
    );
    assert!(!e.contains("ch3cksecret"), "{e}");
}

/// A flush seals what was written, so that the server indexes it now; `unindexed` counts what
/// searches still find without the vector index (everything, while it is in a growing segment)
/// and reaches 0 once the indexed segment is loaded, also for a segment too small for an index
/// (searched exhaustively by design). Searches find the documents before and after.
#[test]
fn a_flush_gets_the_writes_indexed_and_unindexed_counts_down_to_zero() {
    let server = Server::shared();
    let open = |name: &str| {
        Collection::create(
            Path::new(&server.address(name)),
            identity("m"),
            EmbedSpec::image(),
        )
        .unwrap()
    };
    // Above and below the 1,024 rows under which Milvus builds no index on a segment.
    let (large, small) = (open("indexed_large"), open("indexed_small"));
    large.upsert((0..3_000).map(document).collect()).unwrap();
    small.upsert((0..100).map(document).collect()).unwrap();
    assert_eq!(large.store().unindexed().unwrap(), 3_000);
    assert_eq!(small.store().unindexed().unwrap(), 100);
    let probe = request(unit_vector(1_234), 1, 0, None);
    assert_eq!(large.search(&probe).unwrap()[0].id, document(1_234).id);
    large.flush().unwrap();
    small.flush().unwrap();
    let start = std::time::Instant::now();
    let mut seen = Vec::new();
    loop {
        let left = (
            large.store().unindexed().unwrap(),
            small.store().unindexed().unwrap(),
        );
        seen.push(left);
        assert!(left.0 <= 3_000 && left.1 <= 100, "{seen:?}");
        if left == (0, 0) {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the index never covered the writes: {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(large.search(&probe).unwrap()[0].id, document(1_234).id);
    assert_eq!((large.len(), small.len()), (3_000, 100));
}

/// `search-bench --store milvus://…`: the benchmark collection is created on the server, filled,
/// measured (recall of the default mode against exact search), and reused by a second run with
/// the same plan; a collection that is not the benchmark's is refused and left alone.
#[test]
fn search_bench_measures_a_milvus_collection_and_reuses_it() {
    use gclip_search::bench::{run_store_bench, StoreBenchPlan, STORE_BENCH_FILTERS};
    use std::cell::RefCell;
    let server = Server::shared();
    let address = server.address("bench");
    let plan = StoreBenchPlan {
        count: 100,
        dim: DIM,
        queries: 2,
        k: 5,
        seed: 42,
        latent_dim: None,
    };
    let said = RefCell::new(Vec::<String>::new());
    let progress = |m: &str| said.borrow_mut().push(m.to_string());
    let (setup, rows) = run_store_bench(&plan, Path::new(&address), &progress).unwrap();
    assert_eq!(setup.written, 100);
    assert!(setup.write_s > 0.0 && setup.open_s > 0.0, "{setup:?}");
    assert_eq!(setup.unindexed, 0, "{setup:?}");
    assert_eq!(rows.len(), STORE_BENCH_FILTERS.len());
    assert_eq!(
        (rows[0].filter.as_str(), rows[0].selectivity),
        ("none", 1.0)
    );
    assert_eq!(
        (rows[1].filter.as_str(), rows[1].selectivity),
        ("category = c3", 0.1)
    );
    for r in &rows {
        // Small collections are searched exhaustively by Milvus (growing segments) in both
        // modes: the default mode finds what exact search finds.
        assert_eq!(r.recall_at_k, 1.0, "{r:?}");
        assert!(r.p50_ms > 0.0 && r.p99_ms >= r.p50_ms, "{r:?}");
    }
    assert!(said.borrow().iter().any(|m| m.contains("storing 100")));
    let c = Collection::open(Path::new(&address)).unwrap();
    assert_eq!(c.len(), 100);
    assert!(c.info().model.model.starts_with("bench:100x16"));
    drop(c);

    // Reused: nothing written the second time.
    said.borrow_mut().clear();
    let (setup, _) = run_store_bench(&plan, Path::new(&address), &progress).unwrap();
    assert_eq!((setup.written, setup.unindexed), (0, 0), "{setup:?}");
    assert!(
        !said.borrow().iter().any(|m| m.contains("storing")),
        "{:?}",
        said.borrow()
    );

    // Another collection at the address: refused, untouched.
    let other = server.address("bench_other");
    let c = Collection::create(
        Path::new(&other),
        identity("test-model"),
        EmbedSpec::image(),
    )
    .unwrap();
    c.upsert((0..3).map(document).collect()).unwrap();
    let e = run_store_bench(&plan, Path::new(&other), &progress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&other) && e.contains("not this benchmark's"),
        "{e}"
    );
    assert_eq!(c.len(), 3);
    assert_eq!(c.info().model.model, "test-model");
}

/// A fake model for the writers that embed (`add_documents`, `index_directory`): a text's or a
/// file's vector from its bytes. Counts what it embeds, so that a test can see that documents
/// the store refuses were never embedded.
#[derive(Default)]
struct CountingEncoder {
    embedded: std::sync::atomic::AtomicUsize,
}

impl gclip_search::encoder::Encoder for CountingEncoder {
    fn dim(&self) -> usize {
        DIM
    }
    fn texts(&self, texts: &[&str]) -> gclip_search::Result<Vec<Vec<f32>>> {
        self.embedded
            .fetch_add(texts.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(texts
            .iter()
            .map(|t| unit_vector(t.bytes().fold(7, |h, b| splitmix(h ^ b as u64)) % 1_000_000))
            .collect())
    }
    fn image_files(
        &self,
        paths: &[PathBuf],
    ) -> gclip_search::Result<Vec<Result<Vec<f32>, String>>> {
        self.embedded
            .fetch_add(paths.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(paths
            .iter()
            .map(|p| {
                std::fs::read(p)
                    .map(|b| unit_vector(b.len() as u64))
                    .map_err(|e| e.to_string())
            })
            .collect())
    }
    fn image_bytes(&self, bytes: &[u8], _name: &str) -> gclip_search::Result<Vec<f32>> {
        Ok(unit_vector(bytes.len() as u64))
    }
}

/// `document(i)` of tenant `acme` (two in three) or `globex`.
fn tenant_document(i: u64) -> NewDocument {
    let mut d = document(i);
    let tenant = if i.is_multiple_of(3) {
        "globex"
    } else {
        "acme"
    };
    d.fields.insert("tenant".into(), json!(tenant));
    d
}

/// Tenants by partition key: a collection created with `tenant` as its partition key has the
/// field and the server's 64 partitions; documents of two tenants answer every search as the
/// embedded backend does, with and without a filter on the tenant (which goes to the VARCHAR
/// field, so that Milvus prunes partitions), across `OR` and `NOT` too; a document without the
/// field, or with a value that is not a string, is refused by id and field name (alone, in the
/// writers of many documents); a document moves between tenants; reopening recovers the key
/// from the collection, and asking for another key is refused.
#[test]
fn tenants_by_partition_key_answer_as_the_embedded_backend() {
    use gclip_search::ingest::{add_documents, index_directory, IndexOptions};
    use gclip_search::Fields;
    let server = Server::shared();
    let address = server.address("tenants");
    let a = MilvusAddress::parse_with(&address, |_| None).unwrap();
    let info = image_info();
    let with_key = |key: &str| MilvusOptions {
        partition_key: Some(key.into()),
        ..Default::default()
    };
    let store = MilvusStore::create(&a, info.clone(), with_key("tenant")).unwrap();
    assert_eq!(store.partition_key(), Some("tenant"));
    // The server made the partitions of a partition key (one, `_default`, without).
    assert_eq!(store.partitions().unwrap(), 64);
    let dir = scratch("tenants-embedded");
    let embedded = SqliteStore::create(&dir, info.clone(), StoreOptions::default()).unwrap();
    let docs: Vec<NewDocument> = (0..60).map(tenant_document).collect();
    for batch in docs.chunks(25) {
        assert_eq!(store.upsert(batch.to_vec()).unwrap().count, batch.len());
        embedded.upsert(batch.to_vec()).unwrap();
    }
    assert_eq!(store.len(), 60);
    assert_eq!(store.get("d001").unwrap().unwrap().fields, docs[1].fields);

    let filters = [
        None,
        Some("tenant = acme"),
        Some("tenant:globex"),
        Some("tenant = globex AND colour = red"),
        Some("colour = blue AND tenant = acme AND price < 30"),
        Some("tenant != acme"),
        Some("tenant = acme OR price > 40"),
        Some("NOT tenant = globex AND tags:summer"),
        Some("(tenant = acme AND price < 10) OR (tenant = globex AND price > 40)"),
        Some("tenant = initech"),
        Some("tenant > b"),
    ];
    // Each search waits for Strong consistency (the server's next time tick): few queries, every filter.
    let compare = |s: &MilvusStore, queries: u64, what: &str| {
        let queries: Vec<u64> = (2_000..2_000 + queries).collect();
        assert_same_searches(s, &embedded, &queries, &filters, &[(10, 0), (6, 4)], what);
    };
    compare(&store, 2, "created");
    // The filters select what they say (not everything, not nothing).
    let acme = store
        .search(&request(unit_vector(5), 100, 0, Some("tenant = acme")))
        .unwrap();
    assert_eq!(acme.len(), 40);
    assert!(acme.iter().all(|h| h.fields["tenant"] == "acme"));

    // Refused whole by `upsert`, naming the document and the field; nothing written.
    let mut untenanted = document(70);
    untenanted.id = "nobody".into();
    let mut numbered = tenant_document(71);
    numbered.fields.insert("tenant".into(), json!(5));
    let mut long = tenant_document(72);
    long.fields.insert("tenant".into(), json!("x".repeat(513)));
    for (bad, says) in [
        (
            untenanted.clone(),
            r#"document "nobody" has no field "tenant""#,
        ),
        (numbered.clone(), r#"document "d071": field "tenant""#),
        (long.clone(), "513 bytes long; it takes at most 512"),
    ] {
        let e = store
            .upsert(vec![tenant_document(73), bad])
            .unwrap_err()
            .to_string();
        assert!(e.contains(says) && e.contains(&address), "{e}");
    }
    let e = store
        .upsert(vec![numbered.clone()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("is 5, not a string"), "{e}");
    let mut null = tenant_document(74);
    null.fields.insert("tenant".into(), serde_json::Value::Null);
    let e = store.upsert(vec![null]).unwrap_err().to_string();
    assert!(
        e.contains(r#"field "tenant""#) && e.contains("is null, not a string"),
        "{e}"
    );
    assert_eq!(store.len(), 60);
    assert!(store.get("d073").unwrap().is_none());

    // Writers of many documents refuse such documents alone, before embedding them.
    let text_info = CollectionInfo {
        model: identity("test-model"),
        spec: EmbedSpec::parse("title", &[]).unwrap(),
        created: 0,
    };
    let texts_address = server.address("tenant_texts");
    let texts = MilvusStore::create(
        &MilvusAddress::parse_with(&texts_address, |_| None).unwrap(),
        text_info,
        with_key("tenant"),
    )
    .unwrap();
    let encoder = CountingEncoder::default();
    let report = add_documents(
        &texts,
        &encoder,
        vec![
            input("t1", json!({"title": "red shoe", "tenant": "acme"})),
            input("t2", json!({"title": "blue shoe"})),
            input("t3", json!({"title": "green shoe", "tenant": ["acme"]})),
            input("t4", json!({"title": "grey shoe", "tenant": "globex"})),
        ],
        3,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(report.written, 2, "{report:?}");
    assert_eq!(
        encoder.embedded.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let failed: Vec<(&str, &str)> = report
        .failed
        .iter()
        .map(|(l, e)| (l.as_str(), e.as_str()))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].0, "docs.jsonl:t2");
    assert!(
        failed[0]
            .1
            .contains(r#"document "t2" has no field "tenant""#),
        "{failed:?}"
    );
    assert_eq!(failed[1].0, "docs.jsonl:t3");
    assert!(
        failed[1].1.contains(r#"is ["acme"], not a string"#),
        "{failed:?}"
    );
    assert_eq!(texts.len(), 2);
    drop(texts);

    // Indexing files into a collection whose partition key is the sub-folder: files in one
    // are written, files at the top are refused (they have no folder), each by path.
    let images = scratch("tenant-images");
    std::fs::create_dir_all(images.join("acme")).unwrap();
    std::fs::write(images.join("acme/a.png"), b"aaaa").unwrap();
    std::fs::write(images.join("top.png"), b"tttttt").unwrap();
    let folders = MilvusStore::create(
        &MilvusAddress::parse_with(&server.address("tenant_folders"), |_| None).unwrap(),
        info.clone(),
        with_key("folder"),
    )
    .unwrap();
    let encoder = CountingEncoder::default();
    let report = index_directory(
        &folders,
        &encoder,
        &images,
        &IndexOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(report.written, 1, "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].0.ends_with("top.png"), "{report:?}");
    assert!(
        report.failed[0].1.contains(r#"has no field "folder""#),
        "{report:?}"
    );
    assert_eq!(
        encoder.embedded.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let hits = folders
        .search(&request(unit_vector(1), 5, 0, Some("folder = acme")))
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].id.ends_with("acme/a.png"), "{hits:?}");
    drop(folders);
    let _ = std::fs::remove_dir_all(&images);

    // A document moves to another tenant (its fields changed, its vector kept): found under
    // the new one only, and counted once.
    let mut moved: Fields = docs[4].fields.clone();
    moved.insert("tenant".into(), json!("globex"));
    store.update_fields("d004", moved.clone()).unwrap();
    embedded.update_fields("d004", moved.clone()).unwrap();
    assert_eq!(store.len(), 60);
    let mut gone = moved.clone();
    gone.remove("tenant");
    let e = store.update_fields("d004", gone).unwrap_err().to_string();
    assert!(
        e.contains(r#"document "d004" has no field "tenant""#),
        "{e}"
    );
    assert_eq!(store.get("d004").unwrap().unwrap().fields, moved);
    let r = store
        .delete(&["d005".into(), "d006".into(), "nope".into()])
        .unwrap();
    assert_eq!(r.count, 2);
    embedded.delete(&["d005".into(), "d006".into()]).unwrap();
    compare(&store, 1, "after a move and deletes");
    drop(store);

    // Reopened without the option: the key comes from the collection itself.
    let store = MilvusStore::open(&a, MilvusOptions::default()).unwrap();
    assert_eq!(store.partition_key(), Some("tenant"));
    assert_eq!(store.len(), 58);
    compare(&store, 1, "reopened");
    drop(store);
    let c = Collection::open(Path::new(&address)).unwrap();
    let r = request(unit_vector(9), 10, 0, Some("tenant = globex"));
    assert_same_hits(
        &c.search(&r).unwrap(),
        &embedded.search(&r).unwrap(),
        "through Collection",
    );
    drop(c);
    // `gclip check`: clean, naming the key; a row whose tenant field disagrees with its fields
    // (written by another tool, here the client itself) is reported by id.
    use gclip_search::check::{check_collection, CheckOptions};
    let report = check_collection(Path::new(&address), &CheckOptions::default()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.documents, 58);
    assert!(
        report
            .to_string()
            .contains("partition key `tenant` (tenants), 64 partitions"),
        "{report}"
    );
    forge_row(
        server,
        "tenants",
        "forged",
        json!({"tenant": "acme"}),
        vec![FieldColumn::new(
            &FieldSchema::new_varchar("tenant", "", 512),
            ValueVec::String(vec!["globex".into()]),
        )],
    );
    let report = check_collection(Path::new(&address), &CheckOptions::default()).unwrap();
    assert_eq!(report.bad_documents(), ["forged"], "{report}");
    assert!(
        report.problems[0]
            .message
            .contains(r#"partition key field `tenant` holds "globex" and its fields say "acme""#),
        "{report}"
    );
    MilvusStore::open(&a, MilvusOptions::default())
        .unwrap()
        .delete(&["forged".into()])
        .unwrap();

    // With the same key asked: as it is. With another, or a key for a collection without one:
    // refused, naming both.
    assert!(MilvusStore::open(&a, with_key("tenant")).is_ok());
    let e = MilvusStore::open(&a, with_key("region"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&address)
            && e.contains("the partition key `tenant`")
            && e.contains("GCLIP_MILVUS_PARTITION_KEY=region"),
        "{e}"
    );
    let plain_address = server.address("plain");
    let plain = MilvusAddress::parse_with(&plain_address, |_| None).unwrap();
    let p = MilvusStore::create(&plain, info.clone(), MilvusOptions::default()).unwrap();
    assert_eq!((p.partition_key(), p.partitions().unwrap()), (None, 1));
    drop(p);
    let e = MilvusStore::open(&plain, with_key("tenant"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&plain_address) && e.contains("no partition key"),
        "{e}"
    );
    // A name that cannot be a partition key is refused before anything is created.
    let e = MilvusStore::create(
        &MilvusAddress::parse_with(&server.address("bad_key"), |_| None).unwrap(),
        info.clone(),
        with_key("fields"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("gclip's own fields"), "{e}");
    let bad = MilvusAddress::parse_with(&server.address("bad_key"), |_| None).unwrap();
    assert!(!MilvusStore::exists(&bad, &MilvusOptions::default()).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes one row into a gclip collection through the client itself, as another tool would:
/// its `fields` as given, and its typed fields' columns (partition key, scalar fields).
fn forge_row(
    server: &Server,
    collection: &str,
    id: &str,
    fields: serde_json::Value,
    typed: Vec<FieldColumn>,
) {
    let json_field = |name: &str| {
        let mut f = FieldSchema::empty();
        f.name = name.into();
        f.dtype = milvus::proto::schema::DataType::Json;
        f
    };
    let columns: Vec<FieldColumn> = vec![
        FieldColumn::new(
            &FieldSchema::new_primary_varchar("id", "", false, 4096),
            vec![id.to_string()],
        ),
        FieldColumn::new(
            &FieldSchema::new_float_vector("vector", "", DIM as i64),
            unit_vector(99),
        ),
        FieldColumn::new(
            &json_field("fields"),
            ValueVec::Json(vec![fields.to_string().into_bytes()]),
        ),
        FieldColumn::new(&json_field("source"), ValueVec::Json(vec![b"{}".to_vec()])),
    ]
    .into_iter()
    .chain(typed)
    .collect();
    with_client(server, |client| async move {
        client.insert(collection, columns, None).await.unwrap();
    });
}

/// Runs `f` to completion with a client of its own on the server, as another tool would.
fn with_client<T, F: std::future::Future<Output = T>>(
    server: &Server,
    f: impl FnOnce(milvus::client::Client) -> F,
) -> T {
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move { f(milvus::client::Client::new(endpoint).await.unwrap()).await })
}

/// `document(i)` with the fields a shop declares as scalar fields: `brand` (a string; some
/// brands look like numbers), `stock` (a whole number, some negative), `rating` (a number) and
/// `sold` (true or false).
fn shop_document(i: u64) -> NewDocument {
    let mut d = document(i);
    let brand = ["acme", "globex", "initech", "7", "07"][(i % 5) as usize];
    d.fields.insert("brand".into(), json!(brand));
    d.fields
        .insert("stock".into(), json!((i * 37 % 100) as i64 - 20));
    d.fields
        .insert("rating".into(), json!((i % 9) as f64 * 0.5 + 0.25));
    d.fields.insert("sold".into(), json!(i % 4 == 1));
    d
}

/// Declared scalar fields (`GCLIP_MILVUS_SCALAR_FIELDS`): a collection created with them has
/// typed fields that filters on them read, and answers every filter as the embedded backend
/// does: equalities, ranges with fractional and out-of-range bounds, values of another type
/// (`stock = '17'`, `stock = abc`, `sold = 'true'`), mixed with JSON fields; with and without a
/// partition key (set with its number of partitions, `GCLIP_MILVUS_PARTITIONS`), which is then a
/// typed field too. A document without a declared field or with a value of another type is
/// refused by id and field (alone, in the writers of many documents). Reopening reads the
/// declarations back; asking for others, or for another number of partitions, is refused;
/// `gclip check` names the fields and reports a row whose typed field disagrees with its fields.
#[test]
fn scalar_fields_answer_as_the_embedded_backend() {
    use gclip_search::ingest::add_documents;
    use gclip_search::milvus::parse_scalar_fields;
    let server = Server::shared();
    let info = image_info();
    let declared = "brand:string(16),stock:int,rating:float,sold:bool";
    let declared_options = || MilvusOptions {
        scalar_fields: Some(parse_scalar_fields(declared).unwrap()),
        ..Default::default()
    };
    let address = server.address("shop");
    let a = MilvusAddress::parse_with(&address, |_| None).unwrap();
    let shop = MilvusStore::create(&a, info.clone(), declared_options()).unwrap();
    let shown: Vec<String> = shop.scalar_fields().iter().map(|f| f.to_string()).collect();
    assert_eq!(shown.join(","), declared);
    // The brand as partition key (16 partitions), the other three declared.
    let keyed_address = server.address("shop_keyed");
    let k = MilvusAddress::parse_with(&keyed_address, |_| None).unwrap();
    let keyed_options = || MilvusOptions {
        partition_key: Some("brand".into()),
        partitions: Some(16),
        scalar_fields: Some(parse_scalar_fields("stock:int,rating:float,sold:bool").unwrap()),
        ..Default::default()
    };
    let keyed = MilvusStore::create(&k, info.clone(), keyed_options()).unwrap();
    assert_eq!(keyed.partition_key(), Some("brand"));
    assert_eq!(keyed.partitions().unwrap(), 16);
    assert_eq!(keyed.scalar_fields().len(), 3);
    // Each string and number field has Milvus' index for its type.
    let indexes = scalar_indexes(server, "shop");
    assert_eq!(
        indexes,
        [
            ("brand".to_string(), "Trie".to_string()),
            ("rating".into(), "STL_SORT".into()),
            ("stock".into(), "STL_SORT".into())
        ],
        "{indexes:?}"
    );

    let dir = scratch("scalar-embedded");
    let embedded = SqliteStore::create(&dir, info.clone(), StoreOptions::default()).unwrap();
    let docs: Vec<NewDocument> = (0..60).map(shop_document).collect();
    for batch in docs.chunks(25) {
        shop.upsert(batch.to_vec()).unwrap();
        keyed.upsert(batch.to_vec()).unwrap();
        embedded.upsert(batch.to_vec()).unwrap();
    }
    assert_eq!((shop.len(), keyed.len()), (60, 60));
    assert_eq!(shop.get("d003").unwrap().unwrap().fields, docs[3].fields);

    let filters = [
        None,
        Some("brand = acme"),
        Some("brand:globex"),
        Some("brand != acme"),
        Some("brand >= h"),
        Some("brand < globex"),
        Some("brand = '7'"),
        Some("brand = '07'"),
        Some("stock = 17"),
        Some("stock = '17'"),
        Some("stock = 17.0"),
        Some("stock != 17"),
        Some("stock < 10.5"),
        Some("stock <= 10"),
        Some("stock > 50"),
        Some("stock >= -5.5"),
        Some("stock < 1e300"),
        Some("stock = 12.5"),
        Some("stock < '50'"),
        Some("rating = 2.75"),
        Some("rating = '2.75'"),
        Some("rating > 2"),
        Some("rating <= 1.25"),
        Some("rating != 0.25"),
        Some("sold = true"),
        Some("sold != true"),
        Some("sold:false"),
        Some("sold = 'true'"),
        Some("sold != 1"),
        Some("brand = acme AND stock > 20"),
        Some("(sold = true OR rating > 3) AND NOT brand = globex"),
        Some("stock > 10 AND colour = red"),
        Some("tags:summer OR stock < 0"),
    ];
    // Each search waits for Strong consistency (the server's next time tick): one query, every filter, one or
    // two pages.
    let compare = |s: &MilvusStore, pages: &[(usize, usize)], what: &str| {
        assert_same_searches(s, &embedded, &[3_000], &filters, pages, what);
    };
    let pages = [(10, 0), (6, 4)];
    compare(&shop, &pages, "declared");
    compare(&keyed, &pages, "declared with a partition key");
    // The filters select what they say (not everything, not nothing).
    let count = |f: &str| {
        shop.search(&request(unit_vector(5), 100, 0, Some(f)))
            .unwrap()
            .len()
    };
    assert_eq!(count("stock = '17'"), 1);
    assert_eq!(count("sold = true"), 15);
    assert_eq!(count("stock = 12.5"), 0);
    // A comparison with a kind of value the field never holds: refused by both, in the same
    // words.
    for f in ["stock = abc", "rating != x", "sold > 1"] {
        let r = request(unit_vector(5), 10, 0, Some(f));
        let e = embedded.search(&r).unwrap_err().to_string();
        let m = shop.search(&r).unwrap_err().to_string();
        assert!(m.contains(&address) && m.ends_with(&e), "{f}: {m} | {e}");
    }
    // The one difference: a string field compared with a number matches the number's text
    // only; the embedded backend also takes other strings that parse to it ("07").
    let seven = request(unit_vector(5), 100, 0, Some("brand = 7"));
    let (m, e) = (
        shop.search(&seven).unwrap(),
        embedded.search(&seven).unwrap(),
    );
    assert_eq!((m.len(), e.len()), (12, 24));
    assert!(m.iter().all(|h| h.fields["brand"] == "7"));

    // Refused by `upsert`, naming the document and the field; nothing written.
    let with = |i: u64, name: &str, value: serde_json::Value| {
        let mut d = shop_document(i);
        match value {
            serde_json::Value::Null => d.fields.remove(name),
            v => d.fields.insert(name.into(), v),
        };
        d
    };
    for (bad, says) in [
        (
            with(70, "stock", serde_json::Value::Null),
            r#"document "d070" has no field "stock", a scalar field stock:int of"#,
        ),
        (
            with(71, "stock", json!("12")),
            r#"document "d071": field "stock" (a scalar field stock:int of"#,
        ),
        (with(72, "stock", json!(2.5)), "is 2.5, not a whole number"),
        (
            with(73, "stock", json!(9_007_199_254_740_993u64)),
            "is 9007199254740993, not a whole number",
        ),
        (
            with(74, "rating", json!("high")),
            r#"is "high", not a number"#,
        ),
        (with(75, "sold", json!(1)), "is 1, not true or false"),
        (
            with(76, "brand", json!("b".repeat(17))),
            "is 17 bytes long; it takes at most 16",
        ),
        (
            with(77, "brand", json!(["acme"])),
            r#"is ["acme"], not a string"#,
        ),
    ] {
        let e = shop
            .upsert(vec![shop_document(78), bad])
            .unwrap_err()
            .to_string();
        assert!(e.contains(says) && e.contains(&address), "{e}");
    }
    assert_eq!(shop.len(), 60);
    assert!(shop.get("d078").unwrap().is_none());
    // Writers of many documents refuse such documents alone, before embedding them.
    let text_info = CollectionInfo {
        model: identity("test-model"),
        spec: EmbedSpec::parse("title", &[]).unwrap(),
        created: 0,
    };
    let texts = MilvusStore::create(
        &MilvusAddress::parse_with(&server.address("shop_texts"), |_| None).unwrap(),
        text_info,
        MilvusOptions {
            scalar_fields: Some(parse_scalar_fields("stock:int").unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    let encoder = CountingEncoder::default();
    let report = add_documents(
        &texts,
        &encoder,
        vec![
            input("t1", json!({"title": "red shoe", "stock": 3})),
            input("t2", json!({"title": "blue shoe", "stock": "3"})),
            input("t3", json!({"title": "green shoe"})),
            input("t4", json!({"title": "grey shoe", "stock": -1})),
        ],
        3,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(report.written, 2, "{report:?}");
    assert_eq!(
        encoder.embedded.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let failed: Vec<&str> = report.failed.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(failed, ["docs.jsonl:t2", "docs.jsonl:t3"], "{report:?}");
    assert!(
        report.failed[0].1.contains(r#"is "3", not a whole number"#),
        "{report:?}"
    );
    assert!(
        report.failed[1].1.contains(r#"has no field "stock""#),
        "{report:?}"
    );
    drop(texts);

    // Changed fields are written to the typed fields too.
    let mut changed = docs[8].fields.clone();
    changed.insert("stock".into(), json!(1000));
    shop.update_fields("d008", changed.clone()).unwrap();
    keyed.update_fields("d008", changed.clone()).unwrap();
    embedded.update_fields("d008", changed).unwrap();
    let hits = shop
        .search(&request(unit_vector(1), 10, 0, Some("stock >= 1000")))
        .unwrap();
    assert_eq!(ids(&hits), ["d008"]);
    drop((shop, keyed));
    // Sealed and indexed, then loaded again by opening: the searches below read the scalar
    // indexes, not only growing segments.
    seal_and_index(server, "shop");
    seal_and_index(server, "shop_keyed");

    // Reopened without the options: the declarations come from the collections.
    let shop = MilvusStore::open(&a, MilvusOptions::default()).unwrap();
    let shown: Vec<String> = shop.scalar_fields().iter().map(|f| f.to_string()).collect();
    assert_eq!(shown.join(","), declared);
    compare(&shop, &pages[..1], "reopened");
    drop(shop);
    let keyed = MilvusStore::open(&k, MilvusOptions::default()).unwrap();
    assert_eq!(keyed.partition_key(), Some("brand"));
    assert_eq!(keyed.scalar_fields().len(), 3);
    compare(&keyed, &pages[..1], "reopened with a partition key");
    drop(keyed);
    // The same declarations (in any order) and partitions: as it is. Others: refused, naming
    // both.
    let reordered = MilvusOptions {
        scalar_fields: Some(
            parse_scalar_fields("sold:bool,rating:float,stock:int,brand:string(16)").unwrap(),
        ),
        ..Default::default()
    };
    assert!(MilvusStore::open(&a, reordered).is_ok());
    assert!(MilvusStore::open(&k, keyed_options()).is_ok());
    for (options, says) in [
        (
            MilvusOptions {
                scalar_fields: Some(parse_scalar_fields("brand:string(32),stock:int").unwrap()),
                ..Default::default()
            },
            "was created with the scalar fields brand:string(16),rating:float,sold:bool,\
             stock:int, and GCLIP_MILVUS_SCALAR_FIELDS asks for the scalar fields \
             brand:string(32),stock:int",
        ),
        (
            MilvusOptions {
                partitions: Some(16),
                ..Default::default()
            },
            "has no partition key, and GCLIP_MILVUS_PARTITIONS=16",
        ),
    ] {
        let e = MilvusStore::open(&a, options).err().unwrap().to_string();
        assert!(e.contains(&address) && e.contains(says), "{e}");
    }
    let e = MilvusStore::open(
        &k,
        MilvusOptions {
            partitions: Some(32),
            ..keyed_options()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(&keyed_address)
            && e.contains("was created with 16 partitions, and GCLIP_MILVUS_PARTITIONS=32"),
        "{e}"
    );
    // Partitions without a partition key, and a declared field that is the partition key, are
    // refused before anything is created.
    let nothing = MilvusAddress::parse_with(&server.address("nothing"), |_| None).unwrap();
    for (options, says) in [
        (
            MilvusOptions {
                partitions: Some(8),
                ..Default::default()
            },
            "GCLIP_MILVUS_PARTITIONS=8 sets the partitions of a partition key",
        ),
        (
            MilvusOptions {
                partition_key: Some("brand".into()),
                ..declared_options()
            },
            "brand:string(16) is the partition key `brand`",
        ),
    ] {
        let e = MilvusStore::create(&nothing, info.clone(), options)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(says), "{e}");
    }
    assert!(!MilvusStore::exists(&nothing, &MilvusOptions::default()).unwrap());

    // `gclip check`: clean, naming the fields; a row whose typed field disagrees with its
    // fields (written by another tool, here the client itself) is reported by id.
    use gclip_search::check::{check_collection, CheckOptions};
    let report = check_collection(Path::new(&address), &CheckOptions::default()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(
        report
            .to_string()
            .contains(&format!("scalar fields {declared} (filters on them read")),
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("scalar field indexes: brand Trie, rating STL_SORT, stock STL_SORT"),
        "{report}"
    );
    forge_row(
        server,
        "shop",
        "forged",
        json!({"brand": "acme", "stock": 4, "rating": 1.0, "sold": false}),
        vec![
            FieldColumn::new(
                &FieldSchema::new_varchar("brand", "", 16),
                ValueVec::String(vec!["acme".into()]),
            ),
            FieldColumn::new(
                &FieldSchema::new_int64("stock", ""),
                ValueVec::Long(vec![5]),
            ),
            FieldColumn::new(
                &FieldSchema::new_double("rating", ""),
                ValueVec::Double(vec![1.0]),
            ),
            FieldColumn::new(
                &FieldSchema::new_bool("sold", ""),
                ValueVec::Bool(vec![false]),
            ),
        ],
    );
    let report = check_collection(Path::new(&address), &CheckOptions::default()).unwrap();
    assert_eq!(report.bad_documents(), ["forged"], "{report}");
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(
        report.problems[0]
            .message
            .contains("its scalar field stock:int holds 5 and its fields say 4"),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `document(i)` with optional shop fields, each missing from some documents and null in
/// others: `brand` (a string, sometimes empty), `stock` (a whole number, sometimes 0), `rating`
/// (a number, sometimes 0) and `sold` (true or false); and `level` (0 to 3), held by every
/// document.
fn sparse_document(i: u64) -> NewDocument {
    let mut d = document(i);
    let mut set = |name: &str, value: Option<serde_json::Value>, null: bool| {
        match value {
            Some(v) => d.fields.insert(name.into(), v),
            None if null => d.fields.insert(name.into(), serde_json::Value::Null),
            None => None,
        };
    };
    let brand = ["acme", "globex", "", "7"][(i % 4) as usize];
    set(
        "brand",
        (!i.is_multiple_of(3)).then(|| json!(brand)),
        i.is_multiple_of(9),
    );
    set(
        "stock",
        (!i.is_multiple_of(4)).then(|| json!((i * 37 % 40) as i64 - 10)),
        i % 8 == 4,
    );
    set(
        "rating",
        (i % 5 != 2).then(|| json!((i % 6) as f64 * 0.5)),
        i % 10 == 7,
    );
    set(
        "sold",
        i.is_multiple_of(2).then(|| json!(i.is_multiple_of(4))),
        i % 6 == 1,
    );
    set("level", Some(json!(i % 4)), false);
    d
}

/// Optional scalar fields (`GCLIP_MILVUS_SCALAR_FIELDS=brand:string(16)?,…`): documents that
/// lack a field or hold null there are written, and every filter construct (equality,
/// inequality, ranges, values of another type, bare fields, `NOT`, `AND`, `OR`) finds exactly
/// the embedded backend's documents, with and without a partition key, before and after the
/// segments are sealed and indexed. A value of another type is still refused by id and field.
/// Reopening reads the declarations back with their `?`; another declaration, optionality
/// included, is refused naming both. The presence fields have no index (Milvus 2.3.5 refuses
/// one on a BOOL field), and `gclip check` reports a row whose presence field disagrees with
/// its fields.
#[test]
fn optional_scalar_fields_answer_as_the_embedded_backend() {
    use gclip_search::milvus::parse_scalar_fields;
    let server = Server::shared();
    let info = image_info();
    let declared = "brand:string(16)?,stock:int?,rating:float?,sold:bool?,level:int";
    let declared_options = || MilvusOptions {
        scalar_fields: Some(parse_scalar_fields(declared).unwrap()),
        ..Default::default()
    };
    let address = server.address("sparse");
    let a = MilvusAddress::parse_with(&address, |_| None).unwrap();
    let sparse = MilvusStore::create(&a, info.clone(), declared_options()).unwrap();
    let shown: Vec<String> = sparse
        .scalar_fields()
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(shown.join(","), declared);
    // The colour as partition key, written by delete and insert.
    let keyed_address = server.address("sparse_keyed");
    let k = MilvusAddress::parse_with(&keyed_address, |_| None).unwrap();
    let keyed_options = || MilvusOptions {
        partition_key: Some("colour".into()),
        partitions: Some(4),
        ..declared_options()
    };
    let keyed = MilvusStore::create(&k, info.clone(), keyed_options()).unwrap();
    assert_eq!(keyed.scalar_fields().len(), 5);
    // The values are indexed as for required fields; the presence fields are not: Milvus
    // 2.3.5 has no index for a BOOL field.
    let indexes = scalar_indexes(server, "sparse");
    assert_eq!(
        indexes,
        [
            ("brand".to_string(), "Trie".to_string()),
            ("level".into(), "STL_SORT".into()),
            ("rating".into(), "STL_SORT".into()),
            ("stock".into(), "STL_SORT".into())
        ],
        "{indexes:?}"
    );
    let refused = with_client(server, |client| async move {
        let params = milvus::index::IndexParams::new(
            "presence".into(),
            milvus::index::IndexType::StlSort,
            milvus::index::MetricType::INVALID,
            Default::default(),
        );
        client
            .create_index("sparse", "stock__present", params)
            .await
            .map_err(|e| e.to_string())
    });
    eprintln!("an index on a presence field: {refused:?}");
    assert!(refused.is_err(), "{refused:?}");

    let dir = scratch("optional-embedded");
    let embedded = SqliteStore::create(&dir, info.clone(), StoreOptions::default()).unwrap();
    let docs: Vec<NewDocument> = (0..60).map(sparse_document).collect();
    for batch in docs.chunks(25) {
        sparse.upsert(batch.to_vec()).unwrap();
        keyed.upsert(batch.to_vec()).unwrap();
        embedded.upsert(batch.to_vec()).unwrap();
    }
    assert_eq!((sparse.len(), keyed.len()), (60, 60));
    // Missing stays missing and null stays null in the document.
    assert_eq!(sparse.get("d000").unwrap().unwrap().fields, docs[0].fields);
    assert_eq!(
        sparse.get("d004").unwrap().unwrap().fields["stock"],
        json!(null)
    );
    assert!(!sparse
        .get("d008")
        .unwrap()
        .unwrap()
        .fields
        .contains_key("stock"));

    let filters = [
        None,
        // Equality, of each type, with the placeholder's value too (0, 0.0, "", false).
        Some("brand = acme"),
        Some("brand:globex"),
        Some("brand = ''"),
        Some("brand = '7'"),
        Some("stock = 0"),
        Some("stock = '-3'"),
        Some("rating = 0"),
        Some("rating = 1.5"),
        Some("sold = true"),
        Some("sold:false"),
        Some("level = 2"),
        // Inequality: a missing or null field matches.
        Some("brand != acme"),
        Some("brand != ''"),
        Some("stock != 0"),
        Some("rating != 0"),
        Some("sold != true"),
        Some("sold != false"),
        // Ranges, with fractional and out-of-range bounds, and a string field against a
        // number (the JSON field).
        Some("stock < 10.5"),
        Some("stock >= 0"),
        Some("stock > -1e300"),
        Some("rating > 1"),
        Some("rating <= 0"),
        Some("brand >= b"),
        Some("brand < h"),
        Some("brand < 7"),
        // Values of another type: no document, or (`!=`) every one.
        Some("stock = 12.5"),
        Some("stock != 12.5"),
        Some("stock < '3'"),
        Some("sold = 1"),
        Some("sold != 1"),
        Some("sold = 'true'"),
        // Bare fields: a number is true (0 too), a string when not empty, a boolean when true.
        Some("brand"),
        Some("stock"),
        Some("rating"),
        Some("sold"),
        Some("level"),
        // NOT, AND, OR.
        Some("NOT stock > 10"),
        Some("NOT brand = acme"),
        Some("NOT brand != acme"),
        Some("NOT stock"),
        Some("NOT sold"),
        Some("NOT (brand OR rating)"),
        Some("(stock > 10 OR NOT rating > 1) AND brand != globex"),
        Some("sold OR stock < 0"),
        Some("colour = red AND NOT stock"),
        Some("level = 2 AND NOT sold != true"),
        Some("NOT (sold = false AND rating >= 1) OR tags:summer"),
    ];
    // Every document in one page, so that the whole set matching is compared.
    let compare = |s: &MilvusStore, what: &str| {
        assert_same_searches(s, &embedded, &[3_000], &filters, &[(60, 0)], what);
    };
    compare(&sparse, "optional");
    compare(&keyed, "optional with a partition key");
    // The filters select what they say: documents without the field are in the answer to
    // `!=` and `NOT`, never in the others.
    let count = |f: &str| {
        sparse
            .search(&request(unit_vector(5), 100, 0, Some(f)))
            .unwrap()
            .len()
    };
    let lacking = |name: &str| {
        docs.iter()
            .filter(|d| d.fields.get(name).is_none_or(|v| v.is_null()))
            .count()
    };
    let (no_stock, no_sold) = (lacking("stock"), lacking("sold"));
    assert!(no_stock > 10 && no_stock < 30, "{no_stock}");
    assert_eq!(count("NOT stock"), no_stock);
    assert_eq!(count("stock") + no_stock, 60);
    assert_eq!(count("sold = true") + count("sold = false") + no_sold, 60);
    assert_eq!(count("sold != true"), count("sold = false") + no_sold);
    assert_eq!(count("stock = 0") + count("stock != 0"), 60);
    assert!(count("stock = 0") > 0);

    // A value of another type is refused, naming the document and the field; nothing
    // written.
    for (field, value, says) in [
        (
            "stock",
            json!("12"),
            r#"document "d070": field "stock" (a scalar field stock:int? of"#,
        ),
        ("stock", json!(2.5), "is 2.5, not a whole number"),
        ("rating", json!("high"), r#"is "high", not a number"#),
        ("sold", json!(1), "is 1, not true or false"),
        (
            "brand",
            json!("b".repeat(17)),
            "is 17 bytes long; it takes at most 16",
        ),
        ("brand", json!(["acme"]), r#"is ["acme"], not a string"#),
    ] {
        let mut bad = sparse_document(70);
        bad.fields.insert(field.into(), value);
        let e = sparse
            .upsert(vec![sparse_document(71), bad])
            .unwrap_err()
            .to_string();
        assert!(e.contains(says) && e.contains(&address), "{e}");
    }
    // A required field is still required.
    let mut bad = sparse_document(72);
    bad.fields.remove("level");
    let e = sparse.upsert(vec![bad]).unwrap_err().to_string();
    assert!(
        e.contains(r#"document "d072" has no field "level", a scalar field level:int of"#)
            && e.contains("a field declared optional, name:type?, may be missing"),
        "{e}"
    );
    assert_eq!(sparse.len(), 60);

    // Removing and adding an optional field by changing a document's fields.
    let mut changed = docs[9].fields.clone();
    assert!(changed.contains_key("stock"));
    changed.remove("stock");
    changed.insert("rating".into(), json!(null));
    for s in [&sparse as &dyn Store, &keyed, &embedded] {
        s.update_fields("d009", changed.clone()).unwrap();
    }
    let mut changed = docs[8].fields.clone();
    assert!(!changed.contains_key("stock"));
    changed.insert("stock".into(), json!(1000));
    for s in [&sparse as &dyn Store, &keyed, &embedded] {
        s.update_fields("d008", changed.clone()).unwrap();
    }
    assert_eq!(count("NOT stock"), no_stock);
    let hits = sparse
        .search(&request(unit_vector(1), 10, 0, Some("stock >= 1000")))
        .unwrap();
    assert_eq!(ids(&hits), ["d008"]);
    drop((sparse, keyed));
    seal_and_index(server, "sparse");
    seal_and_index(server, "sparse_keyed");

    // Reopened without the options: the declarations, optional ones with their `?`, come
    // from the collections, and the sealed, indexed segments answer alike.
    let sparse = MilvusStore::open(&a, MilvusOptions::default()).unwrap();
    let shown: Vec<String> = sparse
        .scalar_fields()
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(shown.join(","), declared);
    compare(&sparse, "optional, reopened");
    drop(sparse);
    let keyed = MilvusStore::open(&k, MilvusOptions::default()).unwrap();
    assert_eq!(keyed.partition_key(), Some("colour"));
    compare(&keyed, "optional with a partition key, reopened");
    drop(keyed);
    // The same declarations in another order: as it is. Another optionality or type: refused,
    // naming both.
    let reordered = MilvusOptions {
        scalar_fields: Some(
            parse_scalar_fields("level:int,sold:bool?,rating:float?,stock:int?,brand:string(16)?")
                .unwrap(),
        ),
        ..Default::default()
    };
    assert!(MilvusStore::open(&a, reordered).is_ok());
    assert!(MilvusStore::open(&k, keyed_options()).is_ok());
    for asked in [
        "brand:string(16)?,stock:int,rating:float?,sold:bool?,level:int",
        "brand:string(16)?,stock:int?,rating:float?,sold:bool?,level:int?",
        "brand:string(16),stock:int,rating:float,sold:bool,level:int",
    ] {
        let options = MilvusOptions {
            scalar_fields: Some(parse_scalar_fields(asked).unwrap()),
            ..Default::default()
        };
        let e = MilvusStore::open(&a, options).err().unwrap().to_string();
        let mut wants: Vec<&str> = asked.split(',').collect();
        wants.sort();
        let says = format!(
            "was created with the scalar fields brand:string(16)?,level:int,rating:float?,\
             sold:bool?,stock:int?, and GCLIP_MILVUS_SCALAR_FIELDS asks for the scalar fields {}",
            wants.join(",")
        );
        assert!(e.contains(&address) && e.contains(&says), "{e}");
    }

    // `gclip check`: clean, naming the declarations; a row whose presence field says the
    // field is missing while its fields hold it is reported by id; a placeholder that is not
    // the zero of its type beside a false presence field is not.
    use gclip_search::check::{check_collection, CheckOptions};
    let report = check_collection(Path::new(&address), &CheckOptions::default()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(
        report
            .to_string()
            .contains(&format!("scalar fields {declared} (filters on them read")),
        "{report}"
    );
    let typed = |stock: i64, stock_present: bool| {
        vec![
            FieldColumn::new(
                &FieldSchema::new_varchar("brand", "", 16),
                ValueVec::String(vec!["".into()]),
            ),
            FieldColumn::new(
                &FieldSchema::new_bool("brand__present", ""),
                ValueVec::Bool(vec![false]),
            ),
            FieldColumn::new(
                &FieldSchema::new_int64("stock", ""),
                ValueVec::Long(vec![stock]),
            ),
            FieldColumn::new(
                &FieldSchema::new_bool("stock__present", ""),
                ValueVec::Bool(vec![stock_present]),
            ),
            FieldColumn::new(
                &FieldSchema::new_double("rating", ""),
                ValueVec::Double(vec![0.0]),
            ),
            FieldColumn::new(
                &FieldSchema::new_bool("rating__present", ""),
                ValueVec::Bool(vec![false]),
            ),
            FieldColumn::new(
                &FieldSchema::new_bool("sold", ""),
                ValueVec::Bool(vec![false]),
            ),
            FieldColumn::new(
                &FieldSchema::new_bool("sold__present", ""),
                ValueVec::Bool(vec![false]),
            ),
            FieldColumn::new(
                &FieldSchema::new_int64("level", ""),
                ValueVec::Long(vec![1]),
            ),
        ]
    };
    forge_row(
        server,
        "sparse",
        "forged",
        json!({"stock": 4, "level": 1}),
        typed(4, false),
    );
    forge_row(
        server,
        "sparse",
        "placeholder",
        json!({"level": 1}),
        typed(9, false),
    );
    let report = check_collection(Path::new(&address), &CheckOptions::default()).unwrap();
    assert_eq!(report.bad_documents(), ["forged"], "{report}");
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(
        report.problems[0].message.contains(
            "its scalar field stock:int? holds nothing (its presence field stock__present is \
             false) and its fields say 4"
        ),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The index type of each indexed field of a collection but the vector, by field name, as the
/// server describes them (through a client of its own).
fn scalar_indexes(server: &Server, collection: &str) -> Vec<(String, String)> {
    let collection = collection.to_string();
    with_client(server, |client| async move {
        // Milvus 2.3 describes every index of the collection, whatever field is named.
        let indexes = client
            .describe_index(collection, "vector".to_string())
            .await
            .unwrap();
        let mut out: Vec<(String, String)> = indexes
            .iter()
            .filter(|i| i.field_name() != "vector")
            .map(|i| {
                let kind = i.params().index_type().to_string();
                (i.field_name().to_string(), kind)
            })
            .collect();
        out.sort();
        out
    })
}

/// Seals a collection's segments (flush), waits until Milvus has built every index over them,
/// and releases the collection, so that the next open loads the sealed, indexed segments.
fn seal_and_index(server: &Server, collection: &str) {
    use milvus::proto::common::IndexState;
    let collection = collection.to_string();
    with_client(server, |client| async move {
        client.flush(collection.clone()).await.unwrap();
        let start = Instant::now();
        loop {
            let indexes = client
                .describe_index(collection.clone(), "vector".to_string())
                .await
                .unwrap();
            if indexes.iter().all(|i| i.state() == IndexState::Finished) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "{collection}: indexes not built: {:?}",
                indexes.iter().map(|i| i.state()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        client.release_collection(collection).await.unwrap();
    })
}
