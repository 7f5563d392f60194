//! gclip-server: an HTTP API and a web page over gclip collections.
//!
//! Routes (JSON in and out; errors are `{"error": {"code", "message"}}` with a 4xx status for
//! bad input): `GET /api/health`, `GET /metrics`, `GET /api/openapi.json`, collections
//! (`GET/POST /api/collections`, `GET/DELETE /api/collections/{name}`), documents
//! (`POST /api/collections/{name}/documents`, `GET/DELETE …/documents/{id}`,
//! `GET …/documents/{id}/thumbnail`), `POST /api/collections/{name}/search`, `POST /api/embed`,
//! `POST /api/classify`, and the web page at `/`.
//!
//! Model work goes through one [`batcher::ModelWorker`] per model, which batches concurrent
//! requests; collection work runs on blocking threads so the async runtime stays free.

pub mod batcher;
pub mod bench;
pub mod error;
pub mod metrics;
mod openapi;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use candle_core::Device;
use gclip::embed::{Embedder, LoadOptions};
use gclip::model::Precision;
use gclip_search::encoder::Encoder;
use gclip_search::ingest::{add_documents, document_from_fields, update_document, InputDocument};
use gclip_search::query::{query_vector, run_search, SearchOptions};
use gclip_search::roots::FileRoots;
use gclip_search::{
    model_identity, Collection, EmbedSpec, Fields, Filter, Fusion, ModelIdentity, QueryInput,
    QueryPart, SearchError,
};
use serde::Deserialize;
use serde_json::{json, Value};

pub use batcher::{BatchConfig, ModelWorker, QueryEncoder};
pub use error::ApiError;
use metrics::Metrics;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; loopback unless asked otherwise.
    pub addr: SocketAddr,
    /// Collection directories to serve (named by their last path component).
    pub collections: Vec<PathBuf>,
    /// Where collections created through the API live (none: creating is refused).
    pub root: Option<PathBuf>,
    /// Key required for writes (`Authorization: Bearer KEY` or `X-API-Key: KEY`).
    pub api_key: Option<String>,
    /// Require the key for reads too.
    pub protect_reads: bool,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most results one search may ask for (limit + offset).
    pub max_results: usize,
    /// Folders local image files may be read from (beyond those each collection recorded when
    /// the CLI indexed it); clients may name files only under these.
    pub files_roots: Vec<PathBuf>,
    /// The URL clients reach the server by, when not its address (a reverse proxy, a DNS
    /// name): its host is accepted in the `Host` header of a server without an API key.
    pub public_url: Option<String>,
    /// The precision models run in: `None` runs each collection's model in the precision its
    /// vectors were made with (and the default model in fp32).
    pub precision: Option<Precision>,
    pub batch: BatchConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            collections: Vec::new(),
            root: None,
            api_key: None,
            protect_reads: false,
            max_body_bytes: 16 * 1024 * 1024,
            max_results: 1000,
            files_roots: Vec::new(),
            public_url: None,
            precision: None,
            batch: BatchConfig::default(),
        }
    }
}

/// A collection being served.
pub struct Served {
    pub name: String,
    pub collection: Collection,
}

/// Everything the handlers share.
pub struct AppState {
    config: ServerConfig,
    collections: RwLock<BTreeMap<String, Arc<Served>>>,
    models: Mutex<HashMap<String, Arc<ModelWorker>>>,
    metrics: Metrics,
    started: Instant,
    /// The operator's `--files-root` folders, canonical.
    files_roots: FileRoots,
    /// Host names (lower case) a keyless server answers to besides IP addresses and localhost.
    allowed_hosts: Vec<String>,
}

/// What a client is told for a model file it may not use.
pub const MODEL_OUTSIDE_ROOTS: &str = "model files must lie under the server's --files-root folders (or give a Hugging Face model id)";

/// A name usable in URLs and as a directory name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// What one request may ask for. Text beyond a model's context (77 tokens for CLIP, a few
/// hundred bytes) is cut anyway, so the text limits leave ample room for real queries while
/// keeping a request's cleaning and tokenising to microseconds.
pub mod limits {
    /// Bytes of one query text, caption or label.
    pub const MAX_TEXT_BYTES: usize = 16 * 1024;
    /// Texts and images in one `/api/embed` request.
    pub const MAX_EMBED_INPUTS: usize = 256;
    /// Labels of one `/api/classify` request.
    pub const MAX_LABELS: usize = 1000;
    /// Bytes of a classify template, and how many `{}` it may hold.
    pub const MAX_TEMPLATE_BYTES: usize = 1024;
    pub const MAX_TEMPLATE_SLOTS: usize = 4;
    /// Bytes of all prompts of one classify request together (labels put into the template).
    pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;
    /// Weighted parts of one search.
    pub const MAX_QUERY_PARTS: usize = 16;
    /// Request bodies of routes that carry no images.
    pub const SMALL_BODY_BYTES: usize = 64 * 1024;
    /// Request bodies of document updates.
    pub const PATCH_BODY_BYTES: usize = 1024 * 1024;
}

fn check_text(what: &str, text: &str) -> Result<(), ApiError> {
    if text.len() > limits::MAX_TEXT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{what} is {} bytes; at most {} are accepted (the model reads only the first 77 tokens)",
                text.len(),
                limits::MAX_TEXT_BYTES
            ),
        ));
    }
    Ok(())
}

/// Workers are shared by the collections of one model at one precision.
fn model_key(m: &ModelIdentity, precision: Precision) -> String {
    format!("{} [{precision}]", m.describe())
}

impl AppState {
    /// Opens the configured collections.
    pub fn new(config: ServerConfig) -> anyhow_free::Result<Arc<Self>> {
        let files_roots = FileRoots::new(&config.files_roots)?;
        let allowed_hosts = match &config.public_url {
            Some(url) => vec![url_host(url).ok_or_else(|| {
                SearchError::Invalid(format!(
                    "--public-url {url:?}: give a URL such as https://search.example.com/"
                ))
            })?],
            None => Vec::new(),
        };
        let state = Arc::new(Self {
            config,
            collections: RwLock::new(BTreeMap::new()),
            models: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            started: Instant::now(),
            files_roots,
            allowed_hosts,
        });
        for dir in state.config.collections.clone() {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("collection")
                .to_string();
            let collection = Collection::open(&dir)?;
            state.insert(name, collection)?;
        }
        if let Some(root) = &state.config.root {
            if let Ok(entries) = std::fs::read_dir(root) {
                for e in entries.flatten() {
                    let p = e.path();
                    let Some(name) = p.file_name().and_then(|n| n.to_str()).map(String::from)
                    else {
                        continue;
                    };
                    if valid_name(&name) && Collection::exists(&p) && !state.has(&name) {
                        state.insert(name, Collection::open(&p)?)?;
                    }
                }
            }
        }
        Ok(state)
    }

    /// The folders a collection's local images may be read from.
    fn roots_of(&self, served: &Served) -> Result<FileRoots, ApiError> {
        Ok(self.files_roots.with_collection(served.collection.dir())?)
    }

    /// A model or architecture a client names: a hub id as given, or a file under the
    /// server's files roots (a client never makes the server open its other files).
    fn client_model_path(&self, value: &str) -> Result<String, ApiError> {
        let looks_local = value.starts_with(['/', '.', '~', '\\']) || value.contains("..");
        if !looks_local {
            return Ok(value.to_string());
        }
        self.files_roots
            .client_path(value)
            .map(|p| p.display().to_string())
            .map_err(|e| {
                ApiError::bad_request(if e == gclip_search::roots::OUTSIDE_ROOTS {
                    MODEL_OUTSIDE_ROOTS.to_string()
                } else {
                    e
                })
            })
    }

    fn has(&self, name: &str) -> bool {
        self.collections
            .read()
            .map(|c| c.contains_key(name))
            .unwrap_or(false)
    }

    fn insert(&self, name: String, collection: Collection) -> anyhow_free::Result<()> {
        let mut c = self.collections.write().unwrap_or_else(|p| p.into_inner());
        if c.contains_key(&name) {
            return Err(gclip_search::SearchError::Invalid(format!(
                "two collections are named {name:?}"
            )));
        }
        c.insert(name.clone(), Arc::new(Served { name, collection }));
        Ok(())
    }

    /// Uses `embedder` for collections created with `identity` (tests and benchmarks).
    pub fn register_model(&self, identity: &ModelIdentity, embedder: Embedder) {
        let worker = Arc::new(ModelWorker::start(embedder, self.config.batch.clone()));
        self.models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model_key(identity, self.precision_for(identity)), worker);
    }

    fn collection(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        self.collections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no collection named {name:?}")))
    }

    /// The batching worker of a model, loading the model on first use (blocking).
    /// The precision a collection's model runs in on this server.
    fn precision_for(&self, identity: &ModelIdentity) -> Precision {
        self.config.precision.unwrap_or(identity.precision)
    }

    fn worker(&self, identity: &ModelIdentity) -> Result<Arc<ModelWorker>, ApiError> {
        let precision = self.precision_for(identity);
        let key = model_key(identity, precision);
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = models.get(&key) {
            return Ok(w.clone());
        }
        let source = gclip::source::ModelSource::resolve(&identity.model, identity.arch.as_deref())
            .map_err(|e| ApiError::internal(format!("model {key}: {e}")))?;
        let options = LoadOptions {
            precision,
            ..Default::default()
        };
        let embedder = Embedder::load_with(&source, &Device::Cpu, options)
            .map_err(|e| ApiError::internal(format!("loading model {key}: {e}")))?;
        if precision != identity.precision {
            tracing::warn!(
                "model {key}: the collections of this model were embedded in {}; queries run in \
                 {precision} (similar, not identical, vectors)",
                identity.precision
            );
        }
        let w = Arc::new(ModelWorker::start(embedder, self.config.batch.clone()));
        models.insert(key, w.clone());
        Ok(w)
    }

    /// Saves every collection's derived indexes (on shutdown).
    pub fn flush_all(&self) {
        let all: Vec<Arc<Served>> = self
            .collections
            .read()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        for s in all {
            if let Err(e) = s.collection.flush() {
                tracing::warn!("flushing {}: {e}", s.name);
            }
        }
    }
}

/// How the server's process fetches image URLs that clients send: not at all unless
/// `allow` (cached images are still used); when allowed, guarded (public addresses only unless
/// `allow_private`, only `allow_hosts` when given, no proxy, one error text for every failure).
pub fn client_url_fetching(
    allow: bool,
    allow_hosts: Vec<String>,
    allow_private: bool,
) -> gclip_search::remote::RemoteConfig {
    let base = gclip_search::remote::RemoteConfig::from_vars(|n| std::env::var(n).ok());
    let guard = gclip_search::netguard::Guard {
        allow_hosts,
        allow_private,
        ..Default::default()
    };
    gclip_search::remote::RemoteConfig {
        offline: base.offline || !allow,
        offline_reason: if allow {
            base.offline_reason.clone()
        } else {
            "this server does not fetch image URLs; its operator can allow it with gclip serve \
             --allow-url-fetch"
                .into()
        },
        guard: Some(guard),
        ..base
    }
}

/// Result alias of server setup.
pub mod anyhow_free {
    /// Setup errors are collection errors.
    pub type Result<T> = std::result::Result<T, gclip_search::SearchError>;
}

type Shared = State<Arc<AppState>>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await?
}

// ---------------------------------------------------------------------------------------------
// Middleware

async fn track(State(state): Shared, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let t = Instant::now();
    let resp = next.run(req).await;
    state.metrics.record(
        &route,
        resp.status().as_u16(),
        t.elapsed().as_secs_f64() * 1e3,
    );
    resp
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v);
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(state): Shared, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let path = req.uri().path();
        let read = matches!(*req.method(), Method::GET | Method::HEAD)
            // Searching, embedding and classifying read, whatever their method.
            || (req.method() == Method::POST
                && (path.ends_with("/search") || path == "/api/embed" || path == "/api/classify"));
        let open = path == "/api/health" || path == "/" || path.starts_with("/assets/");
        let needs = !open && (!read || state.config.protect_reads);
        // Image tags cannot send headers: thumbnails also accept `?key=`.
        let query_key = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("key="))
                .filter(|_| path.ends_with("/thumbnail"))
        });
        if needs
            && !presented_key(req.headers())
                .or(query_key)
                .is_some_and(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
        {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The host of an `http(s)://host[:port]/…` URL, lower case, without IPv6 brackets.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    host_of_authority(authority).filter(|h| !h.is_empty())
}

fn host_of_authority(authority: &str) -> Option<String> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split_once(']')?.0
    } else {
        authority.split(':').next()?
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// A server without an API key answers only to its addresses by number, `localhost` and the
/// host of `--public-url`: a web page on another site cannot reach it through a DNS name that
/// it makes resolve to this machine (DNS rebinding), because the browser sends that name.
async fn check_host(State(state): Shared, req: Request, next: Next) -> Response {
    if state.config.api_key.is_none() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        if let Some(host) = host {
            let name = host_of_authority(&host).unwrap_or_default();
            let allowed = name.parse::<std::net::IpAddr>().is_ok()
                || name == "localhost"
                || state.allowed_hosts.contains(&name);
            if !allowed {
                return ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "host_not_allowed",
                    "this server answers to its IP address and localhost only; its operator \
                     can name another host with --public-url or set --api-key",
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// Router

/// The API and the page.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(page))
        .route("/api/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/api/openapi.json", get(openapi_json))
        .route(
            "/api/collections",
            get(list_collections)
                .post(create_collection)
                .layer(DefaultBodyLimit::max(limits::SMALL_BODY_BYTES)),
        )
        .route(
            "/api/collections/{name}",
            get(get_collection).delete(delete_collection),
        )
        .route(
            "/api/collections/{name}/documents",
            post(add_docs).get(list_docs),
        )
        .route(
            "/api/collections/{name}/documents/{id}",
            get(get_doc)
                .patch(patch_doc)
                .delete(delete_doc)
                .layer(DefaultBodyLimit::max(limits::PATCH_BODY_BYTES)),
        )
        .route(
            "/api/collections/{name}/documents/{id}/thumbnail",
            get(thumbnail),
        )
        .route("/api/collections/{name}/search", post(search))
        .route("/api/embed", post(embed))
        .route("/api/classify", post(classify))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests and saves the derived
/// indexes of every collection.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    let s = state.clone();
    let _ = tokio::task::spawn_blocking(move || s.flush_all()).await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn page() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

async fn health(State(state): Shared) -> Json<Value> {
    let n = state.collections.read().map(|c| c.len()).unwrap_or(0);
    Json(json!({"status": "ok", "collections": n, "uptime_s": state.started.elapsed().as_secs()}))
}

async fn openapi_json() -> Json<Value> {
    Json(openapi::document())
}

async fn metrics_text(State(state): Shared) -> impl IntoResponse {
    let mut extra = Vec::new();
    if let Ok(c) = state.collections.read() {
        extra.push((
            "# TYPE gclip_collection_documents gauge".to_string(),
            f64::NAN,
        ));
        for (name, s) in c.iter() {
            extra.push((
                format!("gclip_collection_documents{{collection=\"{name}\"}}"),
                s.collection.len() as f64,
            ));
        }
    }
    if let Ok(m) = state.models.lock() {
        for (key, w) in m.iter() {
            let k = key.replace('"', "'");
            let load = |a: &std::sync::atomic::AtomicU64| {
                a.load(std::sync::atomic::Ordering::Relaxed) as f64
            };
            extra.push((
                format!("gclip_model_batches_total{{model=\"{k}\"}}"),
                load(&w.stats.batches),
            ));
            extra.push((
                format!("gclip_model_items_total{{model=\"{k}\"}}"),
                load(&w.stats.items),
            ));
            extra.push((
                format!("gclip_model_busy_seconds_total{{model=\"{k}\"}}"),
                load(&w.stats.busy_us) / 1e6,
            ));
        }
    }
    let text = state.metrics.render(&extra).replace(
        "# TYPE gclip_collection_documents gauge NaN",
        "# TYPE gclip_collection_documents gauge",
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

fn collection_json(s: &Served) -> Value {
    let info = s.collection.info();
    json!({
        "name": s.name,
        "documents": s.collection.len(),
        "model": info.model,
        "embed": info.spec,
        "image_fields": info.spec.image_fields().collect::<Vec<_>>(),
    })
}

async fn list_collections(State(state): Shared) -> Json<Value> {
    let c = state.collections.read().unwrap_or_else(|p| p.into_inner());
    Json(Value::Array(
        c.values().map(|s| collection_json(s)).collect(),
    ))
}

async fn get_collection(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath(name) = name?;
    let served = state.collection(&name)?;
    Ok(Json(collection_json(&served)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    model: String,
    #[serde(default)]
    arch: Option<String>,
    /// `FIELD[:WEIGHT],…`
    #[serde(default)]
    embed: Option<String>,
    #[serde(default)]
    image_fields: Option<Vec<String>>,
    /// `fp32`, `bf16` or `int8`; the server's `--precision`, else fp32, when absent.
    #[serde(default)]
    precision: Option<Precision>,
}

async fn create_collection(
    State(state): Shared,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let root = state.config.root.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "no_root",
            "this server was started without --root: it cannot create collections",
        )
    })?;
    if !valid_name(&body.name) {
        return Err(ApiError::bad_request(
            "collection names are 1-64 characters of letters, digits, - and _",
        ));
    }
    if state.has(&body.name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("collection {:?} exists", body.name),
        ));
    }
    let st = state.clone();
    blocking(move || {
        let images = body.image_fields.unwrap_or_else(|| vec!["image".into()]);
        let spec = EmbedSpec::parse(body.embed.as_deref().unwrap_or("image"), &images)?;
        let model = st.client_model_path(&body.model)?;
        let arch = body
            .arch
            .as_deref()
            .map(|a| st.client_model_path(a))
            .transpose()?;
        let precision = body
            .precision
            .unwrap_or_else(|| st.config.precision.unwrap_or_default());
        let (identity, _) = model_identity(&model, arch.as_deref(), precision)?;
        // The model is loaded and checked before anything is written, so that a collection
        // whose model cannot be used is never created.
        st.worker(&identity).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_model",
                format!("model {}: {}", body.model, e.message),
            )
        })?;
        let dir = root.join(&body.name);
        let c = Collection::create(&dir, identity, spec)?;
        st.insert(body.name.clone(), c)?;
        let s = st.collection(&body.name)?;
        Ok((StatusCode::CREATED, Json(collection_json(&s))))
    })
    .await
}

async fn delete_collection(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath(name) = name?;
    let served = state.collection(&name)?;
    state
        .collections
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
    // Files are removed only for collections that live under --root; others are detached.
    let under_root = state
        .config
        .root
        .as_ref()
        .is_some_and(|r| served.collection.dir() == r.join(&name));
    let dir = served.collection.dir().to_path_buf();
    drop(served);
    let removed = under_root && std::fs::remove_dir_all(&dir).is_ok();
    Ok(Json(json!({"deleted": name, "files_removed": removed})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    documents: Vec<Value>,
}

async fn add_docs(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<AddBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath(name) = name?;
    let Json(body) = body?;
    let served = state.collection(&name)?;
    let st = state.clone();
    blocking(move || {
        let spec = served.collection.info().spec.clone();
        let images: Vec<&str> = spec.image_fields().collect();
        let base = served.collection.dir().to_path_buf();
        let roots = st.roots_of(&served)?;
        let inputs: Vec<InputDocument> = body
            .documents
            .into_iter()
            .enumerate()
            .map(|(i, v)| InputDocument {
                label: i.to_string(),
                doc: match v {
                    Value::Object(mut m) => {
                        let raw = Value::Object(m.clone()).to_string();
                        client_image_paths(&mut m, &images, &roots)
                            .and_then(|()| document_from_fields(m, &raw, &base, &images))
                    }
                    _ => Err("a document must be a JSON object".into()),
                },
            })
            .collect();
        let worker = st.worker(&served.collection.info().model)?;
        let mut generation = 0;
        let report = add_documents(
            served.collection.store(),
            worker.as_ref(),
            inputs,
            64,
            &mut |c| {
                generation = c.generation;
            },
        )?;
        st.metrics
            .documents_written
            .fetch_add(report.written as u64, std::sync::atomic::Ordering::Relaxed);
        let failed: Vec<Value> = report
            .failed
            .iter()
            .map(|(i, e)| json!({"index": i.parse::<usize>().ok(), "error": e}))
            .collect();
        Ok(Json(
            json!({"written": report.written, "failed": failed, "generation": generation}),
        ))
    })
    .await
}

/// Replaces the local paths in a client's image fields by the files they name under the roots;
/// URLs stay as they are (fetched, or refused, by the image fetcher).
fn client_image_paths(
    fields: &mut Fields,
    image_fields: &[&str],
    roots: &FileRoots,
) -> Result<(), String> {
    for name in image_fields {
        if let Some(Value::String(value)) = fields.get_mut(*name) {
            if !gclip_search::remote::is_url(value) {
                let path = roots
                    .client_path(value)
                    .map_err(|e| format!("field {name:?}: {e}"))?;
                *value = path.display().to_string();
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    10
}

async fn list_docs(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath(name) = name?;
    let Query(q) = q?;
    let served = state.collection(&name)?;
    let limit = q.limit.min(state.config.max_results);
    blocking(move || {
        let docs = served.collection.list(q.offset, limit)?;
        Ok(Json(
            json!({"documents": docs, "total": served.collection.len()}),
        ))
    })
    .await
}

async fn get_doc(
    State(state): Shared,
    p: Result<UrlPath<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath((name, id)) = p?;
    let served = state.collection(&name)?;
    let doc = served
        .collection
        .get(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no document {id:?} in {name:?}")))?;
    Ok(Json(json!(doc)))
}

/// Sets the fields given (null removes one), keeps the others; re-embeds the document only
/// when a field its vector comes from changed.
async fn patch_doc(
    State(state): Shared,
    p: Result<UrlPath<(String, String)>, PathRejection>,
    body: Result<Json<Fields>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath((name, id)) = p?;
    let Json(patch) = body?;
    let served = state.collection(&name)?;
    let st = state.clone();
    blocking(move || {
        let mut patch = patch;
        let images: Vec<String> = served
            .collection
            .info()
            .spec
            .image_fields()
            .map(String::from)
            .collect();
        let images: Vec<&str> = images.iter().map(String::as_str).collect();
        client_image_paths(&mut patch, &images, &st.roots_of(&served)?)
            .map_err(ApiError::bad_request)?;
        let worker = st.worker(&served.collection.info().model)?;
        let base = served.collection.dir().to_path_buf();
        let r = update_document(
            served.collection.store(),
            worker.as_ref(),
            &id,
            &patch,
            &base,
        )
        .map_err(|e| match e {
            SearchError::NotFound(_) => {
                ApiError::not_found(format!("no document {id:?} in {name:?}"))
            }
            e => e.into(),
        })?;
        Ok(Json(
            json!({"updated": id, "reembedded": r.reembedded, "generation": r.generation}),
        ))
    })
    .await
}

async fn delete_doc(
    State(state): Shared,
    p: Result<UrlPath<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath((name, id)) = p?;
    let served = state.collection(&name)?;
    blocking(move || {
        let r = served.collection.delete(std::slice::from_ref(&id))?;
        if r.count == 0 {
            return Err(ApiError::not_found(format!(
                "no document {id:?} in {name:?}"
            )));
        }
        Ok(Json(json!({"deleted": id, "generation": r.generation})))
    })
    .await
}

#[derive(Deserialize)]
struct ThumbQuery {
    #[serde(default = "default_thumb")]
    size: usize,
}

fn default_thumb() -> usize {
    256
}

/// A PNG thumbnail of a document's image: only documents of the collection, only decodable
/// images (the file is decoded and re-encoded, never sent as is).
async fn thumbnail(
    State(state): Shared,
    p: Result<UrlPath<(String, String)>, PathRejection>,
    q: Result<Query<ThumbQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let UrlPath((name, id)) = p?;
    let Query(q) = q?;
    let size = q.size.clamp(16, 1024);
    let served = state.collection(&name)?;
    let doc = served
        .collection
        .get(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no document {id:?} in {name:?}")))?;
    let spec = served.collection.info().spec.clone();
    let image = spec
        .image_fields()
        .find_map(|f| doc.fields.get(f).and_then(|v| v.as_str()).map(String::from))
        .ok_or_else(|| ApiError::not_found(format!("document {id:?} has no image")))?;
    let max_pixels = state.config.batch.max_image_pixels;
    let roots = state.roots_of(&served)?;
    let png = blocking(move || {
        // An image given by URL is shown from the copy fetched when it was indexed (fetched
        // again if the cache lost it).
        let path = if gclip_search::remote::is_url(&image) {
            gclip_search::remote::RemoteImages::shared()
                .fetch(&image)
                .map_err(|e| ApiError::not_found(format!("image unavailable: {e}")))?
        } else {
            // The same answer whether the file is missing or outside the roots.
            roots
                .readable(&image)
                .ok_or_else(|| ApiError::not_found(format!("document {id:?}: image unavailable")))?
        };
        make_thumbnail(&path, size, max_pixels)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        Body::from(png),
    )
        .into_response())
}

fn make_thumbnail(path: &Path, size: usize, max_pixels: u64) -> Result<Vec<u8>, ApiError> {
    // Regular files only, size-capped; the reason stays in the log (it names server paths).
    let bytes = gclip::input::image::read_image_file(path, gclip::input::image::max_image_bytes())
        .map_err(|e| {
            tracing::warn!("thumbnail: {e}");
            ApiError::not_found("image unavailable")
        })?;
    // A square thumbnail: shortest edge resized to `size` (bicubic, as Pillow), centre crop.
    let mut cfg = gclip::input::image::PreprocessConfig::open_clip(size);
    cfg.max_pixels = max_pixels;
    let rgb = gclip::input::image::Preprocessor::new(cfg)
        .rgb8_from_bytes(&bytes, "thumbnail")
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_image", e.to_string()))?;
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, rgb.width as u32, rgb.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        w.write_image_data(&rgb.data)
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(png_bytes)
}

/// One part of a weighted query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartBody {
    #[serde(default)]
    text: Option<String>,
    /// Base64 of an encoded image (a `data:` URL prefix is accepted).
    #[serde(default)]
    image: Option<String>,
    /// An `http(s)://` image URL, fetched by the server.
    #[serde(default)]
    image_url: Option<String>,
    /// A document id of the collection (its stored vector).
    #[serde(default)]
    document: Option<String>,
    #[serde(default)]
    vector: Option<Vec<f32>>,
    #[serde(default = "one")]
    weight: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    /// Query text.
    #[serde(default)]
    q: Option<String>,
    /// Query image, base64.
    #[serde(default)]
    image: Option<String>,
    /// Query image by `http(s)://` URL, fetched by the server.
    #[serde(default)]
    image_url: Option<String>,
    /// Weighted parts.
    #[serde(default)]
    queries: Vec<PartBody>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    offset: usize,
    #[serde(default)]
    exact: bool,
    /// Fuse BM25 with the vector results.
    #[serde(default)]
    hybrid: bool,
    /// BM25 only.
    #[serde(default)]
    lexical: bool,
    /// "rrf" (default) or "weighted".
    #[serde(default)]
    fusion: Option<String>,
}

fn decode_image(b64: &str) -> Result<Vec<u8>, ApiError> {
    let data = match b64.split_once(";base64,") {
        Some((prefix, d)) if prefix.starts_with("data:") => d,
        _ => b64,
    };
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::bad_request(format!("image is not valid base64: {e}")))
}

fn part_input(p: PartBody) -> Result<QueryPart, ApiError> {
    let given = [
        p.text.is_some(),
        p.image.is_some(),
        p.image_url.is_some(),
        p.document.is_some(),
        p.vector.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        return Err(ApiError::bad_request(
            "each query part needs exactly one of text, image, image_url, document, vector",
        ));
    }
    let input = if let Some(t) = p.text {
        check_text("a query part's text", &t)?;
        QueryInput::Text(t)
    } else if let Some(i) = p.image {
        QueryInput::ImageBytes(decode_image(&i)?)
    } else if let Some(u) = p.image_url {
        // Only URLs are fetched (a path is refused): a client never reads the server's files.
        QueryInput::ImageUrl(u)
    } else if let Some(d) = p.document {
        QueryInput::Document(d)
    } else {
        QueryInput::Vector(p.vector.unwrap_or_default())
    };
    Ok(QueryPart {
        input,
        weight: p.weight,
    })
}

async fn search(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<SearchBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let t = Instant::now();
    let UrlPath(name) = name?;
    let Json(body) = body?;
    let served = state.collection(&name)?;
    if body.limit == 0 || body.limit.saturating_add(body.offset) > state.config.max_results {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..{0} and limit + offset at most {0}",
            state.config.max_results
        )));
    }
    let filter = body
        .filter
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .map(Filter::parse)
        .transpose()?;
    let fusion = match body.fusion.as_deref() {
        None | Some("rrf") => Fusion::Rrf { k: 60.0 },
        Some("weighted") => Fusion::Weighted {
            vector: 0.5,
            lexical: 0.5,
        },
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fusion {other:?}: use rrf or weighted"
            )))
        }
    };
    if body.queries.len() > limits::MAX_QUERY_PARTS {
        return Err(ApiError::bad_request(format!(
            "at most {} query parts",
            limits::MAX_QUERY_PARTS
        )));
    }
    let mut parts = Vec::new();
    if let Some(q) = &body.q {
        check_text("q", q)?;
    }
    if let Some(q) = body.q.clone().filter(|q| !q.trim().is_empty()) {
        parts.push(QueryPart::new(QueryInput::Text(q)));
    }
    if let Some(img) = &body.image {
        parts.push(QueryPart::new(QueryInput::ImageBytes(decode_image(img)?)));
    }
    if let Some(url) = body.image_url {
        parts.push(QueryPart::new(QueryInput::ImageUrl(url)));
    }
    for p in body.queries {
        parts.push(part_input(p)?);
    }
    if parts.is_empty() {
        return Err(ApiError::bad_request(
            "nothing to search for: give q, image, image_url or queries",
        ));
    }
    let options = SearchOptions {
        filter,
        limit: body.limit,
        offset: body.offset,
        exact: body.exact,
        hybrid: body.hybrid,
        lexical: body.lexical,
        fusion,
    };
    // A hybrid or lexical search without text is refused before the model is asked for.
    options.lexical_text(&parts)?;
    let st = state.clone();
    let (limit, offset) = (options.limit, options.offset);
    let hits = blocking(move || {
        let worker = if options.needs_vector() {
            Some(st.worker(&served.collection.info().model)?)
        } else {
            None
        };
        let encoder = worker.as_deref().map(QueryEncoder);
        let hits = run_search(
            served.collection.store(),
            encoder.as_ref().map(|e| e as &dyn Encoder),
            &parts,
            options,
        )?;
        Ok((hits, served.collection.len()))
    })
    .await?;
    Ok(Json(json!({
        "hits": hits.0,
        "limit": limit,
        "offset": offset,
        "documents": hits.1,
        "took_ms": t.elapsed().as_secs_f64() * 1e3,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    /// Which collection's model; may be left out only when one collection is served.
    #[serde(default)]
    collection: Option<String>,
    #[serde(default)]
    texts: Vec<String>,
    /// Base64 images.
    #[serde(default)]
    images: Vec<String>,
}

/// The model of the named collection, or of the only one served: with several, which one
/// "the first" is would be a guess the client cannot see, so the name is required.
fn model_for(state: &AppState, collection: Option<&str>) -> Result<ModelIdentity, ApiError> {
    let c = state.collections.read().unwrap_or_else(|p| p.into_inner());
    let served = match collection {
        Some(n) => c
            .get(n)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no collection named {n:?}")))?,
        None if c.len() > 1 => {
            let names: Vec<String> = c.keys().map(|n| format!("{n:?}")).collect();
            return Err(ApiError::bad_request(format!(
                "{} collections are served ({}): name the one whose model to use with \
                 \"collection\"",
                names.len(),
                names.join(", ")
            )));
        }
        None => c.values().next().cloned().ok_or_else(|| {
            ApiError::bad_request("no collection is served, so no model is known")
        })?,
    };
    Ok(served.collection.info().model.clone())
}

async fn embed(
    State(state): Shared,
    body: Result<Json<EmbedBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    if body.texts.is_empty() && body.images.is_empty() {
        return Err(ApiError::bad_request("give texts or images"));
    }
    if body.texts.len() + body.images.len() > limits::MAX_EMBED_INPUTS {
        return Err(ApiError::bad_request(format!(
            "at most {} inputs per request",
            limits::MAX_EMBED_INPUTS
        )));
    }
    for (i, t) in body.texts.iter().enumerate() {
        check_text(&format!("texts[{i}]"), t)?;
    }
    let identity = model_for(&state, body.collection.as_deref())?;
    let images: Vec<Vec<u8>> = body
        .images
        .iter()
        .map(|i| decode_image(i))
        .collect::<Result<_, _>>()?;
    let st = state.clone();
    blocking(move || {
        let w = st.worker(&identity)?;
        let q = QueryEncoder(&w);
        let texts: Vec<&str> = body.texts.iter().map(String::as_str).collect();
        let mut out = if texts.is_empty() {
            Vec::new()
        } else {
            q.texts(&texts)?
        };
        for (i, img) in images.iter().enumerate() {
            out.push(q.image_bytes(img, &format!("images[{i}]"))?);
        }
        Ok(Json(json!({"dim": q.dim(), "embeddings": out})))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyBody {
    #[serde(default)]
    collection: Option<String>,
    labels: Vec<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    image: Option<String>,
    /// Prompt template with `{}` for the label.
    #[serde(default)]
    template: Option<String>,
}

/// Zero-shot classification: softmax over `exp(logit_scale) · cos(query, template(label))`.
async fn classify(
    State(state): Shared,
    body: Result<Json<ClassifyBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    if body.labels.is_empty() || body.labels.len() > limits::MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "give 1..{} labels",
            limits::MAX_LABELS
        )));
    }
    for (i, l) in body.labels.iter().enumerate() {
        check_text(&format!("labels[{i}]"), l)?;
    }
    if let Some(t) = &body.text {
        check_text("text", t)?;
    }
    if let Some(t) = &body.template {
        let slots = t.matches("{}").count();
        if t.len() > limits::MAX_TEMPLATE_BYTES || slots > limits::MAX_TEMPLATE_SLOTS {
            return Err(ApiError::bad_request(format!(
                "a template has at most {} bytes and {} {{}} (this one: {} bytes, {slots})",
                limits::MAX_TEMPLATE_BYTES,
                limits::MAX_TEMPLATE_SLOTS,
                t.len()
            )));
        }
        let prompt_bytes: usize = body.labels.iter().map(|l| t.len() + slots * l.len()).sum();
        if prompt_bytes > limits::MAX_PROMPT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the prompts would be {prompt_bytes} bytes together; at most {}",
                    limits::MAX_PROMPT_BYTES
                ),
            ));
        }
    }
    let input = match (&body.text, &body.image) {
        (Some(t), None) => QueryInput::Text(t.clone()),
        (None, Some(i)) => QueryInput::ImageBytes(decode_image(i)?),
        _ => return Err(ApiError::bad_request("give exactly one of text, image")),
    };
    let template = body
        .template
        .clone()
        .unwrap_or_else(|| "a photo of a {}.".into());
    let identity = model_for(&state, body.collection.as_deref())?;
    let st = state.clone();
    blocking(move || {
        let w = st.worker(&identity)?;
        let q = QueryEncoder(&w);
        let query = query_vector(&q, None, &[QueryPart::new(input)])?;
        let prompts: Vec<String> = body.labels.iter().map(|l| template.replace("{}", l)).collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let classes = q.texts(&refs)?;
        let scale = w.logit_scale();
        let logits: Vec<f32> = classes.iter().map(|c| scale * gclip_search::document::dot(c, &query)).collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let mut out: Vec<Value> = body
            .labels
            .iter()
            .zip(exps.iter().zip(&logits))
            .map(|(l, (e, logit))| json!({"label": l, "probability": e / sum, "cosine": logit / scale}))
            .collect();
        out.sort_by(|a, b| b["probability"].as_f64().unwrap_or(0.0).total_cmp(&a["probability"].as_f64().unwrap_or(0.0)));
        Ok(Json(json!({"labels": out})))
    })
    .await
}
