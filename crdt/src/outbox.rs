//! What comes out of a [`Room`](crate::Room) for the caller to deliver ([`Outbox`],
//! [`Departure`], [`Polled`]), and what an HTTP poller hands in ([`PollInput`]).

use std::sync::Arc;

use bytes::Bytes;

/// What the caller must deliver after [`Room::receive`](crate::Room::receive) or [`Room::apply_update`](crate::Room::apply_update).
#[derive(Debug, Default)]
pub struct Outbox {
    /// Updates to append to the document's log. They must be in the log before `broadcast`
    /// goes out.
    pub persist: Vec<Bytes>,
    /// Frames for the peer that sent the input, in order, one message each.
    pub reply: Vec<Bytes>,
    /// Frames for every other peer of the room, in order, one message each.
    pub broadcast: Vec<Bytes>,
    /// What the input changed in awareness, when the room is observed ([`Room::observe`](crate::Room::observe)).
    pub awareness: Vec<AwarenessChange>,
}

/// One awareness client's new state, for whoever observes a room's awareness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessChange {
    pub client: u64,
    /// The state's JSON; `None` when the client was removed.
    pub state: Option<Arc<str>>,
    /// Whether the state differs from the one before (false for a renewal).
    pub changed: bool,
}

impl Outbox {
    /// Whether there is nothing to deliver.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty() && self.reply.is_empty() && self.broadcast.is_empty()
    }
}

/// What a peer's leaving changed, from [`Room::leave`](crate::Room::leave).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Departure {
    /// The awareness frame telling the remaining peers its clients are gone, if it had any.
    pub removal: Option<Bytes>,
    /// The awareness clients that went with it.
    pub clients: Vec<u64>,
}

/// What a poller sends in one [`Room::poll`](crate::Room::poll).
#[derive(Debug, Clone, Copy)]
pub struct PollInput<'a> {
    /// Its awareness client id.
    pub client: u64,
    /// Its encoded state vector.
    pub state_vector: &'a [u8],
    /// Its edits the room may lack, as one v1 update.
    pub update: Option<&'a [u8]>,
    /// Its own awareness state, as an encoded awareness update.
    pub awareness: Option<&'a [u8]>,
}

/// The answer to one [`Room::poll`](crate::Room::poll).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polled {
    /// What the poller lacks, as a v1 update.
    pub update: Vec<u8>,
    /// The document's state vector, so the poller knows what the room lacks.
    pub state_vector: Vec<u8>,
    /// Every live awareness state as one encoded awareness update; `None` when there is none.
    pub awareness: Option<Vec<u8>>,
}
