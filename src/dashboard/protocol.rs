//! The dashboard's JSON protocol on `/ws`: what a client may send, parsed into an [`Action`]
//! or refused with the error frame it gets back (the connection stays open).
//!
//! Client → server, one JSON object per text frame:
//! `{"action":"subscribe","channels":["presence","queries"],"since":1234}`,
//! `{"action":"unsubscribe","channels":["queries"]}`, `{"action":"ping"}`,
//! `{"action":"presence","status":"online","workspace":"queries","current_page":"/queries/456"}`,
//! `{"action":"mark_read","session_id":999}`, `{"action":"lock","resource":"acme/queries/456#title"}`,
//! `{"action":"unlock","resource":"acme/queries/456#title"}`.

use serde_json::{Map, Value};

use super::catalogue::Channel;

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

/// What a client says about its user's presence; absent fields stay as they were.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PresenceUpdate {
    pub status: Option<PresenceStatus>,
    pub workspace: Option<String>,
    pub current_page: Option<String>,
    pub name: Option<String>,
    pub avatar: Option<String>,
    pub color: Option<String>,
}

/// A user's presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    pub fn frame(&self) -> String {
        serde_json::json!({ "type": "error", "code": self.code, "message": self.message })
            .to_string()
    }
}

const ACTIONS: &str = "subscribe, unsubscribe, ping, presence, mark_read, lock, unlock";

/// Longest resource name a lock may take.
const MAX_RESOURCE_BYTES: usize = 512;

/// Longest string a presence field may carry.
const MAX_PRESENCE_FIELD_BYTES: usize = 1024;

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
}
