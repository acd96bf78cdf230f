//! [`Room`]: one document's yrs state and awareness, driven by y-websocket frames.
//!
//! Bytes in, bytes out: the caller hands over a frame and delivers the [`Outbox`] it gets back
//! (persist first, then reply and broadcast). No sockets, no storage, no tasks.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::Bytes;
use tandem_sync::message::{self, MSG_SYNC_STATUS_HEARTBEAT};
use tandem_sync::{
    inspect_v1, AuthMessage, AwarenessUpdate, DecodeError, Message, MessageReader, SyncMessage,
};

use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Any, Doc, IdSet, Map, Options, Out, ReadTxn, StateVector, Transact, Update};

use crate::awareness::{Awareness, Changes, SERVER_CLIENT_BASE};
use crate::outbox::{AwarenessChange, Departure, Outbox, PollInput, Polled};
use crate::owners::Owners;
use crate::peer::{Access, PeerId};

/// Limits a room enforces.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// The most bytes the document may take, as its snapshot plus the updates applied since.
    pub max_doc_bytes: usize,
    /// The most awareness client ids one peer may keep alive. A browser tab announces one; the
    /// limit keeps a single connection from filling the room's memory with made-up clients.
    pub max_awareness_per_peer: usize,
    /// The most shared types (maps, arrays, texts, XML nodes nested in the document) it may
    /// hold. Types nest at most this deep, and yrs deletes and collects nested types by
    /// recursion: the bound keeps that recursion within the server's thread stacks.
    pub max_types: u64,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            max_doc_bytes: 64 * 1024 * 1024,
            max_awareness_per_peer: 64,
            max_types: 100_000,
        }
    }
}

/// Why a room refused input.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    #[error("malformed update: {0}")]
    BadUpdate(String),
    #[error("update rejected: {0}")]
    Rejected(String),
    #[error("malformed state vector: {0}")]
    BadStateVector(String),
    #[error("the document would grow past its limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the document would hold more than {limit} shared types")]
    TooManyTypes { limit: u64 },
    #[error("unsupported message type {0}")]
    Unsupported(u64),
    #[error("a connection may announce at most {limit} awareness clients")]
    TooManyAwarenessClients { limit: usize },
    #[error("the document failed while applying an update and must be reloaded")]
    Poisoned,
}

/// A document and its awareness.
pub struct Room {
    doc: Doc,
    awareness: Awareness,
    /// Which peer keeps which awareness client, and whose each client is.
    owners: Owners,
    limits: RoomLimits,
    /// The document's stored size: its last snapshot plus the updates applied since.
    size_bytes: usize,
    /// The shared types its last snapshot and the updates applied since created (deleted ones
    /// still count until the next snapshot): at least as many as the document holds.
    types: u64,
    /// Set when yrs panicked inside a transaction: its state can no longer be trusted.
    poisoned: Cell<bool>,
    /// Whether awareness changes are reported in [`Outbox::awareness`].
    observed: bool,
}

/// The v1 encoding of an update with no structs and no deletions.
const EMPTY_UPDATE: [u8; 2] = [0, 0];

impl Room {
    /// An empty room.
    pub fn new(limits: RoomLimits) -> Room {
        Room {
            // Garbage collection stays on: the server keeps no history beyond what clients need.
            doc: Doc::with_options(Options::default()),
            awareness: Awareness::default(),
            owners: Owners::default(),
            limits,
            size_bytes: 0,
            types: 0,
            poisoned: Cell::new(false),
            observed: false,
        }
    }

    /// A room holding the stored `snapshot` and the `log` of updates appended after it.
    ///
    /// # Errors
    /// A stored update yrs cannot decode or apply (the store holds only updates this server
    /// accepted, so this means corruption).
    pub fn load<'a>(
        limits: RoomLimits,
        snapshot: Option<&'a [u8]>,
        log: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Room, RoomError> {
        let mut room = Room::new(limits);
        let mut types = 0;
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<usize, RoomError> {
            let mut size = 0;
            let mut txn = room.doc.transact_mut();
            for update in snapshot.into_iter().chain(log) {
                size += update.len();
                if update == EMPTY_UPDATE {
                    continue;
                }
                // What is stored was checked when it came in (an update stored before the check
                // existed loads as it always did, except one yrs would integrate past a hole:
                // it would leave the document open to the use-after-free the check prevents).
                if let Ok(shape) = inspect_v1(update) {
                    types += shape.types;
                    if !shape.must_follow.is_empty() {
                        if let Err(err) = check_no_hole(&shape.must_follow, &txn.state_vector()) {
                            tracing::warn!(error = %err, "a stored update is skipped on load");
                            continue;
                        }
                    }
                }
                let decoded =
                    Update::decode_v1(update).map_err(|e| RoomError::BadUpdate(e.to_string()))?;
                txn.apply_update(decoded)
                    .map_err(|e| RoomError::Rejected(e.to_string()))?;
            }
            Ok(size)
        }));
        room.size_bytes = match result {
            Ok(size) => size?,
            Err(_) => return Err(RoomError::Poisoned),
        };
        room.types = types;
        Ok(room)
    }

    /// Registers `peer` and returns the frames it must receive first: sync step 1 and, when
    /// anyone is present, the awareness states.
    pub fn join(&mut self, peer: PeerId) -> Vec<Bytes> {
        self.owners.join(peer);
        let mut frames = vec![message::encode_step1(&self.state_vector())];
        if let Some(update) = self.awareness.full_update() {
            frames.push(message::encode_awareness(&update.encode()));
        }
        frames
    }

    /// Forgets `peer`: its awareness clients are removed, and the [`Departure`] says how to
    /// tell the remaining peers.
    pub fn leave(&mut self, peer: PeerId) -> Departure {
        let Some(clients) = self.owners.leave(peer) else {
            return Departure::default();
        };
        match self.awareness.remove(clients) {
            Some(removal) => Departure {
                clients: removal.entries.iter().map(|e| e.client_id).collect(),
                removal: Some(message::encode_awareness(&removal.encode())),
            },
            None => Departure::default(),
        }
    }

    /// Reports awareness changes in [`Outbox::awareness`] from now on.
    pub fn observe(&mut self) {
        self.observed = true;
    }

    /// Sets (or with `None` removes) an awareness state the server owns under `client` (at
    /// least [`SERVER_CLIENT_BASE`]), with a clock of at least `min_clock`, and returns the frame
    /// for the room's peers when it changed.
    pub fn set_own_awareness(
        &mut self,
        client: u64,
        state: Option<Arc<str>>,
        min_clock: u64,
    ) -> Option<Bytes> {
        debug_assert!(client >= SERVER_CLIENT_BASE);
        let update = self.awareness.set_own(client, state, min_clock)?;
        Some(message::encode_awareness(&update.encode()))
    }

    /// Renews the server's own awareness states: the frame for the room's peers, if any.
    pub fn renew_own_awareness(&mut self, min_clock: u64) -> Option<Bytes> {
        let update = self.awareness.renew_own(min_clock)?;
        Some(message::encode_awareness(&update.encode()))
    }

    /// Says whom `peer` speaks for. Awareness clients kept by a peer of one tag are not another
    /// tag's to update or remove: one user cannot move or hide another's cursor, while a user's
    /// new connection still takes over the clients of their old one.
    pub fn tag_peer(&mut self, peer: PeerId, tag: Arc<str>) {
        self.owners.tag(peer, tag);
    }

    /// The peer that keeps awareness `client` alive, if any.
    pub fn awareness_owner(&self, client: u64) -> Option<PeerId> {
        self.owners.owner(client)
    }

    /// Forgets every peer (the room is being discarded) and returns each one's awareness
    /// clients.
    pub fn leave_all(&mut self) -> Vec<(PeerId, Vec<u64>)> {
        self.owners
            .peers()
            .into_iter()
            .map(|peer| (peer, self.leave(peer).clients))
            .filter(|(_, clients)| !clients.is_empty())
            .collect()
    }

    /// Sets `entries` in the root map `map` as one transaction of the server's own, and returns
    /// the update to persist and broadcast (empty when nothing changed).
    ///
    /// # Errors
    /// The room is poisoned, or the document would grow past its limit.
    pub fn set_map(&mut self, map: &str, entries: Vec<(String, Any)>) -> Result<Outbox, RoomError> {
        if self.poisoned.get() {
            return Err(RoomError::Poisoned);
        }
        let doc = &self.doc;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let root = doc.get_or_insert_map(map);
            let mut txn = doc.transact_mut();
            for (key, value) in entries {
                let same = root.get(&txn, &key).is_some_and(|old| match old {
                    Out::Any(old) => old == value,
                    _ => false,
                });
                if !same {
                    root.insert(&mut txn, key, value);
                }
            }
            txn.encode_update_v1()
        }));
        let update = match result {
            Ok(update) => update,
            Err(_) => {
                self.poisoned.set(true);
                return Err(RoomError::Poisoned);
            }
        };
        let mut outbox = Outbox::default();
        if update.as_slice() == EMPTY_UPDATE {
            return Ok(outbox);
        }
        // The server's edits are small and already applied: they count towards the size, which
        // refuses the clients' next growth if it is past the limit.
        self.size_bytes += update.len();
        let update = Bytes::from(update);
        outbox.broadcast.push(message::encode_update(&update));
        outbox.persist.push(update);
        Ok(outbox)
    }

    /// Applies one frame from `peer`, adding what must be delivered to `outbox`.
    ///
    /// The caller delivers `outbox` whether or not this fails: a frame may carry several
    /// messages, and those before a bad one have been applied, so their updates must still be
    /// persisted and forwarded.
    ///
    /// # Errors
    /// A malformed message, an update yrs rejects, an unsupported message type, a document
    /// grown past its limit, too many awareness clients, or a poisoned room. The caller closes
    /// the connection; the client resyncs on reconnect.
    pub fn receive(
        &mut self,
        peer: PeerId,
        frame: Bytes,
        access: Access,
        outbox: &mut Outbox,
    ) -> Result<(), RoomError> {
        let frame_len = frame.len();
        for item in MessageReader::new(frame.clone()) {
            let (msg, range) = item?;
            // A frame that is exactly one message can be forwarded as it came in.
            let whole = range.start == 0 && range.end == frame_len;
            match msg {
                Message::Sync(SyncMessage::Step1(sv)) => {
                    outbox.reply.push(message::encode_step2(&self.diff(&sv)?));
                }
                Message::Sync(SyncMessage::Step2(update))
                | Message::Sync(SyncMessage::Update(update)) => {
                    if access == Access::ReadOnly {
                        if update.as_ref() != EMPTY_UPDATE {
                            outbox.reply.push(permission_denied());
                        }
                        continue;
                    }
                    if self.apply(&update)? {
                        let forward = if whole && frame[1] == message::MSG_SYNC_UPDATE as u8 {
                            frame.clone()
                        } else {
                            message::encode_update(&update)
                        };
                        outbox.persist.push(update);
                        outbox.broadcast.push(forward);
                    }
                }
                Message::Awareness(payload) => {
                    let mut update = AwarenessUpdate::decode(&payload)?;
                    // Entries that change nothing go first (a y-websocket client sends back every
                    // state it hears, so most entries of a busy room are such echoes): they cost
                    // nothing further and count towards no limit. The server's own ids are not
                    // the clients' to set, nor another user's clients.
                    let before = update.entries.len();
                    let mut removed = Vec::new();
                    update.entries.retain(|e| {
                        if e.client_id >= SERVER_CLIENT_BASE {
                            return false;
                        }
                        if !self.awareness.wins(e) {
                            // A client back from a lost connection announces its state with
                            // the clock it had, and the room removed that state with a newer
                            // one: told of the removal, a y-protocols client announces again
                            // above it (without, its cursor stays hidden until its renewals
                            // catch up, up to 30 s).
                            if let Some(removal) = e
                                .state
                                .as_ref()
                                .and_then(|_| self.awareness.removal(e.client_id))
                                .filter(|_| self.owners.may_announce(peer, e.client_id))
                            {
                                removed.push(removal);
                            }
                            return false;
                        }
                        self.owners.may_announce(peer, e.client_id)
                    });
                    if !removed.is_empty() {
                        let removals = AwarenessUpdate { entries: removed };
                        outbox
                            .reply
                            .push(message::encode_awareness(&removals.encode()));
                    }
                    let (whole, payload) = if update.entries.len() == before {
                        (whole, payload)
                    } else {
                        (false, Bytes::from(update.encode()))
                    };
                    self.check_awareness_limit(peer, &update)?;
                    let changes = self.awareness.apply(&update);
                    if changes.is_empty() {
                        continue;
                    }
                    self.owners.track(peer, &changes);
                    if self.observed {
                        self.report(&changes, outbox);
                    }
                    let frame = if whole {
                        frame.clone()
                    } else {
                        message::encode_awareness(&payload)
                    };
                    // Back to the sender too, as the reference server does: a client alone in
                    // a room otherwise hears nothing and its provider closes the socket after
                    // 30 s of silence.
                    outbox.reply.push(frame.clone());
                    outbox.broadcast.push(frame);
                }
                Message::QueryAwareness => {
                    if let Some(update) = self.awareness.full_update() {
                        outbox
                            .reply
                            .push(message::encode_awareness(&update.encode()));
                    }
                }
                // Clients have nothing to tell the server about permissions.
                Message::Auth(_) => {}
                Message::Custom { tag, payload } if tag == MSG_SYNC_STATUS_HEARTBEAT => {
                    outbox
                        .reply
                        .push(Message::Custom { tag, payload }.encode().into());
                }
                Message::Custom { tag, .. } => return Err(RoomError::Unsupported(tag)),
            }
        }
        Ok(())
    }

    fn report(&self, changes: &Changes, outbox: &mut Outbox) {
        for &client in &changes.updated {
            outbox.awareness.push(AwarenessChange {
                client,
                state: self.awareness.get(client).map(Arc::from),
                changed: changes.changed.contains(&client),
            });
        }
        for &client in &changes.removed {
            outbox.awareness.push(AwarenessChange {
                client,
                state: None,
                changed: true,
            });
        }
    }

    /// One round of a client that syncs by polling over HTTP instead of keeping a connection:
    /// applies its pending `update` and its `awareness` as `peer` (which then owns those
    /// awareness clients, as a connection would), and answers what it lacks against its state
    /// vector, with every live awareness state. When the state of its own awareness
    /// `client` was removed (its old connection closed, say), the answer holds that removal too:
    /// a y-protocols client that hears its own state removed announces it again with a newer
    /// clock, and without it would keep sending a clock the room ignores.
    ///
    /// The caller delivers `outbox` whether or not this fails, as with [`Room::receive`]; the
    /// poller gets nothing from it (its answer is the returned [`Polled`]).
    ///
    /// # Errors
    /// The state vector is malformed (checked before anything is applied), or as
    /// [`Room::receive`].
    pub fn poll(
        &mut self,
        peer: PeerId,
        input: PollInput<'_>,
        access: Access,
        outbox: &mut Outbox,
    ) -> Result<Polled, RoomError> {
        let PollInput {
            client,
            state_vector: sv,
            update,
            awareness,
        } = input;
        let sv = decode_state_vector(sv)?;
        let mut frame = Vec::new();
        if let Some(update) = update {
            frame.extend_from_slice(&message::encode_update(update));
        }
        if let Some(awareness) = awareness {
            frame.extend_from_slice(&message::encode_awareness(awareness));
        }
        if !frame.is_empty() {
            self.owners.join(peer);
            self.receive(peer, Bytes::from(frame), access, outbox)?;
            // The poller's answer is below; the echo of its awareness is not for anyone.
            outbox.reply.clear();
        }
        let mut states = self.awareness.full_update().unwrap_or_default();
        states.entries.extend(self.awareness.removal(client));
        Ok(Polled {
            update: self.encode_since(&sv)?,
            state_vector: self.state_vector(),
            awareness: (!states.entries.is_empty()).then(|| states.encode()),
        })
    }

    /// Applies an update that arrived outside any connection (the HTTP API).
    ///
    /// # Errors
    /// As the update path of [`Room::receive`].
    pub fn apply_update(&mut self, update: Bytes) -> Result<Outbox, RoomError> {
        let mut outbox = Outbox::default();
        if self.apply(&update)? {
            outbox.broadcast.push(message::encode_update(&update));
            outbox.persist.push(update);
        }
        Ok(outbox)
    }

    /// Applies an update another server already accepted and stored (a node of the cluster, or
    /// the shared store when the room repairs itself from it), and returns the frame to send
    /// to this room's peers when it changed anything. No size limit: refusing what is already
    /// stored would only make this copy of the document diverge.
    ///
    /// # Errors
    /// The update does not decode or yrs rejects it, or the room is poisoned.
    pub fn integrate(&mut self, update: &[u8]) -> Result<Option<Bytes>, RoomError> {
        let limits = self.limits;
        self.limits.max_doc_bytes = usize::MAX;
        self.limits.max_types = u64::MAX;
        let applied = self.apply(update);
        self.limits = limits;
        Ok(applied?.then(|| message::encode_update(update)))
    }

    /// The whole document as one v1 update: what a snapshot stores. The room's size restarts
    /// from it, since a snapshot replaces the log it covers.
    ///
    /// # Errors
    /// The room is poisoned (yrs could not write it).
    pub fn snapshot(&mut self) -> Result<Vec<u8>, RoomError> {
        let state = self.encode_since(&StateVector::default())?;
        self.size_bytes = state.len();
        // Types deleted since the last snapshot are gone from it.
        if let Ok(shape) = inspect_v1(&state) {
            self.types = shape.types;
        }
        Ok(state)
    }

    /// What a peer with state vector `sv` lacks, as a v1 update.
    ///
    /// # Errors
    /// `sv` is not a valid encoded state vector.
    pub fn diff(&self, sv: &[u8]) -> Result<Vec<u8>, RoomError> {
        let sv = decode_state_vector(sv)?;
        self.encode_since(&sv)
    }

    /// What a peer at `sv` lacks. yrs has panicked writing content it had accepted (legacy
    /// JSON content did, before the update check refused it): the panic is contained and the
    /// room poisoned, so it reloads from what was stored rather than fail every sync.
    fn encode_since(&self, sv: &StateVector) -> Result<Vec<u8>, RoomError> {
        if self.poisoned.get() {
            return Err(RoomError::Poisoned);
        }
        catch_unwind(AssertUnwindSafe(|| {
            self.doc.transact().encode_state_as_update_v1(sv)
        }))
        .map_err(|_| {
            self.poisoned.set(true);
            tracing::error!("yrs panicked while encoding the document; room poisoned");
            RoomError::Poisoned
        })
    }

    /// Whether the document already holds everything `update` carries, its insertions and its
    /// deletions: what a read-only client's answer to sync step 1 must satisfy to be told it is
    /// in sync (it may not change the document). Anything that does not decode is not held.
    pub fn covers(&self, update: &[u8]) -> bool {
        if update == EMPTY_UPDATE {
            return true;
        }
        if inspect_v1(update).is_err() {
            return false;
        }
        let Ok(Ok(update)) = catch_unwind(|| Update::decode_v1(update)) else {
            return false;
        };
        let txn = self.doc.transact();
        let snapshot = txn.snapshot();
        let mut held = IdSet::new();
        for (&client, &clock) in snapshot.state_map.iter() {
            held.insert(yrs::ID::new(client, 0), clock);
        }
        update.insertions(true).diff(&held).is_empty()
            && update.delete_set().diff(&snapshot.delete_set).is_empty()
    }

    /// The document's encoded state vector.
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// The yrs document, for reads.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// How many clients have a live awareness state.
    pub fn awareness_count(&self) -> usize {
        self.awareness.live_count()
    }

    /// The stored size the document limit is checked against.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Whether yrs failed inside this room; a poisoned room refuses all updates.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }

    /// Refuses an awareness update that would leave `peer` with more live clients than allowed.
    fn check_awareness_limit(
        &self,
        peer: PeerId,
        update: &AwarenessUpdate,
    ) -> Result<(), RoomError> {
        let announced = update
            .entries
            .iter()
            .filter(|e| e.state.is_some())
            .map(|e| e.client_id);
        let limit = self.limits.max_awareness_per_peer;
        if self.owners.count_with(peer, announced) > limit {
            return Err(RoomError::TooManyAwarenessClients { limit });
        }
        Ok(())
    }

    /// Applies `update` and says whether it changed the document (or is waiting on missing
    /// dependencies, which must be kept too).
    fn apply(&mut self, update: &[u8]) -> Result<bool, RoomError> {
        if self.poisoned.get() {
            return Err(RoomError::Poisoned);
        }
        if update == EMPTY_UPDATE {
            return Ok(false);
        }
        if self.size_bytes.saturating_add(update.len()) > self.limits.max_doc_bytes {
            return Err(RoomError::TooLarge {
                limit: self.limits.max_doc_bytes,
            });
        }
        // yrs trusts the counts an update declares and decodes nested values by recursion:
        // what could make it reserve gigabytes or overflow the stack goes no further.
        let shape = inspect_v1(update).map_err(|e| RoomError::BadUpdate(e.to_string()))?;
        let types = self.types.saturating_add(shape.types);
        if types > self.limits.max_types {
            return Err(RoomError::TooManyTypes {
                limit: self.limits.max_types,
            });
        }
        let decoded = catch_unwind(|| Update::decode_v1(update))
            .map_err(|_| RoomError::BadUpdate("undecodable".into()))?;
        let decoded = decoded.map_err(|e| RoomError::BadUpdate(e.to_string()))?;
        // yrs is known to panic on some crafted updates. The panic is contained here; the
        // document may be half-changed, so the room is marked poisoned and the caller reloads it
        // from storage, which holds only updates that applied cleanly.
        let doc = &self.doc;
        // yrs can also refuse an update halfway through, with part of it integrated: the room
        // then holds what will never be stored, so it is poisoned too, and the sender told why.
        let must_follow = &shape.must_follow;
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<_, RoomError> {
            let mut txn = doc.transact_mut();
            check_no_hole(must_follow, txn.before_state())?;
            let pending_before = pending_fingerprint(&txn);
            let applied = txn.apply_update(decoded).map_err(|e| e.to_string());
            let changed = txn.before_state() != txn.after_state()
                || !txn.delete_set().is_empty()
                || pending_fingerprint(&txn) != pending_before;
            Ok((changed, applied))
        }));
        let changed = match result {
            Ok(Err(refused)) => return Err(refused),
            Ok(Ok((changed, Ok(())))) => changed,
            Ok(Ok((false, Err(why)))) => return Err(RoomError::Rejected(why)),
            Ok(Ok((true, Err(why)))) => {
                self.poisoned.set(true);
                tracing::error!(reason = %why, "yrs refused an update it had partly applied; room poisoned");
                return Err(RoomError::Rejected(why));
            }
            Err(_) => {
                self.poisoned.set(true);
                tracing::error!("yrs panicked while applying an update; room poisoned");
                return Err(RoomError::Poisoned);
            }
        };
        if changed {
            self.size_bytes += update.len();
            self.types = types;
        }
        Ok(changed)
    }
}

/// What yrs holds back for missing dependencies, in a comparable form. An update that only adds
/// to it changed the document (it must be kept); one that leaves it as it was changed nothing.
/// Pending content is rare, so this is almost always `None` and free; when there is some, yrs
/// itself walks all of it again for every update that touches a client it waits on.
///
/// The blocks held are compared by the ids they cover: `Update::state_vector` would not do, as
/// it counts only blocks contiguous from clock 0, which pending ones never are (an update that
/// extended the pending run was once judged to change nothing and not stored; the room fuzz
/// target found it).
fn pending_fingerprint(txn: &impl ReadTxn) -> Option<(IdSet, StateVector, Option<IdSet>)> {
    let store = txn.store();
    let pending = store.pending_update();
    let pending_ds = store.pending_ds();
    if pending.is_none() && pending_ds.is_none() {
        return None;
    }
    Some((
        pending
            .map(|p| p.update.insertions(true))
            .unwrap_or_default(),
        pending.map(|p| p.missing.clone()).unwrap_or_default(),
        pending_ds.cloned(),
    ))
}

/// Refuses an update with a run of blocks yrs would integrate past a hole in its client's
/// history (see [`tandem_sync::UpdateShape::must_follow`]): the document must already hold
/// that client's clocks up to where the run starts. A client sends its updates in order, so
/// only an update that lost its way (or a hostile one) meets this; a client told so
/// reconnects and sends everything it has, hole included.
fn check_no_hole(must_follow: &[(u64, u32)], held: &StateVector) -> Result<(), RoomError> {
    for &(client, clock) in must_follow {
        let has = held.get(&yrs::block::ClientID::new(client));
        if has < clock {
            return Err(RoomError::Rejected(format!(
                "it starts client {client}'s edits at clock {clock} and the document holds \
                 them up to {has}: send the earlier ones first"
            )));
        }
    }
    Ok(())
}

/// A state vector from a peer, checked before yrs reserves room for it.
fn decode_state_vector(sv: &[u8]) -> Result<StateVector, RoomError> {
    message::decode_state_vector(sv).map_err(|e| match e {
        DecodeError::StateVector(why) => RoomError::BadStateVector(why),
        other => RoomError::BadStateVector(other.to_string()),
    })
}

fn permission_denied() -> Bytes {
    Message::Auth(AuthMessage::PermissionDenied(
        "read-only access: updates are not accepted".into(),
    ))
    .encode()
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_state_vector_may_not_declare_more_than_it_holds() {
        let room = Room::new(RoomLimits::default());
        // Four bytes declaring 50 million entries (a gigabyte to reserve): refused before
        // anything is reserved.
        let bomb = [0x80, 0xe1, 0xeb, 0x17];
        match room.diff(&bomb) {
            Err(RoomError::BadStateVector(reason)) => {
                assert!(reason.contains("declares 50000000 entries"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The same count spelt in more bytes than five, as the decoder reads it.
        let long = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x08];
        match room.diff(&long) {
            Err(RoomError::BadStateVector(reason)) => {
                assert!(reason.contains("declares"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            room.diff(&[0x05, 0x01, 0x01]),
            Err(RoomError::BadStateVector(_))
        ));
        // Real ones still decode, the empty one too.
        assert!(room.diff(&[0x00]).is_ok());
        assert!(room.diff(&[0x01, 0x2a, 0x03]).is_ok());
        let other = Room::new(RoomLimits::default());
        let text = other.doc.get_or_insert_text("t");
        text.insert(&mut other.doc.transact_mut(), 0, "hi");
        assert!(room.diff(&other.state_vector()).is_ok());
    }
    use tandem_sync::message::encode_update;
    use tandem_sync::AwarenessEntry;
    use yrs::{GetString, Map, Text, WriteTxn};

    fn recv(
        room: &mut Room,
        peer: PeerId,
        frame: Bytes,
        access: Access,
    ) -> Result<Outbox, RoomError> {
        let mut outbox = Outbox::default();
        room.receive(peer, frame, access, &mut outbox)?;
        Ok(outbox)
    }

    fn text_update(client: u64, text: &str) -> Vec<u8> {
        let doc = Doc::with_client_id(client);
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, text);
        txn.encode_update_v1()
    }

    fn text_of(room: &Room) -> String {
        let t = room.doc().get_or_insert_text("t");
        let txn = room.doc().transact();
        t.get_string(&txn)
    }

    #[test]
    fn update_is_persisted_and_forwarded_as_it_came() {
        let mut room = Room::new(RoomLimits::default());
        room.join(PeerId(1));
        let frame = encode_update(&text_update(1, "hi"));
        let outbox = recv(&mut room, PeerId(1), frame.clone(), Access::ReadWrite).unwrap();
        assert_eq!(outbox.persist.len(), 1);
        assert_eq!(outbox.broadcast, vec![frame.clone()]);
        assert!(outbox.reply.is_empty());
        assert_eq!(text_of(&room), "hi");
        // The same update again changes nothing and goes nowhere.
        let again = recv(&mut room, PeerId(1), frame, Access::ReadWrite).unwrap();
        assert!(again.is_empty());
    }

    #[test]
    fn a_poller_sends_its_edits_and_cursor_and_gets_what_it_lacks() {
        let mut room = Room::new(RoomLimits::default());
        room.join(PeerId(1));
        recv(
            &mut room,
            PeerId(1),
            encode_update(&text_update(1, "from a socket")),
            Access::ReadWrite,
        )
        .unwrap();

        // The poller has its own edit and knows nothing of the room's yet.
        let poller = Doc::with_client_id(2);
        let t = poller.get_or_insert_text("t");
        let pending = {
            let mut txn = poller.transact_mut();
            t.insert(&mut txn, 0, "polled ");
            txn.encode_update_v1()
        };
        let sv = poller.transact().state_vector().encode_v1();
        let cursor = AwarenessUpdate {
            entries: vec![AwarenessEntry {
                client_id: 2,
                clock: 1,
                state: Some(r#"{"cursor":1}"#.into()),
            }],
        }
        .encode();
        let mut outbox = Outbox::default();
        let polled = room
            .poll(
                PeerId(9),
                PollInput {
                    client: 2,
                    state_vector: &sv,
                    update: Some(&pending),
                    awareness: Some(&cursor),
                },
                Access::ReadWrite,
                &mut outbox,
            )
            .unwrap();
        // Its edit is persisted and sent to the socket peer, and so is its cursor; nothing is
        // echoed back to it.
        assert_eq!(outbox.persist, vec![Bytes::from(pending)]);
        assert_eq!(outbox.broadcast.len(), 2);
        assert!(outbox.reply.is_empty());
        // Its answer holds the socket peer's text (not its own again) and its cursor.
        poller
            .transact_mut()
            .apply_update(Update::decode_v1(&polled.update).unwrap())
            .unwrap();
        assert_eq!(t.get_string(&poller.transact()), text_of(&room));
        assert_eq!(
            StateVector::decode_v1(&polled.state_vector).unwrap(),
            poller.transact().state_vector()
        );
        let states = AwarenessUpdate::decode(&polled.awareness.unwrap()).unwrap();
        assert_eq!(states.entries.len(), 1);
        assert_eq!(states.entries[0].client_id, 2);

        // Its cursor belongs to the poller's peer: it goes when that peer departs.
        assert_eq!(room.awareness_owner(2), Some(PeerId(9)));
        let Departure {
            removal,
            clients: gone,
        } = room.leave(PeerId(9));
        assert!(removal.is_some());
        assert_eq!(gone, vec![2]);
        assert_eq!(room.awareness_owner(2), None);

        // Back, with the clock it had: the room ignores that clock, and says the state was
        // removed, with the clock to beat.
        let mut outbox = Outbox::default();
        let polled = room
            .poll(
                PeerId(10),
                PollInput {
                    client: 2,
                    state_vector: &sv,
                    update: None,
                    awareness: Some(&cursor),
                },
                Access::ReadWrite,
                &mut outbox,
            )
            .unwrap();
        let states = AwarenessUpdate::decode(&polled.awareness.unwrap()).unwrap();
        assert_eq!(states.entries.len(), 1);
        assert_eq!(
            (states.entries[0].client_id, states.entries[0].clock),
            (2, 2)
        );
        assert_eq!(states.entries[0].state, None);

        // A malformed state vector is refused before anything is applied.
        let mut outbox = Outbox::default();
        let refused = room.poll(
            PeerId(9),
            PollInput {
                client: 3,
                state_vector: &[0xff, 0xff],
                update: Some(&text_update(3, "never")),
                awareness: None,
            },
            Access::ReadWrite,
            &mut outbox,
        );
        assert!(matches!(refused, Err(RoomError::BadStateVector(_))));
        assert!(outbox.is_empty());
        assert!(!text_of(&room).contains("never"));
    }

    #[test]
    fn one_user_cannot_move_or_remove_another_users_cursor() {
        let mut room = Room::new(RoomLimits::default());
        let announce = |clock: u64, state: Option<&str>| {
            let update = AwarenessUpdate {
                entries: vec![AwarenessEntry {
                    client_id: 5,
                    clock,
                    state: state.map(Arc::from),
                }],
            };
            message::encode_awareness(&update.encode())
        };
        for (peer, user) in [(1, "ada"), (2, "bob"), (3, "ada")] {
            room.tag_peer(PeerId(peer), Arc::from(user));
            room.join(PeerId(peer));
        }
        recv(
            &mut room,
            PeerId(1),
            announce(1, Some("{}")),
            Access::ReadWrite,
        )
        .unwrap();
        // Bob's connection may neither overwrite Ada's client nor remove it.
        for forged in [announce(9, Some(r#"{"forged":1}"#)), announce(9, None)] {
            let outbox = recv(&mut room, PeerId(2), forged, Access::ReadWrite).unwrap();
            assert!(outbox.broadcast.is_empty());
        }
        assert_eq!(room.awareness.get(5), Some("{}"));
        assert_eq!(room.awareness_owner(5), Some(PeerId(1)));
        // Ada's new connection (a reconnect) takes it over.
        let outbox = recv(
            &mut room,
            PeerId(3),
            announce(2, Some("{}")),
            Access::ReadWrite,
        )
        .unwrap();
        assert_eq!(outbox.broadcast.len(), 1);
        assert_eq!(room.awareness_owner(5), Some(PeerId(3)));

        // While Ada is away, her client is still hers: Bob cannot claim it before she is back.
        room.leave(PeerId(3));
        assert_eq!(room.awareness_owner(5), None);
        let forged = announce(50, Some(r#"{"forged":1}"#));
        let outbox = recv(&mut room, PeerId(2), forged, Access::ReadWrite).unwrap();
        assert!(outbox.broadcast.is_empty());
        room.tag_peer(PeerId(4), Arc::from("ada"));
        room.join(PeerId(4));
        let back = announce(10, Some("{}"));
        let outbox = recv(&mut room, PeerId(4), back, Access::ReadWrite).unwrap();
        assert_eq!(outbox.broadcast.len(), 1);
    }

    #[test]
    fn a_client_back_with_an_old_clock_is_told_its_state_was_removed() {
        let mut room = Room::new(RoomLimits::default());
        let announce = |clock: u64| {
            let update = AwarenessUpdate {
                entries: vec![AwarenessEntry {
                    client_id: 5,
                    clock,
                    state: Some("{}".into()),
                }],
            };
            message::encode_awareness(&update.encode())
        };
        room.tag_peer(PeerId(1), Arc::from("ada"));
        room.join(PeerId(1));
        recv(&mut room, PeerId(1), announce(3), Access::ReadWrite).unwrap();
        room.leave(PeerId(1));
        // Her new connection repeats clock 3, below the removal's 4: it is told of the removal.
        room.tag_peer(PeerId(2), Arc::from("ada"));
        room.join(PeerId(2));
        let outbox = recv(&mut room, PeerId(2), announce(3), Access::ReadWrite).unwrap();
        assert!(outbox.broadcast.is_empty());
        let (msg, _) = MessageReader::new(outbox.reply[0].clone())
            .next()
            .unwrap()
            .unwrap();
        let Message::Awareness(payload) = msg else {
            panic!("not awareness: {msg:?}")
        };
        let told = AwarenessUpdate::decode(&payload).unwrap();
        assert_eq!(
            told.entries,
            vec![AwarenessEntry {
                client_id: 5,
                clock: 4,
                state: None
            }]
        );
        // Above it, she is back.
        let outbox = recv(&mut room, PeerId(2), announce(5), Access::ReadWrite).unwrap();
        assert_eq!(outbox.broadcast.len(), 1);
        // Another user's stale copy of her state is told nothing.
        room.leave(PeerId(2));
        room.tag_peer(PeerId(3), Arc::from("bob"));
        room.join(PeerId(3));
        let outbox = recv(&mut room, PeerId(3), announce(5), Access::ReadWrite).unwrap();
        assert!(outbox.is_empty());
    }

    #[test]
    fn echoed_states_change_nothing_and_count_towards_no_limit() {
        // y-websocket sends back every awareness state it hears: a client joining a room with
        // more states than a connection may keep must not be closed for echoing them.
        let mut room = Room::new(RoomLimits {
            max_awareness_per_peer: 4,
            ..RoomLimits::default()
        });
        let mut everyone = Vec::new();
        for peer in 1..=10u64 {
            room.tag_peer(PeerId(peer), Arc::from(format!("user-{peer}").as_str()));
            room.join(PeerId(peer));
            let entry = AwarenessEntry {
                client_id: 100 + peer,
                clock: 3,
                state: Some(r#"{"cursor":1}"#.into()),
            };
            let frame = message::encode_awareness(
                &AwarenessUpdate {
                    entries: vec![entry.clone()],
                }
                .encode(),
            );
            recv(&mut room, PeerId(peer), frame, Access::ReadWrite).unwrap();
            everyone.push(entry);
        }
        room.tag_peer(PeerId(11), Arc::from("newcomer"));
        room.join(PeerId(11));
        let echo = message::encode_awareness(&AwarenessUpdate { entries: everyone }.encode());
        let outbox = recv(&mut room, PeerId(11), echo, Access::ReadWrite).unwrap();
        assert!(outbox.is_empty());
        assert_eq!(room.awareness_owner(101), Some(PeerId(1)));
    }

    #[test]
    fn server_map_edits_reach_a_replica_once() {
        let mut room = Room::new(RoomLimits::default());
        let entries = || {
            vec![
                ("status".to_string(), Any::from("completed")),
                ("result_count".to_string(), Any::from(100.0)),
            ]
        };
        let outbox = room.set_map("status", entries()).unwrap();
        assert_eq!((outbox.persist.len(), outbox.broadcast.len()), (1, 1));
        assert!(
            room.set_map("status", entries()).unwrap().is_empty(),
            "unchanged"
        );
        let replica = Doc::new();
        replica
            .transact_mut()
            .apply_update(Update::decode_v1(&outbox.persist[0]).unwrap())
            .unwrap();
        let map = replica.get_or_insert_map("status");
        let txn = replica.transact();
        assert_eq!(
            map.get(&txn, "status"),
            Some(Out::Any(Any::from("completed")))
        );
        assert_eq!(
            map.get(&txn, "result_count"),
            Some(Out::Any(Any::from(100.0)))
        );
    }

    #[test]
    fn an_observed_room_reports_awareness_changes_and_departures() {
        let mut room = Room::new(RoomLimits::default());
        room.observe();
        room.join(PeerId(1));
        let announce = |clock: u64, state: &str| {
            let update = AwarenessUpdate {
                entries: vec![AwarenessEntry {
                    client_id: 5,
                    clock,
                    state: Some(state.into()),
                }],
            };
            message::encode_awareness(&update.encode())
        };
        let outbox = recv(&mut room, PeerId(1), announce(1, "{}"), Access::ReadOnly).unwrap();
        assert_eq!(
            outbox.awareness,
            vec![AwarenessChange {
                client: 5,
                state: Some("{}".into()),
                changed: true
            }]
        );
        let renewal = recv(&mut room, PeerId(1), announce(2, "{}"), Access::ReadOnly).unwrap();
        assert!(!renewal.awareness[0].changed);
        let Departure {
            removal: frame,
            clients: gone,
        } = room.leave(PeerId(1));
        assert!(frame.is_some());
        assert_eq!(gone, vec![5]);
        let own = SERVER_CLIENT_BASE + 9;
        assert!(room
            .set_own_awareness(own, Some("{\"s\":1}".into()), 0)
            .is_some());
        assert_eq!(room.awareness_count(), 1);
        assert!(room.renew_own_awareness(0).is_some());

        // A client may not write the server's ids.
        room.join(PeerId(2));
        let forged = AwarenessUpdate {
            entries: vec![AwarenessEntry {
                client_id: own,
                clock: u64::MAX,
                state: None,
            }],
        };
        let frame = message::encode_awareness(&forged.encode());
        let outbox = recv(&mut room, PeerId(2), frame, Access::ReadOnly).unwrap();
        assert!(outbox.broadcast.is_empty());
        assert_eq!(room.awareness_count(), 1);
    }

    #[test]
    fn two_replicas_converge_through_the_room() {
        let mut room = Room::new(RoomLimits::default());
        let a = Doc::with_client_id(1);
        let b = Doc::with_client_id(2);
        let ta = a.get_or_insert_text("t");
        let tb = b.get_or_insert_text("t");
        let ua = {
            let mut txn = a.transact_mut();
            ta.insert(&mut txn, 0, "alpha ");
            txn.encode_update_v1()
        };
        let ub = {
            let mut txn = b.transact_mut();
            tb.insert(&mut txn, 0, "beta ");
            txn.encode_update_v1()
        };
        recv(&mut room, PeerId(1), encode_update(&ua), Access::ReadWrite).unwrap();
        recv(&mut room, PeerId(2), encode_update(&ub), Access::ReadWrite).unwrap();
        for doc in [&a, &b] {
            let sv = doc.transact().state_vector().encode_v1();
            let diff = room.diff(&sv).unwrap();
            doc.transact_mut()
                .apply_update(Update::decode_v1(&diff).unwrap())
                .unwrap();
        }
        let sa = ta.get_string(&a.transact());
        let sb = tb.get_string(&b.transact());
        assert_eq!(sa, sb);
        assert_eq!(sa, text_of(&room));
    }

    #[test]
    fn step1_is_answered_with_step2_even_when_empty() {
        let mut room = Room::new(RoomLimits::default());
        let sv = StateVector::default().encode_v1();
        let outbox = recv(
            &mut room,
            PeerId(1),
            message::encode_step1(&sv),
            Access::ReadOnly,
        )
        .unwrap();
        assert_eq!(outbox.reply, vec![message::encode_step2(&EMPTY_UPDATE)]);
    }

    #[test]
    fn read_only_updates_are_refused_and_not_applied() {
        let mut room = Room::new(RoomLimits::default());
        let outbox = recv(
            &mut room,
            PeerId(1),
            encode_update(&text_update(1, "x")),
            Access::ReadOnly,
        )
        .unwrap();
        assert!(outbox.persist.is_empty() && outbox.broadcast.is_empty());
        assert_eq!(outbox.reply, vec![permission_denied()]);
        assert_eq!(text_of(&room), "");
    }

    #[test]
    fn awareness_is_tracked_per_peer_and_removed_on_leave() {
        let mut room = Room::new(RoomLimits::default());
        room.join(PeerId(7));
        let client = (1u64 << 52) + 5;
        let update = AwarenessUpdate {
            entries: vec![AwarenessEntry {
                client_id: client,
                clock: 1,
                state: Some("{\"user\":\"ada\"}".into()),
            }],
        };
        let frame = message::encode_awareness(&update.encode());
        let outbox = recv(&mut room, PeerId(7), frame.clone(), Access::ReadOnly).unwrap();
        assert_eq!(outbox.broadcast, vec![frame]);
        // A late joiner is told.
        let joined = room.join(PeerId(8));
        assert_eq!(joined.len(), 2);
        let removal = room.leave(PeerId(7)).removal.unwrap();
        let Message::Awareness(payload) = tandem_sync::decode(removal).unwrap() else {
            panic!("not an awareness message");
        };
        let removed = AwarenessUpdate::decode(&payload).unwrap();
        assert_eq!(removed.entries[0].client_id, client);
        assert_eq!(removed.entries[0].state, None);
        assert_eq!(room.awareness_count(), 0);
    }

    #[test]
    fn a_peer_cannot_announce_more_awareness_clients_than_allowed() {
        let mut room = Room::new(RoomLimits {
            max_awareness_per_peer: 2,
            ..RoomLimits::default()
        });
        room.join(PeerId(1));
        let announce = |ids: &[u64]| {
            let update = AwarenessUpdate {
                entries: ids
                    .iter()
                    .map(|&client_id| AwarenessEntry {
                        client_id,
                        clock: 1,
                        state: Some("{}".into()),
                    })
                    .collect(),
            };
            message::encode_awareness(&update.encode())
        };
        recv(&mut room, PeerId(1), announce(&[1, 2]), Access::ReadWrite).unwrap();
        assert!(matches!(
            recv(&mut room, PeerId(1), announce(&[3]), Access::ReadWrite),
            Err(RoomError::TooManyAwarenessClients { limit: 2 })
        ));
        assert_eq!(room.awareness_count(), 2);
    }

    #[test]
    fn updates_before_a_bad_message_in_the_same_frame_are_still_delivered() {
        let mut room = Room::new(RoomLimits::default());
        room.join(PeerId(1));
        let mut frame = encode_update(&text_update(1, "kept")).to_vec();
        frame.extend_from_slice(&[42, 0]);
        let mut outbox = Outbox::default();
        let result = room.receive(PeerId(1), frame.into(), Access::ReadWrite, &mut outbox);
        assert!(matches!(result, Err(RoomError::Unsupported(42))));
        assert_eq!(outbox.persist.len(), 1);
        assert_eq!(outbox.broadcast.len(), 1);
        assert_eq!(text_of(&room), "kept");
    }

    #[test]
    fn an_update_waiting_on_missing_dependencies_counts_once() {
        let doc = Doc::with_client_id(5);
        let text = doc.get_or_insert_text("t");
        let first = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "a");
            txn.encode_update_v1()
        };
        let second = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 1, "b");
            txn.encode_update_v1()
        };
        let mut room = Room::new(RoomLimits::default());
        // The second update alone waits for the first: kept (persisted) once, not again.
        assert_eq!(
            room.apply_update(second.clone().into())
                .unwrap()
                .persist
                .len(),
            1
        );
        assert!(room.apply_update(second.into()).unwrap().is_empty());
        // With pending content in the doc, an unrelated duplicate is still recognised as one.
        let other = text_update(6, "x");
        assert_eq!(
            room.apply_update(other.clone().into())
                .unwrap()
                .persist
                .len(),
            1
        );
        assert!(room.apply_update(other.into()).unwrap().is_empty());
        assert_eq!(room.apply_update(first.into()).unwrap().persist.len(), 1);
        assert!(text_of(&room).contains("ab"));
    }

    #[test]
    fn a_reconnecting_client_keeps_its_awareness_when_the_old_connection_closes() {
        let mut room = Room::new(RoomLimits::default());
        let announce = |clock| {
            let update = AwarenessUpdate {
                entries: vec![AwarenessEntry {
                    client_id: 77,
                    clock,
                    state: Some("{}".into()),
                }],
            };
            message::encode_awareness(&update.encode())
        };
        room.join(PeerId(1));
        recv(&mut room, PeerId(1), announce(1), Access::ReadWrite).unwrap();
        room.join(PeerId(2));
        recv(&mut room, PeerId(2), announce(2), Access::ReadWrite).unwrap();
        // The old connection's close comes late: nothing to remove.
        assert!(room.leave(PeerId(1)).removal.is_none());
        assert_eq!(room.awareness_count(), 1);
        assert!(room.leave(PeerId(2)).removal.is_some());
        assert_eq!(room.awareness_count(), 0);
    }

    #[test]
    fn heartbeat_is_echoed_and_unknown_types_refused() {
        let mut room = Room::new(RoomLimits::default());
        let heartbeat = Bytes::from_static(&[102, 4, 2]);
        let outbox = recv(&mut room, PeerId(1), heartbeat.clone(), Access::ReadWrite).unwrap();
        assert_eq!(outbox.reply, vec![heartbeat]);
        assert!(matches!(
            recv(
                &mut room,
                PeerId(1),
                Bytes::from_static(&[77, 1]),
                Access::ReadWrite
            ),
            Err(RoomError::Unsupported(77))
        ));
    }

    #[test]
    fn document_size_limit_is_enforced() {
        let mut room = Room::new(RoomLimits {
            max_doc_bytes: 64,
            ..RoomLimits::default()
        });
        let big = text_update(1, &"x".repeat(100));
        assert!(matches!(
            room.apply_update(big.into()),
            Err(RoomError::TooLarge { limit: 64 })
        ));
        assert_eq!(text_of(&room), "");
    }

    /// Maps nested `depth` deep under root `m`, as one update, and the update that deletes
    /// them all (the outermost goes, the rest with it).
    fn nested_maps(depth: usize) -> (Vec<u8>, Vec<u8>) {
        use yrs::{MapPrelim, MapRef};
        let doc = Doc::with_client_id(9);
        let root = doc.get_or_insert_map("m");
        let mut txn = doc.transact_mut();
        let mut inner: MapRef = root.insert(&mut txn, "k", MapPrelim::default());
        for _ in 1..depth {
            inner = inner.insert(&mut txn, "k", MapPrelim::default());
        }
        let create = txn.encode_update_v1();
        drop(txn);
        let mut txn = doc.transact_mut();
        root.remove(&mut txn, "k");
        (create, txn.encode_update_v1())
    }

    #[test]
    fn forged_counts_and_deep_values_are_refused_before_yrs_reads_them() {
        let mut room = Room::new(RoomLimits::default());
        room.apply_update(text_update(1, "kept").into()).unwrap();
        // One client declaring 2^27 of them (yrs would reserve a table for that many first).
        let bomb = vec![0x80, 0x80, 0x80, 0x40, 0, 0];
        // An `Any` nested 100,000 deep in 200 kB: yrs's recursive decoder would overflow the
        // stack, which aborts the process.
        let mut deep = vec![1, 1, 5, 0, 8, 1, 1, b't', 1];
        for _ in 0..100_000 {
            deep.extend([117, 1]);
        }
        deep.extend([126, 0]);
        for update in [bomb, deep] {
            assert!(matches!(
                room.apply_update(update.clone().into()),
                Err(RoomError::BadUpdate(_))
            ));
            let mut outbox = Outbox::default();
            room.join(PeerId(1));
            let frame = message::encode_update(&update);
            assert!(room
                .receive(PeerId(1), frame, Access::ReadWrite, &mut outbox)
                .is_err());
            assert!(outbox.persist.is_empty() && outbox.broadcast.is_empty());
        }
        assert!(!room.is_poisoned());
        assert_eq!(text_of(&room), "kept");
    }

    /// Found by the `room` fuzz target: nine characters of client 8 in root `t`, then an item
    /// whose parent is one of those characters (not a type). yrs integrates the nine, then
    /// refuses the update.
    const HALF_APPLIED: [u8; 56] = [
        0x01, 0x0a, 0x08, 0x00, 0x04, 0x01, 0x01, 0x74, 0x01, 0x5c, 0x84, 0x08, 0x00, 0x01, 0x64,
        0x84, 0x08, 0x01, 0x01, 0x6f, 0x84, 0x08, 0x02, 0x01, 0x63, 0x84, 0x08, 0x03, 0x01, 0x75,
        0x84, 0x08, 0x04, 0x01, 0x6d, 0x84, 0x08, 0x05, 0x01, 0x65, 0x84, 0x08, 0x06, 0x01, 0x6e,
        0x84, 0x08, 0x07, 0x01, 0x08, 0x01, 0x63, 0x08, 0x01, 0x63, 0x00,
    ];

    #[test]
    fn an_update_yrs_refuses_halfway_through_poisons_the_room() {
        let mut room = Room::new(RoomLimits::default());
        room.apply_update(text_update(1, "kept").into()).unwrap();
        assert!(matches!(
            room.apply_update(Bytes::from_static(&HALF_APPLIED)),
            Err(RoomError::Rejected(_))
        ));
        // What it integrated is in the room but will never be stored: the room must reload.
        assert!(room.is_poisoned());
        // One yrs refuses outright changes nothing and poisons nothing.
        let mut room = Room::new(RoomLimits::default());
        let refused = room.apply_update(Bytes::from_static(&[1, 1, 5, 0, 0x0f, 0, 0]));
        assert!(refused.is_err(), "{refused:?}");
        assert!(!room.is_poisoned());
    }

    #[test]
    fn a_document_yrs_cannot_write_poisons_the_room_instead_of_panicking() {
        // Legacy JSON content waiting on a missing origin, as a store written before the update
        // check refused such content may hold: yrs panics whenever it writes the document.
        static STORED: [u8; 13] = [1, 1, 7, 0, 0x82, 8, 0, 1, 1, b'1', 1, b'2', 0];
        let mut room = Room::load(RoomLimits::default(), None, [&STORED[..]]).unwrap();
        assert!(matches!(room.diff(&[0]), Err(RoomError::Poisoned)));
        assert!(room.is_poisoned());
        assert!(matches!(room.snapshot(), Err(RoomError::Poisoned)));
        // And the update check refuses such content at the door.
        assert!(matches!(
            Room::new(RoomLimits::default()).apply_update(Bytes::from_static(&STORED)),
            Err(RoomError::BadUpdate(_))
        ));
    }

    #[test]
    fn a_room_covers_the_updates_it_holds_and_no_others() {
        let mut room = Room::new(RoomLimits::default());
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        let typed = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello");
            txn.encode_update_v1()
        };
        let deleted = {
            let mut txn = doc.transact_mut();
            text.remove_range(&mut txn, 0, 2);
            txn.encode_update_v1()
        };
        assert!(room.covers(&EMPTY_UPDATE));
        assert!(!room.covers(&typed));
        room.apply_update(typed.clone().into()).unwrap();
        assert!(room.covers(&typed));
        // The same insertions with a deletion the room has not seen.
        assert!(!room.covers(&deleted));
        room.apply_update(deleted.clone().into()).unwrap();
        assert!(room.covers(&deleted));
        let whole = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert!(room.covers(&whole));
        assert!(!room.covers(&[1, 2, 3]));
    }

    #[test]
    fn updates_held_back_for_a_missing_one_are_all_stored() {
        // One client types four characters, one update each; the room gets them out of order,
        // the first last, so the others wait in yrs's pending set until it arrives.
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        let updates: Vec<Vec<u8>> = "abcd"
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let mut txn = doc.transact_mut();
                text.insert(&mut txn, i as u32, &c.to_string());
                txn.encode_update_v1()
            })
            .collect();
        let mut room = Room::new(RoomLimits::default());
        let mut stored = Vec::new();
        for i in [1, 2, 3, 0] {
            let outbox = room.apply_update(updates[i].clone().into()).unwrap();
            assert_eq!(outbox.persist.len(), 1, "update {i} was not kept");
            stored.extend(outbox.persist);
        }
        // Sent again, they change nothing and are not stored twice.
        assert!(room
            .apply_update(updates[2].clone().into())
            .unwrap()
            .persist
            .is_empty());
        let text_of = |room: &Room| {
            room.doc()
                .get_or_insert_text("t")
                .get_string(&room.doc().transact())
        };
        assert_eq!(text_of(&room), "abcd");
        let reloaded = Room::load(
            RoomLimits::default(),
            None,
            stored.iter().map(|u| u.as_ref()),
        )
        .unwrap();
        assert_eq!(text_of(&reloaded), "abcd");
        assert_eq!(reloaded.state_vector(), room.state_vector());
    }

    #[test]
    fn an_update_yrs_would_integrate_past_a_hole_is_refused_until_the_hole_is_filled() {
        // Client 7's deleted item at clock 4, with no origin: yrs would integrate it at once,
        // behind a skip for clocks 0..4, and a later update overlapping that skip made yrs
        // free an item it still linked to (the room fuzz target's heap use-after-free,
        // corpus/room/regress-uaf-parent-sub).
        let early = [1, 1, 7, 4, 1, 1, 1, b't', 2, 0];
        let mut room = Room::new(RoomLimits::default());
        let before = room.state_vector();
        let err = room
            .apply_update(Bytes::copy_from_slice(&early))
            .unwrap_err();
        assert!(
            matches!(&err, RoomError::Rejected(why) if why.contains("client 7") && why.contains("clock 4")),
            "{err}"
        );
        assert_eq!(room.state_vector(), before);
        // Once the client's first four clocks are there, it applies.
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "abcd");
        let first = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        room.apply_update(first.into()).unwrap();
        let outbox = room.apply_update(Bytes::copy_from_slice(&early)).unwrap();
        assert_eq!(outbox.persist.len(), 1);
        assert_eq!(text_of(&room), "abcd");
        // Out-of-order typing still waits for what it follows, as before.
    }

    #[test]
    fn shared_types_are_capped_so_nesting_cannot_overflow_the_stack() {
        let limits = RoomLimits {
            max_types: 300,
            ..RoomLimits::default()
        };
        // Within the cap: created, then deleted (recursively, by yrs), then collected.
        let mut room = Room::new(limits);
        let (create, delete) = nested_maps(300);
        room.apply_update(create.into()).unwrap();
        room.apply_update(delete.into()).unwrap();
        // The deleted types leave the count with the next snapshot.
        let snapshot = room.snapshot().unwrap();
        let (again, _) = nested_maps(300);
        let mut later = Room::load(limits, Some(&snapshot), []).unwrap();
        assert!(later.apply_update(again.into()).is_ok());
        // Past it: refused whole, nothing applied.
        let mut room = Room::new(limits);
        let (create, _) = nested_maps(301);
        assert!(matches!(
            room.apply_update(create.into()),
            Err(RoomError::TooManyTypes { limit: 300 })
        ));
        assert_eq!(room.state_vector(), Room::new(limits).state_vector());
        // A stored document is counted as it loads.
        let (create, _) = nested_maps(200);
        let mut loaded = Room::load(limits, None, [create.as_slice()]).unwrap();
        let (more, _) = {
            let doc = Doc::with_client_id(10);
            let m = doc.get_or_insert_map("other");
            let mut txn = doc.transact_mut();
            for i in 0..101 {
                m.insert(&mut txn, i.to_string(), yrs::MapPrelim::default());
            }
            (txn.encode_update_v1(), ())
        };
        assert!(matches!(
            loaded.apply_update(more.into()),
            Err(RoomError::TooManyTypes { limit: 300 })
        ));
    }

    #[test]
    fn snapshot_and_log_reload_to_the_same_state() {
        let mut room = Room::new(RoomLimits::default());
        room.apply_update(text_update(1, "one ").into()).unwrap();
        let snapshot = room.snapshot().unwrap();
        let tail = {
            let doc = Doc::with_client_id(2);
            let m = doc.get_or_insert_map("m");
            let mut txn = doc.transact_mut();
            m.insert(&mut txn, "k", "v");
            txn.encode_update_v1()
        };
        room.apply_update(tail.clone().into()).unwrap();
        let reloaded =
            Room::load(RoomLimits::default(), Some(&snapshot), [tail.as_slice()]).unwrap();
        assert_eq!(reloaded.state_vector(), room.state_vector());
        assert_eq!(text_of(&reloaded), "one ");
        let m = reloaded.doc().transact_mut().get_or_insert_map("m");
        assert_eq!(
            m.get(&reloaded.doc().transact(), "k")
                .map(|v| v.to_string(&reloaded.doc().transact())),
            Some("v".to_string())
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        // Random bytes, and random mutations of a valid update, never panic and never take the
        // room down: it either applies, refuses, or reports itself poisoned.
        #[test]
        fn apply_path_contains_any_input(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut room = Room::new(RoomLimits::default());
            let _ = recv(&mut room, PeerId(1), Bytes::from(bytes.clone()), Access::ReadWrite);
            let _ = room.apply_update(Bytes::from(bytes));
        }

        #[test]
        fn mutated_updates_are_contained(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
            let mut update = text_update(3, "hello world");
            for (index, value) in flips {
                let i = index.index(update.len());
                update[i] = value;
            }
            let mut room = Room::new(RoomLimits::default());
            room.apply_update(text_update(4, "base").into()).unwrap();
            let _ = room.apply_update(Bytes::from(update));
            if !room.is_poisoned() {
                // Still usable.
                room.apply_update(text_update(5, "after").into()).unwrap();
            }
        }
    }
}
