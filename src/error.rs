//! [`ApiError`]: every HTTP error as `{"error": code, "message": text}` with its status, and
//! the answers to the refusals of the layers below (authentication, identity, storage).
//! Internal details go to the log, not to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::{AuthError, IdentityError};
use crate::docname::DocName;
use crate::metrics::Failure;

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
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: serde_json::Map::new(),
            retry_after: None,
        }
    }

    /// Tells the client to retry after `secs` seconds (`Retry-After`).
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
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

impl ApiError {
    /// Logs and counts the refusal of a request on `route` (never the token itself) and
    /// answers it.
    pub fn refusal(err: AuthError, route: &'static str, doc: Option<&DocName>) -> ApiError {
        let reason = err.reason();
        metrics::counter!("tandem_auth_refusals_total", "reason" => reason, "route" => route)
            .increment(1);
        match doc {
            Some(doc) => tracing::info!(reason, route, %doc, "request refused: {err}"),
            None => tracing::info!(reason, route, "request refused: {err}"),
        }
        err.into()
    }

    /// [`ApiError::refusal`] for a request that names nobody the server serves.
    pub fn identity(err: IdentityError, route: &'static str) -> ApiError {
        match err {
            IdentityError::Auth(err) => ApiError::refusal(err, route, None),
            IdentityError::BadWorkspace => ApiError::bad_request("bad_workspace", err.to_string()),
            IdentityError::BadUser => ApiError::bad_request("bad_user", err.to_string()),
        }
    }

    /// What a refused connection counts as in `tandem_connections_failed_total`.
    pub fn failure(&self) -> Failure {
        match (self.code, self.status.as_u16()) {
            ("plan_required", _) => Failure::Plan,
            (_, 401 | 403) => Failure::Auth,
            (_, 503) => Failure::Storage,
            _ => Failure::BadRequest,
        }
    }
}

impl From<tandem_storage::StoreError> for ApiError {
    fn from(err: tandem_storage::StoreError) -> ApiError {
        ApiError::storage(&err)
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        let status = if err.is_unauthenticated() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        let mut api = ApiError::new(status, err.reason(), err.to_string());
        if let AuthError::PlanRequired { plan, required } = &err {
            api = api
                .with_detail("required", serde_json::json!(required))
                .with_detail("plan", serde_json::json!(plan));
        }
        api
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
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// `text` fit for a log line: control characters (line breaks, escape sequences) written as
/// escapes, so what a client sends cannot forge or garble log lines.
pub fn log_safe(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod log_tests {
    use super::log_safe;

    #[test]
    fn control_characters_are_escaped_for_logs() {
        assert_eq!(log_safe("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(
            log_safe("boom\n2026-12-07T00:00:00Z  INFO forged\r\u{1b}[31m"),
            "boom\\n2026-12-07T00:00:00Z  INFO forged\\r\\u{1b}[31m"
        );
    }
}
