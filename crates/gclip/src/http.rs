//! The HTTP client every gclip download goes through (the hub's files, image URLs): one
//! builder of `ureq` agents, so that the user agent, how statuses are reported, the proxy rule
//! and the meaning of each timeout are decided in one place, and what differs between callers
//! is a parameter.

use std::time::Duration;

/// The settings of an agent.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
    total_timeout: Option<Duration>,
    max_redirects: u32,
    proxy: bool,
}

impl AgentBuilder {
    /// An agent that resolves and connects within `connect_timeout`, has no other time limit,
    /// follows no redirect and goes through the environment's proxy (`HTTPS_PROXY`,
    /// `ALL_PROXY`, …) when one is set. Its answers of every status are returned, not errors:
    /// callers tell the user what a 401 or a 404 means for them.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            read_timeout: None,
            total_timeout: None,
            max_redirects: 0,
            proxy: true,
        }
    }

    /// The longest an open connection may stay silent: each read, each write, and the wait for
    /// the answer's head.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// The longest a whole request may take, the answer's body included.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = Some(timeout);
        self
    }

    /// Redirects followed before the last answer is returned.
    pub fn max_redirects(mut self, n: u32) -> Self {
        self.max_redirects = n;
        self
    }

    /// Whether to go through the environment's proxy. Not for a host on this machine, nor when
    /// the destination must be checked (the proxy would make the connection, and the check
    /// would only see the proxy's address).
    pub fn proxy(mut self, use_proxy: bool) -> Self {
        self.proxy = use_proxy;
        self
    }

    fn config(&self) -> ureq::config::Config {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(self.max_redirects)
            .proxy(if self.proxy {
                ureq::Proxy::try_from_env()
            } else {
                None
            })
            .user_agent(format!("gclip/{}", env!("CARGO_PKG_VERSION")))
            .timeout_resolve(Some(self.connect_timeout))
            .timeout_connect(Some(self.connect_timeout))
            .timeout_per_read(self.read_timeout)
            .timeout_per_write(self.read_timeout)
            .timeout_recv_response(self.read_timeout)
            .timeout_global(self.total_timeout)
            .build()
    }

    /// The agent.
    pub fn build(&self) -> ureq::Agent {
        ureq::Agent::new_with_config(self.config())
    }

    /// The agent, with host names resolved by `resolver`, which may refuse some addresses (a
    /// server's guard on the URLs its clients send, checked at every resolution, redirects
    /// included).
    pub fn build_with_resolver(
        &self,
        resolver: impl ureq::unversioned::resolver::Resolver,
    ) -> ureq::Agent {
        ureq::Agent::with_parts(
            self.config(),
            ureq::unversioned::transport::DefaultConnector::default(),
            resolver,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_reach_the_agent() {
        let agent = AgentBuilder::new(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(7))
            .max_redirects(5)
            .proxy(false)
            .build();
        let c = agent.config();
        assert!(!c.http_status_as_error());
        assert_eq!(c.max_redirects(), 5);
        assert!(c.proxy().is_none());
        assert_eq!(c.timeout_per_read(), Some(Duration::from_secs(7)));
        assert_eq!(c.timeouts().connect, Some(Duration::from_secs(3)));
        assert_eq!(c.timeouts().recv_response, Some(Duration::from_secs(7)));
        assert_eq!(c.timeouts().global, None);
        let c = AgentBuilder::new(Duration::from_secs(3))
            .total_timeout(Duration::from_secs(30))
            .build()
            .config()
            .clone();
        assert_eq!(c.max_redirects(), 0);
        assert_eq!(c.timeouts().global, Some(Duration::from_secs(30)));
        assert_eq!(c.timeout_per_read(), None);
    }
}
