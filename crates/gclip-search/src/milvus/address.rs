//! Where a collection on a Milvus server is: `milvus://HOST[:PORT]/NAME` (`milvuss://` for TLS),
//! credentials in `?token=USER:PASSWORD` or in `GCLIP_MILVUS_TOKEN`.
//!
//! The token is a secret: it is kept in a type whose `Debug` hides it, and neither `Display`,
//! `Debug` nor any error of this module shows it. Errors about an address quote only the part
//! before `?` and without user information (`user:pass@`), so a mistyped address never puts a
//! password in a log.

use std::fmt;

use crate::error::{Result, SearchError};

/// The scheme of a plain-text (gRPC over HTTP/2 without TLS) address.
pub const SCHEME: &str = "milvus://";
/// The scheme of an address reached over TLS.
pub const TLS_SCHEME: &str = "milvuss://";
/// The environment variable that holds the token when the address has none.
pub const TOKEN_VAR: &str = "GCLIP_MILVUS_TOKEN";
/// Milvus' own default port.
pub const DEFAULT_PORT: u16 = 19530;
/// Milvus refuses collection names longer than this.
const MAX_NAME: usize = 255;

/// Credentials for the server: `USER:PASSWORD`. `Debug` hides them.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(hidden)")
    }
}

impl Token {
    /// User name and password, split at the first `:`.
    pub(crate) fn credentials(&self) -> (&str, &str) {
        self.0.split_once(':').unwrap_or((&self.0, ""))
    }
}

/// A collection on a Milvus server. Displays as `milvus://HOST:PORT/NAME`, never with the token.
#[derive(Clone, PartialEq, Eq)]
pub struct MilvusAddress {
    /// `milvuss://`: TLS.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The Milvus collection name.
    pub name: String,
    token: Option<Token>,
}

impl fmt::Display for MilvusAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { TLS_SCHEME } else { SCHEME };
        if self.host.contains(':') {
            write!(f, "{scheme}[{}]:{}/{}", self.host, self.port, self.name)
        } else {
            write!(f, "{scheme}{}:{}/{}", self.host, self.port, self.name)
        }
    }
}

impl fmt::Debug for MilvusAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MilvusAddress({self}{})",
            if self.token.is_some() {
                ", token hidden"
            } else {
                ""
            }
        )
    }
}

/// True when `s` names a collection on a Milvus server rather than a directory.
pub fn is_milvus_address(s: &str) -> bool {
    let lower = s.get(..TLS_SCHEME.len()).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with(SCHEME) || lower.starts_with(TLS_SCHEME)
}

/// `s` without what may hold a secret: the query (`?…`) and user information (`…@`).
pub(crate) fn redacted(s: &str) -> String {
    let before_query = s.split(['?', '#']).next().unwrap_or("");
    match before_query.rsplit_once('@') {
        Some((head, tail)) => {
            let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
            format!("{}…@{tail}", &head[..scheme_end])
        }
        None => before_query.to_string(),
    }
}

/// `%XX` sequences decoded (a password may hold `&`, `#`, `%` or `:`); `None` when malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl MilvusAddress {
    /// Parses an address, taking the token from `GCLIP_MILVUS_TOKEN` when the address has none.
    pub fn parse(s: &str) -> Result<Self> {
        Self::parse_with(s, |name| std::env::var(name).ok())
    }

    /// Parses an address with environment variables looked up by `var`.
    pub fn parse_with(s: &str, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let shown = redacted(s);
        let bad = |why: &str| {
            SearchError::Invalid(format!(
                "collection address {shown}: {why} (expected milvus://HOST:PORT/NAME or \
                 milvuss://HOST:PORT/NAME, credentials in ?token=USER:PASSWORD or {TOKEN_VAR})"
            ))
        };
        let lower = s.get(..TLS_SCHEME.len()).unwrap_or(s).to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with(TLS_SCHEME) {
            (true, &s[TLS_SCHEME.len()..])
        } else if lower.starts_with(SCHEME) {
            (false, &s[SCHEME.len()..])
        } else {
            return Err(bad("not a Milvus address"));
        };
        if rest.contains('#') {
            return Err(bad("a fragment (#…) has no meaning here"));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let Some((authority, name)) = path.split_once('/') else {
            return Err(bad("no collection name after the host"));
        };
        if authority.contains('@') {
            return Err(bad(
                "user information before the host is not read; give the credentials as ?token=",
            ));
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let Some((h, after)) = inner.split_once(']') else {
                return Err(bad("unclosed [ in the host"));
            };
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(bad("the host holds characters a host name cannot"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(bad("the port is not a number from 1 to 65535")),
            },
        };
        if !is_identifier(name, MAX_NAME) {
            return Err(bad(&format!(
                "the collection name must start with a letter or `_` and hold only letters, \
                 digits and `_`, at most {MAX_NAME} of them"
            )));
        }
        let mut token = None;
        if let Some(query) = query {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if key != "token" {
                    // The key only: a value may be a secret put under the wrong name.
                    return Err(bad(&format!("unknown parameter {key:?} (only token=)")));
                }
                let value = percent_decode(value)
                    .ok_or_else(|| bad("the token is not valid %-encoding"))?;
                token = Some(value);
            }
        }
        let token = token.or_else(|| var(TOKEN_VAR).filter(|t| !t.is_empty()));
        if let Some(t) = &token {
            if !t.contains(':') {
                return Err(bad(
                    "the token must be USER:PASSWORD (API-key tokens are not supported by this client)",
                ));
            }
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
            name: name.to_string(),
            token: token.map(Token),
        })
    }

    /// The URI the gRPC client connects to.
    pub(crate) fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// The credentials, if any.
    pub(crate) fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }
}

/// Whether `name` is a Milvus identifier of at most `max` bytes: an ASCII letter or `_`, then
/// letters, digits and `_` (collection and field names alike).
pub(super) fn is_identifier(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && name.len() <= max && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn addresses_parse_with_defaults_and_tls() {
        let a = MilvusAddress::parse_with("milvus://127.0.0.1:19600/photos", no_env).unwrap();
        assert_eq!(
            (a.tls, a.host.as_str(), a.port),
            (false, "127.0.0.1", 19600)
        );
        assert_eq!(a.name, "photos");
        assert_eq!(a.to_string(), "milvus://127.0.0.1:19600/photos");
        assert_eq!(a.endpoint(), "http://127.0.0.1:19600");
        let b = MilvusAddress::parse_with("MILVUSS://db.example.com/_shop2", no_env).unwrap();
        assert!(b.tls);
        assert_eq!(b.port, DEFAULT_PORT);
        assert_eq!(b.endpoint(), "https://db.example.com:19530");
        let c = MilvusAddress::parse_with("milvus://[::1]:7/c", no_env).unwrap();
        assert_eq!(c.host, "::1");
        assert_eq!(c.to_string(), "milvus://[::1]:7/c");
        assert!(is_milvus_address("milvus://x/y") && is_milvus_address("Milvuss://x/y"));
        assert!(!is_milvus_address("./milvus") && !is_milvus_address("/data/c"));
    }

    #[test]
    fn the_token_never_shows() {
        let secret = "root:s3cr%26t";
        let a =
            MilvusAddress::parse_with(&format!("milvus://h:1/c?token={secret}"), no_env).unwrap();
        assert_eq!(a.token().map(|t| t.credentials()), Some(("root", "s3cr&t")));
        for shown in [a.to_string(), format!("{a:?}"), format!("{:?}", a.token())] {
            assert!(!shown.contains("s3cr"), "{shown}");
        }
        // From the environment when the address has none.
        let env = |n: &str| (n == TOKEN_VAR).then(|| "u:envpass".to_string());
        let b = MilvusAddress::parse_with("milvus://h:1/c", env).unwrap();
        assert_eq!(b.token().map(|t| t.credentials()), Some(("u", "envpass")));
        assert!(!format!("{b:?}").contains("envpass"));
        // Errors name the address without the secret, whatever is wrong.
        for bad in [
            "milvus://h:99999/c?token=root:hunter2",
            "milvus://h:1/bad-name?token=root:hunter2",
            "milvus://h:1/c?tokn=root:hunter2",
            "milvus://h:1/c?token=hunter2",
            "milvus://root:hunter2@h:1/c",
            "milvus://h:1/c?token=%zzhunter2",
            "milvus://h:1/c#hunter2",
        ] {
            let e = MilvusAddress::parse_with(bad, no_env)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
            assert!(e.contains("collection address milvus://"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (bad, says) in [
            ("milvus://h:1", "no collection name"),
            ("milvus:///c", "no host"),
            ("milvus://h:x/c", "port"),
            ("milvus://h:0/c", "port"),
            ("milvus://h:1/1abc", "collection name"),
            ("milvus://h:1/a/b", "collection name"),
            ("milvus://h h:1/c", "host"),
            ("http://h:1/c", "not a Milvus address"),
        ] {
            let e = MilvusAddress::parse_with(bad, no_env)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
