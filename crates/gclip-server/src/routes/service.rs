//! The server's own routes: the web page (`/`), health (`/api/health`), Prometheus metrics
//! (`/metrics`) and the OpenAPI document (`/api/openapi.json`).

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::answer;
use crate::error::ErrorBody;
use crate::metrics::{self, ModelTotals};
use crate::{openapi, ApiError, Shared};

/// The web page: search, upload, browse.
#[utoipa::path(get, path = "/", tag = "service",
    responses((status = 200, description = "the page", content_type = "text/html", body = String)))]
pub(crate) async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/index.html"))
}

/// That the server runs.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    status: String,
    /// Collections served.
    collections: usize,
    /// Seconds since the server started.
    uptime_s: u64,
}

/// Liveness; open even when the server has an API key.
#[utoipa::path(get, path = "/api/health", tag = "service",
    responses((status = 200, description = "the server runs", body = Health)))]
pub(crate) async fn health(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let collections = state.collections.read().map(|c| c.len()).unwrap_or(0);
    answer(&Health {
        status: "ok".into(),
        collections,
        uptime_s: state.started.elapsed().as_secs(),
    })
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "service",
    responses(
        (status = 200, description = "the OpenAPI 3.1 document of this API", body = openapi::OpenApiDocument),
        (status = "4XX", description = "missing API key (servers that protect reads)", body = ErrorBody),
    ))]
pub(crate) async fn openapi_json() -> Json<Value> {
    Json(openapi::document().clone())
}

/// Prometheus metrics.
///
/// `gclip_http_requests_total{route,status}`, `gclip_http_request_duration_seconds{route}`
/// (histogram), `gclip_documents_written_total`, `gclip_collection_documents{collection}`,
/// `gclip_model_batches_total{model}`, `gclip_model_items_total{model}`,
/// `gclip_model_busy_seconds_total{model}`.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses(
        (status = 200, description = "the OpenMetrics text format", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = "4XX", description = "missing API key (servers that protect reads)", body = ErrorBody),
    ))]
pub(crate) async fn metrics_text(State(state): Shared) -> Result<impl IntoResponse, ApiError> {
    let collections: Vec<(String, usize)> = state
        .collections
        .read()
        .map(|c| {
            c.iter()
                .map(|(name, s)| (name.clone(), s.collection.len()))
                .collect()
        })
        .unwrap_or_default();
    let models: Vec<ModelTotals> = state
        .models
        .lock()
        .map(|m| {
            m.iter()
                .map(|(key, w)| ModelTotals {
                    model: key.clone(),
                    batches: w.stats.batches.load(Relaxed),
                    items: w.stats.items.load(Relaxed),
                    busy_seconds: w.stats.busy_us.load(Relaxed) as f64 / 1e6,
                })
                .collect()
        })
        .unwrap_or_default();
    let text = state
        .metrics
        .render(&collections, &models)
        .map_err(|e| ApiError::internal(format!("writing the metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text))
}
