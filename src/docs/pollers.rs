//! HTTP pollers: clients that sync a document with `POST /api/v1/docs/{doc}/sync` rounds
//! instead of a connection. Each is a peer of the room (its cursor shows, its edits go to every
//! connection) until it has not polled for `--doc-poll-ttl-ms`; one user keeps at most
//! `--max-pollers-per-user` per document.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tandem_crdt::{Access, Departure, Outbox, PeerId, PollInput, Polled};

use super::delivery::Overflow;
use super::rooms::{Poller, RoomOpError, RoomState, Rooms};
use crate::docname::DocName;
use crate::durability::Ticket;
use crate::net::registry::DocHold;
use crate::net::ConnId;

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
    /// The user's hold on the document (with authentication), kept as long as the poller is.
    pub hold: Option<DocHold>,
}

impl Rooms {
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
        let mut hold = request.hold;
        let (result, awareness, evicted, overflow) = self
            .with_state(name, |handle, state| {
                let mut overflow = Overflow::default();
                let known = state.pollers.get(&key).map(|p| p.peer);
                let peer = known.unwrap_or_else(|| PeerId(ConnId::next().0));
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
                    state.pollers.insert(
                        key.clone(),
                        Poller {
                            peer,
                            expires,
                            _hold: hold.take(),
                        },
                    );
                    // Under the room's lock, so the sweep cannot miss this poller.
                    self.polled.insert(name.clone());
                    if known.is_none() {
                        evicted = self.evict_pollers_over_limit(name, state, &request.user);
                    }
                } else if known.is_none() {
                    // A refused first round leaves nothing behind.
                    let Departure { removal, clients } = state.room.leave(peer);
                    outbox.broadcast.extend(removal);
                    self.tell_left(name, peer);
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
        if let Err(RoomOpError::Room(_)) = &result {
            // Only a poisoned room goes.
            self.discard_by_name(name);
        }
        result
    }

    /// Keeps `user`'s pollers of a room within `--max-pollers-per-user`: the ones that would
    /// lapse first go (a reloaded tab is a new client and leaves its old one behind). Returns
    /// the awareness clients that went with them; the room's peers are told.
    fn evict_pollers_over_limit(
        &self,
        handle_name: &DocName,
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
                let Departure { removal, clients } = state.room.leave(poller.peer);
                if let Some(removal) = removal {
                    self.broadcast_detached(state, removal);
                }
                self.tell_left(handle_name, poller.peer);
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
                let Departure { removal, clients } = state.room.leave(poller.peer);
                if let Some(removal) = removal {
                    self.broadcast_detached(&state, removal);
                }
                self.tell_left(&name, poller.peer);
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
}
