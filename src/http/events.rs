//! Events over HTTP: `POST /api/v1/events` (a backend publishes) and `GET /api/v1/events` (the
//! long-poll of clients without a WebSocket).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::extract::{Caller, EventBody, Limited, Params, Publisher};
use super::refusals::publish_error;
use super::state::AppState;
use crate::dashboard::catalogue::{self, Channel, ChannelSet};
use crate::error::ApiError;
use crate::metrics::{self, Kind};
use crate::net::registry::NewConn;
use crate::net::{ConnId, Remote};

/// `POST /api/v1/events`: a backend publishes an event to its workspace. The event is checked
/// against its type (422 with what is wrong), given the workspace's next id and a timestamp,
/// stored durably, answered `201 {"id": N}`, and sent to its subscribers. Past the publishing
/// rate of the workspace or of the publisher: 429 with `Retry-After` (see [`Publisher`]).
pub async fn publish(
    State(app): State<AppState>,
    Publisher(who): Publisher,
    body: Limited<EventBody>,
) -> Result<Response, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(&body.bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not JSON: {e}")))?;
    let event = catalogue::validate(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            e.to_string(),
        )
    })?;
    let kind = event.kind;
    // A query event writes the query's document (its status map): only with write access
    // to it, as `POST …/update` needs.
    if let Some((doc, _)) = event.query_status(&who.workspace) {
        if !who.may_write(&doc) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("a {kind} event writes {doc}, which this token may not write"),
            ));
        }
    }
    let id = app
        .hub
        .publish(&who.workspace, event)
        .await
        .map_err(|e| publish_error(&who.workspace, e))?;
    tracing::debug!(workspace = %who.workspace, id, kind, "event published");
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
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
pub async fn poll(
    State(app): State<AppState>,
    Remote(remote): Remote,
    caller: Result<Caller, ApiError>,
    Params(params): Params<PollParams>,
) -> Result<Response, ApiError> {
    // A long-poll is a connection: its refusals count as failed connections.
    let Caller(who) = caller.inspect_err(|e| metrics::get().failed(e.failure()))?;
    let channels = poll_channels(params.channels.as_deref())?;
    let max = app.config.long_poll_max_secs as f64;
    let timeout = params.timeout.unwrap_or(30.0);
    if !(0.0..=max).contains(&timeout) {
        return Err(ApiError::bad_request(
            "bad_timeout",
            format!("timeout is 0 to {max} seconds"),
        ));
    }
    // A long-poll is a connection while it waits, under the same caps.
    let user = (!app.auth.is_open()).then_some(who.user.as_str());
    let admission = match app.connections.admit(remote, &who.workspace, user) {
        Ok(admission) => admission,
        Err(crowded) => return Ok(super::extract::crowded(crowded)),
    };
    let registration = app.connections.register(NewConn {
        id: ConnId::next(),
        kind: Kind::LongPoll,
        user: who.user.clone(),
        workspace: who.workspace.clone(),
        target: "long_poll".into(),
        remote,
        closer: None,
        admission: Some(admission),
    });
    // Never past the token's expiry: a socket closes with 4401 then, a long-poll answers.
    let wait = std::time::Duration::from_secs_f64(timeout);
    let wait = who.expires_in.map_or(wait, |left| wait.min(left));
    let page = app
        .hub
        .poll(
            &who.workspace,
            &who.user,
            who.docs.as_deref(),
            channels,
            params.since,
            wait,
        )
        .await?;
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
