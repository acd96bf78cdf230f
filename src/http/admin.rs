//! Monitoring and administration: `GET /metrics`, `GET /readyz`, the admin API (admin role)
//! and the reports of client-side errors.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use serde_json::{json, Value};

use super::extract::{too_many, Admin, Authenticated, Limited, SmallBody};
use super::state::AppState;
use crate::auth::{AuthError, Principal};
use crate::docname::DocName;
use crate::docs::RoomOpError;
use crate::error::ApiError;
use crate::net::ConnId;

/// `GET /metrics`: every metric in the Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> Response {
    app.connections.publish_totals();
    match crate::metrics::handle() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process",
        )
        .into_response(),
    }
}

/// `GET /readyz`: 200 when the server can take writes; 503 naming what fails (the store not
/// taking writes: the data directory, or PostgreSQL; a log whose flushes fail).
pub async fn readyz(State(app): State<AppState>) -> Response {
    let mut failing = Vec::new();
    if let Err(message) = app.storage_probe.check(app.rooms.store()).await {
        failing.push(json!({ "part": "storage", "message": message }));
    }
    if app.durability.is_failing() {
        failing.push(json!({"part": "update_log", "message": "flushing the update log fails"}));
    }
    if app.hub.is_failing() {
        failing.push(json!({"part": "event_log", "message": "flushing the event log fails"}));
    }
    if failing.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        tracing::warn!(?failing, "not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "failing": failing })),
        )
            .into_response()
    }
}

/// `GET /api/v1/admin/connections`: the open connections of the admin's workspace.
pub async fn connections(State(app): State<AppState>, Admin(scope): Admin) -> Json<Value> {
    Json(json!({ "connections": app.connections.list(scope.as_deref()) }))
}

/// `DELETE /api/v1/admin/connections/{id}`: closes a connection with 4000.
pub async fn kick(
    State(app): State<AppState>,
    Admin(scope): Admin,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request("bad_connection_id", e.body_text()))?;
    if !app.connections.kick(ConnId(id), scope.as_deref()) {
        return Err(ApiError::not_found(format!(
            "no connection {id} that can be closed"
        )));
    }
    tracing::info!(conn = id, "connection closed by an administrator");
    Ok(Json(json!({ "closed": id })))
}

/// `GET /api/v1/admin/rooms`: the documents in memory in the admin's workspace.
pub async fn rooms(State(app): State<AppState>, Admin(scope): Admin) -> Json<Value> {
    Json(json!({ "rooms": app.rooms.list(scope.as_deref()) }))
}

/// `GET /api/v1/admin/nodes`: the nodes of the cluster this node sees alive, itself first
/// (only itself, with `cluster: null`, when it runs alone). Nodes hold no workspace's data,
/// so every admin sees them all.
pub async fn nodes(State(app): State<AppState>, Admin(_): Admin) -> Json<Value> {
    match &app.cluster {
        Some(cluster) => Json(json!({
            "cluster": cluster.settings().name,
            "nodes": cluster.nodes(),
        })),
        None => Json(json!({ "cluster": null, "nodes": [] })),
    }
}

/// `POST /api/v1/admin/rooms/{doc}/compact`: compacts a document now.
pub async fn compact(
    State(app): State<AppState>,
    Admin(scope): Admin,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request("bad_document_name", e.body_text()))?;
    let Some(doc) = raw.strip_suffix("/compact") else {
        return Err(ApiError::not_found(
            "documents are compacted with POST /api/v1/admin/rooms/{doc}/compact",
        ));
    };
    let name = DocName::parse(doc)
        .map_err(|e| ApiError::bad_request("bad_document_name", e.to_string()))?;
    if scope.as_deref().is_some_and(|w| name.workspace() != w) {
        return Err(ApiError::refusal(
            AuthError::WrongWorkspace,
            "admin_compact",
            Some(&name),
        ));
    }
    let absorbed = app.rooms.compact_doc(&name).await.map_err(|e| match e {
        RoomOpError::Store(e) => ApiError::storage(&e),
        RoomOpError::Room(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "document_unavailable",
            e.to_string(),
        ),
    })?;
    tracing::info!(doc = %name, absorbed, "compacted by an administrator");
    Ok(Json(
        json!({ "document": name.as_str(), "compacted_updates": absorbed }),
    ))
}

/// A caller who may report a client error now: any valid token, within
/// `--client-errors-per-minute` (429 with `Retry-After` past it).
pub struct Reporter(Principal);

impl FromRequestParts<AppState> for Reporter {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let key = (
            principal.workspace.clone().unwrap_or_default(),
            principal.user.clone(),
        );
        if let Err(not_until) = app.client_errors.0.check_key(&key) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(too_many("too many error reports", wait));
        }
        Ok(Reporter(principal))
    }
}

/// The longest text kept from a client error's field, in characters.
const MAX_FIELD_CHARS: usize = 2_000;

/// `POST /api/v1/client-errors` (any valid token): a browser reports an error,
/// `{"message": "...", "page": "/queries/456", "stack": "...", "kind": "..."}`. Counted in
/// `tandem_client_errors_total` and logged with the user and page; 202.
pub async fn client_error(
    Reporter(principal): Reporter,
    body: Limited<SmallBody>,
) -> Result<Response, ApiError> {
    let bytes = body.bytes;
    let report: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not JSON: {e}")))?;
    // Escaped: a line break in a report must not forge a log line.
    let text = |key: &str| -> Option<String> {
        report
            .get(key)
            .and_then(Value::as_str)
            .map(|s| crate::error::log_safe(&s.chars().take(MAX_FIELD_CHARS).collect::<String>()))
    };
    let Some(message) = text("message").filter(|m| !m.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            "a client error needs a non-empty `message`",
        ));
    };
    crate::metrics::get().client_errors.increment(1);
    tracing::warn!(
        user = %principal.user,
        workspace = principal.workspace.as_deref().unwrap_or("-"),
        page = text("page").as_deref().unwrap_or("-"),
        kind = text("kind").as_deref().unwrap_or("-"),
        stack = text("stack").as_deref().unwrap_or("-"),
        "client error: {message}"
    );
    Ok((StatusCode::ACCEPTED, Json(json!({ "ok": true }))).into_response())
}
