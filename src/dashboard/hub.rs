//! The dashboard hub: per workspace, the dashboard connections and what each subscribed to, the
//! users behind them (presence, chat badges, preferences), the advisory locks, and the path of
//! an event from its append to the log to every interested connection.
//!
//! Ordering and durability: an event is appended to the log, given its id and queued in the
//! workspace's `pending` list under the workspace's lock, so `pending` is in id order. It goes
//! out only once the group commit has made it durable ([`Hub::settle`]), and whoever sees the
//! commit first releases every durable event at the front of `pending`, in order. So every
//! connection receives a workspace's events in id order, never one that a crash could still
//! take back, and a reconnecting client's `since` is an exact resume point.
//!
//! A subscription with `since` replays from the log what came after it on the channels it adds
//! (those already live missed nothing), up to the last released id when it registered; events
//! released meanwhile are held for it and follow the replay, so nothing is missed or sent
//! twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tandem_storage::{EventStore, Retention, Since, StateStore, StoreError, StoredEvent};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::catalogue::{self as events, Channel, Event};
use super::presence::{self, PresenceSettings, Snapshot, Source, UserPresence};
use super::protocol::{PresenceStatus, PresenceUpdate, ProtocolError};
use super::{user_id_value, ChannelSet};
use crate::clock::rfc3339;
use crate::docname::{DocName, RoomKind};
use crate::docs::{RoomObserver, Rooms};
use crate::durability::{Durability, DurabilityError, Ticket};
use crate::net::{CloseReason, Closer, ConnId};
use tandem_crdt::{AwarenessChange, SERVER_CLIENT_BASE};

/// A frame for a dashboard connection's writer.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An event: those ready within one batch window go out as one `batch` frame.
    Event(Arc<Delivered>),
    /// Anything else (pong, error, lock answers, chat badges), sent on its own.
    Reply(Utf8Bytes),
    /// A WebSocket ping.
    Ping,
}

/// The hub's limits and timings.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// How long a replay may wait for room in a connection's queue.
    pub lag_timeout: Duration,
    /// How long a publication waits for its group commit.
    pub durability_timeout: Duration,
    /// How long a lock is held without renewal.
    pub lock_ttl: Duration,
    pub retention: Retention,
    pub presence: PresenceSettings,
    /// Events per second one workspace may publish.
    pub publish_rate_workspace: u32,
    /// Events per second one publisher (token subject) may publish.
    pub publish_rate_user: u32,
    /// A document's user is "editing" while their awareness there changed this recently.
    pub editing_idle: Duration,
    /// Locks one dashboard connection may hold at once.
    pub max_locks_per_connection: usize,
    /// Chat sessions with unread messages kept per user.
    pub max_chat_badges: usize,
}

/// Notifications kept in a user's inbox state.
const INBOX_NOTIFICATIONS: usize = 20;

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

/// Events read from the log at a time.
const PAGE: usize = 256;

/// Pages of the log the activity feed reads back at most.
const ACTIVITY_SCAN_PAGES: usize = 64;

/// The most events one long-poll answer carries.
const POLL_LIMIT: usize = 500;

/// Why a publication failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the event was logged but not flushed: {0}")]
    NotDurable(#[from] DurabilityError),
}

/// The dashboard hub. One per server.
pub struct Hub {
    store: Arc<dyn EventStore>,
    /// The users' records (badges, preferences, last seen), durable with the event log.
    state: Arc<dyn StateStore>,
    durability: Arc<Durability>,
    workspaces: DashMap<String, Arc<OnceCell<Arc<Workspace>>>>,
    settings: HubSettings,
    workspace_rate: DefaultKeyedRateLimiter<String>,
    user_rate: DefaultKeyedRateLimiter<(String, String)>,
    /// The rooms, for the awareness states the hub keeps in them and reads from them.
    rooms: OnceLock<Weak<Rooms>>,
    /// Cancelled at shutdown: long-polls answer at once.
    closing: CancellationToken,
}

/// One workspace's dashboard state.
pub struct Workspace {
    name: String,
    state: Mutex<State>,
    /// The last released event id, for long-polls to wait on.
    released: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    /// Appended, not yet durable, in id order.
    pending: VecDeque<Pending>,
    /// The last event id released to subscribers.
    released: u64,
    users: HashMap<String, User>,
    locks: HashMap<String, Lease>,
    /// Who has which document open, from its awareness.
    editing: HashMap<String, DocEditing>,
    /// The user each awareness client of the presence room speaks for.
    presence_clients: HashMap<u64, String>,
}

/// The awareness clients of one document and what was last published about them.
#[derive(Default)]
struct DocEditing {
    /// By awareness client id: an id belongs to the connection that announced it last.
    clients: HashMap<u64, Editor>,
    /// (user, active) as last published.
    published: Vec<(String, bool)>,
}

struct Editor {
    user: String,
    name: Option<String>,
    last_change: Instant,
}

/// A dashboard connection as the hub sees it.
struct Conn {
    user: String,
    name: Option<String>,
    channels: ChannelSet,
    /// The user's muted event types, one bit per [`events::all_types`] index.
    muted: u32,
    tx: mpsc::Sender<Outgoing>,
    closer: Closer,
    /// While a replay runs: live events that follow it.
    held: Option<Vec<Arc<Delivered>>>,
}

impl Conn {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            user: &self.user,
            channels: self.channels,
            muted: self.muted,
        }
    }

    /// Queues `frame`; a connection whose queue is full is closed as too slow (it resumes with
    /// `since` when it reconnects, so nothing is lost).
    fn send(&self, frame: Outgoing) -> bool {
        let sent = self.tx.try_send(frame).is_ok();
        if !sent && !self.closer.is_closed() {
            tracing::info!(user = %self.user, "dashboard client too slow; closing");
            self.closer.close(CloseReason::Lagging);
        }
        sent
    }
}

/// What the hub keeps of a user.
#[derive(Default)]
struct User {
    record: UserRecord,
    muted: u32,
    presence: UserPresence,
    /// Whether the user has a mirror in the presence room (so it is removed once, not on every
    /// look at an awareness-only user).
    mirrored: bool,
}

/// A user's persisted state (scope `users/{workspace}` of the event store).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct UserRecord {
    /// Unread messages per chat session.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    badges: BTreeMap<String, u32>,
    /// The sessions of `badges`, the one whose last message is oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    badge_order: VecDeque<String>,
    /// Event types not pushed in real time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    muted: Vec<String>,
    /// When the user was last seen, in Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen_ms: Option<i64>,
    /// The name they went by when last seen, to list them by while they are offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The latest events addressed to the user, oldest first, as sent.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    notifications: VecDeque<String>,
}

impl UserRecord {
    /// One more unread message in `session`; past `max` sessions, the one whose last message
    /// is oldest loses its badge.
    fn raise_badge(&mut self, session: &str, max: usize) {
        *self.badges.entry(session.to_owned()).or_default() += 1;
        self.badge_order.retain(|s| s != session);
        if self.badge_order.len() + 1 < self.badges.len() {
            // A record from before the order was kept: its sessions count as the oldest.
            let known: std::collections::HashSet<&String> = self.badge_order.iter().collect();
            let older: Vec<String> = self
                .badges
                .keys()
                .filter(|s| *s != session && !known.contains(s))
                .cloned()
                .collect();
            for s in older.into_iter().rev() {
                self.badge_order.push_front(s);
            }
        }
        self.badge_order.push_back(session.to_owned());
        while self.badges.len() > max.max(1) {
            let Some(oldest) = self.badge_order.pop_front() else {
                break;
            };
            self.badges.remove(&oldest);
        }
    }
}

/// An event that was appended and is waiting for its group commit.
struct Pending {
    ticket: Ticket,
    event: Arc<Delivered>,
    /// Users whose chat badges it raised.
    badge_users: Vec<String>,
}

/// An advisory lock.
struct Lease {
    conn: ConnId,
    user: String,
    name: Option<String>,
    expires: Instant,
    expires_at: String,
}

/// An event ready to send: its frame (the stored object with its `id`) and what decides who
/// gets it.
#[derive(Debug)]
pub struct Delivered {
    pub id: u64,
    type_index: usize,
    channel: Channel,
    user_ids: Vec<String>,
    pub frame: Utf8Bytes,
    /// When it was published (live events only), for the delivery delay.
    pub published: Option<Instant>,
    /// Subscribers yet to hand it to their socket (or to drop it).
    remaining: std::sync::atomic::AtomicUsize,
}

impl Delivered {
    /// One subscriber is done with this event. For the last one, when it was published.
    pub fn handed_over(&self) -> Option<Instant> {
        let published = self.published?;
        let before = self
            .remaining
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        (before == 1).then_some(published)
    }
}

impl Delivered {
    /// The event as read back from the log; `None` for a record the catalogue no longer knows.
    fn from_stored(stored: &StoredEvent) -> Option<Delivered> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            user_ids: Vec<Value>,
        }
        let head: Head = serde_json::from_slice(&stored.body).ok()?;
        let type_index = events::type_index(&head.kind)?;
        Some(Delivered {
            id: stored.id,
            type_index,
            channel: events::channel_of(&head.kind)?,
            user_ids: head.user_ids.iter().filter_map(events::id_text).collect(),
            frame: frame_with_id(stored.id, &stored.body)?.into(),
            published: None,
            remaining: Default::default(),
        })
    }
}

/// The frame of a stored event: its JSON object with `"id"` first.
fn frame_with_id(id: u64, body: &[u8]) -> Option<String> {
    let rest = std::str::from_utf8(body).ok()?.strip_prefix('{')?;
    Some(if rest.trim_start().starts_with('}') {
        format!("{{\"id\":{id}}}")
    } else {
        format!("{{\"id\":{id},{rest}")
    })
}

/// Who looks at events, and through which channels.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub user: &'a str,
    pub channels: ChannelSet,
    pub muted: u32,
}

impl Viewer<'_> {
    /// Whether this viewer gets `event`: an event for everyone goes to the subscribers of its
    /// channel; one addressed to users (`user_ids`) only to them, through its channel or
    /// `notifications`; a muted type to nobody.
    fn sees(&self, event: &Delivered) -> bool {
        if self.muted & (1 << event.type_index) != 0 {
            return false;
        }
        if event.user_ids.is_empty() {
            self.channels.contains(event.channel)
        } else {
            event.user_ids.iter().any(|u| u == self.user)
                && (self.channels.contains(event.channel)
                    || self.channels.contains(Channel::Notifications))
        }
    }
}

/// The latest events of a kind, and where a client that shows them resumes from.
#[derive(Debug)]
pub struct History {
    /// The frames, oldest first.
    pub events: Vec<Utf8Bytes>,
    /// The last released event id when they were read: a subscription `since` it gets what
    /// came after them, and nothing twice.
    pub last_id: u64,
}

/// What a long-poll or a page of the log found.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<Arc<Delivered>>,
    /// The last id looked at: the next `since`.
    pub last_id: u64,
    /// Set when what was asked for is older than retention kept: the oldest id still kept.
    pub resync_from: Option<u64>,
}

fn users_scope(workspace: &str) -> String {
    format!("users/{workspace}")
}

fn mask(muted: &[String]) -> u32 {
    muted
        .iter()
        .filter_map(|name| events::type_index(name))
        .fold(0, |bits, i| bits | (1 << i))
}

fn now_wall() -> (u64, String) {
    let now = OffsetDateTime::now_utc();
    let ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let text = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    (ms, text)
}

fn json_frame(value: Value) -> Utf8Bytes {
    value.to_string().into()
}

fn per_second(rate: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
}

impl Workspace {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Hub {
    pub fn new(
        store: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
        durability: Arc<Durability>,
        settings: HubSettings,
    ) -> Hub {
        Hub {
            state,
            workspace_rate: RateLimiter::keyed(per_second(settings.publish_rate_workspace)),
            user_rate: RateLimiter::keyed(per_second(settings.publish_rate_user)),
            store,
            durability,
            workspaces: DashMap::new(),
            settings,
            rooms: OnceLock::new(),
            closing: CancellationToken::new(),
        }
    }

    /// Closes every dashboard connection with `reason` and answers every long-poll (shutdown).
    /// Connections that register later are closed by their session, which checks the server's
    /// shutdown token.
    pub fn close_all(&self, reason: &CloseReason) {
        self.closing.cancel();
        for ws in self.all_loaded() {
            for c in ws.lock().conns.values() {
                c.closer.close(reason.clone());
            }
        }
    }

    /// Lets the hub keep awareness states in `rooms` (presence mirrors, inboxes).
    pub fn attach_rooms(&self, rooms: &Arc<Rooms>) {
        let _ = self.rooms.set(Arc::downgrade(rooms));
    }

    fn rooms(&self) -> Option<Arc<Rooms>> {
        self.rooms.get()?.upgrade()
    }

    /// The workspace `name` if it is loaded.
    fn loaded(&self, name: &str) -> Option<Arc<Workspace>> {
        self.workspaces.get(name)?.get().cloned()
    }

    /// Whether the event log's flushes are failing.
    pub fn is_failing(&self) -> bool {
        self.durability.is_failing()
    }

    /// The workspace `name`, loaded from the store on first use.
    ///
    /// # Errors
    /// The store failed.
    pub async fn workspace(&self, name: &str) -> Result<Arc<Workspace>, StoreError> {
        let cell = Arc::clone(self.workspaces.entry(name.to_owned()).or_default().value());
        cell.get_or_try_init(|| self.load(name)).await.cloned()
    }

    async fn load(&self, name: &str) -> Result<Arc<Workspace>, StoreError> {
        let released = self.store.last_id(name)?;
        let mut users = HashMap::new();
        for (user, bytes) in self.state.scan(&users_scope(name)).await? {
            let record: UserRecord = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(workspace = name, %user, error = %err, "unreadable user record; starting afresh");
                UserRecord::default()
            });
            let last_seen = record.last_seen_ms.and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            });
            users.insert(
                user,
                User {
                    muted: mask(&record.muted),
                    presence: UserPresence::offline_since(last_seen, record.name.clone()),
                    record,
                    mirrored: false,
                },
            );
        }
        Ok(Arc::new(Workspace {
            name: name.to_owned(),
            state: Mutex::new(State {
                released,
                users,
                ..State::default()
            }),
            released: watch::Sender::new(released),
        }))
    }

    /// Whether `publisher` may publish to `workspace` now; otherwise how long to wait.
    pub fn admit(&self, workspace: &str, publisher: &str) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        let key = (workspace.to_owned(), publisher.to_owned());
        self.user_rate
            .check_key(&key)
            .and_then(|()| self.workspace_rate.check_key(&key.0))
            .map_err(|not_until| not_until.wait_time_from(now))
    }

    /// Appends `event` to `workspace`'s log and, once it is durable, sends it to every
    /// interested connection. Returns its id.
    ///
    /// # Errors
    /// The store refused the append, or the group commit did not happen in time (the event may
    /// still go out once it does).
    pub async fn publish(
        self: &Arc<Self>,
        workspace: &str,
        event: Event,
    ) -> Result<u64, PublishError> {
        let ws = self.workspace(workspace).await?;
        let (id, ticket) = {
            let mut st = ws.lock();
            self.append(&ws, &mut st, event)?
        };
        self.settle(&ws, ticket).await?;
        Ok(id)
    }

    /// Appends with the workspace locked: the id, the `pending` order and the badges agree.
    fn append(
        &self,
        ws: &Workspace,
        st: &mut State,
        mut event: Event,
    ) -> Result<(u64, Ticket), StoreError> {
        let published = Instant::now();
        let (at_ms, timestamp) = now_wall();
        event
            .fields
            .insert("timestamp".into(), Value::String(timestamp));
        let body = Value::Object(std::mem::take(&mut event.fields)).to_string();
        let id = self.store.append(&ws.name, at_ms, body.as_bytes())?;
        let badge_users = if event.kind == "new_chat_message" {
            serde_json::from_str::<Map<String, Value>>(&body)
                .map(|fields| self.raise_badges(ws, st, &fields, &event.user_ids))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let frame = frame_with_id(id, body.as_bytes()).unwrap_or_default();
        let ticket = self.durability.appended();
        st.pending.push_back(Pending {
            ticket,
            event: Arc::new(Delivered {
                id,
                type_index: events::type_index(event.kind).unwrap_or(0),
                channel: event.channel,
                user_ids: event.user_ids,
                frame: frame.into(),
                published: Some(published),
                remaining: Default::default(),
            }),
            badge_users,
        });
        Ok((id, ticket))
    }

    /// Appends one of the server's own events; a failure is logged (the state it reports is
    /// still right in memory, and the next change reports it again).
    fn emit(&self, ws: &Workspace, st: &mut State, event: Event) -> Option<Ticket> {
        let kind = event.kind;
        match self.append(ws, st, event) {
            Ok((_, ticket)) => Some(ticket),
            Err(err) => {
                tracing::error!(workspace = %ws.name, kind, error = %err, "could not log a server event");
                None
            }
        }
    }

    /// Waits for `ticket`'s group commit and releases what is durable.
    async fn settle(&self, ws: &Workspace, ticket: Ticket) -> Result<(), DurabilityError> {
        let waited = self
            .durability
            .wait(ticket, self.settings.durability_timeout)
            .await;
        self.release(ws);
        waited
    }

    /// [`Hub::settle`] in a task of its own, for events emitted where nobody waits.
    fn settle_later(self: &Arc<Self>, ws: &Arc<Workspace>, ticket: Option<Ticket>) {
        let Some(ticket) = ticket else { return };
        let (hub, ws) = (Arc::clone(self), Arc::clone(ws));
        tokio::spawn(async move {
            if let Err(err) = hub.settle(&ws, ticket).await {
                tracing::error!(workspace = %ws.name, error = %err, "server events not flushed");
            }
        });
    }

    /// Sends every durable event at the front of `pending`, in order.
    fn release(&self, ws: &Workspace) {
        let durable = self.durability.durable();
        let mut st = ws.lock();
        let mut last = None;
        let mut inboxes = Vec::new();
        while st.pending.front().is_some_and(|p| p.ticket <= durable) {
            let Some(pending) = st.pending.pop_front() else {
                break;
            };
            st.fan_out(&pending.event);
            for user in &pending.badge_users {
                st.push_badges(user);
                inboxes.push(user.clone());
            }
            for user in &pending.event.user_ids {
                if let Some(entry) = st.users.get_mut(user) {
                    if entry.muted & (1 << pending.event.type_index) != 0 {
                        continue;
                    }
                    let kept = &mut entry.record.notifications;
                    kept.push_back(pending.event.frame.as_str().to_owned());
                    while kept.len() > INBOX_NOTIFICATIONS {
                        kept.pop_front();
                    }
                    let record = entry.record.clone();
                    self.save(ws, user, &record);
                    inboxes.push(user.clone());
                }
            }
            last = Some(pending.event.id);
        }
        inboxes.sort();
        inboxes.dedup();
        for user in inboxes {
            self.sync_inbox(ws, &st, &user);
        }
        if let Some(id) = last {
            st.released = id;
            ws.released.send_replace(id);
        }
    }

    /// Raises the unread count of `new_chat_message`'s session for its recipients: the users it
    /// names, or everyone known in the workspace; never its sender.
    fn raise_badges(
        &self,
        ws: &Workspace,
        st: &mut State,
        fields: &Map<String, Value>,
        user_ids: &[String],
    ) -> Vec<String> {
        let Some(session) = fields.get("session_id").and_then(events::id_text) else {
            return Vec::new();
        };
        let sender = fields.get("sender").and_then(events::id_text);
        let recipients: Vec<String> = if user_ids.is_empty() {
            st.users.keys().cloned().collect()
        } else {
            user_ids.to_vec()
        };
        let recipients: Vec<String> = recipients
            .into_iter()
            .filter(|u| Some(u) != sender.as_ref())
            .collect();
        for user in &recipients {
            let entry = st.users.entry(user.clone()).or_default();
            entry
                .record
                .raise_badge(&session, self.settings.max_chat_badges);
            self.save(ws, user, &entry.record);
        }
        recipients
    }

    /// Writes a user's record; durable with the next group commit.
    fn save(&self, ws: &Workspace, user: &str, record: &UserRecord) {
        let bytes = match serde_json::to_vec(record) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::error!(workspace = %ws.name, %user, error = %err, "cannot encode a user record");
                return;
            }
        };
        if let Err(err) = self.state.put(&users_scope(&ws.name), user, Some(&bytes)) {
            tracing::error!(workspace = %ws.name, %user, error = %err, "cannot save a user record");
        }
    }

    /// Registers a dashboard connection.
    pub fn join(
        &self,
        ws: &Workspace,
        conn: ConnId,
        user: &str,
        name: Option<String>,
        tx: mpsc::Sender<Outgoing>,
        closer: Closer,
    ) {
        let mut st = ws.lock();
        let muted = match st.users.get(user) {
            Some(known) => known.muted,
            None => {
                // Known from now on: chat badges are kept for every user of the workspace.
                let record = UserRecord::default();
                self.save(ws, user, &record);
                self.durability.appended();
                st.users.insert(
                    user.to_owned(),
                    User {
                        record,
                        ..User::default()
                    },
                );
                0
            }
        };
        st.conns.insert(
            conn,
            Conn {
                user: user.to_owned(),
                name,
                channels: ChannelSet::default(),
                muted,
                tx,
                closer,
                held: None,
            },
        );
    }

    /// Unregisters a dashboard connection: its locks are released and its presence goes.
    pub fn leave(self: &Arc<Self>, ws: &Arc<Workspace>, conn: ConnId) {
        let mut st = ws.lock();
        let Some(gone) = st.conns.remove(&conn) else {
            return;
        };
        let mut ticket =
            self.release_locks(ws, &mut st, |_, lease| lease.conn == conn, "disconnect");
        if let Some(user) = st.users.get_mut(&gone.user) {
            user.presence.remove(&Source::Dashboard(conn));
        }
        ticket = self.presence_due(ws, &mut st, &gone.user).or(ticket);
        drop(st);
        self.settle_later(ws, ticket);
    }

    /// Adds `channels` to a connection's subscriptions; with `since`, first sends what it
    /// missed after that id (or `resync_required` when retention dropped part of it).
    ///
    /// # Errors
    /// The log could not be read.
    pub async fn subscribe(
        &self,
        ws: &Workspace,
        conn: ConnId,
        channels: ChannelSet,
        since: Option<u64>,
    ) -> Result<(), StoreError> {
        let (user, muted, tx, closer, upto, live, fresh, since) = {
            let mut st = ws.lock();
            let upto = st.released;
            let Some(c) = st.conns.get_mut(&conn) else {
                return Ok(());
            };
            let live = c.channels;
            c.channels = c.channels.union(channels);
            // Only channels that were not live yet are replayed: the others missed nothing.
            let fresh = channels.without(live);
            let since = since.filter(|_| !fresh.is_empty());
            if since.is_some() {
                c.held.get_or_insert_with(Vec::new);
            }
            let picked = (
                c.user.clone(),
                c.muted,
                c.tx.clone(),
                c.closer.clone(),
                upto,
                live,
                fresh,
                since,
            );
            if channels.contains(Channel::ChatSessions) {
                let user = picked.0.clone();
                st.push_badges_to(&user, conn);
            }
            picked
        };
        let Some(since) = since else { return Ok(()) };
        let wanted = Viewer {
            user: &user,
            channels: fresh,
            muted,
        };
        // An event addressed to the user already came through a live `notifications`.
        let delivered = Viewer {
            user: &user,
            channels: live,
            muted,
        };
        let wants = |event: &Delivered| wanted.sees(event) && !delivered.sees(event);
        let replayed = self.replay(ws, &wants, since, upto, &tx, &closer).await;
        // The held events follow the replay, whatever happened to it.
        let mut st = ws.lock();
        if let Some(c) = st.conns.get_mut(&conn) {
            for event in c.held.take().unwrap_or_default() {
                if !c.send(Outgoing::Event(Arc::clone(&event))) {
                    event.handed_over();
                }
            }
        }
        replayed
    }

    async fn replay(
        &self,
        ws: &Workspace,
        wants: &(dyn Fn(&Delivered) -> bool + Sync),
        since: u64,
        upto: u64,
        tx: &mpsc::Sender<Outgoing>,
        closer: &Closer,
    ) -> Result<(), StoreError> {
        if since > upto {
            // An id this log never gave (it was restored or wiped since): start over.
            let frame = json_frame(serde_json::json!({
                "type": "resync_required",
                "since": since,
                "oldest": self.oldest_kept(&ws.name).await?,
                "latest": upto,
            }));
            self.send_or_close(tx, Outgoing::Reply(frame), closer).await;
            return Ok(());
        }
        let mut cursor = since;
        while cursor < upto {
            let page = self.read(&ws.name, wants, cursor, upto, PAGE).await?;
            if let Some(oldest) = page.resync_from {
                let frame = json_frame(serde_json::json!({
                    "type": "resync_required",
                    "since": since,
                    "oldest": oldest,
                    "latest": upto,
                }));
                self.send_or_close(tx, Outgoing::Reply(frame), closer).await;
                return Ok(());
            }
            for event in page.events {
                if !self.send_or_close(tx, Outgoing::Event(event), closer).await {
                    return Ok(());
                }
            }
            if page.last_id <= cursor {
                break;
            }
            cursor = page.last_id;
        }
        Ok(())
    }

    /// Queues `frame`, waiting up to the lag timeout for room; a connection that has none by
    /// then is closed as too slow. True when queued.
    async fn send_or_close(
        &self,
        tx: &mpsc::Sender<Outgoing>,
        frame: Outgoing,
        closer: &Closer,
    ) -> bool {
        let sent = tx
            .send_timeout(frame, self.settings.lag_timeout)
            .await
            .is_ok();
        if !sent {
            closer.close(CloseReason::Lagging);
        }
        sent
    }

    /// Up to `limit` events after `after` (and at most `upto`) that `wants` picks.
    async fn read(
        &self,
        workspace: &str,
        wants: &(dyn Fn(&Delivered) -> bool + Sync),
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut page = Page {
            last_id: after,
            ..Page::default()
        };
        while page.events.len() < limit && page.last_id < upto {
            let events = match self.store.since(workspace, page.last_id, PAGE).await? {
                Since::Resync { oldest } => {
                    page.resync_from = Some(oldest);
                    return Ok(page);
                }
                Since::Events(events) => events,
            };
            if events.is_empty() {
                break;
            }
            for stored in events {
                if stored.id > upto || page.events.len() >= limit {
                    return Ok(page);
                }
                page.last_id = stored.id;
                match Delivered::from_stored(&stored) {
                    Some(event) if wants(&event) => page.events.push(Arc::new(event)),
                    Some(_) => {}
                    None => {
                        tracing::warn!(workspace, id = stored.id, "skipping an unreadable event")
                    }
                }
            }
        }
        Ok(page)
    }

    /// The oldest id the log still holds (the next one when it holds none).
    async fn oldest_kept(&self, workspace: &str) -> Result<u64, StoreError> {
        Ok(match self.store.since(workspace, 0, 1).await? {
            Since::Resync { oldest } => oldest,
            Since::Events(events) => match events.first() {
                Some(first) => first.id,
                None => self.store.last_id(workspace)?.saturating_add(1),
            },
        })
    }

    /// How long a user goes without activity before they count as idle.
    pub fn idle_after(&self) -> Duration {
        self.settings.presence.idle_after
    }

    /// A connection's subscriptions.
    pub fn channels(&self, ws: &Workspace, conn: ConnId) -> ChannelSet {
        ws.lock()
            .conns
            .get(&conn)
            .map_or(ChannelSet::default(), |c| c.channels)
    }

    /// Removes `channels` from a connection's subscriptions.
    pub fn unsubscribe(&self, ws: &Workspace, conn: ConnId, channels: ChannelSet) {
        if let Some(c) = ws.lock().conns.get_mut(&conn) {
            c.channels = c.channels.without(channels);
        }
    }

    /// Long-poll: the events after `since` (or, without it, after the latest) that `user` sees
    /// through `channels`, waiting up to `timeout` for the first; empty on timeout.
    ///
    /// # Errors
    /// The store failed.
    pub async fn poll(
        &self,
        workspace: &str,
        user: &str,
        channels: ChannelSet,
        since: Option<u64>,
        timeout: Duration,
    ) -> Result<Page, StoreError> {
        let ws = self.workspace(workspace).await?;
        let mut released = ws.released.subscribe();
        let muted = ws.lock().users.get(user).map_or(0, |u| u.muted);
        let viewer = Viewer {
            user,
            channels,
            muted,
        };
        let now = *released.borrow();
        if since.is_some_and(|since| since > now) {
            // An id this log never gave (it was restored or wiped since): start over.
            return Ok(Page {
                last_id: now,
                resync_from: Some(self.oldest_kept(workspace).await?),
                ..Page::default()
            });
        }
        let mut cursor = since.unwrap_or(now);
        let deadline = Instant::now() + timeout;
        loop {
            let upto = *released.borrow_and_update();
            if upto > cursor {
                let page = self
                    .read(workspace, &|e| viewer.sees(e), cursor, upto, POLL_LIMIT)
                    .await?;
                if page.resync_from.is_some() {
                    // The client reloads what it shows and goes on from the latest event: a
                    // `since` it passes on as it is told never asks for the lost part again.
                    return Ok(Page {
                        last_id: upto,
                        ..page
                    });
                }
                if !page.events.is_empty() {
                    return Ok(page);
                }
                cursor = page.last_id.max(cursor);
            }
            let changed = tokio::select! {
                _ = self.closing.cancelled() => false,
                changed = tokio::time::timeout_at(deadline, released.changed()) => {
                    matches!(changed, Ok(Ok(())))
                }
            };
            if !changed {
                return Ok(Page {
                    last_id: cursor,
                    ..Page::default()
                });
            }
        }
    }

    /// The newest `limit` activity events `user` may see, oldest first.
    ///
    /// # Errors
    /// The store failed.
    pub async fn activity(
        &self,
        workspace: &str,
        user: &str,
        limit: usize,
    ) -> Result<History, StoreError> {
        let viewer = Viewer {
            user,
            channels: ChannelSet::of(&[Channel::Activity]),
            muted: 0,
        };
        self.latest(workspace, &viewer, limit, |_| true).await
    }

    /// The newest `limit` events a dashboard lists as notifications that `user` may see (every
    /// channel but presence and activity, nothing they muted), oldest first: what a page opened
    /// later starts its list from.
    ///
    /// # Errors
    /// The store failed.
    pub async fn notifications(
        &self,
        workspace: &str,
        user: &str,
        limit: usize,
    ) -> Result<History, StoreError> {
        let muted = {
            let ws = self.workspace(workspace).await?;
            let st = ws.lock();
            st.users.get(user).map_or(0, |u| u.muted)
        };
        let channels: Vec<Channel> = Channel::ALL
            .into_iter()
            .filter(|c| !matches!(c, Channel::Presence | Channel::Activity))
            .collect();
        let viewer = Viewer {
            user,
            channels: ChannelSet::of(&channels),
            muted,
        };
        // One addressed to the user comes through `notifications` whatever its channel: an
        // activity event is still activity.
        let notice =
            |event: &Delivered| !matches!(event.channel, Channel::Presence | Channel::Activity);
        self.latest(workspace, &viewer, limit, notice).await
    }

    /// The newest `limit` events `viewer` sees and `keep` takes, oldest first, looking a
    /// bounded way back from the last released event.
    async fn latest(
        &self,
        workspace: &str,
        viewer: &Viewer<'_>,
        limit: usize,
        keep: impl Fn(&Delivered) -> bool,
    ) -> Result<History, StoreError> {
        // Events written but not yet released would come live too, after this answer.
        let last_id = self.workspace(workspace).await?.lock().released;
        let mut found = Vec::new();
        let mut before = last_id.saturating_add(1);
        // What is looked for may be sparse in a busy log: look this far back at most.
        let mut pages = ACTIVITY_SCAN_PAGES;
        while found.len() < limit && pages > 0 {
            pages -= 1;
            let events = self.store.before(workspace, before, PAGE).await?;
            let Some(oldest) = events.first() else { break };
            before = oldest.id;
            for stored in events.iter().rev() {
                if let Some(event) = Delivered::from_stored(stored) {
                    if viewer.sees(&event) && keep(&event) && found.len() < limit {
                        found.push(event.frame);
                    }
                }
            }
        }
        found.reverse();
        Ok(History {
            events: found,
            last_id,
        })
    }

    /// Clears a user's unread count for a chat session and pushes the new counts.
    pub fn mark_read(&self, ws: &Workspace, user: &str, session: &str) {
        let mut st = ws.lock();
        let Some(entry) = st.users.get_mut(user) else {
            return;
        };
        if entry.record.badges.remove(session).is_none() {
            return;
        }
        entry.record.badge_order.retain(|s| s != session);
        let record = entry.record.clone();
        self.save(ws, user, &record);
        self.durability.appended();
        st.push_badges(user);
        self.sync_inbox(ws, &st, user);
    }

    /// Writes `user`'s inbox state (latest notifications, chat badges) into their inbox room.
    fn sync_inbox(&self, ws: &Workspace, st: &State, user: &str) {
        let (Some(rooms), Some(entry)) = (self.rooms(), st.users.get(user)) else {
            return;
        };
        let Ok(name) = DocName::inbox(&ws.name, user) else {
            return;
        };
        let notifications: Vec<Value> = entry
            .record
            .notifications
            .iter()
            .filter_map(|frame| serde_json::from_str(frame).ok())
            .collect();
        let mut badges = badges_value(Some(&entry.record.badges));
        if let Some(fields) = badges.as_object_mut() {
            fields.remove("type");
        }
        let state = serde_json::json!({
            "user_id": user_id_value(user),
            "notifications": notifications,
            "chat_badges": badges,
        });
        rooms.set_server_awareness(&name, INBOX_CLIENT, Some(Arc::from(state.to_string())));
    }

    /// What a document's awareness said, from a room: presence in the presence room, "who is
    /// editing" in any other document.
    fn on_awareness(
        self: &Arc<Self>,
        ws: &Arc<Workspace>,
        doc: &DocName,
        user: &str,
        changes: Vec<AwarenessChange>,
    ) {
        match doc.kind() {
            RoomKind::Presence => {
                for change in changes {
                    let source = Source::Awareness {
                        client: change.client,
                    };
                    // A client id belongs to whoever announced it last (a reconnect may move it
                    // to another connection, even of another token).
                    let moved_from = {
                        let mut st = ws.lock();
                        match &change.state {
                            Some(_) => st
                                .presence_clients
                                .insert(change.client, user.to_owned())
                                .filter(|old| old != user),
                            None => {
                                st.presence_clients.remove(&change.client);
                                None
                            }
                        }
                    };
                    if let Some(old) = moved_from {
                        self.presence_gone(ws, &old, &source);
                    }
                    let update = change.state.as_deref().map(presence::from_awareness);
                    match update {
                        Some(update) if update.status != Some(PresenceStatus::Offline) => {
                            self.presence(ws, user, source, &update, change.changed);
                        }
                        _ => self.presence_gone(ws, user, &source),
                    }
                }
            }
            RoomKind::Inbox { .. } => {}
            RoomKind::Document => {
                let now = Instant::now();
                let mut st = ws.lock();
                let entry = st.editing.entry(doc.as_str().to_owned()).or_default();
                for change in changes {
                    let key = change.client;
                    let Some(state) = change.state else {
                        entry.clients.remove(&key);
                        continue;
                    };
                    let name = presence::from_awareness(&state).name;
                    let editor = entry.clients.entry(key).or_insert_with(|| Editor {
                        user: user.to_owned(),
                        name: None,
                        last_change: now,
                    });
                    if editor.user != user {
                        // The id moved to another user's connection.
                        *editor = Editor {
                            user: user.to_owned(),
                            name: None,
                            last_change: now,
                        };
                    }
                    if change.changed {
                        editor.last_change = now;
                    }
                    if name.is_some() {
                        editor.name = name;
                    }
                }
                let ticket = self.editing_due(ws, &mut st, doc.as_str(), now);
                drop(st);
                self.settle_later(ws, ticket);
            }
        }
    }

    /// Publishes who is in `doc` and active there, when that changed: `{"type":"editing",
    /// "document":..., "query_id":..., "users":[{"user_id":..,"name":..,"active":..}]}`.
    fn editing_due(
        &self,
        ws: &Workspace,
        st: &mut State,
        doc: &str,
        now: Instant,
    ) -> Option<Ticket> {
        let entry = st.editing.get_mut(doc)?;
        let (summary, fields) = editing_fields(doc, entry, now, self.settings.editing_idle);
        if summary == entry.published {
            if entry.clients.is_empty() {
                st.editing.remove(doc);
            }
            return None;
        }
        let gone = entry.clients.is_empty();
        entry.published = summary;
        if gone {
            st.editing.remove(doc);
        }
        self.emit(ws, st, Event::server("editing", fields))
    }

    /// Who is in each document of the workspace now, as the fields of `editing` events: what a
    /// dashboard opened later starts from.
    ///
    /// # Errors
    /// The store failed loading the workspace.
    pub async fn editing_now(&self, workspace: &str) -> Result<Vec<Value>, StoreError> {
        let ws = self.workspace(workspace).await?;
        let st = ws.lock();
        let now = Instant::now();
        let mut docs: Vec<(&String, &DocEditing)> = st
            .editing
            .iter()
            .filter(|(_, entry)| !entry.clients.is_empty())
            .collect();
        docs.sort_by_key(|(doc, _)| *doc);
        Ok(docs
            .into_iter()
            .map(|(doc, entry)| {
                Value::Object(editing_fields(doc, entry, now, self.settings.editing_idle).1)
            })
            .collect())
    }

    /// A user's chat badges as pushed: `{"type":"chat_badges","unread":{...},"total":N}`.
    pub fn badges(&self, ws: &Workspace, user: &str) -> Value {
        let st = ws.lock();
        badges_value(st.users.get(user).map(|u| &u.record.badges))
    }

    /// Takes or renews the lock on `resource` for `conn`.
    pub fn lock(self: &Arc<Self>, ws: &Arc<Workspace>, conn: ConnId, resource: &str) -> Utf8Bytes {
        let now = Instant::now();
        let mut st = ws.lock();
        let Some(c) = st.conns.get(&conn) else {
            return json_frame(serde_json::json!({"type": "lock_denied", "resource": resource}));
        };
        let (user, name) = (c.user.clone(), c.name.clone());
        let held = st.locks.values().filter(|l| l.conn == conn).count();
        let renewal = st.locks.get(resource).is_some_and(|l| l.conn == conn);
        if !renewal && held >= self.settings.max_locks_per_connection {
            let error = ProtocolError::new(
                "too_many_locks",
                format!(
                    "a connection may hold at most {} locks",
                    self.settings.max_locks_per_connection
                ),
            );
            return error.frame().into();
        }
        let mut ticket = None;
        if let Some(lease) = st.locks.get(resource) {
            if lease.conn != conn && lease.expires <= now {
                // Expired but not yet swept: its holder hears it went before it changes hands.
                let holder = lease.conn;
                ticket = self.release_locks(ws, &mut st, |r, _| r == resource, "expired");
                if let Some(c) = st.conns.get(&holder) {
                    c.send(Outgoing::Reply(json_frame(serde_json::json!({
                        "type": "lock_released",
                        "resource": resource,
                        "reason": "expired",
                    }))));
                }
            }
        }
        if let Some(lease) = st.locks.get(resource) {
            if lease.conn != conn && lease.expires > now {
                let mut holder = Map::new();
                holder.insert("user_id".into(), user_id_value(&lease.user));
                if let Some(name) = &lease.name {
                    holder.insert("name".into(), Value::String(name.clone()));
                }
                return json_frame(serde_json::json!({
                    "type": "lock_denied",
                    "resource": resource,
                    "holder": holder,
                    "expires_at": lease.expires_at,
                }));
            }
        }
        let expires_at =
            rfc3339(OffsetDateTime::now_utc() + self.settings.lock_ttl).unwrap_or_default();
        st.locks.insert(
            resource.to_owned(),
            Lease {
                conn,
                user: user.clone(),
                name: name.clone(),
                expires: now + self.settings.lock_ttl,
                expires_at: expires_at.clone(),
            },
        );
        let mut fields = Map::new();
        fields.insert("resource".into(), Value::String(resource.to_owned()));
        fields.insert("user_id".into(), user_id_value(&user));
        if let Some(name) = name {
            fields.insert("name".into(), Value::String(name));
        }
        fields.insert("expires_at".into(), Value::String(expires_at));
        let mut answer = fields.clone();
        answer.insert("type".into(), Value::String("lock_acquired".into()));
        answer.insert("renewed".into(), Value::Bool(renewal));
        // What a holder renews within, whatever its clock says of `expires_at`.
        let ttl_ms = u64::try_from(self.settings.lock_ttl.as_millis()).unwrap_or(u64::MAX);
        answer.insert("expires_in_ms".into(), Value::from(ttl_ms));
        if !renewal {
            ticket = self
                .emit(ws, &mut st, Event::server("lock_acquired", fields))
                .or(ticket);
        }
        drop(st);
        self.settle_later(ws, ticket);
        json_frame(Value::Object(answer))
    }

    /// Releases `conn`'s lock on `resource`.
    ///
    /// # Errors
    /// `not_locked` when nobody holds it, `not_holder` when someone else does.
    pub fn unlock(
        self: &Arc<Self>,
        ws: &Arc<Workspace>,
        conn: ConnId,
        resource: &str,
    ) -> Result<Utf8Bytes, ProtocolError> {
        let mut st = ws.lock();
        match st.locks.get(resource) {
            None => {
                return Err(ProtocolError {
                    code: "not_locked",
                    message: format!("nobody holds a lock on {resource:?}"),
                })
            }
            Some(lease) if lease.conn != conn => {
                return Err(ProtocolError {
                    code: "not_holder",
                    message: format!("the lock on {resource:?} is held by someone else"),
                })
            }
            Some(_) => {}
        }
        let ticket = self.release_locks(ws, &mut st, |r, _| r == resource, "unlock");
        drop(st);
        self.settle_later(ws, ticket);
        Ok(json_frame(serde_json::json!({
            "type": "lock_released",
            "resource": resource,
            "reason": "unlock",
        })))
    }

    /// Removes the leases `doomed` picks and emits `lock_released` for each.
    fn release_locks(
        &self,
        ws: &Workspace,
        st: &mut State,
        doomed: impl Fn(&str, &Lease) -> bool,
        reason: &'static str,
    ) -> Option<Ticket> {
        let gone: Vec<String> = st
            .locks
            .iter()
            .filter(|(resource, lease)| doomed(resource, lease))
            .map(|(resource, _)| resource.clone())
            .collect();
        let mut ticket = None;
        for resource in gone {
            let Some(lease) = st.locks.remove(&resource) else {
                continue;
            };
            let mut fields = Map::new();
            fields.insert("resource".into(), Value::String(resource));
            fields.insert("user_id".into(), user_id_value(&lease.user));
            fields.insert("reason".into(), Value::String(reason.into()));
            ticket = self
                .emit(ws, st, Event::server("lock_released", fields))
                .or(ticket);
        }
        ticket
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

    /// Publishes `user`'s presence if it changed enough; persists `last_seen` when they go
    /// offline.
    fn presence_due(&self, ws: &Workspace, st: &mut State, user: &str) -> Option<Ticket> {
        let settings = self.settings.presence;
        let entry = st.users.get_mut(user)?;
        let direct = entry.presence.has_direct_source();
        let Some(snapshot) = entry.presence.due(Instant::now(), &settings) else {
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
        if snapshot.status != PresenceStatus::Offline && entry.record.last_seen_ms.is_none() {
            // Seen for the first time: recorded now, so that a crash before they leave still
            // lists them as offline afterwards.
            entry.record.last_seen_ms =
                i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).ok();
            entry.record.name.clone_from(&snapshot.name);
            let record = entry.record.clone();
            self.save(ws, user, &record);
        }
        if snapshot.status == PresenceStatus::Offline {
            if let Some(seen) = snapshot.last_seen {
                entry.record.last_seen_ms =
                    i64::try_from(seen.unix_timestamp_nanos() / 1_000_000).ok();
                entry.record.name.clone_from(&snapshot.name);
                let record = entry.record.clone();
                self.save(ws, user, &record);
            }
        }
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

    /// The workspace's users with their presence: online and idle ones, and with
    /// `include_offline` the others too with their `last_seen`.
    ///
    /// # Errors
    /// The store failed loading the workspace.
    pub async fn who(
        &self,
        workspace: &str,
        include_offline: bool,
    ) -> Result<Vec<Value>, StoreError> {
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
        Ok(users
            .into_iter()
            .map(|(user, snapshot)| Value::Object(snapshot.fields(&user)))
            .collect())
    }

    /// A user's notification preferences: every event type with whether it is pushed in real
    /// time.
    ///
    /// # Errors
    /// The store failed loading the workspace.
    pub async fn preferences(&self, workspace: &str, user: &str) -> Result<Value, StoreError> {
        let ws = self.workspace(workspace).await?;
        let muted = ws.lock().users.get(user).map_or(0, |u| u.muted);
        Ok(preferences_value(muted))
    }

    /// Changes some of a user's preferences (`{"realtime":{"agent_executed":false}}`) and
    /// returns them all once durable.
    ///
    /// # Errors
    /// `Err(Ok(message))` for a bad request, `Err(Err(_))` when storage failed.
    pub async fn set_preferences(
        &self,
        workspace: &str,
        user: &str,
        realtime: &Map<String, Value>,
    ) -> Result<Value, Result<String, PublishError>> {
        let mut changes = Vec::new();
        for (name, value) in realtime {
            let index = events::type_index(name).ok_or_else(|| {
                let known: Vec<_> = events::all_types().map(|(n, _)| n).collect();
                Ok(format!(
                    "unknown event type {name:?}; known types: {}",
                    known.join(", ")
                ))
            })?;
            let on = value
                .as_bool()
                .ok_or_else(|| Ok(format!("`realtime.{name}` must be true or false")))?;
            changes.push((index, on));
        }
        let ws = self
            .workspace(workspace)
            .await
            .map_err(|e| Err(PublishError::Store(e)))?;
        let muted = {
            let mut st = ws.lock();
            let entry = st.users.entry(user.to_owned()).or_default();
            for (index, on) in changes {
                if on {
                    entry.muted &= !(1 << index);
                } else {
                    entry.muted |= 1 << index;
                }
            }
            let muted = entry.muted;
            entry.record.muted = events::all_types()
                .enumerate()
                .filter(|(i, _)| muted & (1 << i) != 0)
                .map(|(_, (name, _))| name.to_owned())
                .collect();
            let record = entry.record.clone();
            self.save(&ws, user, &record);
            for c in st.conns.values_mut().filter(|c| c.user == user) {
                c.muted = muted;
            }
            muted
        };
        let ticket = self.durability.appended();
        self.durability
            .wait(ticket, self.settings.durability_timeout)
            .await
            .map_err(|e| Err(PublishError::NotDurable(e)))?;
        Ok(preferences_value(muted))
    }

    /// The workspaces loaded so far.
    fn all_loaded(&self) -> Vec<Arc<Workspace>> {
        self.workspaces
            .iter()
            .filter_map(|entry| entry.value().get().cloned())
            .collect()
    }

    /// Once a second: expires locks and presence, publishes debounced presence changes.
    pub fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        for ws in self.all_loaded() {
            let mut st = ws.lock();
            let expired: Vec<(ConnId, String)> = st
                .locks
                .iter()
                .filter(|(_, lease)| lease.expires <= now)
                .map(|(resource, lease)| (lease.conn, resource.clone()))
                .collect();
            let mut ticket =
                self.release_locks(&ws, &mut st, |_, lease| lease.expires <= now, "expired");
            for (conn, resource) in expired {
                if let Some(c) = st.conns.get(&conn) {
                    c.send(Outgoing::Reply(json_frame(serde_json::json!({
                        "type": "lock_released",
                        "resource": resource,
                        "reason": "expired",
                    }))));
                }
            }
            let users: Vec<String> = st
                .users
                .iter_mut()
                .filter(|(_, u)| u.presence.may_change())
                .map(|(user, u)| {
                    u.presence.expire(now);
                    user.clone()
                })
                .collect();
            for user in users {
                ticket = self.presence_due(&ws, &mut st, &user).or(ticket);
            }
            let docs: Vec<String> = st.editing.keys().cloned().collect();
            for doc in docs {
                ticket = self.editing_due(&ws, &mut st, &doc, now).or(ticket);
            }
            let stuck = !st.pending.is_empty();
            drop(st);
            self.settle_later(&ws, ticket);
            // A publication whose wait for its group commit timed out released nothing; what
            // became durable since goes out now, even if nothing else is published.
            if stuck {
                self.release(&ws);
            }
        }
        self.workspace_rate.retain_recent();
        self.user_rate.retain_recent();
    }

    /// Drops what retention no longer keeps.
    ///
    /// # Errors
    /// The store failed.
    pub async fn trim(&self) -> Result<usize, StoreError> {
        let (now_ms, _) = now_wall();
        self.store.trim(self.settings.retention, now_ms).await
    }
}

/// The hub as the rooms' awareness observer.
pub struct HubObserver(pub Arc<Hub>);

impl RoomObserver for HubObserver {
    fn prepare<'a>(&'a self, doc: &'a DocName) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(err) = self.0.workspace(doc.workspace()).await {
                tracing::warn!(%doc, error = %err, "could not load the workspace's dashboard state");
            }
        })
    }

    fn awareness(&self, doc: &DocName, user: &str, changes: Vec<AwarenessChange>) {
        let hub = &self.0;
        if let Some(ws) = hub.loaded(doc.workspace()) {
            hub.on_awareness(&ws, doc, user, changes);
            return;
        }
        // The first word from a workspace nobody used yet: load it first.
        let (hub, doc, user) = (Arc::clone(hub), doc.clone(), user.to_owned());
        tokio::spawn(async move {
            match hub.workspace(doc.workspace()).await {
                Ok(ws) => hub.on_awareness(&ws, &doc, &user, changes),
                Err(err) => {
                    tracing::error!(doc = %doc, error = %err, "cannot load the workspace for awareness")
                }
            }
        });
    }
}

impl State {
    fn fan_out(&mut self, event: &Arc<Delivered>) {
        // Counted first: a writer may hand the event over before this loop ends.
        let recipients = self
            .conns
            .values()
            .filter(|c| c.viewer().sees(event))
            .count();
        event
            .remaining
            .store(recipients, std::sync::atomic::Ordering::Release);
        for c in self.conns.values_mut() {
            if !c.viewer().sees(event) {
                continue;
            }
            match &mut c.held {
                Some(held) => {
                    held.push(Arc::clone(event));
                    if held.len() > c.tx.max_capacity() {
                        for dropped in c.held.take().unwrap_or_default() {
                            dropped.handed_over();
                        }
                        c.closer.close(CloseReason::Lagging);
                    }
                }
                None => {
                    if !c.send(Outgoing::Event(Arc::clone(event))) {
                        event.handed_over();
                    }
                }
            }
        }
    }

    /// Pushes `user`'s chat badges to their connections subscribed to chat sessions.
    fn push_badges(&self, user: &str) {
        let badges = badges_value(self.users.get(user).map(|u| &u.record.badges));
        let frame = json_frame(badges);
        for c in self.conns.values() {
            if c.user == user && c.channels.contains(Channel::ChatSessions) {
                c.send(Outgoing::Reply(frame.clone()));
            }
        }
    }

    fn push_badges_to(&self, user: &str, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn) {
            let badges = badges_value(self.users.get(user).map(|u| &u.record.badges));
            c.send(Outgoing::Reply(json_frame(badges)));
        }
    }
}

/// Who is in `doc` (each user once, with a name if any of their clients gave one, active if any
/// changed within `idle`): the summary to compare with what was published, and the fields of
/// an `editing` event.
fn editing_fields(
    doc: &str,
    entry: &DocEditing,
    now: Instant,
    idle: Duration,
) -> (Vec<(String, bool)>, Map<String, Value>) {
    let mut users: BTreeMap<&str, (Option<&str>, bool)> = BTreeMap::new();
    for editor in entry.clients.values() {
        let active = now.duration_since(editor.last_change) < idle;
        let seen = users.entry(&editor.user).or_insert((None, false));
        seen.0 = seen.0.or(editor.name.as_deref());
        seen.1 |= active;
    }
    let summary = users
        .iter()
        .map(|(user, (_, active))| ((*user).to_owned(), *active))
        .collect();
    let list: Vec<Value> = users
        .iter()
        .map(|(user, (name, active))| {
            let mut fields = Map::new();
            fields.insert("user_id".into(), user_id_value(user));
            if let Some(name) = name {
                fields.insert("name".into(), Value::String((*name).to_owned()));
            }
            fields.insert("active".into(), Value::Bool(*active));
            Value::Object(fields)
        })
        .collect();
    let mut fields = Map::new();
    fields.insert("document".into(), Value::String(doc.to_owned()));
    if let Some(id) = DocName::parse(doc)
        .ok()
        .as_ref()
        .and_then(DocName::query_id)
    {
        let id = id
            .parse::<u64>()
            .map_or_else(|_| Value::String(id.to_owned()), Value::from);
        fields.insert("query_id".into(), id);
    }
    fields.insert("users".into(), Value::Array(list));
    (summary, fields)
}

fn badges_value(badges: Option<&BTreeMap<String, u32>>) -> Value {
    let empty = BTreeMap::new();
    let badges = badges.unwrap_or(&empty);
    let total: u64 = badges.values().map(|n| u64::from(*n)).sum();
    serde_json::json!({ "type": "chat_badges", "unread": badges, "total": total })
}

fn preferences_value(muted: u32) -> Value {
    let realtime: Map<String, Value> = events::all_types()
        .enumerate()
        .map(|(i, (name, _))| (name.to_owned(), Value::Bool(muted & (1 << i) == 0)))
        .collect();
    serde_json::json!({ "realtime": realtime })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badges_past_the_cap_drop_the_session_whose_last_message_is_oldest() {
        let mut record = UserRecord::default();
        for session in ["a", "b", "c", "a"] {
            record.raise_badge(session, 3);
        }
        record.raise_badge("d", 3);
        // "b" had the oldest last message ("a" had one after "c").
        assert_eq!(
            record.badges,
            BTreeMap::from([("a".into(), 2), ("c".into(), 1), ("d".into(), 1)])
        );
        assert_eq!(record.badge_order, ["c", "a", "d"]);

        // A record stored before the order was kept: its sessions go first.
        let mut legacy: UserRecord = serde_json::from_str(r#"{"badges":{"x":4,"y":1}}"#).unwrap();
        legacy.raise_badge("z", 2);
        assert_eq!(legacy.badges.len(), 2);
        assert!(legacy.badges.contains_key("z"));
        assert_eq!(legacy.badge_order.len(), 2);
    }

    #[test]
    fn frames_carry_the_id_first() {
        assert_eq!(
            frame_with_id(7, br#"{"type":"x","a":1}"#).unwrap(),
            r#"{"id":7,"type":"x","a":1}"#
        );
        assert_eq!(frame_with_id(1, b"{}").unwrap(), r#"{"id":1}"#);
        assert_eq!(frame_with_id(1, b"[1]"), None);
    }

    fn delivered(kind: &str, user_ids: &[&str]) -> Delivered {
        Delivered {
            id: 1,
            type_index: events::type_index(kind).unwrap(),
            channel: events::channel_of(kind).unwrap(),
            user_ids: user_ids.iter().map(|u| u.to_string()).collect(),
            frame: "{}".into(),
            published: None,
            remaining: Default::default(),
        }
    }

    #[test]
    fn viewers_see_their_channels_their_notifications_and_nothing_muted() {
        let queries = Viewer {
            user: "1",
            channels: ChannelSet::of(&[Channel::Queries]),
            muted: 0,
        };
        assert!(queries.sees(&delivered("query_started", &[])));
        assert!(!queries.sees(&delivered("agent_executed", &[])));
        assert!(queries.sees(&delivered("query_started", &["1"])));
        assert!(!queries.sees(&delivered("query_started", &["2"])));
        let inbox = Viewer {
            user: "2",
            channels: ChannelSet::of(&[Channel::Notifications]),
            muted: 0,
        };
        assert!(inbox.sees(&delivered("agent_executed", &["2"])));
        assert!(!inbox.sees(&delivered("agent_executed", &[])));
        let muted = Viewer {
            muted: mask(&["query_started".into()]),
            ..queries
        };
        assert!(!muted.sees(&delivered("query_started", &[])));
        assert!(muted.sees(&delivered("query_completed", &[])));
    }
}
