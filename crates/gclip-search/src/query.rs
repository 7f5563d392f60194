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

/// What a search asks besides its query parts. The command line, the server and the Python
/// package fill it from their own options and run it with [`run_search`].
#[derive(Debug, Clone, Default)]
pub struct SearchOptions {
    pub filter: Option<crate::Filter>,
    pub limit: usize,
    pub offset: usize,
    /// Brute force over every vector, whatever the collection's size.
    pub exact: bool,
    /// Vector and lexical (BM25) results fused by `fusion`.
    pub hybrid: bool,
    /// The lexical index alone: no query vector, no model.
    pub lexical: bool,
    pub fusion: crate::Fusion,
}

impl SearchOptions {
    /// Whether the search needs a query vector, hence the model: all but lexical ones.
    pub fn needs_vector(&self) -> bool {
        !self.lexical
    }

    /// The lexical index's query: the texts of the positively weighted parts, joined (None for
    /// a vector search). A hybrid or lexical search without text is refused.
    pub fn lexical_text(&self, parts: &[QueryPart]) -> Result<Option<String>> {
        if !(self.hybrid || self.lexical) {
            return Ok(None);
        }
        let texts: Vec<&str> = parts
            .iter()
            .filter(|p| p.weight > 0.0)
            .filter_map(|p| match &p.input {
                QueryInput::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        if texts.is_empty() {
            return Err(SearchError::Invalid(
                "hybrid and lexical search need query text".into(),
            ));
        }
        Ok(Some(texts.join(" ")))
    }
}

/// Searches `store` for `parts`: the query vector by `encoder` (which a lexical search does not
/// need), the lexical text of a hybrid or lexical one, the options' filter and paging.
pub fn run_search(
    store: &dyn Store,
    encoder: Option<&dyn Encoder>,
    parts: &[QueryPart],
    options: SearchOptions,
) -> Result<Vec<crate::Hit>> {
    let text = options.lexical_text(parts)?;
    let vector = if options.needs_vector() {
        let encoder = encoder.ok_or_else(|| {
            SearchError::Invalid("a vector search needs the collection's model".into())
        })?;
        Some(query_vector(encoder, Some(store), parts)?)
    } else {
        None
    };
    store.search(&crate::SearchRequest {
        vector,
        text,
        filter: options.filter,
        limit: options.limit,
        offset: options.offset,
        mode: if options.exact {
            crate::SearchMode::Exact
        } else {
            crate::SearchMode::Auto
        },
        fusion: options.fusion,
    })
}
