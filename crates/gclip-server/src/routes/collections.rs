//! Collections: list, get, create under `--root`, delete (`/api/collections[/{name}]`).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use gclip::model::Precision;
use gclip_search::{model_identity, Collection, EmbedSpec};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{blocking, valid_name, ApiError, Served, Shared};

fn collection_json(s: &Served) -> Value {
    let info = s.collection.info();
    json!({
        "name": s.name,
        "documents": s.collection.len(),
        "model": info.model,
        "embed": info.spec,
        "image_fields": info.spec.image_fields().collect::<Vec<_>>(),
    })
}

pub(crate) async fn list_collections(State(state): Shared) -> Json<Value> {
    let c = state.collections.read().unwrap_or_else(|p| p.into_inner());
    Json(Value::Array(
        c.values().map(|s| collection_json(s)).collect(),
    ))
}

pub(crate) async fn get_collection(
    State(state): Shared,
    name: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let UrlPath(name) = name?;
    let served = state.collection(&name)?;
    Ok(Json(collection_json(&served)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: String,
    model: String,
    #[serde(default)]
    arch: Option<String>,
    /// `FIELD[:WEIGHT],…`
    #[serde(default)]
    embed: Option<String>,
    #[serde(default)]
    image_fields: Option<Vec<String>>,
    /// `fp32`, `bf16` or `int8`; the server's `--precision`, else fp32, when absent.
    #[serde(default)]
    precision: Option<Precision>,
}

pub(crate) async fn create_collection(
    State(state): Shared,
    body: Result<Json<CreateBody>, JsonRejection>,
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
        Ok((StatusCode::CREATED, Json(collection_json(&s))))
    })
    .await
}

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
    Ok(Json(json!({"deleted": name, "files_removed": removed})))
}
