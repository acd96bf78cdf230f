//! The path of an event: appended to the workspace's log and given its id ([`Hub::publish`],
//! and the server's own events through `emit`), held in the workspace's `pending` list until
//! its group commit, then released in id order to every connection that sees it ([`Viewer`]),
//! to the inboxes of the users it names, and (query lifecycle events) into the query's
//! document.
//!
//! Ordering and durability: an event is appended and queued in `pending` under the workspace's
//! lock; the group commit that makes it durable also gives it its id (in the order of the
//! appends). Whoever sees the commit first moves every durable event at the front of
//! `pending` into `ready`, by id, with the events other nodes of a cluster committed (heard of
//! over the bus, or read back from the log when a message was lost: [`Hub::backfill`]), and
//! releases from `ready` exactly the next ids, one after the other. So every connection
//! receives a workspace's events in id order, each once, never one that a crash could still
//! take back, and a reconnecting client's `since` is an exact resume point.

use std::sync::Arc;

use serde_json::Value;
use tandem_crdt::Any;
use tandem_storage::{Since, StoreError, StoredEvent};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::catalogue::{self, Event};
use super::delivery::Delivered;
use super::hub::{Hub, PublishError};
use super::records::{self, Change, Touched};
use super::workspace::{Pending, Ready, State, Workspace};
use crate::durability::{DurabilityError, Ticket};

/// Events one read of a backfill takes.
const BACKFILL_PAGE: usize = 500;

impl Hub {
    /// Appends `event` to `workspace`'s log and, once it is durable, sends it to every
    /// interested connection; a query lifecycle event also writes the query's document. Returns
    /// its id.
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
        let status = event.query_status(workspace);
        let (slot, ticket) = {
            let mut st = ws.lock();
            self.append(&ws, &mut st, event)?
        };
        self.settle(&ws, ticket).await?;
        let id = slot
            .id()
            .ok_or_else(|| StoreError::Task("a committed event has no id".into()))?;
        if let (Some((doc, mut entries)), Some(rooms)) = (status, self.rooms()) {
            // Every editor of the query sees its state without a refresh. The event is already
            // durable; a failure here is logged, not the publisher's problem.
            entries.push(("event_id".into(), Any::from(id as f64)));
            if let Err(err) = rooms
                .edit_map(&doc, catalogue::QUERY_STATUS_MAP, entries)
                .await
            {
                tracing::warn!(%doc, error = %err, "could not write the query's status");
            }
        }
        Ok(id)
    }

    /// Appends with the workspace locked, so the `pending` order and the ids the commit gives
    /// agree.
    pub(super) fn append(
        &self,
        ws: &Workspace,
        st: &mut State,
        mut event: Event,
    ) -> Result<(tandem_storage::EventSlot, Ticket), StoreError> {
        let published = Instant::now();
        let now = OffsetDateTime::now_utc();
        if let Some(hook) = self.event_hook.get().filter(|h| h.wants(&ws.name)) {
            let offline = self.offline_of(st, &event.user_ids);
            hook.appended(&ws.name, event.kind, &event.fields, offline);
        }
        event.fields.insert(
            "timestamp".into(),
            Value::String(crate::clock::rfc3339_exact(now)),
        );
        let body = Value::Object(std::mem::take(&mut event.fields)).to_string();
        let at_ms = crate::clock::unix_ms(now);
        let slot = self.store.append(&ws.name, at_ms, body.as_bytes())?;
        let ticket = self.durability.appended();
        st.pending.push_back(Pending {
            ticket,
            slot: slot.clone(),
            event,
            body,
            at_ms,
            published,
        });
        Ok((slot, ticket))
    }

    /// Of `users`, those offline now.
    fn offline_of(&self, st: &State, users: &[String]) -> Vec<String> {
        if users.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        users
            .iter()
            .filter(|user| {
                st.users.get(*user).is_none_or(|entry| {
                    entry.presence.current(now, &self.settings.presence).status
                        == super::protocol::PresenceStatus::Offline
                })
            })
            .cloned()
            .collect()
    }

    /// Appends one of the server's own events; a failure is logged (the state it reports is
    /// still right in memory, and the next change reports it again).
    pub(super) fn emit(&self, ws: &Workspace, st: &mut State, event: Event) -> Option<Ticket> {
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
    pub(super) fn settle_later(self: &Arc<Self>, ws: &Arc<Workspace>, ticket: Option<Ticket>) {
        let Some(ticket) = ticket else { return };
        let (hub, ws) = (Arc::clone(self), Arc::clone(ws));
        tokio::spawn(async move {
            if let Err(err) = hub.settle(&ws, ticket).await {
                tracing::error!(workspace = %ws.name, error = %err, "server events not flushed");
            }
        });
    }

    /// Moves every durable event at the front of `pending` into `ready` and releases what is
    /// next in id order.
    pub(super) fn release(&self, ws: &Workspace) {
        let durable = self.durability.durable();
        let mut st = ws.lock();
        while st.pending.front().is_some_and(|p| p.ticket <= durable) {
            let Some(pending) = st.pending.pop_front() else {
                break;
            };
            let Some(id) = pending.slot.id() else {
                tracing::error!(workspace = %ws.name, "a committed event has no id; skipped");
                continue;
            };
            let stored = StoredEvent {
                id,
                at_ms: pending.at_ms,
                body: pending.body.clone().into_bytes(),
            };
            if id <= st.released {
                // A backfill read it from the log first (its commit took a while to be
                // seen here): it went out then; the other nodes still hear it from us.
                if let Some(bus) = self.bus() {
                    bus.released(&ws.name, &stored);
                }
                continue;
            }
            let delivered = (!records::is_internal(&stored.body)).then(|| {
                Arc::new(Delivered::live(
                    id,
                    &pending.event,
                    &pending.body,
                    pending.published,
                ))
            });
            st.ready.insert(
                id,
                Ready {
                    event: delivered,
                    changes: Change::of(id, &stored.body),
                    local: Some(stored),
                },
            );
        }
        self.release_ready(ws, &mut st);
    }

    /// Takes in an event another node committed (heard over the bus, or read back from the
    /// log) and releases what is next in id order.
    pub fn remote_event(&self, workspace: &str, stored: &StoredEvent) {
        let Some(ws) = self.loaded(workspace) else {
            return;
        };
        let mut st = ws.lock();
        self.take_in(&ws, &mut st, stored);
        self.release_ready(&ws, &mut st);
    }

    /// Queues another node's `stored` in `ready`.
    fn take_in(&self, ws: &Workspace, st: &mut State, stored: &StoredEvent) {
        if stored.id <= st.released || st.ready.contains_key(&stored.id) {
            return;
        }
        // One of this node's own, committed but not yet seen so here: its own release brings
        // it.
        if st.pending.iter().any(|p| p.slot.id() == Some(stored.id)) {
            return;
        }
        let changes = Change::of(stored.id, &stored.body);
        let event = if records::is_internal(&stored.body) {
            None
        } else {
            let delivered = Delivered::from_stored(stored);
            if delivered.is_none() {
                // Its id still counts, or everything after it would wait forever.
                tracing::warn!(workspace = %ws.name, id = stored.id, "an unreadable event from the log");
            }
            delivered.map(Arc::new)
        };
        st.ready.insert(
            stored.id,
            Ready {
                event,
                changes,
                local: None,
            },
        );
    }

    /// Releases the events of `ready` that come next, in id order: each changes the users'
    /// records (`records`), goes to every connection that sees it, and (this node's own) to
    /// the other nodes.
    fn release_ready(&self, ws: &Workspace, st: &mut State) {
        let mut touched = Touched::default();
        let mut released = None;
        loop {
            let next = st.released + 1;
            let Some(ready) = st.ready.remove(&next) else {
                break;
            };
            st.released = next;
            released = Some(next);
            records::apply(
                st,
                next,
                ready.changes,
                self.settings.max_chat_badges,
                &mut touched,
            );
            if let Some(event) = &ready.event {
                st.fan_out(event);
            }
            if let (Some(local), Some(bus)) = (&ready.local, self.bus()) {
                bus.released(&ws.name, local);
            }
        }
        // Anything at or below what went out was already released (a backfill and the bus
        // both brought it).
        let upto = st.released;
        st.ready.retain(|id, _| *id > upto);
        if st.ready.is_empty() || released.is_some() {
            // A gap is timed from when the releases stopped.
            st.gap_since = None;
        }
        if !st.ready.is_empty() && st.gap_since.is_none() {
            st.gap_since = Some(Instant::now());
        }
        let Some(id) = released else { return };
        self.save_records(ws, st, &touched, id);
        touched.badges.sort();
        touched.badges.dedup();
        for user in &touched.badges {
            st.push_badges(user);
        }
        touched.inboxes.sort();
        touched.inboxes.dedup();
        for user in &touched.inboxes {
            self.sync_inbox(ws, st, user);
        }
        ws.released.send_replace(id);
    }

    /// Reads the events after the last released one from the log and releases them: what a
    /// lost bus message, or a gap that lasted, left out. Returns how many it found.
    ///
    /// # Errors
    /// The store failed.
    pub async fn backfill(&self, workspace: &str) -> Result<usize, StoreError> {
        let Some(ws) = self.loaded(workspace) else {
            return Ok(0);
        };
        let mut found = 0;
        loop {
            let after = ws.lock().released;
            let events = match self.store.since(workspace, after, BACKFILL_PAGE).await? {
                Since::Events(events) => events,
                Since::Resync { oldest } => {
                    // Retention dropped what this node never released: nobody can have it.
                    // Skip to just below the oldest kept event (past the last one when none
                    // is kept).
                    let target = match oldest {
                        0 => self.store.last_id(workspace).await?,
                        oldest => oldest - 1,
                    };
                    let mut st = ws.lock();
                    if target <= st.released {
                        return Ok(found);
                    }
                    tracing::warn!(
                        workspace,
                        released = st.released,
                        target,
                        "events dropped by retention before this node released them"
                    );
                    st.released = target;
                    st.ready.retain(|id, _| *id > target);
                    self.release_ready(&ws, &mut st);
                    ws.released.send_replace(st.released);
                    continue;
                }
            };
            let page = events.len();
            let mut st = ws.lock();
            for stored in &events {
                self.take_in(&ws, &mut st, stored);
            }
            self.release_ready(&ws, &mut st);
            found += page;
            if page < BACKFILL_PAGE || st.released == after {
                return Ok(found);
            }
        }
    }

    /// The loaded workspaces whose next event has been missing for longer than `wait` while
    /// later ones are ready: a lost bus message, or a publisher still committing.
    pub fn stalled(&self, wait: std::time::Duration) -> Vec<String> {
        self.all_loaded()
            .into_iter()
            .filter(|ws| {
                ws.lock()
                    .gap_since
                    .is_some_and(|since| since.elapsed() >= wait)
            })
            .map(|ws| ws.name.clone())
            .collect()
    }

    /// The ids of the newest committed event of each of `workspaces`, by any node (one round
    /// trip).
    ///
    /// # Errors
    /// The store failed.
    pub async fn committed_ids(&self, workspaces: &[String]) -> Result<Vec<u64>, StoreError> {
        self.store.last_ids(workspaces).await
    }

    /// The loaded workspaces and the last event each released, for the check that catches a
    /// lost last message.
    pub fn released_ids(&self) -> Vec<(String, u64)> {
        self.all_loaded()
            .into_iter()
            .map(|ws| {
                let released = ws.lock().released;
                (ws.name.clone(), released)
            })
            .collect()
    }
}
