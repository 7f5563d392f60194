//! A real server on a loopback port with the fixture model: documents in through the API,
//! text, image and filtered searches, thumbnails only for documents, JSON 4xx for bad input,
//! API key, metrics, restart and query again, graceful shutdown.
//!
//! Each test serves a collection of its own, so that one failure does not hide the others.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use gclip_search::{model_identity, Collection, EmbedSpec};
use gclip_server::ServerConfig;

mod common;
use common::{call, fixtures, request, scratch, Running};
use serde_json::{json, Value};

fn b64(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

/// A collection `shop` (title and image embedded) in a scratch folder of its own, and the
/// configuration that serves it: API key `sekret`, `--root` for collections created through the
/// API, the fixture images and model as files roots.
struct Shop {
    dir: PathBuf,
    /// The fixture model's folder.
    m: PathBuf,
    images: PathBuf,
    coll: PathBuf,
    config: ServerConfig,
}

fn shop(name: &str) -> Shop {
    let dir = scratch(name);
    let m = std::fs::canonicalize(fixtures().join("models/oc-fullvocab")).unwrap();
    let (identity, _) = model_identity(
        m.join("open_clip_model.safetensors").to_str().unwrap(),
        Some(m.join("open_clip_config.json").to_str().unwrap()),
        Default::default(),
    )
    .unwrap();
    let coll = dir.join("shop");
    let spec = EmbedSpec::parse("title:0.5,image:0.5", &["image".into()]).unwrap();
    drop(Collection::create(&coll, identity, spec).unwrap());
    let images = std::fs::canonicalize(fixtures().join("images")).unwrap();
    let config = ServerConfig {
        collections: vec![coll.clone()],
        root: Some(dir.join("root")),
        api_key: Some("sekret".into()),
        files_roots: vec![images.clone(), m.clone()],
        ..Default::default()
    };
    Shop {
        dir,
        m,
        images,
        coll,
        config,
    }
}

/// Four documents that are written and two that fail alone (an image that does not exist, a
/// value that is not an object).
fn documents(images: &Path) -> Value {
    json!({"documents": [
        {"id": "cat", "title": "a photo of a cat", "price": 10, "tags": ["pet"]},
        {"id": "dog", "title": "a photo of a dog", "price": 20, "tags": ["pet"]},
        {"id": "car", "title": "a red sports car", "price": 30000, "tags": ["vehicle"]},
        {"id": "moto", "title": "a motorcycle", "image": images.join("photo_motorcycle.png").to_str().unwrap(), "price": 9000},
        {"id": "broken", "image": "/nonexistent.png"},
        "not an object"
    ]})
}

/// `shop` served, its documents written through the API.
fn serving_shop(name: &str) -> (Shop, Running) {
    let shop = shop(name);
    let server = Running::start(shop.config.clone());
    let (s, v) = call(
        server.addr,
        "POST",
        "/api/collections/shop/documents",
        Some(documents(&shop.images)),
        Some("sekret"),
    );
    assert_eq!(s, 200, "writing the documents: {v}");
    (shop, server)
}

#[test]
fn writes_need_the_key_and_bad_documents_fail_alone() {
    let Shop {
        dir,
        images,
        config,
        ..
    } = shop("api-writes");
    let server = Running::start(config);
    let a = server.addr;
    let (s, v) = call(a, "GET", "/api/health", None, None);
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let docs = documents(&images);
    // Writes need the key.
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/shop/documents",
        Some(docs.clone()),
        None,
    );
    assert_eq!(s, 401, "{v}");
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/shop/documents",
        Some(docs),
        Some("sekret"),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["written"], 4);
    assert_eq!(v["failed"].as_array().unwrap().len(), 2);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn searches_by_text_image_filter_parts_and_words() {
    let (Shop { dir, images, .. }, server) = serving_shop("api-search");
    let a = server.addr;
    // Text search: the exact title first.
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a photo of a dog", "limit": 2})),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["hits"][0]["id"], "dog");
    assert_eq!(v["hits"].as_array().unwrap().len(), 2);
    // Image search by bytes; the document combines title and image, so it leads without being 1.
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(
            json!({"image": format!("data:image/png;base64,{}", b64(&images.join("photo_motorcycle.png"))), "limit": 1}),
        ),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["hits"][0]["id"], "moto");
    assert!(v["hits"][0]["image"]
        .as_str()
        .unwrap()
        .ends_with("photo_motorcycle.png"));
    // Filters and paging.
    let (_, v) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a cat", "filter": "tags:pet AND price > 15"})),
        None,
    );
    let ids: Vec<&str> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["dog"]);
    let (_, all) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a cat", "limit": 4})),
        None,
    );
    let (_, page) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a cat", "limit": 2, "offset": 2})),
        None,
    );
    assert_eq!(page["hits"][0]["id"], all["hits"][2]["id"]);
    assert_eq!(page["hits"][1]["id"], all["hits"][3]["id"]);
    // Weighted parts with a negative weight, and more-like-this.
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(
            json!({"queries": [{"text": "a photo of a cat", "weight": 1.0}, {"document": "dog", "weight": -0.5}], "limit": 4}),
        ),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["hits"][0]["id"], "cat");
    assert_ne!(v["hits"][1]["id"], "dog");
    // Hybrid and lexical.
    let (_, v) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "sports car", "lexical": true})),
        None,
    );
    assert_eq!(v["hits"].as_array().unwrap().len(), 1);
    let (_, v) = call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "red sports car", "hybrid": true, "limit": 3})),
        None,
    );
    assert_eq!(v["hits"][0]["id"], "car");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_a_json_4xx_never_a_500() {
    let (Shop { dir, .. }, server) = serving_shop("api-bad-input");
    let a = server.addr;
    // Bad input is a JSON 4xx, never a 500.
    let bad: Vec<(&str, &str, Option<&[u8]>, u16)> = vec![
        (
            "POST",
            "/api/collections/shop/search",
            Some(b"{not json"),
            400,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"q": 5}"#),
            422,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"q": "x", "filter": "price >"}"#),
            400,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"q": "x", "limit": 0}"#),
            400,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"q": "x", "limit": 100000}"#),
            400,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"image": "!!!"}"#),
            400,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"image": "aGVsbG8="}"#),
            400,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"queries": [{"text": "a", "image": "b"}]}"#),
            400,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"queries": [{"vector": [1, 2]}]}"#),
            400,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"queries": [{"document": "nope"}]}"#),
            404,
        ),
        (
            "POST",
            "/api/collections/shop/search",
            Some(br#"{"unknown": 1}"#),
            422,
        ),
        ("POST", "/api/collections/shop/search", Some(br#"{}"#), 400),
        (
            "POST",
            "/api/collections/nope/search",
            Some(br#"{"q": "x"}"#),
            404,
        ),
        ("GET", "/api/collections/nope", None, 404),
        ("GET", "/api/collections/shop/documents/nope", None, 404),
        ("GET", "/api/no/such/route", None, 404),
        ("POST", "/api/embed", Some(br#"{"texts": []}"#), 400),
        (
            "POST",
            "/api/classify",
            Some(br#"{"labels": ["a"], "text": "x", "image": "y"}"#),
            400,
        ),
    ];
    for (method, path, body, want) in bad {
        let (status, ctype, b) = request(a, method, path, body, &[]);
        assert_eq!(
            status,
            want,
            "{method} {path} {:?}: {}",
            body.map(String::from_utf8_lossy),
            String::from_utf8_lossy(&b)
        );
        assert!(ctype.starts_with("application/json"), "{path}: {ctype}");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    server.stop();
    // A body over the limit is refused. Straight into the router of a server with the default
    // limit: over a socket, the server may close the connection while the client is still
    // writing the rest of the body, and the client then sees a broken pipe, not the answer.
    let huge = format!("{{\"q\": \"{}\"}}", "a".repeat(17 * 1024 * 1024));
    let app = gclip_server::router(gclip_server::AppState::new(ServerConfig::default()).unwrap());
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(tower::ServiceExt::oneshot(
            app,
            axum::http::Request::post("/api/collections/shop/search")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(huge))
                .unwrap(),
        ))
        .unwrap();
    assert_eq!(answer.status(), 413);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn thumbnails_only_for_documents_images() {
    let (Shop { dir, .. }, server) = serving_shop("api-thumbnails");
    let a = server.addr;
    // Thumbnails: a PNG for a document's image; nothing for others or for paths.
    let (s, ctype, png) = request(
        a,
        "GET",
        "/api/collections/shop/documents/moto/thumbnail?size=64",
        None,
        &[],
    );
    assert_eq!((s, ctype.as_str()), (200, "image/png"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes([png[16], png[17], png[18], png[19]]), 64);
    for path in [
        "/api/collections/shop/documents/cat/thumbnail",
        "/api/collections/shop/documents/..%2F..%2Fetc%2Fpasswd/thumbnail",
        "/api/collections/shop/documents/%2Fetc%2Fpasswd/thumbnail",
    ] {
        let (s, _, _) = request(a, "GET", path, None, &[]);
        assert_eq!(s, 404, "{path}");
    }
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn embed_and_classify() {
    let (Shop { dir, .. }, server) = serving_shop("api-embed");
    let a = server.addr;
    // Embed and classify.
    let (s, v) = call(
        a,
        "POST",
        "/api/embed",
        Some(json!({"texts": ["a cat", "a dog"]})),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(v["dim"], 16);
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 2);
    let (s, v) = call(
        a,
        "POST",
        "/api/classify",
        Some(json!({"labels": ["cat", "dog"], "text": "a photo of a cat."})),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["labels"][0]["label"], "cat");
    let p: f64 = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["probability"].as_f64().unwrap())
        .sum();
    assert!((p - 1.0).abs() < 1e-4);
    // `cosine` is the cosine (as in `gclip classify --json`), not a second probability.
    let labels = v["labels"].as_array().unwrap();
    assert!(labels
        .iter()
        .all(|l| l["cosine"].as_f64().unwrap().abs() <= 1.0 + 1e-5));
    assert!(labels.iter().all(|l| l.get("score").is_none()), "{v}");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn collections_are_created_under_the_root_listed_and_deleted() {
    let (Shop { dir, m, .. }, server) = serving_shop("api-collections");
    let a = server.addr;
    // Collections: create under --root, list, delete (removes only its files).
    let (s, v) = call(
        a,
        "POST",
        "/api/collections",
        Some(
            json!({"name": "made", "model": m.join("open_clip_model.safetensors"), "arch": m.join("open_clip_config.json"), "embed": "title"}),
        ),
        Some("sekret"),
    );
    assert_eq!(s, 201, "{v}");
    let (s, _) = call(
        a,
        "POST",
        "/api/collections",
        Some(json!({"name": "../evil", "model": "x"})),
        Some("sekret"),
    );
    assert_eq!(s, 400);
    let (_, v) = call(a, "GET", "/api/collections", None, None);
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(dir.join("root/made/collection.sqlite3").exists());
    // Two collections served: embedding and classifying must name whose model to use.
    for (path, body) in [
        ("/api/embed", json!({"texts": ["a cat"]})),
        ("/api/classify", json!({"labels": ["cat"], "text": "a cat"})),
    ] {
        let (s, v) = call(a, "POST", path, Some(body.clone()), None);
        assert_eq!(s, 400, "{path}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("2 collections are served (\"made\", \"shop\")")
                && message.contains("\"collection\""),
            "{message}"
        );
        let mut named = body;
        named["collection"] = json!("shop");
        let (s, v) = call(a, "POST", path, Some(named), None);
        assert_eq!(s, 200, "{path}: {v}");
    }
    let (s, v) = call(a, "DELETE", "/api/collections/made", None, Some("sekret"));
    assert_eq!((s, v["files_removed"].as_bool()), (200, Some(true)));
    assert!(!dir.join("root/made").exists());
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deletes_metrics_openapi_and_the_page() {
    let (Shop { dir, coll, .. }, server) = serving_shop("api-metrics");
    let a = server.addr;
    // A search answered, for the metrics below.
    call(
        a,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a cat"})),
        None,
    );
    // Delete a document; metrics count what happened; the OpenAPI document parses.
    let (s, _) = call(
        a,
        "DELETE",
        "/api/collections/shop/documents/car",
        None,
        Some("sekret"),
    );
    assert_eq!(s, 200);
    let (s, _) = call(
        a,
        "DELETE",
        "/api/collections/shop/documents/car",
        None,
        Some("sekret"),
    );
    assert_eq!(s, 404);
    let (s, ctype, text) = request(a, "GET", "/metrics", None, &[]);
    let text = String::from_utf8(text).unwrap();
    assert_eq!(s, 200);
    assert!(
        ctype.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ctype}"
    );
    check_exposition(&text);
    assert!(
        text.contains(
            "gclip_http_requests_total{route=\"/api/collections/{name}/search\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("gclip_collection_documents{collection=\"shop\"} 3"),
        "{text}"
    );
    assert!(text.contains("gclip_documents_written_total 4"));
    let (_, v) = call(a, "GET", "/api/openapi.json", None, None);
    assert_eq!(v["openapi"], "3.1.0");
    assert!(v["paths"]["/api/collections/{name}/search"]["post"].is_object());
    let label_score = &v["components"]["schemas"]["LabelScore"]["properties"];
    assert!(label_score["probability"].is_object() && label_score["cosine"].is_object());
    let (s, ctype, page) = request(a, "GET", "/", None, &[]);
    assert_eq!(s, 200);
    assert!(ctype.starts_with("text/html"));
    assert!(String::from_utf8_lossy(&page).contains("id=\"drop\""));
    // While a server has the collection open, no other process or store may open it.
    assert!(Collection::open(&coll).is_err());
    server.stop();
    assert!(coll.join("lexical").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checks what Prometheus's parsers check of a text exposition: every line a `# HELP`, a
/// `# TYPE` or a sample `NAME{KEY="VALUE",…} NUMBER` whose family (NAME less `_total` for a
/// counter, less `_bucket`/`_sum`/`_count` for a histogram) was typed before it; `# EOF` last.
fn check_exposition(text: &str) {
    let mut types = std::collections::HashMap::new();
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{line}: typed twice"
            );
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP ") || line == "# EOF", "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "{line}: value");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}: name"
        );
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            check_labels(labels).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        let typed = |family: Option<&str>, kind: &str| {
            family.is_some_and(|f| types.get(f).is_some_and(|k| k == kind))
        };
        assert!(
            typed(Some(name), "gauge")
                || typed(name.strip_suffix("_total"), "counter")
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| typed(name.strip_suffix(s), "histogram")),
            "{line}: no # TYPE for its family before it"
        );
    }
}

/// `{KEY="VALUE",…}` with the text format's escapes in values.
fn check_labels(labels: &str) -> Result<(), String> {
    let inner = labels
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .ok_or("labels not in braces")?;
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("label name {key:?}"));
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("label {key}: no =\""));
        }
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => {
                    if !matches!(chars.next(), Some('\\' | '"' | 'n')) {
                        return Err(format!("label {key}: bad escape"));
                    }
                }
                Some('\n') | None => return Err(format!("label {key}: unterminated")),
                Some(_) => {}
            }
        }
        match chars.next() {
            Some(',') | None => {}
            Some(c) => return Err(format!("label {key}: {c:?} after the value")),
        }
    }
    Ok(())
}

#[test]
fn a_server_that_protects_reads_needs_the_key_for_them() {
    let (Shop { dir, config, .. }, server) = serving_shop("api-guarded");
    // The collection is open in one server at a time.
    server.stop();
    // A server that protects reads: searches and thumbnails need the key (header or ?key=).
    let guarded = Running::start(ServerConfig {
        protect_reads: true,
        ..config.clone()
    });
    let g = guarded.addr;
    let (s, _) = call(
        g,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a cat"})),
        None,
    );
    assert_eq!(s, 401);
    let (s, _) = call(
        g,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a cat"})),
        Some("sekret"),
    );
    assert_eq!(s, 200);
    let (s, _, _) = request(
        g,
        "GET",
        "/api/collections/shop/documents/moto/thumbnail",
        None,
        &[],
    );
    assert_eq!(s, 401);
    let (s, _, _) = request(
        g,
        "GET",
        "/api/collections/shop/documents/moto/thumbnail?size=32&key=wrong",
        None,
        &[],
    );
    assert_eq!(s, 401);
    let (s, _, _) = request(
        g,
        "GET",
        "/api/collections/shop/documents/moto/thumbnail?size=32&key=sekret",
        None,
        &[],
    );
    assert_eq!(s, 200);
    let (s, _) = call(g, "GET", "/api/health", None, None);
    assert_eq!(s, 200, "health stays open");
    guarded.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restarted_server_answers_from_disk() {
    let (Shop { dir, config, .. }, server) = serving_shop("api-restart");
    let a = server.addr;
    // The documents as the end-to-end run leaves them: car deleted.
    call(
        a,
        "DELETE",
        "/api/collections/shop/documents/car",
        None,
        Some("sekret"),
    );
    server.stop();
    // Restart: the same answers from disk.
    let server = Running::start(config);
    let (s, v) = call(
        server.addr,
        "POST",
        "/api/collections/shop/search",
        Some(json!({"q": "a photo of a dog", "limit": 10})),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(v["hits"][0]["id"], "dog");
    assert_eq!(v["documents"], 3);
    assert!(v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["id"] != "car"));
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
