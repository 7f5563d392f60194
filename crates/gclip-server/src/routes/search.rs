//! Searching a collection: text, image, weighted parts, filters, lexical and hybrid
//! (`POST /api/collections/{name}/search`).

use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path as UrlPath, State};
use axum::Json;
use gclip_search::encoder::Encoder;
use gclip_search::query::{run_search, SearchOptions};
use gclip_search::{Filter, Fusion, Hit, QueryInput, QueryPart};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{answer, decode_image, default_limit};
use crate::error::ErrorBody;
use crate::limits::{self, check_text};
use crate::{blocking, openapi, ApiError, QueryEncoder, Shared};

/// One part of a weighted query: exactly one of `text`, `image`, `image_url`, `document`,
/// `vector`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightedPart {
    /// Text, embedded by the collection's model.
    #[serde(default)]
    text: Option<String>,
    /// Base64 of an encoded image (a `data:` URL prefix is accepted).
    #[serde(default)]
    image: Option<String>,
    /// An `http(s)://` image URL, fetched by the server (when its operator allows it).
    #[serde(default)]
    image_url: Option<String>,
    /// The id of a document of the collection: its stored vector (more like this).
    #[serde(default)]
    document: Option<String>,
    /// A vector of the collection's dimension.
    #[serde(default)]
    vector: Option<Vec<f32>>,
    /// The part's weight in `normalise(Σ weight · normalise(part))`; negative pushes away.
    #[serde(default = "one")]
    #[schema(default = 1.0)]
    weight: f32,
}

fn one() -> f32 {
    1.0
}

/// A search: what to search for (`q`, `image`, `image_url` and `queries` together make one
/// query vector), which documents (`filter`) and which page.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchRequest {
    /// Query text.
    #[serde(default)]
    q: Option<String>,
    /// Query image, base64 (a `data:` URL prefix is accepted).
    #[serde(default)]
    image: Option<String>,
    /// Query image by `http(s)://` URL, fetched by the server (when its operator allows it).
    #[serde(default)]
    image_url: Option<String>,
    /// Weighted parts, added to `q`, `image` and `image_url` (each weight 1).
    #[serde(default)]
    queries: Vec<WeightedPart>,
    /// Which documents may match: `FIELD = V`, `!=`, `<`, `<=`, `>`, `>=`, `FIELD:TAG`, a bare
    /// `FIELD`, `AND`, `OR`, `NOT`, parentheses; `id` names the document id.
    #[serde(default)]
    #[schema(example = "price < 50 AND tags:summer AND NOT sold")]
    filter: Option<String>,
    /// Hits to return; limit + offset at most the server's largest page (1000 by default).
    #[serde(default = "default_limit")]
    #[schema(default = 10, minimum = 1)]
    limit: usize,
    /// Hits to skip.
    #[serde(default)]
    offset: usize,
    /// Compare with every matching document instead of walking the HNSW index.
    #[serde(default)]
    exact: bool,
    /// Fuse BM25 (on the query text) with the vector results.
    #[serde(default)]
    hybrid: bool,
    /// BM25 on the query text only, no vectors.
    #[serde(default)]
    lexical: bool,
    /// How `hybrid` fuses: `rrf` (reciprocal rank fusion, k = 60; the default) or `weighted`
    /// (0.5 · cosine + 0.5 · BM25 / the best BM25).
    #[serde(default)]
    #[schema(value_type = Option<openapi::Fusion>)]
    fusion: Option<String>,
}

/// A page of hits.
#[derive(Serialize, ToSchema)]
pub(crate) struct SearchResults {
    /// Best first.
    #[schema(value_type = Vec<openapi::Hit>)]
    hits: Vec<Hit>,
    /// The `limit` asked for.
    limit: usize,
    /// The `offset` asked for.
    offset: usize,
    /// Documents in the collection.
    documents: usize,
    /// Time the server spent on the search, milliseconds.
    took_ms: f64,
}

fn part_input(p: WeightedPart) -> Result<QueryPart, ApiError> {
    let given = [
        p.text.is_some(),
        p.image.is_some(),
        p.image_url.is_some(),
        p.document.is_some(),
        p.vector.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        return Err(ApiError::bad_request(
            "each query part needs exactly one of text, image, image_url, document, vector",
        ));
    }
    let input = if let Some(t) = p.text {
        check_text("a query part's text", &t)?;
        QueryInput::Text(t)
    } else if let Some(i) = p.image {
        QueryInput::ImageBytes(decode_image(&i)?)
    } else if let Some(u) = p.image_url {
        // Only URLs are fetched (a path is refused): a client never reads the server's files.
        QueryInput::ImageUrl(u)
    } else if let Some(d) = p.document {
        QueryInput::Document(d)
    } else {
        QueryInput::Vector(p.vector.unwrap_or_default())
    };
    Ok(QueryPart {
        input,
        weight: p.weight,
    })
}

/// Searches a collection.
///
/// By text, image, image URL, weighted parts or a document (more like this); with a filter,
/// paging, and BM25 alone (`lexical`) or fused with the vectors (`hybrid`).
#[utoipa::path(post, path = "/api/collections/{name}/search", tag = "search",
    params(("name" = String, Path, description = "the collection")),
    request_body = SearchRequest,
    responses(
        (status = 200, description = "hits, best first", body = SearchResults),
        (status = "4XX", description = "no such collection, bad filter, bad query, nothing to search for, missing API key", body = ErrorBody),
        (status = "5XX", description = "the model or the store failed; 503: the query waited past its deadline", body = ErrorBody),
    ))]
pub(crate) async fn search(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<SearchRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let t = Instant::now();
    let UrlPath(name) = name?;
    let Json(body) = body?;
    let served = state.collection(&name)?;
    if body.limit == 0 || body.limit.saturating_add(body.offset) > state.config.max_results {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..{0} and limit + offset at most {0}",
            state.config.max_results
        )));
    }
    let filter = body
        .filter
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .map(Filter::parse)
        .transpose()?;
    let fusion = match body.fusion.as_deref() {
        None | Some("rrf") => Fusion::Rrf { k: 60.0 },
        Some("weighted") => Fusion::Weighted {
            vector: 0.5,
            lexical: 0.5,
        },
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fusion {other:?}: use rrf or weighted"
            )))
        }
    };
    if body.queries.len() > limits::MAX_QUERY_PARTS {
        return Err(ApiError::bad_request(format!(
            "at most {} query parts",
            limits::MAX_QUERY_PARTS
        )));
    }
    let mut parts = Vec::new();
    if let Some(q) = &body.q {
        check_text("q", q)?;
    }
    if let Some(q) = body.q.clone().filter(|q| !q.trim().is_empty()) {
        parts.push(QueryPart::new(QueryInput::Text(q)));
    }
    if let Some(img) = &body.image {
        parts.push(QueryPart::new(QueryInput::ImageBytes(decode_image(img)?)));
    }
    if let Some(url) = body.image_url {
        parts.push(QueryPart::new(QueryInput::ImageUrl(url)));
    }
    for p in body.queries {
        parts.push(part_input(p)?);
    }
    if parts.is_empty() {
        return Err(ApiError::bad_request(
            "nothing to search for: give q, image, image_url or queries",
        ));
    }
    let options = SearchOptions {
        filter,
        limit: body.limit,
        offset: body.offset,
        exact: body.exact,
        hybrid: body.hybrid,
        lexical: body.lexical,
        fusion,
    };
    // A hybrid or lexical search without text is refused before the model is asked for.
    options.lexical_text(&parts)?;
    let st = state.clone();
    let (limit, offset) = (options.limit, options.offset);
    let hits = blocking(move || {
        let worker = if options.needs_vector() {
            Some(st.worker(&served.collection.info().model)?)
        } else {
            None
        };
        let encoder = worker.as_deref().map(QueryEncoder);
        let hits = run_search(
            served.collection.store(),
            encoder.as_ref().map(|e| e as &dyn Encoder),
            &parts,
            options,
        )?;
        Ok((hits, served.collection.len()))
    })
    .await?;
    answer(&SearchResults {
        hits: hits.0,
        limit,
        offset,
        documents: hits.1,
        took_ms: t.elapsed().as_secs_f64() * 1e3,
    })
}
