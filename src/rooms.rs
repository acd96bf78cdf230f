//! The room registry: one loaded [`tandem_crdt::Room`] per open document, its connected peers,
//! and the persistence around it (log appends, compaction, unload).
//!
//! Locking: the registry is a `DashMap` used only through its entry API, so a room is created
//! exactly once; loading happens in the room's `OnceCell`, so concurrent joiners of a cold room
//! all wait for the one load and the first step 2 anyone gets holds the stored document. Each
//! room's state sits behind a `std::sync::Mutex` that is never held across an `.await`; inside
//! it an update is applied, appended to the log and queued for every peer, so the log order, the
//! broadcast order and a joiner's snapshot all agree. Queuing is `try_send` into bounded
//! per-connection queues: no socket is written under the lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use dashmap::{DashMap, DashSet};
use tandem_crdt::{
    Access, Any, AwarenessChange, Outbox, PeerId, PollInput, Polled, Room, RoomError, RoomLimits,
};
use tandem_storage::{Compaction, DocStore, Seq, StoreError};
use tokio::sync::{mpsc, OnceCell};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::docname::DocName;
use crate::durability::{Durability, Ticket};
use crate::peer::{CloseReason, Closer};

/// A frame queued for a connection, shared by every peer a broadcast goes to. A pointer rather
/// than the frame itself: every connection's queue allocates its first block of 32 slots up
/// front, and at 8 bytes a slot instead of 48 that block is 1.3 KiB smaller per connection.
pub type QueuedFrame = Arc<Frame>;

/// One message for a connection.
#[derive(Debug)]
pub struct Frame {
    pub bytes: Bytes,
    /// For a broadcast update: when it arrived, for the propagation delay.
    received: Option<Instant>,
    /// For a broadcast update: the peers yet to hand it to their socket (or to drop it).
    remaining: AtomicUsize,
}

impl Frame {
    /// A frame that is no broadcast of an update (a reply, awareness, a ping).
    pub fn reply(bytes: Bytes) -> Frame {
        Frame {
            bytes,
            received: None,
            remaining: AtomicUsize::new(0),
        }
    }

    /// A broadcast of an update that arrived at `received`, for `peers` peers.
    fn broadcast(bytes: Bytes, received: Option<Instant>, peers: usize) -> Frame {
        Frame {
            bytes,
            received,
            remaining: AtomicUsize::new(peers),
        }
    }

    /// One peer is done with this frame. For the last one, the update's arrival.
    pub fn handed_over(&self) -> Option<Instant> {
        let received = self.received?;
        (self.remaining.fetch_sub(1, Ordering::AcqRel) == 1).then_some(received)
    }
}

/// A connection's handle as the room sees it: its outbound queue and its closer.
pub struct PeerLink {
    pub peer: PeerId,
    /// The user it speaks for (the token's subject).
    pub user: Arc<str>,
    pub outbound: mpsc::Sender<QueuedFrame>,
    pub closer: Closer,
}

/// Frames that did not fit in a peer's queue at once. The caller waits for room outside the
/// room's lock (see [`Overflow::deliver`]); a peer whose queue stays full for the lag timeout is
/// closed. This gives bursts backpressure (the producer slows to the consumers' pace) instead of
/// closing a healthy client that was momentarily behind.
#[derive(Default)]
pub struct Overflow {
    pending: std::collections::VecDeque<(PeerId, mpsc::Sender<QueuedFrame>, Closer, QueuedFrame)>,
}

impl Overflow {
    fn push(&mut self, link: &PeerLink, frame: QueuedFrame) {
        self.pending
            .push_back((link.peer, link.outbound.clone(), link.closer.clone(), frame));
    }

    /// Waits, `timeout` at most in all, for each deferred frame to be queued; closes the peers
    /// that stayed full. Frames of one peer keep their order.
    pub async fn deliver(mut self, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        // Each frame leaves `pending` only once it is queued, so that if this future is dropped
        // half-way (an HTTP client that hung up), `Drop` still sees what was not delivered.
        while let Some((peer, outbound, closer, frame)) = self.pending.front().cloned() {
            let mut queued = false;
            if !closer.is_closed() {
                let started = tokio::time::Instant::now();
                match tokio::time::timeout_at(deadline, outbound.send(Arc::clone(&frame))).await {
                    Err(_) => {
                        tracing::info!(conn = %peer, ?timeout, "outbound queue stayed full, closing");
                        closer.close(CloseReason::Lagging);
                    }
                    Ok(sent) => {
                        queued = sent.is_ok();
                        if closer.note_stall(started.elapsed(), timeout) {
                            tracing::info!(conn = %peer, "client keeps holding its room back, closing");
                            closer.close(CloseReason::Lagging);
                        }
                    }
                }
            }
            if !queued {
                // This peer will never hand it over.
                frame.handed_over();
            }
            self.pending.pop_front();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn holds(&self, peer: PeerId) -> bool {
        self.pending.iter().any(|(p, ..)| *p == peer)
    }
}

impl Drop for Overflow {
    /// Frames that were never delivered leave a gap in their peers' documents: those peers are
    /// closed and resync on reconnect.
    fn drop(&mut self) {
        for (_, _, closer, _) in &self.pending {
            closer.close(CloseReason::Lagging);
        }
    }
}

/// Why a room operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RoomOpError {
    #[error(transparent)]
    Room(#[from] RoomError),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

/// Told what happens in rooms' awareness: the dashboard derives presence and "who is editing"
/// from it. Called outside any room's lock.
pub trait RoomObserver: Send + Sync + 'static {
    /// A connection of `user` changed awareness clients of `doc` (a `None` state: removed,
    /// which is also what the clients of a departing connection, or of a discarded room, get).
    /// A client id that moves to another connection (a reconnect) is reported again from
    /// there: observers key clients by id within the document.
    fn awareness(&self, doc: &DocName, user: &str, changes: Vec<AwarenessChange>);
}

/// All loaded rooms.
pub struct Rooms {
    map: DashMap<DocName, Arc<RoomHandle>>,
    /// Bounds how many compactions run at once (`--compaction-concurrency`).
    compactions: tokio::sync::Semaphore,
    store: Arc<dyn DocStore>,
    durability: Arc<Durability>,
    config: Arc<Config>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    observer: OnceLock<Arc<dyn RoomObserver>>,
    /// Awareness states the server keeps in rooms (presence mirrors, inboxes), by document and
    /// client id: set in the room when it is loaded, and again whenever it loads later.
    server_awareness: DashMap<DocName, HashMap<u64, Arc<str>>>,
    /// The loaded rooms that have HTTP pollers, for the sweep that lets lapsed ones go.
    polled: DashSet<DocName>,
}

/// One round of a client syncing a document over HTTP (`POST /api/v1/docs/{doc}/sync`).
#[derive(Debug)]
pub struct PollRequest {
    /// The user the token names; pollers are told apart by user and client id.
    pub user: Arc<str>,
    /// The client's Yjs client id (its `Y.Doc`'s `clientID`).
    pub client: u64,
    /// The client's encoded state vector.
    pub state_vector: Vec<u8>,
    /// Its edits the room may lack, as one v1 update.
    pub update: Option<Bytes>,
    /// Its awareness (cursor, name), as an encoded awareness update.
    pub awareness: Option<Bytes>,
    pub access: Access,
}

/// One document's room. Its state is loaded once, on first use.
pub struct RoomHandle {
    name: DocName,
    state: OnceCell<Mutex<RoomState>>,
}

struct RoomState {
    room: Room,
    peers: HashMap<PeerId, PeerLink>,
    /// Clients that sync over HTTP instead of a connection, by user and client id. Each is a
    /// peer of the room (owning its awareness) until it has not polled for the poll TTL.
    pollers: HashMap<(Arc<str>, u64), Poller>,
    /// Set when the room was unloaded or poisoned: whoever still holds the handle must look the
    /// document up again.
    closed: bool,
    /// The sequence number of the last update appended for this document.
    last_seq: Seq,
    /// Updates and bytes appended since the last snapshot.
    log_updates: usize,
    log_bytes: usize,
    compacting: bool,
    /// Whether an unload timer is running for this room.
    unload_pending: bool,
    /// Bumped whenever the room is used, so a pending unload can tell it went stale.
    activity: u64,
}

/// A client syncing over HTTP.
struct Poller {
    peer: PeerId,
    expires: Instant,
}

impl RoomState {
    /// The user of a peer of the room: a connection or a poller.
    fn user_of(&self, peer: PeerId) -> Option<&Arc<str>> {
        self.peers.get(&peer).map(|link| &link.user).or_else(|| {
            self.pollers
                .iter()
                .find(|(_, p)| p.peer == peer)
                .map(|((user, _), _)| user)
        })
    }

    /// Whether nobody is in the room: no connection and no live poller.
    fn is_vacant(&self) -> bool {
        self.peers.is_empty() && self.pollers.is_empty()
    }
}

impl Rooms {
    pub fn new(
        store: Arc<dyn DocStore>,
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
        }
    }

    /// Reports every room's awareness changes to `observer` from now on (set once, before any
    /// room is loaded).
    pub fn observe_with(&self, observer: Arc<dyn RoomObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Sets (or with `None` removes) an awareness state the server keeps in `name` under
    /// `client`. A loaded room gets it at once and its peers are told; an unloaded one gets it
    /// when it loads, so nobody loads a room just for this.
    pub fn set_server_awareness(&self, name: &DocName, client: u64, state: Option<Arc<str>>) {
        match &state {
            Some(state) => {
                self.server_awareness
                    .entry(name.clone())
                    .or_default()
                    .insert(client, Arc::clone(state));
            }
            None => {
                self.server_awareness.remove_if_mut(name, |_, states| {
                    states.remove(&client);
                    states.is_empty()
                });
            }
        }
        let handle = self.map.get(name).map(|e| Arc::clone(e.value()));
        let Some(handle) = handle.filter(|h| h.state.get().is_some()) else {
            return;
        };
        let mut state_guard = handle.lock();
        if state_guard.closed {
            return;
        }
        if let Some(frame) = state_guard.room.set_own_awareness(client, state, now_ms()) {
            self.broadcast_detached(&state_guard, frame);
        }
    }

    /// Tells the observer that `user`'s connection `peer` took `clients` with it. Called with
    /// the room unlocked.
    fn report_gone(&self, doc: &DocName, user: &str, clients: Vec<u64>) {
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

    /// Queues `frame` for every peer of a locked room, from a caller that cannot wait: full
    /// queues get it from a task of its own, with the same lag timeout as everyone else.
    fn broadcast_detached(&self, state: &RoomState, frame: Bytes) {
        let frame = Arc::new(Frame::reply(frame));
        let mut overflow = Overflow::default();
        for link in state.peers.values() {
            deliver(link, Arc::clone(&frame), &mut overflow);
        }
        if !overflow.is_empty() {
            self.tasks
                .spawn(overflow.deliver(self.config.lag_timeout()));
        }
    }

    /// Puts the server's states for `name` into `room` (a no-op for those it already holds).
    fn restore_server_awareness(&self, name: &DocName, room: &mut Room) {
        if let Some(states) = self.server_awareness.get(name) {
            let now = now_ms();
            for (client, state) in states.iter() {
                room.set_own_awareness(*client, Some(Arc::clone(state)), now);
            }
        }
    }

    /// Renews the server's awareness states in every loaded room: clients drop a remote state
    /// that was not renewed for 30 s.
    pub fn renew_server_awareness(&self) {
        let names: Vec<DocName> = self
            .server_awareness
            .iter()
            .map(|e| e.key().clone())
            .collect();
        let now = now_ms();
        for name in names {
            let handle = self.map.get(&name).map(|e| Arc::clone(e.value()));
            let Some(handle) = handle.filter(|h| h.state.get().is_some()) else {
                continue;
            };
            let mut state = handle.lock();
            if state.closed {
                continue;
            }
            if let Some(frame) = state.room.renew_own_awareness(now) {
                self.broadcast_detached(&state, frame);
            }
        }
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
        self.change(name, |room| {
            room.set_map(map, entries.take().unwrap_or_default())
        })
        .await
        .map(|_| ())
    }

    /// Makes a change that comes from no connection (the HTTP API, the server itself) to the
    /// room of `name`: persists and broadcasts what `f` returns, schedules the unload of a room
    /// nobody is in, and discards a room the change poisoned. Returns the change's ticket, if it
    /// changed anything.
    async fn change(
        self: &Arc<Self>,
        name: &DocName,
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
        if let Err(RoomOpError::Room(RoomError::Poisoned)) = &result {
            self.discard_by_name(name);
        }
        result
    }

    /// The loaded room of `name`, loading it from storage if needed.
    ///
    /// # Errors
    /// The store failed, or holds something yrs cannot load.
    async fn get_or_load(&self, name: &DocName) -> Result<Arc<RoomHandle>, RoomOpError> {
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
        let limits = RoomLimits {
            max_doc_bytes: self.config.max_doc_bytes,
            max_awareness_per_peer: self.config.max_awareness_per_connection,
        };
        let load = handle.state.get_or_try_init(|| async {
            let started = Instant::now();
            let stored = self.store.load(name.as_str()).await?;
            let snapshot = stored.snapshot.as_ref().map(|s| s.bytes.as_slice());
            let log = stored.log.iter().map(|(_, u)| u.as_slice());
            let mut room = Room::load(limits, snapshot, log)?;
            if self.observer.get().is_some() {
                room.observe();
            }
            self.restore_server_awareness(name, &mut room);
            let loaded = crate::metrics::get();
            loaded.rooms_loaded.increment(1.0);
            loaded
                .room_load
                .record(crate::metrics::secs(started.elapsed()));
            tracing::debug!(
                doc = %name,
                bytes = stored.total_bytes(),
                log = stored.log.len(),
                elapsed = ?started.elapsed(),
                "room loaded"
            );
            Ok::<_, RoomOpError>(Mutex::new(RoomState {
                room,
                peers: HashMap::new(),
                pollers: HashMap::new(),
                closed: false,
                last_seq: stored.last_seq(),
                log_updates: stored.log.len(),
                log_bytes: stored.log.iter().map(|(_, u)| u.len()).sum(),
                compacting: false,
                unload_pending: false,
                activity: 0,
            }))
        });
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
    async fn with_state<T>(
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

    /// Adds a peer to the room of `name` and queues its first frames (sync step 1 and the
    /// awareness states). The peer receives every update applied after this point.
    ///
    /// # Errors
    /// The room could not be loaded.
    pub async fn join(
        self: &Arc<Self>,
        name: &DocName,
        peer: PeerId,
        link: PeerLink,
        overflow: &mut Overflow,
    ) -> Result<Arc<RoomHandle>, RoomOpError> {
        let mut link = Some(link);
        self.with_state(name, |handle, state| {
            let link = link
                .take()
                .expect("with_state runs its closure once per success");
            // A state set while the room was loading may have missed it: catch up first.
            self.restore_server_awareness(name, &mut state.room);
            state.room.tag_peer(peer, Arc::clone(&link.user));
            for frame in state.room.join(peer) {
                deliver(&link, Arc::new(Frame::reply(frame)), overflow);
            }
            state.peers.insert(peer, link);
            Arc::clone(handle)
        })
        .await
    }

    /// Applies a frame from `peer`: persists what it changed, queues the replies and broadcasts.
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
    ) -> Result<(), RoomOpError> {
        let received = Instant::now();
        let mut state = handle.lock();
        if state.closed {
            // The room was poisoned by someone else's update; this peer was told to close.
            return Ok(());
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
        delivered?;
        match result {
            Ok(()) => Ok(()),
            Err(RoomError::Poisoned) => {
                self.discard(handle);
                Err(RoomError::Poisoned.into())
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Removes `peer` from the room, tells the others its awareness is gone, and schedules the
    /// unload of a room left empty.
    pub fn leave(self: &Arc<Self>, handle: &Arc<RoomHandle>, peer: PeerId) {
        let mut state = handle.lock();
        let Some(link) = state.peers.remove(&peer) else {
            return;
        };
        let (removal, gone) = state.room.depart(peer);
        if let Some(removal) = removal {
            self.broadcast_detached(&state, removal);
        }
        let unload = (state.is_vacant() && !state.closed).then_some(state.activity);
        drop(state);
        self.report_gone(&handle.name, &link.user, gone);
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
        update: Bytes,
    ) -> Result<(bool, Ticket), RoomOpError> {
        let ticket = self
            .change(name, |room| room.apply_update(update.clone()))
            .await?;
        Ok((
            ticket.is_some(),
            ticket.unwrap_or_else(|| self.durability.barrier()),
        ))
    }

    /// One round of an HTTP poller of `name`: applies its edits and awareness as the poller's
    /// peer (persisted and sent to the room's connections like any other), keeps it in the room
    /// for `--doc-poll-ttl-ms`, and answers what it lacks with the room's awareness. The ticket,
    /// when its edits changed the document, says when they are durable.
    ///
    /// # Errors
    /// The room could not be loaded, refused the input (nothing is kept of a malformed state
    /// vector; of other refusals, what came before the bad part), or the store failed.
    pub async fn poll(
        self: &Arc<Self>,
        name: &DocName,
        request: PollRequest,
    ) -> Result<(Polled, Option<Ticket>), RoomOpError> {
        let received = Instant::now();
        let expires = received + self.config.doc_poll_ttl();
        let key = (Arc::clone(&request.user), request.client);
        let (result, awareness, evicted, overflow) = self
            .with_state(name, |handle, state| {
                let mut overflow = Overflow::default();
                let known = state.pollers.get(&key).map(|p| p.peer);
                let peer = known.unwrap_or_else(|| PeerId(crate::ws::next_conn_id()));
                state.room.tag_peer(peer, Arc::clone(&request.user));
                let mut outbox = Outbox::default();
                let polled = state.room.poll(
                    peer,
                    PollInput {
                        client: request.client,
                        state_vector: &request.state_vector,
                        update: request.update.as_deref(),
                        awareness: request.awareness.as_deref(),
                    },
                    request.access,
                    &mut outbox,
                );
                let awareness = std::mem::take(&mut outbox.awareness);
                let mut evicted = Vec::new();
                if polled.is_ok() {
                    state.pollers.insert(key.clone(), Poller { peer, expires });
                    // Under the room's lock, so the sweep cannot miss this poller.
                    self.polled.insert(name.clone());
                    if known.is_none() {
                        evicted = self.evict_pollers_over_limit(state, &request.user);
                    }
                } else if known.is_none() {
                    // A refused first round leaves nothing behind.
                    let (removal, clients) = state.room.depart(peer);
                    outbox.broadcast.extend(removal);
                    evicted.push((Arc::clone(&request.user), clients));
                }
                let delivered =
                    self.deliver_outbox(handle, state, Some(peer), outbox, received, &mut overflow);
                let result = match (polled, delivered) {
                    (Ok(polled), Ok(ticket)) => Ok((polled, ticket)),
                    (Err(err), _) => Err(RoomOpError::from(err)),
                    (_, Err(err)) => Err(err),
                };
                (result, awareness, evicted, overflow)
            })
            .await?;
        if let (Some(observer), false) = (self.observer.get(), awareness.is_empty()) {
            observer.awareness(name, &request.user, awareness);
        }
        for (user, clients) in evicted {
            self.report_gone(name, &user, clients);
        }
        overflow.deliver(self.config.lag_timeout()).await;
        if let Err(RoomOpError::Room(RoomError::Poisoned)) = &result {
            self.discard_by_name(name);
        }
        result
    }

    /// Keeps `user`'s pollers of a room within `--max-pollers-per-user`: the ones that would
    /// lapse first go (a reloaded tab is a new client and leaves its old one behind). Returns
    /// the awareness clients that went with them; the room's peers are told.
    fn evict_pollers_over_limit(
        &self,
        state: &mut RoomState,
        user: &Arc<str>,
    ) -> Vec<(Arc<str>, Vec<u64>)> {
        let mut theirs: Vec<((Arc<str>, u64), Instant)> = state
            .pollers
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|(key, p)| (key.clone(), p.expires))
            .collect();
        let excess = theirs
            .len()
            .saturating_sub(self.config.max_pollers_per_user);
        theirs.sort_by_key(|(_, expires)| *expires);
        let mut gone = Vec::new();
        for (key, _) in theirs.into_iter().take(excess) {
            if let Some(poller) = state.pollers.remove(&key) {
                let (removal, clients) = state.room.depart(poller.peer);
                if let Some(removal) = removal {
                    self.broadcast_detached(state, removal);
                }
                gone.push((key.0, clients));
            }
        }
        gone
    }

    /// Lets the HTTP pollers that stopped polling go: their awareness is removed as if their
    /// connection had closed, and a room left vacant unloads after its grace period.
    pub fn expire_pollers(self: &Arc<Self>) {
        let now = Instant::now();
        let names: Vec<DocName> = self.polled.iter().map(|n| n.key().clone()).collect();
        for name in names {
            let handle = self.map.get(&name).map(|e| Arc::clone(e.value()));
            let Some(handle) = handle.filter(|h| h.state.get().is_some()) else {
                // Unloaded or discarded, pollers and all; a poll may be loading it again, and
                // then marks it again under its lock, after this.
                self.forget_polled(&name);
                continue;
            };
            let mut state = handle.lock();
            if state.closed {
                state.pollers.clear();
                drop(state);
                self.forget_polled(&name);
                continue;
            }
            let lapsed: Vec<(Arc<str>, u64)> = state
                .pollers
                .iter()
                .filter(|(_, p)| p.expires <= now)
                .map(|(key, _)| key.clone())
                .collect();
            let mut gone = Vec::new();
            for key in lapsed {
                let Some(poller) = state.pollers.remove(&key) else {
                    continue;
                };
                let (removal, clients) = state.room.depart(poller.peer);
                if let Some(removal) = removal {
                    self.broadcast_detached(&state, removal);
                }
                gone.push((key.0, clients));
            }
            if state.pollers.is_empty() {
                self.polled.remove(&name);
            }
            let unload = (!gone.is_empty() && state.is_vacant()).then_some(state.activity);
            drop(state);
            for (user, clients) in gone {
                self.report_gone(&name, &user, clients);
            }
            if let Some(activity) = unload {
                self.schedule_unload(Arc::clone(&handle), activity);
            }
        }
    }

    /// Stops sweeping `name`, unless a room of that name loaded meanwhile has pollers.
    fn forget_polled(&self, name: &DocName) {
        self.polled.remove(name);
        let handle = self.map.get(name).map(|e| Arc::clone(e.value()));
        if let Some(handle) = handle.filter(|h| h.state.get().is_some()) {
            if !handle.lock().pollers.is_empty() {
                self.polled.insert(name.clone());
            }
        }
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
        let (value, idle) = self
            .with_state(name, |handle, state| {
                let idle = state
                    .is_vacant()
                    .then(|| (Arc::clone(handle), state.activity));
                (f(&state.room), idle)
            })
            .await?;
        if let Some((handle, activity)) = idle {
            self.schedule_unload(handle, activity);
        }
        Ok(value)
    }

    /// Persists the outbox's updates, then queues its frames. Called with the room locked.
    fn deliver_outbox(
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
        for update in &outbox.persist {
            // The update is in the log before anyone else sees it.
            state.last_seq = self.store.append(handle.name.as_str(), update)?;
            state.log_updates += 1;
            state.log_bytes += update.len();
            stored.update_log_bytes.increment(update.len() as u64);
            ticket = Some(self.durability.appended());
        }
        if let Some(sender) = from.and_then(|p| state.peers.get(&p)) {
            for frame in outbox.reply {
                deliver(sender, Arc::new(Frame::reply(frame)), overflow);
            }
        }
        // Broadcasts of updates carry when they arrived, for the propagation delay.
        let received = ticket.map(|_| received);
        let peers =
            state.peers.len() - usize::from(from.is_some_and(|p| state.peers.contains_key(&p)));
        for frame in outbox.broadcast {
            let frame = Arc::new(Frame::broadcast(frame, received, peers));
            for (id, link) in &state.peers {
                if Some(*id) != from {
                    deliver(link, Arc::clone(&frame), overflow);
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

    fn needs_compaction(&self, state: &RoomState) -> bool {
        !state.compacting
            && (state.log_updates >= self.config.compact_after_updates
                || state.log_bytes >= self.config.compact_after_bytes)
    }

    /// Writes a snapshot of the room and drops the log it covers.
    async fn compact(&self, handle: &Arc<RoomHandle>) {
        if let Err(err) = self.compact_now(handle).await {
            tracing::warn!(doc = %handle.name, error = %err, "compaction failed; will retry");
        }
    }

    /// Writes a snapshot of the room now; returns how many logged updates it absorbed.
    async fn compact_now(&self, handle: &RoomHandle) -> Result<usize, StoreError> {
        // Compactions run on the blocking pool, which has threads to spare: a hundred rooms
        // crossing their threshold together would take a hundred of them, and the core away
        // from the connections. A closed semaphore never happens (it is never closed).
        let _permit = self.compactions.acquire().await;
        let (snapshot, upto, updates, bytes) = {
            let mut state = handle.lock();
            // A poisoned document may be half-changed: its log is the truth, never a snapshot.
            if state.log_updates == 0 || state.room.is_poisoned() {
                state.compacting = false;
                return Ok(0);
            }
            state.compacting = true;
            (
                state.room.snapshot(),
                state.last_seq,
                state.log_updates,
                state.log_bytes,
            )
        };
        let size = snapshot.len();
        let result = self
            .store
            .compact(handle.name.as_str(), snapshot, upto)
            .await;
        let mut state = handle.lock();
        state.compacting = false;
        match result? {
            Compaction::Done { removed } => {
                state.log_updates -= updates.min(state.log_updates);
                state.log_bytes -= bytes.min(state.log_bytes);
                tracing::debug!(doc = %handle.name, removed, snapshot_bytes = size, "compacted");
                Ok(updates)
            }
            Compaction::Stale => {
                tracing::debug!(doc = %handle.name, "compaction skipped: a newer snapshot exists");
                Ok(0)
            }
        }
    }

    /// Unloads the room once it has gone unused for the grace period. One timer per room: it
    /// re-arms itself while the room keeps being used (HTTP reads, joins that left again).
    fn schedule_unload(self: &Arc<Self>, handle: Arc<RoomHandle>, activity: u64) {
        {
            let mut state = handle.lock();
            if state.unload_pending {
                return;
            }
            state.unload_pending = true;
        }
        let this = Arc::clone(self);
        let grace = self.config.room_grace();
        let name = handle.name.clone();
        self.tasks.spawn(
            async move {
                let mut seen = activity;
                loop {
                    tokio::select! {
                        // Shutdown unloads every room itself.
                        _ = this.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(grace) => {}
                    }
                    {
                        let mut state = handle.lock();
                        if !state.is_vacant() || state.closed {
                            state.unload_pending = false;
                            return;
                        }
                        if state.activity != seen {
                            seen = state.activity;
                            continue;
                        }
                    }
                    if !this.unload_if_idle(&handle, Some(seen)).await {
                        handle.lock().unload_pending = false;
                    }
                    return;
                }
            }
            .instrument(tracing::debug_span!("unload", doc = %name)),
        );
    }

    /// Removes the room from the registry if it has no peers (and, with `activity`, has not been
    /// used since), then persists its snapshot.
    async fn unload_if_idle(&self, handle: &Arc<RoomHandle>, activity: Option<u64>) -> bool {
        let removed = self
            .map
            .remove_if(&handle.name, |_, h| {
                Arc::ptr_eq(h, handle) && {
                    let mut state = h.lock();
                    // At shutdown (no `activity`) pollers hold nothing up: they poll in vain.
                    let idle = match activity {
                        Some(a) => state.is_vacant() && a == state.activity,
                        None => state.peers.is_empty(),
                    };
                    if idle {
                        state.closed = true;
                    }
                    idle
                }
            })
            .is_some();
        if removed {
            if let Err(err) = self.compact_now(handle).await {
                // The log still holds every update; the next load replays it.
                tracing::warn!(doc = %handle.name, error = %err, "snapshot on unload failed");
            }
            crate::metrics::get().rooms_loaded.decrement(1.0);
            tracing::debug!(doc = %handle.name, "room unloaded");
        }
        removed
    }

    /// The loaded rooms of `workspace` (all of them with `None`): document, clients, awareness
    /// clients, size, and updates in the log since the last snapshot.
    pub fn list(&self, workspace: Option<&str>) -> Vec<serde_json::Value> {
        let handles: Vec<_> = self
            .map
            .iter()
            .filter(|e| workspace.is_none_or(|w| e.key().workspace() == w))
            .map(|e| Arc::clone(e.value()))
            .collect();
        let mut rooms: Vec<serde_json::Value> = handles
            .iter()
            .filter(|h| h.state.get().is_some())
            .filter_map(|handle| {
                let state = handle.lock();
                (!state.closed).then(|| {
                    serde_json::json!({
                        "document": handle.name.as_str(),
                        "clients": state.peers.len(),
                        "pollers": state.pollers.len(),
                        "awareness_clients": state.room.awareness_count(),
                        "bytes": state.room.size_bytes(),
                        "updates_since_snapshot": state.log_updates,
                        "bytes_since_snapshot": state.log_bytes,
                    })
                })
            })
            .collect();
        rooms.sort_by(|a, b| a["document"].as_str().cmp(&b["document"].as_str()));
        rooms
    }

    /// Compacts `name` now (loading it if needed): its log goes into a fresh snapshot. Returns
    /// how many updates the snapshot absorbed.
    ///
    /// # Errors
    /// The room could not be loaded or the store failed.
    pub async fn compact_doc(self: &Arc<Self>, name: &DocName) -> Result<usize, RoomOpError> {
        let (handle, idle) = self
            .with_state(name, |handle, state| {
                let idle = state.is_vacant().then_some(state.activity);
                (Arc::clone(handle), idle)
            })
            .await?;
        let updates = self.compact_now(&handle).await?;
        if let Some(activity) = idle {
            self.schedule_unload(Arc::clone(&handle), activity);
        }
        Ok(updates)
    }

    /// Unloads every room, persisting each one's snapshot. Used at shutdown.
    pub async fn unload_all(&self) {
        let handles: Vec<_> = self.map.iter().map(|e| Arc::clone(e.value())).collect();
        for handle in handles {
            if handle.state.get().is_some() {
                self.unload_if_idle(&handle, None).await;
            } else {
                self.map.remove(&handle.name);
            }
        }
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
    fn discard(&self, handle: &Arc<RoomHandle>) {
        let mut state = handle.lock();
        if !state.closed {
            crate::metrics::get().rooms_loaded.decrement(1.0);
        }
        state.closed = true;
        for link in state.peers.values() {
            link.closer.close(CloseReason::Reloading);
        }
        // Whoever observes awareness hears that every client went.
        let departed: Vec<(Arc<str>, Vec<u64>)> = state
            .room
            .depart_all()
            .into_iter()
            .filter_map(|(peer, clients)| Some((Arc::clone(state.user_of(peer)?), clients)))
            .collect();
        state.peers.clear();
        state.pollers.clear();
        drop(state);
        for (user, clients) in departed {
            self.report_gone(&handle.name, &user, clients);
        }
        self.map
            .remove_if(&handle.name, |_, h| Arc::ptr_eq(h, handle));
        tracing::error!(doc = %handle.name, "room discarded after a yrs failure; it reloads from storage");
    }

    fn discard_by_name(&self, name: &DocName) {
        let handle = self.map.get(name).map(|e| Arc::clone(e.value()));
        if let Some(handle) = handle {
            if handle.state.get().is_some() && handle.lock().room.is_poisoned() {
                self.discard(&handle);
            }
        }
    }
}

impl RoomHandle {
    fn lock(&self) -> MutexGuard<'_, RoomState> {
        let state = self
            .state
            .get()
            .expect("a handle is only used after its state was loaded");
        // yrs panics are caught inside the room, so a poisoned mutex means a bug elsewhere; the
        // room's own `poisoned` flag decides whether the state is usable.
        state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The time in milliseconds since the Unix epoch: the floor of the server's awareness clocks,
/// so they keep rising across reloads and restarts.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Queues `frame` for a peer; when its queue is full the frame waits in `overflow` for the
/// caller to deliver outside the lock. Never dropped: a gap would stall the client's document.
fn deliver(link: &PeerLink, frame: QueuedFrame, overflow: &mut Overflow) {
    if link.closer.is_closed() {
        frame.handed_over();
        return;
    }
    // Once one frame for this peer waits, the ones after it wait too, to keep their order.
    if overflow.holds(link.peer) {
        overflow.push(link, frame);
        return;
    }
    if let Err(mpsc::error::TrySendError::Full(frame)) = link.outbound.try_send(frame) {
        overflow.push(link, frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deferred_frames_keep_their_order_and_a_stuck_peer_is_closed() {
        let (outbound, mut queue) = mpsc::channel(1);
        let link = PeerLink {
            peer: PeerId(1),
            user: Arc::from("u"),
            outbound,
            closer: Closer::new(),
        };
        let mut overflow = Overflow::default();
        for n in 0..4u8 {
            deliver(
                &link,
                Arc::new(Frame::reply(Bytes::from(vec![n]))),
                &mut overflow,
            );
        }
        // The first fit; the rest wait, in order, even once room frees up.
        assert_eq!(overflow.pending.len(), 3);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(frame) = queue.recv().await {
                got.push(frame.bytes[0]);
                if got.len() == 4 {
                    break;
                }
            }
            (got, queue)
        });
        overflow.deliver(std::time::Duration::from_secs(1)).await;
        let (got, _queue) = reader.await.unwrap();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert!(!link.closer.is_closed());

        // Nobody reads now: after the lag timeout the peer is closed, nothing is dropped silently.
        let mut overflow = Overflow::default();
        deliver(
            &link,
            Arc::new(Frame::reply(Bytes::from_static(b"a"))),
            &mut overflow,
        );
        deliver(
            &link,
            Arc::new(Frame::reply(Bytes::from_static(b"b"))),
            &mut overflow,
        );
        overflow.deliver(std::time::Duration::from_secs(1)).await;
        assert_eq!(link.closer.reason(), Some(&CloseReason::Lagging));
    }
}
