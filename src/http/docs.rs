//! The document API: `GET /api/v1/docs/{doc}` (the document, or what a state vector lacks),
//! `POST /api/v1/docs/{doc}/update` (a write answered once durable),
//! `POST /api/v1/docs/{doc}/sync` (one round of a client syncing over HTTP polling), and the
//! version history: `GET|POST …/versions` (list, take), `GET …/versions/{id}` (as it was, in
//! Yjs or JSON) and `POST …/versions/{id}/restore`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use tandem_crdt::Access;
use tandem_sync::AwarenessUpdate;

use super::extract::{DocGet, DocPost, Params};
use super::refusals::room_error;
use super::state::AppState;
use crate::auth::{AuthError, Principal};
use crate::config::Config;
use crate::docname::DocName;
use crate::docs::pollers::PollRequest;
use crate::docs::{RoomOpError, VersionError};
use crate::durability::Ticket;
use crate::error::ApiError;

/// base64url, with or without padding: clients differ.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Deserialize)]
pub struct ReadParams {
    /// A base64url-encoded state vector: answer only what it lacks.
    sv: Option<String>,
    /// Versions older than this one (a version id): the next page.
    before: Option<u64>,
    /// How many versions a page holds (50 when not given, at most 200).
    limit: Option<usize>,
}

/// The most versions one page lists.
const MAX_VERSIONS_PAGE: usize = 200;

/// `GET /api/v1/docs/{doc}` (the document as one v1 update, or the diff against `?sv=`),
/// `GET …/versions` and `GET …/versions/{id}`.
pub async fn get(
    State(app): State<AppState>,
    route: DocGet,
    headers: axum::http::HeaderMap,
    Params(params): Params<ReadParams>,
) -> Result<Response, ApiError> {
    let name = match route {
        DocGet::Doc(name) => name,
        DocGet::Versions(name) => {
            let limit = params.limit.unwrap_or(50).clamp(1, MAX_VERSIONS_PAGE);
            let versions = app
                .rooms
                .list_versions(&name, params.before, limit)
                .await
                .map_err(version_error)?;
            // A full page may have more after it.
            let next = (versions.len() == limit)
                .then(|| versions.last().map(|v| v.id))
                .flatten();
            let listed: Vec<_> = versions.iter().map(version_json).collect();
            // Who changed the document since its newest version: what a restore would also
            // replace, before any version names them.
            let unversioned = app.rooms.unversioned_authors(&name);
            return Ok(Json(serde_json::json!({
                "versions": listed,
                "next_before": next,
                "unversioned_authors": unversioned,
            }))
            .into_response());
        }
        DocGet::Version(name, id) => {
            let (version, content) = app.rooms.version(&name, id).await.map_err(version_error)?;
            if wants_json(&headers) {
                let content = tandem_crdt::content_json(&content)
                    .map_err(|e| room_error(RoomOpError::Room(e)))?;
                let content: serde_json::Value = serde_json::from_str(&content)
                    .map_err(|e| ApiError::bad_request("bad_version", e.to_string()))?;
                return Ok(Json(serde_json::json!({
                    "version": version_json(&version),
                    "content": content,
                }))
                .into_response());
            }
            return Ok((
                [(header::CONTENT_TYPE, "application/octet-stream")],
                content,
            )
                .into_response());
        }
    };
    let sv = match params.sv {
        Some(sv) => BASE64URL.decode(sv.as_bytes()).map_err(|e| {
            ApiError::bad_request("bad_state_vector", format!("sv is not base64url: {e}"))
        })?,
        // The empty state vector: everything.
        None => vec![0],
    };
    let update = app
        .rooms
        .read(&name, |room| room.diff(&sv))
        .await
        .map_err(room_error)?
        .map_err(|e| room_error(RoomOpError::Room(e)))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], update).into_response())
}

/// `POST /api/v1/docs/{doc}/update` (`update`) and `POST /api/v1/docs/{doc}/sync`
/// (`sync`).
pub async fn post(State(app): State<AppState>, request: DocPost) -> Result<Response, ApiError> {
    match request {
        DocPost::Update {
            name,
            principal,
            update,
        } => self::update(&app, name, &principal.user, update).await,
        DocPost::TakeVersion {
            name,
            principal,
            label,
        } => {
            let version = app
                .rooms
                .take_version(
                    &name,
                    tandem_storage::VersionReason::Named,
                    label,
                    Some(&principal.user),
                )
                .await
                .map_err(version_error)?;
            tracing::info!(doc = %name, user = %principal.user, id = version.id, "version taken");
            Ok((
                StatusCode::CREATED,
                Json(serde_json::json!({ "version": version_json(&version) })),
            )
                .into_response())
        }
        DocPost::Restore {
            name,
            principal,
            id,
        } => {
            let restored = app
                .rooms
                .restore(&name, id, &principal.user)
                .await
                .map_err(version_error)?;
            tracing::info!(doc = %name, user = %principal.user, version = id, changed = restored.changed, "version restored");
            Ok(Json(serde_json::json!({
                "restored": id,
                "changed": restored.changed,
                "before": version_json(&restored.before),
                "after": version_json(&restored.after),
            }))
            .into_response())
        }
        DocPost::Stateless { name, payload } => {
            let body = tandem_sync::hocuspocus::stateless_body(&payload);
            let delivered = app.rooms.stateless_by_name(&name, body.into()).await;
            Ok(Json(serde_json::json!({ "delivered": delivered })).into_response())
        }
        DocPost::Sync {
            name,
            principal,
            access,
            body,
        } => sync(&app, name, principal, access, &body).await,
    }
}

/// Applies a v1 update, sends it to the document's clients and answers once it is durable.
async fn update(
    app: &AppState,
    name: DocName,
    author: &str,
    update: Bytes,
) -> Result<Response, ApiError> {
    let (changed, ticket) = app
        .rooms
        .apply_update(&name, author, update)
        .await
        .map_err(room_error)?;
    durable(app, ticket, &name).await?;
    Ok(Json(serde_json::json!({ "ok": true, "changed": changed })).into_response())
}

/// A version as the API shows it.
fn version_json(version: &tandem_storage::Version) -> serde_json::Value {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(version.at_ms) * 1_000_000)
        .ok()
        .map(crate::clock::rfc3339_exact);
    serde_json::json!({
        "id": version.id,
        "at": at,
        "label": version.label,
        "authors": version.authors,
        "bytes": version.bytes,
        "reason": version.reason.as_str(),
    })
}

/// Whether the client asked for JSON (`Accept: application/json`).
fn wants_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("application/json"))
        })
}

/// The answer to a version request that failed.
fn version_error(err: VersionError) -> ApiError {
    match err {
        VersionError::NotFound(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "version_not_found",
            format!("no version {id} of this document (retention may have removed it)"),
        ),
        VersionError::Busy => ApiError::new(
            StatusCode::CONFLICT,
            "restore_in_progress",
            "a restore of this document is under way; retry once it is done",
        ),
        VersionError::Room(e) => room_error(e),
        VersionError::Store(e) => ApiError::storage(&e),
        VersionError::Durability(e) => {
            tracing::error!(error = %e, "restore applied but not flushed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the restore could not be made durable; it may still apply",
            )
        }
    }
}

/// Waits until what `ticket` covers is on disk: 503 when the store cannot make it so.
async fn durable(app: &AppState, ticket: Ticket, name: &DocName) -> Result<(), ApiError> {
    app.durability
        .wait(ticket, app.config.storage_timeout())
        .await
        .map_err(|e| {
            tracing::error!(doc = %name, error = %e, "update applied but not flushed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the update could not be made durable; retry it (updates are idempotent)",
            )
        })
}

/// The body of `POST /api/v1/docs/{doc}/sync`. Binary fields are base64url.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    /// The client's Yjs client id.
    client_id: u64,
    /// The client's state vector: the answer holds what it lacks.
    state_vector: String,
    /// Its edits the server may lack, as one v1 update.
    #[serde(default)]
    update: Option<String>,
    /// Its own awareness state (cursor, name) as an encoded awareness update.
    #[serde(default)]
    awareness: Option<String>,
}

/// A sync round's body, decoded and checked: every field within its limit, the awareness
/// well-formed and only the client's own. Whether the caller may write is the handler's to
/// check.
#[derive(Debug)]
pub struct SyncBody {
    pub client_id: u64,
    pub state_vector: Bytes,
    pub update: Option<Bytes>,
    pub awareness: Option<Bytes>,
}

impl SyncBody {
    /// Decodes and checks `body`.
    ///
    /// # Errors
    /// 400 for what is malformed, 413 for what is over its limit.
    pub fn parse(body: &[u8], config: &Config) -> Result<SyncBody, ApiError> {
        let request: SyncRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("bad_body", format!("not a sync request: {e}")))?;
        if request.client_id >= tandem_crdt::SERVER_CLIENT_BASE {
            return Err(ApiError::bad_request(
                "bad_client_id",
                "client_id must be a Yjs client id, below 2^53 - 2^32",
            ));
        }
        let field = |code: &'static str, value: Option<&str>| {
            value
                .map(|value| {
                    BASE64URL
                        .decode(value.as_bytes())
                        .map(Bytes::from)
                        .map_err(|e| ApiError::bad_request(code, format!("not base64url: {e}")))
                })
                .transpose()
        };
        let state_vector =
            field("bad_state_vector", Some(&request.state_vector))?.unwrap_or_default();
        let update = field("bad_update", request.update.as_deref())?;
        let awareness = field("bad_awareness", request.awareness.as_deref())?;
        if update
            .as_ref()
            .is_some_and(|u| u.len() > config.max_frame_bytes)
        {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the update is over {} bytes; send it in parts",
                    config.max_frame_bytes
                ),
            ));
        }
        if let Some(awareness) = &awareness {
            // A cursor and a name are small; a connection's frame limit is no bound for a state
            // that every poll of the room carries.
            if awareness.len() > config.max_dashboard_frame_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!(
                        "the awareness state is over {} bytes",
                        config.max_dashboard_frame_bytes
                    ),
                ));
            }
            let decoded = AwarenessUpdate::decode(awareness).map_err(|e| {
                ApiError::bad_request("bad_awareness", format!("malformed awareness update: {e}"))
            })?;
            if decoded
                .entries
                .iter()
                .any(|e| e.client_id != request.client_id)
            {
                return Err(ApiError::bad_request(
                    "bad_awareness",
                    "a poller's awareness may only hold its own client_id",
                ));
            }
        }
        Ok(SyncBody {
            client_id: request.client_id,
            state_vector,
            update,
            awareness,
        })
    }
}

/// One round of a client that syncs a document over HTTP instead of a WebSocket (the
/// dashboard's degraded mode). It posts its state vector, its pending edits and its awareness;
/// the answer, once its edits are durable, holds what it lacks, the document's state vector
/// (so it knows what to post next time) and the room's awareness states. Until it has not
/// polled for `--doc-poll-ttl-ms` it is in the room like a connection: its cursor shows, and
/// it counts as being in the document.
async fn sync(
    app: &AppState,
    name: DocName,
    principal: Principal,
    access: Access,
    body: &[u8],
) -> Result<Response, ApiError> {
    let SyncBody {
        client_id,
        state_vector,
        update,
        awareness,
    } = SyncBody::parse(body, &app.config)?;
    let writes = update.as_ref().is_some_and(|u| u.as_ref() != [0, 0]);
    if writes && access != Access::ReadWrite {
        return Err(ApiError::refusal(
            AuthError::ReadOnly,
            "http_doc_sync",
            Some(&name),
        ));
    }
    // A poller holds its document like a connection does (without authentication, nobody in
    // particular is capped).
    let hold = match app.auth.is_open() {
        true => None,
        false => Some(
            app.connections
                .hold_doc(name.workspace(), &principal.user, name.as_str())
                .map_err(crate::http::extract::crowded_error)?,
        ),
    };
    let (polled, ticket) = app
        .rooms
        .poll(
            &name,
            PollRequest {
                user: Arc::from(principal.user.as_str()),
                client: client_id,
                state_vector: state_vector.to_vec(),
                update,
                awareness,
                access,
                hold,
            },
        )
        .await
        .map_err(room_error)?;
    // An update that changed nothing may be a retry of one still on its way to disk (or whose
    // flush failed): its answer waits behind everything appended so far.
    match ticket {
        Some(ticket) => durable(app, ticket, &name).await?,
        None if writes => durable(app, app.durability.barrier(), &name).await?,
        None => {}
    }
    tracing::debug!(doc = %name, user = %principal.user, client = client_id, "polled");
    Ok(Json(serde_json::json!({
        "update": BASE64URL.encode(&polled.update),
        "state_vector": BASE64URL.encode(&polled.state_vector),
        "awareness": polled.awareness.map(|a| BASE64URL.encode(a)),
        "poll_ttl_ms": app.config.doc_poll_ttl_ms,
        "access": if access == Access::ReadWrite { "read-write" } else { "read" },
    }))
    .into_response())
}
