//! The HTTP API: documents (`/api/v1/docs/...`), events (`/api/v1/events`) and health.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::Deserialize;
use tandem_crdt::{Access, RoomError};

use crate::auth::{AuthError, Role};

use crate::docname::DocName;
use crate::durability::DurabilityError;
use crate::error::ApiError;
use crate::rooms::RoomOpError;
use crate::AppState;

/// base64url, with or without padding: clients differ.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How long an HTTP write waits for its group commit before answering 503.
const DURABILITY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Debug, Deserialize)]
pub struct ReadParams {
    /// A base64url-encoded state vector: answer only what it lacks.
    sv: Option<String>,
}

/// `GET /api/v1/docs/{doc}`: the document as one v1 update, or the diff against `?sv=`.
pub async fn get_doc(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let name = doc_name(path)?;
    app.auth
        .authorize_doc(bearer(&headers)?, &name)
        .map_err(|e| e.refuse("http_doc_read", Some(&name)))?;
    let Query(params) = params.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let sv = match params.sv {
        Some(sv) => Some(BASE64URL.decode(sv.as_bytes()).map_err(|e| {
            ApiError::bad_request("bad_state_vector", format!("sv is not base64url: {e}"))
        })?),
        None => None,
    };
    let update = app
        .rooms
        .read(&name, |room| match &sv {
            Some(sv) => room.diff(sv),
            None => room.diff(&[0]),
        })
        .await
        .map_err(room_error)?
        .map_err(|e| room_error(RoomOpError::Room(e)))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], update).into_response())
}

/// `POST /api/v1/docs/{doc}/update`: applies a v1 update, sends it to the document's clients
/// and answers once it is durable.
pub async fn post_update(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(err) => return Err(ApiError::bad_request("bad_document_name", err.body_text())),
    };
    let Some(doc) = raw.strip_suffix("/update") else {
        return Err(ApiError::not_found(
            "documents are written with POST /api/v1/docs/{doc}/update",
        ));
    };
    let name = DocName::parse(doc)
        .map_err(|e| ApiError::bad_request("bad_document_name", e.to_string()))?;
    let (_, access) = app
        .auth
        .authorize_doc(bearer(&headers)?, &name)
        .map_err(|e| e.refuse("http_doc_write", Some(&name)))?;
    if access != Access::ReadWrite {
        return Err(AuthError::ReadOnly.refuse("http_doc_write", Some(&name)));
    }
    // The body is read only now, after the token checked out: an unauthenticated client cannot
    // make the server buffer a large upload.
    let update = read_body(body, app.config.max_frame_bytes).await?;
    if update.is_empty() {
        return Err(ApiError::bad_request(
            "bad_update",
            "the body must be a Yjs v1 update",
        ));
    }
    let (changed, ticket) = app
        .rooms
        .apply_update(&name, update)
        .await
        .map_err(room_error)?;
    app.durability
        .wait(ticket, DURABILITY_TIMEOUT)
        .await
        .map_err(|e: DurabilityError| {
            tracing::error!(doc = %name, error = %e, "update applied but not flushed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the update could not be made durable; retry it (updates are idempotent)",
            )
        })?;
    Ok(Json(serde_json::json!({ "ok": true, "changed": changed })).into_response())
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// The token of an `Authorization: Bearer` header, if any.
///
/// # Errors
/// An `Authorization` header that is not a bearer token.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| Some(t.trim()))
        .ok_or_else(|| {
            AuthError::InvalidToken("the Authorization header must be `Bearer <token>`".into())
                .refuse("http", None)
        })
}

fn doc_name(path: Result<Path<String>, PathRejection>) -> Result<DocName, ApiError> {
    match path {
        Ok(Path(raw)) => DocName::parse(&raw)
            .map_err(|e| ApiError::bad_request("bad_document_name", e.to_string())),
        Err(err) => Err(ApiError::bad_request("bad_document_name", err.body_text())),
    }
}

fn room_error(err: RoomOpError) -> ApiError {
    match err {
        RoomOpError::Room(RoomError::TooLarge { limit }) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "document_too_large",
            format!("the document would exceed its limit of {limit} bytes"),
        ),
        RoomOpError::Room(RoomError::BadStateVector(e)) => {
            ApiError::bad_request("bad_state_vector", format!("malformed state vector: {e}"))
        }
        RoomOpError::Room(RoomError::Poisoned) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "document_reloading",
            "the document is reloading; retry",
        ),
        RoomOpError::Room(e) => ApiError::bad_request("bad_update", e.to_string()),
        RoomOpError::Store(e) => ApiError::storage(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct PublishParams {
    /// The workspace, for a server running without authentication (tokens carry their own).
    workspace: Option<String>,
}

/// `POST /api/v1/events`: a backend publishes an event to its workspace. The event is checked
/// against its type (422 with what is wrong), given the workspace's next id and a timestamp,
/// and stored durably before the answer `201 {"id": N}`.
pub async fn publish_event(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<PublishParams>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    const ROUTE: &str = "http_events_publish";
    let principal = app
        .auth
        .authenticate(bearer(&headers)?)
        .map_err(|e| e.refuse(ROUTE, None))?;
    let Query(params) = params.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let workspace = match (&principal.workspace, params.workspace) {
        (Some(own), None) => own.clone(),
        (Some(own), Some(asked)) if *own == asked => asked,
        (Some(_), Some(_)) => return Err(AuthError::WrongWorkspace.refuse(ROUTE, None)),
        (None, Some(asked)) if valid_workspace(&asked) => asked,
        (None, _) => {
            return Err(ApiError::bad_request(
                "bad_workspace",
                "without authentication, name the workspace: ?workspace=<name>",
            ))
        }
    };
    // Open mode stands for every role; otherwise only backends publish.
    if !app.auth.is_open() && principal.role != Role::Service {
        return Err(AuthError::RoleRequired(Role::Service).refuse(ROUTE, None));
    }
    let bytes = read_body(body, app.config.max_event_bytes).await?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not JSON: {e}")))?;
    let mut event = crate::events::validate(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            e.to_string(),
        )
    })?;
    let now = time::OffsetDateTime::now_utc();
    let at_ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let timestamp = now
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "clock", e.to_string()))?;
    event
        .fields
        .insert("timestamp".into(), serde_json::Value::String(timestamp));
    let stored = serde_json::to_vec(&event.fields)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encode", e.to_string()))?;
    let id = app
        .events
        .append(&workspace, at_ms, &stored)
        .map_err(|e| ApiError::storage(&e))?;
    app.events.flush().await.map_err(|e| {
        tracing::error!(%workspace, id, error = %e, "event stored but not flushed");
        ApiError::storage(&e)
    })?;
    tracing::debug!(%workspace, id, kind = event.kind, "event published");
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

/// Reads a request body of at most `limit` bytes: 413 `too_large` past it. Called only once the
/// token checked out, so an unauthenticated client cannot make the server buffer an upload.
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {limit} bytes"),
            )
        } else {
            ApiError::bad_request("bad_body", "the body could not be read")
        }
    })
}

/// A workspace name as the first segment of a document name may be.
fn valid_workspace(name: &str) -> bool {
    !name.contains('/') && DocName::parse(name).is_ok()
}
