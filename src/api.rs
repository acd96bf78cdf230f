//! The HTTP API: documents (`/api/v1/docs/...`), the dashboard's events, presence, activity,
//! preferences and chat badges (`/api/v1/...`), and health.

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
use std::sync::Arc;

use bytes::Bytes;
use tandem_crdt::{Access, Any, RoomError};
use tandem_sync::AwarenessUpdate;

use crate::auth::{AuthError, Role};
use crate::connections::{NewConn, Remote};
use crate::dashboard::hub::{History, PublishError};
use crate::dashboard::presence::Source;
use crate::dashboard::{protocol, ChannelSet, PresenceUpdate};
use crate::events::Channel;
use crate::metrics::Kind;

use crate::docname::DocName;
use crate::durability::DurabilityError;
use crate::durability::Ticket;
use crate::error::ApiError;
use crate::rooms::{PollRequest, RoomOpError};
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

/// `POST /api/v1/docs/{doc}/update` ([`post_update`]) and `POST /api/v1/docs/{doc}/sync`
/// ([`post_sync`]).
pub async fn post_doc(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(err) => return Err(ApiError::bad_request("bad_document_name", err.body_text())),
    };
    let parse = |doc: &str| {
        DocName::parse(doc).map_err(|e| ApiError::bad_request("bad_document_name", e.to_string()))
    };
    if let Some(doc) = raw.strip_suffix("/update") {
        post_update(&app, &headers, parse(doc)?, body).await
    } else if let Some(doc) = raw.strip_suffix("/sync") {
        post_sync(&app, &headers, parse(doc)?, body).await
    } else {
        Err(ApiError::not_found(
            "documents are written with POST /api/v1/docs/{doc}/update or synced with POST /api/v1/docs/{doc}/sync",
        ))
    }
}

/// Applies a v1 update, sends it to the document's clients and answers once it is durable.
async fn post_update(
    app: &AppState,
    headers: &HeaderMap,
    name: DocName,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, access) = app
        .auth
        .authorize_doc(bearer(headers)?, &name)
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
    durable(app, ticket, &name).await?;
    Ok(Json(serde_json::json!({ "ok": true, "changed": changed })).into_response())
}

/// Waits until what `ticket` covers is on disk: 503 when the store cannot make it so.
async fn durable(app: &AppState, ticket: Ticket, name: &DocName) -> Result<(), ApiError> {
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

/// One round of a client that syncs a document over HTTP instead of a WebSocket (the
/// dashboard's degraded mode). It posts its state vector, its pending edits and its awareness;
/// the answer, once its edits are durable, holds what it lacks, the document's state vector
/// (so it knows what to post next time) and the room's awareness states. Until it has not
/// polled for `--doc-poll-ttl-ms` it is in the room like a connection: its cursor shows, and
/// it counts as being in the document.
async fn post_sync(
    app: &AppState,
    headers: &HeaderMap,
    name: DocName,
    body: Body,
) -> Result<Response, ApiError> {
    let (principal, access) = app
        .auth
        .authorize_doc(bearer(headers)?, &name)
        .map_err(|e| e.refuse("http_doc_sync", Some(&name)))?;
    // base64 takes 4 bytes for 3, and the update and awareness share the body.
    let limit = app.config.max_frame_bytes / 3 * 4 + 64 * 1024;
    let body = read_body(body, limit).await?;
    let request: SyncRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_body", format!("not a sync request: {e}")))?;
    if request.client_id >= tandem_crdt::SERVER_CLIENT_BASE {
        return Err(ApiError::bad_request(
            "bad_client_id",
            "client_id must be a Yjs client id, below 2^53 - 2^32",
        ));
    }
    let field = |code: &'static str, value: &str| {
        BASE64URL
            .decode(value.as_bytes())
            .map_err(|e| ApiError::bad_request(code, format!("not base64url: {e}")))
    };
    let state_vector = field("bad_state_vector", &request.state_vector)?;
    let update = match request.update.as_deref() {
        Some(update) => Some(Bytes::from(field("bad_update", update)?)),
        None => None,
    };
    let awareness = match request.awareness.as_deref() {
        Some(awareness) => Some(Bytes::from(field("bad_awareness", awareness)?)),
        None => None,
    };
    if update
        .as_ref()
        .is_some_and(|u| u.len() > app.config.max_frame_bytes)
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the update is over {} bytes; send it in parts",
                app.config.max_frame_bytes
            ),
        ));
    }
    let writes = update.as_ref().is_some_and(|u| u.as_ref() != [0, 0]);
    if writes && access != Access::ReadWrite {
        return Err(AuthError::ReadOnly.refuse("http_doc_sync", Some(&name)));
    }
    if let Some(awareness) = &awareness {
        // A cursor and a name are small; a connection's frame limit is no bound for a state
        // that every poll of the room carries.
        if awareness.len() > app.config.max_dashboard_frame_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the awareness state is over {} bytes",
                    app.config.max_dashboard_frame_bytes
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
    let (polled, ticket) = app
        .rooms
        .poll(
            &name,
            PollRequest {
                user: Arc::from(principal.user.as_str()),
                client: request.client_id,
                state_vector,
                update,
                awareness,
                access,
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
    tracing::debug!(doc = %name, user = %principal.user, client = request.client_id, "polled");
    Ok(Json(serde_json::json!({
        "update": BASE64URL.encode(&polled.update),
        "state_vector": BASE64URL.encode(&polled.state_vector),
        "awareness": polled.awareness.map(|a| BASE64URL.encode(a)),
        "poll_ttl_ms": app.config.doc_poll_ttl_ms,
        "access": if access == Access::ReadWrite { "read-write" } else { "read" },
    }))
    .into_response())
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// The token of an `Authorization: Bearer` header, if any.
///
/// # Errors
/// An `Authorization` header that is not a bearer token.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
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

/// Who a dashboard request speaks for, from its token (or, on a server running without
/// authentication, from `?workspace=`, `?user=` and `?name=`).
#[derive(Debug, Clone)]
pub struct Identity {
    pub workspace: String,
    pub user: String,
    pub name: Option<String>,
    pub role: Role,
    pub expires_in: Option<std::time::Duration>,
}

/// The query parameters that name who is asking.
#[derive(Debug, Default, Deserialize)]
pub struct IdentityParams {
    /// The token, for WebSocket URLs (browsers cannot set headers).
    pub token: Option<String>,
    /// The workspace; a token's own workspace when it has one.
    pub workspace: Option<String>,
    /// Without authentication only: who to act as.
    pub user: Option<String>,
    /// Without authentication only: the display name.
    pub name: Option<String>,
}

/// The workspace a server without authentication uses when none is named.
const OPEN_WORKSPACE: &str = "default";

/// The longest user id accepted.
const MAX_USER_BYTES: usize = 256;

/// Checks the token of a dashboard request and says who it speaks for. `realtime` requests
/// need a plan of `--realtime-plans`.
///
/// # Errors
/// The token's refusal, a workspace other than the token's, or a malformed name.
pub(crate) fn identity(
    app: &AppState,
    token: Option<&str>,
    params: &IdentityParams,
    route: &'static str,
    realtime: bool,
) -> Result<Identity, ApiError> {
    let principal = app
        .auth
        .authenticate(token)
        .map_err(|e| e.refuse(route, None))?;
    if realtime {
        app.auth
            .check_plan(&principal)
            .map_err(|e| e.refuse(route, None))?;
    }
    let workspace = match (&principal.workspace, &params.workspace) {
        (Some(own), None) => own.clone(),
        (Some(own), Some(asked)) if own == asked => own.clone(),
        (Some(_), Some(_)) => return Err(AuthError::WrongWorkspace.refuse(route, None)),
        (None, Some(asked)) if valid_workspace(asked) => asked.clone(),
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "bad_workspace",
                "a workspace name is one segment of a document name (no `/`)",
            ))
        }
        (None, None) => OPEN_WORKSPACE.to_owned(),
    };
    let open = app.auth.is_open();
    let expires_in = principal.expires_in();
    let user = match (&params.user, open) {
        (Some(user), true) => user.clone(),
        _ => principal.user,
    };
    if user.is_empty() || user.len() > MAX_USER_BYTES {
        return Err(ApiError::bad_request(
            "bad_user",
            format!("a user id is 1 to {MAX_USER_BYTES} bytes"),
        ));
    }
    let name = match (principal.name, open) {
        (Some(name), _) => Some(name),
        (None, true) => params.name.clone(),
        (None, false) => None,
    };
    Ok(Identity {
        workspace,
        user,
        name,
        role: principal.role,
        expires_in,
    })
}

/// [`identity`] for an HTTP request: the token from `Authorization: Bearer`.
fn http_identity(
    app: &AppState,
    headers: &HeaderMap,
    params: Result<Query<IdentityParams>, QueryRejection>,
    route: &'static str,
    realtime: bool,
) -> Result<Identity, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let token = bearer(headers)?.or(params.token.as_deref());
    identity(app, token, &params, route, realtime)
}

fn publish_error(workspace: &str, err: PublishError) -> ApiError {
    match err {
        PublishError::Store(e) => ApiError::storage(&e),
        PublishError::NotDurable(e) => {
            tracing::error!(%workspace, error = %e, "event logged but not flushed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the event could not be made durable in time; it may still be delivered",
            )
        }
    }
}

/// `POST /api/v1/events`: a backend publishes an event to its workspace. The event is checked
/// against its type (422 with what is wrong), given the workspace's next id and a timestamp,
/// stored durably, answered `201 {"id": N}`, and sent to its subscribers. Past the publishing
/// rate of the workspace or of the publisher: 429 with `Retry-After`.
pub async fn publish_event(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<IdentityParams>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    const ROUTE: &str = "http_events_publish";
    let who = http_identity(&app, &headers, params, ROUTE, false)?;
    // Open mode stands for every role; otherwise only backends publish.
    if !app.auth.is_open() && who.role != Role::Service {
        return Err(AuthError::RoleRequired(Role::Service).refuse(ROUTE, None));
    }
    if let Err(wait) = app.hub.admit(&who.workspace, &who.user) {
        let secs = wait.as_secs_f64().ceil().max(1.0);
        tracing::debug!(workspace = %who.workspace, user = %who.user, "publishing rate exceeded");
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many events; retry in {secs} s"),
        )
        .with_detail("retry_after_ms", serde_json::json!(wait.as_millis()))
        .into_response();
        if let Ok(value) = header::HeaderValue::from_str(&format!("{secs}")) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(response);
    }
    let bytes = read_body(body, app.config.max_event_bytes).await?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not JSON: {e}")))?;
    let event = crate::events::validate(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            e.to_string(),
        )
    })?;
    let kind = event.kind;
    let status = query_status(&who.workspace, &event);
    let id = app
        .hub
        .publish(&who.workspace, event)
        .await
        .map_err(|e| publish_error(&who.workspace, e))?;
    tracing::debug!(workspace = %who.workspace, id, kind, "event published");
    if let Some((doc, mut entries)) = status {
        // Every editor of the query sees its state without a refresh. The event is already
        // durable; a failure here is logged, not the publisher's problem.
        entries.push(("event_id".into(), Any::from(id as f64)));
        if let Err(err) = app.rooms.edit_map(&doc, QUERY_STATUS_MAP, entries).await {
            tracing::warn!(%doc, error = %err, "could not write the query's status");
        }
    }
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

/// The root map of a query document that the query lifecycle events keep up to date.
pub const QUERY_STATUS_MAP: &str = "status";

/// For `query_started`, `query_completed` and `query_failed`: the query's document
/// (`{workspace}/queries/{query_id}`) and what its `status` map becomes: `status`
/// (`running`, `completed`, `failed`), `result_count`, `execution_time`, `error`,
/// `started_by`, `started_at`, `finished_at`. A new run clears the last one's results.
fn query_status(
    workspace: &str,
    event: &crate::events::Event,
) -> Option<(DocName, Vec<(String, Any)>)> {
    let state = match event.kind {
        "query_started" => "running",
        "query_completed" => "completed",
        "query_failed" => "failed",
        _ => return None,
    };
    let query = event
        .fields
        .get("query_id")
        .and_then(crate::events::id_text)?;
    let doc = DocName::parse(&format!("{workspace}/queries/{query}")).ok()?;
    let now = crate::dashboard::presence::rfc3339(time::OffsetDateTime::now_utc())
        .map_or(Any::Null, Any::from);
    let field = |name: &str| event.fields.get(name).map_or(Any::Null, json_to_any);
    let mut entries = vec![("status".to_string(), Any::from(state))];
    if state == "running" {
        entries.extend([
            ("started_by".to_string(), field("started_by")),
            ("started_at".to_string(), now),
            ("result_count".to_string(), Any::Null),
            ("execution_time".to_string(), Any::Null),
            ("error".to_string(), Any::Null),
            ("finished_at".to_string(), Any::Null),
        ]);
    } else {
        entries.extend([
            ("result_count".to_string(), field("result_count")),
            ("execution_time".to_string(), field("execution_time")),
            ("error".to_string(), field("error")),
            ("finished_at".to_string(), now),
        ]);
    }
    Some((doc, entries))
}

/// A JSON scalar as a Yjs value; numbers become JavaScript numbers.
fn json_to_any(value: &serde_json::Value) -> Any {
    match value {
        serde_json::Value::Bool(b) => Any::Bool(*b),
        serde_json::Value::Number(n) => n.as_f64().map_or(Any::Null, Any::from),
        serde_json::Value::String(s) => Any::from(s.as_str()),
        _ => Any::Null,
    }
}

#[derive(Debug, Deserialize)]
pub struct PollParams {
    /// Comma-separated channels; all of them when absent.
    channels: Option<String>,
    since: Option<u64>,
    /// Seconds to wait for an event.
    timeout: Option<f64>,
}

/// `GET /api/v1/events?channels=…&since=…&timeout=30`: long-poll. Answers at once with the
/// events after `since` that the caller sees through `channels`, or waits up to `timeout`
/// seconds for the first; `{"events":[...],"last_id":N}` (pass `last_id` as the next
/// `since`), with `"resync_required":true` and `oldest` when `since` is older than what is kept.
pub async fn poll_events(
    State(app): State<AppState>,
    Remote(remote): Remote,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
    params: Result<Query<PollParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_events_poll", true).inspect_err(|e| {
        crate::metrics::get().failed(crate::metrics::Failure::of(e));
    })?;
    let Query(params) = params.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let channels = poll_channels(params.channels.as_deref())?;
    let max = app.config.long_poll_max_secs as f64;
    let timeout = params.timeout.unwrap_or(30.0);
    if !(0.0..=max).contains(&timeout) {
        return Err(ApiError::bad_request(
            "bad_timeout",
            format!("timeout is 0 to {max} seconds"),
        ));
    }
    // A long-poll is a connection while it waits.
    let registration = app.connections.register(NewConn {
        id: crate::ws::next_conn_id(),
        kind: Kind::LongPoll,
        user: who.user.clone(),
        workspace: who.workspace.clone(),
        target: "long_poll".into(),
        remote,
        closer: None,
    });
    let page = app
        .hub
        .poll(
            &who.workspace,
            &who.user,
            channels,
            params.since,
            std::time::Duration::from_secs_f64(timeout),
        )
        .await
        .map_err(|e| ApiError::storage(&e))?;
    let mut body = String::from(r#"{"events":["#);
    for (i, event) in page.events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(event.frame.as_str());
    }
    body.push_str(&format!(r#"],"last_id":{}"#, page.last_id));
    if let Some(oldest) = page.resync_from {
        body.push_str(&format!(r#","resync_required":true,"oldest":{oldest}"#));
    }
    body.push('}');
    registration.info.sent(body.len());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The channels of a long-poll: a comma-separated list, all of them when absent.
fn poll_channels(list: Option<&str>) -> Result<ChannelSet, ApiError> {
    let Some(list) = list else {
        return Ok(ChannelSet::all());
    };
    let mut channels = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        channels.push(Channel::parse(name).ok_or_else(|| {
            ApiError::bad_request("unknown_channel", format!("unknown channel {name:?}"))
        })?);
    }
    Ok(ChannelSet::of(&channels))
}

#[derive(Debug, Deserialize)]
pub struct WhoParams {
    #[serde(default)]
    include_offline: bool,
}

/// `GET /api/v1/presence`: who is online (and idle); with `?include_offline=true` everyone
/// known, the offline ones with `last_seen`.
pub async fn get_presence(
    State(app): State<AppState>,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
    params: Result<Query<WhoParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_presence", true)?;
    let Query(params) = params.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let users = app
        .hub
        .who(&who.workspace, params.include_offline)
        .await
        .map_err(|e| ApiError::storage(&e))?;
    Ok(Json(serde_json::json!({ "users": users })))
}

/// `GET /api/v1/notifications?limit=N`: the latest events of every channel but presence and
/// activity that the caller sees and did not mute (50 by default), oldest first.
pub async fn get_notifications(
    State(app): State<AppState>,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
    params: Result<Query<ActivityParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_notifications", true)?;
    let limit = history_limit(params)?;
    let history = app
        .hub
        .notifications(&who.workspace, &who.user, limit)
        .await
        .map_err(|e| ApiError::storage(&e))?;
    Ok(history_page(&history))
}

/// The `?limit=` of a history request: 1 to [`MAX_ACTIVITY`], 50 by default.
fn history_limit(params: Result<Query<ActivityParams>, QueryRejection>) -> Result<usize, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=MAX_ACTIVITY).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_limit",
            format!("limit is 1 to {MAX_ACTIVITY}"),
        ));
    }
    Ok(limit)
}

/// `{"events":[...],"last_id":N}`: the stored frames as they are, and the id to subscribe
/// `since` for what came after them.
fn history_page(history: &History) -> Response {
    let list: Vec<&str> = history.events.iter().map(|f| f.as_str()).collect();
    let body = format!(
        r#"{{"events":[{}],"last_id":{}}}"#,
        list.join(","),
        history.last_id
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /api/v1/editing`: who is in each document of the workspace now, one object per
/// document as in `editing` events (`document`, `query_id`, `users`).
pub async fn get_editing(
    State(app): State<AppState>,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_editing", true)?;
    let documents = app
        .hub
        .editing_now(&who.workspace)
        .await
        .map_err(|e| ApiError::storage(&e))?;
    Ok(Json(serde_json::json!({ "documents": documents })))
}

/// `POST /api/v1/presence`: a polling client's presence (the fields of the `presence` action;
/// `{}` just keeps it alive). It lasts `--presence-poll-ttl-ms` unless renewed.
pub async fn post_presence(
    State(app): State<AppState>,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_presence", true)?;
    let fields = json_object(read_body(body, app.config.max_dashboard_frame_bytes).await?)?;
    // `{}` keeps the poller present without counting as activity: it still goes idle.
    let active = !fields.is_empty();
    let mut update = if fields.is_empty() {
        PresenceUpdate::default()
    } else {
        protocol::presence(&fields)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.message))?
    };
    // As on a dashboard connection, the token's name is the user's unless they give another.
    if update.name.is_none() {
        update.name = who.name.clone();
    }
    let ws = app
        .hub
        .workspace(&who.workspace)
        .await
        .map_err(|e| ApiError::storage(&e))?;
    app.hub
        .presence(&ws, &who.user, Source::Poller, &update, active);
    Ok(Json(serde_json::json!({
        "ok": true,
        "expires_in_ms": app.config.presence_poll_ttl_ms,
    })))
}

#[derive(Debug, Deserialize)]
pub struct ActivityParams {
    limit: Option<usize>,
}

/// The most activity events one request returns.
const MAX_ACTIVITY: usize = 500;

/// `GET /api/v1/activity?limit=N`: the latest activity events (50 by default), oldest first.
pub async fn get_activity(
    State(app): State<AppState>,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
    params: Result<Query<ActivityParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_activity", true)?;
    let limit = history_limit(params)?;
    let history = app
        .hub
        .activity(&who.workspace, &who.user, limit)
        .await
        .map_err(|e| ApiError::storage(&e))?;
    Ok(history_page(&history))
}

/// `GET /api/v1/preferences`: which event types are pushed to the caller in real time.
pub async fn get_preferences(
    State(app): State<AppState>,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_preferences", true)?;
    app.hub
        .preferences(&who.workspace, &who.user)
        .await
        .map(Json)
        .map_err(|e| ApiError::storage(&e))
}

/// `PUT /api/v1/preferences` with `{"realtime":{"agent_executed":false,...}}`: changes the
/// types named and answers with all of them once stored.
pub async fn put_preferences(
    State(app): State<AppState>,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_preferences", true)?;
    let fields = json_object(read_body(body, app.config.max_dashboard_frame_bytes).await?)?;
    let Some(serde_json::Value::Object(realtime)) = fields.get("realtime") else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_preferences",
            r#"the body is {"realtime":{"<event type>":true|false,...}}"#,
        ));
    };
    match app
        .hub
        .set_preferences(&who.workspace, &who.user, realtime)
        .await
    {
        Ok(value) => Ok(Json(value)),
        Err(Ok(message)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_preferences",
            message,
        )),
        Err(Err(err)) => Err(publish_error(&who.workspace, err)),
    }
}

/// `GET /api/v1/badges`: the caller's unread chat messages per session.
pub async fn get_badges(
    State(app): State<AppState>,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_badges", true)?;
    let ws = app
        .hub
        .workspace(&who.workspace)
        .await
        .map_err(|e| ApiError::storage(&e))?;
    Ok(Json(app.hub.badges(&ws, &who.user)))
}

/// `POST /api/v1/badges/read` with `{"session_id":999}`: the `mark_read` action over HTTP.
pub async fn post_badges_read(
    State(app): State<AppState>,
    headers: HeaderMap,
    ids: Result<Query<IdentityParams>, QueryRejection>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = http_identity(&app, &headers, ids, "http_badges", true)?;
    let fields = json_object(read_body(body, app.config.max_dashboard_frame_bytes).await?)?;
    let session = fields
        .get("session_id")
        .and_then(crate::events::id_text)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_field",
                "`session_id` is required: a number or a non-empty string",
            )
        })?;
    let ws = app
        .hub
        .workspace(&who.workspace)
        .await
        .map_err(|e| ApiError::storage(&e))?;
    app.hub.mark_read(&ws, &who.user, &session);
    Ok(Json(app.hub.badges(&ws, &who.user)))
}

/// A body that must be a JSON object (an empty body is an empty object).
fn json_object(
    bytes: bytes::Bytes,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::bad_request(
            "bad_json",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "bad_json",
            format!("the body is not JSON: {e}"),
        )),
    }
}

/// Reads a request body of at most `limit` bytes: 413 `too_large` past it. Called only once the
/// token checked out, so an unauthenticated client cannot make the server buffer an upload.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
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

/// `POST /api/v1/dev/token` with `{"name":"Ada"}`: on a server without authentication only, a
/// development token that names the user, so two browser windows are two users. It grants
/// nothing more than open mode already does. 404 when the server checks tokens.
pub async fn dev_token(State(app): State<AppState>, body: Body) -> Result<Response, ApiError> {
    if !app.auth.is_open() {
        return Err(ApiError::not_found(
            "development tokens exist only on a server without authentication",
        ));
    }
    let fields = json_object(read_body(body, app.config.max_dashboard_frame_bytes).await?)?;
    let name = fields
        .get("name")
        .and_then(serde_json::Value::as_str)
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
    Ok(Json(serde_json::json!({
        "token": token,
        "user": user,
        "name": name,
        "workspace": OPEN_WORKSPACE,
    }))
    .into_response())
}
