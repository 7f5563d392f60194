//! Server throughput: text-query requests per second under concurrent clients on loopback,
//! against the engine's own batched text throughput on the same model.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use gclip::embed::Embedder;
use gclip::http::AgentBuilder;
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

/// One hostile request.
pub struct Attack {
    pub name: &'static str,
    pub method: &'static str,
    pub path: String,
    /// A `Host` header other than the server's address.
    pub host: Option<&'static str>,
    /// A JSON body; empty for none.
    pub body: Vec<u8>,
}

impl Attack {
    fn post(name: &'static str, path: String, body: serde_json::Value) -> Self {
        Self {
            name,
            method: "POST",
            path,
            host: None,
            body: body.to_string().into_bytes(),
        }
    }

    fn get(name: &'static str, path: String, host: Option<&'static str>) -> Self {
        Self {
            name,
            method: "GET",
            path,
            host,
            body: Vec::new(),
        }
    }
}

/// A client of the server under test: no proxy, a minute per answer.
fn client() -> ureq::Agent {
    AgentBuilder::new(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .proxy(false)
        .build()
}

/// The requests of issue 10's attack report, against collection `name` of the server at
/// `addr`: each must get a 4xx or a bounded answer while searches go on.
pub fn attack_set(addr: SocketAddr, name: &str) -> Vec<Attack> {
    use base64::Engine as _;
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
        Attack::post(
            "10 MiB query text",
            search.clone(),
            serde_json::json!({"q": "cat ".repeat(10 << 18)}),
        ),
        Attack::post(
            "classify template {}x500000",
            "/api/classify".into(),
            serde_json::json!({"labels": ["cat", "dog", "car", "boat"], "text": "a cat",
                "template": "{}".repeat(500_000)}),
        ),
        Attack::post(
            "filter of 6000 NOTs",
            search.clone(),
            serde_json::json!({"q": "cat", "filter": format!("{}title", "NOT ".repeat(6000))}),
        ),
        Attack::post(
            "document image /dev/zero",
            documents.clone(),
            serde_json::json!({"documents": [{"id": "z", "title": "z", "image": "/dev/zero"}]}),
        ),
        Attack::post(
            "document image ../../etc/passwd",
            documents,
            serde_json::json!({"documents": [{"id": "p", "title": "p", "image": "../../etc/passwd"}]}),
        ),
        Attack::post(
            "image_url to loopback",
            search.clone(),
            serde_json::json!({"image_url": format!("http://{addr}/api/health")}),
        ),
        Attack::get(
            "offset 2^64-1",
            format!("/api/collections/{name}/documents?offset=18446744073709551615"),
            None,
        ),
        Attack::get(
            "foreign Host header",
            "/api/collections".into(),
            Some("rebind.attacker.example"),
        ),
        Attack::post(
            "6300x6300 16-bit PNG query",
            search,
            serde_json::json!({"image": base64::engine::general_purpose::STANDARD.encode(&big_png)}),
        ),
    ]
}

/// Sends `attack`; the answer's status (0 when there was none).
fn send(agent: &ureq::Agent, addr: SocketAddr, attack: &Attack) -> u16 {
    let mut head = ureq::http::Request::builder()
        .method(attack.method)
        .uri(format!("http://{addr}{}", attack.path));
    if let Some(host) = attack.host {
        head = head.header("host", host);
    }
    let answer = if attack.body.is_empty() {
        head.body(()).map(|r| agent.run(r))
    } else {
        head.header("content-type", "application/json")
            .body(attack.body.as_slice())
            .map(|r| agent.run(r))
    };
    match answer {
        Ok(Ok(mut r)) => {
            let status = r.status().as_u16();
            // Read the whole answer, so that the connection ends cleanly, not by a reset.
            let _ = std::io::copy(
                &mut r.body_mut().with_config().limit(u64::MAX).reader(),
                &mut std::io::sink(),
            );
            status
        }
        _ => 0,
    }
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

/// POSTs `body` to `path`; the answer's status. The answer is read to its end, so that the
/// agent keeps the connection for the next request.
fn post(agent: &ureq::Agent, addr: SocketAddr, path: &str, body: &str) -> Result<u16, ureq::Error> {
    let mut r = agent
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .send(body)?;
    r.body_mut().read_to_vec()?;
    Ok(r.status().as_u16())
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
                    let agent = client();
                    let mut seen: Vec<Vec<u16>> = vec![Vec::new(); attacks.len()];
                    let mut i = a;
                    while Instant::now() < deadline {
                        let k = i % attacks.len();
                        seen[k].push(send(&agent, addr, &attacks[k]));
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
                let agent = client();
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut i = c * 100_000;
                while Instant::now() < deadline {
                    let body = format!("{{\"q\": \"{}\", \"limit\": 10}}", query_text(i));
                    i += 1;
                    let t = Instant::now();
                    match post(&agent, addr, "/api/collections/bench/search", &body) {
                        Ok(200) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                        Ok(_) => errors += 1,
                        Err(e) => {
                            errors += 1;
                            // A server that no longer accepts connections has stopped.
                            let refused = match &e {
                                ureq::Error::ConnectionFailed => true,
                                ureq::Error::Io(io) => {
                                    io.kind() == std::io::ErrorKind::ConnectionRefused
                                }
                                _ => false,
                            };
                            if refused {
                                break;
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
