//! The dashboard hub: per workspace ([`Workspace`]), the dashboard connections and what each
//! subscribed to, the users behind them, the advisory locks and who is editing what. This file
//! holds the hub itself, the workspaces' lifecycle, connections joining and leaving, locks,
//! what the rooms' awareness says, and the timers; the path of an event is in
//! `pipeline`, reading the log back in [`history`](super::history), and the
//! users' presence, inbox and preferences in `users`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value};
use tandem_crdt::AwarenessChange;
use tandem_storage::{EventStore, Retention, StateStore, StoreError, StoredEvent};
use time::OffsetDateTime;
use tokio::sync::{mpsc, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::catalogue::{ChannelSet, UserId};
use super::editing::Editing;
use super::locks::{Holder, LockOutcome, Locks, Released, UnlockError};
use super::preferences::Muted;
use super::presence::{self, PresenceSettings, Source, UserPresence};
use super::protocol::{PresenceStatus, ProtocolError, ServerFrame};
use super::roster::{Told, NODE_KEY};
use super::workspace::{Conn, Outgoing, State, User, UserRecord, Workspace};
use crate::config::Config;
use crate::docname::{DocName, RoomKind};
use crate::docs::{RoomObserver, Rooms};
use crate::durability::{Durability, DurabilityError, Ticket};
use crate::net::{CloseReason, Closer, ConnId};

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
    /// A workspace nobody uses is unloaded after this.
    pub workspace_idle: Duration,
}

impl HubSettings {
    /// The hub's settings of `config`.
    pub fn of(config: &Config) -> HubSettings {
        HubSettings {
            lag_timeout: config.lag_timeout(),
            durability_timeout: config.storage_timeout(),
            lock_ttl: Duration::from_millis(config.lock_ttl_ms),
            retention: Retention {
                max_events: config.event_retention_count,
                max_age_ms: config.event_retention_secs.saturating_mul(1000),
            },
            presence: PresenceSettings {
                idle_after: Duration::from_millis(config.presence_idle_ms),
                debounce: Duration::from_millis(config.presence_debounce_ms),
                poll_ttl: Duration::from_millis(config.presence_poll_ttl_ms),
            },
            publish_rate_workspace: config.publish_rate_workspace,
            publish_rate_user: config.publish_rate_user,
            editing_idle: Duration::from_millis(config.editing_idle_ms),
            max_locks_per_connection: config.max_locks_per_connection,
            max_chat_badges: config.max_chat_badges_per_user,
            workspace_idle: Duration::from_millis(config.workspace_idle_ms),
        }
    }
}

/// The other servers of a cluster, as the hub sees them (`cluster::Cluster`): told of this
/// server's released events, so the other nodes release them too.
pub trait HubBus: Send + Sync + 'static {
    /// `workspace` is about to load: whatever is published about it from now on must reach
    /// this server (so nothing committed after its log is read is missed).
    fn subscribe<'a>(&'a self, workspace: &'a str) -> BoxFuture<'a, ()>;
    /// This server's committed event `event` of `workspace` was released here. Must only queue.
    fn released(&self, workspace: &str, event: &StoredEvent);
    /// Claims the lock on `resource` of `workspace` for this server's connection `conn`, or
    /// renews it when `conn` holds it already, for `ttl`, recording `info` (the lock's JSON)
    /// as what others are told. `Ok(None)`: it is `conn`'s; `Ok(Some(info))`: someone else
    /// holds it (their lock's JSON); `Err`: the cluster cannot say (Redis is unreachable).
    fn claim<'a>(
        &'a self,
        workspace: &'a str,
        resource: &'a str,
        conn: ConnId,
        info: String,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, String>>;
    /// Lets go of the lock on `resource` of `workspace` if `conn` holds it. Must only queue.
    fn unclaim(&self, workspace: &str, resource: &str, conn: ConnId);
    /// `workspace` was unloaded here: its channel is no longer wanted, and the others are
    /// told it is gone. Must only queue.
    fn unloaded(&self, workspace: &str);
    /// This node's origin.
    fn origin(&self) -> i64;
    /// Tells the other nodes that this node's entry `key` of `workspace` is now `value`
    /// (`None`: gone; see [`roster`](super::roster)). Must only queue.
    fn tell(&self, workspace: &str, key: &str, value: Option<String>);
    /// `workspace` finished loading here: what the other nodes said of it meanwhile is read
    /// again. Must only queue.
    fn loaded(&self, workspace: &str);
    /// What every live node told of `workspace` (but this one), by origin.
    fn roster<'a>(&'a self, workspace: &'a str) -> BoxFuture<'a, Result<Vec<(i64, Told)>, String>>;
}

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
    pub(super) store: Arc<dyn EventStore>,
    /// The users' records (badges, preferences, last seen), durable with the event log.
    pub(super) state: Arc<dyn StateStore>,
    pub(super) durability: Arc<Durability>,
    workspaces: DashMap<String, Arc<OnceCell<Arc<Workspace>>>>,
    pub(super) settings: HubSettings,
    workspace_rate: DefaultKeyedRateLimiter<String>,
    user_rate: DefaultKeyedRateLimiter<(String, String)>,
    /// The rooms, for the awareness states the hub keeps in them and reads from them.
    rooms: OnceLock<Weak<Rooms>>,
    /// Cancelled at shutdown: long-polls answer at once.
    pub(super) closing: CancellationToken,
    /// The other servers of the cluster, when there are any.
    bus: OnceLock<Arc<dyn HubBus>>,
    /// Told of every event appended (webhooks listen).
    pub(super) event_hook: OnceLock<Arc<dyn EventHook>>,
}

/// Told of the events appended to a workspace's log, with the users an addressed one found
/// offline. Called with the workspace locked: cheap, what takes time is spawned.
pub trait EventHook: Send + Sync + 'static {
    /// Whether anything of `workspace` listens (when not, nothing is worked out for it).
    fn wants(&self, workspace: &str) -> bool;
    /// An event of `kind` with `fields` (as published) was appended; of the users it is
    /// addressed to, `offline` were offline.
    fn appended(
        &self,
        workspace: &str,
        kind: &str,
        fields: &Map<String, Value>,
        offline: Vec<String>,
    );
}

/// The scope of a workspace's user records in the state store.
pub(super) fn users_scope(workspace: &str) -> String {
    format!("users/{workspace}")
}

fn per_second(rate: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
}

impl Hub {
    pub fn new(
        store: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
        durability: Arc<Durability>,
        settings: HubSettings,
    ) -> Hub {
        Hub {
            workspace_rate: RateLimiter::keyed(per_second(settings.publish_rate_workspace)),
            user_rate: RateLimiter::keyed(per_second(settings.publish_rate_user)),
            store,
            state,
            durability,
            workspaces: DashMap::new(),
            settings,
            rooms: OnceLock::new(),
            closing: CancellationToken::new(),
            bus: OnceLock::new(),
            event_hook: OnceLock::new(),
        }
    }

    /// Tells `hook` of every event appended from now on (set once).
    pub fn hook_events(&self, hook: Arc<dyn EventHook>) {
        let _ = self.event_hook.set(hook);
    }

    /// Tells `bus` of this server's released events from now on (set once, before any
    /// workspace is loaded).
    pub fn connect_bus(&self, bus: Arc<dyn HubBus>) {
        let _ = self.bus.set(bus);
    }

    pub(super) fn bus(&self) -> Option<&Arc<dyn HubBus>> {
        self.bus.get()
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

    pub(super) fn rooms(&self) -> Option<Arc<Rooms>> {
        self.rooms.get()?.upgrade()
    }

    /// The workspace `name` if it is loaded.
    pub(super) fn loaded(&self, name: &str) -> Option<Arc<Workspace>> {
        self.workspaces.get(name)?.get().cloned()
    }

    /// The workspaces loaded so far.
    pub(super) fn all_loaded(&self) -> Vec<Arc<Workspace>> {
        self.workspaces
            .iter()
            .filter_map(|entry| entry.value().get().cloned())
            .collect()
    }

    /// Whether the event log's flushes are failing.
    pub fn is_failing(&self) -> bool {
        self.durability.is_failing()
    }

    /// How long a user goes without activity before they count as idle.
    pub fn idle_after(&self) -> Duration {
        self.settings.presence.idle_after
    }

    /// The workspace `name`, loaded from the store on first use.
    ///
    /// # Errors
    /// The store failed.
    pub async fn workspace(&self, name: &str) -> Result<Arc<Workspace>, StoreError> {
        let cell = Arc::clone(self.workspaces.entry(name.to_owned()).or_default().value());
        let ws = cell.get_or_try_init(|| self.load(name)).await.cloned()?;
        ws.touch();
        Ok(ws)
    }

    async fn load(&self, name: &str) -> Result<Arc<Workspace>, StoreError> {
        let mut told = Vec::new();
        if let Some(bus) = self.bus.get() {
            // Before the log is read: an event committed after it is then heard of.
            bus.subscribe(name).await;
            // Likewise what the other nodes tell of it: a message missed in between shows
            // as a gap.
            told = bus.roster(name).await.unwrap_or_else(|err| {
                tracing::warn!(workspace = name, error = %err, "cannot read what the other nodes say of the workspace; reading it again once loaded");
                Vec::new()
            });
        }
        let released = self.store.last_id(name).await?;
        // The checkpoint before the records: the records are at least as new.
        let checkpoint = self.checkpoint(name).await?;
        let mut users = HashMap::new();
        for (user, bytes) in self.stored_records(name).await? {
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
                    known: true,
                    muted: Muted::of(&record.muted),
                    presence: UserPresence::offline_since(last_seen, record.name.clone()),
                    record,
                    mirrored: false,
                },
            );
        }
        let settings = &self.settings;
        let ws = Arc::new(Workspace::new(
            name,
            released,
            users,
            Locks::new(settings.lock_ttl, settings.max_locks_per_connection),
            Editing::new(settings.editing_idle),
        ));
        // What the last releases changed may not all have been flushed when the records were
        // read: applied again from the checkpoint. Without one, from the start, but records
        // from before checkpoints (none has seen an event) are as new as the log.
        let legacy = {
            let st = ws.lock();
            !st.users.is_empty() && st.users.values().all(|u| u.record.through == 0)
        };
        let from = match checkpoint {
            Some(checkpoint) => checkpoint,
            None if legacy => released,
            None => 0,
        };
        self.replay_records(&ws, from, released).await?;
        {
            // Everyone is offline, since when the records (replayed) say.
            let mut st = ws.lock();
            for entry in st.users.values_mut() {
                let last_seen = entry.record.last_seen_ms.and_then(|ms| {
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                });
                entry.presence = UserPresence::offline_since(last_seen, entry.record.name.clone());
            }
        }
        if let Some(bus) = self.bus.get() {
            let mut st = ws.lock();
            for (origin, changes) in st.roster.reread(told) {
                // Said already, by whichever node spoke for the workspace.
                self.apply_told(&ws, &mut st, origin, changes, false);
            }
            bus.tell(name, NODE_KEY, Some("1".to_owned()));
            bus.loaded(name);
        }
        Ok(ws)
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

    /// Registers a dashboard connection.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &self,
        ws: &Workspace,
        conn: ConnId,
        user: &str,
        name: Option<String>,
        docs: Option<Vec<(String, crate::auth::DocPermission)>>,
        tx: mpsc::Sender<Outgoing>,
        closer: Closer,
    ) {
        let mut st = ws.lock();
        // A user seen for the first time has a record once their presence is said (`records`).
        let muted = st
            .users
            .get(user)
            .map_or(Muted::default(), |known| known.muted);
        st.conns.insert(
            conn,
            Conn {
                user: user.to_owned(),
                name,
                channels: ChannelSet::default(),
                muted,
                docs,
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
        let released = st.locks.release_all_of(conn);
        let mut ticket = self.lock_released(ws, &mut st, released, "disconnect", false);
        if let Some(user) = st.users.get_mut(&gone.user) {
            user.presence.remove(&Source::Dashboard(conn));
        }
        ticket = self.presence_due(ws, &mut st, &gone.user).or(ticket);
        drop(st);
        self.settle_later(ws, ticket);
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

    /// Takes or renews the lock on `resource` for `conn`: the frame that answers it. In a
    /// cluster the lock is claimed cluster-wide first (one holder across every node).
    pub async fn lock(
        self: &Arc<Self>,
        ws: &Arc<Workspace>,
        conn: ConnId,
        resource: &str,
    ) -> Utf8Bytes {
        if let Some(bus) = self.bus() {
            let claim = {
                let st = ws.lock();
                let Some(c) = st.conns.get(&conn) else {
                    return lock_denied(resource, None);
                };
                let holder = Holder {
                    user_id: UserId(c.user.clone()),
                    name: c.name.clone(),
                };
                match st.locks.preview(
                    conn,
                    holder,
                    resource,
                    Instant::now(),
                    OffsetDateTime::now_utc(),
                ) {
                    Some(info) => serde_json::to_string(&info).unwrap_or_default(),
                    // Held here by another connection, or too many: answered as always.
                    None => String::new(),
                }
            };
            if !claim.is_empty() {
                let ttl = self.settings.lock_ttl;
                match bus.claim(&ws.name, resource, conn, claim, ttl).await {
                    Ok(None) => {
                        let (frame, acquired) = self.lock_here(ws, conn, resource);
                        if !acquired {
                            // Gone, or took too many meanwhile: the claim is nobody's.
                            bus.unclaim(&ws.name, resource, conn);
                        }
                        return frame;
                    }
                    Ok(Some(held)) => return self.denied_elsewhere(ws, conn, resource, &held),
                    Err(err) => {
                        tracing::warn!(workspace = %ws.name, resource, error = %err, "cannot claim a lock");
                        return ProtocolError::new(
                            "locks_unavailable",
                            "locks cannot be taken right now; try again shortly",
                        )
                        .frame();
                    }
                }
            }
        }
        self.lock_here(ws, conn, resource).0
    }

    /// Someone on another node holds `resource` (`held`: their lock's JSON): `conn` is told,
    /// and loses it here if it thought it still held it (its lease lapsed in between).
    fn denied_elsewhere(
        self: &Arc<Self>,
        ws: &Arc<Workspace>,
        conn: ConnId,
        resource: &str,
        held: &str,
    ) -> Utf8Bytes {
        let mut st = ws.lock();
        let lost = st.locks.release(conn, resource).ok();
        let ticket = self.lock_released(ws, &mut st, lost.into_iter().collect(), "expired", false);
        drop(st);
        self.settle_later(ws, ticket);
        let held: Option<super::locks::LockInfo> = serde_json::from_str(held).ok();
        match &held {
            Some(info) => ServerFrame::LockDenied {
                resource,
                holder: Some(&info.holder),
                expires_at: Some(&info.expires_at),
            }
            .text(),
            None => lock_denied(resource, None),
        }
    }

    /// Takes or renews the lock on `resource` for `conn` in this node's state: the frame
    /// that answers it, and whether `conn` holds the lock now.
    fn lock_here(
        self: &Arc<Self>,
        ws: &Arc<Workspace>,
        conn: ConnId,
        resource: &str,
    ) -> (Utf8Bytes, bool) {
        let mut st = ws.lock();
        let Some(c) = st.conns.get(&conn) else {
            return (lock_denied(resource, None), false);
        };
        let holder = Holder {
            user_id: UserId(c.user.clone()),
            name: c.name.clone(),
        };
        let outcome = st.locks.acquire(
            conn,
            holder,
            resource,
            Instant::now(),
            OffsetDateTime::now_utc(),
        );
        let acquired = matches!(outcome, LockOutcome::Acquired { .. });
        let (frame, ticket) = match outcome {
            LockOutcome::TooMany { limit } => {
                let error = ProtocolError::new(
                    "too_many_locks",
                    format!("a connection may hold at most {limit} locks"),
                );
                (error.frame(), None)
            }
            LockOutcome::Denied(held) => {
                let frame = ServerFrame::LockDenied {
                    resource,
                    holder: Some(&held.holder),
                    expires_at: Some(&held.expires_at),
                };
                (frame.text(), None)
            }
            LockOutcome::Acquired {
                lock,
                renewed,
                lapsed,
            } => {
                let mut ticket =
                    self.lock_released(ws, &mut st, lapsed.into_iter().collect(), "expired", true);
                if !renewed {
                    ticket = self.emit(ws, &mut st, lock.acquired_event()).or(ticket);
                }
                let ttl = st.locks.ttl();
                let frame = ServerFrame::LockAcquired {
                    lock: &lock,
                    renewed,
                    expires_in_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                };
                (frame.text(), ticket)
            }
        };
        drop(st);
        self.settle_later(ws, ticket);
        (frame, acquired)
    }

    /// Releases `conn`'s lock on `resource`: the frame that answers it.
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
        let released = st.locks.release(conn, resource).map_err(|err| match err {
            UnlockError::NotLocked => {
                ProtocolError::new("not_locked", format!("nobody holds a lock on {resource:?}"))
            }
            UnlockError::NotHolder => ProtocolError::new(
                "not_holder",
                format!("the lock on {resource:?} is held by someone else"),
            ),
        })?;
        let ticket = self.lock_released(ws, &mut st, vec![released], "unlock", false);
        drop(st);
        self.settle_later(ws, ticket);
        let frame = ServerFrame::LockReleased {
            resource,
            reason: "unlock",
        };
        Ok(frame.text())
    }

    /// Emits `lock_released` for each of `released`, for `reason`; with `tell_holder`, its
    /// holder's connection hears it went too.
    fn lock_released(
        &self,
        ws: &Workspace,
        st: &mut State,
        released: Vec<Released>,
        reason: &'static str,
        tell_holder: bool,
    ) -> Option<Ticket> {
        let mut ticket = None;
        for lock in released {
            if let Some(bus) = self.bus() {
                bus.unclaim(&ws.name, &lock.resource, lock.conn);
            }
            ticket = self.emit(ws, st, lock.event(reason)).or(ticket);
            if let Some(c) = st.conns.get(&lock.conn).filter(|_| tell_holder) {
                let frame = ServerFrame::LockReleased {
                    resource: &lock.resource,
                    reason,
                };
                c.send(Outgoing::Reply(frame.text()));
            }
        }
        ticket
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
                let mut st = ws.lock();
                let news = st
                    .editing
                    .apply(doc.as_str(), user, changes, Instant::now());
                self.tell_editing(ws, &mut st);
                let ticket = news
                    .filter(|_| self.speaks(&st))
                    .and_then(|editors| self.emit(ws, &mut st, editors.event()));
                drop(st);
                self.settle_later(ws, ticket);
            }
        }
    }

    /// Who is in each document of the workspace now: what a dashboard opened later starts
    /// from.
    ///
    /// # Errors
    /// The store failed loading the workspace.
    pub async fn editing_now(
        &self,
        workspace: &str,
    ) -> Result<Vec<super::editing::Editors>, StoreError> {
        let ws = self.workspace(workspace).await?;
        let st = ws.lock();
        Ok(st.editing.now(Instant::now()))
    }

    /// Once a second: expires locks and presence, publishes debounced presence changes and
    /// who turned inactive in a document.
    pub fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        for ws in self.all_loaded() {
            let mut st = ws.lock();
            let expired = st.locks.expire(now);
            let mut ticket = self.lock_released(&ws, &mut st, expired, "expired", true);
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
            let speaks = self.speaks(&st);
            for editors in st.editing.tick(now) {
                if speaks {
                    ticket = self.emit(&ws, &mut st, editors.event()).or(ticket);
                }
            }
            self.tell_editing(&ws, &mut st);
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
        self.unload_idle();
    }

    /// Unloads the workspaces nobody used for `workspace_idle`: no connection, nobody present
    /// here or on another node, no lock, nothing waiting for its commit or its turn, and no
    /// one else holding it (a long-poll, a session starting).
    fn unload_idle(&self) {
        let idle = self.settings.workspace_idle;
        let quiet = |ws: &Workspace| {
            // Never waits for the workspace's lock here (the map's is held): a busy one is
            // not idle.
            let Ok(st) = ws.try_lock() else { return false };
            st.conns.is_empty()
                && st.pending.is_empty()
                && st.ready.is_empty()
                && st.locks.is_empty()
                && st.editing.is_empty()
                && !st.roster.has_users()
                && st.users.values().all(|u| !u.presence.is_connected())
        };
        let mut unloaded = Vec::new();
        self.workspaces.retain(|name, cell| {
            let Some(ws) = cell.get() else { return true };
            // The map's own reference (in the cell) is the only one: no session, long-poll or
            // task holds it.
            let idle = Arc::strong_count(ws) == 1 && ws.idle_for() >= idle && quiet(ws);
            if idle {
                unloaded.push(name.clone());
            }
            !idle
        });
        for name in unloaded {
            tracing::debug!(workspace = %name, "unloaded an idle workspace");
            if let Some(bus) = self.bus() {
                bus.unloaded(&name);
            }
        }
        crate::metrics::get()
            .workspaces_loaded
            .set(self.workspaces.len() as f64);
    }

    /// Drops what retention no longer keeps.
    ///
    /// # Errors
    /// The store failed.
    pub async fn trim(&self) -> Result<usize, StoreError> {
        self.store
            .trim(self.settings.retention, crate::clock::now_ms())
            .await
    }
}

/// `lock_denied` for `resource`, naming no holder.
fn lock_denied(resource: &str, holder: Option<&Holder>) -> Utf8Bytes {
    ServerFrame::LockDenied {
        resource,
        holder,
        expires_at: None,
    }
    .text()
}

/// The hub as the rooms' awareness observer.
pub struct HubObserver(pub Arc<Hub>);

impl RoomObserver for HubObserver {
    fn prepare<'a>(&'a self, doc: &'a DocName) -> BoxFuture<'a, ()> {
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
