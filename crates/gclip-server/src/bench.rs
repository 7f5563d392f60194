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
    };
    let cdir = dir.join("bench");
    let _ = std::fs::remove_dir_all(&cdir);
    let c = Collection::create(
        &cdir,
        identity.clone(),
        EmbedSpec::parse("title", &[]).map_err(|e| e.to_string())?,
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
    let before = (
        worker_stats
            .batches
            .load(std::sync::atomic::Ordering::Relaxed),
        worker_stats
            .items
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..plan.clients.max(1))
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
    let elapsed = start.elapsed().as_secs_f64();
    let after = (
        worker_stats
            .batches
            .load(std::sync::atomic::Ordering::Relaxed),
        worker_stats
            .items
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
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
    })
}
