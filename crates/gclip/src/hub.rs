//! Models from the Hugging Face hub: fetched into the standard hub cache, read from it when
//! present, shared with Python tools (`huggingface_hub`, `transformers`, `open_clip`).
//!
//! The cache layout is huggingface_hub's:
//!
//! ```text
//! $HF_HUB_CACHE/models--ORG--NAME/
//!   blobs/<etag>                         file contents, named by the hub's ETag (git sha1, or
//!                                        sha256 for LFS files)
//!   snapshots/<commit>/<file>            relative symlinks: ../../blobs/<etag>
//!   refs/main                            the commit `main` pointed to (no newline)
//!   .no_exist/<commit>/<file>            empty markers: the file does not exist at that commit
//! ```
//!
//! The protocol is the one `hf_hub_download` speaks: `GET /api/models/{repo}/revision/{rev}`
//! lists a revision's files and its commit (`sha`, `siblings[].rfilename`); `HEAD
//! /{repo}/resolve/{commit}/{file}` gives a file's metadata without following redirects to the
//! CDN (`X-Repo-Commit`, `X-Linked-Etag` or `ETag`, `X-Linked-Size` or `Content-Length`, and
//! `Location` for LFS files); the file is then read from the `Location` (without the token when
//! that is another host) into a temporary file that is renamed into `blobs/` only once complete.
//! Errors come as `X-Error-Code` (`RepoNotFound`, `GatedRepo`, `EntryNotFound`,
//! `RevisionNotFound`) with `X-Error-Message`.
//!
//! A model whose snapshot in the cache is complete is used without contacting the hub. In
//! offline mode (`HF_HUB_OFFLINE=1`) the network is never touched.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::environment::Env;
use crate::http::AgentBuilder;

/// The model `--model` means when it is not given.
pub const DEFAULT_MODEL: &str = "openai/clip-vit-base-patch32";
/// The public hub, used unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The revision a model id without `@REVISION` refers to.
pub const DEFAULT_REVISION: &str = "main";

/// How to get from an error to a working `--model`, appended to the messages of models that
/// cannot be had.
const LOCAL_HINT: &str = "or copy the model from a machine with network access and point \
--model at its directory (e.g. --model ./clip-vit-base-patch32, holding config.json and \
model.safetensors), or at an open_clip checkpoint file with --arch";

/// Everything that can go wrong fetching a model from the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Offline mode, and the model is not in the cache.
    #[error(
        "model `{repo}` is not in the Hugging Face cache ({}) and offline mode is on \
         (HF_HUB_OFFLINE), so it cannot be downloaded; unset HF_HUB_OFFLINE to download it, \
         {LOCAL_HINT}",
        cache.display()
    )]
    Offline { repo: String, cache: PathBuf },
    /// The hub cannot be reached (DNS, connection, TLS, timeout), and the model is not cached.
    #[error(
        "cannot download model `{repo}`: {endpoint} cannot be reached ({reason}), and the \
         model is not in the Hugging Face cache ({}); check the network connection (and \
         HF_ENDPOINT, HTTPS_PROXY), {LOCAL_HINT}",
        cache.display()
    )]
    Unreachable {
        repo: String,
        endpoint: String,
        cache: PathBuf,
        reason: String,
    },
    /// No such repository, or a private one the token does not open (the hub does not tell
    /// them apart).
    #[error(
        "`{repo}` is neither a local file or directory nor a model on {endpoint}: check the \
         name; if the repository is private or gated, set HF_TOKEN to an access token of an \
         account that can read it"
    )]
    RepoNotFound { repo: String, endpoint: String },
    /// The repository is gated and the token (if any) has not been granted access.
    #[error(
        "model `{repo}` is gated on {endpoint}: accept its conditions on the model's page, then \
         set HF_TOKEN to an access token of that account (the hub says: {message})"
    )]
    Gated {
        repo: String,
        endpoint: String,
        message: String,
    },
    /// The hub rejected the token itself.
    #[error(
        "{endpoint} rejected the access token sent for model `{repo}` (from HF_TOKEN or the \
         token file): renew it, or unset HF_TOKEN for public models"
    )]
    InvalidToken { repo: String, endpoint: String },
    /// No such branch, tag or commit.
    #[error("model `{repo}` has no revision `{revision}` on {endpoint}")]
    RevisionNotFound {
        repo: String,
        revision: String,
        endpoint: String,
    },
    /// A file the listing or an index named is not there.
    #[error("model `{repo}` has no file `{file}` at revision {revision}")]
    FileMissing {
        repo: String,
        revision: String,
        file: String,
    },
    /// The repository has no model in a layout gclip reads.
    #[error("model `{repo}` holds no CLIP model that gclip reads: {reason}")]
    NotAModel { repo: String, reason: String },
    /// Any other unexpected HTTP status (server errors, rate limits, …).
    #[error(
        "model `{repo}`: {url} answered HTTP {status}{}",
        message_suffix(message)
    )]
    Http {
        repo: String,
        url: String,
        status: u16,
        message: String,
    },
    /// An answer that is not what a Hugging Face hub sends.
    #[error(
        "model `{repo}`: {url}: {message}; is HF_ENDPOINT a Hugging Face hub, and is no proxy \
         rewriting its answers?"
    )]
    Protocol {
        repo: String,
        url: String,
        message: String,
    },
    /// A transfer that broke off or delivered the wrong number of bytes, after retries.
    #[error("model `{repo}`: downloading `{file}` failed: {reason}")]
    Download {
        repo: String,
        file: String,
        reason: String,
    },
    /// Reading or writing the cache.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the hub is, where the cache is, and how to talk to the hub.
#[derive(Clone, PartialEq)]
pub struct HubConfig {
    /// The hub's base URL, without a trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The hub cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// The access token sent to the hub (`HF_TOKEN`, else the token file of `huggingface-cli
    /// login`).
    pub token: Option<String>,
    /// Never touch the network (`HF_HUB_OFFLINE`); only the cache is read.
    pub offline: bool,
    /// How long opening a connection (DNS, TCP, TLS) may take.
    pub connect_timeout: Duration,
    /// How long the hub may stay silent on an open connection (`HF_HUB_DOWNLOAD_TIMEOUT`).
    pub read_timeout: Duration,
}

impl fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

impl HubConfig {
    /// The configuration huggingface_hub would use in this process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The configuration from environment variables looked up by `var`, with huggingface_hub's
    /// rules:
    /// - cache: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`,
    ///   `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`, first one set;
    /// - offline: `HF_HUB_OFFLINE` (or, when unset, `TRANSFORMERS_OFFLINE`) is one of `1`, `ON`,
    ///   `YES`, `TRUE` (any case);
    /// - endpoint: `HF_ENDPOINT`, trailing slashes removed;
    /// - token: `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, then the file `HF_TOKEN_PATH` or
    ///   `$HF_HOME/token`; none when `HF_HUB_DISABLE_IMPLICIT_TOKEN` is true;
    /// - read timeout: `HF_HUB_DOWNLOAD_TIMEOUT` seconds, 10 by default.
    ///
    /// Empty variables count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let env = Env::new(&var);
        let endpoint = env
            .get("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = if env.is_true("HF_HUB_DISABLE_IMPLICIT_TOKEN") {
            None
        } else {
            clean_token(
                env.get("HF_TOKEN")
                    .or_else(|| env.get("HUGGING_FACE_HUB_TOKEN")),
            )
            .or_else(|| clean_token(std::fs::read_to_string(env.hf_token_path()).ok()))
        };
        let read_timeout = env
            .seconds("HF_HUB_DOWNLOAD_TIMEOUT")
            .unwrap_or(Duration::from_secs(10));
        Self {
            endpoint,
            cache_dir: env.hub_cache(),
            token,
            offline: env.hub_offline(),
            connect_timeout: Duration::from_secs(5),
            read_timeout,
        }
    }

    /// A configuration for `endpoint` and `cache_dir`, online, without a token, with the default
    /// timeouts.
    pub fn new(endpoint: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            cache_dir: cache_dir.into(),
            token: None,
            offline: false,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
        }
    }

    /// The cache folder of a model repository: `models--ORG--NAME`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", repo.replace('/', "--")))
    }
}

fn clean_token(t: Option<String>) -> Option<String> {
    t.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// A model on the hub: `ORG/NAME`, at a revision (a branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    /// `ORG/NAME`.
    pub repo: String,
    /// A branch, tag or commit; `main` unless the id says `@REVISION`.
    pub revision: String,
}

/// How open_clip's `create_model` names a hub model: `hf-hub:ORG/NAME`.
const OPEN_CLIP_HUB_PREFIX: &str = "hf-hub:";

impl ModelId {
    /// Parses `ORG/NAME` or `ORG/NAME@REVISION`; `None` when it is not a valid hub model id
    /// (huggingface_hub's rules: letters, digits, `-`, `_`, `.`, not at either end of a part, no
    /// `--` or `..`, at most 96 characters). open_clip's spelling, `hf-hub:ORG/NAME`, names the
    /// same repository: people copy it from model cards.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix(OPEN_CLIP_HUB_PREFIX).unwrap_or(s);
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (s, DEFAULT_REVISION),
        };
        let (org, name) = repo.split_once('/')?;
        let part_ok = |p: &str| {
            let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
            !p.is_empty()
                && p.chars().all(|c| word(c) || c == '-' || c == '.')
                && p.starts_with(word)
                && p.ends_with(word)
        };
        let ok = part_ok(org)
            && part_ok(name)
            && !repo.contains("--")
            && !repo.contains("..")
            && repo.len() <= 96
            && !repo.ends_with(".git")
            && revision_ok(revision);
        ok.then(|| Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == DEFAULT_REVISION {
            f.write_str(&self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

/// A revision is used as a path under `refs/`: no empty, `.` or `..` parts, no backslash.
fn revision_ok(rev: &str) -> bool {
    !rev.is_empty()
        && !rev.contains('\\')
        && rev
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && rev.chars().all(|c| !c.is_control())
}

/// A file name inside a repository, used as a path under `snapshots/<commit>/`.
fn file_name_ok(name: &str) -> bool {
    revision_ok(name) && !name.starts_with('/') && !name.contains(':')
}

/// A commit or ETag, used as one path component.
fn component_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Reports the progress of downloads; every method has a no-op default.
pub trait DownloadProgress: Send + Sync {
    /// A file of `total` bytes starts downloading.
    fn start(&self, _repo: &str, _file: &str, _total: u64) {}
    /// `bytes` of the current file are on disk (may go back when a download restarts).
    fn advance(&self, _bytes: u64) {}
    /// The current file is done (or failed).
    fn finish(&self) {}
}

struct NoProgress;
impl DownloadProgress for NoProgress {}

/// The files the transformers convention reads besides config and weights, when the repository
/// has them.
const HF_EXTRA_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
];

/// Weight files of the open_clip convention, preferred first.
const OPEN_CLIP_WEIGHTS: &[&str] = &["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];

/// Weight files a checkpoint given with `--arch` may come from, preferred first (as
/// `ModelSource` looks them up in a directory).
const ARCH_WEIGHTS: &[&str] = &[
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_model.pt",
    "model.safetensors",
    "pytorch_model.bin",
];

/// Whether a parsed `config.json` is a transformers CLIP config (and not, say, a custom
/// wrapper's config that points at open_clip files, as Marqo's models have).
pub fn is_clip_config(config: &Value) -> bool {
    config.get("text_config").is_some_and(Value::is_object)
        || config.get("vision_config").is_some_and(Value::is_object)
}

/// What a plan needs to know about a set of files: the hub's listing, or a cached snapshot.
trait FileSet {
    fn has(&self, name: &str) -> bool;
    fn json(&mut self, name: &str) -> Result<Value, HubError>;
}

/// Which files make a model, decided from the files a revision has.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// Files the model needs.
    required: Vec<String>,
    /// Files read when present (transformers tokenizer and preprocessor files).
    optional: Vec<&'static str>,
}

fn plan(repo: &str, files: &mut dyn FileSet, arch: bool) -> Result<Plan, HubError> {
    let not_a_model = |reason: &str| HubError::NotAModel {
        repo: repo.to_string(),
        reason: reason.to_string(),
    };
    if arch {
        // A checkpoint for an architecture given by name: its weights are all it takes.
        let w = ARCH_WEIGHTS
            .iter()
            .find(|w| files.has(w))
            .ok_or_else(|| not_a_model(&format!("no weight file ({})", ARCH_WEIGHTS.join(", "))))?;
        return Ok(Plan {
            required: vec![w.to_string()],
            optional: vec![],
        });
    }
    let mut hf_config = false;
    if files.has("config.json") {
        let config = files.json("config.json")?;
        // Said before any weights are downloaded. open_clip repositories (Marqo's) may carry a
        // config.json of another kind beside their own config: theirs decides.
        if let (Some(reason), false) = (
            crate::family::unsupported_family(&config),
            files.has("open_clip_config.json"),
        ) {
            return Err(not_a_model(&reason));
        }
        hf_config = is_clip_config(&config);
    }
    if hf_config {
        let mut required = vec!["config.json".to_string()];
        if files.has("model.safetensors") {
            required.push("model.safetensors".into());
        } else if files.has("model.safetensors.index.json") {
            let index = files.json("model.safetensors.index.json")?;
            let mut shards: Vec<String> = index
                .get("weight_map")
                .and_then(Value::as_object)
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            if shards.is_empty() {
                return Err(not_a_model(
                    "model.safetensors.index.json has no `weight_map`",
                ));
            }
            if let Some(bad) = shards.iter().find(|s| !file_name_ok(s)) {
                return Err(not_a_model(&format!(
                    "model.safetensors.index.json names an invalid shard `{bad}`"
                )));
            }
            required.push("model.safetensors.index.json".into());
            required.extend(shards);
        } else if files.has("pytorch_model.bin") {
            required.push("pytorch_model.bin".into());
        } else if !files.has("open_clip_config.json") {
            return Err(not_a_model(
                "config.json but no model.safetensors, model.safetensors.index.json or \
                 pytorch_model.bin",
            ));
        } else {
            hf_config = false;
        }
        if hf_config {
            return Ok(Plan {
                required,
                optional: HF_EXTRA_FILES.to_vec(),
            });
        }
    }
    if files.has("open_clip_config.json") {
        let w = OPEN_CLIP_WEIGHTS
            .iter()
            .find(|w| files.has(w))
            .ok_or_else(|| {
                not_a_model(
                    "open_clip_config.json but no open_clip_model.safetensors or \
                 open_clip_pytorch_model.bin",
                )
            })?;
        return Ok(Plan {
            required: vec!["open_clip_config.json".into(), w.to_string()],
            optional: vec![],
        });
    }
    Err(not_a_model(
        "neither a transformers CLIP config.json (with text_config / vision_config) nor \
         open_clip_config.json",
    ))
}

/// A snapshot folder on disk.
struct SnapshotFiles<'a> {
    dir: &'a Path,
}

impl FileSet for SnapshotFiles<'_> {
    fn has(&self, name: &str) -> bool {
        self.dir.join(name).is_file()
    }
    fn json(&mut self, name: &str) -> Result<Value, HubError> {
        read_json(&self.dir.join(name))
    }
}

fn read_json(path: &Path) -> Result<Value, HubError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| HubError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not JSON: {e}")),
    })
}

/// A cached snapshot of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSnapshot {
    /// `snapshots/<commit>`.
    pub dir: PathBuf,
    /// The commit the revision pointed to when the snapshot was made.
    pub commit: String,
    /// Whether every file gclip reads is there (or known not to exist in the repository);
    /// otherwise only the config and weights are.
    pub complete: bool,
}

/// The list of a revision's files, as the hub's API gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoListing {
    /// The commit the revision resolves to.
    pub commit: String,
    /// File names relative to the repository's root.
    pub files: BTreeSet<String>,
}

/// A file's metadata, from a `HEAD` of its `resolve` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMetadata {
    /// `X-Repo-Commit`: the commit the file was resolved at.
    pub commit: String,
    /// `X-Linked-Etag` (the sha256 of LFS files) or `ETag` (the git blob id), unquoted.
    pub etag: String,
    /// `X-Linked-Size` (LFS files) or `Content-Length`.
    pub size: u64,
    /// Where to read the contents: the CDN for LFS files, the `resolve` URL otherwise.
    pub location: String,
}

/// A client of the Hugging Face hub and its local cache.
pub struct Hub {
    config: HubConfig,
    progress: Arc<dyn DownloadProgress>,
    agent: OnceLock<ureq::Agent>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").field("config", &self.config).finish()
    }
}

impl Hub {
    /// A client with an explicit configuration, reporting no progress.
    pub fn new(config: HubConfig) -> Self {
        Self {
            config,
            progress: Arc::new(NoProgress),
            agent: OnceLock::new(),
        }
    }

    /// A client configured from the environment, as huggingface_hub is.
    pub fn from_env() -> Self {
        Self::new(HubConfig::from_env())
    }

    /// Reports download progress to `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn DownloadProgress>) -> Self {
        self.progress = progress;
        self
    }

    /// The configuration this client uses.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The snapshot folder of a model, ready to load: from the cache when it is complete there,
    /// downloaded otherwise. With `arch`, only a weight file is needed (the architecture comes
    /// from elsewhere). When the hub cannot be reached but the cache holds the config and
    /// weights, those are used, with a warning.
    pub fn model_snapshot(&self, id: &ModelId, arch: bool) -> Result<PathBuf, HubError> {
        let cached = self.cached_snapshot(id, arch);
        if let Some(c) = &cached {
            if c.complete {
                tracing::debug!("{id}: using the cached snapshot {}", c.dir.display());
                return Ok(c.dir.clone());
            }
        }
        if self.config.offline {
            return match cached {
                Some(c) => {
                    tracing::warn!(
                        "{id}: offline mode; the cached snapshot lacks some tokenizer or \
                         preprocessor files, using it as it is"
                    );
                    Ok(c.dir)
                }
                None => Err(HubError::Offline {
                    repo: id.to_string(),
                    cache: self.config.cache_dir.clone(),
                }),
            };
        }
        match self.download_model(id, arch) {
            Ok(dir) => Ok(dir),
            Err(e) => match cached {
                Some(c) => {
                    tracing::warn!("{e}; using the cached snapshot {}", c.dir.display());
                    Ok(c.dir)
                }
                None => Err(e),
            },
        }
    }

    /// The cached snapshot of a model, when it holds at least its config and weights.
    pub fn cached_snapshot(&self, id: &ModelId, arch: bool) -> Option<CachedSnapshot> {
        let repo_dir = self.config.repo_dir(&id.repo);
        let commit = if is_commit_hash(&id.revision) {
            id.revision.clone()
        } else {
            let r = std::fs::read_to_string(repo_dir.join("refs").join(&id.revision)).ok()?;
            r.trim().to_string()
        };
        if !component_ok(&commit) {
            return None;
        }
        let dir = repo_dir.join("snapshots").join(&commit);
        if !dir.is_dir() {
            return None;
        }
        let plan = plan(&id.repo, &mut SnapshotFiles { dir: &dir }, arch).ok()?;
        if !plan.required.iter().all(|f| dir.join(f).is_file()) {
            return None;
        }
        let no_exist = repo_dir.join(".no_exist").join(&commit);
        let complete = plan
            .optional
            .iter()
            .all(|f| dir.join(f).is_file() || no_exist.join(f).is_file());
        Some(CachedSnapshot {
            dir,
            commit,
            complete,
        })
    }

    /// Downloads what a model needs into the cache (skipping files already there for the same
    /// commit) and returns its snapshot folder. Always asks the hub which commit the revision is.
    pub fn download_model(&self, id: &ModelId, arch: bool) -> Result<PathBuf, HubError> {
        let repo = &id.repo;
        let listing = self.list_files(id)?;
        let commit = listing.commit.clone();
        let repo_dir = self.config.repo_dir(repo);
        let mut remote = RemoteFiles {
            hub: self,
            repo,
            listing: &listing,
        };
        let plan = plan(&id.to_string(), &mut remote, arch)?;
        for file in &plan.required {
            self.download_file(repo, &commit, file)?;
        }
        let no_exist = repo_dir.join(".no_exist").join(&commit);
        for file in &plan.optional {
            if listing.files.contains(*file) {
                self.download_file(repo, &commit, file)?;
            } else {
                // As huggingface_hub records files it found missing, so that transformers and
                // later runs need not ask again.
                let marker = no_exist.join(file);
                if !marker.is_file() {
                    let made = std::fs::create_dir_all(&no_exist)
                        .and_then(|()| File::create(&marker).map(drop));
                    if let Err(e) = made {
                        tracing::warn!("cannot record {}: {e}", marker.display());
                    }
                }
            }
        }
        if id.revision != commit {
            write_ref(&repo_dir, &id.revision, &commit)?;
        }
        Ok(repo_dir.join("snapshots").join(commit))
    }

    /// The commit a revision resolves to and its files: `GET /api/models/{repo}/revision/{rev}`.
    pub fn list_files(&self, id: &ModelId) -> Result<RepoListing, HubError> {
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.config.endpoint,
            id.repo,
            quote(&id.revision, false)
        );
        let ctx = Ctx {
            repo: &id.repo,
            revision: &id.revision,
            file: None,
        };
        let mut url = url;
        let mut hops = 0;
        let response = loop {
            let r = self.send(&ctx, "GET", &url, None)?;
            match redirect_target(&url, &r) {
                Some(next) if hops < 10 => {
                    hops += 1;
                    url = next;
                }
                _ => break r,
            }
        };
        let status = response.status().as_u16();
        if status != 200 {
            return Err(self.status_error(&ctx, &url, &response));
        }
        let text = response
            .into_body()
            .into_with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.transport_error(&ctx, &url, e))?;
        let protocol = |message: String| HubError::Protocol {
            repo: id.repo.clone(),
            url: url.clone(),
            message,
        };
        let value: Value =
            serde_json::from_str(&text).map_err(|e| protocol(format!("not JSON: {e}")))?;
        let commit = value
            .get("sha")
            .and_then(Value::as_str)
            .filter(|s| component_ok(s))
            .ok_or_else(|| protocol("no commit (`sha`) in the answer".into()))?
            .to_string();
        let files = value
            .get("siblings")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol("no file list (`siblings`) in the answer".into()))?
            .iter()
            .filter_map(|s| s.get("rfilename").and_then(Value::as_str))
            .filter(|f| file_name_ok(f))
            .map(String::from)
            .collect();
        Ok(RepoListing { commit, files })
    }

    /// A file's metadata: `HEAD /{repo}/resolve/{revision}/{file}`, following relative redirects
    /// (renamed repositories) but not the redirect to the CDN.
    pub fn file_metadata(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> Result<FileMetadata, HubError> {
        let ctx = Ctx {
            repo,
            revision,
            file: Some(file),
        };
        let mut url = resolve_url(&self.config.endpoint, repo, revision, file);
        let mut hops = 0;
        let response = loop {
            let r = self.send(&ctx, "HEAD", &url, None)?;
            let relative = r
                .status()
                .is_redirection()
                .then(|| header(&r, "location"))
                .flatten()
                .filter(|l| l.starts_with('/') && !l.starts_with("//"));
            match relative {
                Some(path) if hops < 10 => {
                    hops += 1;
                    url = format!("{}{}", origin(&url), path);
                }
                _ => break r,
            }
        };
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(self.status_error(&ctx, &url, &response));
        }
        let protocol = |message: &str| HubError::Protocol {
            repo: repo.to_string(),
            url: url.clone(),
            message: message.to_string(),
        };
        let commit = header(&response, "x-repo-commit")
            .filter(|c| component_ok(c))
            .ok_or_else(|| protocol("no X-Repo-Commit header: not a Hugging Face hub answer"))?;
        let etag = header(&response, "x-linked-etag")
            .or_else(|| header(&response, "etag"))
            .map(normalize_etag)
            .ok_or_else(|| protocol("no ETag header"))?;
        if !component_ok(&etag) {
            return Err(protocol(&format!("unusable ETag `{etag}`")));
        }
        let size = header(&response, "x-linked-size")
            .or_else(|| {
                if status.is_redirection() {
                    None
                } else {
                    header(&response, "content-length")
                }
            })
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| protocol("no file size (X-Linked-Size / Content-Length)"))?;
        let location = match header(&response, "location") {
            Some(l) if status.is_redirection() => absolute(&url, &l),
            _ => url.clone(),
        };
        Ok(FileMetadata {
            commit,
            etag,
            size,
            location,
        })
    }

    /// One file of a commit into the cache, unless it is there already: the blob under its
    /// ETag, the snapshot entry as a relative symlink to it. Returns the snapshot entry.
    pub fn download_file(&self, repo: &str, commit: &str, file: &str) -> Result<PathBuf, HubError> {
        if !file_name_ok(file) || !component_ok(commit) {
            return Err(HubError::Protocol {
                repo: repo.to_string(),
                url: file.to_string(),
                message: "invalid file name or commit".into(),
            });
        }
        let repo_dir = self.config.repo_dir(repo);
        let pointer = repo_dir.join("snapshots").join(commit).join(file);
        if pointer.is_file() {
            return Ok(pointer);
        }
        let meta = self.file_metadata(repo, commit, file)?;
        let blob = repo_dir.join("blobs").join(&meta.etag);
        if !blob.is_file() {
            tag_cache_dir(&self.config.cache_dir);
            self.download_blob(repo, commit, file, &meta, &blob)?;
        }
        let depth = file.split('/').count() + 1;
        let target: PathBuf = std::iter::repeat_n(Path::new(".."), depth)
            .collect::<PathBuf>()
            .join("blobs")
            .join(&meta.etag);
        link(&target, &blob, &pointer)?;
        Ok(pointer)
    }

    fn download_blob(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        meta: &FileMetadata,
        blob: &Path,
    ) -> Result<(), HubError> {
        let dir = blob.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(
            "{}.{}{:08x}{}.incomplete",
            meta.etag,
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        tracing::info!("downloading {repo}/{file} ({} bytes)", meta.size);
        self.progress.start(repo, file, meta.size);
        let result = self
            .fetch_to(repo, revision, file, meta, &tmp)
            .and_then(|f| {
                f.sync_all().map_err(io_err(&tmp))?;
                drop(f);
                std::fs::rename(&tmp, blob).map_err(io_err(blob))
            });
        self.progress.finish();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Reads a file's contents into `tmp`, resuming with a `Range` request after a broken
    /// connection (up to 5 failures in a row without new data), and checks its size.
    fn fetch_to(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        meta: &FileMetadata,
        tmp: &Path,
    ) -> Result<File, HubError> {
        let ctx = Ctx {
            repo,
            revision,
            file: Some(file),
        };
        let failed = |reason: String| HubError::Download {
            repo: repo.to_string(),
            file: file.to_string(),
            reason,
        };
        let mut out = File::create(tmp).map_err(io_err(tmp))?;
        let mut written: u64 = 0;
        let mut failures = 0;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            if written == meta.size && meta.size > 0 {
                break;
            }
            let attempt_start = written;
            let range = (written > 0).then(|| format!("bytes={written}-"));
            let response = {
                let mut url = meta.location.clone();
                let mut hops = 0;
                loop {
                    let r = self.send(&ctx, "GET", &url, range.as_deref());
                    match r {
                        Ok(r) => match redirect_target(&url, &r) {
                            Some(next) if hops < 10 => {
                                hops += 1;
                                url = next;
                            }
                            _ => break Ok((url, r)),
                        },
                        Err(e) => break Err(e),
                    }
                }
            };
            let outcome: Result<(), String> = match response {
                Err(e @ HubError::Unreachable { .. }) if written > 0 => Err(e.to_string()),
                Err(e) => return Err(e),
                Ok((url, r)) => match r.status().as_u16() {
                    206 if written > 0 => Ok(r),
                    200 => {
                        // A whole file: start over even if a resumed request was answered so.
                        if written > 0 {
                            out.set_len(0).map_err(io_err(tmp))?;
                            out.rewind().map_err(io_err(tmp))?;
                            written = 0;
                            self.progress.advance(0);
                        }
                        Ok(r)
                    }
                    408 | 429 | 500..=599 if written > 0 => {
                        Err(format!("{url} answered HTTP {}", r.status().as_u16()))
                    }
                    _ => return Err(self.status_error(&ctx, &url, &r)),
                }
                .and_then(|r| {
                    let mut reader = r.into_body().into_reader();
                    loop {
                        match reader.read(&mut buf) {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                out.write_all(&buf[..n])
                                    .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
                                written += n as u64;
                                self.progress.advance(written);
                                if written > meta.size {
                                    break Err(format!(
                                        "the hub sent more than the announced {} bytes",
                                        meta.size
                                    ));
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(format!("connection broken: {e}")),
                        }
                    }
                }),
            };
            let reason = match outcome {
                Ok(()) if written == meta.size => break,
                Ok(()) => format!(
                    "the connection closed after {written} of {} bytes",
                    meta.size
                ),
                Err(reason) => reason,
            };
            if written > meta.size {
                return Err(failed(reason));
            }
            if written > attempt_start {
                failures = 0;
            }
            failures += 1;
            if failures >= 5 {
                return Err(failed(format!("{reason} (consistency check failed)")));
            }
            tracing::warn!("{repo}/{file}: {reason}; resuming at byte {written}");
            std::thread::sleep(Duration::from_millis(100 * failures as u64));
        }
        out.flush().map_err(io_err(tmp))?;
        Ok(out)
    }

    fn agent(&self) -> &ureq::Agent {
        self.agent.get_or_init(|| {
            // Redirects are followed by this client, not the agent, so that the token never
            // goes to another host (`send`); a hub on this machine is never reached through a
            // proxy.
            AgentBuilder::new(self.config.connect_timeout)
                .read_timeout(self.config.read_timeout)
                .proxy(!is_loopback(&self.config.endpoint))
                .build()
        })
    }

    /// One request, no redirects followed; the token goes only to the hub itself, never to
    /// another host (the CDN's URLs are signed).
    fn send(
        &self,
        ctx: &Ctx<'_>,
        method: &str,
        url: &str,
        range: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, HubError> {
        let agent = self.agent();
        let token = self
            .config
            .token
            .as_ref()
            .filter(|_| origin(url) == origin(&self.config.endpoint));
        macro_rules! build {
            ($req:expr) => {{
                let mut req = $req.header("accept-encoding", "identity");
                if let Some(t) = token {
                    req = req.header("authorization", &format!("Bearer {t}"));
                }
                if let Some(r) = range {
                    req = req.header("range", r);
                }
                req.call()
            }};
        }
        let result = match method {
            "HEAD" => build!(agent.head(url)),
            _ => build!(agent.get(url)),
        };
        result.map_err(|e| self.transport_error(ctx, url, e))
    }

    fn transport_error(&self, ctx: &Ctx<'_>, url: &str, e: ureq::Error) -> HubError {
        match e {
            ureq::Error::BadUri(m) => HubError::Protocol {
                repo: ctx.repo.to_string(),
                url: url.to_string(),
                message: format!("invalid URL ({m}); check HF_ENDPOINT"),
            },
            e => HubError::Unreachable {
                repo: ctx.repo.to_string(),
                endpoint: self.config.endpoint.clone(),
                cache: self.config.cache_dir.clone(),
                reason: format!("{url}: {e}"),
            },
        }
    }

    fn status_error(
        &self,
        ctx: &Ctx<'_>,
        url: &str,
        response: &ureq::http::Response<ureq::Body>,
    ) -> HubError {
        let status = response.status().as_u16();
        let code = header(response, "x-error-code").unwrap_or_default();
        let message = header(response, "x-error-message").unwrap_or_default();
        let repo = ctx.repo.to_string();
        let endpoint = self.config.endpoint.clone();
        match code.as_str() {
            "RevisionNotFound" => HubError::RevisionNotFound {
                repo,
                revision: ctx.revision.to_string(),
                endpoint,
            },
            "EntryNotFound" => HubError::FileMissing {
                repo,
                revision: ctx.revision.to_string(),
                file: ctx.file.unwrap_or("").to_string(),
            },
            "GatedRepo" => HubError::Gated {
                repo,
                endpoint,
                message,
            },
            _ if status == 401 && message == "Invalid credentials in Authorization header" => {
                HubError::InvalidToken { repo, endpoint }
            }
            "RepoNotFound" => HubError::RepoNotFound { repo, endpoint },
            _ if status == 401 => HubError::RepoNotFound { repo, endpoint },
            _ if status == 404 && ctx.file.is_none() => HubError::RepoNotFound { repo, endpoint },
            _ if status == 404 => HubError::FileMissing {
                repo,
                revision: ctx.revision.to_string(),
                file: ctx.file.unwrap_or("").to_string(),
            },
            _ => HubError::Http {
                repo,
                url: url.to_string(),
                status,
                message: if status == 403 && message.is_empty() {
                    "forbidden; does the token (HF_TOKEN) have the permissions needed?".into()
                } else {
                    message
                },
            },
        }
    }
}

/// The hub's answers to the questions a plan asks of a revision.
struct RemoteFiles<'a> {
    hub: &'a Hub,
    repo: &'a str,
    listing: &'a RepoListing,
}

impl FileSet for RemoteFiles<'_> {
    fn has(&self, name: &str) -> bool {
        self.listing.files.contains(name)
    }
    fn json(&mut self, name: &str) -> Result<Value, HubError> {
        let path = self
            .hub
            .download_file(self.repo, &self.listing.commit, name)?;
        read_json(&path)
    }
}

/// What a request was about, for its errors.
struct Ctx<'a> {
    repo: &'a str,
    revision: &'a str,
    file: Option<&'a str>,
}

fn header(r: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// `W/"abc"` and `"abc"` → `abc`.
fn normalize_etag(etag: String) -> String {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"').to_string()
}

/// `{endpoint}/{repo}/resolve/{revision}/{file}`, revision and file percent-encoded (the file
/// keeping its slashes), as `hf_hub_url` builds it.
pub fn resolve_url(endpoint: &str, repo: &str, revision: &str, file: &str) -> String {
    format!(
        "{endpoint}/{repo}/resolve/{}/{}",
        quote(revision, false),
        quote(file, true)
    )
}

/// Percent-encoding as Python's `urllib.parse.quote`: letters, digits and `_.-~` stay, `/`
/// stays when `keep_slash`.
fn quote(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("https");
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or(base);
        format!("{dir}/{location}")
    }
}

fn redirect_target(url: &str, r: &ureq::http::Response<ureq::Body>) -> Option<String> {
    if !r.status().is_redirection() {
        return None;
    }
    header(r, "location").map(|l| absolute(url, &l))
}

/// True when a URL's host is this machine (`localhost`, 127.0.0.0/8, `[::1]`): such requests
/// never go through a proxy.
pub fn is_loopback(endpoint: &str) -> bool {
    let host_port = origin(endpoint)
        .split("://")
        .nth(1)
        .unwrap_or("")
        .to_ascii_lowercase();
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("").to_string()
    } else {
        host_port.split(':').next().unwrap_or("").to_string()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Marks the cache as such for backup tools (the CACHEDIR.TAG standard), as huggingface_hub
/// does; best effort.
fn tag_cache_dir(cache_dir: &Path) {
    let tag = cache_dir.join("CACHEDIR.TAG");
    if tag.exists() {
        return;
    }
    let made = std::fs::create_dir_all(cache_dir).and_then(|()| {
        std::fs::write(
            &tag,
            "Signature: 8a477f597d28d172789f06886806bc55\n\
             # This file is a cache directory tag created by gclip (Hugging Face hub cache).\n\
             # For information about cache directory tags, see:\n\
             #\thttps://bford.info/cachedir/\n",
        )
    });
    if let Err(e) = made {
        tracing::debug!("cannot write {}: {e}", tag.display());
    }
}

/// `refs/<revision>` holds `commit`, written atomically.
fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<(), HubError> {
    let path = repo_dir.join("refs").join(revision);
    if std::fs::read_to_string(&path).is_ok_and(|c| c == commit) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(repo_dir);
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    crate::fsutil::write_file_atomically(&path, commit.as_bytes())
        .map_err(|source| HubError::Io { path, source })
}

/// `pointer` → `target` (relative, pointing at `blob`); a copy of the blob where symlinks are
/// not supported.
fn link(target: &Path, blob: &Path, pointer: &Path) -> Result<(), HubError> {
    let dir = pointer.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if pointer.symlink_metadata().is_ok() {
        // A broken link, or a leftover: replace it.
        std::fs::remove_file(pointer).map_err(io_err(pointer))?;
    }
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(target, pointer);
    #[cfg(windows)]
    let made = std::os::windows::fs::symlink_file(target, pointer)
        .or_else(|_| std::fs::copy(blob, pointer).map(drop));
    #[cfg(not(any(unix, windows)))]
    let made = std::fs::copy(blob, pointer).map(drop);
    let _ = (target, blob);
    match made {
        Ok(()) => Ok(()),
        // Another process made the same entry in the meantime.
        Err(_) if pointer.is_file() => Ok(()),
        Err(e) => Err(HubError::Io {
            path: pointer.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_follow_huggingface_hub_rules() {
        let id = ModelId::parse("openai/clip-vit-base-patch32").unwrap();
        assert_eq!(id.repo, "openai/clip-vit-base-patch32");
        assert_eq!(id.revision, "main");
        let id = ModelId::parse("laion/CLIP-ViT-B-32-laion2B-s34B-b79K@refs/pr/3").unwrap();
        assert_eq!(id.revision, "refs/pr/3");
        assert_eq!(
            id.to_string(),
            "laion/CLIP-ViT-B-32-laion2B-s34B-b79K@refs/pr/3"
        );
        // open_clip's spelling of the same id.
        let id = ModelId::parse("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K").unwrap();
        assert_eq!(id.repo, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K");
        assert_eq!(id.revision, "main");
        for bad in [
            "hf-hub:",
            "hf-hub:ViT-B-32",
            "hf-hub:hf-hub:org/name",
            "ViT-B-32",
            "a/b/c",
            "./model",
            "../x",
            "/abs/path",
            "org/-name",
            "org/na--me",
            "org/na..me",
            "org/name.git",
            "org/name@",
            "org/name@../x",
            "org/",
            "model.pt",
            "C:\\models\\clip",
        ] {
            assert_eq!(ModelId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn urls_are_built_and_split_like_huggingface_hub() {
        assert_eq!(
            resolve_url(
                "https://huggingface.co",
                "org/m",
                "refs/pr/1",
                "sub dir/a+b.json"
            ),
            "https://huggingface.co/org/m/resolve/refs%2Fpr%2F1/sub%20dir/a%2Bb.json"
        );
        assert_eq!(origin("http://127.0.0.1:8080/x/y"), "http://127.0.0.1:8080");
        assert_eq!(origin("https://hf.co"), "https://hf.co");
        assert_eq!(absolute("http://h:1/a/b", "/c/d"), "http://h:1/c/d");
        assert_eq!(absolute("http://h:1/a/b", "https://cdn/x"), "https://cdn/x");
        assert_eq!(absolute("https://h/a/b", "//cdn/x"), "https://cdn/x");
        assert_eq!(normalize_etag("W/\"abc\"".into()), "abc");
        assert_eq!(normalize_etag("\"abc\"".into()), "abc");
        assert!(is_loopback("http://127.0.0.1:9"));
        assert!(is_loopback("http://localhost"));
        assert!(is_loopback("http://[::1]:80/"));
        assert!(!is_loopback("https://huggingface.co"));
    }
}
