//! Where the hub is, where the cache is, and how to talk to the hub, read from the environment
//! as huggingface_hub reads it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::DEFAULT_ENDPOINT;
use crate::environment::Env;

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
