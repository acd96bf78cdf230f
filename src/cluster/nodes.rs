//! Heartbeats and the live nodes: every third of the node TTL each node refreshes its entry in
//! the nodes' sorted set (scored by when it expires), publishes a [`Heartbeat`], and reads the
//! set. A node heard of by neither for the TTL is dead: its peers leave every room and every
//! room is repaired (it may have committed updates it never published).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::wire::{Heartbeat, NodeInfo};
use super::Cluster;
use crate::docname::DocName;

/// Another node as this one sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// When it counts as dead unless heard of again, in ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// Its last heartbeat's number.
    #[serde(skip)]
    pub beat: Option<u64>,
}

impl Cluster {
    pub(super) fn nodes_key(&self) -> String {
        self.key("nodes")
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.settings.node_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Beats until `stop`, then says this node leaves.
    pub(super) async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.settings.node_ttl / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            self.beat(false).await;
            self.sweep_dead();
            if let Some(rooms) = self.rooms() {
                rooms.expire_mirrors(self.settings.mirror_quiet);
            }
            self.time_the_store().await;
        }
        self.beat(true).await;
    }

    /// One heartbeat: refresh this node's entry, say what it published, read the others'.
    async fn beat(self: &Arc<Self>, leaving: bool) {
        let now = crate::clock::now_ms();
        let published: Vec<(String, u64)> =
            std::mem::take(&mut *self.announce.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        let told: Vec<(String, u64)> =
            std::mem::take(&mut *self.announce_told.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        let heartbeat = Heartbeat {
            node: self.info.clone(),
            beat: self.beat.fetch_add(1, Ordering::Relaxed) + 1,
            published,
            told,
            leaving,
        };
        let member = serde_json::to_string(&self.info).unwrap_or_default();
        let heartbeat = serde_json::to_vec(&heartbeat).unwrap_or_default();
        let mut pipe = redis::pipe();
        if leaving {
            pipe.cmd("ZREM").arg(self.nodes_key()).arg(&member).ignore();
        } else {
            pipe.cmd("ZADD")
                .arg(self.nodes_key())
                .arg(now.saturating_add(self.ttl_ms()))
                .arg(&member)
                .ignore();
        }
        pipe.cmd("PUBLISH")
            .arg(self.nodes_channel())
            .arg(heartbeat)
            .ignore();
        // A cluster whose nodes all went leaves nothing behind for long.
        pipe.cmd("PEXPIRE")
            .arg(self.nodes_key())
            .arg(self.ttl_ms().saturating_mul(3))
            .ignore();
        // Entries of nodes long dead are nobody's to refresh.
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg("-inf")
            .arg(now.saturating_sub(self.ttl_ms()))
            .ignore();
        pipe.cmd("ZRANGE")
            .arg(self.nodes_key())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let mut redis = self.redis.clone();
        let answer = tokio::time::timeout(
            self.settings.timeout,
            pipe.query_async::<(Vec<(String, f64)>,)>(&mut redis),
        )
        .await;
        match answer {
            Ok(Ok((members,))) => {
                let now = tokio::time::Instant::now();
                let silent = self
                    .last_beat
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(now)
                    .is_some_and(|last| now.duration_since(last) > self.settings.node_ttl);
                if self.redis_down.swap(false, Ordering::AcqRel) {
                    self.recovered().await;
                } else if silent {
                    tracing::warn!("this node was silent for longer than the node TTL: the others may have counted it dead; telling them everything again");
                    self.tell_all_again();
                }
                self.saw_members(members);
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "a heartbeat failed");
                self.mark_down("a heartbeat failed");
            }
            Err(_) => self.mark_down("a heartbeat timed out"),
        }
    }

    /// Times a round trip to the shared store, for the metrics.
    async fn time_the_store(&self) {
        let Some(rooms) = self.rooms() else { return };
        let started = std::time::Instant::now();
        if rooms.store().probe().await.is_ok() {
            crate::metrics::get()
                .store_roundtrip
                .record(crate::metrics::secs(started.elapsed()));
        }
    }

    /// What the nodes' sorted set says.
    fn saw_members(&self, members: Vec<(String, f64)>) {
        for (member, expires) in members {
            let Ok(info) = serde_json::from_str::<NodeInfo>(&member) else {
                continue;
            };
            if info.origin == self.settings.origin {
                continue;
            }
            // Scores are milliseconds, well within f64's exact integers.
            let expires = expires.max(0.0) as u64;
            self.nodes
                .entry(info.origin)
                .and_modify(|node| {
                    node.expires_at_ms = node.expires_at_ms.max(expires);
                    node.info = info.clone();
                })
                .or_insert(NodeView {
                    info,
                    expires_at_ms: expires,
                    beat: None,
                });
        }
        self.count_alive();
    }

    /// Another node's heartbeat.
    pub(super) fn on_heartbeat(self: &Arc<Self>, payload: &[u8]) {
        let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(payload) else {
            tracing::warn!("an unreadable heartbeat on the bus");
            return;
        };
        let origin = heartbeat.node.origin;
        if origin == self.settings.origin {
            return;
        }
        if heartbeat.leaving {
            tracing::info!(node = %heartbeat.node.node_id, origin, "a node left the cluster");
            self.nodes.remove(&origin);
            self.gone(origin);
            return;
        }
        let expires = crate::clock::now_ms().saturating_add(self.ttl_ms());
        let lost_beat = {
            let mut node = self.nodes.entry(origin).or_insert_with(|| NodeView {
                info: heartbeat.node.clone(),
                expires_at_ms: expires,
                beat: None,
            });
            node.expires_at_ms = node.expires_at_ms.max(expires);
            node.info = heartbeat.node.clone();
            let lost = node.beat.is_some_and(|last| heartbeat.beat > last + 1);
            node.beat = Some(heartbeat.beat);
            lost
        };
        self.count_alive();
        if lost_beat {
            // What it announced in the lost one is unknown.
            self.repair_all("a heartbeat was lost");
            if let Some(hub) = self.hub() {
                for workspace in hub.loaded_names() {
                    self.schedule_reread(workspace);
                }
            }
            return;
        }
        self.check_told(origin, heartbeat.told);
        let Some(rooms) = self.rooms() else { return };
        for (doc, seq) in heartbeat.published {
            let Ok(name) = DocName::parse(&doc) else {
                continue;
            };
            if rooms.lacks(&name, origin, seq) || rooms.is_loading(&name) {
                tracing::debug!(doc = %name, origin, seq, "a node's last update was lost on the bus");
                self.schedule_repair(name);
            }
        }
    }

    /// Declares dead every node not heard of within the TTL.
    fn sweep_dead(self: &Arc<Self>) {
        let now = crate::clock::now_ms();
        let dead: Vec<(i64, String)> = self
            .nodes
            .iter()
            .filter(|node| node.expires_at_ms < now)
            .map(|node| (*node.key(), node.info.node_id.clone()))
            .collect();
        for (origin, node_id) in dead {
            self.nodes.remove(&origin);
            tracing::warn!(node = %node_id, origin, "a node stopped beating: it is dead");
            self.gone(origin);
        }
        self.count_alive();
    }

    /// `origin` is gone: its peers leave every room and what it told of each workspace goes
    /// (its users' presence there, the documents they were in), and every room is repaired
    /// from the store (it may have committed updates it never published).
    fn gone(self: &Arc<Self>, origin: i64) {
        if let Some(rooms) = self.rooms() {
            rooms.forget_origin(origin);
        }
        self.forget_told(origin);
        self.repair_all("a node is gone");
    }

    fn count_alive(&self) {
        crate::metrics::get()
            .nodes_alive
            .set((self.nodes.len() + 1) as f64);
    }

    /// The nodes this node sees alive, itself first.
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut others: Vec<NodeView> = self.nodes.iter().map(|n| n.value().clone()).collect();
        others.sort_by(|a, b| a.info.node_id.cmp(&b.info.node_id));
        let me = NodeView {
            info: self.info.clone(),
            expires_at_ms: crate::clock::now_ms().saturating_add(self.ttl_ms()),
            beat: None,
        };
        std::iter::once(me).chain(others).collect()
    }
}
