//! Collections: list, get, create under `--root`, delete (`/api/collections[/{name}]`).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use gclip::model::Precision;
use gclip_search::{model_identity, Collection, EmbedSpec, ModelIdentity};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::answer;
use crate::error::ErrorBody;
use crate::{blocking, openapi, valid_name, ApiError, Served, Shared};

/// A collection being served.
#[derive(Serialize, ToSchema)]
pub(crate) struct CollectionSummary {
    /// The name in URLs.
    name: String,
    /// Documents in the collection.
    documents: usize,
    /// The model its vectors were made with.
    #[schema(value_type = openapi::Model)]
    model: ModelIdentity,
    /// The fields it embeds and their weights.
    #[schema(value_type = openapi::EmbedSpec)]
    embed: EmbedSpec,
    /// The fields that hold images (paths or URLs).
    image_fields: Vec<String>,
}

impl CollectionSummary {
    fn of(s: &Served) -> Self {
        let info = s.collection.info();
        Self {
            name: s.name.clone(),
            documents: s.collection.len(),
            model: info.model.clone(),
            embed: info.spec.clone(),
            image_fields: info.spec.image_fields().map(String::from).collect(),
        }
    }
}

/// The collections served.
#[utoipa::path(get, path = "/api/collections", tag = "collections",
    responses(
        (status = 200, description = "every collection served, by name", body = Vec<CollectionSummary>),
        (status = "4XX", description = "missing API key (servers that protect reads)", body = ErrorBody),
    ))]
pub(crate) async fn list_collections(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let all: Vec<CollectionSummary> = state
        .collections
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|s| CollectionSummary::of(s))
        .collect();
    answer(&all)
}

/// One collection.
#[utoipa::path(get, path = "/api/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "the collection")),
    responses(
        (status = 200, description = "the collection", body = CollectionSummary),
        (status = "4XX", description = "no such collection; missing API key", body = ErrorBody),
    ))]
pub(crate) async fn get_collection(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath(name) = name?;
    let served = state.collection(&name)?;
    answer(&CollectionSummary::of(&served))
}

/// A collection to create under the server's `--root`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCollection {
    /// 1-64 letters, digits, `-` and `_`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    name: String,
    /// A Hugging Face model id, or a model directory or checkpoint under the server's
    /// `--files-root` folders.
    model: String,
    /// The architecture of a checkpoint file: a built-in name (`ViT-B-32`) or an open_clip
    /// config JSON under `--files-root`.
    #[serde(default)]
    arch: Option<String>,
    /// `FIELD[:WEIGHT],…`: the fields embedded and their weights; `image` when absent.
    #[serde(default)]
    #[schema(example = "title:0.3,image:0.7")]
    embed: Option<String>,
    /// The fields that hold images; `["image"]` when absent.
    #[serde(default)]
    image_fields: Option<Vec<String>>,
    /// The precision of the vectors; the server's `--precision`, else fp32, when absent.
    #[serde(default)]
    #[schema(value_type = Option<openapi::Precision>)]
    precision: Option<Precision>,
}

/// Creates a collection under `--root`.
///
/// The model is loaded and checked before anything is written.
#[utoipa::path(post, path = "/api/collections", tag = "collections",
    request_body = CreateCollection,
    responses(
        (status = 201, description = "created", body = CollectionSummary),
        (status = "4XX", description = "bad name or model, name taken, no --root, missing API key", body = ErrorBody),
        (status = "5XX", description = "the server failed", body = ErrorBody),
    ))]
pub(crate) async fn create_collection(
    State(state): Shared,
    body: Result<Json<CreateCollection>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let root = state.config.root.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "no_root",
            "this server was started without --root: it cannot create collections",
        )
    })?;
    if !valid_name(&body.name) {
        return Err(ApiError::bad_request(
            "collection names are 1-64 characters of letters, digits, - and _",
        ));
    }
    if state.has(&body.name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("collection {:?} exists", body.name),
        ));
    }
    let st = state.clone();
    blocking(move || {
        let images = body.image_fields.unwrap_or_else(|| vec!["image".into()]);
        let spec = EmbedSpec::parse(body.embed.as_deref().unwrap_or("image"), &images)?;
        let model = st.client_model_path(&body.model)?;
        let arch = body
            .arch
            .as_deref()
            .map(|a| st.client_model_path(a))
            .transpose()?;
        let precision = body
            .precision
            .unwrap_or_else(|| st.config.precision.unwrap_or_default());
        let (identity, _) = model_identity(&model, arch.as_deref(), precision)?;
        // The model is loaded and checked before anything is written, so that a collection
        // whose model cannot be used is never created.
        st.worker(&identity).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_model",
                format!("model {}: {}", body.model, e.message),
            )
        })?;
        let dir = root.join(&body.name);
        let c = Collection::create(&dir, identity, spec)?;
        st.insert(body.name.clone(), c)?;
        let s = st.collection(&body.name)?;
        Ok((StatusCode::CREATED, answer(&CollectionSummary::of(&s))?))
    })
    .await
}

/// What deleting a collection did.
#[derive(Serialize, ToSchema)]
pub(crate) struct CollectionDeleted {
    /// The collection's name.
    deleted: String,
    /// Whether its files were removed: only for collections under `--root`; others are only no
    /// longer served.
    files_removed: bool,
}

/// Stops serving a collection; removes its files when it lives under `--root`.
#[utoipa::path(delete, path = "/api/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "the collection")),
    responses(
        (status = 200, description = "deleted", body = CollectionDeleted),
        (status = "4XX", description = "no such collection; missing API key", body = ErrorBody),
    ))]
pub(crate) async fn delete_collection(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath(name) = name?;
    let served = state.collection(&name)?;
    state
        .collections
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
    // Files are removed only for collections that live under --root; others are detached.
    let under_root = state
        .config
        .root
        .as_ref()
        .is_some_and(|r| served.collection.dir() == Some(r.join(&name).as_path()));
    let dir = served.collection.dir().map(|d| d.to_path_buf());
    drop(served);
    let removed = under_root && dir.is_some_and(|d| std::fs::remove_dir_all(d).is_ok());
    answer(&CollectionDeleted {
        deleted: name,
        files_removed: removed,
    })
}
