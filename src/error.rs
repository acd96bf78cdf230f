//! [`ApiError`]: every HTTP error as `{"error": code, "message": text}` with its status.
//! Internal details go to the log, not to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable code (`bad_request`, `not_found`, …).
    pub code: &'static str,
    /// A sentence for humans.
    pub message: String,
    /// More fields for the body (e.g. the plans a refusal requires).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    /// Adds a field to the body.
    pub fn with_detail(mut self, key: &str, value: serde_json::Value) -> ApiError {
        self.details.insert(key.to_owned(), value);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A storage failure: logged in full, reported to the client without internals.
    pub fn storage(err: &tandem_storage::StoreError) -> ApiError {
        tracing::error!(error = %err, "storage failure");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "storage is unavailable; try again later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details;
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.into());
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
