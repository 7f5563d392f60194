//! Server throughput: text-query requests per second under concurrent clients on loopback,
//! against the engine's own batched text throughput on the same model.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use gclip::embed::Embedder;
use gclip_search::{Collection, EmbedSpec, ModelIdentity, NewDocument};
use serde::Serialize;

use crate::{AppState, BatchConfig, ServerConfig};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ServerBenchPlan {
    pub clients: usize,
    pub seconds: f64,
    /// Batch size of the engine measurement (and the server's largest batch).
    pub batch: usize,
    pub max_wait: Duration,
    /// Documents in the searched collection.
    pub documents: usize,
    /// Threads sending the attack set ([`attack_set`]) during a second measurement; 0: none.
    pub attackers: usize,
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct ServerBenchResult {
    pub engine_texts_per_s: f64,
    pub server_requests_per_s: f64,
    pub ratio: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_batch: f64,
    pub requests: usize,
    pub errors: usize,
    /// The same search stream while attackers send the attack set.
    pub under_attack: Option<AttackResult>,
}

/// Searches measured while the attack set was sent.
#[derive(Debug, Clone, Serialize)]
pub struct AttackResult {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: usize,
    pub errors: usize,
    /// Per attack: how often each status came back (0: no answer).
    pub attacks: Vec<(String, Vec<(u16, usize)>)>,
}

/// One hostile request: a name, the path and the raw request (head and body).
pub struct Attack {
    pub name: &'static str,
    pub request: Vec<u8>,
}

fn raw_request(
    addr: SocketAddr,
    host: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        host.map_or_else(|| addr.to_string(), String::from),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// The requests of issue 10's attack report, against collection `name` of the server at
/// `addr`: each must get a 4xx or a bounded answer while searches go on.
pub fn attack_set(addr: SocketAddr, name: &str) -> Vec<Attack> {
    use base64::Engine as _;
    let post = |path: String, body: serde_json::Value| {
        raw_request(addr, None, "POST", &path, body.to_string().as_bytes())
    };
    let search = format!("/api/collections/{name}/search");
    let documents = format!("/api/collections/{name}/documents");
    // 6300 × 6300 16-bit RGBA, one colour: a few hundred KB that decode to 635 MB of samples.
    let big_png = {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 6300, 6300);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Sixteen);
        enc.set_compression(png::Compression::Fast);
        if let Ok(mut w) = enc.write_header() {
            if let Ok(mut stream) = w.stream_writer() {
                let row = vec![0x40u8; 6300 * 8];
                for _ in 0..6300 {
                    if stream.write_all(&row).is_err() {
                        break;
                    }
                }
                let _ = stream.finish();
            }
        }
        out
    };
    vec![
        Attack {
            name: "10 MiB query text",
            request: post(
                search.clone(),
                serde_json::json!({"q": "cat ".repeat(10 << 18)}),
            ),
        },
        Attack {
            name: "classify template {}x500000",
            request: post(
                "/api/classify".into(),
                serde_json::json!({"labels": ["cat", "dog", "car", "boat"], "text": "a cat",
                    "template": "{}".repeat(500_000)}),
            ),
        },
        Attack {
            name: "filter of 6000 NOTs",
            request: post(
                search.clone(),
                serde_json::json!({"q": "cat", "filter": format!("{}title", "NOT ".repeat(6000))}),
            ),
        },
        Attack {
            name: "document image /dev/zero",
            request: post(
                documents.clone(),
                serde_json::json!({"documents": [{"id": "z", "title": "z", "image": "/dev/zero"}]}),
            ),
        },
        Attack {
            name: "document image ../../etc/passwd",
            request: post(
                documents,
                serde_json::json!({"documents": [{"id": "p", "title": "p", "image": "../../etc/passwd"}]}),
            ),
        },
        Attack {
            name: "image_url to loopback",
            request: post(
                search.clone(),
                serde_json::json!({"image_url": format!("http://{addr}/api/health")}),
            ),
        },
        Attack {
            name: "offset 2^64-1",
            request: raw_request(
                addr,
                None,
                "GET",
                &format!("/api/collections/{name}/documents?offset=18446744073709551615"),
                b"",
            ),
        },
        Attack {
            name: "foreign Host header",
            request: raw_request(
                addr,
                Some("rebind.attacker.example"),
                "GET",
                "/api/collections",
                b"",
            ),
        },
        Attack {
            name: "6300x6300 16-bit PNG query",
            request: post(
                search,
                serde_json::json!({"image": base64::engine::general_purpose::STANDARD.encode(&big_png)}),
            ),
        },
    ]
}

/// Sends `request` on a new connection; the answer's status (0 when there was none).
fn send_raw(addr: SocketAddr, request: &[u8]) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    if s.write_all(request).is_err() {
        return 0;
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    // Drain the rest so that the server is not stopped by a reset.
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn query_text(i: usize) -> String {
    const W: &[&str] = &[
        "red", "dress", "cat", "sleeping", "sunset", "beach", "city", "night", "dog", "car",
        "flower", "old",
    ];
    format!(
        "a photo of a {} {} {}",
        W[i % 12],
        W[(i / 12) % 12],
        W[(i / 144) % 12]
    )
}

/// Keep-alive client: POSTs `body` to `path`, returns the status.
fn post(stream: &mut TcpStream, addr: SocketAddr, path: &str, body: &str) -> std::io::Result<u16> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::with_capacity(4096);
    let mut buf = [0u8; 8192];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut have = raw.len() - split - 4;
    while have < len {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        have += n;
    }
    Ok(status)
}

/// Runs the benchmark in `dir` (a scratch directory): engine first, then the server with the
/// same model.
pub fn run_server_bench(
    mut embedder: Embedder,
    plan: &ServerBenchPlan,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<ServerBenchResult, String> {
    let dim = embedder.clip().config.embed_dim;
    // Engine: batches of `batch` distinct texts, for half the time.
    embedder.batch_size = plan.batch.max(1);
    let texts: Vec<String> = (0..plan.batch.max(1) * 4).map(query_text).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    progress("engine: batched text throughput");
    embedder
        .embed_texts(&refs[..plan.batch.max(1)], true, &|_| {})
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut done = 0usize;
    while t.elapsed().as_secs_f64() < plan.seconds / 2.0 {
        embedder
            .embed_texts(&refs, true, &|_| {})
            .map_err(|e| e.to_string())?;
        done += refs.len();
    }
    let engine = done as f64 / t.elapsed().as_secs_f64();

    progress("server: concurrent clients");
    let identity = ModelIdentity {
        model: "bench-model".into(),
        arch: None,
        dim,
        precision: Default::default(),
    };
    let cdir = dir.join("bench");
    let _ = std::fs::remove_dir_all(&cdir);
    let c = Collection::create(
        &cdir,
        identity.clone(),
        // An image field too, so that the attack set's image paths are checked.
        EmbedSpec::parse("title:0.5,image:0.5", &["image".into()]).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let docs: Vec<NewDocument> = (0..plan.documents)
        .map(|i| {
            let mut v: Vec<f32> = (0..dim)
                .map(|k| (((i * 31 + k * 17) % 97) as f32) - 48.0)
                .collect();
            gclip_search::document::normalize(&mut v);
            let mut fields = gclip_search::Fields::new();
            fields.insert("title".into(), query_text(i).into());
            NewDocument {
                id: format!("d{i}"),
                fields,
                vector: v,
                source: None,
            }
        })
        .collect();
    c.upsert(docs).map_err(|e| e.to_string())?;
    drop(c);
    let config = ServerConfig {
        collections: vec![cdir.clone()],
        batch: BatchConfig {
            max_batch: plan.batch.max(1),
            max_wait: plan.max_wait,
            ..Default::default()
        },
        ..Default::default()
    };
    let state = AppState::new(config).map_err(|e| e.to_string())?;
    state.register_model(&identity, embedder);
    let worker_stats = state
        .models
        .lock()
        .ok()
        .and_then(|m| m.values().next().map(|w| w.stats.clone()))
        .ok_or("no worker")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    let server = rt.spawn(async move {
        let _ = crate::serve(st, listener, async move {
            let _ = stop_rx.await;
        })
        .await;
    });
    let deadline = Instant::now() + Duration::from_secs_f64(plan.seconds);
    let batches_and_items = || {
        use std::sync::atomic::Ordering::Relaxed;
        (
            worker_stats.batches.load(Relaxed),
            worker_stats.items.load(Relaxed),
        )
    };
    let before = batches_and_items();
    let start = Instant::now();
    let (mut lat, errors) = search_stream(addr, plan.clients, deadline);
    let elapsed = start.elapsed().as_secs_f64();
    let after = batches_and_items();
    let under_attack = (plan.attackers > 0).then(|| {
        progress("server: the same searches while attackers send the attack set");
        let attacks = std::sync::Arc::new(attack_set(addr, "bench"));
        let deadline = Instant::now() + Duration::from_secs_f64(plan.seconds);
        let attackers: Vec<_> = (0..plan.attackers)
            .map(|a| {
                let attacks = attacks.clone();
                std::thread::spawn(move || {
                    let mut seen: Vec<Vec<u16>> = vec![Vec::new(); attacks.len()];
                    let mut i = a;
                    while Instant::now() < deadline {
                        let k = i % attacks.len();
                        seen[k].push(send_raw(addr, &attacks[k].request));
                        i += 1;
                    }
                    seen
                })
            })
            .collect();
        let (mut lat, errors) = search_stream(addr, plan.clients, deadline);
        let mut statuses: Vec<std::collections::BTreeMap<u16, usize>> =
            vec![Default::default(); attacks.len()];
        for h in attackers {
            if let Ok(seen) = h.join() {
                for (k, list) in seen.into_iter().enumerate() {
                    for status in list {
                        *statuses[k].entry(status).or_default() += 1;
                    }
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        AttackResult {
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            requests: lat.len(),
            errors,
            attacks: attacks
                .iter()
                .zip(statuses)
                .map(|(a, s)| (a.name.to_string(), s.into_iter().collect()))
                .collect(),
        }
    });
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| percentile(&lat, p);
    let rps = lat.len() as f64 / elapsed;
    let _ = std::fs::remove_dir_all(&cdir);
    Ok(ServerBenchResult {
        engine_texts_per_s: engine,
        server_requests_per_s: rps,
        ratio: rps / engine,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        mean_batch: (after.1 - before.1) as f64 / (after.0 - before.0).max(1) as f64,
        requests: lat.len(),
        errors,
        under_attack,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// `clients` keep-alive clients searching by text until `deadline`: latencies of the answered
/// searches (ms) and the number of failures.
fn search_stream(addr: SocketAddr, clients: usize, deadline: Instant) -> (Vec<f64>, usize) {
    let handles: Vec<_> = (0..clients.max(1))
        .map(|c| {
            std::thread::spawn(move || -> (Vec<f64>, usize) {
                let mut lat = Vec::new();
                let mut errors = 0;
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return (lat, 1);
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let mut i = c * 100_000;
                while Instant::now() < deadline {
                    let body = format!("{{\"q\": \"{}\", \"limit\": 10}}", query_text(i));
                    i += 1;
                    let t = Instant::now();
                    match post(&mut s, addr, "/api/collections/bench/search", &body) {
                        Ok(200) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            match TcpStream::connect(addr) {
                                Ok(n) => s = n,
                                Err(_) => break,
                            }
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in handles {
        if let Ok((l, e)) = h.join() {
            lat.extend(l);
            errors += e;
        }
    }
    (lat, errors)
}
