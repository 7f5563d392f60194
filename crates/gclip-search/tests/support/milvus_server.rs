//! A real Milvus server for tests (the standalone server of the `milvus` Python package,
//! 2.3.5), one per test process, started on free loopback ports by the first test that asks and
//! stopped when the process ends. Shared by the Milvus tests of several crates (`#[path]`-included:
//! `mod milvus_server;`).
//!
//! The server is found through `GCLIP_MILVUS_SERVER` (the `milvus-server` script of a virtual
//! environment with `pip install milvus`), else in `target/milvus-venv`; `tools/test.sh` and
//! `.ci/run` install it there. Without it the tests fail and say how to install it: CI must
//! not pass by skipping them.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gclip_search::milvus::{MilvusAddress, MilvusOptions, MilvusStore};

/// Longest wait for the server to answer (it unpacks its binaries on first start: ~10 s).
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub fn server_script() -> PathBuf {
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
pub fn free_port() -> u16 {
    listen_ports::<1>()[0]
}

/// The server's components listen on ports of their own (root coordinator 53100, data
/// coordinator 13333, …), by default inside the range the system hands out to outgoing
/// connections; the script checks them only on 127.0.0.1 while the server binds every address,
/// IPv6 included. In CI (stop 35) both starts of a test failed on "listen tcp :53100: address
/// already in use" right after the previous test's server had stopped. So every port is chosen
/// here, below the ephemeral range (no outgoing connection can hold one) and free on both
/// loopback addresses.
const SERVER_PORTS: [&str; 10] = [
    "--proxy-port",
    "--proxy-internal-port",
    "--root-coord-port",
    "--query-coord-port",
    "--query-node-port",
    "--index-coord-port",
    "--index-node-port",
    "--data-coord-port",
    "--data-node-port",
    "--etcd-port",
];

/// The system's range for outgoing connections' ports (`ip_local_port_range`).
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text
        .split_whitespace()
        .filter_map(|n| n.parse::<u16>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) if low <= high => low..=high,
        _ => 32768..=60999,
    }
}

/// Holds `port` on 127.0.0.1 and, where the machine has IPv6, on ::1; `None` when either is
/// taken.
fn hold_on_loopback(port: u16) -> Option<Vec<TcpListener>> {
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok()?;
    match TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, port)) {
        Ok(v6) => Some(vec![v4, v6]),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
        // No IPv6 here (no ::1, or no IPv6 at all): nothing can hold the port there either.
        Err(_) => Some(vec![v4]),
    }
}

/// `N` different ports free on both loopback addresses, outside the ephemeral range (so that
/// no outgoing connection takes one before the server binds it), all held until all are chosen.
/// The search starts at a place set by this process and the clock, so that test binaries
/// started one after another do not walk the same ports.
pub fn listen_ports<const N: usize>() -> [u16; N] {
    let ephemeral = ephemeral_ports();
    // A pool of up to 16,384 ports below the ephemeral range, from 1,024 up.
    let top = ephemeral.start().saturating_sub(1).max(2048);
    let bottom = top.saturating_sub(16_384).max(1024);
    let pool = u32::from(top - bottom) + 1;
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let mut held = Vec::new();
    let mut chosen = Vec::new();
    for step in 0..pool {
        if chosen.len() == N {
            break;
        }
        let port = bottom + ((seed.wrapping_add(step.wrapping_mul(7919))) % pool) as u16;
        if ephemeral.contains(&port) || chosen.contains(&port) {
            continue;
        }
        if let Some(listeners) = hold_on_loopback(port) {
            held.extend(listeners);
            chosen.push(port);
        }
    }
    chosen.try_into().unwrap_or_else(|c: Vec<u16>| {
        panic!(
            "only {} free loopback ports below {bottom}..={top}",
            c.len()
        )
    })
}

/// How many times a server that dies while starting is started again, on new ports and a new
/// data folder, before the test fails with every attempt's log.
const START_ATTEMPTS: usize = 3;

/// Milvus' proxy sends its time tick every 200 ms by default, and a search at Strong consistency
/// waits for the tick after it: about 0.4 s per search, most of the tests' time (the first test
/// of tests/milvus.rs took 76 s). At 10 ms it took 15 s. Nothing the tests check depends on the
/// interval.
const EXTRA_CONFIG: [&str; 1] = ["proxy.timeTickInterval=10"];

impl Server {
    /// This process's server. Its tests share it (started by the first that asks) and run on it
    /// at once, each on collections of names of its own: a start costs about 7 s and a stop up
    /// to 10 s, more than most tests' own work, and tests/milvus.rs took 97 s taking turns and
    /// 58 s at once. A static is never dropped: the server stops when the process ends, through
    /// the watcher of `Server::spawn`.
    pub fn shared() -> &'static Server {
        static SERVER: std::sync::OnceLock<Server> = std::sync::OnceLock::new();
        SERVER.get_or_init(Server::start)
    }
}

/// The server process group, stopped when dropped (a failing test included), and also when this
/// test process ends without dropping it (the shared server, or a test killed by a timeout): see
/// `Server::spawn`.
pub struct Server {
    child: Child,
    pub port: u16,
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
        let ports: [u16; SERVER_PORTS.len() + 1] = listen_ports();
        let port = ports[0];
        let etcd_client = ports[SERVER_PORTS.len() - 1];
        let etcd_peer = ports[SERVER_PORTS.len()];
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
            .args(EXTRA_CONFIG.iter().flat_map(|c| ["--extra-config", c]))
            .args(
                SERVER_PORTS
                    .iter()
                    .zip(ports)
                    .flat_map(|(flag, port)| [flag.to_string(), port.to_string()]),
            )
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

    pub fn address(&self, name: &str) -> String {
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
