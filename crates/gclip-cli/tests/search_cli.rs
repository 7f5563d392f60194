//! `gclip index`, `add`, `update`, `delete` and `search` end to end with a real model and a
//! real collection directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-search-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gclip(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(args)
        // bf16/int8 conversions go to a scratch cache, not the user's.
        .env(
            "GCLIP_CONVERTED_CACHE",
            std::env::temp_dir().join(format!("gclip-search-{}-converted", std::process::id())),
        )
        .output()
        .expect("gclip runs")
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn model_args() -> Vec<String> {
    let dir = fixtures().join("models/oc-fullvocab");
    vec![
        "--model".into(),
        dir.join("open_clip_model.safetensors")
            .display()
            .to_string(),
        "--arch".into(),
        dir.join("open_clip_config.json").display().to_string(),
    ]
}

fn json(o: &std::process::Output) -> Value {
    serde_json::from_str(&ok(o)).expect("JSON on stdout")
}

#[test]
fn index_folder_incrementally_and_search_by_image() {
    let dir = scratch("index");
    let images = dir.join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    let names = [
        "clipart_0.png",
        "clipart_1.png",
        "photo_motorcycle.png",
        "jpeg_420_q85.jpg",
    ];
    for (i, n) in names.iter().enumerate() {
        let to = if i % 2 == 0 {
            images.join(n)
        } else {
            images.join("sub").join(n)
        };
        std::fs::copy(fixtures().join("images").join(n), to).unwrap();
    }
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    let coll = dir.join("coll");
    let (i, c) = (images.to_str().unwrap(), coll.to_str().unwrap());
    let mut args = vec!["index", i, "--collection", c, "--json"];
    let m = model_args();
    args.extend(m.iter().map(String::as_str));
    let first = gclip(&args);
    assert!(
        !first.status.success(),
        "a broken image makes the exit code non-zero"
    );
    let report: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["written"], 4);
    assert_eq!(report["failed"].as_array().unwrap().len(), 1);
    // The folder is recorded, so that a server may show these images.
    assert_eq!(
        gclip_search::roots::recorded_roots(&coll).unwrap(),
        vec![std::fs::canonicalize(&images).unwrap()]
    );
    std::fs::remove_file(images.join("broken.png")).unwrap();

    // Again: nothing to do. The model is remembered.
    let again = json(&gclip(&["index", i, "--collection", c, "--json"]));
    assert_eq!(
        (again["written"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(4))
    );

    // Same content, new mtime: touched, not re-embedded. New content: re-embedded.
    let moto = images.join("photo_motorcycle.png");
    let f = std::fs::File::options().write(true).open(&moto).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    std::fs::copy(
        fixtures().join("images/clipart_2.png"),
        images.join("clipart_0.png"),
    )
    .unwrap();
    let r = json(&gclip(&["index", i, "--collection", c, "--json"]));
    assert_eq!(
        (
            r["written"].as_u64(),
            r["touched"].as_u64(),
            r["unchanged"].as_u64()
        ),
        (Some(1), Some(1), Some(2))
    );

    // A query image finds itself first with cosine 1, and the table shows image paths.
    let hits = json(&gclip(&[
        "search",
        c,
        "--image",
        moto.to_str().unwrap(),
        "--json",
        "--limit",
        "2",
    ]));
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 2);
    let want = std::fs::canonicalize(&moto).unwrap().display().to_string();
    assert_eq!(hits[0]["id"], Value::String(want.clone()));
    assert_eq!(hits[0]["image"], Value::String(want));
    assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    assert!(hits[0]["score"].as_f64() >= hits[1]["score"].as_f64());
    // The same image by URL (fetched into the image cache) finds the same document; a missing
    // one fails naming the URL.
    let port = serve_files(vec![("/moto.png".into(), std::fs::read(&moto).unwrap())]);
    let cache = dir.join("image-cache");
    let by_url = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_gclip"))
            .args(["search", c, "--image", url, "--json", "--limit", "1"])
            .env("GCLIP_IMAGE_CACHE", &cache)
            .output()
            .unwrap()
    };
    let url_hits = json(&by_url(&format!("http://127.0.0.1:{port}/moto.png")));
    assert_eq!(url_hits[0]["id"], hits[0]["id"]);
    assert!((url_hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let missing = by_url(&format!("http://127.0.0.1:{port}/gone.png"));
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/gone.png") && err.contains("404"), "{err}");
    let table = ok(&gclip(&[
        "search",
        c,
        "a motorcycle",
        "--limit",
        "4",
        "--filter",
        "folder = sub",
    ]));
    assert_eq!(
        table.lines().count(),
        3,
        "header + the 2 files under sub/:\n{table}"
    );
    assert!(
        table.lines().skip(1).all(|l| l.contains("/sub/")),
        "{table}"
    );

    // Vanished files are removed only with --prune.
    std::fs::remove_file(images.join("sub/clipart_1.png")).unwrap();
    let r = json(&gclip(&["index", i, "--collection", c, "--json"]));
    assert_eq!(r["removed"], 0);
    let r = json(&gclip(&[
        "index",
        i,
        "--collection",
        c,
        "--json",
        "--prune",
    ]));
    assert_eq!(r["removed"], 1);
    let all = json(&gclip(&["search", c, "x", "--json", "--limit", "100"]));
    assert_eq!(all.as_array().unwrap().len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn add_documents_search_text_update_delete() {
    let dir = scratch("add");
    let docs = dir.join("docs.jsonl");
    let titles = [
        "a photo of a cat",
        "a photo of a dog",
        "a red sports car",
        "a bowl of soup",
    ];
    let mut text = String::new();
    for (k, t) in titles.iter().enumerate() {
        text += &serde_json::json!({"id": format!("d{k}"), "title": t, "price": k * 10, "tags": if k < 2 {vec!["pet"]} else {vec!["thing"]}}).to_string();
        text.push('\n');
    }
    text += "{\"id\": \"img\", \"title\": \"a picture\", \"image\": \"images/clipart_1.png\"}\n";
    std::fs::write(&docs, text).unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::copy(
        fixtures().join("images/clipart_1.png"),
        dir.join("images/clipart_1.png"),
    )
    .unwrap();
    let coll = dir.join("coll");
    let c = coll.to_str().unwrap();
    let mut args = vec![
        "add",
        c,
        docs.to_str().unwrap(),
        "--embed",
        "title:0.5,image:0.5",
        "--batch-size",
        "2",
        "--print-commits",
    ];
    let m = model_args();
    args.extend(m.iter().map(String::as_str));
    let out = ok(&gclip(&args));
    let commits: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("committed "))
        .collect();
    assert_eq!(
        commits,
        vec!["committed 2 d1", "committed 2 d3", "committed 1 img"]
    );

    for (k, t) in titles.iter().enumerate() {
        let hits = json(&gclip(&["search", c, t, "--json", "--limit", "1"]));
        assert_eq!(hits[0]["id"], format!("d{k}"), "{t}");
        assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    }
    // The image document's relative path was resolved against the list's folder.
    let hits = json(&gclip(&[
        "search",
        c,
        "--image",
        dir.join("images/clipart_1.png").to_str().unwrap(),
        "--json",
        "--limit",
        "1",
    ]));
    assert_eq!(hits[0]["id"], "img");
    assert!(Path::new(hits[0]["image"].as_str().unwrap()).is_absolute());

    let hits = json(&gclip(&[
        "search",
        c,
        "a photo of a cat",
        "--json",
        "--filter",
        "tags:thing AND price >= 30",
    ]));
    assert_eq!(hits.as_array().unwrap().len(), 1);
    assert_eq!(hits[0]["id"], "d3");
    let bad = gclip(&["search", c, "cat", "--filter", "price >"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad filter"));

    // Update: a plain field keeps the vector; the embedded field re-embeds.
    ok(&gclip(&["update", c, "d0", "--set", "{\"price\": 99}"]));
    let hits = json(&gclip(&[
        "search",
        c,
        "a photo of a cat",
        "--json",
        "--limit",
        "1",
        "--filter",
        "price = 99",
    ]));
    assert_eq!(hits[0]["id"], "d0");
    assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    ok(&gclip(&[
        "update",
        c,
        "d0",
        "--set",
        "{\"title\": \"a wooden chair\"}",
    ]));
    let hits = json(&gclip(&[
        "search",
        c,
        "a wooden chair",
        "--json",
        "--limit",
        "1",
    ]));
    assert_eq!(hits[0]["id"], "d0");
    assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);

    ok(&gclip(&["delete", c, "d1", "nope"]));
    let hits = json(&gclip(&[
        "search",
        c,
        "a photo of a dog",
        "--json",
        "--limit",
        "10",
    ]));
    assert_eq!(hits.as_array().unwrap().len(), 4);
    assert!(hits.as_array().unwrap().iter().all(|h| h["id"] != "d1"));
    // Lexical search needs no model run; hybrid reports both scores.
    let hits = json(&gclip(&["search", c, "soup", "--lexical", "--json"]));
    assert_eq!(hits.as_array().unwrap().len(), 1);
    assert_eq!(hits[0]["id"], "d3");
    let hits = json(&gclip(&[
        "search",
        c,
        "bowl of soup",
        "--hybrid",
        "--json",
        "--limit",
        "2",
    ]));
    assert_eq!(hits[0]["id"], "d3");
    assert!(hits[0]["cosine"].is_number() && hits[0]["bm25"].is_number());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `gclip embed image` takes http(s) URLs as `search --image` and `add` do (fetched into the
/// image cache, from a loopback server started here): the same vector as the file; a URL that
/// cannot be fetched fails alone, named.
#[test]
fn embed_image_takes_urls_like_search_and_add() {
    let dir = scratch("embed-url");
    let photo = fixtures().join("images/photo_motorcycle.png");
    let port = serve_files(vec![("/moto.png".into(), std::fs::read(&photo).unwrap())]);
    let (good, gone) = (
        format!("http://127.0.0.1:{port}/moto.png"),
        format!("http://127.0.0.1:{port}/gone.png"),
    );
    let out = dir.join("out.jsonl");
    let mut args = vec![
        "embed".to_string(),
        "image".into(),
        photo.display().to_string(),
        good.clone(),
        gone.clone(),
        "--output".into(),
        out.display().to_string(),
    ];
    args.extend(model_args());
    let o = Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(&args)
        .env("GCLIP_IMAGE_CACHE", dir.join("image-cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "one URL is missing: {err}");
    assert!(err.contains("1 of 3 inputs failed"), "{err}");
    assert!(err.contains("/gone.png") && err.contains("404"), "{err}");
    assert!(!err.contains("cannot read file"), "{err}");
    let rows: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["image"], Value::String(good));
    assert_eq!(rows[0]["embedding"], rows[1]["embedding"], "URL = file");
    assert!(rows[0]["embedding"].is_array());
    assert!(rows[2]["error"].as_str().unwrap().contains(&gone));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Serves `files` by path on a loopback port (404 for anything else), on a thread.
fn serve_files(files: Vec<(String, Vec<u8>)>) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match files.iter().find(|(p, _)| p == path) {
                Some((_, b)) => ("200 OK", b.as_slice()),
                None => ("404 Not Found", b"none".as_slice()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(body);
        }
    });
    port
}

/// One request to the server on `port`; status and body, `None` when it did not answer.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let agent = gclip::http::AgentBuilder::new(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(30))
        .proxy(false)
        .build();
    let head = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    let answer = if body.is_empty() {
        agent.run(head.body(()).ok()?)
    } else {
        agent.run(
            head.header("content-type", "application/json")
                .body(body)
                .ok()?,
        )
    };
    let mut answer = answer.ok()?;
    let text = answer.body_mut().read_to_string().ok()?;
    Some((answer.status().as_u16(), text))
}

/// `gclip serve` on a free loopback port with `extra` arguments, once it answers.
fn start_serve(
    coll: &std::path::Path,
    cache: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(["serve", "--collection"])
        .arg(coll)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("GCLIP_IMAGE_CACHE", cache)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while http(port, "GET", "/api/health", "").is_none_or(|(s, _)| s != 200) {
        assert!(started.elapsed().as_secs() < 60, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (server, port)
}

#[test]
fn serve_fetches_no_client_urls_by_default_and_no_internal_ones_when_allowed() {
    let dir = scratch("nofetch");
    let docs = dir.join("docs.jsonl");
    std::fs::write(&docs, "{\"id\": \"a\", \"title\": \"a red dress\"}\n").unwrap();
    let coll = dir.join("shop");
    let mut args = vec![
        "add".to_string(),
        coll.display().to_string(),
        docs.display().to_string(),
        "--embed".into(),
        "title".into(),
    ];
    args.extend(model_args());
    ok(&gclip(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    // A loopback listener that counts the connections made to it: none may come.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let target_url = format!("http://{}/x.png", target.local_addr().unwrap());
    let closed_url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/x.png", l.local_addr().unwrap())
    };
    let cache = dir.join("cache");

    let (mut server, port) = start_serve(&coll, &cache, &[]);
    let search = |port: u16, url: &str| {
        http(
            port,
            "POST",
            "/api/collections/shop/search",
            &format!("{{\"image_url\": \"{url}\"}}"),
        )
        .unwrap()
    };
    let (status, body) = search(port, &target_url);
    let text_search = http(
        port,
        "POST",
        "/api/collections/shop/search",
        r#"{"q": "a red dress"}"#,
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--allow-url-fetch"), "{body}");
    let (status, body) = text_search.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"a\""), "{body}");

    // Allowed, loopback in its other spellings is still refused, with one answer for an open
    // and a closed port.
    let (mut server, port) = start_serve(&coll, &cache, &["--allow-url-fetch"]);
    let target_port = target.local_addr().unwrap().port();
    let mut answers = Vec::new();
    for url in [
        target_url.clone(),
        closed_url.clone(),
        format!("http://localhost:{target_port}/x.png"),
        format!("http://127.1:{target_port}/x.png"),
        format!("http://2130706433:{target_port}/x.png"),
        format!("http://0x7f000001:{target_port}/x.png"),
        format!("http://[::ffff:127.0.0.1]:{target_port}/x.png"),
    ] {
        let (status, body) = search(port, &url);
        answers.push((url, status, body));
    }
    let _ = server.kill();
    let _ = server.wait();
    for (url, status, body) in &answers {
        assert_eq!(*status, 400, "{url}: {body}");
        assert!(body.contains("could not be fetched"), "{url}: {body}");
    }
    let generic = |i: usize| answers[i].2.replace(&answers[i].0, "URL");
    assert_eq!(generic(0), generic(1));
    assert!(
        target.accept().is_err(),
        "the server connected to a loopback address for a client"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A collection made with `--precision bf16` records it: later commands embed in bf16 unless
/// told otherwise (a query then equals its document's vector exactly), and a query in another
/// precision is said on stderr and lands close, not exactly.
#[test]
fn a_collection_keeps_the_precision_it_was_made_in() {
    let dir = scratch("precision");
    let docs = dir.join("docs.jsonl");
    let titles = ["a photo of a cat", "a red sports car", "a bowl of soup"];
    let text: String = titles
        .iter()
        .enumerate()
        .map(|(k, t)| serde_json::json!({"id": format!("d{k}"), "title": t}).to_string() + "\n")
        .collect();
    std::fs::write(&docs, text).unwrap();
    let coll = dir.join("coll");
    let c = coll.to_str().unwrap();
    let mut args = vec!["add", c, docs.to_str().unwrap(), "--embed", "title"];
    let m = model_args();
    args.extend(m.iter().map(String::as_str));
    args.extend(["--precision", "bf16"]);
    ok(&gclip(&args));

    for (k, t) in titles.iter().enumerate() {
        let o = gclip(&["search", c, t, "--json", "--limit", "1"]);
        let hits = json(&o);
        assert_eq!(hits[0]["id"], format!("d{k}"));
        assert!(
            (hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-5,
            "{t}"
        );
        assert!(!String::from_utf8_lossy(&o.stderr).contains("note:"));

        let o = gclip(&[
            "search",
            c,
            t,
            "--json",
            "--limit",
            "1",
            "--precision",
            "fp32",
        ]);
        let hits = json(&o);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("holds bf16 vectors"), "{stderr}");
        assert!(stderr.contains("embeds in fp32"), "{stderr}");
        assert_eq!(hits[0]["id"], format!("d{k}"));
        let score = hits[0]["score"].as_f64().unwrap();
        assert!(score > 0.999 && score < 1.0 - 1e-6, "{t}: {score}");
    }
    let o = gclip(&["search", c, "cat", "--precision", "fp16"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected one of fp32, bf16, int8"));
}
