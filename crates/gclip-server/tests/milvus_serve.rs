//! `gclip serve` with a collection on a real Milvus server (started here on free loopback ports,
//! as `gclip-search`'s Milvus tests do), beside an embedded collection with the same model and
//! documents: documents in through the HTTP API, searches answered alike, reads, deletes, and
//! errors that name the address without its token.

use std::path::PathBuf;

use gclip_search::{model_identity, Collection, EmbedSpec};
use gclip_server::ServerConfig;
use serde_json::{json, Value};

mod common;
use common::{call, fixtures, scratch, Running};

#[path = "../../gclip-search/tests/support/milvus_server.rs"]
mod milvus_server;
use milvus_server::Server;

const KEY: &str = "sekret";

fn ids(v: &Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits: {v}"))
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

/// The same search on both collections: the same ids in the same order, scores equal to float
/// rounding, the same fields.
fn assert_same_answer(a: std::net::SocketAddr, body: Value) -> Value {
    let [m, e] = ["shop", "local"].map(|name| {
        let path = format!("/api/collections/{name}/search");
        let (s, v) = call(a, "POST", &path, Some(body.clone()), None);
        assert_eq!(s, 200, "{name} {body}: {v}");
        v
    });
    assert_eq!(ids(&m), ids(&e), "{body}");
    for (hm, he) in m["hits"]
        .as_array()
        .unwrap()
        .iter()
        .zip(e["hits"].as_array().unwrap())
    {
        let (sm, se) = (hm["score"].as_f64().unwrap(), he["score"].as_f64().unwrap());
        assert!((sm - se).abs() < 1e-4, "{body}: {hm} vs {he}");
        assert_eq!(hm["fields"], he["fields"], "{body}");
    }
    m
}

#[test]
fn serve_answers_from_a_milvus_collection_as_from_a_directory() {
    let milvus = Server::shared();
    let address = milvus.address("shop");
    let with_token = format!("{address}?token=root:s3rvesecret");

    let dir = scratch("milvus-serve");
    let m: PathBuf = std::fs::canonicalize(fixtures().join("models/oc-fullvocab")).unwrap();
    let (identity, _) = model_identity(
        m.join("open_clip_model.safetensors").to_str().unwrap(),
        Some(m.join("open_clip_config.json").to_str().unwrap()),
        Default::default(),
    )
    .unwrap();
    let spec = EmbedSpec::parse("title:0.5,image:0.5", &["image".into()]).unwrap();
    let local = dir.join("local");
    drop(Collection::create(&local, identity.clone(), spec.clone()).unwrap());
    drop(Collection::create(std::path::Path::new(&address), identity, spec).unwrap());
    let images = std::fs::canonicalize(fixtures().join("images")).unwrap();
    let config = ServerConfig {
        collections: vec![PathBuf::from(&with_token), local.clone()],
        api_key: Some(KEY.into()),
        files_roots: vec![images.clone(), m.clone()],
        ..Default::default()
    };
    let server = Running::start(config);
    let a = server.addr;

    // Served under its Milvus name, never under the address (which carries the token).
    let (s, v) = call(a, "GET", "/api/collections", None, None);
    assert_eq!(s, 200, "{v}");
    let listed = v.to_string();
    assert!(
        listed.contains("\"shop\"") && listed.contains("\"local\""),
        "{listed}"
    );
    assert!(!listed.contains("s3rvesecret"), "{listed}");

    let docs = json!({"documents": [
        {"id": "cat", "title": "a photo of a cat", "price": 10, "tags": ["pet"]},
        {"id": "dog", "title": "a photo of a dog", "price": 20, "tags": ["pet"]},
        {"id": "car", "title": "a red sports car", "price": 30000, "tags": ["vehicle"]},
        {"id": "moto", "title": "a motorcycle",
         "image": images.join("photo_motorcycle.png").to_str().unwrap(), "price": 9000},
        {"id": "broken", "image": "/nonexistent.png"}
    ]});
    for name in ["shop", "local"] {
        let (s, v) = call(
            a,
            "POST",
            &format!("/api/collections/{name}/documents"),
            Some(docs.clone()),
            Some(KEY),
        );
        assert_eq!(s, 200, "{name}: {v}");
        assert_eq!(v["written"], 4, "{name}: {v}");
        assert_eq!(v["failed"].as_array().unwrap().len(), 1, "{name}: {v}");
    }

    // Searches: text, a filter, a page, weighted parts, more like a document.
    let v = assert_same_answer(a, json!({"q": "a photo of a dog", "limit": 2}));
    assert_eq!(ids(&v)[0], "dog");
    assert_eq!(v["documents"], 4);
    let v = assert_same_answer(
        a,
        json!({"q": "a cat", "filter": "tags:pet AND price > 15"}),
    );
    assert_eq!(ids(&v), ["dog"]);
    assert_same_answer(a, json!({"q": "a cat", "limit": 2, "offset": 2}));
    assert_same_answer(
        a,
        json!({"queries": [{"text": "a car", "weight": 1.0}, {"text": "red", "weight": -0.5}]}),
    );
    let v = assert_same_answer(a, json!({"queries": [{"document": "moto"}], "limit": 4}));
    assert_eq!(ids(&v)[0], "moto");

    // Reads and a delete.
    let (s, v) = call(a, "GET", "/api/collections/shop/documents/cat", None, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["fields"]["title"], "a photo of a cat", "{v}");
    let (s, v) = call(a, "GET", "/api/collections/shop/documents/nope", None, None);
    assert_eq!(s, 404, "{v}");
    let (s, v) = call(
        a,
        "DELETE",
        "/api/collections/shop/documents/car",
        None,
        Some(KEY),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a red sports car", "limit": 10})),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["documents"], 3, "{v}");
    assert!(!ids(&v).contains(&"car".to_string()), "{v}");

    // What Milvus cannot do is a client error naming the address, never the token.
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a cat", "hybrid": true})),
        None,
    );
    assert_eq!(s, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&address) && message.contains("BM25"),
        "{v}"
    );
    assert!(!v.to_string().contains("s3rvesecret"), "{v}");

    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
