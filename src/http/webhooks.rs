//! The webhook admin API: `POST/GET /api/v1/admin/webhooks`, `DELETE …/{id}` and
//! `GET …/{id}/deliveries`, for a workspace's admins (anyone on a server without
//! authentication, for the workspace `?workspace=` names).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{Admin, JsonObject, Params};
use super::state::AppState;
use crate::auth::identity::OPEN_WORKSPACE;
use crate::error::ApiError;
use crate::webhooks::{NewEndpoint, WebhookError};

#[derive(Debug, Deserialize)]
pub struct WorkspaceParam {
    /// Without authentication: the workspace (the token's otherwise).
    workspace: Option<String>,
}

/// The workspace an admin acts on: its token's, or `?workspace=` on an open server.
fn workspace(scope: Option<String>, param: WorkspaceParam) -> String {
    scope
        .or(param.workspace)
        .unwrap_or_else(|| OPEN_WORKSPACE.to_owned())
}

/// `POST /api/v1/admin/webhooks` with `{"url","events":[..],"description"?,"include_content"?}`:
/// `201` with the endpoint and its secret, shown this once.
pub async fn create(
    State(app): State<AppState>,
    Admin(scope): Admin,
    Params(param): Params<WorkspaceParam>,
    JsonObject(fields): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let workspace = workspace(scope, param);
    let new: NewEndpoint = serde_json::from_value(Value::Object(fields)).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_webhook",
            format!("an endpoint is {{\"url\", \"events\": [..], \"description\"?, \"include_content\"?}}: {e}"),
        )
    })?;
    let endpoint = app
        .webhooks
        .create(&workspace, new)
        .await
        .map_err(|e| match e {
            WebhookError::Invalid(why) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_webhook", why)
            }
            WebhookError::TooMany => {
                ApiError::new(StatusCode::CONFLICT, "too_many_webhooks", e.to_string())
            }
            WebhookError::Store(e) => ApiError::storage(&e),
        })?;
    let mut body = endpoint.public();
    body["secret"] = json!(endpoint.secret);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /api/v1/admin/webhooks`: the workspace's endpoints, without their secrets.
pub async fn list(
    State(app): State<AppState>,
    Admin(scope): Admin,
    Params(param): Params<WorkspaceParam>,
) -> Json<Value> {
    let workspace = workspace(scope, param);
    let endpoints: Vec<Value> = app
        .webhooks
        .list(&workspace)
        .iter()
        .map(|e| e.public())
        .collect();
    Json(json!({ "webhooks": endpoints }))
}

/// `DELETE /api/v1/admin/webhooks/{id}`: the endpoint and what waits for it are gone.
pub async fn delete(
    State(app): State<AppState>,
    Admin(scope): Admin,
    Params(param): Params<WorkspaceParam>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let workspace = workspace(scope, param);
    match app.webhooks.delete(&workspace, &id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!("no webhook endpoint {id:?}"))),
        Err(e) => Err(ApiError::storage(&e)),
    }
}

/// `GET /api/v1/admin/webhooks/{id}/deliveries`: the recent attempts, newest first, and how
/// many messages wait.
pub async fn deliveries(
    State(app): State<AppState>,
    Admin(scope): Admin,
    Params(param): Params<WorkspaceParam>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let workspace = workspace(scope, param);
    let (attempts, waiting) = app
        .webhooks
        .deliveries(&workspace, &id)
        .ok_or_else(|| ApiError::not_found(format!("no webhook endpoint {id:?}")))?;
    Ok(Json(json!({ "deliveries": attempts, "waiting": waiting })))
}
