//! A collection's documents: add, list, get, patch, delete, and the thumbnail of a document's
//! image (`/api/collections/{name}/documents[/{id}[/thumbnail]]`).

use std::path::Path;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gclip_search::ingest::{add_documents, document_from_fields, update_document, InputDocument};
use gclip_search::roots::FileRoots;
use gclip_search::{Document, Fields, SearchError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{answer, default_limit};
use crate::error::ErrorBody;
use crate::{blocking, openapi, ApiError, Shared};

/// Documents to add or replace.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddDocuments {
    /// Each an object: `id` plus its fields (text, an image path under the server's
    /// `--files-root` or an http(s) URL, numbers, lists of tags). One that is not an object, or
    /// that cannot be embedded, fails alone.
    #[schema(value_type = Vec<Object>)]
    documents: Vec<Value>,
}

/// What adding documents did.
#[derive(Serialize, ToSchema)]
pub(crate) struct DocumentsWritten {
    /// Documents written (new or replaced).
    written: usize,
    /// The documents that failed, each alone.
    failed: Vec<DocumentFailure>,
    /// The collection's generation after the last write (one more per committed batch).
    generation: u64,
}

/// A document that was not written.
#[derive(Serialize, ToSchema)]
pub(crate) struct DocumentFailure {
    /// Its position in `documents`.
    index: Option<usize>,
    /// Why.
    error: String,
}

/// Adds or replaces documents, embedded per the collection's spec.
#[utoipa::path(post, path = "/api/collections/{name}/documents", tag = "documents",
    params(("name" = String, Path, description = "the collection")),
    request_body = AddDocuments,
    responses(
        (status = 200, description = "written and failed documents", body = DocumentsWritten),
        (status = "4XX", description = "no such collection, bad JSON, missing API key", body = ErrorBody),
        (status = "5XX", description = "the model or the store failed", body = ErrorBody),
    ))]
pub(crate) async fn add_docs(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<AddDocuments>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath(name) = name?;
    let Json(body) = body?;
    let served = state.collection(&name)?;
    let st = state.clone();
    blocking(move || {
        let spec = served.collection.info().spec.clone();
        let images: Vec<&str> = spec.image_fields().collect();
        // Relative image paths are resolved against the collection directory (a Milvus collection
        // has none: the client's paths are absolute under the roots by now).
        let base = served
            .collection
            .dir()
            .map(|d| d.to_path_buf())
            .unwrap_or_default();
        let roots = st.roots_of(&served)?;
        let inputs: Vec<InputDocument> = body
            .documents
            .into_iter()
            .enumerate()
            .map(|(i, v)| InputDocument {
                label: i.to_string(),
                doc: match v {
                    Value::Object(mut m) => {
                        let raw = Value::Object(m.clone()).to_string();
                        client_image_paths(&mut m, &images, &roots)
                            .and_then(|()| document_from_fields(m, &raw, &base, &images))
                    }
                    _ => Err("a document must be a JSON object".into()),
                },
            })
            .collect();
        let worker = st.worker(&served.collection.info().model)?;
        let mut generation = 0;
        let report = add_documents(
            served.collection.store(),
            worker.as_ref(),
            inputs,
            64,
            &mut |c| {
                generation = c.generation;
            },
        )?;
        st.metrics.documents_written(report.written as u64);
        let failed = report
            .failed
            .into_iter()
            .map(|(i, error)| DocumentFailure {
                index: i.parse().ok(),
                error,
            })
            .collect();
        answer(&DocumentsWritten {
            written: report.written,
            failed,
            generation,
        })
    })
    .await
}

/// Replaces the local paths in a client's image fields by the files they name under the roots;
/// URLs stay as they are (fetched, or refused, by the image fetcher).
fn client_image_paths(
    fields: &mut Fields,
    image_fields: &[&str],
    roots: &FileRoots,
) -> Result<(), String> {
    for name in image_fields {
        if let Some(Value::String(value)) = fields.get_mut(*name) {
            if !gclip_search::remote::is_url(value) {
                let path = roots
                    .client_path(value)
                    .map_err(|e| format!("field {name:?}: {e}"))?;
                *value = path.display().to_string();
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

/// A page of a collection's documents.
#[derive(Serialize, ToSchema)]
pub(crate) struct DocumentPage {
    /// The documents, by id.
    #[schema(value_type = Vec<openapi::Document>)]
    documents: Vec<Document>,
    /// Documents in the collection.
    total: usize,
}

/// A page of a collection's documents, by id.
#[utoipa::path(get, path = "/api/collections/{name}/documents", tag = "documents",
    params(
        ("name" = String, Path, description = "the collection"),
        ("offset" = Option<usize>, Query, description = "documents to skip; 0 when absent"),
        ("limit" = Option<usize>, Query, description = "documents to return: 10 when absent, at most the server's largest page"),
    ),
    responses(
        (status = 200, description = "the page", body = DocumentPage),
        (status = "4XX", description = "no such collection; bad query; missing API key", body = ErrorBody),
    ))]
pub(crate) async fn list_docs(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath(name) = name?;
    let Query(q) = q?;
    let served = state.collection(&name)?;
    let limit = q.limit.min(state.config.max_results);
    blocking(move || {
        let documents = served.collection.list(q.offset, limit)?;
        answer(&DocumentPage {
            documents,
            total: served.collection.len(),
        })
    })
    .await
}

/// One document.
#[utoipa::path(get, path = "/api/collections/{name}/documents/{id}", tag = "documents",
    params(
        ("name" = String, Path, description = "the collection"),
        ("id" = String, Path, description = "the document"),
    ),
    responses(
        (status = 200, description = "the document", body = openapi::Document),
        (status = "4XX", description = "no such collection or document; missing API key", body = ErrorBody),
    ))]
pub(crate) async fn get_doc(
    State(state): Shared,
    p: Result<UrlPath<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath((name, id)) = p?;
    let served = state.collection(&name)?;
    let doc = served
        .collection
        .get(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no document {id:?} in {name:?}")))?;
    answer(&doc)
}

/// What a patch did.
#[derive(Serialize, ToSchema)]
pub(crate) struct DocumentUpdated {
    /// The document's id.
    updated: String,
    /// Whether its vector was made again (only when a field it is embedded from changed).
    reembedded: bool,
    /// The collection's generation after the write.
    generation: u64,
}

/// Sets some fields of a document.
///
/// The fields given are set (null removes one), the others kept; the document is re-embedded
/// only when a field its vector comes from changed.
#[utoipa::path(patch, path = "/api/collections/{name}/documents/{id}", tag = "documents",
    params(
        ("name" = String, Path, description = "the collection"),
        ("id" = String, Path, description = "the document"),
    ),
    request_body(content = std::collections::HashMap<String, serde_json::Value>, description = "the fields to set (null removes one); the id cannot change"),
    responses(
        (status = 200, description = "updated", body = DocumentUpdated),
        (status = "4XX", description = "no such collection or document, bad fields, missing API key", body = ErrorBody),
        (status = "5XX", description = "the model or the store failed", body = ErrorBody),
    ))]
pub(crate) async fn patch_doc(
    State(state): Shared,
    p: Result<UrlPath<(String, String)>, PathRejection>,
    body: Result<Json<Fields>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath((name, id)) = p?;
    let Json(patch) = body?;
    let served = state.collection(&name)?;
    let st = state.clone();
    blocking(move || {
        let mut patch = patch;
        let images: Vec<String> = served
            .collection
            .info()
            .spec
            .image_fields()
            .map(String::from)
            .collect();
        let images: Vec<&str> = images.iter().map(String::as_str).collect();
        client_image_paths(&mut patch, &images, &st.roots_of(&served)?)
            .map_err(ApiError::bad_request)?;
        let worker = st.worker(&served.collection.info().model)?;
        // Relative image paths are resolved against the collection directory (a Milvus collection
        // has none: the client's paths are absolute under the roots by now).
        let base = served
            .collection
            .dir()
            .map(|d| d.to_path_buf())
            .unwrap_or_default();
        let r = update_document(
            served.collection.store(),
            worker.as_ref(),
            &id,
            &patch,
            &base,
        )
        .map_err(|e| match e {
            SearchError::NotFound(_) => {
                ApiError::not_found(format!("no document {id:?} in {name:?}"))
            }
            e => e.into(),
        })?;
        answer(&DocumentUpdated {
            updated: id,
            reembedded: r.reembedded,
            generation: r.generation,
        })
    })
    .await
}

/// What deleting a document did.
#[derive(Serialize, ToSchema)]
pub(crate) struct DocumentDeleted {
    /// The document's id.
    deleted: String,
    /// The collection's generation after the write.
    generation: u64,
}

/// Deletes a document.
#[utoipa::path(delete, path = "/api/collections/{name}/documents/{id}", tag = "documents",
    params(
        ("name" = String, Path, description = "the collection"),
        ("id" = String, Path, description = "the document"),
    ),
    responses(
        (status = 200, description = "deleted", body = DocumentDeleted),
        (status = "4XX", description = "no such collection or document; missing API key", body = ErrorBody),
    ))]
pub(crate) async fn delete_doc(
    State(state): Shared,
    p: Result<UrlPath<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath((name, id)) = p?;
    let served = state.collection(&name)?;
    blocking(move || {
        let r = served.collection.delete(std::slice::from_ref(&id))?;
        if r.count == 0 {
            return Err(ApiError::not_found(format!(
                "no document {id:?} in {name:?}"
            )));
        }
        answer(&DocumentDeleted {
            deleted: id,
            generation: r.generation,
        })
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ThumbQuery {
    #[serde(default = "default_thumb")]
    size: usize,
}

fn default_thumb() -> usize {
    256
}

/// A PNG thumbnail of a document's image.
///
/// Only documents of the collection, only decodable images: the file is decoded and
/// re-encoded, never sent as is.
#[utoipa::path(get, path = "/api/collections/{name}/documents/{id}/thumbnail", tag = "documents",
    params(
        ("name" = String, Path, description = "the collection"),
        ("id" = String, Path, description = "the document"),
        ("size" = Option<usize>, Query, minimum = 16, maximum = 1024, description = "edge of the square thumbnail in pixels, 256 when absent (clamped to 16..1024)"),
        ("key" = Option<String>, Query, description = "the API key, for image tags, which cannot send headers"),
    ),
    responses(
        (status = 200, description = "the thumbnail", content(("image/png"))),
        (status = "4XX", description = "no such collection or document, no image, image unavailable or not decodable, missing API key", body = ErrorBody),
    ))]
pub(crate) async fn thumbnail(
    State(state): Shared,
    p: Result<UrlPath<(String, String)>, PathRejection>,
    q: Result<Query<ThumbQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let UrlPath((name, id)) = p?;
    let Query(q) = q?;
    let size = q.size.clamp(16, 1024);
    let served = state.collection(&name)?;
    let doc = served
        .collection
        .get(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no document {id:?} in {name:?}")))?;
    let spec = served.collection.info().spec.clone();
    let image = spec
        .image_fields()
        .find_map(|f| doc.fields.get(f).and_then(|v| v.as_str()).map(String::from))
        .ok_or_else(|| ApiError::not_found(format!("document {id:?} has no image")))?;
    let max_pixels = state.config.batch.max_image_pixels;
    let roots = state.roots_of(&served)?;
    let png = blocking(move || {
        // An image given by URL is shown from the copy fetched when it was indexed (fetched
        // again if the cache lost it).
        let path = if gclip_search::remote::is_url(&image) {
            gclip_search::remote::RemoteImages::shared()
                .fetch(&image)
                .map_err(|e| ApiError::not_found(format!("image unavailable: {e}")))?
        } else {
            // The same answer whether the file is missing or outside the roots.
            roots
                .readable(&image)
                .ok_or_else(|| ApiError::not_found(format!("document {id:?}: image unavailable")))?
        };
        make_thumbnail(&path, size, max_pixels)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        Body::from(png),
    )
        .into_response())
}

fn make_thumbnail(path: &Path, size: usize, max_pixels: u64) -> Result<Vec<u8>, ApiError> {
    // Regular files only, size-capped; the reason stays in the log (it names server paths).
    let bytes = gclip::input::image::read_image_file(path, gclip::input::image::max_image_bytes())
        .map_err(|e| {
            tracing::warn!("thumbnail: {e}");
            ApiError::not_found("image unavailable")
        })?;
    // A square thumbnail: shortest edge resized to `size` (bicubic, as Pillow), centre crop.
    let mut cfg = gclip::input::image::PreprocessConfig::open_clip(size);
    cfg.max_pixels = max_pixels;
    let rgb = gclip::input::image::Preprocessor::new(cfg)
        .rgb8_from_bytes(&bytes, "thumbnail")
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_image", e.to_string()))?;
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, rgb.width as u32, rgb.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        w.write_image_data(&rgb.data)
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(png_bytes)
}
