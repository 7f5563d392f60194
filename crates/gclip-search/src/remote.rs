//! Images given by URL: fetched once into a local cache and used from there like any image
//! file (embedding, thumbnails). Offline, only what is cached is used, and anything else fails
//! at once with a message that says so; a failed fetch fails its document alone.
//!
//! The cache is content of the web, not of a collection: one directory for every collection
//! (`GCLIP_IMAGE_CACHE`, else `$XDG_CACHE_HOME/gclip/images`, else `~/.cache/gclip/images`),
//! a file per URL named by the URL's hash.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use gclip::environment::Env;
use gclip::http::AgentBuilder;
use gclip::hub::is_loopback;

use crate::netguard::{Guard, GuardedResolver};

/// True when `s` is an `http://` or `https://` URL (the only schemes fetched).
pub fn is_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// How URLs are fetched and where they are kept.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub cache_dir: PathBuf,
    /// Never touch the network: only cached images are used.
    pub offline: bool,
    /// Who turned the network off, for the message a refused URL gets.
    pub offline_reason: String,
    /// Largest image accepted, in bytes.
    pub max_bytes: u64,
    /// Limit for resolving and connecting.
    pub connect_timeout: Duration,
    /// Limit for the whole download of one image.
    pub timeout: Duration,
    /// Downloads at once.
    pub parallel: usize,
    /// Fetching for clients of a server: only the addresses the guard allows, checked after
    /// every resolution (redirects too), no proxy (the check must see the real destination),
    /// and one error text for every refused or failed fetch, so that a client cannot probe
    /// which hosts and ports exist. `None`: the operator's own fetches (CLI), anything goes.
    pub guard: Option<Guard>,
}

impl RemoteConfig {
    /// From environment variables looked up by `var`:
    /// - cache: `GCLIP_IMAGE_CACHE`, else `$XDG_CACHE_HOME/gclip/images`, else
    ///   `$HOME/.cache/gclip/images` ([`Env::image_cache`]);
    /// - offline: `GCLIP_OFFLINE`, or `HF_HUB_OFFLINE` (the switch users already set for
    ///   models), true as `1`/`ON`/`YES`/`TRUE`;
    /// - size limit: `GCLIP_MAX_IMAGE_BYTES`, 50 MB by default;
    /// - download limit: `GCLIP_IMAGE_TIMEOUT` seconds, 30 by default (connecting: 10).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let env = Env::new(&var);
        let max_bytes =
            gclip::input::image::parse_max_image_bytes(env.get("GCLIP_MAX_IMAGE_BYTES").as_deref());
        let timeout = env
            .seconds("GCLIP_IMAGE_TIMEOUT")
            .unwrap_or(Duration::from_secs(30));
        Self {
            cache_dir: env.image_cache(),
            offline: env.images_offline(),
            offline_reason: "GCLIP_OFFLINE or HF_HUB_OFFLINE is set".into(),
            max_bytes,
            connect_timeout: Duration::from_secs(10).min(timeout),
            timeout,
            parallel: 8,
            guard: None,
        }
    }
}

/// What a client of a guarded fetcher is told for any URL that was refused or failed.
pub const UNFETCHED: &str = "could not be fetched";

static SHARED: OnceLock<RemoteImages> = OnceLock::new();

/// Fetches image URLs into the cache.
pub struct RemoteImages {
    config: RemoteConfig,
    /// Through the environment's proxy, if any.
    agent: OnceLock<ureq::Agent>,
    /// For hosts on this machine.
    direct: OnceLock<ureq::Agent>,
}

impl RemoteImages {
    pub fn new(config: RemoteConfig) -> Self {
        Self {
            config,
            agent: OnceLock::new(),
            direct: OnceLock::new(),
        }
    }

    /// The process's fetcher: the one given to [`RemoteImages::init_shared`], else one
    /// configured from the environment.
    pub fn shared() -> &'static RemoteImages {
        SHARED.get_or_init(|| Self::new(RemoteConfig::from_vars(|n| std::env::var(n).ok())))
    }

    /// Sets the process's fetcher (an embedding program's own cache, a test's); false when
    /// it was already set or used.
    pub fn init_shared(config: RemoteConfig) -> bool {
        SHARED.set(Self::new(config)).is_ok()
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// Where `url` is kept once fetched.
    pub fn cache_path(&self, url: &str) -> PathBuf {
        let hash = xxhash_rust::xxh3::xxh3_128(url.as_bytes());
        self.config.cache_dir.join(format!("{hash:032x}"))
    }

    /// The local copy of `url`: the cached one, or a fresh download. Errors name the URL.
    pub fn fetch(&self, url: &str) -> Result<PathBuf, String> {
        let path = self.cache_path(url);
        if path.is_file() {
            return Ok(path);
        }
        if self.config.offline {
            // A server's clients are not told where its cache is.
            return Err(match self.config.guard {
                Some(_) => format!("{url}: not fetched ({})", self.config.offline_reason),
                None => format!(
                    "{url}: offline ({}) and not in the image cache {}",
                    self.config.offline_reason,
                    self.config.cache_dir.display()
                ),
            });
        }
        let fetched = self
            .download(url)
            .map_err(|e| format!("{url}: {e}"))
            .and_then(|bytes| {
                self.store(&path, &bytes)
                    .map_err(|e| format!("{url}: caching in {}: {e}", path.display()))
            });
        match (fetched, &self.config.guard) {
            (Ok(()), _) => Ok(path),
            (Err(e), None) => Err(e),
            (Err(e), Some(_)) => {
                tracing::warn!("image URL not fetched: {e}");
                Err(format!("{url}: {UNFETCHED}"))
            }
        }
    }

    /// [`RemoteImages::fetch`] for many URLs, several at a time; results in order.
    pub fn fetch_all(&self, urls: &[&str]) -> Vec<Result<PathBuf, String>> {
        let mut out: Vec<Option<Result<PathBuf, String>>> = vec![None; urls.len()];
        let next = AtomicUsize::new(0);
        let workers = self.config.parallel.clamp(1, urls.len().max(1));
        let results: Vec<Vec<(usize, Result<PathBuf, String>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(url) = urls.get(i) else { break };
                            mine.push((i, self.fetch(url)));
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for (i, r) in results.into_iter().flatten() {
            out[i] = Some(r);
        }
        out.into_iter()
            .zip(urls)
            .map(|(r, url)| r.unwrap_or_else(|| Err(format!("{url}: download did not finish"))))
            .collect()
    }

    fn agent(&self, url: &str) -> &ureq::Agent {
        // A guarded agent never uses a proxy: the proxy would make the connection, and the
        // guard could only check the proxy's address.
        let direct = is_loopback(url) || self.config.guard.is_some();
        let cell = if direct { &self.direct } else { &self.agent };
        cell.get_or_init(|| {
            let builder = AgentBuilder::new(self.config.connect_timeout)
                .total_timeout(self.config.timeout)
                .max_redirects(5)
                .proxy(!direct);
            match &self.config.guard {
                Some(guard) => builder.build_with_resolver(GuardedResolver(guard.clone())),
                None => builder.build(),
            }
        })
    }

    fn download(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .agent(url)
            .get(url)
            .call()
            .map_err(|e| format!("download failed: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        if let Some(len) = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if len > self.config.max_bytes {
                return Err(self.too_large());
            }
        }
        let bytes = response
            .body_mut()
            .with_config()
            .limit(self.config.max_bytes + 1)
            .read_to_vec()
            .map_err(|e| format!("download failed: {e}"))?;
        if bytes.len() as u64 > self.config.max_bytes {
            return Err(self.too_large());
        }
        if bytes.is_empty() {
            return Err("empty response".into());
        }
        Ok(bytes)
    }

    fn too_large(&self) -> String {
        format!(
            "larger than {} bytes (GCLIP_MAX_IMAGE_BYTES)",
            self.config.max_bytes
        )
    }

    /// Written to a temporary file and renamed, so that a cached file is always whole.
    fn store(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.config.cache_dir)?;
        gclip::fsutil::write_file_atomically(path, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_url("https://example.com/a.png"));
        assert!(is_url("HTTP://example.com/a.png"));
        assert!(!is_url("/home/u/https://x.png"));
        assert!(!is_url("photos/http.png"));
        assert!(!is_url("ftp://example.com/a.png"));
        assert!(!is_url("é"));
    }

    #[test]
    fn config_from_vars() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = RemoteConfig::from_vars(vars(&[("HOME", "/h")]));
        assert_eq!(c.cache_dir, PathBuf::from("/h/.cache/gclip/images"));
        assert!(!c.offline);
        assert_eq!(c.max_bytes, 50_000_000);
        let c = RemoteConfig::from_vars(vars(&[
            ("HOME", "/h"),
            ("XDG_CACHE_HOME", "/x"),
            ("HF_HUB_OFFLINE", "yes"),
            ("GCLIP_MAX_IMAGE_BYTES", "1000"),
            ("GCLIP_IMAGE_TIMEOUT", "2"),
        ]));
        assert_eq!(c.cache_dir, PathBuf::from("/x/gclip/images"));
        assert!(c.offline);
        assert_eq!(c.max_bytes, 1000);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        let c =
            RemoteConfig::from_vars(vars(&[("GCLIP_IMAGE_CACHE", "/c"), ("GCLIP_OFFLINE", "0")]));
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert!(!c.offline);
    }
}
