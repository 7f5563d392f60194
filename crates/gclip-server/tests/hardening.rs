//! Requests an attacker would send to a real server on a loopback port: server files named as
//! images, thumbnails of files outside the roots, oversized texts and templates, other Host
//! names, a collection over a broken checkpoint. Each gets a 4xx or a bounded answer, and the
//! server keeps answering.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gclip_search::roots::OUTSIDE_ROOTS;
use gclip_search::{model_identity, Collection, EmbedSpec, NewDocument};
use gclip_server::ServerConfig;
use serde_json::{json, Value};

mod common;
use common::{call, fixtures, request, scratch, Running};

fn fixture_model() -> (String, String) {
    let m = fixtures().join("models/oc-fullvocab");
    (
        m.join("open_clip_model.safetensors").display().to_string(),
        m.join("open_clip_config.json").display().to_string(),
    )
}

fn new_collection(dir: &Path, spec: &str) -> PathBuf {
    let (model, arch) = fixture_model();
    let (identity, _) = model_identity(&model, Some(&arch), Default::default()).unwrap();
    let coll = dir.join("pics");
    let spec = EmbedSpec::parse(spec, &["image".into()]).unwrap();
    drop(Collection::create(&coll, identity, spec).unwrap());
    coll
}

fn failures(v: &Value) -> Vec<(usize, String)> {
    v["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["index"].as_u64().unwrap() as usize,
                f["error"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn clients_name_no_server_files_outside_the_roots() {
    let dir = scratch("roots");
    let root = dir.join("public");
    let secret = dir.join("secret");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    let photo = fixtures().join("images/photo_motorcycle.png");
    std::fs::copy(&photo, root.join("moto.png")).unwrap();
    std::fs::copy(&photo, secret.join("private.png")).unwrap();
    let fifo_inside = root.join("fifo.png");
    let fifo_made = std::process::Command::new("mkfifo")
        .arg(&fifo_inside)
        .status()
        .is_ok_and(|s| s.success());
    let coll = new_collection(&dir, "image");
    // A document whose image lies outside every root (as an older gclip, or a hand-edited
    // store, could hold): its thumbnail must not be shown.
    {
        let c = Collection::open(&coll).unwrap();
        let mut fields = gclip_search::Fields::new();
        fields.insert(
            "image".into(),
            Value::String(secret.join("private.png").display().to_string()),
        );
        let dim = c.info().model.dim;
        let mut vector = vec![0.0f32; dim];
        vector[0] = 1.0;
        c.upsert(vec![NewDocument {
            id: "planted".into(),
            fields,
            vector,
            source: None,
        }])
        .unwrap();
        c.flush().unwrap();
    }
    let server = Running::start(ServerConfig {
        collections: vec![coll.clone()],
        files_roots: vec![root.clone()],
        ..Default::default()
    });
    let a = server.addr;
    let outside = [
        secret.join("private.png").display().to_string(),
        secret.join("missing.png").display().to_string(),
        "../secret/private.png".to_string(),
        format!("{}/../secret/private.png", root.display()),
        "/dev/zero".to_string(),
        "/etc".to_string(),
    ];
    let mut documents: Vec<Value> = outside
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"id": format!("out{i}"), "image": p}))
        .collect();
    documents.push(json!({"id": "inside", "image": "moto.png"}));
    if fifo_made {
        documents.push(json!({"id": "fifo", "image": "fifo.png"}));
    }
    let started = Instant::now();
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/pics/documents",
        Some(json!({ "documents": documents })),
        None,
    );
    assert_eq!(s, 200, "{v}");
    // A named pipe fails its document at once instead of hanging the request.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(v["written"], 1, "{v}");
    let failed = failures(&v);
    for (i, _) in outside.iter().enumerate() {
        let (_, e) = failed.iter().find(|(j, _)| *j == i).unwrap();
        // The same words whether the file exists, is missing, is a device or a folder.
        assert_eq!(e, &format!("field \"image\": {OUTSIDE_ROOTS}"), "{i}");
    }
    if fifo_made {
        let (_, e) = failed
            .iter()
            .find(|(j, _)| *j == outside.len() + 1)
            .unwrap();
        assert!(e.contains("not a regular file"), "{e}");
    }
    // PATCH cannot point a document at a server file either.
    let (s, v) = call(
        a,
        "PATCH",
        "/api/collections/pics/documents/inside",
        Some(json!({"image": secret.join("private.png").display().to_string()})),
        None,
    );
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains(OUTSIDE_ROOTS));
    // Thumbnails: the document under the root is shown, the planted one is not, and its
    // answer is that of a missing file.
    let (s, ctype, _) = request(
        a,
        "GET",
        "/api/collections/pics/documents/inside/thumbnail?size=64",
        None,
        &[],
    );
    assert_eq!((s, ctype.as_str()), (200, "image/png"));
    let (s, v) = call(
        a,
        "GET",
        "/api/collections/pics/documents/planted/thumbnail?size=1024",
        None,
        None,
    );
    assert_eq!(s, 404, "{v}");
    assert_eq!(
        v["error"]["message"],
        "document \"planted\": image unavailable"
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn request_budgets_answer_before_the_model_is_held() {
    let dir = scratch("budget");
    let coll = new_collection(&dir, "title");
    let server = Running::start(ServerConfig {
        collections: vec![coll],
        root: Some(dir.join("root")),
        ..Default::default()
    });
    let a = server.addr;
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/pics/documents",
        Some(json!({"documents": [{"id": "d", "title": "a red dress"}]})),
        None,
    );
    assert_eq!((s, v["written"].as_u64()), (200, Some(1)), "{v}");

    // A 10 MiB query text.
    let huge = "cat ".repeat(10 * 1024 * 1024 / 4);
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/pics/search",
        Some(json!({ "q": huge })),
        None,
    );
    assert_eq!(s, 413, "{}", v["error"]);
    assert!(v["error"]["message"].as_str().unwrap().contains("16384"));
    let (s, _) = call(
        a,
        "POST",
        "/api/collections/pics/search",
        Some(json!({"queries": [{"text": "x".repeat(20_000)}]})),
        None,
    );
    assert_eq!(s, 413);
    // Classify: a template that multiplies the labels, too many labels, a long label.
    let labels = json!(["cat", "dog", "car", "boat"]);
    let (s, v) = call(
        a,
        "POST",
        "/api/classify",
        Some(json!({"labels": labels, "text": "a cat", "template": "{}".repeat(500_000)})),
        None,
    );
    assert_eq!(s, 400, "{v}");
    let (s, _) = call(
        a,
        "POST",
        "/api/classify",
        Some(json!({"labels": vec!["x"; 1001], "text": "a cat"})),
        None,
    );
    assert_eq!(s, 400);
    let (s, _) = call(
        a,
        "POST",
        "/api/classify",
        Some(json!({"labels": ["x".repeat(17_000)], "text": "a cat"})),
        None,
    );
    assert_eq!(s, 413);
    // Within the limits it answers.
    let (s, v) = call(
        a,
        "POST",
        "/api/classify",
        Some(json!({"labels": labels, "text": "a cat", "template": "a photo of a {}, {}."})),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["labels"].as_array().unwrap().len(), 4);
    // Embed: one long text refuses the request.
    let (s, _) = call(
        a,
        "POST",
        "/api/embed",
        Some(json!({"texts": ["ok", "y".repeat(17_000)]})),
        None,
    );
    assert_eq!(s, 413);
    // Routes without images take small bodies only.
    let (s, _) = call(
        a,
        "POST",
        "/api/collections",
        Some(json!({"name": "x", "model": "m", "embed": "a".repeat(100_000)})),
        None,
    );
    assert_eq!(s, 413);
    // Filters that would nest without bound, and an offset past every integer the store has.
    for filter in [
        format!("{}title", "NOT ".repeat(6000)),
        format!("{}title{}", "(".repeat(65), ")".repeat(65)),
    ] {
        let (s, v) = call(
            a,
            "POST",
            "/api/collections/pics/search",
            Some(json!({"q": "cat", "filter": filter})),
            None,
        );
        assert_eq!(s, 400, "{v}");
    }
    let (s, v) = call(
        a,
        "GET",
        "/api/collections/pics/documents?offset=18446744073709551615",
        None,
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["documents"].as_array().map(Vec::len), Some(0), "{v}");
    // After all this, searching works.
    let (s, v) = call(
        a,
        "POST",
        "/api/collections/pics/search",
        Some(json!({"q": "a red dress"})),
        None,
    );
    assert_eq!((s, v["hits"][0]["id"].as_str()), (200, Some("d")), "{v}");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_collection_over_a_broken_checkpoint_is_never_created() {
    let dir = scratch("broken-model");
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let (model, arch) = fixture_model();
    let bytes = std::fs::read(&model).unwrap();
    let truncated = models.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::copy(&arch, models.join("config.json")).unwrap();
    let root = dir.join("root");
    let server = Running::start(ServerConfig {
        root: Some(root.clone()),
        files_roots: vec![models.clone()],
        ..Default::default()
    });
    let a = server.addr;
    let (s, v) = call(
        a,
        "POST",
        "/api/collections",
        Some(json!({
            "name": "broken",
            "model": truncated.display().to_string(),
            "arch": models.join("config.json").display().to_string(),
            "embed": "title",
        })),
        None,
    );
    assert_eq!(s, 422, "{v}");
    assert!(!root.join("broken").exists());
    let (s, v) = call(a, "GET", "/api/collections", None, None);
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(0)), "{v}");
    // A model file outside the roots is not even opened.
    let (s, v) = call(
        a,
        "POST",
        "/api/collections",
        Some(json!({"name": "elsewhere", "model": model, "arch": arch, "embed": "title"})),
        None,
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["message"], gclip_server::MODEL_OUTSIDE_ROOTS);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keyless_servers_answer_only_to_their_own_host_names() {
    let dir = scratch("hosts");
    let coll = new_collection(&dir, "title");
    let server = Running::start(ServerConfig {
        collections: vec![coll.clone()],
        public_url: Some("https://search.example.com/gclip/".into()),
        ..Default::default()
    });
    let a = server.addr;
    let status = |host: &str| request(a, "GET", "/api/collections", None, &[("Host", host)]).0;
    assert_eq!(status(&a.to_string()), 200);
    assert_eq!(status(&format!("localhost:{}", a.port())), 200);
    assert_eq!(status("[::1]:8080"), 200);
    assert_eq!(status("search.example.com"), 200);
    assert_eq!(status("SEARCH.example.com:443"), 200);
    assert_eq!(status("attacker.example"), 421);
    assert_eq!(
        status(&format!("rebind.attacker.example:{}", a.port())),
        421
    );
    server.stop();

    // With an API key the Host is not checked (reads can be protected by the key).
    let keyed = Running::start(ServerConfig {
        collections: vec![coll],
        api_key: Some("k".into()),
        ..Default::default()
    });
    let s = request(
        keyed.addr,
        "GET",
        "/api/health",
        None,
        &[("Host", "anything.example")],
    )
    .0;
    assert_eq!(s, 200);
    keyed.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
