//! `POST /api/v1/dev/token`: development tokens, on a server without authentication only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::extract::{JsonObject, OpenMode};
use super::state::AppState;
use crate::auth::identity::OPEN_WORKSPACE;
use crate::error::ApiError;

/// `POST /api/v1/dev/token` with `{"name":"Ada"}`: a development token that names the user, so
/// two browser windows are two users. It grants nothing more than open mode already does. 404
/// when the server checks tokens.
pub async fn token(
    State(app): State<AppState>,
    _open: OpenMode,
    JsonObject(fields): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.chars().count() <= 64)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_name",
                "`name` is 1 to 64 characters",
            )
        })?;
    let (token, user) = app.auth.mint_dev(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "token",
            "could not mint a token",
        )
    })?;
    Ok(Json(json!({
        "token": token,
        "user": user,
        "name": name,
        "workspace": OPEN_WORKSPACE,
    })))
}
