//! The documents over Redis: [`Cluster`] as the rooms' [`RoomBus`], the ordered subscriptions,
//! the publisher that waits for each update's group commit, the receiver of other nodes'
//! messages, and the repairs of rooms from PostgreSQL.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::{PushInfo, PushKind, Value};
use tandem_crdt::PeerId;
use tandem_storage::{Seq, StoredEvent};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::wire::{DocBody, DocMessage, EventMessage};
use super::{Cluster, ClusterError};
use crate::dashboard::roster::Heard;
use crate::docname::DocName;
use crate::docs::{Remote, RoomBus};
use crate::durability::{DurabilityError, Ticket};

/// A change of the node's subscriptions, applied in the order the rooms asked.
pub(super) enum Subscription {
    /// Subscribe, then say so.
    Subscribe(Vec<u8>, oneshot::Sender<()>),
    Unsubscribe(Vec<u8>),
}

/// Something to publish about a document.
pub(super) enum Outgoing {
    /// A local update, published once `ticket` is durable.
    Update {
        doc: DocName,
        seq: u64,
        update: Bytes,
        ticket: Ticket,
    },
    /// Awareness or a departure, published in order with the updates.
    Now { doc: DocName, body: DocBody },
    /// A committed event of this node's, released here.
    Event {
        workspace: String,
        event: StoredEvent,
    },
    /// Something this node tells of a workspace (`roster`).
    Told { workspace: String, heard: Heard },
}

/// Most messages one publish round sends (in one pipeline).
const PUBLISH_BATCH: usize = 512;

/// How long a repair request waits for others about the same room, so a burst of them costs
/// one read of the store.
const REPAIR_COALESCE: Duration = Duration::from_millis(20);

/// How long a document's last published update is remembered for the next one's `prev`: far
/// longer than heartbeats take to announce it.
const REMEMBER_PUBLISHED: Duration = Duration::from_secs(120);

impl RoomBus for Cluster {
    fn subscribe<'a>(&'a self, doc: &'a DocName) -> BoxFuture<'a, ()> {
        Box::pin(self.subscribe_to(self.doc_channel(doc.as_str())))
    }

    fn unsubscribe(&self, doc: &DocName) {
        let channel = self.doc_channel(doc.as_str());
        // The last load that wanted it lets go (a new load may already want it again).
        self.wanted.remove_if_mut(&channel, |_, wanting| {
            *wanting = wanting.saturating_sub(1);
            *wanting == 0
        });
        let _ = self.subscriptions.send(Subscription::Unsubscribe(channel));
    }

    fn updated(&self, doc: &DocName, seq: Seq, update: Bytes, ticket: Ticket) {
        let _ = self.outgoing.send(Outgoing::Update {
            doc: doc.clone(),
            seq: seq.0,
            update,
            ticket,
        });
    }

    fn awareness(&self, doc: &DocName, peer: PeerId, user: &str, frame: Bytes) {
        let _ = self.outgoing.send(Outgoing::Now {
            doc: doc.clone(),
            body: DocBody::Awareness {
                peer: peer.0,
                user: user.to_owned(),
                frame,
            },
        });
    }

    fn left(&self, doc: &DocName, peer: PeerId) {
        let _ = self.outgoing.send(Outgoing::Now {
            doc: doc.clone(),
            body: DocBody::Left { peer: peer.0 },
        });
    }

    fn stateless(&self, doc: &DocName, body: Bytes) {
        let _ = self.outgoing.send(Outgoing::Now {
            doc: doc.clone(),
            body: DocBody::Stateless { body },
        });
    }
}

impl Cluster {
    /// The channel heartbeats go on.
    pub(super) fn nodes_channel(&self) -> Vec<u8> {
        self.key("nodes").into_bytes()
    }

    pub(super) async fn subscribe_nodes(&self) -> Result<(), ClusterError> {
        let mut redis = self.redis.clone();
        redis
            .subscribe(self.nodes_channel())
            .await
            .map_err(ClusterError::Connect)
    }

    /// Subscribes to `channel` (through the ordered subscriptions) and waits until Redis says
    /// so, or the Redis timeout: without Redis a room or workspace still loads, and is
    /// repaired once Redis is back.
    pub(super) async fn subscribe_to(&self, channel: Vec<u8>) {
        *self.wanted.entry(channel.clone()).or_insert(0) += 1;
        let (done, subscribed) = oneshot::channel();
        if self
            .subscriptions
            .send(Subscription::Subscribe(channel, done))
            .is_ok()
        {
            let _ = tokio::time::timeout(self.settings.timeout, subscribed).await;
        }
    }

    /// Applies subscription changes one at a time, in order.
    pub(super) async fn subscribe_loop(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<Subscription>,
        stop: CancellationToken,
    ) {
        let mut redis = self.redis.clone();
        loop {
            let change = tokio::select! {
                _ = stop.cancelled() => return,
                change = changes.recv() => change,
            };
            match change {
                None => return,
                Some(Subscription::Subscribe(channel, done)) => {
                    let subscribed =
                        tokio::time::timeout(self.settings.timeout, redis.subscribe(&channel))
                            .await;
                    if !matches!(subscribed, Ok(Ok(()))) {
                        self.mark_down("a subscription failed");
                    }
                    let _ = done.send(());
                }
                Some(Subscription::Unsubscribe(channel)) => {
                    // A room of the document loaded again meanwhile keeps its subscription.
                    if !self.wanted.contains_key(&channel) {
                        let _ = tokio::time::timeout(
                            self.settings.timeout,
                            redis.unsubscribe(&channel),
                        )
                        .await;
                    }
                }
            }
        }
    }

    /// Publishes what the rooms queued, in order, each update once its group commit is done.
    pub(super) async fn publish_loop(
        self: Arc<Self>,
        mut queued: mpsc::UnboundedReceiver<Outgoing>,
        stop: CancellationToken,
    ) {
        let mut redis = self.redis.clone();
        // Queued since the last round, and updates whose commit is not done yet (in order).
        let (mut incoming, mut waiting) = (Vec::new(), Vec::new());
        loop {
            if waiting.is_empty() {
                // What is queued goes out even once stopping (shutdown stops the cluster after
                // its final commit).
                let first = tokio::select! {
                    biased;
                    first = queued.recv() => first,
                    _ = stop.cancelled() => return,
                };
                let Some(first) = first else { return };
                incoming.push(first);
            } else {
                // Only what is committed is announced: updates wait for the next commit,
                // while awareness, departures and events queued meanwhile go out at once
                // (PostgreSQL down: they keep flowing).
                let next = waiting
                    .iter()
                    .filter_map(|item| match item {
                        Outgoing::Update { ticket, .. } => Some(*ticket),
                        _ => None,
                    })
                    .min()
                    .unwrap_or_else(|| self.durability.durable());
                tokio::select! {
                    biased;
                    done = self.durability.wait(next, self.settings.timeout) => match done {
                        Ok(()) => {}
                        Err(DurabilityError::Timeout(_)) if !stop.is_cancelled() => {}
                        // A store that refuses writes for now: try again shortly.
                        Err(DurabilityError::Refused(_)) if !stop.is_cancelled() => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(_) => return,
                    },
                    item = queued.recv() => match item {
                        Some(item) => incoming.push(item),
                        None => return,
                    },
                }
            }
            while incoming.len() < PUBLISH_BATCH {
                match queued.try_recv() {
                    Ok(next) => incoming.push(next),
                    Err(_) => break,
                }
            }
            // Each update goes out right after its own commit (not with later ones); a
            // document's updates are committed in order, so its messages stay in order.
            let durable = self.durability.durable();
            let mut ready = Vec::new();
            for item in std::mem::take(&mut waiting)
                .into_iter()
                .chain(incoming.drain(..))
            {
                match &item {
                    Outgoing::Update { ticket, .. } if *ticket > durable => waiting.push(item),
                    _ => ready.push(item),
                }
            }
            if !ready.is_empty() {
                self.publish(&mut redis, ready).await;
            }
        }
    }

    /// Publishes `items` in order, in one pipeline.
    async fn publish(&self, redis: &mut redis::aio::ConnectionManager, items: Vec<Outgoing>) {
        let mut pipe = redis::pipe();
        let count = items.len();
        for item in items {
            if let Outgoing::Told { workspace, heard } = item {
                self.add_told(&mut pipe, &workspace, heard);
                continue;
            }
            // Numbered even when it cannot go out, so the next update names it as its
            // predecessor and whoever missed it repairs.
            let (channel, payload) = self.message_of(item);
            pipe.cmd("PUBLISH")
                .arg(channel)
                .arg(payload.as_ref())
                .ignore();
        }
        if self.redis_down.load(Ordering::Acquire) {
            // Lost, as Redis may lose anything: once it is back, every node repairs.
            return;
        }
        let sent = tokio::time::timeout(self.settings.timeout, pipe.query_async::<()>(redis)).await;
        match sent {
            Ok(Ok(())) => crate::metrics::get().bus_out.increment(count as u64),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "publishing on the bus failed");
                self.mark_down("publishing failed");
            }
            Err(_) => self.mark_down("publishing timed out"),
        }
    }

    /// The channel and message of a queued item; an update gets its `prev` and is remembered
    /// for the next heartbeat.
    fn message_of(&self, item: Outgoing) -> (Vec<u8>, Bytes) {
        let origin = self.settings.origin;
        let (doc, body) = match item {
            Outgoing::Told { workspace, heard } => {
                // Not reached: `publish` runs these as scripts. Published plainly, it still
                // reads right (without its entry in the roster hash).
                let seq = self.told_seq.get(&workspace).map_or(0, |s| *s);
                let message = super::wire::RosterMessage { origin, seq, heard };
                return (self.events_channel(&workspace), message.encode());
            }
            Outgoing::Event { workspace, event } => {
                let message = EventMessage {
                    origin,
                    id: event.id,
                    at_ms: event.at_ms,
                    body: Bytes::from(event.body),
                };
                return (self.events_channel(&workspace), message.encode());
            }
            Outgoing::Now { doc, body } => (doc, body),
            Outgoing::Update {
                doc, seq, update, ..
            } => {
                let now = tokio::time::Instant::now();
                let prev = {
                    let mut last = self
                        .last_published
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if last.len() > 4096 {
                        last.retain(|_, (_, at)| now.duration_since(*at) < REMEMBER_PUBLISHED);
                    }
                    last.insert(doc.clone(), (seq, now))
                        .map_or(0, |(prev, _)| prev)
                };
                self.announce
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(doc.as_str().to_owned(), seq);
                (doc, DocBody::Update { seq, prev, update })
            }
        };
        let message = DocMessage { origin, body };
        (self.doc_channel(doc.as_str()), message.encode())
    }

    /// Hands what Redis pushes to the rooms and the nodes' view, in order.
    pub(super) async fn receive(
        self: Arc<Self>,
        mut pushed: mpsc::UnboundedReceiver<PushInfo>,
        stop: CancellationToken,
    ) {
        loop {
            let push = tokio::select! {
                _ = stop.cancelled() => return,
                push = pushed.recv() => push,
            };
            let Some(push) = push else { return };
            match push.kind {
                PushKind::Disconnection => self.mark_down("the connection to Redis closed"),
                PushKind::Message => {
                    let mut data = push.data.into_iter();
                    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                        (data.next(), data.next())
                    else {
                        continue;
                    };
                    crate::metrics::get().bus_in.increment(1);
                    if channel == self.nodes_channel() {
                        self.on_heartbeat(&payload);
                    } else if let Some(doc) = self.doc_of_channel(&channel) {
                        self.on_doc_message(doc, payload);
                    } else if let Some(workspace) = self.workspace_of_channel(&channel) {
                        if super::wire::is_roster(&payload) {
                            self.on_told(workspace, payload);
                        } else {
                            self.on_event(workspace, payload);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn on_doc_message(self: &Arc<Self>, doc: &str, payload: Vec<u8>) {
        let Ok(name) = DocName::parse(doc) else {
            return;
        };
        let message = match DocMessage::decode(Bytes::from(payload)) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(doc, error = %err, "an unreadable message on the bus");
                return;
            }
        };
        let origin = message.origin;
        if origin == self.settings.origin {
            return;
        }
        let Some(rooms) = self.rooms() else { return };
        match message.body {
            DocBody::Update { seq, prev, update } => {
                match rooms.remote_update(&name, origin, seq, prev, &update) {
                    Remote::Gap => {
                        tracing::debug!(doc = %name, origin, seq, prev, "a gap in a node's updates");
                        self.schedule_repair(name);
                    }
                    // Its load may have read the store before this was committed.
                    Remote::NotLoaded if rooms.is_loading(&name) => self.schedule_repair(name),
                    _ => {}
                }
            }
            DocBody::Awareness { peer, user, frame } => {
                rooms.remote_awareness(&name, origin, peer, &user, frame);
            }
            DocBody::Left { peer } => rooms.remote_left(&name, origin, peer),
            DocBody::Stateless { body } => rooms.remote_stateless(&name, body),
        }
    }

    /// Repairs the room of `name` from the store soon (requests meanwhile share the repair).
    pub(super) fn schedule_repair(self: &Arc<Self>, name: DocName) {
        if !self.repairs.insert(name.clone()) {
            return;
        }
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            tokio::time::sleep(REPAIR_COALESCE).await;
            // A closed semaphore never happens (it is never closed).
            let _permit = this.repairing.acquire().await;
            this.repairs.remove(&name);
            let Some(rooms) = this.rooms() else { return };
            let started = std::time::Instant::now();
            match rooms.repair(&name).await {
                Ok(changed) => {
                    let metrics = crate::metrics::get();
                    metrics.gaps_repaired.increment(1);
                    metrics.repair.record(crate::metrics::secs(started.elapsed()));
                    tracing::debug!(doc = %name, changed, elapsed = ?started.elapsed(), "room repaired from the store");
                }
                Err(err) => {
                    tracing::warn!(doc = %name, error = %err, "repairing a room failed; retrying");
                    tokio::time::sleep(this.settings.timeout).await;
                    this.schedule_repair(name);
                }
            }
        });
    }

    /// Repairs every loaded room (a node died, Redis came back, a heartbeat was lost).
    pub(super) fn repair_all(self: &Arc<Self>, why: &str) {
        let Some(rooms) = self.rooms() else { return };
        let names = rooms.loaded_names();
        tracing::info!(
            rooms = names.len(),
            why,
            "repairing every loaded room from the store"
        );
        for name in names {
            self.schedule_repair(name);
        }
    }

    /// Notes that Redis is unreachable.
    pub(super) fn mark_down(&self, why: &str) {
        if !self.redis_down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                why,
                "lost Redis: publishing stops until it is back, then every room is repaired"
            );
        }
    }

    /// Redis answered again: subscribe to everything wanted (again), then repair every room,
    /// which covers whatever was published meanwhile.
    pub(super) async fn recovered(self: &Arc<Self>) {
        let mut redis = self.redis.clone();
        let mut channels: Vec<Vec<u8>> = self.wanted.iter().map(|c| c.key().clone()).collect();
        channels.push(self.nodes_channel());
        for channel in channels {
            if let Err(err) = redis.subscribe(&channel).await {
                tracing::warn!(error = %err, "subscribing again failed");
                self.mark_down("subscribing again failed");
                return;
            }
        }
        tracing::info!("Redis is back");
        self.repair_all("Redis reconnected");
        self.tell_all_again();
    }
}
