//! The path of an event: appended to the workspace's log and given its id ([`Hub::publish`],
//! and the server's own events through `emit`), held in the workspace's `pending` list until
//! its group commit, then released in id order to every connection that sees it ([`Viewer`]),
//! to the inboxes of the users it names, and (query lifecycle events) into the query's
//! document.
//!
//! Ordering and durability: an event is appended, given its id and queued in `pending` under
//! the workspace's lock, so `pending` is in id order. It goes out only once the group commit has
//! made it durable, and whoever sees the commit first releases every durable event at the front
//! of `pending`, in order. So every connection receives a workspace's events in id order, never
//! one that a crash could still take back, and a reconnecting client's `since` is an exact
//! resume point.

use std::sync::Arc;

use serde_json::{Map, Value};
use tandem_crdt::Any;
use tandem_storage::StoreError;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::catalogue::{self, Event};
use super::delivery::Delivered;
use super::hub::{Hub, PublishError};
use super::workspace::{Pending, State, Workspace};
use crate::durability::{DurabilityError, Ticket};

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
        let (id, ticket) = {
            let mut st = ws.lock();
            self.append(&ws, &mut st, event)?
        };
        self.settle(&ws, ticket).await?;
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

    /// Appends with the workspace locked: the id, the `pending` order and the badges agree.
    fn append(
        &self,
        ws: &Workspace,
        st: &mut State,
        mut event: Event,
    ) -> Result<(u64, Ticket), StoreError> {
        let published = Instant::now();
        let now = OffsetDateTime::now_utc();
        event.fields.insert(
            "timestamp".into(),
            Value::String(crate::clock::rfc3339_exact(now)),
        );
        let body = Value::Object(std::mem::take(&mut event.fields)).to_string();
        let id = self
            .store
            .append(&ws.name, crate::clock::unix_ms(now), body.as_bytes())?;
        let badge_users = if event.kind == "new_chat_message" {
            serde_json::from_str::<Map<String, Value>>(&body)
                .map(|fields| self.raise_badges(ws, st, &fields, &event.user_ids))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let ticket = self.durability.appended();
        st.pending.push_back(Pending {
            ticket,
            event: Arc::new(Delivered::live(id, &event, &body, published)),
            badge_users,
        });
        Ok((id, ticket))
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

    /// Sends every durable event at the front of `pending`, in order.
    pub(super) fn release(&self, ws: &Workspace) {
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
            for user in pending.event.user_ids() {
                if let Some(entry) = st.users.get_mut(user) {
                    if pending.event.muted_by(entry.muted) {
                        continue;
                    }
                    entry.record.inbox.notify(pending.event.frame.as_str());
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
        let Some(session) = fields.get("session_id").and_then(catalogue::id_text) else {
            return Vec::new();
        };
        let sender = fields.get("sender").and_then(catalogue::id_text);
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
                .inbox
                .raise_badge(&session, self.settings.max_chat_badges);
            self.save(ws, user, &entry.record);
        }
        recipients
    }
}
