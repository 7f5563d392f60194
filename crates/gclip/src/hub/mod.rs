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

mod cache;
mod client;
mod config;
mod plan;
pub(crate) use plan::weight_map_files;

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use cache::CachedSnapshot;
pub use client::{is_loopback, resolve_url, FileMetadata, Hub, RepoListing};
pub use config::HubConfig;
pub use plan::is_clip_config;

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

fn read_json(path: &Path) -> Result<Value, HubError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| HubError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not JSON: {e}")),
    })
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
}
