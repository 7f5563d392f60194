//! Embedding texts and images with a served collection's model (`POST /api/embed`).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use gclip_search::encoder::Encoder;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{decode_image, model_for};
use crate::limits::{self, check_text};
use crate::{blocking, ApiError, QueryEncoder, Shared};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbedBody {
    /// Which collection's model; may be left out only when one collection is served.
    #[serde(default)]
    collection: Option<String>,
    #[serde(default)]
    texts: Vec<String>,
    /// Base64 images.
    #[serde(default)]
    images: Vec<String>,
}

pub(crate) async fn embed(
    State(state): Shared,
    body: Result<Json<EmbedBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    if body.texts.is_empty() && body.images.is_empty() {
        return Err(ApiError::bad_request("give texts or images"));
    }
    if body.texts.len() + body.images.len() > limits::MAX_EMBED_INPUTS {
        return Err(ApiError::bad_request(format!(
            "at most {} inputs per request",
            limits::MAX_EMBED_INPUTS
        )));
    }
    for (i, t) in body.texts.iter().enumerate() {
        check_text(&format!("texts[{i}]"), t)?;
    }
    let identity = model_for(&state, body.collection.as_deref())?;
    let images: Vec<Vec<u8>> = body
        .images
        .iter()
        .map(|i| decode_image(i))
        .collect::<Result<_, _>>()?;
    let st = state.clone();
    blocking(move || {
        let w = st.worker(&identity)?;
        let q = QueryEncoder(&w);
        let texts: Vec<&str> = body.texts.iter().map(String::as_str).collect();
        let mut out = if texts.is_empty() {
            Vec::new()
        } else {
            q.texts(&texts)?
        };
        for (i, img) in images.iter().enumerate() {
            out.push(q.image_bytes(img, &format!("images[{i}]"))?);
        }
        Ok(Json(json!({"dim": q.dim(), "embeddings": out})))
    })
    .await
}
