//! The dashboard's JSON protocol on `/ws`: what a client may send, parsed into an [`Action`]
//! or refused with the error frame it gets back (the connection stays open), and everything the
//! server sends besides the events themselves, as one typed [`ServerFrame`] serialized here.
//! Events go out as they were stored (each carries its `type` and `id`), one alone or several
//! as a [`batch`] frame.
//!
//! Client → server, one JSON object per text frame:
//! `{"action":"subscribe","channels":["presence","queries"],"since":1234}`,
//! `{"action":"unsubscribe","channels":["queries"]}`, `{"action":"ping"}`,
//! `{"action":"presence","status":"online","workspace":"queries","current_page":"/queries/456"}`,
//! `{"action":"mark_read","session_id":999}`, `{"action":"lock","resource":"acme/queries/456#title"}`,
//! `{"action":"unlock","resource":"acme/queries/456#title"}`.

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::catalogue::Channel;
use super::inbox::ChatBadges;
use super::locks::{Holder, LockInfo};

/// A parsed client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start receiving `channels`; with `since`, first replay what came after that event id.
    Subscribe {
        channels: Vec<Channel>,
        since: Option<u64>,
    },
    Unsubscribe {
        channels: Vec<Channel>,
    },
    /// Answered with `{"type":"pong"}`.
    Ping,
    /// The user's presence as this connection sees it.
    Presence(PresenceUpdate),
    /// The user read a chat session: its unread count goes to zero.
    MarkRead {
        session_id: String,
    },
    Lock {
        resource: String,
    },
    Unlock {
        resource: String,
    },
}

/// What a client says about its user's presence; absent fields stay as they were. (Also what
/// one node of a cluster tells the others of a user's presence there.)
#[derive(Debug, Clone, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct PresenceUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PresenceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_page: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

/// A user's presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    Online,
    Idle,
    Offline,
}

impl PresenceStatus {
    pub fn parse(s: &str) -> Option<PresenceStatus> {
        match s {
            "online" => Some(PresenceStatus::Online),
            "idle" => Some(PresenceStatus::Idle),
            "offline" => Some(PresenceStatus::Offline),
            _ => None,
        }
    }
}

/// A refused client frame: sent back as `{"type":"error","code":...,"message":...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    /// The error frame for this refusal.
    pub fn frame(&self) -> Utf8Bytes {
        ServerFrame::Error {
            code: self.code,
            message: &self.message,
        }
        .text()
    }
}

/// Everything the server sends on `/ws` but events: `{"type": ..., ...}`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The answer to `ping`.
    Pong,
    /// A refused frame; the connection stays open.
    Error { code: &'a str, message: &'a str },
    /// `channels` are live (after any replay); the connection now has `subscriptions`. A page
    /// tells the server it is in use well within `idle_after_ms`.
    Subscribed {
        channels: Vec<&'static str>,
        subscriptions: Vec<&'static str>,
        idle_after_ms: u64,
    },
    /// `channels` were dropped; the connection now has `subscriptions`.
    Unsubscribed {
        channels: Vec<&'static str>,
        subscriptions: Vec<&'static str>,
        idle_after_ms: u64,
    },
    /// The user's unread chat messages.
    ChatBadges(&'a ChatBadges),
    /// The lock is the connection's until `expires_at` (renew within `expires_in_ms`).
    LockAcquired {
        #[serde(flatten)]
        lock: &'a LockInfo,
        renewed: bool,
        expires_in_ms: u64,
    },
    /// Someone else holds the lock (`holder`, until `expires_at`).
    LockDenied {
        resource: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        holder: Option<&'a Holder>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<&'a str>,
    },
    /// The connection's lock went: `unlock`, or `expired`.
    LockReleased {
        resource: &'a str,
        reason: &'static str,
    },
    /// The events after `since` are no longer all kept (or were never given): reload what is
    /// shown, and go on from `latest`.
    ResyncRequired {
        since: u64,
        oldest: u64,
        latest: u64,
    },
}

impl ServerFrame<'_> {
    /// The frame's text.
    pub fn text(&self) -> Utf8Bytes {
        // A frame of strings and numbers always serializes.
        serde_json::to_string(self)
            .expect("a server frame serializes")
            .into()
    }
}

/// Several events (each as stored, with its `id`) in one frame:
/// `{"type":"batch","events":[...]}`.
pub fn batch<'a>(events: impl IntoIterator<Item = &'a str>) -> Utf8Bytes {
    let mut text = String::from(r#"{"type":"batch","events":["#);
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(event);
    }
    text.push_str("]}");
    text.into()
}

const ACTIONS: &str = "subscribe, unsubscribe, ping, presence, mark_read, lock, unlock";

/// Longest resource name a lock may take.
const MAX_RESOURCE_BYTES: usize = 512;

/// Longest string a presence field may carry, sent on `/ws` or taken from an awareness state.
pub const MAX_PRESENCE_FIELD_BYTES: usize = 1024;

/// Parses one client frame.
///
/// # Errors
/// What is wrong with the frame, with a stable `code` (`invalid_json`, `not_an_object`,
/// `unknown_action`, `missing_field`, `bad_field`, `unknown_channel`).
pub fn parse(frame: &str) -> Result<Action, ProtocolError> {
    let value: Value = serde_json::from_str(frame)
        .map_err(|e| ProtocolError::new("invalid_json", format!("the frame is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ProtocolError::new(
            "not_an_object",
            "a frame is one JSON object with an \"action\"",
        ));
    };
    let action = match fields.get("action") {
        Some(Value::String(action)) => action.as_str(),
        Some(_) => return Err(bad("action", "a string")),
        None => return Err(missing("action")),
    };
    match action {
        "subscribe" => Ok(Action::Subscribe {
            channels: channels(&fields)?,
            since: match fields.get("since") {
                None | Some(Value::Null) => None,
                Some(since) => Some(
                    since
                        .as_u64()
                        .ok_or_else(|| bad("since", "an event id (a non-negative integer)"))?,
                ),
            },
        }),
        "unsubscribe" => Ok(Action::Unsubscribe {
            channels: channels(&fields)?,
        }),
        "ping" => Ok(Action::Ping),
        "presence" => presence(&fields).map(Action::Presence),
        "mark_read" => Ok(Action::MarkRead {
            session_id: id(&fields, "session_id")?,
        }),
        "lock" => Ok(Action::Lock {
            resource: resource(&fields)?,
        }),
        "unlock" => Ok(Action::Unlock {
            resource: resource(&fields)?,
        }),
        other => Err(ProtocolError::new(
            "unknown_action",
            format!("unknown action {other:?}; known actions: {ACTIONS}"),
        )),
    }
}

fn missing(field: &str) -> ProtocolError {
    ProtocolError::new("missing_field", format!("`{field}` is required"))
}

fn bad(field: &str, expected: &str) -> ProtocolError {
    ProtocolError::new("bad_field", format!("`{field}` must be {expected}"))
}

fn channels(fields: &Map<String, Value>) -> Result<Vec<Channel>, ProtocolError> {
    let Some(list) = fields.get("channels") else {
        return Err(missing("channels"));
    };
    let Some(list) = list.as_array().filter(|l| !l.is_empty()) else {
        return Err(bad("channels", "a non-empty list of channel names"));
    };
    let mut channels = Vec::with_capacity(list.len());
    for name in list {
        let name = name
            .as_str()
            .ok_or_else(|| bad("channels", "a non-empty list of channel names"))?;
        let channel = Channel::parse(name).ok_or_else(|| {
            let known: Vec<_> = Channel::ALL.iter().map(|c| c.name()).collect();
            ProtocolError::new(
                "unknown_channel",
                format!(
                    "unknown channel {name:?}; known channels: {}",
                    known.join(", ")
                ),
            )
        })?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    Ok(channels)
}

/// An id field: a number or a non-empty string, as a string.
fn id(fields: &Map<String, Value>, field: &str) -> Result<String, ProtocolError> {
    match fields.get(field) {
        None => Err(missing(field)),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(bad(field, "an id (a number or a non-empty string)")),
    }
}

fn resource(fields: &Map<String, Value>) -> Result<String, ProtocolError> {
    match fields.get("resource") {
        None => Err(missing("resource")),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_RESOURCE_BYTES => Ok(s.clone()),
        Some(_) => Err(bad(
            "resource",
            &format!("a non-empty string of at most {MAX_RESOURCE_BYTES} bytes"),
        )),
    }
}

/// The fields of a presence frame (or of `POST /api/v1/presence`'s body).
///
/// # Errors
/// A field of the wrong type or too long, or none at all.
pub fn presence(fields: &Map<String, Value>) -> Result<PresenceUpdate, ProtocolError> {
    let text = |field: &str| -> Result<Option<String>, ProtocolError> {
        match fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= MAX_PRESENCE_FIELD_BYTES => Ok(Some(s.clone())),
            Some(_) => Err(bad(
                field,
                &format!("a string of at most {MAX_PRESENCE_FIELD_BYTES} bytes"),
            )),
        }
    };
    let status = match text("status")? {
        None => None,
        Some(s) => Some(
            PresenceStatus::parse(&s).ok_or_else(|| bad("status", "online, idle or offline"))?,
        ),
    };
    let update = PresenceUpdate {
        status,
        workspace: text("workspace")?,
        current_page: text("current_page")?,
        name: text("name")?,
        avatar: text("avatar")?,
        color: text("color")?,
    };
    if update == PresenceUpdate::default() {
        return Err(ProtocolError::new(
            "missing_field",
            "a presence frame sets at least one of status, workspace, current_page, name, avatar, color",
        ));
    }
    Ok(update)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_parses() {
        assert_eq!(
            parse(
                r#"{"action":"subscribe","channels":["presence","queries","queries"],"since":1234}"#
            ),
            Ok(Action::Subscribe {
                channels: vec![Channel::Presence, Channel::Queries],
                since: Some(1234)
            })
        );
        assert_eq!(
            parse(r#"{"action":"unsubscribe","channels":["chat_sessions"]}"#),
            Ok(Action::Unsubscribe {
                channels: vec![Channel::ChatSessions]
            })
        );
        assert_eq!(parse(r#"{"action":"ping"}"#), Ok(Action::Ping));
        assert_eq!(
            parse(
                r#"{"action":"presence","status":"online","workspace":"queries","current_page":"/queries/456"}"#
            ),
            Ok(Action::Presence(PresenceUpdate {
                status: Some(PresenceStatus::Online),
                workspace: Some("queries".into()),
                current_page: Some("/queries/456".into()),
                ..PresenceUpdate::default()
            }))
        );
        assert_eq!(
            parse(r#"{"action":"mark_read","session_id":999}"#),
            Ok(Action::MarkRead {
                session_id: "999".into()
            })
        );
        assert_eq!(
            parse(r#"{"action":"lock","resource":"acme/queries/456#title"}"#),
            Ok(Action::Lock {
                resource: "acme/queries/456#title".into()
            })
        );
        assert_eq!(
            parse(r#"{"action":"unlock","resource":"r"}"#),
            Ok(Action::Unlock {
                resource: "r".into()
            })
        );
    }

    #[test]
    fn every_bad_frame_gets_a_code_and_a_message() {
        let code = |frame: &str| parse(frame).unwrap_err().code;
        assert_eq!(code("{nope"), "invalid_json");
        assert_eq!(code("[1,2]"), "not_an_object");
        assert_eq!(code(r#"{"channels":[]}"#), "missing_field");
        assert_eq!(code(r#"{"action":7}"#), "bad_field");
        assert_eq!(code(r#"{"action":"dance"}"#), "unknown_action");
        assert_eq!(code(r#"{"action":"subscribe"}"#), "missing_field");
        assert_eq!(code(r#"{"action":"subscribe","channels":[]}"#), "bad_field");
        assert_eq!(
            code(r#"{"action":"subscribe","channels":["weather"]}"#),
            "unknown_channel"
        );
        assert_eq!(
            code(r#"{"action":"subscribe","channels":["system"],"since":-1}"#),
            "bad_field"
        );
        assert_eq!(code(r#"{"action":"presence"}"#), "missing_field");
        assert_eq!(
            code(r#"{"action":"presence","status":"asleep"}"#),
            "bad_field"
        );
        assert_eq!(code(r#"{"action":"mark_read"}"#), "missing_field");
        assert_eq!(
            code(r#"{"action":"mark_read","session_id":""}"#),
            "bad_field"
        );
        assert_eq!(code(r#"{"action":"lock"}"#), "missing_field");
        let long = format!(r#"{{"action":"lock","resource":"{}"}}"#, "x".repeat(600));
        assert_eq!(code(&long), "bad_field");

        let err = parse(r#"{"action":"subscribe","channels":["weather"]}"#).unwrap_err();
        assert!(err
            .message
            .starts_with("unknown channel \"weather\"; known channels: presence"));
        let frame: Value = serde_json::from_str(&err.frame()).unwrap();
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["code"], "unknown_channel");
        assert_eq!(frame["message"], err.message);
    }

    #[test]
    fn server_frames_carry_their_type_and_fields() {
        let json = |frame: ServerFrame| serde_json::from_str::<Value>(&frame.text()).unwrap();
        assert_eq!(json(ServerFrame::Pong), serde_json::json!({"type": "pong"}));
        assert_eq!(
            json(ServerFrame::Subscribed {
                channels: vec!["queries"],
                subscriptions: vec!["presence", "queries"],
                idle_after_ms: 300_000,
            }),
            serde_json::json!({"type": "subscribed", "channels": ["queries"],
                "subscriptions": ["presence", "queries"], "idle_after_ms": 300_000})
        );
        assert_eq!(
            json(ServerFrame::LockDenied {
                resource: "r",
                holder: None,
                expires_at: None
            }),
            serde_json::json!({"type": "lock_denied", "resource": "r"})
        );
        assert_eq!(
            json(ServerFrame::ResyncRequired {
                since: 9,
                oldest: 3,
                latest: 5
            }),
            serde_json::json!({"type": "resync_required", "since": 9, "oldest": 3, "latest": 5})
        );
        assert_eq!(
            batch([r#"{"id":1}"#, r#"{"id":2}"#]).as_str(),
            r#"{"type":"batch","events":[{"id":1},{"id":2}]}"#
        );
    }
}
