//! The dashboard's event catalogue: every event type a backend may publish, the channel it goes
//! to and the fields it must carry, with the field names of MISSION.md.
//!
//! [`validate`] turns a published JSON object into an [`Event`] or says exactly what is wrong,
//! for the 422 answer. Fields beyond the required ones are kept as they are; `id` and
//! `timestamp` are the server's and are set when the event is accepted.

use serde_json::{Map, Value};
use tandem_crdt::Any;

use crate::docname::DocName;

/// A channel a dashboard client subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Presence,
    Queries,
    Agents,
    Approvals,
    ChatSessions,
    Notifications,
    Activity,
    System,
    Workflows,
}

impl Channel {
    pub const ALL: [Channel; 9] = [
        Channel::Presence,
        Channel::Queries,
        Channel::Agents,
        Channel::Approvals,
        Channel::ChatSessions,
        Channel::Notifications,
        Channel::Activity,
        Channel::System,
        Channel::Workflows,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Channel::Presence => "presence",
            Channel::Queries => "queries",
            Channel::Agents => "agents",
            Channel::Approvals => "approvals",
            Channel::ChatSessions => "chat_sessions",
            Channel::Notifications => "notifications",
            Channel::Activity => "activity",
            Channel::System => "system",
            Channel::Workflows => "workflows",
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What a required field must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An identifier: a number or a non-empty string (backends use both).
    Id,
    /// A non-empty string.
    Text,
    /// An integer, zero or more.
    Count,
    /// A number, zero or more (seconds, say).
    Duration,
    Bool,
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
}

impl Kind {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Kind::Id => {
                value.is_u64() || value.is_i64() || value.as_str().is_some_and(|s| !s.is_empty())
            }
            Kind::Text => value.as_str().is_some_and(|s| !s.is_empty()),
            Kind::Count => value.is_u64(),
            Kind::Duration => value.as_f64().is_some_and(|n| n >= 0.0),
            Kind::Bool => value.is_boolean(),
            Kind::OneOf(allowed) => value.as_str().is_some_and(|s| allowed.contains(&s)),
        }
    }

    fn describe(self) -> String {
        match self {
            Kind::Id => "an id (a number or a non-empty string)".into(),
            Kind::Text => "a non-empty string".into(),
            Kind::Count => "a non-negative integer".into(),
            Kind::Duration => "a non-negative number".into(),
            Kind::Bool => "true or false".into(),
            Kind::OneOf(allowed) => format!("one of {}", allowed.join(", ")),
        }
    }
}

const SEVERITIES: &[&str] = &["info", "warning", "error", "critical"];

/// One publishable event type.
struct EventType {
    name: &'static str,
    channel: Channel,
    required: &'static [(&'static str, Kind)],
}

/// Every type a backend may publish (`presence_update` and the lock, badge and editing events
/// are the server's own).
const TYPES: &[EventType] = &[
    EventType {
        name: "query_started",
        channel: Channel::Queries,
        required: &[("query_id", Kind::Id), ("started_by", Kind::Id)],
    },
    EventType {
        name: "query_completed",
        channel: Channel::Queries,
        required: &[
            ("query_id", Kind::Id),
            ("result_count", Kind::Count),
            ("execution_time", Kind::Duration),
        ],
    },
    EventType {
        name: "query_failed",
        channel: Channel::Queries,
        required: &[("query_id", Kind::Id), ("error", Kind::Text)],
    },
    EventType {
        name: "agent_executed",
        channel: Channel::Agents,
        required: &[
            ("agent_id", Kind::Id),
            ("status", Kind::Text),
            ("insights_found", Kind::Count),
            ("needs_approval", Kind::Bool),
        ],
    },
    EventType {
        name: "approval_request",
        channel: Channel::Approvals,
        required: &[("approval_id", Kind::Id), ("title", Kind::Text)],
    },
    EventType {
        name: "new_chat_message",
        channel: Channel::ChatSessions,
        required: &[
            ("session_id", Kind::Id),
            ("message", Kind::Text),
            ("sender", Kind::Text),
        ],
    },
    EventType {
        name: "new_chat_session",
        channel: Channel::ChatSessions,
        required: &[("session_id", Kind::Id)],
    },
    EventType {
        name: "system_alert",
        channel: Channel::System,
        required: &[
            ("message", Kind::Text),
            ("severity", Kind::OneOf(SEVERITIES)),
        ],
    },
    EventType {
        name: "workflow_triggered",
        channel: Channel::Workflows,
        required: &[("workflow_id", Kind::Id)],
    },
    EventType {
        name: "query_executed",
        channel: Channel::Activity,
        required: &[("user_id", Kind::Id), ("query_id", Kind::Id)],
    },
    EventType {
        name: "template_created",
        channel: Channel::Activity,
        required: &[("user_id", Kind::Id), ("template_id", Kind::Id)],
    },
    EventType {
        name: "agent_triggered",
        channel: Channel::Activity,
        required: &[("user_id", Kind::Id), ("agent_id", Kind::Id)],
    },
    EventType {
        name: "file_uploaded",
        channel: Channel::Activity,
        required: &[("user_id", Kind::Id), ("file_name", Kind::Text)],
    },
];

/// The server's own event types and their channels: presence, "who is editing", locks, and a
/// user's decision on an approval (`POST /api/v1/approvals/{id}/decision`). New types go at the
/// end: a type's position is its bit in stored preferences.
const SERVER_TYPES: &[(&str, Channel)] = &[
    ("presence_update", Channel::Presence),
    ("editing", Channel::Presence),
    ("lock_acquired", Channel::Presence),
    ("lock_released", Channel::Presence),
    ("approval_decided", Channel::Approvals),
];

/// The decisions a user may take on an approval request.
pub const DECISIONS: &[&str] = &["approved", "denied"];

/// Every event type a client may receive, published ones first, with its channel. A type's
/// position is its bit in a user's notification preferences.
pub fn all_types() -> impl Iterator<Item = (&'static str, Channel)> {
    TYPES
        .iter()
        .map(|t| (t.name, t.channel))
        .chain(SERVER_TYPES.iter().copied())
}

/// The position of `name` in [`all_types`].
pub fn type_index(name: &str) -> Option<usize> {
    all_types().position(|(n, _)| n == name)
}

/// The channel of the event type `name`.
pub fn channel_of(name: &str) -> Option<Channel> {
    all_types().find(|(n, _)| *n == name).map(|(_, c)| c)
}

/// Fields the server sets on every accepted event; a publisher may not.
const SERVER_FIELDS: &[&str] = &["id", "timestamp"];

/// A published event that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub channel: Channel,
    /// The users it is addressed to; empty for everyone subscribed to the channel.
    pub user_ids: Vec<String>,
    /// The event object as published.
    pub fields: Map<String, Value>,
}

impl Event {
    /// One of the server's own events (`presence_update`, `editing`, `lock_acquired`,
    /// `lock_released`, `approval_decided`), for everyone subscribed to its channel.
    ///
    /// # Panics
    /// `kind` is not a server type: a bug in the caller.
    pub fn server(kind: &'static str, mut fields: Map<String, Value>) -> Event {
        let channel = SERVER_TYPES
            .iter()
            .find(|(name, _)| *name == kind)
            .map(|(_, channel)| *channel)
            .expect("a server event type");
        fields.insert("type".into(), Value::String(kind.into()));
        Event {
            kind,
            channel,
            user_ids: Vec::new(),
            fields,
        }
    }
}

/// Why a published event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("an event is a JSON object")]
    NotAnObject,
    #[error("an event needs a string `type`")]
    MissingType,
    #[error("unknown event type {0:?}; known types: {1}")]
    UnknownType(String, String),
    #[error("{kind} needs `{field}`: {expected}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
        expected: String,
    },
    #[error("`{0}` is set by the server")]
    ServerField(&'static str),
    #[error("`user_ids` must be a non-empty list of ids")]
    BadUserIds,
}

/// An id as text: a JSON integer or a non-empty string (backends use both).
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// The names of every publishable type.
pub fn type_names() -> Vec<&'static str> {
    TYPES.iter().map(|t| t.name).collect()
}

/// Checks a published event against its type.
///
/// # Errors
/// What is wrong with it, in words a backend developer can act on.
pub fn validate(value: Value) -> Result<Event, EventError> {
    let Value::Object(fields) = value else {
        return Err(EventError::NotAnObject);
    };
    let kind = fields
        .get("type")
        .and_then(Value::as_str)
        .ok_or(EventError::MissingType)?;
    let spec = TYPES
        .iter()
        .find(|t| t.name == kind)
        .ok_or_else(|| EventError::UnknownType(kind.to_owned(), type_names().join(", ")))?;
    for field in SERVER_FIELDS {
        if fields.contains_key(*field) {
            return Err(EventError::ServerField(field));
        }
    }
    for (field, expected) in spec.required {
        if !fields.get(*field).is_some_and(|v| expected.accepts(v)) {
            return Err(EventError::MissingField {
                kind: spec.name,
                field,
                expected: expected.describe(),
            });
        }
    }
    let user_ids = match fields.get("user_ids") {
        None => Vec::new(),
        Some(Value::Array(ids)) if !ids.is_empty() => ids
            .iter()
            .map(|id| id_text(id).ok_or(EventError::BadUserIds))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(EventError::BadUserIds),
    };
    Ok(Event {
        kind: spec.name,
        channel: spec.channel,
        user_ids,
        fields,
    })
}

/// The root map of a query document that the query lifecycle events keep up to date.
pub const QUERY_STATUS_MAP: &str = "status";

impl Event {
    /// For `query_started`, `query_completed` and `query_failed` of `workspace`: the query's
    /// document (`{workspace}/queries/{query_id}`) and what its `status` map becomes: `status`
    /// (`running`, `completed`, `failed`), `result_count`, `execution_time`, `error`,
    /// `started_by`, `started_at`, `finished_at`. A new run clears the last one's results.
    pub fn query_status(&self, workspace: &str) -> Option<(DocName, Vec<(String, Any)>)> {
        let event = self;
        let state = match event.kind {
            "query_started" => "running",
            "query_completed" => "completed",
            "query_failed" => "failed",
            _ => return None,
        };
        let query = event.fields.get("query_id").and_then(id_text)?;
        let doc = DocName::parse(&format!("{workspace}/queries/{query}")).ok()?;
        let now =
            crate::clock::rfc3339(time::OffsetDateTime::now_utc()).map_or(Any::Null, Any::from);
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

/// A set of channels, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelSet(u16);

impl ChannelSet {
    pub fn of(channels: &[Channel]) -> ChannelSet {
        ChannelSet(channels.iter().fold(0, |bits, c| bits | bit(*c)))
    }

    pub fn all() -> ChannelSet {
        ChannelSet::of(&Channel::ALL)
    }

    pub fn contains(self, channel: Channel) -> bool {
        self.0 & bit(channel) != 0
    }

    pub fn union(self, other: ChannelSet) -> ChannelSet {
        ChannelSet(self.0 | other.0)
    }

    pub fn without(self, other: ChannelSet) -> ChannelSet {
        ChannelSet(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The channels' names, in [`Channel::ALL`] order.
    pub fn names(self) -> Vec<&'static str> {
        Channel::ALL
            .into_iter()
            .filter(|c| self.contains(*c))
            .map(Channel::name)
            .collect()
    }
}

fn bit(channel: Channel) -> u16 {
    1 << channel as u16
}

/// A user id as events carry it: the token's `sub`, as a JSON number when it is one (the ids of
/// MISSION.md are numbers) and as a string otherwise.
pub fn user_id_value(user: &str) -> serde_json::Value {
    match user.parse::<u64>() {
        Ok(n) if n.to_string() == user => serde_json::Value::from(n),
        _ => serde_json::Value::from(user),
    }
}

/// A user id that serializes as [`user_id_value`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(pub String);

impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.parse::<u64>() {
            Ok(n) if n.to_string() == self.0 => serializer.serialize_u64(n),
            _ => serializer.serialize_str(&self.0),
        }
    }
}

impl<'de> serde::Deserialize<'de> for UserId {
    /// Reads back what [`UserId`]'s `Serialize` writes: a number or a string.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UserId, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        id_text(&value)
            .map(UserId)
            .ok_or_else(|| serde::de::Error::custom("a user id is a number or a string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_mission_example_is_accepted_on_its_channel() {
        let cases = [
            (
                json!({"type":"query_started","query_id":456,"started_by":123}),
                Channel::Queries,
            ),
            (
                json!({"type":"query_completed","query_id":456,"result_count":100,"execution_time":2.5}),
                Channel::Queries,
            ),
            (
                json!({"type":"agent_executed","agent_id":789,"status":"completed","insights_found":3,"needs_approval":false}),
                Channel::Agents,
            ),
            (
                json!({"type":"new_chat_message","session_id":999,"message":"Hello, I need help","sender":"visitor"}),
                Channel::ChatSessions,
            ),
            (
                json!({"type":"new_chat_session","session_id":1000,"visitor_location":"New York, US"}),
                Channel::ChatSessions,
            ),
            (
                json!({"type":"system_alert","message":"disk almost full","severity":"warning"}),
                Channel::System,
            ),
            (
                json!({"type":"workflow_triggered","workflow_id":"wf-1"}),
                Channel::Workflows,
            ),
            (
                json!({"type":"approval_request","approval_id":5,"title":"Send report"}),
                Channel::Approvals,
            ),
            (
                json!({"type":"query_failed","query_id":456,"error":"timeout"}),
                Channel::Queries,
            ),
            (
                json!({"type":"file_uploaded","user_id":123,"file_name":"q3.csv"}),
                Channel::Activity,
            ),
        ];
        for (value, channel) in cases {
            let event = validate(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(event.channel, channel, "{value}");
            // Kept exactly as published.
            assert_eq!(Value::Object(event.fields), value);
        }
    }

    #[test]
    fn each_refusal_says_what_is_wrong() {
        let refused = |value: Value| validate(value).unwrap_err().to_string();
        assert_eq!(refused(json!([1])), "an event is a JSON object");
        assert_eq!(
            refused(json!({"query_id":1})),
            "an event needs a string `type`"
        );
        assert!(refused(json!({"type":"query_exploded"}))
            .starts_with("unknown event type \"query_exploded\"; known types: query_started"));
        assert_eq!(
            refused(
                json!({"type":"query_completed","query_id":1,"result_count":-1,"execution_time":2})
            ),
            "query_completed needs `result_count`: a non-negative integer"
        );
        assert_eq!(
            refused(json!({"type":"system_alert","message":"x","severity":"meh"})),
            "system_alert needs `severity`: one of info, warning, error, critical"
        );
        assert_eq!(
            refused(json!({"type":"workflow_triggered","workflow_id":"wf","id":3})),
            "`id` is set by the server"
        );
        assert_eq!(
            refused(json!({"type":"workflow_triggered","workflow_id":"wf","user_ids":[]})),
            "`user_ids` must be a non-empty list of ids"
        );
    }

    #[test]
    fn user_ids_become_strings_whatever_their_json_type() {
        let event =
            validate(json!({"type":"workflow_triggered","workflow_id":1,"user_ids":[123,"u-7"]}))
                .unwrap();
        assert_eq!(event.user_ids, vec!["123".to_string(), "u-7".to_string()]);
    }

    #[test]
    fn every_type_has_one_index_and_fits_a_preference_mask() {
        let names: Vec<_> = all_types().map(|(name, _)| name).collect();
        assert!(names.len() <= 32, "preferences are a u32 mask");
        for (i, name) in names.iter().enumerate() {
            assert_eq!(type_index(name), Some(i));
        }
        assert_eq!(channel_of("lock_acquired"), Some(Channel::Presence));
        assert_eq!(channel_of("query_failed"), Some(Channel::Queries));
        assert_eq!(type_index("nope"), None);
    }

    #[test]
    fn channels_round_trip_by_name() {
        for channel in Channel::ALL {
            assert_eq!(Channel::parse(channel.name()), Some(channel));
        }
        assert_eq!(Channel::parse("everything"), None);
    }

    #[test]
    fn channel_sets_add_and_remove() {
        let set = ChannelSet::of(&[Channel::Queries, Channel::Presence]);
        assert!(set.contains(Channel::Queries) && set.contains(Channel::Presence));
        assert!(!set.contains(Channel::System));
        let set = set.without(ChannelSet::of(&[Channel::Queries]));
        assert_eq!(set.names(), vec!["presence"]);
        assert!(set.without(set).is_empty());
        assert_eq!(ChannelSet::all().names().len(), Channel::ALL.len());
    }

    #[test]
    fn numeric_user_ids_become_numbers() {
        assert_eq!(user_id_value("123"), serde_json::json!(123));
        assert_eq!(user_id_value("007"), serde_json::json!("007"));
        assert_eq!(user_id_value("ada"), serde_json::json!("ada"));
        for user in ["123", "007", "ada"] {
            assert_eq!(
                serde_json::to_value(UserId(user.into())).unwrap(),
                user_id_value(user)
            );
        }
    }
}
