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
//!
//! This file holds the configuration, the state every handler shares ([`AppState`]) and the
//! router that assembles the routes; the handlers are in `routes/` (one module per resource),
//! what runs around them in `middleware`, request limits in [`limits`].

pub mod batcher;
pub mod bench;
pub mod error;
pub mod limits;
pub mod metrics;
mod middleware;
mod openapi;
mod routes;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use candle_core::Device;
use gclip::embed::{Embedder, LoadOptions};
use gclip::model::Precision;
use gclip_search::roots::FileRoots;
use gclip_search::{Collection, ModelIdentity, SearchError};

pub use batcher::{BatchConfig, ModelWorker, QueryEncoder};
pub use error::ApiError;
use metrics::Metrics;
use middleware::{authorize, check_host, track};
use routes::classify::classify;
use routes::collections::{create_collection, delete_collection, get_collection, list_collections};
use routes::documents::{add_docs, delete_doc, get_doc, list_docs, patch_doc, thumbnail};
use routes::embed::embed;
use routes::search::search;
use routes::service::{health, metrics_text, openapi_json, page};

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

/// Workers are shared by the collections of one model at one precision.
fn model_key(m: &ModelIdentity, precision: Precision) -> String {
    format!("{} [{precision}]", m.describe())
}

impl AppState {
    /// Opens the configured collections.
    pub fn new(config: ServerConfig) -> anyhow_free::Result<Arc<Self>> {
        let files_roots = FileRoots::new(&config.files_roots)?;
        let allowed_hosts = match &config.public_url {
            Some(url) => vec![middleware::url_host(url).ok_or_else(|| {
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
            let collection = Collection::open(&dir)?;
            // A Milvus collection is served under its Milvus name (the address's last part
            // would carry a ?token=).
            let name = match collection.location() {
                gclip_search::Location::Milvus(address) => address.name.clone(),
                gclip_search::Location::Dir(_) => dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("collection")
                    .to_string(),
            };
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
        // A collection on a Milvus server has no recorded folders: --files-root names them.
        match served.collection.dir() {
            Some(dir) => Ok(self.files_roots.with_collection(dir)?),
            None => Ok(self.files_roots.clone()),
        }
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
        // A server runs many small batches: its fp32 weights go to the panel kernel before
        // the first query, on AVX2 CPUs too.
        embedder
            .clip()
            .pack_f32_weights()
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
// Router

/// Every route the server answers: its path and handlers. The OpenAPI document describes the
/// same paths and methods (`openapi::tests` holds the two together).
fn routes() -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("/", get(page)),
        ("/api/health", get(health)),
        ("/metrics", get(metrics_text)),
        ("/api/openapi.json", get(openapi_json)),
        (
            "/api/collections",
            get(list_collections)
                .post(create_collection)
                .layer(DefaultBodyLimit::max(limits::SMALL_BODY_BYTES)),
        ),
        (
            "/api/collections/{name}",
            get(get_collection).delete(delete_collection),
        ),
        (
            "/api/collections/{name}/documents",
            post(add_docs).get(list_docs),
        ),
        (
            "/api/collections/{name}/documents/{id}",
            get(get_doc)
                .patch(patch_doc)
                .delete(delete_doc)
                .layer(DefaultBodyLimit::max(limits::PATCH_BODY_BYTES)),
        ),
        (
            "/api/collections/{name}/documents/{id}/thumbnail",
            get(thumbnail),
        ),
        ("/api/collections/{name}/search", post(search)),
        ("/api/embed", post(embed)),
        ("/api/classify", post(classify)),
    ]
}

/// The API and the page.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    routes()
        .into_iter()
        .fold(Router::new(), |r, (path, handlers)| r.route(path, handlers))
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
