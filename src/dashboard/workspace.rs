//! One workspace's dashboard state: its connections and what each subscribed to, the events
//! waiting for their group commit, its users (record, presence, inbox), locks, and who is in
//! which document. All of it sits behind one `std::sync::Mutex`, never held across an
//! `.await`; the hub's methods take it, change the state, and queue messages with `try_send`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::catalogue::{Channel, ChannelSet, Event};
use super::delivery::{Delivered, Viewer};
use super::editing::Editing;
use super::inbox::Inbox;
use super::locks::Locks;
use super::preferences::Muted;
use super::presence::UserPresence;
use super::protocol::ServerFrame;
use super::records::Change;
use super::roster::Roster;
use crate::durability::Ticket;
use crate::net::{CloseReason, Closer, ConnId};
use tandem_storage::{EventSlot, StoredEvent};

/// What a dashboard connection's queue carries, for its writer.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An event: those ready within one batch window go out as one `batch` frame.
    Event(Arc<Delivered>),
    /// Anything else (pong, error, lock answers, chat badges), sent on its own.
    Reply(Utf8Bytes),
    /// A WebSocket ping.
    Ping,
}

/// An event that was appended and is waiting for its group commit (which gives its id).
pub(super) struct Pending {
    pub(super) ticket: Ticket,
    pub(super) slot: EventSlot,
    /// Its type, channel and addressees (its fields are in `body`).
    pub(super) event: Event,
    pub(super) body: String,
    pub(super) at_ms: u64,
    pub(super) published: tokio::time::Instant,
}

/// A committed event waiting for its turn: released once every id before it was.
pub(super) struct Ready {
    /// `None` for an internal event, or an id whose record could not be read (its turn
    /// passes, nothing is sent).
    pub(super) event: Option<Arc<Delivered>>,
    /// What it changes in the users' records.
    pub(super) changes: Vec<Change>,
    /// This node's own events, as stored, for the other nodes.
    pub(super) local: Option<StoredEvent>,
}

/// One workspace's dashboard state.
pub struct Workspace {
    pub(super) name: String,
    state: Mutex<State>,
    /// The last released event id, for long-polls to wait on.
    pub(super) released: watch::Sender<u64>,
    /// When it was last asked for (`Hub::workspace`), for unloading it once idle.
    last_used: Mutex<std::time::Instant>,
}

pub(super) struct State {
    pub(super) conns: HashMap<ConnId, Conn>,
    /// Appended, not yet durable, in the order of the appends.
    pub(super) pending: VecDeque<Pending>,
    /// Committed, waiting for the ids before them, by id.
    pub(super) ready: BTreeMap<u64, Ready>,
    /// Since when `ready` has waited for a missing id.
    pub(super) gap_since: Option<tokio::time::Instant>,
    /// The last event id released to subscribers.
    pub(super) released: u64,
    pub(super) users: HashMap<String, User>,
    pub(super) locks: Locks,
    /// Who has which document open, from its awareness.
    pub(super) editing: Editing,
    /// The user each awareness client of the presence room speaks for.
    pub(super) presence_clients: HashMap<u64, String>,
    /// What the other nodes of a cluster say of the workspace.
    pub(super) roster: Roster,
    /// Whether this node spoke for the workspace at the last release (it saves the records).
    pub(super) spoke: bool,
    /// Releases since the records' checkpoint last moved.
    pub(super) unchecked: u32,
}

/// A dashboard connection as the hub sees it.
pub(super) struct Conn {
    pub(super) user: String,
    pub(super) name: Option<String>,
    pub(super) channels: ChannelSet,
    /// The user's muted event types.
    pub(super) muted: Muted,
    /// The token's document grants (`None`: the whole workspace).
    pub(super) docs: Option<Vec<(String, crate::auth::DocPermission)>>,
    pub(super) tx: mpsc::Sender<Outgoing>,
    pub(super) closer: Closer,
    /// While a replay runs: live events that follow it.
    pub(super) held: Option<Vec<Arc<Delivered>>>,
}

/// What the hub keeps of a user.
#[derive(Default)]
pub(super) struct User {
    /// Whether the user has a record (stored, or made by an event): a user of the workspace,
    /// who gets the chat badges of messages to everyone. Someone only present does not.
    pub(super) known: bool,
    pub(super) record: UserRecord,
    pub(super) muted: Muted,
    pub(super) presence: UserPresence,
    /// Whether the user has a mirror in the presence room (so it is removed once, not on every
    /// look at an awareness-only user).
    pub(super) mirrored: bool,
}

/// A user's persisted state (scope `users/{workspace}` of the state store).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct UserRecord {
    /// Chat badges and the latest notifications.
    #[serde(flatten)]
    pub(super) inbox: Inbox,
    /// Event types not pushed in real time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) muted: Vec<String>,
    /// When the user was last seen, in Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_seen_ms: Option<i64>,
    /// The name they went by when last seen, to list them by while they are offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    /// The last event applied to the record (`records`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) through: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Workspace {
    /// A workspace whose log has released up to `released`, with the users stored for it.
    pub(super) fn new(
        name: &str,
        released: u64,
        users: HashMap<String, User>,
        locks: Locks,
        editing: Editing,
    ) -> Workspace {
        Workspace {
            name: name.to_owned(),
            state: Mutex::new(State {
                conns: HashMap::new(),
                pending: VecDeque::new(),
                ready: BTreeMap::new(),
                gap_since: None,
                released,
                users,
                locks,
                editing,
                presence_clients: HashMap::new(),
                roster: Roster::default(),
                spoke: false,
                unchecked: 0,
            }),
            released: watch::Sender::new(released),
            last_used: Mutex::new(std::time::Instant::now()),
        }
    }

    /// Notes that it is in use.
    pub(super) fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    /// How long since it was last asked for.
    pub(super) fn idle_for(&self) -> std::time::Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// The state, if nobody holds it right now.
    pub(super) fn try_lock(&self) -> Result<MutexGuard<'_, State>, ()> {
        match self.state.try_lock() {
            Ok(st) => Ok(st),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(()),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data changed in whole steps; a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
impl State {
    /// An empty workspace's state.
    pub(super) fn for_tests() -> State {
        State {
            conns: HashMap::new(),
            pending: VecDeque::new(),
            ready: BTreeMap::new(),
            gap_since: None,
            released: 0,
            users: HashMap::new(),
            locks: Locks::new(std::time::Duration::from_secs(30), 10),
            editing: Editing::new(std::time::Duration::from_secs(60)),
            presence_clients: HashMap::new(),
            roster: Roster::default(),
            spoke: false,
            unchecked: 0,
        }
    }
}

impl Conn {
    pub(super) fn viewer(&self) -> Viewer<'_> {
        Viewer {
            user: &self.user,
            channels: self.channels,
            muted: self.muted,
            docs: self.docs.as_deref(),
        }
    }

    /// Queues `message` without waiting: a connection whose queue is full is closed as too slow
    /// at once (it resumes with `since` when it reconnects, so nothing is lost).
    pub(super) fn send(&self, message: Outgoing) -> bool {
        let sent = self.tx.try_send(message).is_ok();
        if !sent && !self.closer.is_closed() {
            tracing::info!(user = %self.user, "dashboard client too slow; closing");
            self.closer.close(CloseReason::Lagging);
        }
        sent
    }
}

impl State {
    /// Queues a released event for every connection that sees it (or holds it behind the
    /// connection's replay).
    pub(super) fn fan_out(&mut self, event: &Arc<Delivered>) {
        // Counted first: a writer may hand the event over before this loop ends.
        let recipients = self
            .conns
            .values()
            .filter(|c| c.viewer().sees(event))
            .count();
        event.expect_recipients(recipients);
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

    /// `user`'s chat badges, as pushed.
    pub(super) fn badges_frame(&self, user: &str) -> Utf8Bytes {
        let badges = self
            .users
            .get(user)
            .map(|u| u.record.inbox.badges())
            .unwrap_or_else(|| Inbox::default().badges());
        ServerFrame::ChatBadges(&badges).text()
    }

    /// Pushes `user`'s chat badges to their connections subscribed to chat sessions.
    pub(super) fn push_badges(&self, user: &str) {
        let frame = self.badges_frame(user);
        for c in self.conns.values() {
            if c.user == user && c.channels.contains(Channel::ChatSessions) {
                c.send(Outgoing::Reply(frame.clone()));
            }
        }
    }
}
