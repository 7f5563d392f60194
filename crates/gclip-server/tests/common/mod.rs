//! Helpers shared by the server tests: requests through gclip's HTTP client, and a server on
//! a thread.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gclip::http::AgentBuilder;
use gclip_server::{AppState, ServerConfig};
use serde_json::Value;

/// The repository's test fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// An empty directory of this test process's own.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-server-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One request on a new connection (a server restarted between two requests is reached
/// afresh); returns status, content type (lower case) and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    extra: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    let agent = AgentBuilder::new(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .proxy(false)
        .build();
    let mut head = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in extra {
        head = head.header(*k, *v);
    }
    let sent = match body {
        Some(b) => agent.run(
            head.header("content-type", "application/json")
                .body(b.to_vec())
                .unwrap(),
        ),
        None => agent.run(head.body(()).unwrap()),
    };
    let mut response = sent.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let ctype = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
    (response.status().as_u16(), ctype, body)
}

pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let mut extra = Vec::new();
    if let Some(k) = key {
        extra.push(("X-API-Key", k));
    }
    let (status, ctype, body) = request(addr, method, path, bytes.as_deref(), &extra);
    assert!(
        ctype.starts_with("application/json"),
        "{method} {path}: {status} {ctype} {}",
        String::from_utf8_lossy(&body)
    );
    (status, serde_json::from_slice(&body).unwrap())
}

pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start(config: ServerConfig) -> Self {
        let state = AppState::new(config).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (atx, arx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                atx.send(l.local_addr().unwrap()).unwrap();
                gclip_server::serve(state, l, async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = arx.recv_timeout(Duration::from_secs(30)).unwrap();
        Self {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}
