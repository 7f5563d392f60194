//! Credentials and TLS of `milvus://` / `milvuss://` addresses, without an authenticating
//! Milvus server: a stub on 127.0.0.1 (started here, on a port of its own) that speaks HTTP/2 as
//! gRPC does, records the path and `authorization` header of every request, and refuses each
//! one as Milvus refuses a wrong token (gRPC status 16, UNAUTHENTICATED); told to, it first says
//! that the collection does not exist, so that creating one sends its request (gclip sends that
//! one on a connection of its own). With TLS it presents a
//! certificate signed by a CA made here, which the client trusts through `MilvusOptions::ca`
//! (`GCLIP_MILVUS_CA`).
//!
//! Every log line of the test process (all targets, TRACE) is captured, and no error or log
//! line may hold a token, in clear or as sent (base64).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gclip_search::milvus::{MilvusAddress, MilvusOptions, MilvusStore, CA_VAR};
use gclip_search::SearchError;

/// The client's deadline per call: the stub answers at once, so this only bounds a failure.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `root:st0bsecret&x` (the password holds a `&`, %-encoded in the addresses) in base64, as Milvus expects it in the `authorization` header.
const SENT: &str = "cm9vdDpzdDBic2VjcmV0Jng=";

/// What the stub saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    tls: bool,
}

/// The stub: a one-thread runtime serving 127.0.0.1:`addr.port()`; stopped when dropped.
struct Stub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Stub {
    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self::start_with(tls, false)
    }

    /// With `has_collection`, `HasCollection` is answered (no such collection); everything
    /// else is refused.
    fn start_with(tls: Option<Arc<rustls::ServerConfig>>, has_collection: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (log, tls) = (log.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(config) => {
                            if let Ok(io) =
                                tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                            {
                                refuse_all(io, log, true, has_collection).await;
                            }
                        }
                        None => refuse_all(tcp, log, false, has_collection).await,
                    }
                });
            }
        });
        Stub {
            addr,
            seen,
            runtime: Some(runtime),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn address(&self, scheme: &str, query: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/photos{query}", self.addr.port())
    }
}

/// Serves one HTTP/2 connection: records each request and answers it as Milvus answers a
/// request with a wrong token (a trailers-only gRPC response, status 16).
async fn refuse_all<T>(io: T, log: Arc<Mutex<Vec<Seen>>>, tls: bool, has_collection: bool)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        log.lock().unwrap().push(Seen {
            path: request.uri().path().to_string(),
            authorization: request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            tls,
        });
        if has_collection && request.uri().path().ends_with("/HasCollection") {
            answer_no_such_collection(respond);
            continue;
        }
        let answer = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "16")
            .header(
                "grpc-message",
                "auth check failure, please check username and password are correct",
            )
            .body(())
            .unwrap();
        let _ = respond.send_response(answer, true);
    }
}

/// Answers `HasCollection` as Milvus does for a name it does not have: a `BoolResponse` with a
/// success status and `false`, framed as gRPC (no compression, 4-byte length), then status 0.
fn answer_no_such_collection(mut respond: h2::server::SendResponse<bytes::Bytes>) {
    use prost::Message;
    let reply = milvus::proto::milvus::BoolResponse {
        status: Some(milvus::proto::common::Status::default()),
        value: false,
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
    framed.extend_from_slice(&reply);
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut stream) = respond.send_response(head, false) else {
        return;
    };
    let _ = stream.send_data(framed.into(), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = stream.send_trailers(trailers);
}

/// A CA made here, and a server configuration with a certificate for 127.0.0.1 it signed.
fn tls_pair() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "gclip test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    // gRPC clients insist on HTTP/2 being negotiated.
    config.alpn_protocols = vec![b"h2".to_vec()];
    (ca.pem(), Arc::new(config))
}

/// Everything logged by this test process, at every level.
fn logged() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        log
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Neither the password nor the header value in `text`.
fn assert_no_token(text: &str) {
    assert!(
        !text.contains("st0bsecret") && !text.contains(SENT),
        "the token shows: {text}"
    );
}

fn options(ca: Option<PathBuf>) -> MilvusOptions {
    MilvusOptions {
        timeout: TIMEOUT,
        ca,
        ..Default::default()
    }
}

/// Opens the collection at `address` (the token from the address, or `env_token` as
/// `GCLIP_MILVUS_TOKEN`); the error, displayed and debugged, checked for the token. Bounded.
fn open_error(address: &str, env_token: Option<&str>, ca: Option<PathBuf>) -> String {
    logged();
    let a = MilvusAddress::parse_with(address, |name| {
        (name == gclip_search::milvus::TOKEN_VAR)
            .then(|| env_token.map(String::from))
            .flatten()
    })
    .unwrap();
    let start = Instant::now();
    let e = match MilvusStore::open(&a, options(ca)) {
        Ok(_) => panic!("{address}: a stub that refuses everything was opened"),
        Err(e) => e,
    };
    assert!(start.elapsed() < 2 * TIMEOUT, "{:?}", start.elapsed());
    let shown = format!("{e} | {e:?}");
    assert_no_token(&shown);
    shown
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-milvus-stub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_token_is_sent_as_milvus_expects_and_a_refusal_names_the_address() {
    let stub = Stub::start(None);
    let shown_address = stub.address("milvus", "");
    let e = open_error(
        &stub.address("milvus", "?token=root:st0bsecret%26x"),
        None,
        None,
    );
    assert!(
        e.contains(&format!("collection {shown_address}:"))
            && e.contains("the server refused the credentials (auth check failure")
            && e.contains("GCLIP_MILVUS_TOKEN"),
        "{e}"
    );
    // One request (a refusal is not retried), the first call of opening, with the token as the
    // `authorization` metadata: base64 of USER:PASSWORD.
    let seen = stub.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].path,
        "/milvus.proto.milvus.MilvusService/HasCollection"
    );
    assert_eq!(seen[0].authorization.as_deref(), Some(SENT));
    assert!(!seen[0].tls);

    // The same from GCLIP_MILVUS_TOKEN; and without a token, no header at all.
    open_error(&stub.address("milvus", ""), Some("root:st0bsecret&x"), None);
    open_error(&stub.address("milvus", ""), None, None);
    let seen = stub.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].authorization.as_deref(), Some(SENT));
    assert_eq!(seen[2].authorization, None);

    // Also through the collection API, as the command line opens it.
    let e = gclip_search::Collection::open(Path::new(
        &stub.address("milvus", "?token=root:st0bsecret%26x"),
    ))
    .err()
    .unwrap();
    assert!(matches!(e, SearchError::Remote { .. }), "{e:?}");
    assert_no_token(&format!("{e} {e:?}"));

    let log = String::from_utf8_lossy(&logged().lock().unwrap()).into_owned();
    assert!(
        !log.is_empty(),
        "nothing was logged: the check below would be empty"
    );
    assert_no_token(&log);
}

#[test]
fn milvuss_speaks_tls_and_trusts_the_ca_of_gclip_milvus_ca() {
    let (ca_pem, config) = tls_pair();
    let dir = scratch("tls");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let stub = Stub::start(Some(config));
    let with_token = stub.address("milvuss", "?token=root:st0bsecret%26x");

    // Trusting the CA: the TLS handshake and HTTP/2 succeed, the request carries the token.
    let e = open_error(&with_token, None, Some(ca.clone()));
    assert!(
        e.contains(&format!("collection {}:", stub.address("milvuss", "")))
            && e.contains("refused the credentials"),
        "{e}"
    );
    let seen = stub.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].tls);
    assert_eq!(seen[0].authorization.as_deref(), Some(SENT));

    // Without the CA the certificate is not trusted: refused before any request is sent.
    let e = open_error(&with_token, None, None);
    assert!(
        e.contains(&stub.address("milvuss", "")) && e.contains("cannot connect"),
        "{e}"
    );
    assert!(e.contains("certificate"), "{e}");
    // Plain text to a TLS server: no request gets through either.
    let e = open_error(
        &stub.address("milvus", "?token=root:st0bsecret%26x"),
        None,
        None,
    );
    assert!(e.contains(&stub.address("milvus", "")), "{e}");
    assert_eq!(stub.seen().len(), 1, "{:?}", stub.seen());

    // milvuss:// to a plain-text server fails in the TLS handshake: nothing goes in clear.
    let plain = Stub::start(None);
    let e = open_error(
        &plain.address("milvuss", "?token=root:st0bsecret%26x"),
        None,
        Some(ca.clone()),
    );
    assert!(
        e.contains(&plain.address("milvuss", "")) && e.contains("cannot connect"),
        "{e}"
    );
    assert!(plain.seen().is_empty(), "{:?}", plain.seen());

    // A CA file that is not there is an error naming the variable and the file.
    let missing = dir.join("no-such-ca.pem");
    let e = open_error(&with_token, None, Some(missing.clone()));
    assert!(
        e.contains(CA_VAR) && e.contains(&missing.display().to_string()),
        "{e}"
    );
    // And one that holds no certificate.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = open_error(&with_token, None, Some(junk));
    assert!(
        e.contains(CA_VAR) && e.contains("no PEM certificate"),
        "{e}"
    );
    assert_eq!(stub.seen().len(), 1, "{:?}", stub.seen());

    let log = String::from_utf8_lossy(&logged().lock().unwrap()).into_owned();
    assert_no_token(&log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Creating a collection (with a partition key, whose request gclip sends on a connection of
/// its own, the client's call being unable to mark one) sends the token as every other call
/// does, over TLS when asked, and a refusal names the address and what was being done.
#[test]
fn creating_a_collection_sends_the_token_too() {
    let (ca_pem, config) = tls_pair();
    let dir = scratch("create");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    for (stub, scheme) in [
        (Stub::start_with(None, true), "milvus"),
        (Stub::start_with(Some(config), true), "milvuss"),
    ] {
        logged();
        let address = stub.address(scheme, "?token=root:st0bsecret%26x");
        let a = MilvusAddress::parse_with(&address, |_| None).unwrap();
        let info = gclip_search::store::CollectionInfo {
            model: gclip_search::ModelIdentity {
                model: "m".into(),
                arch: None,
                dim: 4,
                precision: Default::default(),
            },
            spec: gclip_search::EmbedSpec::image(),
            created: 0,
        };
        let options = MilvusOptions {
            partition_key: Some("tenant".into()),
            ..options(Some(ca.clone()))
        };
        let e = match MilvusStore::create(&a, info, options) {
            Ok(_) => panic!("{address}: a stub that refuses creating created"),
            Err(e) => format!("{e} | {e:?}"),
        };
        assert_no_token(&e);
        assert!(
            e.contains(&format!("collection {}:", stub.address(scheme, "")))
                && e.contains("creating the collection: the server refused the credentials"),
            "{e}"
        );
        let seen = stub.seen();
        let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/milvus.proto.milvus.MilvusService/HasCollection",
                "/milvus.proto.milvus.MilvusService/CreateCollection"
            ]
        );
        for s in &seen {
            assert_eq!(s.authorization.as_deref(), Some(SENT), "{seen:?}");
            assert_eq!(s.tls, scheme == "milvuss", "{seen:?}");
        }
    }
    let log = String::from_utf8_lossy(&logged().lock().unwrap()).into_owned();
    assert_no_token(&log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GCLIP_MILVUS_CA` is read into the options like the other cluster settings.
#[test]
fn the_ca_file_comes_from_the_environment() {
    let o =
        MilvusOptions::from_env_with(|n| (n == CA_VAR).then(|| "/etc/ca.pem".to_string())).unwrap();
    assert_eq!(o.ca.as_deref(), Some(Path::new("/etc/ca.pem")));
    let o = MilvusOptions::from_env_with(|n| (n == CA_VAR).then(String::new)).unwrap();
    assert_eq!(o.ca, None);
}
