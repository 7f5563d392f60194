//! Zero-shot classification of a text or an image over labels (`POST /api/classify`).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gclip_search::encoder::Encoder;
use gclip_search::query::query_vector;
use gclip_search::{QueryInput, QueryPart};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{decode_image, model_for};
use crate::limits::{self, check_text};
use crate::{blocking, ApiError, QueryEncoder, Shared};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassifyBody {
    #[serde(default)]
    collection: Option<String>,
    labels: Vec<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    image: Option<String>,
    /// Prompt template with `{}` for the label.
    #[serde(default)]
    template: Option<String>,
}

/// Zero-shot classification: softmax over `exp(logit_scale) · cos(query, template(label))`.
pub(crate) async fn classify(
    State(state): Shared,
    body: Result<Json<ClassifyBody>, JsonRejection>,
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
        let prompts: Vec<String> = body.labels.iter().map(|l| template.replace("{}", l)).collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let classes = q.texts(&refs)?;
        let scale = w.logit_scale();
        let logits: Vec<f32> = classes.iter().map(|c| scale * gclip_search::document::dot(c, &query)).collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let mut out: Vec<Value> = body
            .labels
            .iter()
            .zip(exps.iter().zip(&logits))
            .map(|(l, (e, logit))| json!({"label": l, "probability": e / sum, "cosine": logit / scale}))
            .collect();
        out.sort_by(|a, b| b["probability"].as_f64().unwrap_or(0.0).total_cmp(&a["probability"].as_f64().unwrap_or(0.0)));
        Ok(Json(json!({"labels": out})))
    })
    .await
}
