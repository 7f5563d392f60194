//! Embedding texts and images with a served collection's model (`POST /api/embed`).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use gclip_search::encoder::Encoder;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{answer, decode_image, model_for};
use crate::error::ErrorBody;
use crate::limits::{self, check_text};
use crate::{blocking, ApiError, QueryEncoder, Shared};

/// Texts and images to embed.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbedRequest {
    /// The collection whose model to use; required when more than one collection is served.
    #[serde(default)]
    collection: Option<String>,
    /// Texts.
    #[serde(default)]
    texts: Vec<String>,
    /// Images, base64 (a `data:` URL prefix is accepted).
    #[serde(default)]
    images: Vec<String>,
}

/// Embeddings of the texts and images asked for.
#[derive(Serialize, ToSchema)]
pub(crate) struct Embeddings {
    /// Length of each vector.
    dim: usize,
    /// One L2-normalised vector per input: the texts first, then the images, each in the
    /// order given.
    embeddings: Vec<Vec<f32>>,
}

/// Embeds texts and images with a served collection's model.
#[utoipa::path(post, path = "/api/embed", tag = "models",
    request_body = EmbedRequest,
    responses(
        (status = 200, description = "one vector per input", body = Embeddings),
        (status = "4XX", description = "nothing or too much to embed, bad base64, an image that does not decode, several collections served and none named, missing API key (servers that protect reads)", body = ErrorBody),
        (status = "5XX", description = "the model failed; 503: the request waited past its deadline", body = ErrorBody),
    ))]
pub(crate) async fn embed(
    State(state): Shared,
    body: Result<Json<EmbedRequest>, JsonRejection>,
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
        answer(&Embeddings {
            dim: q.dim(),
            embeddings: out,
        })
    })
    .await
}
