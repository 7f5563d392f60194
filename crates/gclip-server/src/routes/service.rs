//! The server's own routes: the web page (`/`), health (`/api/health`), Prometheus metrics
//! (`/metrics`) and the OpenAPI document (`/api/openapi.json`).

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde_json::{json, Value};

use crate::metrics::{self, ModelTotals};
use crate::{openapi, ApiError, Shared};

pub(crate) async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/index.html"))
}

pub(crate) async fn health(State(state): Shared) -> Json<Value> {
    let n = state.collections.read().map(|c| c.len()).unwrap_or(0);
    Json(json!({"status": "ok", "collections": n, "uptime_s": state.started.elapsed().as_secs()}))
}

pub(crate) async fn openapi_json() -> Json<Value> {
    Json(openapi::document())
}

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
