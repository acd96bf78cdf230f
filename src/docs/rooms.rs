//! [`Rooms`]: the registry of loaded rooms, one [`tandem_crdt::Room`] per open document, with its
//! peers (connections and HTTP pollers); joining, receiving, leaving, the server's own edits,
//! reads, and the delivery of what a room hands back.
//!
//! Locking: the registry is a `DashMap` used only through its entry API, so a room is created
//! exactly once; loading happens in the room's `OnceCell`, so concurrent joiners of a cold room
//! all wait for the one load and the first step 2 anyone gets holds the stored document. Each
//! room's state sits behind a `std::sync::Mutex` that is never held across an `.await`; inside
//! it an update is applied, appended to the log and queued for every peer, so the log order, the
//! broadcast order and a joiner's snapshot all agree. Queuing is `try_send` into bounded
//! per-connection queues: no socket is written under the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use dashmap::{DashMap, DashSet};
use futures_util::future::BoxFuture;
use serde::Serialize;
use tandem_crdt::{Access, Any, AwarenessChange, Departure, Outbox, PeerId, Room, RoomError};
use tandem_storage::{DocStore, Seq, StoreError, VersionStore};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::docname::DocName;
use crate::durability::{Durability, DurabilityError, Ticket};
use crate::net::CloseReason;

use super::delivery::{deliver, Outgoing, Overflow, PeerLink};

/// Why a room operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RoomOpError {
    #[error(transparent)]
    Room(#[from] RoomError),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

/// Told of documents' changes and versions (webhooks listen). Called outside any room's lock;
/// cheap: what takes time is spawned.
pub trait DocHooks: Send + Sync + 'static {
    /// `doc` changed, by `author` (`None`: the server itself).
    fn changed(&self, doc: &DocName, author: Option<&str>);
    /// A version of `doc` was stored.
    fn version_created(&self, doc: &DocName, version: &tandem_storage::Version);
    /// `doc` was restored to version `id` by `user`.
    fn restored(&self, doc: &DocName, id: u64, user: &str, restored: &super::Restored);
}

/// Told what happens in rooms' awareness: the dashboard derives presence and "who is editing"
/// from it. Called outside any room's lock.
pub trait RoomObserver: Send + Sync + 'static {
    /// A connection of `user` changed awareness clients of `doc` (a `None` state: removed,
    /// which is also what the clients of a departing connection, or of a discarded room, get).
    /// A client id that moves to another connection (a reconnect) is reported again from
    /// there: observers key clients by id within the document.
    fn awareness(&self, doc: &DocName, user: &str, changes: Vec<AwarenessChange>);

    /// A connection is about to join `doc`: whatever must be ready before its first awareness
    /// frame is reported (the dashboard loads the document's workspace) is made ready.
    fn prepare<'a>(&'a self, doc: &'a DocName) -> BoxFuture<'a, ()>;
}

/// The other servers of a cluster, as the rooms see them: told what happens in this server's
/// rooms, so the rooms of the same documents elsewhere hear it (`cluster::Bus`). Called
/// outside any room's lock, except [`RoomBus::updated`], [`RoomBus::awareness`] and
/// [`RoomBus::left`], which must only queue.
pub trait RoomBus: Send + Sync + 'static {
    /// `doc` is about to be read from storage for a load: whatever is published about it from
    /// now on must reach this server (so nothing committed after the read is missed).
    fn subscribe<'a>(&'a self, doc: &'a DocName) -> BoxFuture<'a, ()>;
    /// `doc` was unloaded: nothing more about it is needed.
    fn unsubscribe(&self, doc: &DocName);
    /// An update of `doc` was appended to the store at `seq`; it is committed once `ticket`
    /// is durable, and only then may others hear of it.
    fn updated(&self, doc: &DocName, seq: Seq, update: Bytes, ticket: Ticket);
    /// An awareness frame from this server's `peer` (of `user`) in `doc`.
    fn awareness(&self, doc: &DocName, peer: PeerId, user: &str, frame: Bytes);
    /// This server's `peer` left `doc`; its awareness clients go with it.
    fn left(&self, doc: &DocName, peer: PeerId);
    /// A Hocuspocus stateless message (`body`: its type and payload) for `doc`'s clients.
    fn stateless(&self, doc: &DocName, body: Bytes);
}

/// What the admin API says of a loaded room.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary {
    pub document: String,
    /// Connections in the room.
    pub clients: usize,
    /// HTTP pollers in the room.
    pub pollers: usize,
    /// Clients with a live awareness state.
    pub awareness_clients: usize,
    /// The document's stored size: its last snapshot plus the updates applied since.
    pub bytes: usize,
    pub updates_since_snapshot: usize,
    pub bytes_since_snapshot: usize,
}

/// All loaded rooms.
pub struct Rooms {
    pub(super) map: DashMap<DocName, Arc<RoomHandle>>,
    /// Bounds how many compactions run at once (`--compaction-concurrency`).
    pub(super) compactions: tokio::sync::Semaphore,
    pub(super) store: Arc<dyn DocStore>,
    pub(super) durability: Arc<Durability>,
    pub(super) config: Arc<Config>,
    pub(super) tasks: TaskTracker,
    pub(super) shutdown: CancellationToken,
    pub(super) observer: OnceLock<Arc<dyn RoomObserver>>,
    /// Awareness states the server keeps in rooms (presence mirrors, inboxes), by document and
    /// client id: set in the room when it is loaded, and again whenever it loads later.
    pub(super) server_awareness: DashMap<DocName, HashMap<u64, Arc<str>>>,
    /// The loaded rooms that have HTTP pollers, for the sweep that lets lapsed ones go.
    pub(super) polled: DashSet<DocName>,
    /// The other servers of the cluster, when there are any.
    pub(super) bus: OnceLock<Arc<dyn RoomBus>>,
    /// Peer ids for the mirrors of other servers' peers, above every connection's.
    pub(super) next_mirror: std::sync::atomic::AtomicU64,
    /// Documents' version history.
    pub(super) versions: Arc<dyn VersionStore>,
    /// Documents with changes no version holds yet, and who made them.
    pub(super) unversioned: DashMap<DocName, super::versions::Unversioned>,
    /// Documents whose scheduled version is being taken.
    pub(super) versioning: DashSet<DocName>,
    /// Documents being restored: one restore at a time each.
    pub(super) restoring: DashSet<DocName>,
    /// Told of changes and versions.
    pub(super) hooks: OnceLock<Arc<dyn DocHooks>>,
}

/// A client syncing over HTTP.
pub(super) struct Poller {
    pub(super) peer: PeerId,
    pub(super) expires: Instant,
    /// Its user's hold on the document, under the cap on documents per user.
    pub(super) _hold: Option<crate::net::registry::DocHold>,
}

/// One document's room. Its state is loaded once, on first use.
pub struct RoomHandle {
    pub(super) name: DocName,
    pub(super) state: OnceCell<Mutex<RoomState>>,
}

pub(super) struct RoomState {
    pub(super) room: Room,
    pub(super) peers: HashMap<PeerId, PeerLink>,
    /// Clients that sync over HTTP instead of a connection, by user and client id. Each is a
    /// peer of the room (owning its awareness) until it has not polled for the poll TTL.
    pub(super) pollers: HashMap<(Arc<str>, u64), Poller>,
    /// Set when the room was unloaded or poisoned: whoever still holds the handle must look the
    /// document up again.
    pub(super) closed: bool,
    /// The sequence number of the last update appended for this document.
    pub(super) last_seq: Seq,
    /// Updates and bytes appended since the last snapshot.
    pub(super) log_updates: usize,
    pub(super) log_bytes: usize,
    pub(super) compacting: bool,
    /// Per server of the cluster (its origin id): the sequence number of its newest update
    /// this room holds, to tell a lost message from the next one.
    pub(super) remote_seqs: HashMap<i64, u64>,
    /// Other servers' peers of this document, mirrored here so their awareness is owned and
    /// removed as theirs: (origin, their peer id) → our peer id, their user, and when they
    /// were last heard of.
    pub(super) mirrors: HashMap<(i64, u64), (PeerId, Arc<str>, std::time::Instant)>,
    /// Whether an unload timer is running for this room.
    pub(super) unload_pending: bool,
    /// Bumped whenever the room is used, so a pending unload can tell it went stale.
    pub(super) activity: u64,
}

impl RoomState {
    /// The user of a peer of the room: a connection or a poller.
    pub(super) fn user_of(&self, peer: PeerId) -> Option<&Arc<str>> {
        self.peers
            .get(&peer)
            .map(|link| &link.user)
            .or_else(|| {
                self.pollers
                    .iter()
                    .find(|(_, p)| p.peer == peer)
                    .map(|((user, _), _)| user)
            })
            .or_else(|| {
                self.mirrors
                    .values()
                    .find(|(p, _, _)| *p == peer)
                    .map(|(_, user, _)| user)
            })
    }

    /// Whether nobody is in the room: no connection and no live poller.
    pub(super) fn is_vacant(&self) -> bool {
        self.peers.is_empty() && self.pollers.is_empty()
    }
}

/// Mirrored peers' ids start here, far above any connection's.
const MIRROR_PEER_BASE: u64 = 1 << 62;

impl Rooms {
    pub fn new(
        store: Arc<dyn DocStore>,
        versions: Arc<dyn VersionStore>,
        durability: Arc<Durability>,
        config: Arc<Config>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Rooms {
        Rooms {
            map: DashMap::new(),
            compactions: tokio::sync::Semaphore::new(config.compaction_concurrency),
            store,
            durability,
            config,
            tasks,
            shutdown,
            observer: OnceLock::new(),
            server_awareness: DashMap::new(),
            polled: DashSet::new(),
            bus: OnceLock::new(),
            next_mirror: std::sync::atomic::AtomicU64::new(MIRROR_PEER_BASE),
            versions,
            unversioned: DashMap::new(),
            versioning: DashSet::new(),
            restoring: DashSet::new(),
            hooks: OnceLock::new(),
        }
    }

    /// Tells `hooks` of documents' changes and versions from now on (set once).
    pub fn hook(&self, hooks: Arc<dyn DocHooks>) {
        let _ = self.hooks.set(hooks);
    }

    /// Tells `bus` what happens in the rooms from now on (set once, before any room is
    /// loaded).
    pub fn connect_bus(&self, bus: Arc<dyn RoomBus>) {
        let _ = self.bus.set(bus);
    }

    /// The store the documents live in.
    pub fn store(&self) -> &dyn DocStore {
        self.store.as_ref()
    }

    /// Reports every room's awareness changes to `observer` from now on (set once, before any
    /// room is loaded).
    pub fn observe_with(&self, observer: Arc<dyn RoomObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Tells the observer that `user`'s connection `peer` took `clients` with it. Called with
    /// the room unlocked.
    pub(super) fn report_gone(&self, doc: &DocName, user: &str, clients: Vec<u64>) {
        let Some(observer) = self.observer.get().filter(|_| !clients.is_empty()) else {
            return;
        };
        let changes = clients
            .into_iter()
            .map(|client| AwarenessChange {
                client,
                state: None,
                changed: true,
            })
            .collect();
        observer.awareness(doc, user, changes);
    }

    /// Makes a change that comes from no connection (the HTTP API, the server itself) to the
    /// room of `name`: persists and broadcasts what `f` returns, schedules the unload of a room
    /// nobody is in, and discards a room the change poisoned. Returns the change's ticket, if it
    /// changed anything.
    pub(super) async fn change(
        self: &Arc<Self>,
        name: &DocName,
        author: Option<&str>,
        mut f: impl FnMut(&mut Room) -> Result<Outbox, RoomError>,
    ) -> Result<Option<Ticket>, RoomOpError> {
        let received = Instant::now();
        let (result, idle, overflow) = self
            .with_state(name, |handle, state| {
                let mut overflow = Overflow::default();
                let result = match f(&mut state.room) {
                    Ok(outbox) => {
                        self.deliver_outbox(handle, state, None, outbox, received, &mut overflow)
                    }
                    Err(err) => Err(err.into()),
                };
                let idle = state
                    .is_vacant()
                    .then(|| (Arc::clone(handle), state.activity));
                (result, idle, overflow)
            })
            .await?;
        overflow.deliver(self.config.lag_timeout()).await;
        if let Some((handle, activity)) = idle {
            self.schedule_unload(handle, activity);
        }
        if let Ok(Some(_)) = &result {
            self.note_change(name, author.map(Arc::from).as_ref());
        }
        if let Err(RoomOpError::Room(_)) = &result {
            // Only a poisoned room goes.
            self.discard_by_name(name);
        }
        result
    }

    /// The loaded room of `name`, loading it from storage if needed.
    ///
    /// # Errors
    /// The store failed, or holds something yrs cannot load.
    pub(super) async fn get_or_load(&self, name: &DocName) -> Result<Arc<RoomHandle>, RoomOpError> {
        let handle = Arc::clone(
            self.map
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(RoomHandle {
                        name: name.clone(),
                        state: OnceCell::new(),
                    })
                })
                .value(),
        );
        let load = handle.state.get_or_try_init(|| self.load(name));
        match load.await {
            Ok(_) => Ok(handle),
            Err(err) => {
                // Leave no half-made room behind; the next caller tries the load again.
                self.map.remove_if(name, |_, h| {
                    Arc::ptr_eq(h, &handle) && h.state.get().is_none()
                });
                Err(err)
            }
        }
    }

    /// Runs `f` on the loaded state of `name`, looking the room up again if it was unloaded in
    /// between.
    pub(super) async fn with_state<T>(
        &self,
        name: &DocName,
        mut f: impl FnMut(&Arc<RoomHandle>, &mut RoomState) -> T,
    ) -> Result<T, RoomOpError> {
        loop {
            let handle = self.get_or_load(name).await?;
            let mut state = handle.lock();
            if state.closed {
                continue;
            }
            state.activity += 1;
            return Ok(f(&handle, &mut state));
        }
    }

    /// Adds a peer to the room of `name` and queues its first messages (sync step 1 and the
    /// awareness states). The peer receives every update applied after this point.
    ///
    /// # Errors
    /// The room could not be loaded.
    pub async fn join(
        self: &Arc<Self>,
        name: &DocName,
        link: PeerLink,
        overflow: &mut Overflow,
    ) -> Result<Arc<RoomHandle>, RoomOpError> {
        // The observer hears this peer's awareness in order only once it is ready for the
        // document.
        if let Some(observer) = self.observer.get() {
            observer.prepare(name).await;
        }
        let peer = link.peer;
        let mut link = Some(link);
        self.with_state(name, |handle, state| {
            let link = link
                .take()
                .expect("with_state runs its closure once per success");
            // A state set while the room was loading may have missed it: catch up first.
            self.restore_server_awareness(name, &mut state.room);
            state.room.tag_peer(peer, Arc::clone(&link.user));
            for frame in state.room.join(peer) {
                deliver(&link, Arc::new(Outgoing::reply(frame)), overflow);
            }
            state.peers.insert(peer, link);
            Arc::clone(handle)
        })
        .await
    }

    /// Applies a frame from `peer`: persists what it changed, queues the replies and broadcasts.
    /// Returns the ticket that says when what it changed is durable (`None`: it changed nothing).
    ///
    /// # Errors
    /// The room refused the frame (the caller closes the connection with the matching code) or
    /// the store refused the append.
    pub fn receive(
        self: &Arc<Self>,
        handle: &Arc<RoomHandle>,
        peer: PeerId,
        frame: Bytes,
        access: Access,
        overflow: &mut Overflow,
    ) -> Result<Option<Ticket>, RoomOpError> {
        let received = Instant::now();
        let mut state = handle.lock();
        if state.closed {
            // The room was poisoned by someone else's update; this peer was told to close.
            return Ok(None);
        }
        state.activity += 1;
        let mut outbox = Outbox::default();
        let result = state.room.receive(peer, frame, access, &mut outbox);
        let awareness = std::mem::take(&mut outbox.awareness);
        // What the frame's messages before a bad one changed is delivered all the same.
        let delivered =
            self.deliver_outbox(handle, &mut state, Some(peer), outbox, received, overflow);
        // Awareness changes go to the observer once the room is unlocked; an update alone
        // costs nothing here.
        let observed = match (self.observer.get(), awareness.is_empty()) {
            (Some(observer), false) => state
                .peers
                .get(&peer)
                .map(|link| (observer, Arc::clone(&link.user), awareness)),
            _ => None,
        };
        drop(state);
        if let Some((observer, user, awareness)) = observed {
            observer.awareness(&handle.name, &user, awareness);
        }
        let ticket = delivered?;
        match result {
            Ok(()) => Ok(ticket),
            Err(err) => {
                // A yrs failure (a panic, or an update refused halfway through) leaves the room
                // holding what was never stored: it reloads.
                if handle.lock().room.is_poisoned() {
                    // The sender is closed with the reason of its refusal, by the caller.
                    self.discard_but(handle, Some(peer));
                }
                Err(err.into())
            }
        }
    }

    /// A ticket for everything appended so far: what an update that changed nothing waits for
    /// before it is acknowledged (the same update may be on its way to disk from someone else).
    pub fn barrier(&self) -> Ticket {
        self.durability.barrier()
    }

    /// Waits until `ticket` is durable, `--storage-timeout-ms` at most.
    ///
    /// # Errors
    /// The store could not make it so in time, or refuses writes for now.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), DurabilityError> {
        self.durability
            .wait(ticket, self.config.storage_timeout())
            .await
    }

    /// Hands a Hocuspocus stateless message (`body`: its type and payload, without an address)
    /// to every peer of the room that speaks Hocuspocus, but `from`; returns how many. Nothing
    /// is stored; a full queue holds the sender back as an update would (`overflow`).
    pub fn stateless(
        &self,
        handle: &RoomHandle,
        from: Option<PeerId>,
        body: Bytes,
        overflow: &mut Overflow,
    ) -> usize {
        let state = handle.lock();
        if state.closed {
            return 0;
        }
        if let Some(bus) = self.bus.get() {
            bus.stateless(&handle.name, body.clone());
        }
        let message = Arc::new(Outgoing::reply(body));
        let mut delivered = 0;
        for (id, link) in &state.peers {
            if link.stateless && Some(*id) != from {
                deliver(link, Arc::clone(&message), overflow);
                delivered += 1;
            }
        }
        delivered
    }

    /// [`Rooms::stateless`] from a backend, to the room of `name` if it is loaded here (a room
    /// nobody is in has nobody to tell) and to the other nodes of a cluster in any case.
    pub async fn stateless_by_name(&self, name: &DocName, body: Bytes) -> usize {
        let handle = self.map.get(name).map(|e| Arc::clone(e.value()));
        let Some(handle) = handle.filter(|h| h.state.get().is_some()) else {
            if let Some(bus) = self.bus.get() {
                bus.stateless(name, body);
            }
            return 0;
        };
        let mut overflow = Overflow::default();
        let delivered = self.stateless(&handle, None, body, &mut overflow);
        overflow.deliver(self.config.lag_timeout()).await;
        delivered
    }

    /// Removes `peer` from the room, tells the others its awareness is gone, and schedules the
    /// unload of a room left empty.
    pub fn leave(self: &Arc<Self>, handle: &Arc<RoomHandle>, peer: PeerId) {
        let mut state = handle.lock();
        let Some(link) = state.peers.remove(&peer) else {
            return;
        };
        let Departure { removal, clients } = state.room.leave(peer);
        if let Some(removal) = removal {
            self.broadcast_detached(&state, removal);
        }
        self.tell_left(&handle.name, peer);
        let unload = (state.is_vacant() && !state.closed).then_some(state.activity);
        drop(state);
        self.report_gone(&handle.name, &link.user, clients);
        if let Some(activity) = unload {
            self.schedule_unload(Arc::clone(handle), activity);
        }
    }

    /// Applies an update that came over HTTP. Returns whether it changed the document and the
    /// ticket that says when it is durable. An update that changed nothing may still be on its
    /// way to disk (sent a moment ago by someone else, or a retry of our own), so its ticket is
    /// a barrier behind everything appended so far.
    ///
    /// # Errors
    /// The update was refused or the store failed.
    pub async fn apply_update(
        self: &Arc<Self>,
        name: &DocName,
        author: &str,
        update: Bytes,
    ) -> Result<(bool, Ticket), RoomOpError> {
        let ticket = self
            .change(name, Some(author), |room| room.apply_update(update.clone()))
            .await?;
        Ok((
            ticket.is_some(),
            ticket.unwrap_or_else(|| self.durability.barrier()),
        ))
    }

    /// Sets `entries` in the root map `map` of `name` as the server's own edit: persisted and
    /// sent to the document's clients like any update.
    ///
    /// # Errors
    /// The room could not be loaded, is poisoned, or the store failed.
    pub async fn edit_map(
        self: &Arc<Self>,
        name: &DocName,
        map: &str,
        entries: Vec<(String, Any)>,
    ) -> Result<(), RoomOpError> {
        let mut entries = Some(entries);
        self.change(name, None, |room| {
            room.set_map(map, entries.take().unwrap_or_default())
        })
        .await
        .map(|_| ())
    }

    /// Reads from the room of `name` (loading it if needed) with `f`.
    ///
    /// # Errors
    /// The room could not be loaded.
    pub async fn read<T>(
        self: &Arc<Self>,
        name: &DocName,
        f: impl Fn(&Room) -> T,
    ) -> Result<T, RoomOpError> {
        let (value, idle, poisoned) = self
            .with_state(name, |handle, state| {
                let idle = state
                    .is_vacant()
                    .then(|| (Arc::clone(handle), state.activity));
                let value = f(&state.room);
                (value, idle, state.room.is_poisoned())
            })
            .await?;
        if poisoned {
            self.discard_by_name(name);
            return Ok(value);
        }
        if let Some((handle, activity)) = idle {
            self.schedule_unload(handle, activity);
        }
        Ok(value)
    }

    /// Persists the outbox's updates, then queues its messages. Called with the room locked.
    pub(super) fn deliver_outbox(
        self: &Arc<Self>,
        handle: &Arc<RoomHandle>,
        state: &mut RoomState,
        from: Option<PeerId>,
        outbox: Outbox,
        received: Instant,
        overflow: &mut Overflow,
    ) -> Result<Option<Ticket>, RoomOpError> {
        let mut ticket = None;
        let stored = crate::metrics::get();
        let bus = self.bus.get();
        for update in &outbox.persist {
            // The update is in the log before anyone else sees it.
            state.last_seq = self.store.append(handle.name.as_str(), update)?;
            state.log_updates += 1;
            state.log_bytes += update.len();
            stored.update_log_bytes.increment(update.len() as u64);
            let appended = self.durability.appended();
            ticket = Some(appended);
            if let Some(bus) = bus {
                bus.updated(&handle.name, state.last_seq, update.clone(), appended);
            }
        }
        if ticket.is_some() {
            if let Some(peer) = from {
                self.note_change(&handle.name, state.user_of(peer));
            }
        }
        if let (Some(bus), Some(peer)) = (bus, from) {
            // What a peer said of its awareness goes to the other servers' rooms too.
            let awareness = outbox.broadcast.iter().filter(|frame| {
                frame.first() == Some(&(tandem_sync::message::MSG_AWARENESS as u8))
            });
            if let Some(user) = state.user_of(peer) {
                for frame in awareness {
                    bus.awareness(&handle.name, peer, user, frame.clone());
                }
            }
        }
        if let Some(sender) = from.and_then(|p| state.peers.get(&p)) {
            for frame in outbox.reply {
                deliver(sender, Arc::new(Outgoing::reply(frame)), overflow);
            }
        }
        // Broadcasts of updates carry when they arrived, for the propagation delay.
        let received = ticket.map(|_| received);
        let peers =
            state.peers.len() - usize::from(from.is_some_and(|p| state.peers.contains_key(&p)));
        for frame in outbox.broadcast {
            let message = Arc::new(Outgoing::broadcast(frame, received, peers));
            for (id, link) in &state.peers {
                if Some(*id) != from {
                    deliver(link, Arc::clone(&message), overflow);
                }
            }
        }
        if ticket.is_some() && self.needs_compaction(state) {
            state.compacting = true;
            let this = Arc::clone(self);
            let span = tracing::debug_span!("compact", doc = %handle.name);
            let handle = Arc::clone(handle);
            self.tasks
                .spawn(async move { this.compact(&handle).await }.instrument(span));
        }
        Ok(ticket)
    }

    /// The loaded rooms of `workspace` (all of them with `None`): document, clients, awareness
    /// clients, size, and updates in the log since the last snapshot.
    pub fn list(&self, workspace: Option<&str>) -> Vec<RoomSummary> {
        let handles: Vec<_> = self
            .map
            .iter()
            .filter(|e| workspace.is_none_or(|w| e.key().workspace() == w))
            .map(|e| Arc::clone(e.value()))
            .collect();
        let mut rooms: Vec<RoomSummary> = handles
            .iter()
            .filter(|h| h.state.get().is_some())
            .filter_map(|handle| {
                let state = handle.lock();
                (!state.closed).then(|| RoomSummary {
                    document: handle.name.as_str().to_owned(),
                    clients: state.peers.len(),
                    pollers: state.pollers.len(),
                    awareness_clients: state.room.awareness_count(),
                    bytes: state.room.size_bytes(),
                    updates_since_snapshot: state.log_updates,
                    bytes_since_snapshot: state.log_bytes,
                })
            })
            .collect();
        rooms.sort_by(|a, b| a.document.cmp(&b.document));
        rooms
    }

    /// Tells every connected peer to close with `reason`. Connections joining later check the
    /// shutdown token themselves once they are in their room.
    pub fn close_all_peers(&self, reason: &CloseReason) {
        let handles: Vec<_> = self.map.iter().map(|e| Arc::clone(e.value())).collect();
        for handle in handles {
            if handle.state.get().is_some() {
                for link in handle.lock().peers.values() {
                    link.closer.close(reason.clone());
                }
            }
        }
    }

    /// Drops a poisoned room: closes its peers (they reconnect and resync against a fresh load
    /// from storage) and removes it from the registry.
    pub(super) fn discard(&self, handle: &Arc<RoomHandle>) {
        self.discard_but(handle, None);
    }

    /// [`Rooms::discard`], leaving the closing of `sender` (whose input poisoned the room) to
    /// its caller.
    fn discard_but(&self, handle: &Arc<RoomHandle>, sender: Option<PeerId>) {
        let mut state = handle.lock();
        if !state.closed {
            crate::metrics::get().rooms_loaded.decrement(1.0);
        }
        state.closed = true;
        for (peer, link) in &state.peers {
            if Some(*peer) != sender {
                link.closer.close(CloseReason::Reloading);
            }
        }
        // The other servers forget this server's peers of the room; whoever observes awareness
        // hears that every client went.
        let locals = state
            .peers
            .keys()
            .copied()
            .chain(state.pollers.values().map(|p| p.peer));
        for peer in locals {
            self.tell_left(&handle.name, peer);
        }
        let departed: Vec<(Arc<str>, Vec<u64>)> = state
            .room
            .leave_all()
            .into_iter()
            .filter_map(|(peer, clients)| Some((Arc::clone(state.user_of(peer)?), clients)))
            .collect();
        state.peers.clear();
        state.pollers.clear();
        drop(state);
        for (user, clients) in departed {
            self.report_gone(&handle.name, &user, clients);
        }
        let removed = self
            .map
            .remove_if(&handle.name, |_, h| Arc::ptr_eq(h, handle))
            .is_some();
        if let (true, Some(bus)) = (removed, self.bus.get()) {
            bus.unsubscribe(&handle.name);
        }
        tracing::error!(doc = %handle.name, "room discarded after a yrs failure; it reloads from storage");
    }

    /// Tells the other servers that `peer` left `name`.
    pub(super) fn tell_left(&self, name: &DocName, peer: PeerId) {
        if let Some(bus) = self.bus.get() {
            bus.left(name, peer);
        }
    }

    pub(super) fn discard_by_name(&self, name: &DocName) {
        let handle = self.map.get(name).map(|e| Arc::clone(e.value()));
        if let Some(handle) = handle {
            if handle.state.get().is_some() && handle.lock().room.is_poisoned() {
                self.discard(&handle);
            }
        }
    }

    /// Queues the message `encoded` for every peer of a locked room, from a caller that cannot
    /// wait: full queues get it from a task of its own, with the same lag timeout as everyone
    /// else.
    pub(super) fn broadcast_detached(&self, state: &RoomState, encoded: Bytes) {
        self.deliver_detached(state, encoded, |_| true);
    }

    /// [`Rooms::broadcast_detached`] to the peers `to` picks.
    pub(super) fn deliver_detached(
        &self,
        state: &RoomState,
        encoded: Bytes,
        to: impl Fn(&PeerLink) -> bool,
    ) {
        let message = Arc::new(Outgoing::reply(encoded));
        let mut overflow = Overflow::default();
        for link in state.peers.values().filter(|link| to(link)) {
            deliver(link, Arc::clone(&message), &mut overflow);
        }
        if !overflow.is_empty() {
            self.tasks
                .spawn(overflow.deliver(self.config.lag_timeout()));
        }
    }
}

impl RoomHandle {
    pub(super) fn lock(&self) -> MutexGuard<'_, RoomState> {
        let state = self
            .state
            .get()
            .expect("a handle is only used after its state was loaded");
        // yrs panics are caught inside the room, so a poisoned mutex means a bug elsewhere; the
        // room's own `poisoned` flag decides whether the state is usable.
        state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
