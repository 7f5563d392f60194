//! Queries: text, image, or a weighted combination of parts (`"red dress:1.0"`,
//! `"floral:-0.3"`), whose negative weights push results away, as in Marqo's weighted queries.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::document::combine;
use crate::encoder::Encoder;
use crate::error::{Result, SearchError};
use crate::remote::{is_url, RemoteImages};
use crate::store::Store;

/// What one part of a query is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryInput {
    /// Text, embedded by the text tower.
    Text(String),
    /// An image file, embedded by the image tower.
    ImageFile(PathBuf),
    /// An image at an `http(s)://` URL, fetched into the image cache first.
    ImageUrl(String),
    /// An encoded image (PNG, JPEG, …).
    #[serde(skip)]
    ImageBytes(Vec<u8>),
    /// The stored vector of a document of the collection ("more like this").
    Document(String),
    /// A raw vector.
    Vector(Vec<f32>),
}

/// One weighted part of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPart {
    pub input: QueryInput,
    pub weight: f32,
}

impl QueryPart {
    /// A part of weight 1.
    pub fn new(input: QueryInput) -> Self {
        Self { input, weight: 1.0 }
    }
}

/// Splits `"text:weight"`; text without a numeric `:weight` suffix has weight 1.
pub fn parse_weighted(s: &str) -> (String, f32) {
    if let Some((text, w)) = s.rsplit_once(':') {
        if let Ok(w) = w.trim().parse::<f32>() {
            if w.is_finite() && !text.trim().is_empty() {
                return (text.trim().to_string(), w);
            }
        }
    }
    (s.trim().to_string(), 1.0)
}

/// The query vector: `normalise(Σ w_i · normalise(e_i))`. Texts are embedded in one batch.
pub fn query_vector(
    encoder: &dyn Encoder,
    store: Option<&dyn Store>,
    parts: &[QueryPart],
) -> Result<Vec<f32>> {
    if parts.is_empty() {
        return Err(SearchError::Invalid("empty query".into()));
    }
    for p in parts {
        if !p.weight.is_finite() || p.weight == 0.0 {
            return Err(SearchError::Invalid(format!(
                "query weight {} must be a non-zero number",
                p.weight
            )));
        }
    }
    let texts: Vec<&str> = parts
        .iter()
        .filter_map(|p| match &p.input {
            QueryInput::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let mut text_vecs = if texts.is_empty() {
        Vec::new()
    } else {
        encoder.texts(&texts)?
    }
    .into_iter();
    let mut vecs: Vec<(f32, Vec<f32>)> = Vec::with_capacity(parts.len());
    for p in parts {
        let v = match &p.input {
            QueryInput::Text(_) => text_vecs
                .next()
                .ok_or_else(|| SearchError::Invalid("text embedding missing".into()))?,
            QueryInput::ImageFile(path) => encoder
                .image_files(std::slice::from_ref(path))?
                .pop()
                .unwrap_or_else(|| Err("not embedded".into()))
                .map_err(|e| SearchError::Invalid(format!("image {}: {e}", path.display())))?,
            QueryInput::ImageBytes(bytes) => encoder.image_bytes(bytes, "uploaded image")?,
            QueryInput::ImageUrl(url) => {
                if !is_url(url) {
                    return Err(SearchError::Invalid(format!(
                        "image URL {url:?} must start with http:// or https://"
                    )));
                }
                let path = RemoteImages::shared()
                    .fetch(url)
                    .map_err(|e| SearchError::Invalid(format!("query image {e}")))?;
                let bytes = gclip::input::image::read_image_file(
                    &path,
                    gclip::input::image::max_image_bytes(),
                )
                .map_err(|e| SearchError::Invalid(e.to_string()))?;
                encoder.image_bytes(&bytes, url)?
            }
            QueryInput::Document(id) => store
                .ok_or_else(|| SearchError::Invalid("document queries need a collection".into()))?
                .vector(id)?
                .ok_or_else(|| SearchError::NotFound(id.clone()))?,
            QueryInput::Vector(v) => v.clone(),
        };
        if v.len() != encoder.dim() {
            return Err(SearchError::Dimension {
                got: v.len(),
                want: encoder.dim(),
            });
        }
        vecs.push((p.weight, v));
    }
    let refs: Vec<(f32, &[f32])> = vecs.iter().map(|(w, v)| (*w, v.as_slice())).collect();
    combine(&refs).ok_or_else(|| SearchError::Invalid("the query parts cancel out".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_parts_parse() {
        assert_eq!(parse_weighted("red dress:1.0"), ("red dress".into(), 1.0));
        assert_eq!(parse_weighted("floral:-0.3"), ("floral".into(), -0.3));
        assert_eq!(parse_weighted("time 10:30pm"), ("time 10:30pm".into(), 1.0));
        assert_eq!(parse_weighted("plain"), ("plain".into(), 1.0));
        assert_eq!(parse_weighted(":2"), (":2".into(), 1.0));
    }
}
