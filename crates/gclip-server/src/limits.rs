//! What one request may ask for. Text beyond a model's context (77 tokens for CLIP, a few
//! hundred bytes) is cut anyway, so the text limits leave ample room for real queries while
//! keeping a request's cleaning and tokenising to microseconds.

use axum::http::StatusCode;

use crate::ApiError;

/// Bytes of one query text, caption or label.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Texts and images in one `/api/embed` request.
pub const MAX_EMBED_INPUTS: usize = 256;
/// Labels of one `/api/classify` request.
pub const MAX_LABELS: usize = 1000;
/// Bytes of a classify template, and how many `{}` it may hold.
pub const MAX_TEMPLATE_BYTES: usize = 1024;
pub const MAX_TEMPLATE_SLOTS: usize = 4;
/// Bytes of all prompts of one classify request together (labels put into the template).
pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;
/// Weighted parts of one search.
pub const MAX_QUERY_PARTS: usize = 16;
/// Request bodies of routes that carry no images.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;
/// Request bodies of document updates.
pub const PATCH_BODY_BYTES: usize = 1024 * 1024;

/// Refuses a text over [`MAX_TEXT_BYTES`], naming it as `what`.
pub(crate) fn check_text(what: &str, text: &str) -> Result<(), ApiError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{what} is {} bytes; at most {} are accepted (the model reads only the first 77 tokens)",
                text.len(),
                MAX_TEXT_BYTES
            ),
        ));
    }
    Ok(())
}
