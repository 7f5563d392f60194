//! The web page in a real headless Chromium (driven through chromedriver's WebDriver API on a
//! loopback port): type a query and see results; drop an image and see results; thumbnails
//! load. Needs `chromium` and `chromium-driver` (tools/ci_browser_setup.sh installs them, and
//! `.ci/run` calls it); without them the test fails, naming what to install, rather than passing
//! without having checked anything.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gclip_search::{model_identity, Collection, EmbedSpec};
use gclip_server::ServerConfig;
use serde_json::{json, Value};

mod common;
use common::{call, fixtures, request, Running};

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

struct Driver {
    addr: SocketAddr,
    child: Child,
    session: String,
}

impl Driver {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        wd(self.addr, method, &path, body)
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )["value"]
            .clone()
    }

    /// Polls a script until it returns something truthy (bounded).
    fn wait_for(&self, script: &str, what: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.script(script, json!([]));
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() && !std::thread::panicking() {
            let path = format!("/session/{}", self.session);
            let _ = request(self.addr, "DELETE", &path, None, &[]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wd(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let (status, _, out) = request(addr, method, path, bytes.as_deref(), &[]);
    let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    assert!(status < 400, "WebDriver {method} {path}: {status} {v}");
    v
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_driver(profile: &Path) -> Driver {
    let port = free_port();
    let mut child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("chromedriver did not listen");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": which("chromium").map(|p| p.display().to_string()).unwrap_or_else(|| "/usr/bin/chromium".into()),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--disable-dev-shm-usage", "--window-size=1200,900",
                     format!("--user-data-dir={}", profile.display())]
        }
    }}});
    // The driver process is ours from here: Drop kills it even if the session fails.
    let mut driver = Driver {
        addr,
        child,
        session: String::new(),
    };
    let v = wd(addr, "POST", "/session", Some(caps));
    driver.session = v["value"]["sessionId"]
        .as_str()
        .expect("a session id")
        .to_string();
    driver
}

#[test]
fn page_searches_by_typed_text_and_dropped_image() {
    assert!(
        which("chromedriver").is_some() && which("chromium").is_some(),
        "the web page test needs chromium and chromedriver on PATH \
         (Debian: bash tools/ci_browser_setup.sh installs chromium and chromium-driver)"
    );
    let dir = std::env::temp_dir().join(format!("gclip-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let m = fixtures().join("models/oc-fullvocab");
    let (identity, _) = model_identity(
        m.join("open_clip_model.safetensors").to_str().unwrap(),
        Some(m.join("open_clip_config.json").to_str().unwrap()),
        Default::default(),
    )
    .unwrap();
    let coll = dir.join("gallery");
    drop(
        Collection::create(
            &coll,
            identity,
            EmbedSpec::parse("title:0.5,image:0.5", &["image".into()]).unwrap(),
        )
        .unwrap(),
    );
    let images = std::fs::canonicalize(fixtures().join("images")).unwrap();
    let server = Running::start(ServerConfig {
        collections: vec![coll],
        files_roots: vec![images.clone()],
        ..Default::default()
    });
    let docs = json!({"documents": [
        {"id": "moto", "title": "a motorcycle", "image": images.join("photo_motorcycle.png")},
        {"id": "clip1", "title": "clip art", "image": images.join("clipart_1.png")},
        {"id": "horse", "title": "a horse", "image": images.join("photo_horse_mask.png")},
        {"id": "dog", "title": "a photo of a dog"},
        {"id": "cat", "title": "a photo of a cat"}
    ]});
    let (s, v) = call(
        server.addr,
        "POST",
        "/api/collections/gallery/documents",
        Some(docs),
        None,
    );
    assert_eq!((s, v["written"].as_u64()), (200, Some(5)), "{v}");

    let driver = start_driver(&dir.join("profile"));
    driver.cmd(
        "POST",
        "/url",
        Some(json!({"url": format!("http://{}/", server.addr)})),
    );
    // The collection picker fills from the API.
    let picked = driver.wait_for(
        "const s = document.getElementById('collection'); return s.options.length && s.value;",
        "collections",
    );
    assert_eq!(picked, "gallery");

    // Type a query and press Enter.
    let el = driver.cmd(
        "POST",
        "/element",
        Some(json!({"using": "css selector", "value": "#q"})),
    );
    let el_id = el["value"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    driver.cmd(
        "POST",
        &format!("/element/{el_id}/value"),
        Some(json!({"text": "a photo of a dog\u{E007}"})),
    );
    let first = driver.wait_for(
        "const h = document.querySelector('#results .hit'); return h && h.dataset.id;",
        "text results",
    );
    assert_eq!(first, "dog");
    let n = driver.script(
        "return document.querySelectorAll('#results .hit').length;",
        json!([]),
    );
    assert_eq!(n, 5);
    let status = driver.script(
        "return document.getElementById('status').textContent;",
        json!([]),
    );
    assert!(
        status.as_str().unwrap().contains("of 5 documents"),
        "{status}"
    );
    // Thumbnails of image documents load (decoded by the browser).
    let loaded = driver.wait_for(
        "const imgs = [...document.querySelectorAll('#results img')]; return imgs.length === 3 && imgs.every(i => i.complete && i.naturalWidth === 256) && imgs.length;",
        "thumbnails",
    );
    assert_eq!(loaded, 3);

    // Drop an image file on the drop zone.
    let png = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(images.join("clipart_1.png")).unwrap());
    driver.script(
        "document.getElementById('results').innerHTML = '';
         const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
         const file = new File([bytes], 'query.png', {type: 'image/png'});
         const dt = new DataTransfer(); dt.items.add(file);
         const drop = document.getElementById('drop');
         for (const type of ['dragenter', 'dragover', 'drop'])
           drop.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));",
        json!([png]),
    );
    let first = driver.wait_for(
        "const h = document.querySelector('#results .hit'); return h && h.dataset.id;",
        "image results",
    );
    assert_eq!(first, "clip1");
    if let Some(out) = std::env::var_os("GCLIP_SCREENSHOT") {
        let shot = driver.cmd("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(shot["value"].as_str().unwrap())
            .unwrap();
        std::fs::write(out, bytes).unwrap();
    }
    drop(driver);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
