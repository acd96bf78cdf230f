//! The dashboard's events over Redis: [`Cluster`] as the hub's [`HubBus`], the receiver's
//! part for events, and the checks that backfill from PostgreSQL what a lost message left
//! out: a gap that lasts (a later event came, an earlier one did not), and a last event that
//! never came (the log's last id is ahead of what was released, twice in a row).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tandem_storage::StoredEvent;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::bus::{Outgoing, Subscription};
use super::wire::EventMessage;
use super::Cluster;
use crate::dashboard::HubBus;

/// How long a workspace waits for a missing event before reading it from the log.
const GAP_WAIT: Duration = Duration::from_millis(200);

/// How often gaps are looked for.
const GAP_CHECK: Duration = Duration::from_millis(100);

/// How often the log's last ids are compared with what was released.
const LAST_CHECK: Duration = Duration::from_secs(1);

impl HubBus for Cluster {
    fn subscribe<'a>(&'a self, workspace: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let channel = self.events_channel(workspace);
            self.wanted.insert(channel.clone());
            let (done, subscribed) = oneshot::channel();
            if self
                .subscriptions
                .send(Subscription::Subscribe(channel, done))
                .is_ok()
            {
                let _ = tokio::time::timeout(self.settings.timeout, subscribed).await;
            }
        })
    }

    fn released(&self, workspace: &str, event: &StoredEvent) {
        let _ = self.outgoing.send(Outgoing::Event {
            workspace: workspace.to_owned(),
            event: event.clone(),
        });
    }
}

impl Cluster {
    /// Another node's event.
    pub(super) fn on_event(&self, workspace: &str, payload: Vec<u8>) {
        let message = match EventMessage::decode(Bytes::from(payload)) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(workspace, error = %err, "an unreadable event on the bus");
                return;
            }
        };
        if message.origin == self.settings.origin {
            return;
        }
        if let Some(hub) = self.hub() {
            hub.remote_event(
                workspace,
                &StoredEvent {
                    id: message.id,
                    at_ms: message.at_ms,
                    body: message.body.to_vec(),
                },
            );
        }
    }

    /// Backfills the workspaces whose events stalled, until `stop`.
    pub(super) async fn event_checks(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(GAP_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_last_check = tokio::time::Instant::now() + LAST_CHECK;
        // Per workspace: the released id seen behind the log's last id at the last check.
        let mut behind: HashMap<String, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(hub) = self.hub() else { return };
            for workspace in hub.stalled(GAP_WAIT) {
                self.backfill(&hub, &workspace, "a gap in its events").await;
            }
            if tokio::time::Instant::now() < next_last_check {
                continue;
            }
            next_last_check = tokio::time::Instant::now() + LAST_CHECK;
            for (workspace, released) in hub.released_ids() {
                let last = match hub.committed_id(&workspace).await {
                    Ok(last) => last,
                    Err(err) => {
                        tracing::debug!(workspace, error = %err, "cannot read the log's last id");
                        continue;
                    }
                };
                if last <= released {
                    behind.remove(&workspace);
                } else if behind.get(&workspace) == Some(&released) {
                    // Still behind a second later: the last message was lost.
                    behind.remove(&workspace);
                    self.backfill(&hub, &workspace, "its last event never came")
                        .await;
                } else {
                    behind.insert(workspace, released);
                }
            }
        }
    }

    async fn backfill(&self, hub: &crate::dashboard::Hub, workspace: &str, why: &str) {
        let started = std::time::Instant::now();
        match hub.backfill(workspace).await {
            Ok(found) => {
                let metrics = crate::metrics::get();
                metrics.gaps_repaired.increment(1);
                metrics
                    .repair
                    .record(crate::metrics::secs(started.elapsed()));
                tracing::debug!(workspace, found, why, "events backfilled from the log");
            }
            Err(err) => tracing::warn!(workspace, error = %err, "backfilling events failed"),
        }
    }
}
