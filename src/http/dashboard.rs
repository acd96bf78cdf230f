//! The dashboard over HTTP: presence (`GET`/`POST /api/v1/presence`), who is editing
//! (`/api/v1/editing`), the activity feed and notifications as history pages, notification
//! preferences and chat badges. Each answers for the caller's workspace and user.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{Caller, HistoryLimit, JsonObject, Params};
use super::refusals::publish_error;
use super::state::AppState;
use crate::dashboard::history::History;
use crate::dashboard::preferences::Preferences;
use crate::dashboard::presence::Source;
use crate::dashboard::protocol::ServerFrame;
use crate::dashboard::protocol::{self, PresenceUpdate};
use crate::dashboard::workspace::Workspace;
use crate::dashboard::PreferencesError;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct WhoParams {
    #[serde(default)]
    include_offline: bool,
}

/// `GET /api/v1/presence`: who is online (and idle); with `?include_offline=true` everyone
/// known, the offline ones with `last_seen`.
pub async fn get_presence(
    State(app): State<AppState>,
    Caller(who): Caller,
    Params(params): Params<WhoParams>,
) -> Result<Json<Value>, ApiError> {
    let users: Vec<Value> = app
        .hub
        .who(&who.workspace, params.include_offline)
        .await?
        .into_iter()
        .map(|(user, snapshot)| Value::Object(snapshot.fields(&user)))
        .collect();
    Ok(Json(json!({ "users": users })))
}

/// `POST /api/v1/presence`: a polling client's presence (the fields of the `presence` action;
/// `{}` just keeps it alive). It lasts `--presence-poll-ttl-ms` unless renewed.
pub async fn post_presence(
    State(app): State<AppState>,
    Caller(who): Caller,
    JsonObject(fields): JsonObject,
) -> Result<Json<Value>, ApiError> {
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
    let ws = app.hub.workspace(&who.workspace).await?;
    app.hub
        .presence(&ws, &who.user, Source::Poller, &update, active);
    Ok(Json(json!({
        "ok": true,
        "expires_in_ms": app.config.presence_poll_ttl_ms,
    })))
}

/// `GET /api/v1/editing`: who is in each document of the workspace now, one object per
/// document as in `editing` events (`document`, `query_id`, `users`).
pub async fn get_editing(
    State(app): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Value>, ApiError> {
    // Who is in a document is for those who may read it.
    let documents: Vec<_> = app
        .hub
        .editing_now(&who.workspace)
        .await?
        .into_iter()
        .filter(|editors| {
            crate::docname::DocName::parse(&editors.document).is_ok_and(|doc| who.may_read(&doc))
        })
        .collect();
    Ok(Json(json!({ "documents": documents })))
}

/// `GET /api/v1/activity?limit=N`: the latest activity events (50 by default), oldest first.
pub async fn get_activity(
    State(app): State<AppState>,
    Caller(who): Caller,
    HistoryLimit(limit): HistoryLimit,
) -> Result<History, ApiError> {
    Ok(app
        .hub
        .activity(&who.workspace, &who.user, who.docs.as_deref(), limit)
        .await?)
}

/// `GET /api/v1/notifications?limit=N`: the latest events of every channel but presence and
/// activity that the caller sees and did not mute (50 by default), oldest first.
pub async fn get_notifications(
    State(app): State<AppState>,
    Caller(who): Caller,
    HistoryLimit(limit): HistoryLimit,
) -> Result<History, ApiError> {
    Ok(app
        .hub
        .notifications(&who.workspace, &who.user, who.docs.as_deref(), limit)
        .await?)
}

/// `{"events":[...],"last_id":N}`: the stored events as they are, and the id to subscribe
/// `since` for what came after them.
impl IntoResponse for History {
    fn into_response(self) -> Response {
        let list: Vec<&str> = self.events.iter().map(|f| f.as_str()).collect();
        let body = format!(
            r#"{{"events":[{}],"last_id":{}}}"#,
            list.join(","),
            self.last_id
        );
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// `GET /api/v1/preferences`: which event types are pushed to the caller in real time.
pub async fn get_preferences(
    State(app): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Preferences>, ApiError> {
    Ok(Json(app.hub.preferences(&who.workspace, &who.user).await?))
}

/// `PUT /api/v1/preferences` with `{"realtime":{"agent_executed":false,...}}`: changes the
/// types named and answers with all of them once stored.
pub async fn put_preferences(
    State(app): State<AppState>,
    Caller(who): Caller,
    JsonObject(fields): JsonObject,
) -> Result<Json<Preferences>, ApiError> {
    let Some(Value::Object(realtime)) = fields.get("realtime") else {
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
        Ok(preferences) => Ok(Json(preferences)),
        Err(PreferencesError::Invalid(message)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_preferences",
            message,
        )),
        Err(PreferencesError::Store(err)) => Err(publish_error(&who.workspace, err)),
    }
}

/// `GET /api/v1/badges`: the caller's unread chat messages per session, as they are pushed
/// (`{"type":"chat_badges","unread":{...},"total":N}`).
pub async fn get_badges(
    State(app): State<AppState>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let ws = app.hub.workspace(&who.workspace).await?;
    Ok(badges(&app, &ws, &who.user))
}

/// The chat badges of `user`, as `GET /api/v1/badges` answers them.
fn badges(app: &AppState, ws: &Workspace, user: &str) -> Response {
    let badges = app.hub.badges(ws, user);
    let frame = ServerFrame::ChatBadges(&badges).text();
    (
        [(header::CONTENT_TYPE, "application/json")],
        frame.to_string(),
    )
        .into_response()
}

/// `POST /api/v1/badges/read` with `{"session_id":999}`: the `mark_read` action over HTTP.
pub async fn post_badges_read(
    State(app): State<AppState>,
    Caller(who): Caller,
    JsonObject(fields): JsonObject,
) -> Result<Response, ApiError> {
    let session = fields
        .get("session_id")
        .and_then(crate::dashboard::catalogue::id_text)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_field",
                "`session_id` is required: a number or a non-empty string",
            )
        })?;
    let ws = app.hub.workspace(&who.workspace).await?;
    app.hub
        .mark_read_durable(&ws, &who.user, &session)
        .await
        .map_err(|err| publish_error(&who.workspace, err))?;
    Ok(badges(&app, &ws, &who.user))
}

/// `POST /api/v1/approvals/{approval_id}/decision` with `{"decision":"approved"|"denied",
/// "comment"?}`: the caller decides on an approval request. The decision is an
/// `approval_decided` event on the `approvals` channel (with who decided), stored like any
/// other and sent to webhooks as `approval.decided`; answered `201 {"id": N}`, or 429 past the
/// publishing rates (`--publish-rate-workspace`, `--publish-rate-user`).
pub async fn post_approval_decision(
    State(app): State<AppState>,
    Caller(who): Caller,
    axum::extract::Path(approval_id): axum::extract::Path<String>,
    JsonObject(fields): JsonObject,
) -> Result<Response, ApiError> {
    use crate::dashboard::catalogue::{Event, DECISIONS};
    // A decision is an event: within the publishing rates of the workspace and the user.
    if let Err(wait) = app.hub.admit(&who.workspace, &who.user) {
        return Ok(super::extract::too_many("too many decisions", wait));
    }
    let invalid = |message: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_decision",
            message.to_owned(),
        )
    };
    if approval_id.is_empty() || approval_id.chars().count() > 128 {
        return Err(invalid("the approval id is 1 to 128 characters"));
    }
    let decision = fields
        .get("decision")
        .and_then(Value::as_str)
        .filter(|d| DECISIONS.contains(d))
        .ok_or_else(|| invalid(r#"`decision` is "approved" or "denied""#))?;
    let comment = match fields.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c.chars().count() <= 1000 => Some(c.clone()),
        Some(_) => return Err(invalid("`comment` is text of at most 1,000 characters")),
    };
    // The id as the request named it: a number when it is one.
    let id = approval_id
        .parse::<u64>()
        .map_or_else(|_| Value::String(approval_id.clone()), Value::from);
    let mut event = serde_json::Map::new();
    event.insert("approval_id".into(), id);
    event.insert("decision".into(), decision.into());
    event.insert("user_id".into(), who.user.clone().into());
    if let Some(name) = &who.name {
        event.insert("name".into(), name.clone().into());
    }
    if let Some(comment) = comment {
        event.insert("comment".into(), comment.into());
    }
    let id = app
        .hub
        .publish(&who.workspace, Event::server("approval_decided", event))
        .await
        .map_err(|e| publish_error(&who.workspace, e))?;
    tracing::info!(
        workspace = %who.workspace,
        user = %crate::error::log_safe(&who.user),
        approval = %crate::error::log_safe(&approval_id),
        decision,
        event_id = id,
        "approval decided"
    );
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}
