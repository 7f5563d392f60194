//! The server's own routes: the web page (`/`), health (`/api/health`), Prometheus metrics
//! (`/metrics`) and the OpenAPI document (`/api/openapi.json`).

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde_json::{json, Value};

use crate::{openapi, Shared};

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

pub(crate) async fn metrics_text(State(state): Shared) -> impl IntoResponse {
    let mut extra = Vec::new();
    if let Ok(c) = state.collections.read() {
        extra.push((
            "# TYPE gclip_collection_documents gauge".to_string(),
            f64::NAN,
        ));
        for (name, s) in c.iter() {
            extra.push((
                format!("gclip_collection_documents{{collection=\"{name}\"}}"),
                s.collection.len() as f64,
            ));
        }
    }
    if let Ok(m) = state.models.lock() {
        for (key, w) in m.iter() {
            let k = key.replace('"', "'");
            let load = |a: &std::sync::atomic::AtomicU64| {
                a.load(std::sync::atomic::Ordering::Relaxed) as f64
            };
            extra.push((
                format!("gclip_model_batches_total{{model=\"{k}\"}}"),
                load(&w.stats.batches),
            ));
            extra.push((
                format!("gclip_model_items_total{{model=\"{k}\"}}"),
                load(&w.stats.items),
            ));
            extra.push((
                format!("gclip_model_busy_seconds_total{{model=\"{k}\"}}"),
                load(&w.stats.busy_us) / 1e6,
            ));
        }
    }
    let text = state.metrics.render(&extra).replace(
        "# TYPE gclip_collection_documents gauge NaN",
        "# TYPE gclip_collection_documents gauge",
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
