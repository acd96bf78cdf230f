//! The dashboard over Redis: [`Cluster`] as the hub's [`HubBus`]: events (the receiver's
//! part, and the checks that backfill from PostgreSQL what a lost message left out: a gap
//! that lasts, a later event came and an earlier one did not, and a last event that never
//! came, the log's last id ahead of what was released twice in a row), and locks, one holder
//! cluster-wide: a key per lock holding its holder's token (this node's origin and the
//! connection) and the lock's JSON, taken with `SET NX PX`, renewed and released only by the
//! token that holds it; a dead node's locks lapse with their TTL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tandem_storage::StoredEvent;
use tokio_util::sync::CancellationToken;

use super::bus::Outgoing;
use super::wire::EventMessage;
use super::Cluster;
use crate::dashboard::roster::{Heard, Told};
use crate::dashboard::HubBus;
use crate::net::ConnId;

/// How long a workspace waits for a missing event before reading it from the log.
const GAP_WAIT: Duration = Duration::from_millis(200);

/// How often gaps are looked for.
const GAP_CHECK: Duration = Duration::from_millis(100);

/// How often the log's last ids are compared with what was released.
const LAST_CHECK: Duration = Duration::from_secs(1);

impl HubBus for Cluster {
    fn subscribe<'a>(&'a self, workspace: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.subscribe_to(self.events_channel(workspace)))
    }

    fn released(&self, workspace: &str, event: &StoredEvent) {
        let _ = self.outgoing.send(Outgoing::Event {
            workspace: workspace.to_owned(),
            event: event.clone(),
        });
    }

    fn claim<'a>(
        &'a self,
        workspace: &'a str,
        resource: &'a str,
        conn: ConnId,
        info: String,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let key = self.lock_key(workspace, resource);
            // A lease of its own: a late release of the connection's previous lease of this
            // lock cannot delete this one.
            let lease = (key.clone(), conn);
            let (token, fresh) = match self.leases.get(&lease) {
                Some(token) => (token.clone(), false),
                None => (self.lease_token(conn), true),
            };
            let mut claim = CLAIM.key(&key);
            claim
                .arg(self.holder_prefix(conn))
                .arg(format!("{token}\n{info}"))
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            let claimed = tokio::time::timeout(
                self.settings.timeout,
                claim.invoke_async::<Option<String>>(&mut self.redis.clone()),
            )
            .await;
            match claimed {
                Ok(Ok(None)) => {
                    if fresh {
                        self.leases.insert(lease, token);
                    }
                    Ok(None)
                }
                // Someone else's: their token, a newline, their lock's JSON.
                Ok(Ok(Some(held))) => Ok(Some(
                    held.split_once('\n')
                        .map(|(_, info)| info.to_owned())
                        .unwrap_or_default(),
                )),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err("Redis did not answer in time".to_owned()),
            }
        })
    }

    fn unloaded(&self, workspace: &str) {
        // The others stop counting this node for the workspace (who speaks for it).
        let _ = self.outgoing.send(Outgoing::Told {
            workspace: workspace.to_owned(),
            heard: Heard::All {
                entries: std::collections::HashMap::new(),
            },
        });
        let channel = self.events_channel(workspace);
        self.wanted.remove_if_mut(&channel, |_, wanting| {
            *wanting = wanting.saturating_sub(1);
            *wanting == 0
        });
        let _ = self
            .subscriptions
            .send(super::bus::Subscription::Unsubscribe(channel));
    }

    fn origin(&self) -> i64 {
        self.settings.origin
    }

    fn tell(&self, workspace: &str, key: &str, value: Option<String>) {
        let _ = self.outgoing.send(Outgoing::Told {
            workspace: workspace.to_owned(),
            heard: Heard::Set {
                key: key.to_owned(),
                value,
            },
        });
    }

    fn loaded(&self, workspace: &str) {
        if let Some(this) = self.me.upgrade() {
            this.schedule_reread(workspace.to_owned());
        }
    }

    fn roster<'a>(&'a self, workspace: &'a str) -> BoxFuture<'a, Result<Vec<(i64, Told)>, String>> {
        Box::pin(self.read_roster(workspace))
    }

    fn unclaim(&self, workspace: &str, resource: &str, conn: ConnId) {
        let key = self.lock_key(workspace, resource);
        let Some((_, token)) = self.leases.remove(&(key.clone(), conn)) else {
            return;
        };
        if self.redis_down.load(std::sync::atomic::Ordering::Acquire) {
            // It lapses with its TTL.
            return;
        }
        let (mut redis, timeout) = (self.redis.clone(), self.settings.timeout);
        self.tasks.spawn(async move {
            let mut unclaim = UNCLAIM.key(key);
            unclaim.arg(token);
            let released =
                tokio::time::timeout(timeout, unclaim.invoke_async::<i64>(&mut redis)).await;
            if !matches!(released, Ok(Ok(_))) {
                tracing::debug!("letting go of a lock failed; it lapses with its TTL");
            }
        });
    }
}

/// Takes the lock (`SET NX PX`), or renews it when the caller's connection holds it (its
/// value starts with the connection's prefix: this lease or a previous one of it); otherwise
/// answers the value that holds it. KEYS[1]: the lock; ARGV: the connection's prefix (ending
/// in ':'), the value (the lease's token, a newline, the lock's JSON), the TTL in ms.
static CLAIM: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
            return false
        end
        local held = redis.call('GET', KEYS[1])
        if held and string.sub(held, 1, string.len(ARGV[1])) == ARGV[1] then
            redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
            return false
        end
        return held
        ",
    )
});

/// Deletes the lock if the lease's token holds it. KEYS[1]: the lock; ARGV[1]: the token.
static UNCLAIM: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local held = redis.call('GET', KEYS[1])
        if held and string.sub(held, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '\n' then
            return redis.call('DEL', KEYS[1])
        end
        return 0
        ",
    )
});

impl Cluster {
    /// The key of `resource`'s lock in `workspace`.
    fn lock_key(&self, workspace: &str, resource: &str) -> String {
        self.key(&format!("lock:{workspace}:{resource}"))
    }

    /// How the tokens of this node's connection `conn` start.
    fn holder_prefix(&self, conn: ConnId) -> String {
        format!("{}:{}:", self.settings.origin, conn.0)
    }

    /// A token for a new lease of `conn`.
    fn lease_token(&self, conn: ConnId) -> String {
        let lease = self
            .lease_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{lease}", self.holder_prefix(conn))
    }

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
            let (workspaces, released): (Vec<String>, Vec<u64>) =
                hub.released_ids().into_iter().unzip();
            if workspaces.is_empty() {
                continue;
            }
            let lasts = match hub.committed_ids(&workspaces).await {
                Ok(lasts) => lasts,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot read the logs' last ids");
                    continue;
                }
            };
            for ((workspace, released), last) in workspaces.into_iter().zip(released).zip(lasts) {
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
