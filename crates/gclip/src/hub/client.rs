//! The hub's HTTP protocol: listing a revision's files, a file's metadata, and downloads into
//! the cache (resumed after broken connections, renamed into place when complete).

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use super::cache::{link, tag_cache_dir, write_ref};
use super::plan::{plan, FileSet};
use super::{
    component_ok, file_name_ok, io_err, read_json, DownloadProgress, HubConfig, HubError, ModelId,
    NoProgress,
};
use crate::http::AgentBuilder;

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
    pub(super) config: HubConfig,
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

#[cfg(test)]
mod tests {
    use super::*;

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
