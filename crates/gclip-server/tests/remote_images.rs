//! Images given by URL, served by a small HTTP host on a loopback port: documents whose image
//! is a URL are fetched once, cached, embedded like the same file on disk and shown as
//! thumbnails; a missing image or an unreachable host fails its document alone, naming the URL;
//! queries by image URL. Also the PATCH endpoint (fields set and removed, re-embedding only
//! when an embedded field changed).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use gclip_search::remote::{RemoteConfig, RemoteImages};
use gclip_search::{model_identity, Collection, EmbedSpec};
use gclip_server::ServerConfig;
use serde_json::json;

mod common;
use common::{call, fixtures, request, scratch, Running};

/// Serves `files` by path (404 otherwise) and counts the requests for each path.
struct ImageHost {
    addr: SocketAddr,
    hits: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

impl ImageHost {
    fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // The rest of the head.
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                *counted.lock().unwrap().entry(path.clone()).or_default() += 1;
                let (status, body) = match files.get(&path) {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", b"no such image".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Self { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn image_urls_are_fetched_cached_and_embedded_and_documents_patch() {
    let dir = scratch("urls");
    let cache = dir.join("image-cache");
    // The server's fetching as `gclip serve --allow-url-fetch --url-allow-private` sets it up
    // (the image host is on loopback).
    assert!(RemoteImages::init_shared(RemoteConfig {
        cache_dir: cache.clone(),
        max_bytes: 10_000_000,
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(20),
        parallel: 4,
        ..gclip_server::client_url_fetching(true, Vec::new(), true)
    }));
    let images = std::fs::canonicalize(fixtures().join("images")).unwrap();
    let moto = std::fs::read(images.join("photo_motorcycle.png")).unwrap();
    let host = ImageHost::start(HashMap::from([
        ("/moto.png".to_string(), moto.clone()),
        ("/not-an-image.png".to_string(), b"hello".to_vec()),
    ]));
    let m = fixtures().join("models/oc-fullvocab");
    let (identity, _) = model_identity(
        m.join("open_clip_model.safetensors").to_str().unwrap(),
        Some(m.join("open_clip_config.json").to_str().unwrap()),
        Default::default(),
    )
    .unwrap();
    let coll = dir.join("pics");
    let spec = EmbedSpec::parse("image", &["image".into()]).unwrap();
    drop(Collection::create(&coll, identity, spec).unwrap());
    let server = Running::start(ServerConfig {
        collections: vec![coll.clone()],
        files_roots: vec![images.clone()],
        ..Default::default()
    });
    let a = server.addr;

    let dead_host = format!("127.0.0.1:{}", closed_port());
    let dead = format!("http://{dead_host}/x.png");
    let started = std::time::Instant::now();
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/pics/documents",
        Some(json!({"documents": [
            {"id": "remote", "image": host.url("/moto.png"), "title": "old"},
            {"id": "local", "image": images.join("photo_motorcycle.png").to_str().unwrap()},
            {"id": "astro", "image": images.join("photo_astronaut.png").to_str().unwrap()},
            {"id": "missing", "image": host.url("/gone.png")},
            {"id": "garbage", "image": host.url("/not-an-image.png")},
            {"id": "dead", "image": dead},
        ]})),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["written"], 3, "{v}");
    // An unreachable host fails at once, not after a timeout.
    assert!(started.elapsed() < Duration::from_secs(15));
    let failed = v["failed"].as_array().unwrap();
    let error_of = |i: usize| {
        failed
            .iter()
            .find(|f| f["index"] == i)
            .unwrap_or_else(|| panic!("document {i} did not fail: {v}"))["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // A missing image and a closed port get the same answer: clients cannot probe the network.
    let e = error_of(3);
    assert!(e.contains("/gone.png: could not be fetched"), "{e}");
    let e = error_of(4);
    assert!(
        e.contains("/not-an-image.png") && e.contains("not a recognised image"),
        "{e}"
    );
    let e = error_of(5);
    assert!(e.contains("/x.png: could not be fetched"), "{e}");
    assert_eq!(
        error_of(3)
            .replace("/gone.png", "URL")
            .replace(&host.addr.to_string(), "HOST"),
        error_of(5)
            .replace("/x.png", "URL")
            .replace(&dead_host, "HOST"),
    );

    // The fetched copy is the image: the URL document and the file document have one vector.
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/pics/search",
        Some(json!({"queries": [{"document": "local"}], "limit": 3})),
        None,
    );
    assert_eq!(s, 200, "{v}");
    let score_of = |id: &str| {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == id)
            .unwrap()["score"]
            .as_f64()
            .unwrap()
    };
    assert!(score_of("remote") > 0.9999, "{v}");
    assert!(score_of("astro") < 0.99, "{v}");
    // The hit shows the URL, as given.
    let (_, v) = call(
        a,
        "POST",
        "/api/collections/pics/search",
        Some(json!({"image_url": host.url("/moto.png"), "limit": 1, "exact": true})),
        None,
    );
    assert!(["remote", "local"].contains(&v["hits"][0]["id"].as_str().unwrap()));
    assert!(v["hits"][0]["score"].as_f64().unwrap() > 0.9999, "{v}");
    // Query by image URL as a weighted part; non-URLs are refused (no reading server files).
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/pics/search",
        Some(json!({"queries": [{"image_url": host.url("/moto.png"), "weight": 1.0}]})),
        None,
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/pics/search",
        Some(json!({"image_url": "/etc/passwd"})),
        None,
    );
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/pics/search",
        Some(json!({"image_url": host.url("/gone.png")})),
        None,
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be fetched"),
        "{v}"
    );
    // Thumbnails of URL documents come from the cache.
    let (s, ctype, png) = request(
        a,
        "GET",
        "/api/collections/pics/documents/remote/thumbnail?size=32",
        None,
        &[],
    );
    assert_eq!((s, ctype.as_str()), (200, "image/png"));
    assert_eq!(&png[1..4], b"PNG");
    // One download for the document, the query (twice) and the thumbnail.
    assert_eq!(host.hits("/moto.png"), 1);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);

    // PATCH: a field that is not embedded changes without a new vector; null removes a field.
    let (s, v) = call(
        a,
        "PATCH",
        "/api/collections/pics/documents/remote",
        Some(json!({"title": "new", "price": 5})),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["reembedded"], false);
    let (_, d) = call(
        a,
        "GET",
        "/api/collections/pics/documents/remote",
        None,
        None,
    );
    assert_eq!(d["fields"]["title"], "new");
    assert_eq!(d["fields"]["price"], 5);
    assert_eq!(d["fields"]["image"], host.url("/moto.png"));
    let (_, v) = call(
        a,
        "PATCH",
        "/api/collections/pics/documents/remote",
        Some(json!({"price": null})),
        None,
    );
    assert_eq!(v["reembedded"], false);
    let (_, d) = call(
        a,
        "GET",
        "/api/collections/pics/documents/remote",
        None,
        None,
    );
    assert!(d["fields"].get("price").is_none(), "{d}");
    // A new image: embedded again, now the astronaut's twin.
    let (s, v) = call(
        a,
        "PATCH",
        "/api/collections/pics/documents/remote",
        Some(json!({"image": images.join("photo_astronaut.png").to_str().unwrap()})),
        None,
    );
    assert_eq!((s, v["reembedded"].as_bool()), (200, Some(true)), "{v}");
    let (_, v) = call(
        a,
        "POST",
        "/api/collections/pics/search",
        Some(json!({"queries": [{"document": "astro"}], "limit": 2, "exact": true})),
        None,
    );
    let top: Vec<&str> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert!(top.contains(&"remote") && top.contains(&"astro"), "{v}");
    // Errors: unknown document, a new id, not an object, an image that cannot be embedded
    // (the document keeps its old fields).
    let (s, _) = call(
        a,
        "PATCH",
        "/api/collections/pics/documents/nobody",
        Some(json!({"title": "x"})),
        None,
    );
    assert_eq!(s, 404);
    let (s, v) = call(
        a,
        "PATCH",
        "/api/collections/pics/documents/remote",
        Some(json!({"id": "other"})),
        None,
    );
    assert_eq!(s, 400, "{v}");
    let (s, _) = call(
        a,
        "PATCH",
        "/api/collections/pics/documents/remote",
        Some(json!([1, 2])),
        None,
    );
    assert!((400..500).contains(&s));
    let (s, v) = call(
        a,
        "PATCH",
        "/api/collections/pics/documents/remote",
        Some(json!({"image": host.url("/gone.png")})),
        None,
    );
    assert_eq!(s, 400, "{v}");
    let (_, d) = call(
        a,
        "GET",
        "/api/collections/pics/documents/remote",
        None,
        None,
    );
    assert!(d["fields"]["image"]
        .as_str()
        .unwrap()
        .ends_with("photo_astronaut.png"));
    server.stop();

    // Offline, cached images still work and the others fail at once.
    // A server that does not fetch (the default) still uses cached images; the others fail at
    // once, without telling clients where the cache is.
    let offline = RemoteImages::new(RemoteConfig {
        cache_dir: cache.clone(),
        ..gclip_server::client_url_fetching(false, Vec::new(), false)
    });
    assert!(offline.fetch(&host.url("/moto.png")).is_ok());
    let e = offline.fetch(&host.url("/other.png")).unwrap_err();
    assert!(e.contains("--allow-url-fetch"), "{e}");
    assert!(!e.contains(cache.to_str().unwrap()), "{e}");
    assert_eq!(host.hits("/other.png"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
