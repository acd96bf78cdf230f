//! Webhooks: what happens in a workspace, posted to the endpoints its admins registered, as
//! Standard Webhooks messages (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//!
//! # Events
//! `document.updated` (debounced per document: `--webhook-debounce-ms` after its last change,
//! or five times that after its first under continuous editing; who changed it, its state
//! vector, and its content as JSON for endpoints with `include_content`, up to
//! `--webhook-max-content-bytes`), `document.version_created`, `document.restored`,
//! `user.entered` / `user.left` (a user's first client came into a document / their last one
//! left), and `notification.undelivered` (a dashboard event addressed with `user_ids` to a user
//! who was offline when it was published).
//!
//! # Delivery
//! At least once, in order per endpoint: a message is written to the endpoint's outbox (the
//! state store, scope `webhook_outbox/{endpoint}`) and flushed before it is attempted, and
//! removed once a `2xx` answers it. A failed attempt (another status, a timeout, a refused
//! connection) is retried after an exponential backoff with jitter (`--webhook-retry-base-ms`
//! doubling up to `--webhook-retry-max-ms`), at most `--webhook-max-attempts` times; the
//! messages behind it wait, so the order holds. An endpoint that has failed for
//! `--webhook-disable-after-secs` is disabled, with a `system_alert` in the workspace's
//! activity. Redirects are not followed, answers are read up to a short excerpt, and each
//! attempt connects to an address checked the moment before (see [`target`]).
//!
//! In a cluster each node delivers what it emitted; a node's outbox is delivered by whichever
//! node holds it after a restart (every node loads every outbox at start).

pub mod sign;
pub mod target;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tandem_storage::{StateStore, StoreError, Version};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::docname::{DocName, RoomKind};
use crate::docs::Rooms;

/// The event types an endpoint may subscribe to.
pub const EVENT_TYPES: [&str; 7] = [
    "document.updated",
    "document.version_created",
    "document.restored",
    "user.entered",
    "user.left",
    "notification.undelivered",
    "approval.decided",
];

/// The state store's scope of every endpoint (key `{workspace}/{id}`).
const ENDPOINTS_SCOPE: &str = "webhooks";

/// Attempts kept per endpoint for `GET …/deliveries`.
const ATTEMPTS_KEPT: usize = 100;

/// Bytes of an answer kept in an attempt's record.
const EXCERPT_BYTES: usize = 256;

/// Endpoints a workspace may register.
pub const MAX_ENDPOINTS_PER_WORKSPACE: usize = 20;

/// How webhooks behave, from the configuration.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub allow_private: bool,
    pub debounce: Duration,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub disable_after: Duration,
    pub max_content_bytes: usize,
}

impl WebhookSettings {
    pub fn of(config: &Config) -> WebhookSettings {
        WebhookSettings {
            allow_private: config.webhook_allow_private,
            debounce: Duration::from_millis(config.webhook_debounce_ms),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            max_attempts: config.webhook_max_attempts.max(1),
            retry_base: Duration::from_millis(config.webhook_retry_base_ms.max(1)),
            retry_max: Duration::from_millis(config.webhook_retry_max_ms.max(1)),
            disable_after: Duration::from_secs(config.webhook_disable_after_secs),
            max_content_bytes: config.webhook_max_content_bytes,
        }
    }
}

/// An endpoint as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub workspace: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub include_content: bool,
    pub secret: String,
    pub created_at: String,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    /// Bumped at each write, so the newest record wins in the state store.
    pub revision: u64,
}

impl Endpoint {
    /// As the API lists it: everything but the secret.
    pub fn public(&self) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "description": self.description,
            "include_content": self.include_content,
            "created_at": self.created_at,
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
        })
    }
}

/// What an admin registers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub include_content: bool,
}

/// A message waiting in an endpoint's outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Message {
    seq: u64,
    /// Its key in the outbox: the sequence number and the process that wrote it, so two nodes
    /// of a cluster never write over each other's messages.
    #[serde(default)]
    key: String,
    /// `webhook-id`: the same at every attempt, so a receiver can drop duplicates.
    id: String,
    kind: String,
    body: String,
    attempts: u32,
    /// When the next attempt may start (ms since the epoch).
    next_at_ms: u64,
}

/// One attempt at a message, as `GET …/deliveries` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub message_id: String,
    pub event_type: String,
    pub attempt: u32,
    pub at: String,
    /// `delivered`, `failed` (to be retried) or `gave_up`.
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// Why an endpoint could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Invalid(String),
    #[error("a workspace may register at most {MAX_ENDPOINTS_PER_WORKSPACE} endpoints")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One endpoint and what waits for it.
struct Lane {
    endpoint: Mutex<Endpoint>,
    queue: Mutex<VecDeque<Message>>,
    next_seq: AtomicU64,
    wake: Notify,
    attempts: Mutex<VecDeque<Attempt>>,
    /// Since when every attempt failed (ms since the epoch).
    failing_since: Mutex<Option<u64>>,
    stop: CancellationToken,
    /// When this node started delivering to it.
    started: Instant,
}

impl Lane {
    fn endpoint(&self) -> MutexGuard<'_, Endpoint> {
        self.endpoint.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Message>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this endpoint is of `workspace`, enabled, and takes `kind` (one lock).
    fn wants(&self, workspace: &str, kind: &str) -> bool {
        let endpoint = self.endpoint();
        endpoint.workspace == workspace
            && !endpoint.disabled
            && endpoint.events.iter().any(|e| e == kind)
    }

    fn record(&self, attempt: Attempt) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if attempts.len() == ATTEMPTS_KEPT {
            attempts.pop_front();
        }
        attempts.push_back(attempt);
    }
}

/// A document's changes not told yet.
struct Changed {
    first: Instant,
    last: Instant,
    authors: BTreeSet<String>,
}

/// The webhooks of every workspace.
pub struct Webhooks {
    store: Arc<dyn StateStore>,
    settings: WebhookSettings,
    lanes: DashMap<String, Arc<Lane>>,
    /// How many `lanes` there are: every update asks whether anyone wants it, and most
    /// servers have no endpoint at all, which this answers without locking the map's shards.
    lane_count: AtomicUsize,
    changed: DashMap<DocName, Changed>,
    /// Who is in each document, as the last `editing` event said: for entered and left.
    editors: Mutex<HashMap<String, BTreeSet<String>>>,
    rooms: OnceLock<Weak<Rooms>>,
    hub: OnceLock<Weak<crate::dashboard::Hub>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// This process, in its outbox keys.
    instance: u64,
    /// Messages to emit, in the order they were made: one task writes them down, so they
    /// are numbered in that order.
    emits: tokio::sync::mpsc::UnboundedSender<Emit>,
    /// When the endpoints were last read again from the store.
    synced: Mutex<Instant>,
}

/// A message to emit.
struct Emit {
    workspace: String,
    kind: &'static str,
    data: Value,
    content: Option<Value>,
}

/// How often each node reads the endpoints again, for those registered, changed or removed
/// through another node of a cluster.
const ENDPOINT_SYNC: Duration = Duration::from_secs(2);

fn outbox_scope(endpoint: &str) -> String {
    format!("webhook_outbox/{endpoint}")
}

fn now_ms() -> u64 {
    crate::clock::now_ms()
}

fn now_text() -> String {
    crate::clock::rfc3339_exact(time::OffsetDateTime::now_utc())
}

/// 64 bits from the operating system's randomness.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No randomness from the OS (it does not happen on Linux): a per-boot hash of the time.
        return crate::boot_id() as u64;
    }
    u64::from_le_bytes(bytes)
}

/// A fresh id with `prefix`.
fn fresh_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", random_u64())
}

impl Webhooks {
    /// Loads every endpoint and its outbox, and starts delivering.
    ///
    /// # Errors
    /// The store failed, or holds a record that does not read back.
    pub async fn open(
        store: Arc<dyn StateStore>,
        settings: WebhookSettings,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Result<Arc<Webhooks>, StoreError> {
        let (emits, mut queued) = tokio::sync::mpsc::unbounded_channel::<Emit>();
        let this = Arc::new(Webhooks {
            store,
            settings,
            lanes: DashMap::new(),
            lane_count: AtomicUsize::new(0),
            changed: DashMap::new(),
            editors: Mutex::new(HashMap::new()),
            rooms: OnceLock::new(),
            hub: OnceLock::new(),
            tasks,
            stop,
            instance: random_u64(),
            emits,
            synced: Mutex::new(Instant::now()),
        });
        // Holds the webhooks only while it runs: it stops with the server.
        let emitter = Arc::downgrade(&this);
        let stop = this.stop.clone();
        this.tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = queued.recv() => next,
                };
                let (Some(emit), Some(this)) = (next, emitter.upgrade()) else {
                    return;
                };
                this.emit(&emit.workspace, emit.kind, emit.data, emit.content)
                    .await;
            }
        });
        for (key, value) in this.store.scan(ENDPOINTS_SCOPE).await? {
            let endpoint: Endpoint =
                serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt {
                    doc: key.clone(),
                    what: "webhook endpoint",
                })?;
            let mut queue = VecDeque::new();
            for (key, value) in this.store.scan(&outbox_scope(&endpoint.id)).await? {
                let mut message: Message =
                    serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt {
                        doc: key.clone(),
                        what: "webhook message",
                    })?;
                message.key = key;
                queue.push_back(message);
            }
            // In the order they were made, whichever process wrote them.
            queue.make_contiguous().sort_by_key(|m| m.seq);
            tracing::info!(endpoint = %endpoint.id, workspace = %endpoint.workspace, waiting = queue.len(), "webhook endpoint loaded");
            this.start_lane(endpoint, queue);
        }
        Ok(this)
    }

    /// The rooms, for the content of `document.updated`.
    pub fn attach_rooms(&self, rooms: &Arc<Rooms>) {
        let _ = self.rooms.set(Arc::downgrade(rooms));
    }

    /// The hub, to say in the activity feed that an endpoint was disabled.
    pub fn attach_hub(&self, hub: &Arc<crate::dashboard::Hub>) {
        let _ = self.hub.set(Arc::downgrade(hub));
    }

    fn start_lane(self: &Arc<Self>, endpoint: Endpoint, queue: VecDeque<Message>) {
        let next = queue.iter().map(|m| m.seq + 1).max().unwrap_or(1);
        let id = endpoint.id.clone();
        let lane = Arc::new(Lane {
            endpoint: Mutex::new(endpoint),
            queue: Mutex::new(queue),
            next_seq: AtomicU64::new(next),
            wake: Notify::new(),
            attempts: Mutex::new(VecDeque::new()),
            failing_since: Mutex::new(None),
            stop: self.stop.child_token(),
            started: Instant::now(),
        });
        match self.lanes.entry(id.clone()) {
            // Started already (a read of the store met it before its creator got here).
            dashmap::Entry::Occupied(_) => return,
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(Arc::clone(&lane));
                self.lane_count.fetch_add(1, Ordering::AcqRel);
            }
        }
        let this = Arc::clone(self);
        self.tasks.spawn(
            async move { this.deliver(lane).await }
                .instrument(tracing::info_span!("webhook", endpoint = %id)),
        );
    }

    /// Registers an endpoint of `workspace`; returns it with its secret (shown this once).
    ///
    /// # Errors
    /// The URL or events are not acceptable, the workspace has too many, or the store failed.
    pub async fn create(
        self: &Arc<Self>,
        workspace: &str,
        new: NewEndpoint,
    ) -> Result<Endpoint, WebhookError> {
        let url = target::check_url(&new.url, self.settings.allow_private)
            .map_err(WebhookError::Invalid)?;
        let mut events: Vec<String> = Vec::new();
        for event in new.events {
            if !EVENT_TYPES.contains(&event.as_str()) {
                return Err(WebhookError::Invalid(format!(
                    "unknown event type {event:?}; known: {}",
                    EVENT_TYPES.join(", ")
                )));
            }
            if !events.contains(&event) {
                events.push(event);
            }
        }
        if events.is_empty() {
            return Err(WebhookError::Invalid(
                "`events` names at least one event type".into(),
            ));
        }
        let description = new
            .description
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty());
        if description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 500 || d.chars().any(char::is_control))
        {
            return Err(WebhookError::Invalid(
                "a description is at most 500 characters, without control characters".into(),
            ));
        }
        if self.list(workspace).len() >= MAX_ENDPOINTS_PER_WORKSPACE {
            return Err(WebhookError::TooMany);
        }
        let endpoint = Endpoint {
            id: fresh_id("wh_"),
            workspace: workspace.to_owned(),
            url: url.to_string(),
            events,
            description,
            include_content: new.include_content,
            secret: sign::new_secret().map_err(|e| WebhookError::Store(StoreError::Task(e)))?,
            created_at: now_text(),
            disabled: false,
            disabled_reason: None,
            revision: 1,
        };
        self.save(&endpoint)?;
        self.store.flush().await?;
        tracing::info!(workspace, endpoint = %endpoint.id, url = %endpoint.url, "webhook endpoint registered");
        self.start_lane(endpoint.clone(), VecDeque::new());
        Ok(endpoint)
    }

    fn save(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        let value = serde_json::to_vec(endpoint)
            .map_err(|e| StoreError::Task(format!("cannot encode an endpoint: {e}")))?;
        self.store.put(
            ENDPOINTS_SCOPE,
            &format!("{}/{}", endpoint.workspace, endpoint.id),
            endpoint.revision,
            Some(&value),
        )
    }

    /// The endpoints of `workspace`.
    pub fn list(&self, workspace: &str) -> Vec<Endpoint> {
        let mut endpoints: Vec<Endpoint> = self
            .lanes
            .iter()
            .map(|lane| lane.endpoint().clone())
            .filter(|e| e.workspace == workspace)
            .collect();
        endpoints.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        endpoints
    }

    /// Removes endpoint `id` of `workspace` and what waits for it; says whether there was one.
    ///
    /// # Errors
    /// The store failed.
    pub async fn delete(&self, workspace: &str, id: &str) -> Result<bool, StoreError> {
        let Some((_, lane)) = self
            .lanes
            .remove_if(id, |_, lane| lane.endpoint().workspace == workspace)
        else {
            return Ok(false);
        };
        self.lane_count.fetch_sub(1, Ordering::AcqRel);
        lane.stop.cancel();
        let revision = lane.endpoint().revision + 1;
        self.store.put(
            ENDPOINTS_SCOPE,
            &format!("{workspace}/{id}"),
            revision,
            None,
        )?;
        let scope = outbox_scope(id);
        for message in lane.queue().drain(..) {
            self.store.put(&scope, &message.key, u64::MAX, None)?;
        }
        self.store.flush().await?;
        tracing::info!(workspace, endpoint = id, "webhook endpoint removed");
        Ok(true)
    }

    /// The recent attempts at endpoint `id` of `workspace`, newest first, and how many
    /// messages wait; `None` when there is no such endpoint.
    pub fn deliveries(&self, workspace: &str, id: &str) -> Option<(Vec<Attempt>, usize)> {
        let lane = self.lanes.get(id)?;
        if lane.endpoint().workspace != workspace {
            return None;
        }
        let attempts: Vec<Attempt> = lane
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect();
        let waiting = lane.queue().len();
        Some((attempts, waiting))
    }

    /// Whether any endpoint of `workspace` wants `kind`.
    pub fn wants(&self, workspace: &str, kind: &str) -> bool {
        self.has_endpoints() && self.lanes.iter().any(|lane| lane.wants(workspace, kind))
    }

    /// Whether any workspace has an endpoint.
    fn has_endpoints(&self) -> bool {
        self.lane_count.load(Ordering::Acquire) > 0
    }

    /// Hands `kind` to the one task that writes messages down, after what was handed before.
    fn queue_emit(&self, workspace: &str, kind: &'static str, data: Value, content: Option<Value>) {
        let _ = self.emits.send(Emit {
            workspace: workspace.to_owned(),
            kind,
            data,
            content,
        });
    }

    /// Queues `kind` with `data` for every endpoint of `workspace` that wants it (`content`
    /// added to `data` for those with `include_content`), durably, then wakes their delivery.
    pub async fn emit(&self, workspace: &str, kind: &str, data: Value, content: Option<Value>) {
        let lanes: Vec<Arc<Lane>> = self
            .lanes
            .iter()
            .filter(|lane| lane.wants(workspace, kind))
            .map(|lane| Arc::clone(lane.value()))
            .collect();
        if lanes.is_empty() {
            return;
        }
        let timestamp = now_text();
        let mut queued = Vec::new();
        for lane in lanes {
            let mut data = data.clone();
            if let (Some(content), true, Value::Object(fields)) =
                (&content, lane.endpoint().include_content, &mut data)
            {
                fields.insert("content".into(), content.clone());
            }
            let body = json!({ "type": kind, "timestamp": timestamp, "data": data }).to_string();
            let seq = lane.next_seq.fetch_add(1, Ordering::Relaxed);
            let message = Message {
                seq,
                key: format!("{seq:020}-{:016x}", self.instance),
                id: fresh_id("msg_"),
                kind: kind.to_owned(),
                body,
                attempts: 0,
                next_at_ms: 0,
            };
            let id = lane.endpoint().id.clone();
            if let Err(err) = self.persist(&id, &message) {
                tracing::error!(endpoint = %id, kind, error = %err, "webhook message not queued");
                continue;
            }
            queued.push((lane, message));
        }
        // Written down before any attempt: a crash now delivers them after the restart.
        if let Err(err) = self.store.flush().await {
            tracing::error!(kind, error = %err, "webhook outbox not flushed; delivering anyway");
        }
        crate::metrics::get()
            .webhooks_queued
            .increment(queued.len() as u64);
        for (lane, message) in queued {
            lane.queue().push_back(message);
            lane.wake.notify_one();
        }
    }

    fn persist(&self, endpoint: &str, message: &Message) -> Result<(), StoreError> {
        let value = serde_json::to_vec(message)
            .map_err(|e| StoreError::Task(format!("cannot encode a message: {e}")))?;
        self.store.put(
            &outbox_scope(endpoint),
            &message.key,
            u64::from(message.attempts),
            Some(&value),
        )
    }

    fn forget(&self, endpoint: &str, message: &Message) {
        let removed = self
            .store
            .put(&outbox_scope(endpoint), &message.key, u64::MAX, None);
        if let Err(err) = removed {
            // It is delivered again after a restart: at least once.
            tracing::warn!(endpoint, error = %err, "a delivered message stays in the outbox");
        }
    }

    /// Every message waiting, across endpoints (the outbox depth).
    pub fn waiting(&self) -> usize {
        self.lanes.iter().map(|lane| lane.queue().len()).sum()
    }

    /// One endpoint's deliveries, in order, until it is removed or the server stops.
    async fn deliver(self: Arc<Self>, lane: Arc<Lane>) {
        loop {
            let head = lane.queue().front().cloned();
            let Some(mut message) = head else {
                tokio::select! {
                    _ = lane.stop.cancelled() => return,
                    _ = lane.wake.notified() => continue,
                }
            };
            let wait = message.next_at_ms.saturating_sub(now_ms());
            if wait > 0 {
                tokio::select! {
                    _ = lane.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                }
            }
            if lane.endpoint().disabled {
                tokio::select! {
                    _ = lane.stop.cancelled() => return,
                    _ = lane.wake.notified() => continue,
                }
            }
            message.attempts += 1;
            let (endpoint_id, url, secret) = {
                let endpoint = lane.endpoint();
                (
                    endpoint.id.clone(),
                    endpoint.url.clone(),
                    endpoint.secret.clone(),
                )
            };
            let started = Instant::now();
            let result = tokio::select! {
                _ = lane.stop.cancelled() => return,
                result = self.attempt(&url, &secret, &message) => result,
            };
            let latency = started.elapsed();
            let metrics = crate::metrics::get();
            metrics
                .webhook_latency
                .record(crate::metrics::secs(latency));
            let mut attempt = Attempt {
                message_id: message.id.clone(),
                event_type: message.kind.clone(),
                attempt: message.attempts,
                at: now_text(),
                outcome: "delivered",
                status: result.status,
                latency_ms: latency.as_millis() as u64,
                error: result.error.clone(),
                response_excerpt: result.excerpt.clone(),
            };
            if result.delivered {
                lane.queue().pop_front();
                self.forget(&endpoint_id, &message);
                *lane.failing_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                metrics.webhook_deliveries_delivered.increment(1);
                tracing::debug!(message = %message.id, kind = %message.kind, "webhook delivered");
                lane.record(attempt);
                continue;
            }
            let failing_since = *lane
                .failing_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(now_ms());
            if message.attempts >= self.settings.max_attempts {
                attempt.outcome = "gave_up";
                lane.queue().pop_front();
                self.forget(&endpoint_id, &message);
                metrics.webhook_deliveries_gave_up.increment(1);
                tracing::warn!(message = %message.id, kind = %message.kind, attempts = message.attempts, error = ?result.error, status = ?result.status, "webhook given up");
            } else {
                attempt.outcome = "failed";
                message.next_at_ms = now_ms() + self.backoff(message.attempts);
                if let Err(err) = self.persist(&endpoint_id, &message) {
                    tracing::warn!(error = %err, "a webhook retry was not written down");
                }
                if let Some(head) = lane.queue().front_mut() {
                    *head = message.clone();
                }
                metrics.webhook_deliveries_failed.increment(1);
                tracing::info!(message = %message.id, kind = %message.kind, attempts = message.attempts, error = ?result.error, status = ?result.status, "webhook failed; will retry");
            }
            lane.record(attempt);
            let failing_for = Duration::from_millis(now_ms().saturating_sub(failing_since));
            if failing_for >= self.settings.disable_after {
                self.disable(&lane, failing_for).await;
            }
        }
    }

    /// Exponential backoff after `attempts` failures, with up to a fifth of jitter either way.
    fn backoff(&self, attempts: u32) -> u64 {
        let base = self.settings.retry_base.as_millis() as u64;
        let max = self.settings.retry_max.as_millis() as u64;
        let delay = base
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(40))
            .min(max);
        let jitter = random_u64() % (delay / 5 * 2 + 1);
        delay - delay / 5 + jitter
    }

    async fn disable(&self, lane: &Lane, failing_for: Duration) {
        let endpoint = {
            let mut endpoint = lane.endpoint();
            endpoint.disabled = true;
            endpoint.disabled_reason = Some(format!(
                "every delivery failed for {} s",
                failing_for.as_secs()
            ));
            endpoint.revision += 1;
            endpoint.clone()
        };
        tracing::warn!(endpoint = %endpoint.id, workspace = %endpoint.workspace, "webhook endpoint disabled");
        if let Err(err) = self.save(&endpoint) {
            tracing::error!(error = %err, "could not store the disabled endpoint");
        }
        let _ = self.store.flush().await;
        if let Some(hub) = self.hub.get().and_then(Weak::upgrade) {
            let alert = crate::dashboard::catalogue::validate(json!({
                "type": "system_alert",
                "severity": "error",
                "message": format!(
                    "Webhook endpoint {} ({}) was disabled: every delivery failed for {} s",
                    endpoint.id,
                    endpoint.url,
                    failing_for.as_secs()
                ),
            }));
            match alert {
                Ok(event) => {
                    if let Err(err) = hub.publish(&endpoint.workspace, event).await {
                        tracing::warn!(error = %err, "could not tell the workspace its endpoint was disabled");
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "the disabled endpoint's alert is invalid")
                }
            }
        }
    }

    /// One attempt: a POST to `url`'s address as resolved and checked now.
    async fn attempt(&self, url: &str, secret: &str, message: &Message) -> Outcome {
        let failed = |error: String| Outcome {
            delivered: false,
            status: None,
            error: Some(error),
            excerpt: None,
        };
        let url = match reqwest::Url::parse(url) {
            Ok(url) => url,
            Err(e) => return failed(format!("not a URL: {e}")),
        };
        let addr = match target::resolve(&url, self.settings.allow_private).await {
            Ok(addr) => addr,
            Err(e) => return failed(e),
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would resolve the name itself, past the check.
            .no_proxy()
            .timeout(self.settings.timeout)
            .connect_timeout(self.settings.timeout)
            .resolve(&host, addr)
            .user_agent(concat!("tandem-webhooks/", env!("CARGO_PKG_VERSION")))
            .build();
        let client = match client {
            Ok(client) => client,
            Err(e) => return failed(format!("no HTTP client: {e}")),
        };
        let timestamp = i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX);
        let signature = match sign::signature(secret, &message.id, timestamp, &message.body) {
            Ok(signature) => signature,
            Err(e) => return failed(e),
        };
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(message.body.clone())
            .send()
            .await;
        match sent {
            Ok(mut response) => {
                let status = response.status();
                let mut excerpt = Vec::new();
                while excerpt.len() < EXCERPT_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                excerpt.truncate(EXCERPT_BYTES);
                let excerpt = String::from_utf8_lossy(&excerpt).into_owned();
                Outcome {
                    delivered: status.is_success(),
                    status: Some(status.as_u16()),
                    error: (!status.is_success()).then(|| format!("answered {status}")),
                    excerpt: Some(excerpt).filter(|e| !e.is_empty()),
                }
            }
            Err(e) => failed(if e.is_timeout() {
                format!("no answer within {} ms", self.settings.timeout.as_millis())
            } else {
                format!("could not post: {e}")
            }),
        }
    }

    /// A document changed: its `document.updated` goes out once it is quiet.
    pub fn document_changed(&self, doc: &DocName, author: Option<&str>) {
        if doc.kind() != RoomKind::Document || !self.wants(doc.workspace(), "document.updated") {
            return;
        }
        let now = Instant::now();
        let mut entry = self.changed.entry(doc.clone()).or_insert_with(|| Changed {
            first: now,
            last: now,
            authors: BTreeSet::new(),
        });
        entry.last = now;
        if let Some(author) = author {
            entry.authors.insert(author.to_owned());
        }
    }

    /// Sends the `document.updated` that are due. Called on the server's tick.
    pub fn tick(self: &Arc<Self>) {
        let debounce = self.settings.debounce;
        let due: Vec<(DocName, BTreeSet<String>)> = {
            let names: Vec<DocName> = self
                .changed
                .iter()
                .filter(|c| c.last.elapsed() >= debounce || c.first.elapsed() >= debounce * 5)
                .map(|c| c.key().clone())
                .collect();
            names
                .into_iter()
                .filter_map(|name| self.changed.remove(&name))
                .map(|(name, changed)| (name, changed.authors))
                .collect()
        };
        for (name, authors) in due {
            let this = Arc::clone(self);
            self.tasks.spawn(async move {
                this.document_updated(&name, authors).await;
            });
        }
        crate::metrics::get()
            .webhook_outbox_depth
            .set(self.waiting() as f64);
        let due = {
            let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
            let due = synced.elapsed() >= ENDPOINT_SYNC;
            if due {
                *synced = Instant::now();
            }
            due
        };
        if due {
            let this = Arc::clone(self);
            self.tasks.spawn(async move {
                if let Err(err) = this.sync_endpoints().await {
                    tracing::warn!(error = %err, "could not read the webhook endpoints again");
                }
            });
        }
    }

    /// Reads the endpoints again: one registered through another node gets a lane here (its
    /// messages from this node go to it), one removed there goes, and a newer record (disabled)
    /// replaces the one held.
    async fn sync_endpoints(self: &Arc<Self>) -> Result<(), StoreError> {
        let scanned = Instant::now();
        let mut stored = HashMap::new();
        for (key, value) in self.store.scan(ENDPOINTS_SCOPE).await? {
            match serde_json::from_slice::<Endpoint>(&value) {
                Ok(endpoint) => {
                    stored.insert(endpoint.id.clone(), endpoint);
                }
                Err(_) => tracing::warn!(key, "an unreadable webhook endpoint is skipped"),
            }
        }
        let gone: Vec<String> = self
            .lanes
            .iter()
            // One started after the read began (registered here meanwhile) is not gone.
            .filter(|lane| !stored.contains_key(lane.key()) && lane.started < scanned)
            .map(|lane| lane.key().clone())
            .collect();
        for id in gone {
            if let Some((_, lane)) = self.lanes.remove(&id) {
                self.lane_count.fetch_sub(1, Ordering::AcqRel);
                lane.stop.cancel();
                tracing::info!(endpoint = %id, "webhook endpoint removed through another node");
            }
        }
        for (id, endpoint) in stored {
            match self.lanes.get(&id) {
                Some(lane) => {
                    let mut held = lane.endpoint();
                    if endpoint.revision > held.revision {
                        *held = endpoint;
                    }
                }
                None => self.start_lane(endpoint, VecDeque::new()),
            }
        }
        Ok(())
    }

    async fn document_updated(&self, name: &DocName, authors: BTreeSet<String>) {
        let Some(rooms) = self.rooms.get().and_then(Weak::upgrade) else {
            return;
        };
        let wants_content = self.lanes.iter().any(|lane| {
            let endpoint = lane.endpoint();
            endpoint.workspace == name.workspace()
                && endpoint.include_content
                && !endpoint.disabled
                && endpoint.events.iter().any(|e| e == "document.updated")
        });
        // The whole document is encoded only for endpoints that take its content.
        let read = rooms
            .read(name, |room| {
                let whole = wants_content.then(|| room.diff(&[0]));
                (room.state_vector(), whole)
            })
            .await;
        let (state_vector, whole) = match read {
            Ok((sv, Some(Ok(whole)))) => (sv, Some(whole)),
            Ok((sv, None)) => (sv, None),
            Ok((_, Some(Err(err)))) => {
                tracing::warn!(doc = %name, error = %err, "document.updated without content");
                return;
            }
            Err(err) => {
                tracing::warn!(doc = %name, error = %err, "document.updated not sent");
                return;
            }
        };
        let mut data = json!({
            "document": name.as_str(),
            "authors": authors,
            "state_vector": base64_url(&state_vector),
        });
        let content = match whole {
            Some(whole) => {
                // Reading a large document takes a while: off the async workers.
                let json = tokio::task::spawn_blocking(move || tandem_crdt::content_json(&whole))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match json {
                    Ok(json) if json.len() <= self.settings.max_content_bytes => {
                        serde_json::from_str(&json).ok()
                    }
                    Ok(json) => {
                        data["content_omitted"] = json!(format!(
                            "{} bytes, over --webhook-max-content-bytes",
                            json.len()
                        ));
                        None
                    }
                    Err(err) => {
                        tracing::warn!(doc = %name, error = %err, "document content not readable");
                        None
                    }
                }
            }
            None => None,
        };
        self.queue_emit(name.workspace(), "document.updated", data, content);
    }

    /// A version of `doc` was taken.
    pub fn version_created(&self, doc: &DocName, version: &Version) {
        let data = json!({
            "document": doc.as_str(),
            "version": version_summary(version),
        });
        self.queue_emit(doc.workspace(), "document.version_created", data, None);
    }

    /// `doc` was restored to version `id` by `user`.
    pub fn restored(&self, doc: &DocName, id: u64, user: &str, before: &Version, after: &Version) {
        let data = json!({
            "document": doc.as_str(),
            "restored_version": id,
            "by": user,
            "before": version_summary(before),
            "after": version_summary(after),
        });
        self.queue_emit(doc.workspace(), "document.restored", data, None);
    }

    /// An event was appended to `workspace`'s log: `editing` ones tell who entered and left
    /// documents; one addressed to users who are offline is undelivered to them.
    pub fn appended(
        self: &Arc<Self>,
        workspace: &str,
        kind: &str,
        fields: &Map<String, Value>,
        offline: Vec<String>,
    ) {
        let mut emits: Vec<(&'static str, Value)> = Vec::new();
        if kind == "editing" {
            let Some(document) = fields.get("document").and_then(Value::as_str) else {
                return;
            };
            let now: BTreeSet<String> = fields
                .get("users")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|u| crate::dashboard::catalogue::id_text(&u["user_id"]))
                .collect();
            let before = {
                let mut editors = self.editors.lock().unwrap_or_else(|p| p.into_inner());
                let before = if now.is_empty() {
                    editors.remove(document)
                } else {
                    editors.insert(document.to_owned(), now.clone())
                };
                before.unwrap_or_default()
            };
            for user in now.difference(&before) {
                emits.push((
                    "user.entered",
                    json!({ "document": document, "user_id": user }),
                ));
            }
            for user in before.difference(&now) {
                emits.push((
                    "user.left",
                    json!({ "document": document, "user_id": user }),
                ));
            }
        } else if kind == "approval_decided" {
            let field = |name: &str| fields.get(name).cloned().unwrap_or(Value::Null);
            emits.push((
                "approval.decided",
                json!({
                    "approval_id": field("approval_id"),
                    "decision": field("decision"),
                    "user_id": field("user_id"),
                    "name": field("name"),
                    "comment": field("comment"),
                    "event_id": field("id"),
                }),
            ));
        } else if !offline.is_empty() {
            let mut event = Value::Object(fields.clone());
            if let Value::Object(fields) = &mut event {
                fields.remove("user_ids");
            }
            emits.push((
                "notification.undelivered",
                json!({ "user_ids": offline, "event": event }),
            ));
        }
        for (kind, data) in emits {
            self.queue_emit(workspace, kind, data, None);
        }
    }
}

/// The webhooks as what the rooms and the hub tell of what happens.
pub struct Listener(pub Arc<Webhooks>);

impl crate::docs::DocHooks for Listener {
    fn changed(&self, doc: &DocName, author: Option<&str>) {
        self.0.document_changed(doc, author);
    }

    fn version_created(&self, doc: &DocName, version: &Version) {
        if !self.0.wants(doc.workspace(), "document.version_created") {
            return;
        }
        self.0.version_created(doc, version);
    }

    fn restored(&self, doc: &DocName, id: u64, user: &str, restored: &crate::docs::Restored) {
        if !self.0.wants(doc.workspace(), "document.restored") {
            return;
        }
        self.0
            .restored(doc, id, user, &restored.before, &restored.after);
    }
}

impl crate::dashboard::EventHook for Listener {
    fn wants(&self, workspace: &str) -> bool {
        self.0.has_endpoints()
            && self
                .0
                .lanes
                .iter()
                .any(|lane| lane.endpoint().workspace == workspace)
    }

    fn appended(
        &self,
        workspace: &str,
        kind: &str,
        fields: &Map<String, Value>,
        offline: Vec<String>,
    ) {
        self.0.appended(workspace, kind, fields, offline);
    }
}

/// What an attempt came to.
struct Outcome {
    delivered: bool,
    status: Option<u16>,
    error: Option<String>,
    excerpt: Option<String>,
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn version_summary(version: &Version) -> Value {
    json!({
        "id": version.id,
        "label": version.label,
        "authors": version.authors,
        "bytes": version.bytes,
        "reason": version.reason.as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WebhookSettings {
        WebhookSettings {
            allow_private: true,
            debounce: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
            max_attempts: 3,
            retry_base: Duration::from_millis(5_000),
            retry_max: Duration::from_millis(36_000_000),
            disable_after: Duration::from_secs(86_400),
            max_content_bytes: 1024,
        }
    }

    #[tokio::test]
    async fn backoff_doubles_from_the_base_up_to_the_cap_with_a_fifth_of_jitter() {
        let hooks = Webhooks::open(
            Arc::new(tandem_storage::MemoryStateStore::default()),
            settings(),
            TaskTracker::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        for (attempts, nominal) in [(1, 5_000u64), (2, 10_000), (3, 20_000), (30, 36_000_000)] {
            for _ in 0..20 {
                let delay = hooks.backoff(attempts);
                assert!(
                    delay >= nominal - nominal / 5 && delay <= nominal + nominal / 5,
                    "{attempts}: {delay}"
                );
            }
        }
    }

    #[tokio::test]
    async fn endpoints_are_checked_and_listed_per_workspace_without_their_secret() {
        let hooks = Webhooks::open(
            Arc::new(tandem_storage::MemoryStateStore::default()),
            WebhookSettings {
                allow_private: false,
                ..settings()
            },
            TaskTracker::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let new = |url: &str, events: &[&str]| NewEndpoint {
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            description: None,
            include_content: false,
        };
        assert!(matches!(
            hooks
                .create("acme", new("http://127.0.0.1:9/", &["user.left"]))
                .await,
            Err(WebhookError::Invalid(_))
        ));
        assert!(matches!(
            hooks
                .create("acme", new("https://example.com/", &["document.deleted"]))
                .await,
            Err(WebhookError::Invalid(_))
        ));
        assert!(matches!(
            hooks.create("acme", new("https://example.com/", &[])).await,
            Err(WebhookError::Invalid(_))
        ));
        let made = hooks
            .create(
                "acme",
                new("https://example.com/hook", &["user.left", "user.left"]),
            )
            .await
            .unwrap();
        assert!(made.secret.starts_with("whsec_"));
        assert_eq!(made.events, ["user.left"]);
        assert_eq!(hooks.list("acme").len(), 1);
        assert!(hooks.list("globex").is_empty());
        assert!(made.public().get("secret").is_none());
        assert!(hooks.wants("acme", "user.left"));
        assert!(!hooks.wants("acme", "user.entered"));
        assert!(!hooks.delete("globex", &made.id).await.unwrap());
        assert!(hooks.delete("acme", &made.id).await.unwrap());
        assert!(hooks.list("acme").is_empty());
    }
}
