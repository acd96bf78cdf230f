//! The users' records (chat badges, latest notifications, preferences, when last seen) as a
//! fold over the workspace's event log.
//!
//! Every change to a record is an event, applied where the event is released, in id order:
//! a `new_chat_message` raises its recipients' badges, an event addressed to users lands in
//! their inboxes, a `presence_update` records when they were last seen, and what a user does
//! to their own record goes through the log as an internal event ([`CHAT_READ`],
//! [`PREFERENCES_CHANGED`]) that no subscriber receives. So every node of a cluster holds
//! the same records without asking the others, and concurrent changes made on different nodes
//! all land, in the log's order.
//!
//! Each record remembers the last event applied to it (`through`), so applying an event twice
//! changes nothing. Where a node speaks for the workspace (`roster`), it saves what changed,
//! and with it a checkpoint: every change of every event up to it is saved or about to be in
//! the same flush. A workspace that loads applies the events after the
//! checkpoint again (the last changes may not have been flushed when it was read).

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use tandem_storage::{Since, StoreError};

use super::catalogue::{self, Event};
use super::hub::{users_scope, Hub};
use super::workspace::{State, User, Workspace};

/// The internal event of a user who read a chat session: `{"user_id","session_id"}`.
pub const CHAT_READ: &str = "chat_read";
/// The internal event of a user who changed their preferences: `{"user_id","realtime"}`.
pub const PREFERENCES_CHANGED: &str = "preferences_changed";

/// Events in the log that no subscriber receives.
const INTERNAL: &[&str] = &[CHAT_READ, PREFERENCES_CHANGED];

/// Releases that change no record before the checkpoint moves anyway (so a load does not
/// apply again every event since the last change).
const CHECKPOINT_EVERY: u32 = 1000;

/// Events one read of the replay at load takes.
const REPLAY_PAGE: usize = 500;

/// The state store's scope of the workspace's checkpoint, and its key.
fn checkpoint_scope(workspace: &str) -> String {
    format!("checkpoints/{workspace}")
}
const CHECKPOINT_KEY: &str = "users";

/// Whether a stored event is one of the internal ones.
pub fn is_internal(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_slice::<Head>(body).is_ok_and(|head| INTERNAL.contains(&head.kind))
}

/// An internal event of `user`'s.
pub fn internal(kind: &'static str, user: &str, mut fields: Map<String, Value>) -> Event {
    fields.insert("type".into(), Value::String(kind.into()));
    fields.insert("user_id".into(), Value::String(user.into()));
    Event {
        kind,
        // Never delivered: its channel is only what the type asks for.
        channel: catalogue::Channel::System,
        user_ids: Vec::new(),
        fields,
    }
}

/// What one event does to the records.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A chat message: a badge for each recipient (its addressees, or every known user), never
    /// its sender.
    ChatMessage {
        session: String,
        sender: Option<String>,
        to: Vec<String>,
    },
    ChatRead {
        user: String,
        session: String,
    },
    Preferences {
        user: String,
        realtime: Map<String, Value>,
    },
    /// Presence said: when last seen (offline), or first seen.
    Presence {
        user: String,
        offline: bool,
        at_ms: Option<i64>,
        name: Option<String>,
    },
    /// An event addressed to users (its frame): into each one's inbox unless they muted its
    /// type.
    Addressed {
        to: Vec<String>,
        type_index: usize,
        frame: String,
    },
}

impl Change {
    /// What the event `id` (stored as `body`) changes, if anything.
    pub fn of(id: u64, body: &[u8]) -> Vec<Change> {
        // Most events change nothing: their type and addressees are read, not the rest.
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
            #[serde(default)]
            user_ids: Vec<Value>,
        }
        let Ok(head) = serde_json::from_slice::<Head>(body) else {
            return Vec::new();
        };
        let kind = head.kind.as_ref();
        let to: Vec<String> = head
            .user_ids
            .iter()
            .filter_map(catalogue::id_text)
            .collect();
        let mut changes = Vec::new();
        let changes_records = matches!(
            kind,
            "new_chat_message" | CHAT_READ | PREFERENCES_CHANGED | "presence_update"
        );
        let fields = if changes_records {
            serde_json::from_slice::<Map<String, Value>>(body).unwrap_or_default()
        } else {
            Map::new()
        };
        let text = |key: &str| fields.get(key).and_then(catalogue::id_text);
        match kind {
            "new_chat_message" => {
                if let Some(session) = text("session_id") {
                    changes.push(Change::ChatMessage {
                        session,
                        sender: text("sender"),
                        to: to.clone(),
                    });
                }
            }
            CHAT_READ => {
                if let (Some(user), Some(session)) = (text("user_id"), text("session_id")) {
                    changes.push(Change::ChatRead { user, session });
                }
            }
            PREFERENCES_CHANGED => {
                if let (Some(user), Some(Value::Object(realtime))) =
                    (text("user_id"), fields.get("realtime"))
                {
                    changes.push(Change::Preferences {
                        user,
                        realtime: realtime.clone(),
                    });
                }
            }
            "presence_update" => {
                if let Some(user) = text("user_id") {
                    let offline = fields.get("status").and_then(Value::as_str) == Some("offline");
                    let when = if offline { "last_seen" } else { "timestamp" };
                    let at_ms = fields
                        .get(when)
                        .or_else(|| fields.get("timestamp"))
                        .and_then(Value::as_str)
                        .and_then(crate::clock::parse_rfc3339)
                        .and_then(|at| i64::try_from(crate::clock::unix_ms(at)).ok());
                    changes.push(Change::Presence {
                        user,
                        offline,
                        at_ms,
                        name: fields.get("name").and_then(Value::as_str).map(Into::into),
                    });
                }
            }
            _ => {}
        }
        if !to.is_empty() && !INTERNAL.contains(&kind) {
            if let Some(type_index) = catalogue::type_index(kind) {
                let frame = super::delivery::frame_with_id(id, body).unwrap_or_default();
                changes.push(Change::Addressed {
                    to,
                    type_index,
                    frame,
                });
            }
        }
        changes
    }
}

/// Whom an applied change concerns, for the hub to push.
#[derive(Debug, Default)]
pub struct Touched {
    /// Whose records changed (saved where this node speaks).
    pub records: BTreeSet<String>,
    /// Whose chat badges changed (pushed to their connections).
    pub badges: Vec<String>,
    /// Whose inbox changed (written into their inbox room).
    pub inboxes: Vec<String>,
}

impl Touched {
    fn record(&mut self, user: &str) {
        if !self.records.contains(user) {
            self.records.insert(user.to_owned());
        }
    }
}

/// The users of the workspace: those with a record.
fn known_users(st: &State) -> Vec<String> {
    st.users
        .iter()
        .filter(|(_, u)| u.known)
        .map(|(user, _)| user.clone())
        .collect()
}

/// The user `user`'s entry, known (a record) from now on.
fn known<'a>(st: &'a mut State, user: &str) -> &'a mut User {
    let entry = st.users.entry(user.to_owned()).or_default();
    entry.known = true;
    entry
}

/// Applies the event `id`'s `changes` to the records in `st`. A record that saw `id` already
/// is left alone.
pub fn apply(
    st: &mut State,
    id: u64,
    changes: Vec<Change>,
    max_badges: usize,
    touched: &mut Touched,
) {
    let fresh = |st: &State, user: &str| st.users.get(user).is_none_or(|u| u.record.through < id);
    // Marked as having seen `id` once every change of it is applied.
    let mut seen: Vec<String> = Vec::new();
    for change in changes {
        match change {
            Change::ChatMessage {
                session,
                sender,
                to,
            } => {
                let recipients = if to.is_empty() { known_users(st) } else { to };
                for user in recipients.iter().filter(|u| Some(*u) != sender.as_ref()) {
                    if !fresh(st, user) {
                        continue;
                    }
                    known(st, user)
                        .record
                        .inbox
                        .raise_badge(&session, max_badges);
                    seen.push(user.clone());
                    touched.badges.push(user.clone());
                    touched.inboxes.push(user.clone());
                }
            }
            Change::ChatRead { user, session } => {
                if !fresh(st, &user) {
                    continue;
                }
                if known(st, &user).record.inbox.mark_read(&session) {
                    touched.badges.push(user.clone());
                    touched.inboxes.push(user.clone());
                }
                seen.push(user);
            }
            Change::Preferences { user, realtime } => {
                if !fresh(st, &user) {
                    continue;
                }
                let entry = known(st, &user);
                match entry.muted.with(&realtime) {
                    Ok(muted) => {
                        entry.muted = muted;
                        entry.record.muted = muted.names();
                    }
                    Err(err) => {
                        tracing::warn!(%user, error = %err, "preferences in the log that do not apply");
                    }
                }
                let muted = entry.muted;
                for c in st.conns.values_mut().filter(|c| c.user == user) {
                    c.muted = muted;
                }
                seen.push(user);
            }
            Change::Presence {
                user,
                offline,
                at_ms,
                name,
            } => {
                if !fresh(st, &user) {
                    continue;
                }
                let entry = known(st, &user);
                // Offline: since when. Online: recorded when first seen, so that a crash
                // before they leave still lists them as offline afterwards.
                // Otherwise (a page change, say) nothing to write.
                if offline || entry.record.last_seen_ms.is_none() {
                    entry.record.last_seen_ms = at_ms.or(entry.record.last_seen_ms);
                    if name.is_some() {
                        entry.record.name = name;
                    }
                    seen.push(user);
                }
            }
            Change::Addressed {
                to,
                type_index,
                frame,
            } => {
                for user in to {
                    // Only users with a record: everyone else is a stranger to the workspace.
                    if !fresh(st, &user) {
                        continue;
                    }
                    let Some(entry) = st.users.get_mut(&user).filter(|u| u.known) else {
                        continue;
                    };
                    if entry.muted.mutes(type_index) {
                        continue;
                    }
                    entry.record.inbox.notify(&frame);
                    touched.inboxes.push(user.clone());
                    seen.push(user);
                }
            }
        }
    }
    for user in seen {
        if let Some(entry) = st.users.get_mut(&user) {
            entry.record.through = id;
        }
        touched.record(&user);
    }
}

impl Hub {
    /// Saves the records `touched` changed and the checkpoint `through`, where this node
    /// speaks for the workspace; a node that starts speaking saves every record once (what
    /// the previous one had not flushed yet).
    pub(super) fn save_records(
        &self,
        ws: &Workspace,
        st: &mut State,
        touched: &Touched,
        through: u64,
    ) {
        let speaks = self.speaks(st);
        let started = speaks && !st.spoke;
        st.spoke = speaks;
        if !speaks {
            return;
        }
        st.unchecked = st.unchecked.saturating_add(1);
        if !started && touched.records.is_empty() && st.unchecked < CHECKPOINT_EVERY {
            // Nothing changed: the checkpoint stays where the last change was (replaying the
            // events since changes nothing), and the flush has nothing more to write.
            return;
        }
        st.unchecked = 0;
        let users: Vec<String> = if started {
            known_users(st)
        } else {
            touched.records.iter().cloned().collect()
        };
        for user in &users {
            if let Some(entry) = st.users.get(user) {
                self.save(ws, user, &entry.record);
            }
        }
        if let Err(err) = self.state.put(
            &checkpoint_scope(&ws.name),
            CHECKPOINT_KEY,
            through,
            Some(through.to_string().as_bytes()),
        ) {
            tracing::error!(workspace = %ws.name, error = %err, "cannot save the records' checkpoint");
        }
    }

    /// The workspace's checkpoint: every event up to it changed the stored records.
    pub(super) async fn checkpoint(&self, workspace: &str) -> Result<Option<u64>, StoreError> {
        let stored = self.state.scan(&checkpoint_scope(workspace)).await?;
        Ok(stored
            .into_iter()
            .find(|(key, _)| key == CHECKPOINT_KEY)
            .and_then(|(_, value)| std::str::from_utf8(&value).ok()?.parse().ok()))
    }

    /// Applies the events after `from` up to `to` to the records of a workspace being
    /// loaded (nothing is pushed: it has no connections yet).
    pub(super) async fn replay_records(
        &self,
        ws: &Workspace,
        from: u64,
        to: u64,
    ) -> Result<(), StoreError> {
        let mut after = from;
        while after < to {
            let events = match self.store.since(&ws.name, after, REPLAY_PAGE).await? {
                Since::Events(events) => events,
                // Retention dropped some: what is left is applied.
                Since::Resync { oldest } if oldest > after + 1 => {
                    after = oldest - 1;
                    continue;
                }
                Since::Resync { .. } => return Ok(()),
            };
            let Some(last) = events.last().map(|e| e.id) else {
                return Ok(());
            };
            let mut st = ws.lock();
            let mut touched = Touched::default();
            for stored in events.iter().filter(|e| e.id <= to) {
                let changes = Change::of(stored.id, &stored.body);
                apply(
                    &mut st,
                    stored.id,
                    changes,
                    self.settings.max_chat_badges,
                    &mut touched,
                );
            }
            after = last;
        }
        Ok(())
    }

    /// The users' records as stored for `workspace`.
    pub(super) async fn stored_records(
        &self,
        workspace: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.state.scan(&users_scope(workspace)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_say_what_they_change() {
        let chat = br#"{"type":"new_chat_message","session_id":9,"message":"hi","sender":"ada"}"#;
        assert_eq!(
            Change::of(4, chat),
            [Change::ChatMessage {
                session: "9".into(),
                sender: Some("ada".into()),
                to: Vec::new()
            }]
        );
        let addressed =
            br#"{"type":"approval_request","approval_id":1,"title":"t","user_ids":[7]}"#;
        let changes = Change::of(5, addressed);
        assert!(
            matches!(&changes[..], [Change::Addressed { to, frame, .. }] if to == &["7"] && frame.starts_with(r#"{"id":5,"#)),
            "{changes:?}"
        );
        let read = br#"{"type":"chat_read","user_id":"7","session_id":"9"}"#;
        assert!(is_internal(read));
        assert!(!is_internal(chat));
        assert_eq!(
            Change::of(6, read),
            [Change::ChatRead {
                user: "7".into(),
                session: "9".into()
            }]
        );
        let gone = br#"{"type":"presence_update","user_id":"7","status":"offline","name":"Ada","last_seen":"2026-12-07T10:00:00Z","timestamp":"2026-12-07T10:00:01Z"}"#;
        assert!(matches!(
            &Change::of(7, gone)[..],
            [Change::Presence {
                offline: true,
                at_ms: Some(1_796_637_600_000),
                ..
            }]
        ));
        assert!(Change::of(8, b"not json").is_empty());
    }

    #[test]
    fn applying_an_event_twice_changes_nothing() {
        let mut st = State::for_tests();
        let mut touched = Touched::default();
        known(&mut st, "bob");
        let chat = br#"{"type":"new_chat_message","session_id":9,"message":"hi","sender":"ada"}"#;
        for _ in 0..2 {
            apply(&mut st, 3, Change::of(3, chat), 10, &mut touched);
        }
        assert_eq!(st.users["bob"].record.inbox.badges().total, 1);
        assert!(!st.users.contains_key("ada"), "never the sender's");
        let read = br#"{"type":"chat_read","user_id":"bob","session_id":"9"}"#;
        apply(&mut st, 4, Change::of(4, read), 10, &mut touched);
        apply(&mut st, 3, Change::of(3, chat), 10, &mut touched);
        assert_eq!(st.users["bob"].record.inbox.badges().total, 0);
        let prefs =
            br#"{"type":"preferences_changed","user_id":"bob","realtime":{"query_started":false}}"#;
        apply(&mut st, 5, Change::of(5, prefs), 10, &mut touched);
        assert_eq!(st.users["bob"].record.muted, ["query_started"]);
        assert_eq!(touched.records, BTreeSet::from(["bob".to_owned()]));
    }
}
