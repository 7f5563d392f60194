//! What runs around every handler: request metrics by route (`track`), the API key
//! (`authorize`) and the Host check of keyless servers (`check_host`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ApiError, Shared};

pub(crate) async fn track(State(state): Shared, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let t = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .record(&route, resp.status().as_u16(), t.elapsed().as_secs_f64());
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

pub(crate) async fn authorize(State(state): Shared, req: Request, next: Next) -> Response {
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
pub(crate) fn url_host(url: &str) -> Option<String> {
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
pub(crate) async fn check_host(State(state): Shared, req: Request, next: Next) -> Response {
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
