//! Zero-shot classification of a text or an image over labels (`POST /api/classify`).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gclip_search::encoder::Encoder;
use gclip_search::query::query_vector;
use gclip_search::{QueryInput, QueryPart};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{answer, decode_image, model_for};
use crate::error::ErrorBody;
use crate::limits::{self, check_text};
use crate::{blocking, ApiError, QueryEncoder, Shared};

/// A text or an image to classify over labels: exactly one of `text`, `image`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassifyRequest {
    /// The collection whose model to use; required when more than one collection is served.
    #[serde(default)]
    collection: Option<String>,
    /// The classes (or captions); each is put into `template`.
    labels: Vec<String>,
    /// The text to classify.
    #[serde(default)]
    text: Option<String>,
    /// The image to classify, base64 (a `data:` URL prefix is accepted).
    #[serde(default)]
    image: Option<String>,
    /// Prompt template, `{}` standing for the label; `a photo of a {}.` when absent.
    #[serde(default)]
    #[schema(example = "a photo of a {}.")]
    template: Option<String>,
}

/// Every label's score.
#[derive(Serialize, ToSchema)]
pub(crate) struct Classification {
    /// Every label, most probable first.
    labels: Vec<LabelScore>,
}

/// One label's score; the same fields and meanings as `gclip classify --json`.
#[derive(Serialize, ToSchema)]
pub(crate) struct LabelScore {
    /// The label as given.
    label: String,
    /// Softmax over the labels of exp(logit_scale) · cosine: the probability of this label
    /// among those given, as `CLIPModel`'s `logits_per_image.softmax(dim=1)`.
    probability: f32,
    /// Cosine similarity of the query and the label's prompt (not a probability).
    cosine: f32,
}

/// Zero-shot classification of a text or an image.
///
/// A softmax over `exp(logit_scale) · cos(query, template(label))`, as CLIP's zero-shot
/// classifier.
#[utoipa::path(post, path = "/api/classify", tag = "models",
    request_body = ClassifyRequest,
    responses(
        (status = 200, description = "every label, most probable first", body = Classification),
        (status = "4XX", description = "no or too many labels, not exactly one of text and image, a template too long, several collections served and none named, missing API key (servers that protect reads)", body = ErrorBody),
        (status = "5XX", description = "the model failed; 503: the request waited past its deadline", body = ErrorBody),
    ))]
pub(crate) async fn classify(
    State(state): Shared,
    body: Result<Json<ClassifyRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    if body.labels.is_empty() || body.labels.len() > limits::MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "give 1..{} labels",
            limits::MAX_LABELS
        )));
    }
    for (i, l) in body.labels.iter().enumerate() {
        check_text(&format!("labels[{i}]"), l)?;
    }
    if let Some(t) = &body.text {
        check_text("text", t)?;
    }
    if let Some(t) = &body.template {
        let slots = t.matches("{}").count();
        if t.len() > limits::MAX_TEMPLATE_BYTES || slots > limits::MAX_TEMPLATE_SLOTS {
            return Err(ApiError::bad_request(format!(
                "a template has at most {} bytes and {} {{}} (this one: {} bytes, {slots})",
                limits::MAX_TEMPLATE_BYTES,
                limits::MAX_TEMPLATE_SLOTS,
                t.len()
            )));
        }
        let prompt_bytes: usize = body.labels.iter().map(|l| t.len() + slots * l.len()).sum();
        if prompt_bytes > limits::MAX_PROMPT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the prompts would be {prompt_bytes} bytes together; at most {}",
                    limits::MAX_PROMPT_BYTES
                ),
            ));
        }
    }
    let input = match (&body.text, &body.image) {
        (Some(t), None) => QueryInput::Text(t.clone()),
        (None, Some(i)) => QueryInput::ImageBytes(decode_image(i)?),
        _ => return Err(ApiError::bad_request("give exactly one of text, image")),
    };
    let template = body
        .template
        .clone()
        .unwrap_or_else(|| "a photo of a {}.".into());
    let identity = model_for(&state, body.collection.as_deref())?;
    let st = state.clone();
    blocking(move || {
        let w = st.worker(&identity)?;
        let q = QueryEncoder(&w);
        let query = query_vector(&q, None, &[QueryPart::new(input)])?;
        let prompts: Vec<String> = body
            .labels
            .iter()
            .map(|l| template.replace("{}", l))
            .collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let classes = q.texts(&refs)?;
        let scale = w.logit_scale();
        let logits: Vec<f32> = classes
            .iter()
            .map(|c| scale * gclip_search::document::dot(c, &query))
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let mut labels: Vec<LabelScore> = body
            .labels
            .into_iter()
            .zip(exps.iter().zip(&logits))
            .map(|(label, (e, logit))| LabelScore {
                label,
                probability: e / sum,
                cosine: logit / scale,
            })
            .collect();
        labels.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        answer(&Classification { labels })
    })
    .await
}
