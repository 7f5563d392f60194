//! API errors: every failure is a JSON body `{"error": {"code", "message"}}` with a 4xx status
//! for what the client sent and a 5xx only for what went wrong on the server.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gclip_search::SearchError;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answered to the client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable name of the failure: `bad_request`, `bad_json`, `bad_query`, `bad_path`,
    /// `bad_filter`, `not_found`, `unauthorized`, `host_not_allowed`, `no_root`, `exists`,
    /// `too_large`, `bad_model`, `bad_image`, `cannot_embed`, `busy`, `internal`.
    pub code: String,
    /// What to change, for a person.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match &e {
            SearchError::NotFound(_) => Self::not_found(e.to_string()),
            SearchError::Filter { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "bad_filter", e.to_string())
            }
            SearchError::Busy(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
            }
            SearchError::Embed(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "cannot_embed",
                e.to_string(),
            ),
            _ if e.is_user_error() => Self::bad_request(e.to_string()),
            _ => Self::internal(e.to_string()),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        let status = e.status();
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        Self::new(status, "bad_json", e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(format!("worker failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!("{}", self.message);
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}
