//! Which addresses a server may fetch for its clients.
//!
//! A client that names an image URL makes the server open a connection; without a guard that
//! reaches whatever the server can reach: its own loopback services, the private network it
//! sits in, cloud metadata endpoints. The guard lets only public unicast addresses through.
//!
//! The check runs on the addresses a host name resolves to, inside the HTTP client's resolver,
//! so it applies to every redirect hop as well, and the connection is made to exactly the
//! addresses that were checked (no second lookup that DNS rebinding could answer differently).
//! Every spelling of an address (`127.1`, `2130706433`, `0x7f000001`, `[::ffff:127.0.0.1]`)
//! ends up as the same [`IpAddr`] after resolution, which is what is checked.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// True for an address a fetch on a client's behalf may connect to: a public unicast address.
/// Loopback, private (RFC 1918, unique local), carrier-grade NAT, link-local, multicast,
/// broadcast, unspecified, documentation, benchmarking and reserved ranges are refused, and so
/// are IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) when the
/// IPv4 address is refused or cannot be told.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0                                  // "this network", unspecified
        || a == 10                                        // private
        || a == 127                                       // loopback
        || (a == 100 && (64..128).contains(&b))           // carrier-grade NAT
        || (a == 169 && b == 254)                         // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))            // private
        || (a == 192 && b == 0 && c == 0)                 // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)                 // documentation
        || (a == 192 && b == 88 && c == 99)               // 6to4 relay anycast
        || (a == 192 && b == 168)                         // private
        || (a == 198 && (18..20).contains(&b))            // benchmarking
        || (a == 198 && b == 51 && c == 100)              // documentation
        || (a == 203 && b == 0 && c == 113)               // documentation
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if s[..6] == [0; 6] {
        // ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d.
        return !ip.is_unspecified() && !ip.is_loopback() && is_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4 carries the IPv4 address in the next 32 bits.
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    let refused = s[0] & 0xfe00 == 0xfc00       // unique local fc00::/7
        || s[0] & 0xffc0 == 0xfe80              // link-local fe80::/10
        || s[0] & 0xffc0 == 0xfec0              // site-local (deprecated) fec0::/10
        || s[0] & 0xff00 == 0xff00              // multicast
        || (s[0] == 0x2001 && s[1] == 0)        // Teredo: obfuscated IPv4 inside
        || (s[0] == 0x2001 && s[1] == 0xdb8)    // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b)   // local-use NAT64 64:ff9b:1::/48
        || s[0] == 0x0100 && s[1..4] == [0; 3]; // discard-only 100::/64
    !refused
}

/// Looks a host name and port up; the system resolver unless a test gives another.
pub type Lookup = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

/// What a guarded fetch may reach.
#[derive(Clone)]
pub struct Guard {
    /// Only these host names (compared case-insensitively, exactly); empty: any host.
    pub allow_hosts: Vec<String>,
    /// Private and loopback addresses too (a server inside a trusted network).
    pub allow_private: bool,
    /// The resolver; the system's by default.
    pub lookup: Arc<Lookup>,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            allow_private: false,
            lookup: Arc::new(system_lookup),
        }
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("allow_hosts", &self.allow_hosts)
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

fn system_lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Why a guarded fetch was refused (for the operator's log; clients get one text for all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    HostNotAllowed(String),
    AddressNotPublic(String, IpAddr),
    NotResolved(String, String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::HostNotAllowed(h) => write!(f, "host {h} is not on the allow-list"),
            Refusal::AddressNotPublic(h, ip) => {
                write!(
                    f,
                    "host {h} resolves to {ip}, which is not a public address"
                )
            }
            Refusal::NotResolved(h, e) => write!(f, "host {h} could not be resolved: {e}"),
        }
    }
}

impl Guard {
    /// The addresses a fetch of `host:port` may connect to: every resolved address must be
    /// allowed (a name that also resolves to an internal address is refused whole, so that
    /// no connection attempt order can reach it).
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if !self.allow_hosts.is_empty()
            && !self
                .allow_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(bare))
        {
            return Err(Refusal::HostNotAllowed(bare.to_string()));
        }
        let addrs = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (self.lookup)(bare, port)
                .map_err(|e| Refusal::NotResolved(bare.to_string(), e.to_string()))?,
        };
        if addrs.is_empty() {
            return Err(Refusal::NotResolved(bare.to_string(), "no address".into()));
        }
        if !self.allow_private {
            if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(Refusal::AddressNotPublic(bare.to_string(), bad.ip()));
            }
        }
        Ok(addrs)
    }
}

/// The HTTP client's resolver with the guard applied to every lookup (redirects included).
#[derive(Debug)]
pub(crate) struct GuardedResolver(pub Guard);

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let port = uri
            .port_u16()
            .or_else(|| match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            })
            .ok_or(ureq::Error::HostNotFound)?;
        let addrs = self.0.resolve(host, port).map_err(|refusal| {
            tracing::warn!("image URL refused: {refusal}");
            ureq::Error::HostNotFound
        })?;
        let mut out = self.empty();
        // The client keeps at most 16 addresses.
        for a in addrs.into_iter().take(16) {
            out.push(a);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These addresses are only parsed and classified, never connected to.
    #[test]
    fn internal_addresses_in_every_spelling_are_refused() {
        for s in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:c0a8:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(!is_public(ip), "{s} must be refused");
        }
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "2002:0101:0101::",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(is_public(ip), "{s} must be allowed");
        }
    }

    /// A resolver that answers from a table, so that no lookup leaves the machine.
    fn stub(table: &'static [(&'static str, &'static str)]) -> Arc<Lookup> {
        Arc::new(move |host: &str, port: u16| {
            let addrs: Vec<SocketAddr> = table
                .iter()
                .filter(|(h, _)| *h == host)
                .map(|(_, ip)| SocketAddr::new(ip.parse().unwrap(), port))
                .collect();
            if addrs.is_empty() {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "unknown host",
                ))
            } else {
                Ok(addrs)
            }
        })
    }

    #[test]
    fn names_are_checked_after_resolution() {
        let guard = Guard {
            lookup: stub(&[
                ("public.test", "93.184.216.34"),
                ("internal.test", "10.0.0.7"),
                ("rebind.test", "93.184.216.34"),
                ("rebind.test", "127.0.0.1"),
                ("metadata.test", "169.254.169.254"),
            ]),
            ..Guard::default()
        };
        assert_eq!(
            guard.resolve("public.test", 80).unwrap(),
            vec!["93.184.216.34:80".parse().unwrap()]
        );
        for host in ["internal.test", "rebind.test", "metadata.test"] {
            assert!(
                matches!(guard.resolve(host, 80), Err(Refusal::AddressNotPublic(..))),
                "{host}"
            );
        }
        assert!(matches!(
            guard.resolve("nowhere.test", 80),
            Err(Refusal::NotResolved(..))
        ));
        // Literal addresses need no lookup and are checked the same way.
        assert!(guard.resolve("[::ffff:127.0.0.1]", 80).is_err());
        assert!(guard.resolve("127.0.0.1", 80).is_err());

        let private_ok = Guard {
            allow_private: true,
            ..guard.clone()
        };
        assert!(private_ok.resolve("internal.test", 80).is_ok());

        let listed = Guard {
            allow_hosts: vec!["Public.Test".into()],
            ..guard
        };
        assert!(listed.resolve("public.test", 443).is_ok());
        assert_eq!(
            listed.resolve("other.test", 443),
            Err(Refusal::HostNotAllowed("other.test".into()))
        );
    }
}
