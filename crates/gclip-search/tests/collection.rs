//! Collections end to end on a real SQLite file: ingest, query, filter, page, update, delete,
//! reopen and query again; the HNSW and lexical indexes against exact search and across restarts.
//!
//! The encoder here is a deterministic bag of words (each word a fixed pseudo-random unit
//! vector), so that which document should rank first is known without a model; the CLI tests
//! use a real model.

use std::path::{Path, PathBuf};

use gclip_search::encoder::Encoder;
use gclip_search::ingest::{add_documents, read_documents};
use gclip_search::query::query_vector;
use gclip_search::sqlite::StoreOptions;
use gclip_search::{
    Collection, EmbedSpec, Filter, Fusion, ModelIdentity, NewDocument, QueryInput, QueryPart,
    SearchError, SearchMode, SearchRequest,
};
use serde_json::json;

const DIM: usize = 32;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn seeded_vector(seed: u64, dim: usize) -> Vec<f32> {
    (0..dim as u64)
        .map(|i| {
            (splitmix(seed.wrapping_mul(1_000_003).wrapping_add(i)) % 20_001) as f32 / 10_000.0
                - 1.0
        })
        .collect()
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

struct BagOfWords;

impl Encoder for BagOfWords {
    fn dim(&self) -> usize {
        DIM
    }
    fn texts(&self, texts: &[&str]) -> gclip_search::Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0.0f32; DIM];
                for w in t.split_whitespace() {
                    let seed = w.bytes().fold(7u64, |h, b| splitmix(h ^ b as u64));
                    for (a, b) in v.iter_mut().zip(seeded_vector(seed, DIM)) {
                        *a += b;
                    }
                }
                unit(v)
            })
            .collect())
    }
    fn image_files(
        &self,
        paths: &[PathBuf],
    ) -> gclip_search::Result<Vec<Result<Vec<f32>, String>>> {
        Ok(paths
            .iter()
            .map(|p| match std::fs::read(p) {
                Ok(b) => Ok(unit(seeded_vector(b.len() as u64, DIM))),
                Err(e) => Err(e.to_string()),
            })
            .collect())
    }
    fn image_bytes(&self, bytes: &[u8], _name: &str) -> gclip_search::Result<Vec<f32>> {
        Ok(unit(seeded_vector(bytes.len() as u64, DIM)))
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-search-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn identity() -> ModelIdentity {
    ModelIdentity {
        model: "bag-of-words".into(),
        arch: None,
        dim: DIM,
        precision: Default::default(),
    }
}

fn text_query(c: &Collection, text: &str) -> Vec<f32> {
    query_vector(
        &BagOfWords,
        Some(c.store()),
        &[QueryPart::new(QueryInput::Text(text.into()))],
    )
    .unwrap()
}

fn request(vector: Vec<f32>, limit: usize) -> SearchRequest {
    SearchRequest {
        vector: Some(vector),
        limit,
        ..Default::default()
    }
}

const PRODUCTS: &[(&str, &str, f64, &[&str])] = &[
    ("p1", "red dress", 40.0, &["summer", "women"]),
    ("p2", "red floral dress", 55.0, &["summer"]),
    ("p3", "blue linen shirt", 30.0, &["men"]),
    ("p4", "green wool coat", 120.0, &["winter"]),
    ("p5", "black leather boots", 90.0, &["winter", "women"]),
    ("p6", "floral summer skirt", 35.0, &["summer", "women"]),
    ("p7", "white cotton shirt", 25.0, &["men", "summer"]),
    ("p8", "red wool scarf", 20.0, &["winter"]),
];

fn write_products(dir: &Path) -> PathBuf {
    let path = dir.join("products.jsonl");
    let mut text: String = PRODUCTS
        .iter()
        .map(|(id, title, price, tags)| {
            json!({"id": id, "title": title, "price": price, "tags": tags}).to_string() + "\n"
        })
        .collect();
    // Bad lines fail alone.
    text.push_str("{not json\n");
    text.push_str("{\"id\": \"p9\", \"price\": 1}\n");
    std::fs::write(&path, text).unwrap();
    path
}

fn ids(hits: &[gclip_search::Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

#[test]
fn ingest_query_filter_page_update_delete_reopen() {
    let dir = scratch("lifecycle");
    let cdir = dir.join("shop");
    let spec = EmbedSpec::parse("title", &[]).unwrap();
    let c = Collection::create(&cdir, identity(), spec.clone()).unwrap();
    let inputs = read_documents(&write_products(&dir), &spec).unwrap();
    assert_eq!(inputs.len(), PRODUCTS.len() + 2);
    let mut commits = Vec::new();
    let report = add_documents(c.store(), &BagOfWords, inputs, 3, &mut |k| {
        commits.push((k.ids.to_vec(), k.generation))
    })
    .unwrap();
    assert_eq!(report.written, PRODUCTS.len());
    assert_eq!(report.failed.len(), 2, "{:?}", report.failed);
    assert!(report
        .failed
        .iter()
        .any(|(_, e)| e.contains("invalid JSON")));
    assert!(report
        .failed
        .iter()
        .any(|(_, e)| e.contains("none of the embedded fields")));
    // Batches of three, each its own commit point with a growing generation.
    assert_eq!(commits.len(), 3);
    assert!(commits.windows(2).all(|w| w[0].1 < w[1].1));
    assert_eq!(c.len(), PRODUCTS.len());

    // The exact title ranks first with cosine 1.
    let hits = c.search(&request(text_query(&c, "red dress"), 3)).unwrap();
    assert_eq!(hits[0].id, "p1");
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(hits[0].fields["price"], json!(40.0));

    // Filters: every hit matches, and all matching documents come back.
    for f in [
        "price < 50",
        "tags:summer AND NOT tags:women",
        "price >= 30 AND price <= 90 OR tags:winter",
    ] {
        let filter = Filter::parse(f).unwrap();
        let mut r = request(text_query(&c, "shirt"), 100);
        r.filter = Some(filter.clone());
        let hits = c.search(&r).unwrap();
        let want = PRODUCTS
            .iter()
            .filter(|(id, title, price, tags)| {
                let mut fields = serde_json::Map::new();
                fields.insert("title".into(), json!(title));
                fields.insert("price".into(), json!(price));
                fields.insert("tags".into(), json!(tags));
                filter.matches(id, &fields)
            })
            .count();
        assert_eq!(hits.len(), want, "{f}");
        assert!(want > 0 && want < PRODUCTS.len(), "{f} should select some");
        for h in &hits {
            assert!(filter.matches(&h.id, &h.fields), "{f}: {}", h.id);
        }
    }

    // Absurd limits and offsets are answered, not a crash.
    let mut r = request(text_query(&c, "dress"), usize::MAX);
    r.offset = usize::MAX;
    assert!(c.search(&r).unwrap().is_empty());
    let mut r = request(text_query(&c, "dress"), usize::MAX / 2);
    assert_eq!(c.search(&r).unwrap().len(), PRODUCTS.len());
    r.text = Some("dress".into());
    r.vector = None;
    assert_eq!(c.search(&r).unwrap().len(), 2);

    // Paging: offset 2, limit 3 is the middle of the full ranking.
    let all = c
        .search(&request(text_query(&c, "summer dress"), 100))
        .unwrap();
    assert_eq!(all.len(), PRODUCTS.len());
    let mut r = request(text_query(&c, "summer dress"), 3);
    r.offset = 2;
    assert_eq!(ids(&c.search(&r).unwrap()), ids(&all[2..5]));

    // A negative part pushes away: "floral" items drop.
    let plain = c.search(&request(text_query(&c, "red dress"), 8)).unwrap();
    let pushed_vec = query_vector(
        &BagOfWords,
        Some(c.store()),
        &[
            QueryPart {
                input: QueryInput::Text("red dress".into()),
                weight: 1.0,
            },
            QueryPart {
                input: QueryInput::Text("floral".into()),
                weight: -0.8,
            },
        ],
    )
    .unwrap();
    let pushed = c.search(&request(pushed_vec, 8)).unwrap();
    let rank = |hits: &[gclip_search::Hit], id: &str| hits.iter().position(|h| h.id == id).unwrap();
    assert!(rank(&pushed, "p2") > rank(&plain, "p2"));
    let score =
        |hits: &[gclip_search::Hit], id: &str| hits.iter().find(|h| h.id == id).unwrap().score;
    assert!(score(&pushed, "p6") < score(&plain, "p6"));

    // More like this: a document's own vector finds it first.
    let like = query_vector(
        &BagOfWords,
        Some(c.store()),
        &[QueryPart::new(QueryInput::Document("p4".into()))],
    )
    .unwrap();
    assert_eq!(c.search(&request(like, 1)).unwrap()[0].id, "p4");

    // Update fields (vector kept), replace a document, delete one.
    let mut f = c.get("p3").unwrap().unwrap().fields;
    f.insert("price".into(), json!(300));
    c.update_fields("p3", f).unwrap();
    assert!(matches!(
        c.update_fields("nope", Default::default()),
        Err(SearchError::NotFound(_))
    ));
    let v = BagOfWords.texts(&["purple velvet hat"]).unwrap().remove(0);
    let mut fields = serde_json::Map::new();
    fields.insert("title".into(), json!("purple velvet hat"));
    c.upsert(vec![NewDocument {
        id: "p8".into(),
        fields,
        vector: v,
        source: None,
    }])
    .unwrap();
    assert_eq!(c.delete(&["p5".into(), "missing".into()]).unwrap().count, 1);
    assert_eq!(c.len(), PRODUCTS.len() - 1);
    drop(c);

    // Reopen: everything as it was left.
    let c = Collection::open(&cdir).unwrap();
    assert_eq!(c.len(), PRODUCTS.len() - 1);
    assert!(c.get("p5").unwrap().is_none());
    assert_eq!(c.get("p3").unwrap().unwrap().fields["price"], json!(300));
    let hits = c
        .search(&request(text_query(&c, "purple velvet hat"), 2))
        .unwrap();
    assert_eq!(hits[0].id, "p8");
    let mut r = request(text_query(&c, "black leather boots"), 20);
    r.filter = Some(Filter::parse("price > 200").unwrap());
    assert_eq!(ids(&c.search(&r).unwrap()), vec!["p3".to_string()]);
    assert!(!ids(&c
        .search(&request(text_query(&c, "black leather boots"), 20))
        .unwrap())
    .contains(&"p5".to_string()));

    // Lexical and hybrid search.
    let lex = c
        .search(&SearchRequest {
            text: Some("wool".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        ids(&lex),
        vec!["p4".to_string()],
        "p8 was replaced by a hat"
    );
    let mut hybrid = request(text_query(&c, "linen shirt"), 3);
    hybrid.text = Some("linen shirt".into());
    let h = c.search(&hybrid).unwrap();
    assert_eq!(h[0].id, "p3");
    assert!(h[0].cosine.is_some() && h[0].bm25.is_some());
    // RRF: first in both lists scores 2 / 61.
    assert!((h[0].score - 2.0 / 61.0).abs() < 1e-6, "{}", h[0].score);
    hybrid.fusion = Fusion::Weighted {
        vector: 0.5,
        lexical: 0.5,
    };
    let h = c.search(&hybrid).unwrap();
    assert_eq!(h[0].id, "p3");
    assert!(h[0].score <= 1.0 + 1e-5 && h[0].score > 0.5);

    // Open in one place at a time; opening with another model is refused; a non-collection is
    // reported as such.
    assert!(Collection::open(&cdir).is_err(), "already open");
    drop(c);
    let other = ModelIdentity {
        model: "other".into(),
        ..identity()
    };
    assert!(matches!(
        Collection::open_or_create(&cdir, Some(other), None),
        Err(SearchError::ModelMismatch { .. })
    ));
    assert!(matches!(
        Collection::open(&dir.join("none")),
        Err(SearchError::NotACollection(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

fn random_docs(n: usize, seed: u64) -> Vec<NewDocument> {
    (0..n)
        .map(|i| {
            let mut fields = serde_json::Map::new();
            fields.insert("n".into(), json!(i));
            fields.insert("group".into(), json!(format!("g{}", i % 20)));
            fields.insert("title".into(), json!(format!("item {i} word{}", i % 7)));
            NewDocument {
                id: format!("d{i}"),
                fields,
                vector: unit(seeded_vector(seed + i as u64, DIM)),
                source: None,
            }
        })
        .collect()
}

fn recall(approx: &[gclip_search::Hit], exact: &[gclip_search::Hit]) -> f32 {
    let e: std::collections::HashSet<&str> = exact.iter().map(|h| h.id.as_str()).collect();
    approx.iter().filter(|h| e.contains(h.id.as_str())).count() as f32 / exact.len().max(1) as f32
}

#[test]
fn hnsw_agrees_with_exact_survives_restarts_and_filters_fill_the_limit() {
    let dir = scratch("ann");
    let cdir = dir.join("c");
    let options = StoreOptions { exact_below: 100 };
    let spec = EmbedSpec::parse("title", &[]).unwrap();
    let c = Collection::create_with(&cdir, identity(), spec, options.clone()).unwrap();
    for chunk in random_docs(2000, 1).chunks(500) {
        c.upsert(chunk.to_vec()).unwrap();
    }
    let queries: Vec<Vec<f32>> = (0..20)
        .map(|q| unit(seeded_vector(900_000 + q, DIM)))
        .collect();
    let check = |c: &Collection, what: &str| {
        let mut total = 0.0;
        for q in &queries {
            let mut r = request(q.clone(), 10);
            r.mode = SearchMode::Ann;
            let approx = c.search(&r).unwrap();
            r.mode = SearchMode::Exact;
            let exact = c.search(&r).unwrap();
            // Scores are exact cosines either way.
            for h in &approx {
                let v = c.vector(&h.id).unwrap().unwrap();
                let cos: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
                assert!((cos - h.score).abs() < 1e-5);
            }
            total += recall(&approx, &exact);
        }
        let mean = total / queries.len() as f32;
        assert!(mean >= 0.9, "{what}: recall@10 {mean}");
    };
    check(&c, "fresh");
    // A selective filter (1 in 20 documents match) still fills the limit, all matching.
    let mut r = request(queries[0].clone(), 50);
    r.filter = Some(Filter::parse("group = g3").unwrap());
    r.mode = SearchMode::Ann;
    let hits = c.search(&r).unwrap();
    assert_eq!(hits.len(), 50);
    assert!(hits.iter().all(|h| h.fields["group"] == json!("g3")));
    r.limit = 500;
    assert_eq!(c.search(&r).unwrap().len(), 100, "every matching document");

    // Auto mode: a selective filter (100 matching ≤ the exact threshold) is answered exactly;
    // a broad one by the graph, still close to exact.
    let mut auto = request(queries[1].clone(), 30);
    auto.filter = Some(Filter::parse("group = g7").unwrap());
    let mut exact = auto.clone();
    exact.mode = SearchMode::Exact;
    assert_eq!(
        ids(&c.search(&auto).unwrap()),
        ids(&c.search(&exact).unwrap())
    );
    auto.filter = Some(Filter::parse("n >= 100").unwrap());
    exact.filter = auto.filter.clone();
    let (a, e) = (c.search(&auto).unwrap(), c.search(&exact).unwrap());
    assert_eq!(a.len(), 30);
    assert!(a.iter().all(|h| h.fields["n"].as_u64().unwrap() >= 100));
    assert!(recall(&a, &e) >= 0.8, "{}", recall(&a, &e));

    c.flush().unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cdir.join("hnsw.json")).unwrap()).unwrap();
    let saved_gen = meta["generation"].as_u64().unwrap();
    assert_eq!(meta["count"], json!(2000));
    // Writes after the save: the saved index is stale and must be caught up on open.
    c.delete(&(0..100).map(|i| format!("d{i}")).collect::<Vec<_>>())
        .unwrap();
    c.upsert(
        random_docs(50, 5_000)
            .into_iter()
            .map(|mut d| {
                d.id = format!("new{}", d.id);
                d
            })
            .collect(),
    )
    .unwrap();
    drop(c);
    let c = Collection::open_with(&cdir, options.clone()).unwrap();
    assert_eq!(c.len(), 1950);
    check(&c, "caught up");
    // Equality filters are answered from the payload index, which follows deletes, upserts,
    // reopening and field updates: Auto gives the exact answer.
    let mut moved = c.get("d500").unwrap().unwrap();
    let old_group = moved.fields["group"].clone();
    moved.fields.insert("group".into(), json!("moved"));
    c.update_fields("d500", moved.fields).unwrap();
    for f in [
        "group = moved",
        "group = g3 OR group = g4",
        "group = g5 AND n >= 1000",
    ] {
        let mut auto = request(queries[2].clone(), 40);
        auto.filter = Some(Filter::parse(f).unwrap());
        let mut exact = auto.clone();
        exact.mode = SearchMode::Exact;
        let (a, e) = (c.search(&auto).unwrap(), c.search(&exact).unwrap());
        assert_eq!(ids(&a), ids(&e), "{f}");
        assert!(!a.is_empty(), "{f}");
    }
    let mut r = request(queries[2].clone(), 2000);
    r.filter = Some(Filter::parse(&format!("group = {old_group}")).unwrap());
    assert!(c.search(&r).unwrap().iter().all(|h| h.id != "d500"));
    r.filter = Some(Filter::parse("group = moved").unwrap());
    assert_eq!(ids(&c.search(&r).unwrap()), vec!["d500".to_string()]);
    let q = &random_docs(50, 5_000)[7].vector;
    let mut r = request(q.clone(), 1);
    r.mode = SearchMode::Ann;
    assert_eq!(c.search(&r).unwrap()[0].id, "newd7");
    let mut r = request(unit(seeded_vector(1 + 5, DIM)), 5);
    r.mode = SearchMode::Ann;
    assert!(
        c.search(&r).unwrap().iter().all(|h| h.id != "d5"),
        "deleted stays deleted"
    );
    c.flush().unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cdir.join("hnsw.json")).unwrap()).unwrap();
    assert!(meta["generation"].as_u64().unwrap() > saved_gen);
    assert_eq!(meta["count"], json!(1950));
    drop(c);

    // Missing or corrupt index files: rebuilt from SQLite.
    std::fs::write(cdir.join("hnsw.usearch"), b"garbage").unwrap();
    std::fs::remove_dir_all(cdir.join("lexical")).unwrap();
    let c = Collection::open_with(&cdir, options).unwrap();
    check(&c, "rebuilt");
    let lex = c
        .search(&SearchRequest {
            text: Some("word3".into()),
            limit: 10_000,
            ..Default::default()
        })
        .unwrap();
    let want = (100..2000).filter(|i| i % 7 == 3).count() + (0..50).filter(|i| i % 7 == 3).count();
    assert_eq!(lex.len(), want);
    let _ = std::fs::remove_dir_all(&dir);
}
