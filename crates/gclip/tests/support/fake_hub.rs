//! A fake Hugging Face hub on the loopback interface, for tests: a hub server answering the API
//! listing and `resolve` requests with the headers the real hub sends, and a "CDN" server (another
//! port, so another host for the client) serving LFS files behind signed-looking redirects.
//!
//! Both bind 127.0.0.1 only, log every request, and stop when the `FakeHub` is dropped or, as a
//! safety net, two minutes after they started.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A repository the fake hub serves.
#[derive(Clone, Debug)]
pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    pub files: BTreeMap<String, Vec<u8>>,
    /// Files need a token (`GatedRepo` errors without one).
    pub gated: bool,
    /// The repository is invisible without the token (`RepoNotFound`, as the hub answers).
    pub private: bool,
    /// Another id that redirects here (a renamed repository).
    pub old_id: Option<String>,
}

impl FakeRepo {
    pub fn new(id: &str, commit: &str) -> Self {
        Self {
            id: id.into(),
            commit: commit.into(),
            files: BTreeMap::new(),
            gated: false,
            private: false,
            old_id: None,
        }
    }

    pub fn file(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.insert(name.into(), bytes.into());
        self
    }

    /// Adds the named files of a fixture directory.
    pub fn fixture_files(mut self, dir: &Path, names: &[&str]) -> Self {
        for n in names {
            let bytes = std::fs::read(dir.join(n)).expect("fixture file");
            self.files.insert((*n).into(), bytes);
        }
        self
    }
}

/// Whether the hub stores a file with Git LFS (and so redirects to the CDN), as for the weights.
pub fn is_lfs(name: &str) -> bool {
    [".safetensors", ".bin", ".pt", ".h5", ".msgpack"]
        .iter()
        .any(|e| name.ends_with(e))
}

/// A stand-in for a content hash: 16 hex digits of FNV-1a per seed, `n` digits in all. The
/// client names blobs after what the hub says, it never recomputes it.
pub fn fake_hash(bytes: &[u8], n: usize) -> String {
    let mut out = String::new();
    let mut seed: u64 = 0;
    while out.len() < n {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
        seed += 1;
    }
    out.truncate(n);
    out
}

/// The git blob id the hub sends as the ETag of a regular file (faked).
pub fn git_oid(bytes: &[u8]) -> String {
    fake_hash(bytes, 40)
}

/// The sha256 the hub sends as `X-Linked-Etag` of an LFS file (faked).
pub fn lfs_oid(bytes: &[u8]) -> String {
    fake_hash(&[b"lfs".as_slice(), bytes].concat(), 64)
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// "hub" or "cdn".
    pub server: &'static str,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    repos: Vec<FakeRepo>,
    log: Vec<Logged>,
    connections: usize,
    /// The next this many CDN answers send half their body, then close the connection.
    cut_cdn: usize,
    /// The token that opens gated and private repositories.
    token: Option<String>,
}

pub struct FakeHub {
    pub hub: SocketAddr,
    pub cdn: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FakeHub {
    pub fn start(repos: Vec<FakeRepo>) -> Self {
        let state = Arc::new(Mutex::new(State {
            repos,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let hub_listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let cdn_listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let hub = hub_listener.local_addr().unwrap();
        let cdn = cdn_listener.local_addr().unwrap();
        let mut threads = Vec::new();
        for (listener, server) in [(hub_listener, "hub"), (cdn_listener, "cdn")] {
            let state = state.clone();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                serve(listener, server, hub, cdn, &state, &stop)
            }));
        }
        Self {
            hub,
            cdn,
            state,
            stop,
            threads,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.hub)
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    pub fn cut_cdn(&self, times: usize) {
        self.state.lock().unwrap().cut_cdn = times;
    }

    pub fn set_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.into());
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: TcpListener,
    server: &'static str,
    hub: SocketAddr,
    cdn: SocketAddr,
    state: &Mutex<State>,
    stop: &AtomicBool,
) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                state.lock().unwrap().connections += 1;
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = handle(stream, server, hub, cdn, state);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many bytes of the body, then close.
    cut_at: Option<usize>,
}

impl Reply {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_at: None,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
    fn error(status: u16, code: &str, message: &str) -> Self {
        Self::new(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", message)
            .header("Content-Type", "application/json")
            .body(format!("{{\"error\":\"{message}\"}}"))
    }
}

fn handle(
    stream: TcpStream,
    server: &'static str,
    hub: SocketAddr,
    cdn: SocketAddr,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let logged = Logged {
        server,
        method: method.clone(),
        path: path.clone(),
        headers,
    };
    let reply = {
        let mut st = state.lock().unwrap();
        st.log.push(logged.clone());
        if server == "hub" {
            hub_reply(&st, &logged, hub, cdn)
        } else {
            let mut r = cdn_reply(&st, &logged);
            if st.cut_cdn > 0 && r.status / 100 == 2 {
                st.cut_cdn -= 1;
                r.cut_at = Some(r.body.len() / 2);
            }
            r
        }
    };
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    let has_length = reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let end = reply.cut_at.unwrap_or(reply.body.len());
        out.write_all(&reply.body[..end])?;
    }
    out.flush()?;
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Status",
    }
}

fn authorized(st: &State, req: &Logged) -> bool {
    match (&st.token, req.header("authorization")) {
        (Some(t), Some(h)) => h == format!("Bearer {t}"),
        _ => false,
    }
}

fn hub_reply(st: &State, req: &Logged, hub: SocketAddr, cdn: SocketAddr) -> Reply {
    let path = req.path.split('?').next().unwrap_or("");
    let bad_token =
        req.header("authorization").is_some() && !authorized(st, req) && st.token.is_some();
    if bad_token {
        return Reply::error(401, "", "Invalid credentials in Authorization header");
    }
    // GET /api/models/{org}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let mut it = rest.splitn(4, '/');
        let (org, name, kw, rev) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        let id = format!("{org}/{name}");
        if kw != "revision" || req.method != "GET" {
            return Reply::error(404, "", "Not Found");
        }
        if let Some(r) = st.repos.iter().find(|r| r.old_id.as_deref() == Some(&id)) {
            return Reply::new(307)
                .header("Location", format!("/api/models/{}/revision/{rev}", r.id));
        }
        let Some(repo) = st.repos.iter().find(|r| r.id == id) else {
            return Reply::error(401, "RepoNotFound", "Repository not found");
        };
        if repo.private && !authorized(st, req) {
            return Reply::error(401, "RepoNotFound", "Repository not found");
        }
        let rev = percent_decode(rev);
        if rev != "main" && rev != repo.commit {
            return Reply::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        }
        let siblings: Vec<String> = repo
            .files
            .keys()
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        let body = format!(
            "{{\"_id\":\"0123\",\"id\":\"{}\",\"private\":{},\"gated\":{},\"sha\":\"{}\",\"siblings\":[{}],\"library_name\":\"open_clip\"}}",
            repo.id,
            repo.private,
            if repo.gated { "\"manual\"" } else { "false" },
            repo.commit,
            siblings.join(",")
        );
        return Reply::new(200)
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body);
    }
    // HEAD|GET /{org}/{name}/resolve/{rev}/{file}
    let mut it = path.trim_start_matches('/').splitn(5, '/');
    let (org, name, kw, rev, file) = (
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    );
    if kw != "resolve" {
        return Reply::error(404, "", "Not Found");
    }
    let id = format!("{org}/{name}");
    if let Some(r) = st.repos.iter().find(|r| r.old_id.as_deref() == Some(&id)) {
        return Reply::new(307).header("Location", format!("/{}/resolve/{rev}/{file}", r.id));
    }
    let Some(repo) = st.repos.iter().find(|r| r.id == id) else {
        return Reply::error(401, "RepoNotFound", "Repository not found");
    };
    if repo.private && !authorized(st, req) {
        return Reply::error(401, "RepoNotFound", "Repository not found");
    }
    let rev = percent_decode(rev);
    if rev != "main" && rev != repo.commit {
        return Reply::error(404, "RevisionNotFound", "Invalid rev id");
    }
    if repo.gated && !authorized(st, req) {
        return Reply::error(
            401,
            "GatedRepo",
            &format!(
                "Access to model {} is restricted. You must have access to it and be authenticated to access it. Please log in.",
                repo.id
            ),
        )
        .header("X-Repo-Commit", repo.commit.clone());
    }
    let file = percent_decode(file);
    let Some(bytes) = repo.files.get(&file) else {
        return Reply::error(
            404,
            "EntryNotFound",
            &format!("{file} does not exist on \"main\""),
        )
        .header("X-Repo-Commit", repo.commit.clone());
    };
    if is_lfs(&file) {
        let sha = lfs_oid(bytes);
        let location = format!(
            "http://{cdn}/repos/ab/cd/{sha}?response-content-disposition=attachment%3B+filename%3D%22{file}%22&X-Amz-Signature=fake"
        );
        let body = format!("Found. Redirecting to {location}");
        return Reply::new(302)
            .header("Location", location)
            .header("X-Repo-Commit", repo.commit.clone())
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", bytes.len().to_string())
            .header("ETag", format!("W/\"{}\"", git_oid(sha.as_bytes())))
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Content-Length", body.len().to_string())
            .header("X-Hub", hub.to_string())
            .body(body);
    }
    Reply::new(200)
        .header("X-Repo-Commit", repo.commit.clone())
        .header("ETag", format!("\"{}\"", git_oid(bytes)))
        .header("Content-Type", "application/json; charset=utf-8")
        .header("Accept-Ranges", "bytes")
        .header("Content-Length", bytes.len().to_string())
        .body(bytes.clone())
}

fn cdn_reply(st: &State, req: &Logged) -> Reply {
    let path = req.path.split('?').next().unwrap_or("");
    let sha = path.rsplit('/').next().unwrap_or("");
    let Some(bytes) = st
        .repos
        .iter()
        .flat_map(|r| r.files.values())
        .find(|b| lfs_oid(b) == sha)
    else {
        return Reply::new(404).body("NoSuchKey");
    };
    let start = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    match start {
        Some(s) if s < bytes.len() => Reply::new(206)
            .header(
                "Content-Range",
                format!("bytes {s}-{}/{}", bytes.len() - 1, bytes.len()),
            )
            .header("Content-Type", "application/octet-stream")
            .body(bytes[s..].to_vec()),
        _ => Reply::new(200)
            .header("Content-Type", "application/octet-stream")
            .header("Accept-Ranges", "bytes")
            .body(bytes.clone()),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A loopback port that accepts connections and never answers, until dropped (or two minutes
/// pass).
pub struct SilentServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok((stream, _)) = listener.accept() {
                    held.push(stream);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback address nothing listens on (connections are refused at once).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.local_addr().unwrap()
}
