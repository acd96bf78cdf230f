//! What the hub keeps of each user: their record (saved with the event log's group commit),
//! their presence as published (`presence_update`) and mirrored into the workspace's presence
//! room, their inbox (chat badges and notifications, pushed and written into their inbox room),
//! and their notification preferences.

use std::sync::Arc;

use serde_json::{Map, Value};
use tandem_crdt::SERVER_CLIENT_BASE;
use tandem_storage::StoreError;
use tokio::time::Instant;

use super::catalogue::Event;
use super::hub::{users_scope, Hub, PublishError};
use super::inbox::ChatBadges;
use super::preferences::{Muted, Preferences};
use super::presence::{Snapshot, Source, UserPresence};
use super::protocol::{PresenceStatus, PresenceUpdate};
use super::records;
use super::workspace::{State, UserRecord, Workspace};
use crate::docname::DocName;
use crate::durability::Ticket;

/// The awareness client id of the server's state in every inbox room: the last of the
/// server's ids ([`SERVER_CLIENT_BASE`]), which clients may not use.
const INBOX_CLIENT: u64 = SERVER_CLIENT_BASE + 0xffff_ffff;

/// The awareness client id under which a user is mirrored into the presence room.
fn mirror_client(user: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    user.hash(&mut hasher);
    SERVER_CLIENT_BASE + (hasher.finish() % 0xffff_ffff)
}

/// Why preferences could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum PreferencesError {
    /// The request names an unknown type or a value that is no boolean.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] PublishError),
}

impl Hub {
    /// Writes a user's record; durable with the next group commit.
    pub(super) fn save(&self, ws: &Workspace, user: &str, record: &UserRecord) {
        let bytes = match serde_json::to_vec(record) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::error!(workspace = %ws.name, %user, error = %err, "cannot encode a user record");
                return;
            }
        };
        // As of the last event applied to it: of two nodes saving it, the newer state stays.
        let version = record.through;
        if let Err(err) = self
            .state
            .put(&users_scope(&ws.name), user, version, Some(&bytes))
        {
            tracing::error!(workspace = %ws.name, %user, error = %err, "cannot save a user record");
        }
    }

    /// Clears a user's unread count for a chat session: said in the log (`records`), so
    /// every node clears it, and pushed once it is durable.
    pub fn mark_read(self: &Arc<Self>, ws: &Arc<Workspace>, user: &str, session: &str) {
        let ticket = self.append_read(ws, user, session);
        self.settle_later(ws, ticket);
    }

    /// [`Hub::mark_read`], returning once the read is durable and applied here.
    ///
    /// # Errors
    /// It was not durable in time.
    pub async fn mark_read_durable(
        &self,
        ws: &Workspace,
        user: &str,
        session: &str,
    ) -> Result<(), PublishError> {
        let Some(ticket) = self.append_read(ws, user, session) else {
            return Ok(());
        };
        let waited = self
            .durability
            .wait(ticket, self.settings.durability_timeout)
            .await;
        self.release(ws);
        waited.map_err(PublishError::NotDurable)
    }

    /// Appends the `chat_read` of `session` by `user`, if it has a badge here.
    fn append_read(&self, ws: &Workspace, user: &str, session: &str) -> Option<Ticket> {
        let mut st = ws.lock();
        let unread = st
            .users
            .get(user)
            .is_some_and(|entry| entry.record.inbox.has_badge(session));
        if !unread {
            return None;
        }
        let mut fields = Map::new();
        fields.insert("session_id".into(), Value::String(session.into()));
        self.emit(
            ws,
            &mut st,
            records::internal(records::CHAT_READ, user, fields),
        )
    }

    /// Writes `user`'s inbox state (latest notifications, chat badges) into their inbox room.
    pub(super) fn sync_inbox(&self, ws: &Workspace, st: &State, user: &str) {
        let (Some(rooms), Some(entry)) = (self.rooms(), st.users.get(user)) else {
            return;
        };
        let Ok(name) = DocName::inbox(&ws.name, user) else {
            return;
        };
        let state = entry.record.inbox.awareness_state(user);
        rooms.set_server_awareness(&name, INBOX_CLIENT, Some(Arc::from(state)));
    }

    /// A user's chat badges.
    pub fn badges(&self, ws: &Workspace, user: &str) -> ChatBadges {
        let st = ws.lock();
        st.users
            .get(user)
            .map(|u| u.record.inbox.badges())
            .unwrap_or_else(|| super::inbox::Inbox::default().badges())
    }

    /// Records what `source` says about `user`'s presence and publishes what changed.
    pub fn presence(
        self: &Arc<Self>,
        ws: &Arc<Workspace>,
        user: &str,
        source: Source,
        update: &PresenceUpdate,
        active: bool,
    ) {
        let poll_ttl = self.settings.presence.poll_ttl;
        self.with_presence(ws, user, |presence, now| {
            presence.update(source.clone(), update, active, now);
            if source == Source::Poller {
                presence.expire_at(&source, now + poll_ttl);
            }
        });
    }

    /// Changes `user`'s presence with `f` and publishes what changed.
    fn with_presence(
        self: &Arc<Self>,
        ws: &Arc<Workspace>,
        user: &str,
        f: impl FnOnce(&mut UserPresence, Instant),
    ) {
        let mut st = ws.lock();
        let entry = st.users.entry(user.to_owned()).or_default();
        f(&mut entry.presence, Instant::now());
        let ticket = self.presence_due(ws, &mut st, user);
        drop(st);
        self.settle_later(ws, ticket);
    }

    /// Notes activity (any frame but a ping) from `source`.
    pub fn touch(self: &Arc<Self>, ws: &Arc<Workspace>, user: &str, source: &Source) {
        self.with_presence(ws, user, |presence, now| presence.touch(source, now));
    }

    /// Forgets `source` (a Yjs client that left the presence room, say).
    pub fn presence_gone(self: &Arc<Self>, ws: &Arc<Workspace>, user: &str, source: &Source) {
        self.with_presence(ws, user, |presence, _| presence.remove(source));
    }

    /// Publishes `user`'s presence if it changed enough (where this node speaks for the
    /// workspace: the event records when they were seen, `records`); tells the other nodes of
    /// a cluster what changed here.
    pub(super) fn presence_due(
        &self,
        ws: &Workspace,
        st: &mut State,
        user: &str,
    ) -> Option<Ticket> {
        self.presence_news(ws, st, user, true)
    }

    /// [`Hub::presence_due`]; without `emit` what changed is taken as already said (by the
    /// node that spoke for the workspace) and only mirrored.
    pub(super) fn presence_news(
        &self,
        ws: &Workspace,
        st: &mut State,
        user: &str,
        emit: bool,
    ) -> Option<Ticket> {
        let settings = self.settings.presence;
        let speaks = emit && self.speaks(st);
        let entry = st.users.get_mut(user)?;
        let now = Instant::now();
        if let Some(bus) = self.bus() {
            if let Some(told) = entry.presence.tell(now, &settings) {
                let value = told.and_then(|told| serde_json::to_string(&told).ok());
                bus.tell(&ws.name, &super::roster::presence_key(user), value);
            }
        }
        let direct = entry.presence.has_direct_source();
        let Some(snapshot) = entry.presence.due(now, &settings) else {
            if !direct && entry.mirrored {
                entry.mirrored = false;
                self.mirror(ws, user, None);
            }
            return None;
        };
        let mirrored = (direct && snapshot.status != PresenceStatus::Offline).then(|| {
            let mut fields = snapshot.fields(user);
            fields.insert("source".into(), Value::String("tandem".into()));
            Value::Object(fields).to_string()
        });
        if mirrored.is_some() || entry.mirrored {
            entry.mirrored = mirrored.is_some();
            self.mirror(ws, user, mirrored);
        }
        if !speaks {
            return None;
        }
        // The event records when they were seen (`records`).
        self.emit(
            ws,
            st,
            Event::server("presence_update", snapshot.fields(user)),
        )
    }

    /// Keeps (or removes) `user`'s mirror in the workspace's presence room, so Yjs clients see
    /// dashboard users through the awareness API. Called with the workspace locked; the room's
    /// lock is taken inside (workspace, then room: the order everywhere).
    fn mirror(&self, ws: &Workspace, user: &str, state: Option<String>) {
        let (Some(rooms), Ok(name)) = (self.rooms(), DocName::presence(&ws.name)) else {
            return;
        };
        rooms.set_server_awareness(&name, mirror_client(user), state.map(Arc::from));
    }

    /// The workspace's users with their presence, by user id: online and idle ones, and with
    /// `include_offline` the others too with their `last_seen`.
    ///
    /// # Errors
    /// The store failed loading the workspace.
    pub async fn who(
        &self,
        workspace: &str,
        include_offline: bool,
    ) -> Result<Vec<(String, Snapshot)>, StoreError> {
        let ws = self.workspace(workspace).await?;
        let st = ws.lock();
        let now = Instant::now();
        let mut users: Vec<(String, Snapshot)> = st
            .users
            .iter()
            .map(|(user, entry)| {
                (
                    user.clone(),
                    entry.presence.current(now, &self.settings.presence),
                )
            })
            // Offline users are those once seen, not everyone who ever had a record (setting
            // preferences over HTTP, say).
            .filter(|(_, snapshot)| {
                snapshot.status != PresenceStatus::Offline
                    || (include_offline && snapshot.last_seen.is_some())
            })
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(users)
    }

    /// A user's notification preferences: every event type with whether it is pushed in real
    /// time.
    ///
    /// # Errors
    /// The store failed loading the workspace.
    pub async fn preferences(
        &self,
        workspace: &str,
        user: &str,
    ) -> Result<Preferences, StoreError> {
        let ws = self.workspace(workspace).await?;
        let muted = ws
            .lock()
            .users
            .get(user)
            .map_or(Muted::default(), |u| u.muted);
        Ok(muted.preferences())
    }

    /// Changes some of a user's preferences (`{"realtime":{"agent_executed":false}}`) and
    /// returns them all once durable. The change is said in the log (`records`), so every
    /// node applies it, and two made at once on different nodes both hold.
    ///
    /// # Errors
    /// [`PreferencesError::Invalid`] for a bad request (checked before anything changes),
    /// [`PreferencesError::Store`] when storage failed.
    pub async fn set_preferences(
        &self,
        workspace: &str,
        user: &str,
        realtime: &Map<String, Value>,
    ) -> Result<Preferences, PreferencesError> {
        Muted::default()
            .with(realtime)
            .map_err(PreferencesError::Invalid)?;
        let ws = self
            .workspace(workspace)
            .await
            .map_err(PublishError::Store)?;
        let (muted, ticket) = {
            let mut st = ws.lock();
            let current = st
                .users
                .get(user)
                .map_or(Muted::default(), |entry| entry.muted);
            let muted = current.with(realtime).map_err(PreferencesError::Invalid)?;
            if muted == current {
                // Nothing to change (as far as this node knows): nothing to log.
                return Ok(muted.preferences());
            }
            let mut fields = Map::new();
            fields.insert("realtime".into(), Value::Object(realtime.clone()));
            let event = records::internal(records::PREFERENCES_CHANGED, user, fields);
            let (_, ticket) = self
                .append(&ws, &mut st, event)
                .map_err(PublishError::Store)?;
            (muted, ticket)
        };
        let waited = self
            .durability
            .wait(ticket, self.settings.durability_timeout)
            .await;
        // Applied here before the answer (unless an earlier event from another node has not
        // arrived yet): a read that follows on this node sees it.
        self.release(&ws);
        waited.map_err(PublishError::NotDurable)?;
        Ok(muted.preferences())
    }
}
