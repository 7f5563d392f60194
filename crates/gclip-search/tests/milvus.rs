//! Collections on a real Milvus server (the standalone server of the `milvus` Python package,
//! 2.3.5), started here on a free loopback port and stopped at the end, checked against the
//! embedded backend on the same documents.
//!
//! The server is found through `GCLIP_MILVUS_SERVER` (the `milvus-server` script of a virtual
//! environment with `pip install milvus`), else in `target/milvus-venv`; `tools/test.sh` and
//! `.ci/run` install it there. Without it these tests fail and say how to install it: CI must
//! not pass by skipping them.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gclip_search::document::normalize;
use gclip_search::milvus::{MilvusAddress, MilvusOptions, MilvusStore};
use gclip_search::sqlite::{SqliteStore, StoreOptions};
use gclip_search::store::{CollectionInfo, FileState, Store};
use gclip_search::{
    Collection, EmbedSpec, Filter, Hit, ModelIdentity, NewDocument, SearchError, SearchMode,
    SearchRequest,
};
use serde_json::json;

const DIM: usize = 16;
/// Longest wait for the server to answer (it unpacks its binaries on first start: ~10 s).
const START_TIMEOUT: Duration = Duration::from_secs(120);

fn server_script() -> PathBuf {
    if let Some(p) = std::env::var_os("GCLIP_MILVUS_SERVER") {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fallback = workspace.join("target/milvus-venv/bin/milvus-server");
    if fallback.exists() {
        return fallback;
    }
    panic!(
        "no Milvus server for the Milvus tests: install it with\n  \
         python3 -m venv target/milvus-venv && target/milvus-venv/bin/pip install milvus==2.3.5\n\
         (tools/test.sh does), or set GCLIP_MILVUS_SERVER to a milvus-server script"
    );
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` different ports nothing listens on right now (all held open until all are chosen, so
/// that the system cannot hand out one of them twice).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

/// How many times a server that dies while starting is started again, on new ports and a new
/// data folder, before the test fails with every attempt's log.
const START_ATTEMPTS: usize = 2;

/// One server at a time on this machine (tests run in parallel): two would share its two cores
/// while starting, and each holds about half a gigabyte. A test takes its turn before starting its
/// server, and the turn ends after the server is dropped (locals drop in reverse order).
fn one_server_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The server process group, stopped when dropped (a failing test included), and also when this
/// test process dies without dropping it (killed by a timeout): see `Server::spawn`.
struct Server {
    child: Child,
    port: u16,
    data: PathBuf,
}

/// Why a start failed, with the server's own words.
struct StartFailure {
    what: String,
    log: String,
}

impl Server {
    fn start() -> Self {
        let script = server_script();
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut server = Self::spawn(&script, attempt);
            match server.wait_ready() {
                Ok(()) => return server,
                Err(failure) => {
                    eprintln!("Milvus start {attempt}: {}", failure.what);
                    failures.push(failure);
                }
            }
        }
        let report: Vec<String> = failures
            .iter()
            .enumerate()
            .map(|(i, f)| format!("start {}: {}\n{}", i + 1, f.what, f.log))
            .collect();
        panic!(
            "the Milvus server did not start ({START_ATTEMPTS} attempts):\n{}",
            report.join("\n\n")
        );
    }

    /// Starts the `milvus-server` script with every port it listens on chosen here, on
    /// 127.0.0.1. Left to itself, its embedded etcd listens on localhost:2379 and :2380 whatever
    /// the script is told, so a second server on the machine (or one left over) made it panic.
    fn spawn(script: &Path, attempt: usize) -> Self {
        let [port, etcd_client, etcd_peer] = free_ports();
        let data = std::env::temp_dir().join(format!(
            "gclip-milvus-{}-{port}-{attempt}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        // The embedded etcd reads its listeners from this file (Milvus's `etcd.config.path`,
        // set through the environment, which Milvus reads over its configuration file).
        let etcd_config = data.join("embed-etcd.yaml");
        let peer = format!("http://127.0.0.1:{etcd_peer}");
        let client = format!("http://127.0.0.1:{etcd_client}");
        std::fs::write(
            &etcd_config,
            format!(
                "listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n\
                 initial-cluster: default={peer}\nlisten-client-urls: {client}\n\
                 advertise-client-urls: {client}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(data.join("server.log")).unwrap();
        // A watcher reads a pipe that only this process writes to: when this process ends,
        // however it ends, the pipe closes and the watcher stops the server's process group
        // (SIGINT lets the script stop the server; whatever is left after 10 s is killed) and
        // removes the data folder (half a gigabyte: the server unpacks its binaries there). It
        // runs in a session of its own, out of the group's reach; a non-interactive shell gives
        // background commands /dev/null as input, hence the pipe on fd 3.
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                r#"exec 3<&0
setsid sh -c 'cat >/dev/null; kill -INT -$1; sleep 10; kill -KILL -$1; rm -rf "$2"' \
  watcher $$ "$GCLIP_MILVUS_TEST_DATA" <&3 >/dev/null 2>&1 &
exec "$0" "$@" </dev/null 3<&-"#,
            )
            .arg(script)
            .arg("--data")
            .arg(&data)
            .arg("--proxy-port")
            .arg(port.to_string())
            .arg("--etcd-port")
            .arg(etcd_client.to_string())
            .env("GCLIP_MILVUS_TEST_DATA", &data)
            .env("ETCD_CONFIG_PATH", &etcd_config)
            .env("ETCD_ENDPOINTS", format!("127.0.0.1:{etcd_client}"))
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: the script starts the server as a child, and stopping
            // must reach all of them.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", script.display()));
        Server { child, port, data }
    }

    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let start = Instant::now();
        let at = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let probe =
            MilvusAddress::parse_with(&format!("milvus://127.0.0.1:{}/probe", self.port), |_| None)
                .unwrap();
        let options = MilvusOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        };
        loop {
            // The script does not exit when the server dies early: the server's own log says so.
            if self
                .server_stderr()
                .lines()
                .any(|l| l.starts_with("panic:"))
            {
                return Err(self.failure("the server panicked while starting"));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failure(&format!("the script exited ({status}) before answering")));
            }
            if TcpStream::connect_timeout(&at, Duration::from_millis(200)).is_ok()
                && MilvusStore::exists(&probe, &options).is_ok()
            {
                eprintln!(
                    "Milvus answered on port {} after {:.1} s",
                    self.port,
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(self.failure(&format!(
                    "no answer on 127.0.0.1:{} within {START_TIMEOUT:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn server_stderr(&self) -> String {
        std::fs::read_to_string(self.data.join("logs/milvus-stderr.log")).unwrap_or_default()
    }

    /// The script's output, the server's error lines, and its standard error from a panic on
    /// (or its last lines).
    fn failure(&self, what: &str) -> StartFailure {
        let read = |p: &str| std::fs::read_to_string(self.data.join(p)).unwrap_or_default();
        let script = read("server.log");
        let server = read("logs/milvus-stdout.log");
        let errors: Vec<&str> = server
            .lines()
            .filter(|l| l.contains("[ERROR]") || l.contains("[FATAL]"))
            .collect();
        let stderr = self.server_stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        let from = lines
            .iter()
            .position(|l| l.starts_with("panic:"))
            .unwrap_or(lines.len().saturating_sub(20));
        StartFailure {
            what: what.to_string(),
            log: format!(
                "script output:\n{script}\nserver errors:\n{}\nserver stderr:\n{}",
                errors[errors.len().saturating_sub(10)..].join("\n"),
                lines[from..lines.len().min(from + 40)].join("\n")
            ),
        }
    }

    fn address(&self, name: &str) -> String {
        format!("milvus://127.0.0.1:{}/{name}", self.port)
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGINT lets the script stop the server; whatever is left after 10 s is killed.
        self.signal_group("INT");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.signal_group("KILL");
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn unit_vector(seed: u64) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM as u64)
        .map(|i| (splitmix(seed * 1_000_003 + i) % 20_001) as f32 / 10_000.0 - 1.0)
        .collect();
    normalize(&mut v);
    v
}

const COLOURS: [&str; 3] = ["red", "blue", "green"];

fn document(i: u64) -> NewDocument {
    let mut tags = vec!["all"];
    if i.is_multiple_of(3) {
        tags.push("summer");
    }
    if i.is_multiple_of(4) {
        tags.push("winter");
    }
    let fields = json!({
        "colour": COLOURS[(i % 3) as usize],
        "price": (i * 7 % 50) as f64 + 0.5,
        "tags": tags,
        "date": format!("2024-{:02}-01", i % 12 + 1),
        "image": format!("/images/{i}.png"),
    });
    NewDocument {
        id: format!("d{i:03}"),
        fields: fields.as_object().cloned().unwrap(),
        vector: unit_vector(i),
        source: i.is_multiple_of(5).then(|| FileState {
            path: format!("/images/{i}.png"),
            size: i * 100,
            mtime_ns: i as i64 * 1_000,
            hash: format!("{i:032x}"),
        }),
    }
}

fn identity(model: &str) -> ModelIdentity {
    ModelIdentity {
        model: model.into(),
        arch: None,
        dim: DIM,
        precision: Default::default(),
    }
}

fn request(vector: Vec<f32>, limit: usize, offset: usize, filter: Option<&str>) -> SearchRequest {
    SearchRequest {
        vector: Some(vector),
        limit,
        offset,
        filter: filter.map(|f| Filter::parse(f).unwrap()),
        mode: SearchMode::Exact,
        ..Default::default()
    }
}

fn ids(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

/// Same ids in the same order, same fields and image, scores equal to float rounding.
fn assert_same_hits(milvus: &[Hit], embedded: &[Hit], what: &str) {
    assert_eq!(ids(milvus), ids(embedded), "{what}");
    for (m, e) in milvus.iter().zip(embedded) {
        assert!(
            (m.score - e.score).abs() < 1e-5,
            "{what}: {} {} vs {}",
            m.id,
            m.score,
            e.score
        );
        assert_eq!(m.fields, e.fields, "{what}: fields of {}", m.id);
        assert_eq!(m.image, e.image, "{what}: image of {}", m.id);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-milvus-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_milvus_collection_answers_as_the_embedded_one_does() {
    let _turn = one_server_at_a_time();
    let server = Server::start();
    let address = server.address("products");
    let info = CollectionInfo {
        model: identity("test-model"),
        spec: EmbedSpec::image(),
        created: 0,
    };

    // Created through the collection API, as the CLI does, and beside it the embedded backend.
    let c = Collection::create(Path::new(&address), info.model.clone(), info.spec.clone()).unwrap();
    assert!(c.dir().is_none());
    assert_eq!(c.location().to_string(), address);
    let dir = scratch("embedded");
    let embedded = SqliteStore::create(&dir, info.clone(), StoreOptions::default()).unwrap();
    let docs: Vec<NewDocument> = (0..80).map(document).collect();
    for batch in docs.chunks(25) {
        let r = c.upsert(batch.to_vec()).unwrap();
        assert_eq!(r.count, batch.len());
        embedded.upsert(batch.to_vec()).unwrap();
    }
    assert_eq!(c.len(), 80);

    // Exact top-k, with filters of every kind that translates, and pages.
    let filters = [
        None,
        Some("colour = red"),
        Some("price >= 10 AND price < 30.5"),
        Some("tags:summer"),
        Some("NOT colour = blue"),
        Some("colour != red OR price > 40"),
        Some("tags = winter AND NOT price < 10"),
        Some("date >= '2024-06-01'"),
        Some("id = d007 OR id = d012"),
        Some("id < d010"),
        Some("colour != red AND colour != green"),
    ];
    for q in 0..4u64 {
        let v = unit_vector(1_000 + q);
        for f in filters {
            for (limit, offset) in [(10, 0), (5, 5), (7, 3)] {
                let r = request(v.clone(), limit, offset, f);
                let m = c.search(&r).unwrap_or_else(|e| panic!("{f:?}: {e}"));
                let e = embedded.search(&r).unwrap();
                assert_same_hits(
                    &m,
                    &e,
                    &format!("query {q} filter {f:?} limit {limit} offset {offset}"),
                );
            }
        }
    }
    // The default mode (HNSW, ef from the embedded index's defaults) finds the same here.
    let mut auto = request(unit_vector(7), 10, 0, None);
    auto.mode = SearchMode::Auto;
    assert_same_hits(
        &c.search(&auto).unwrap(),
        &embedded.search(&auto).unwrap(),
        "auto",
    );

    // Reading back: documents, vectors, listing in id order, file states.
    let d5 = c.get("d005").unwrap().unwrap();
    assert_eq!(d5.fields, docs[5].fields);
    assert_eq!(c.vector("d005").unwrap().unwrap(), docs[5].vector);
    assert!(c.get("nope").unwrap().is_none());
    for (skip, limit) in [(0, 100), (10, 5), (75, 10), (200, 5)] {
        assert_eq!(
            c.list(skip, limit).unwrap(),
            embedded.list(skip, limit).unwrap(),
            "list {skip} {limit}"
        );
    }
    let mut sources = c.sources().unwrap();
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = embedded.sources().unwrap();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(sources, want);
    let touched = vec![(
        "d010".to_string(),
        FileState {
            path: "/moved/10.png".into(),
            size: 1,
            mtime_ns: 2,
            hash: "ab".into(),
        },
    )];
    assert_eq!(c.update_sources(&touched).unwrap().count, 1);
    embedded.update_sources(&touched).unwrap();
    assert!(c.sources().unwrap().contains(&touched[0]));
    assert_eq!(c.get("d010").unwrap().unwrap().fields, docs[10].fields);

    // Updates: fields kept with the vector, a replaced vector, both visible at once.
    let new_fields = json!({"colour": "purple", "price": 1.0})
        .as_object()
        .cloned()
        .unwrap();
    c.update_fields("d003", new_fields.clone()).unwrap();
    embedded.update_fields("d003", new_fields.clone()).unwrap();
    assert_eq!(c.get("d003").unwrap().unwrap().fields, new_fields);
    assert_eq!(c.vector("d003").unwrap().unwrap(), docs[3].vector);
    assert!(matches!(
        c.update_fields("nope", new_fields.clone()),
        Err(SearchError::NotFound(_))
    ));
    let mut replaced = document(4);
    replaced.vector = unit_vector(4_004);
    c.upsert(vec![replaced.clone()]).unwrap();
    embedded.upsert(vec![replaced.clone()]).unwrap();
    assert_eq!(c.vector("d004").unwrap().unwrap(), replaced.vector);
    let purple = request(unit_vector(3), 5, 0, Some("colour = purple"));
    assert_eq!(ids(&c.search(&purple).unwrap()), ["d003"]);

    // Deletes count what went.
    let r = c
        .delete(&["d001".into(), "d002".into(), "nope".into()])
        .unwrap();
    assert_eq!(r.count, 2);
    embedded.delete(&["d001".into(), "d002".into()]).unwrap();
    assert!(c.get("d001").unwrap().is_none());
    assert_eq!(c.len(), 78);
    let v = unit_vector(2);
    assert_same_hits(
        &c.search(&request(v.clone(), 10, 0, None)).unwrap(),
        &embedded.search(&request(v.clone(), 10, 0, None)).unwrap(),
        "after delete",
    );

    // Listing walks pages in id order whatever their size.
    let small_pages = MilvusStore::open(
        &MilvusAddress::parse_with(&address, |_| None).unwrap(),
        MilvusOptions {
            page: 7,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        small_pages.list(0, 100).unwrap(),
        embedded.list(0, 100).unwrap()
    );
    assert_eq!(
        small_pages.list(20, 9).unwrap(),
        embedded.list(20, 9).unwrap()
    );
    drop(small_pages);

    // Reopened: the same collection, model and answers.
    drop(c);
    let c = Collection::open(Path::new(&address)).unwrap();
    assert_eq!(c.info().model, info.model);
    assert_eq!(c.info().spec, info.spec);
    assert_eq!(c.len(), 78);
    let r = request(v.clone(), 10, 0, Some("tags:summer"));
    assert_same_hits(
        &c.search(&r).unwrap(),
        &embedded.search(&r).unwrap(),
        "reopened",
    );

    // Bad input: each a clear error naming the collection address.
    let other =
        Collection::open_or_create(Path::new(&address), Some(identity("other-model")), None);
    assert!(
        matches!(other, Err(SearchError::ModelMismatch { .. })),
        "{:?}",
        other.err()
    );
    let mut short = document(90);
    short.vector.pop();
    assert!(matches!(
        c.upsert(vec![short]),
        Err(SearchError::Dimension { got: 15, want: 16 })
    ));
    assert!(matches!(
        c.search(&request(vec![0.5; 15], 5, 0, None)),
        Err(SearchError::Dimension { .. })
    ));
    let e = c
        .search(&request(v.clone(), 5, 0, Some("sold AND price > 3")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&address) && e.contains("bare field `sold`"),
        "{e}"
    );
    let mut hybrid = request(v.clone(), 5, 0, None);
    hybrid.text = Some("red".into());
    let e = c.search(&hybrid).unwrap_err().to_string();
    assert!(e.contains(&address) && e.contains("BM25"), "{e}");
    let e = c
        .search(&request(v.clone(), 10, 16_380, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("16384"), "{e}");

    // A token never shows in errors (this server checks none).
    let with_token = format!("{}?token=root:sup3rsecret", server.address("absent"));
    let e = Collection::open(Path::new(&with_token)).err().unwrap();
    assert!(matches!(e, SearchError::NoCollectionAt(_)), "{e:?}");
    let shown = format!("{e} {e:?}");
    assert!(
        !shown.contains("sup3rsecret") && shown.contains(&server.address("absent")),
        "{shown}"
    );

    // A collection another tool made (Milvus' REST quick create: int64 ids, no gclip model).
    let body = json!({"collectionName": "foreign", "dimension": DIM, "metricType": "IP"});
    let reply = ureq::post(&format!(
        "http://127.0.0.1:{}/v1/vector/collections/create",
        server.port
    ))
    .header("Content-Type", "application/json")
    .send(body.to_string())
    .unwrap()
    .into_body()
    .read_to_string()
    .unwrap();
    assert!(reply.contains("200"), "{reply}");
    let e = Collection::open(Path::new(&server.address("foreign")))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&server.address("foreign")) && e.contains("not a gclip collection"),
        "{e}"
    );

    // Creating where a collection exists is refused.
    let again = Collection::create(Path::new(&address), info.model.clone(), info.spec.clone());
    assert!(again
        .err()
        .unwrap()
        .to_string()
        .contains("already holds a collection"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_server_is_a_prompt_error_naming_the_address() {
    // A loopback port nothing listens on.
    let port = free_port();
    let address = format!("milvus://127.0.0.1:{port}/photos?token=root:hunter2");
    let start = Instant::now();
    let e = Collection::open(Path::new(&address)).err().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let shown = format!("{e} {e:?}");
    assert!(
        shown.contains(&format!("milvus://127.0.0.1:{port}/photos")),
        "{shown}"
    );
    assert!(shown.contains("cannot connect"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    // `exists` says true when it cannot ask, so that opening reports why.
    assert!(Collection::exists(Path::new(&address)));
}

/// Cluster settings: the shards a collection is created with, and a replica count the server
/// cannot give (a standalone server has one query node) refused with the address and the count.
#[test]
fn shards_are_set_at_creation_and_an_impossible_replica_count_is_refused() {
    let _turn = one_server_at_a_time();
    let server = Server::start();
    let info = CollectionInfo {
        model: identity("test-model"),
        spec: EmbedSpec::image(),
        created: 0,
    };
    let options = |shards: Option<u32>, replicas: Option<u32>| MilvusOptions {
        shards,
        replicas,
        ..Default::default()
    };
    // The server's refusal, after the address and what was asked; not a deadline passing.
    let assert_refused = |e: String, address: &str| {
        assert!(e.contains(address) && e.contains("2 replicas"), "{e}");
        assert!(
            !e.contains("no answer within"),
            "refused, not timed out: {e}"
        );
    };
    for shards in [2, 3] {
        let address = server.address(&format!("sharded{shards}"));
        let a = MilvusAddress::parse_with(&address, |_| None).unwrap();
        let store = MilvusStore::create(&a, info.clone(), options(Some(shards), None)).unwrap();
        assert_eq!(store.shards().unwrap(), shards, "{address}");
        store.upsert((0..10).map(document).collect()).unwrap();
        assert_eq!(store.len(), 10);
        drop(store);
        // Reopened with the replica count it is loaded with, or none asked: as it was.
        for replicas in [None, Some(1)] {
            let store = MilvusStore::open(&a, options(None, replicas)).unwrap();
            assert_eq!((store.shards().unwrap(), store.len()), (shards, 10));
        }
        let e = MilvusStore::open(&a, options(None, Some(2)))
            .err()
            .unwrap()
            .to_string();
        assert_refused(e, &address);
    }
    // An unloaded collection asked for more replicas than the server has query nodes.
    let address = server.address("two_replicas");
    let a = MilvusAddress::parse_with(&address, |_| None).unwrap();
    let e = MilvusStore::create(&a, info.clone(), options(None, Some(2)))
        .err()
        .unwrap()
        .to_string();
    assert_refused(e, &address);
}
