//! What other servers of a cluster tell this one's rooms: their committed updates, their
//! peers' awareness and departures, and the repair of a room from the shared store when a
//! message was lost.
//!
//! Each message of a server (an `origin`) about a document names the sequence number of its
//! update and of its previous one for the same document: a room that holds `prev` applies it,
//! one that does not has missed something and repairs itself from the store, where everything
//! announced is committed. A peer of another server is mirrored here by a peer id of our own
//! (tagged with its user), so its awareness clients are owned, limited and removed as a local
//! connection's would be. The hub is not told of them: each node tells the others its own
//! peers' presence and editing (`dashboard::roster`).

use std::sync::Arc;

use bytes::Bytes;
use tandem_crdt::{Access, Outbox, PeerId, Room, RoomLimits};

use super::rooms::{RoomHandle, RoomOpError, RoomState, Rooms};
use crate::docname::DocName;

/// What became of another server's update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    /// The room holds it now (and its peers were sent what it changed).
    Applied,
    /// The room already held it.
    Known,
    /// Applied, but a message before it was lost: the room must be repaired from the store.
    Gap,
    /// The document is not loaded here.
    NotLoaded,
}

impl Rooms {
    /// The loaded room of `name`, if it is loaded and usable.
    fn loaded(&self, name: &DocName) -> Option<Arc<RoomHandle>> {
        let handle = self.map.get(name).map(|e| Arc::clone(e.value()))?;
        handle.state.get().is_some().then_some(handle)
    }

    /// Whether the room of `name` is being loaded right now (what is said of it meanwhile may
    /// have missed the read: the caller repairs it once loaded).
    pub fn is_loading(&self, name: &DocName) -> bool {
        self.map
            .get(name)
            .is_some_and(|e| e.value().state.get().is_none())
    }

    /// The names of every loaded room.
    pub fn loaded_names(&self) -> Vec<DocName> {
        self.map
            .iter()
            .filter(|e| e.value().state.get().is_some())
            .map(|e| e.key().clone())
            .collect()
    }

    /// Applies `origin`'s committed update `seq` of `name` (its previous one for the document
    /// was `prev`, 0 when none), sending what it changes to this server's peers.
    pub fn remote_update(
        &self,
        name: &DocName,
        origin: i64,
        seq: u64,
        prev: u64,
        update: &[u8],
    ) -> Remote {
        let Some(handle) = self.loaded(name) else {
            return Remote::NotLoaded;
        };
        let mut state = handle.lock();
        if state.closed {
            return Remote::NotLoaded;
        }
        let held = state.remote_seqs.get(&origin).copied().unwrap_or(0);
        if seq <= held {
            return Remote::Known;
        }
        state.remote_seqs.insert(origin, seq);
        match state.room.integrate(update) {
            Ok(Some(frame)) => self.broadcast_detached(&state, frame),
            Ok(None) => {}
            Err(err) => {
                // It applied where it was accepted; the copy in the store is what counts.
                tracing::warn!(doc = %name, origin, error = %err, "a remote update did not apply here; repairing");
                if state.room.is_poisoned() {
                    drop(state);
                    self.discard(&handle);
                    return Remote::NotLoaded;
                }
                return Remote::Gap;
            }
        }
        if prev > held {
            Remote::Gap
        } else {
            Remote::Applied
        }
    }

    /// Whether the room of `name` lacks `origin`'s update `seq` (announced by its heartbeat);
    /// if so, it counts as held from now on and the caller repairs the room.
    pub fn lacks(&self, name: &DocName, origin: i64, seq: u64) -> bool {
        let Some(handle) = self.loaded(name) else {
            return false;
        };
        let mut state = handle.lock();
        if state.closed {
            return false;
        }
        let held = state.remote_seqs.entry(origin).or_insert(0);
        if *held >= seq {
            return false;
        }
        *held = seq;
        true
    }

    /// Applies an awareness `frame` from `origin`'s peer `peer` (of `user`) in `name`.
    pub fn remote_awareness(
        &self,
        name: &DocName,
        origin: i64,
        peer: u64,
        user: &str,
        frame: Bytes,
    ) {
        let Some(handle) = self.loaded(name) else {
            return;
        };
        let mut state = handle.lock();
        if state.closed {
            return;
        }
        let mirror = self.mirror(&mut state, origin, peer, user);
        let mut outbox = Outbox::default();
        let result = state
            .room
            .receive(mirror, frame, Access::ReadOnly, &mut outbox);
        if let Err(err) = result {
            tracing::debug!(doc = %name, origin, error = %err, "a remote awareness frame was refused");
        }
        // The hub hears of another node's peers from that node (what it tells of the
        // workspace), not from here.
        for frame in outbox.broadcast {
            self.broadcast_detached(&state, frame);
        }
    }

    /// `origin`'s peer `peer` left `name`: its awareness clients go.
    pub fn remote_left(&self, name: &DocName, origin: i64, peer: u64) {
        let Some(handle) = self.loaded(name) else {
            return;
        };
        let mut state = handle.lock();
        let Some((mirror, _, _)) = state.mirrors.remove(&(origin, peer)) else {
            return;
        };
        let departure = state.room.leave(mirror);
        if let Some(removal) = departure.removal {
            self.broadcast_detached(&state, removal);
        }
    }

    /// A stateless message another node's client or backend sent: to this node's Hocuspocus
    /// clients of the document.
    pub fn remote_stateless(&self, name: &DocName, body: Bytes) {
        let Some(handle) = self.loaded(name) else {
            return;
        };
        let state = handle.lock();
        self.deliver_detached(&state, body, |link| link.stateless);
    }

    /// `origin` is gone (its server stopped or died): every peer it had in every room leaves.
    pub fn forget_origin(&self, origin: i64) {
        for name in self.loaded_names() {
            let peers: Vec<u64> = match self.loaded(&name) {
                Some(handle) => handle
                    .lock()
                    .mirrors
                    .keys()
                    .filter(|(o, _)| *o == origin)
                    .map(|(_, peer)| *peer)
                    .collect(),
                None => continue,
            };
            for peer in peers {
                self.remote_left(&name, origin, peer);
            }
        }
    }

    /// Removes the mirrored peers of other nodes not heard of for `quiet` (their departure
    /// was lost on the bus: a live client renews its awareness every 15 s).
    pub fn expire_mirrors(&self, quiet: std::time::Duration) {
        for name in self.loaded_names() {
            let stale: Vec<(i64, u64)> = match self.loaded(&name) {
                Some(handle) => handle
                    .lock()
                    .mirrors
                    .iter()
                    .filter(|(_, (_, _, heard))| heard.elapsed() >= quiet)
                    .map(|(key, _)| *key)
                    .collect(),
                None => continue,
            };
            for (origin, peer) in stale {
                tracing::debug!(doc = %name, origin, peer, "a mirrored peer went quiet; removing it");
                self.remote_left(&name, origin, peer);
            }
        }
    }

    /// Our peer id for `origin`'s `peer`, made on first sight; heard of now.
    fn mirror(&self, state: &mut RoomState, origin: i64, peer: u64, user: &str) -> PeerId {
        if let Some((mirror, _, heard)) = state.mirrors.get_mut(&(origin, peer)) {
            *heard = std::time::Instant::now();
            return *mirror;
        }
        let mirror = PeerId(
            self.next_mirror
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let user: Arc<str> = Arc::from(user);
        state.room.tag_peer(mirror, Arc::clone(&user));
        state.room.join(mirror);
        state
            .mirrors
            .insert((origin, peer), (mirror, user, std::time::Instant::now()));
        mirror
    }

    /// Brings the room of `name` up to what the store holds (what was committed elsewhere and
    /// whose message was lost), sending what changes to this server's peers. Returns whether
    /// anything did.
    ///
    /// # Errors
    /// The store failed or holds what yrs cannot load.
    pub async fn repair(&self, name: &DocName) -> Result<bool, RoomOpError> {
        // A room still loading is repaired once loaded (its read may predate what was said).
        let deadline = tokio::time::Instant::now() + self.config.storage_timeout();
        while self.is_loading(name) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if self.loaded(name).is_none() {
            return Ok(false);
        }
        let stored = self.store.load(name.as_str()).await?;
        let limits = RoomLimits {
            max_doc_bytes: usize::MAX,
            max_awareness_per_peer: 0,
            max_types: u64::MAX,
        };
        // Loading a large document takes a while: off the async workers.
        let copy = tokio::task::spawn_blocking(move || {
            let snapshot = stored.snapshot.as_ref().map(|s| s.bytes.as_slice());
            Room::load(
                limits,
                snapshot,
                stored.log.iter().map(|(_, u)| u.as_slice()),
            )
        })
        .await
        .map_err(|err| RoomOpError::Store(tandem_storage::StoreError::Task(err.to_string())))??;
        let Some(handle) = self.loaded(name) else {
            return Ok(false);
        };
        let mut state = handle.lock();
        if state.closed {
            return Ok(false);
        }
        let missing = copy.diff(&state.room.state_vector())?;
        let changed = state.room.integrate(&missing)?;
        if let Some(frame) = &changed {
            self.broadcast_detached(&state, frame.clone());
        }
        Ok(changed.is_some())
    }
}
