//! The API's handlers, one module per resource: [`collections`], [`documents`] (with
//! thumbnails), [`search`], [`embed`], [`classify`], and [`service`] (the page, health, metrics,
//! the OpenAPI document). The router that mounts them is [`crate::router`]; what they share
//! ([`crate::AppState`], request limits, the helpers below) is beside them, never in a sibling.

use axum::Json;
use base64::Engine as _;
use gclip_search::ModelIdentity;
use serde::Serialize;
use serde_json::Value;

use crate::{ApiError, AppState};

pub(crate) mod classify;
pub(crate) mod collections;
pub(crate) mod documents;
pub(crate) mod embed;
pub(crate) mod search;
pub(crate) mod service;

/// A typed answer (the type its OpenAPI schema comes from) as JSON. Through a `Value`, as the
/// answers were built before they had types, so that their bytes did not change: an f32 there
/// prints as the f64 it widens to (`0.30000001192092896`, where serialising the type directly
/// would print `0.3`).
pub(crate) fn answer<T: Serialize>(body: &T) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(body)
        .map(Json)
        .map_err(|e| ApiError::internal(format!("writing the answer: {e}")))
}

/// Results per page when a request does not say.
pub(crate) fn default_limit() -> usize {
    10
}

/// The bytes of a base64 image (a `data:` URL prefix is accepted).
pub(crate) fn decode_image(b64: &str) -> Result<Vec<u8>, ApiError> {
    let data = match b64.split_once(";base64,") {
        Some((prefix, d)) if prefix.starts_with("data:") => d,
        _ => b64,
    };
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::bad_request(format!("image is not valid base64: {e}")))
}

/// The model of the named collection, or of the only one served: with several, which one
/// "the first" is would be a guess the client cannot see, so the name is required.
pub(crate) fn model_for(
    state: &AppState,
    collection: Option<&str>,
) -> Result<ModelIdentity, ApiError> {
    let c = state.collections.read().unwrap_or_else(|p| p.into_inner());
    let served = match collection {
        Some(n) => c
            .get(n)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no collection named {n:?}")))?,
        None if c.len() > 1 => {
            let names: Vec<String> = c.keys().map(|n| format!("{n:?}")).collect();
            return Err(ApiError::bad_request(format!(
                "{} collections are served ({}): name the one whose model to use with \
                 \"collection\"",
                names.len(),
                names.join(", ")
            )));
        }
        None => c.values().next().cloned().ok_or_else(|| {
            ApiError::bad_request("no collection is served, so no model is known")
        })?,
    };
    Ok(served.collection.info().model.clone())
}
