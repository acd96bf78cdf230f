//! Cluster mode: many nodes on one PostgreSQL (the durable store) and one Redis (the bus).
//!
//! # Layout
//! - here: [`Cluster`] (joining, the Redis connection, the tasks, leaving) and its settings;
//! - `wire`: what nodes say to each other (a document's messages, heartbeats);
//! - `bus`: the documents over Redis: [`Cluster`] is the rooms' `RoomBus` (subscribing to a
//!   document's channel before a room loads, publishing each update once it is committed, and
//!   each peer's awareness and departure), the receiver that hands other nodes' messages to the
//!   rooms, and the repairs from PostgreSQL;
//! - `events`: the dashboard's events over Redis: [`Cluster`] is the hub's `HubBus` (each
//!   released event of this node's goes to the others, which release it in id order), and the
//!   checks that backfill from PostgreSQL what a lost message left out;
//! - `roster`: what the nodes tell each other of a workspace (who is present and editing
//!   through each), kept in a Redis hash beside the messages so a node that missed one reads
//!   it all again;
//! - `nodes`: heartbeats, the live nodes, the death of one.
//!
//! Redis is a bus that may lose messages, never the store: a write is acknowledged once
//! PostgreSQL committed it, and published after. Every node numbers what it publishes (per
//! document, each update names its predecessor), announces in its heartbeats the last update
//! of each document it wrote, and so a node that missed a message (a gap, a lost last message,
//! a Redis reconnect, a node that died between its commit and its publish) repairs the room
//! from PostgreSQL.

mod bus;
mod events;
mod nodes;
mod roster;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dashboard::Hub;
use crate::docname::DocName;
use crate::docs::Rooms;
use crate::durability::Durability;

pub use nodes::NodeView;
pub use wire::NodeInfo;

/// Repairs from PostgreSQL running at once: a reconnect repairs every loaded room, and the
/// pool has a few connections for everything else too.
const REPAIRS_AT_ONCE: usize = 4;

/// How this node takes part.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Prefixes every key and channel.
    pub name: String,
    /// This node's name (in logs and the admin API).
    pub node_id: String,
    /// This boot's id: what its rows in PostgreSQL and its messages are keyed by.
    pub origin: i64,
    /// A node not heard of for this long is dead.
    pub node_ttl: Duration,
    /// How long a Redis call may take.
    pub timeout: Duration,
    /// Where this node's HTTP listener is.
    pub addr: String,
    /// A mirrored peer of another node not heard of for this long left (its departure was
    /// lost on the bus).
    pub mirror_quiet: Duration,
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid Redis URL: {0}")]
    Url(redis::RedisError),
    #[error("cannot reach Redis: {0}")]
    Connect(redis::RedisError),
}

/// This node's membership of the cluster.
pub struct Cluster {
    /// Itself, for work that outlives a call made through a trait (`HubBus::loaded`).
    me: Weak<Cluster>,
    settings: ClusterSettings,
    info: NodeInfo,
    redis: ConnectionManager,
    rooms: Weak<Rooms>,
    hub: Weak<Hub>,
    durability: Arc<Durability>,
    /// Subscriptions, in the order the rooms ask for them.
    subscriptions: mpsc::UnboundedSender<bus::Subscription>,
    /// The channels this node wants (its loaded rooms' and workspaces'), with how many loads
    /// want each: re-subscribed after a reconnect, unsubscribed when none does.
    wanted: DashMap<Vec<u8>, usize>,
    /// What to publish, in order; updates wait for their group commit.
    outgoing: mpsc::UnboundedSender<bus::Outgoing>,
    /// Per document, the last update this node published (and when), for the next one's
    /// `prev`.
    last_published: Mutex<HashMap<DocName, (u64, tokio::time::Instant)>>,
    /// Documents published since the last heartbeat, with their last update.
    announce: Mutex<HashMap<String, u64>>,
    /// Set while Redis is unreachable: publishing is skipped (everyone repairs once it is
    /// back), and when it clears the channels are subscribed again and every room repaired.
    redis_down: AtomicBool,
    /// Rooms waiting for a repair.
    repairs: DashSet<DocName>,
    /// Bounds the repairs running at once (after a reconnect every loaded room wants one).
    repairing: tokio::sync::Semaphore,
    /// The other nodes, by origin.
    nodes: DashMap<i64, NodeView>,
    /// The locks this node's connections hold, by (key, connection): each lease's token.
    leases: DashMap<(String, crate::net::ConnId), String>,
    lease_count: AtomicU64,
    /// When the last heartbeat went through: a node silent for longer than the TTL may have
    /// been declared dead by the others (who dropped what it told them).
    last_beat: Mutex<Option<tokio::time::Instant>>,
    /// Per workspace, the number of this node's last roster message.
    told_seq: DashMap<String, u64>,
    /// Workspaces told something of since the last heartbeat, with their last number.
    announce_told: Mutex<HashMap<String, u64>>,
    /// Workspaces whose roster is to be read again.
    rereads: DashSet<String>,
    beat: AtomicU64,
    tasks: TaskTracker,
}

impl Cluster {
    /// Connects to Redis at `url` and joins: the bus, the heartbeats and the receiver run until
    /// `stop` is cancelled (then the node says it leaves).
    ///
    /// # Errors
    /// The URL is invalid or Redis cannot be reached.
    pub async fn join(
        url: &str,
        settings: ClusterSettings,
        rooms: &Arc<Rooms>,
        hub: &Arc<Hub>,
        durability: Arc<Durability>,
        stop: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let info = url.into_connection_info().map_err(ClusterError::Url)?;
        // Pushed messages (RESP3) on the one multiplexed connection: commands and
        // subscriptions share it.
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(resp3)).map_err(ClusterError::Url)?;
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(ClusterError::Connect)?;
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let info = NodeInfo {
            node_id: settings.node_id.clone(),
            origin: settings.origin,
            addr: settings.addr.clone(),
            started_at: crate::clock::rfc3339_exact(time::OffsetDateTime::now_utc()),
        };
        let cluster = Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            settings,
            info,
            redis,
            rooms: Arc::downgrade(rooms),
            hub: Arc::downgrade(hub),
            durability,
            subscriptions: sub_tx,
            wanted: DashMap::new(),
            outgoing: out_tx,
            last_published: Mutex::new(HashMap::new()),
            announce: Mutex::new(HashMap::new()),
            redis_down: AtomicBool::new(false),
            repairs: DashSet::new(),
            repairing: tokio::sync::Semaphore::new(REPAIRS_AT_ONCE),
            nodes: DashMap::new(),
            leases: DashMap::new(),
            lease_count: AtomicU64::new(0),
            last_beat: Mutex::new(None),
            told_seq: DashMap::new(),
            announce_told: Mutex::new(HashMap::new()),
            rereads: DashSet::new(),
            beat: AtomicU64::new(0),
            tasks: TaskTracker::new(),
        });
        cluster.subscribe_nodes().await?;
        let tasks = &cluster.tasks;
        tasks.spawn(Arc::clone(&cluster).receive(push_rx, stop.clone()));
        tasks.spawn(Arc::clone(&cluster).subscribe_loop(sub_rx, stop.clone()));
        tasks.spawn(Arc::clone(&cluster).publish_loop(out_rx, stop.clone()));
        tasks.spawn(Arc::clone(&cluster).event_checks(stop.clone()));
        tasks.spawn(Arc::clone(&cluster).heartbeat_loop(stop));
        tracing::info!(
            node = %cluster.settings.node_id,
            origin = cluster.settings.origin,
            cluster = %cluster.settings.name,
            "joined the cluster"
        );
        Ok(cluster)
    }

    /// Waits for the cluster's tasks once `stop` was cancelled.
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// This node.
    pub fn me(&self) -> &NodeInfo {
        &self.info
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.settings.name)
    }

    /// The channel of `doc`'s messages.
    fn doc_channel(&self, doc: &str) -> Vec<u8> {
        let mut channel = self.key("doc:").into_bytes();
        channel.extend_from_slice(doc.as_bytes());
        channel
    }

    /// The document a channel is about, if it is one of this cluster's documents' channels.
    fn doc_of_channel<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let prefix = self.settings.name.len() + ":doc:".len();
        let name = channel.get(prefix..)?;
        (channel.starts_with(self.settings.name.as_bytes())
            && channel.get(self.settings.name.len()..prefix) == Some(b":doc:".as_slice()))
        .then(|| std::str::from_utf8(name).ok())
        .flatten()
    }

    fn rooms(&self) -> Option<Arc<Rooms>> {
        self.rooms.upgrade()
    }

    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.upgrade()
    }

    /// The channel of `workspace`'s events.
    fn events_channel(&self, workspace: &str) -> Vec<u8> {
        let mut channel = self.key("events:").into_bytes();
        channel.extend_from_slice(workspace.as_bytes());
        channel
    }

    /// The workspace a channel carries the events of, if it is one of this cluster's.
    fn workspace_of_channel<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let prefix = self.key("events:");
        channel
            .strip_prefix(prefix.as_bytes())
            .and_then(|name| std::str::from_utf8(name).ok())
    }
}
