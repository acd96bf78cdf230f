//! Prometheus metrics: the recorder (installed once per process), the text `GET /metrics`
//! serves, and the handles the hot paths use. Handles are looked up once, here; after that a
//! counter is one atomic add.
//!
//! Names follow Prometheus conventions: a `tandem_` prefix, base units (seconds, bytes),
//! `_total` counters, and labels with a bounded set of values (never a document or a user).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, Unit};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A document over the y-websocket protocol (`/ws/{doc}`).
    Document,
    /// A dashboard on `/ws`.
    Dashboard,
    /// A long-poll on `GET /api/v1/events`.
    LongPoll,
    /// Documents over the Hocuspocus protocol (`/hocuspocus`), many on one socket.
    Hocuspocus,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Document => "document",
            Kind::Dashboard => "dashboard",
            Kind::LongPoll => "long_poll",
            Kind::Hocuspocus => "hocuspocus",
        }
    }
}

/// Why a connection failed: refused before it began, or closed for a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No token, a bad or expired one, or one without access.
    Auth,
    /// The token's plan has no real-time features.
    Plan,
    /// A malformed request (document name, query string, not a WebSocket).
    BadRequest,
    /// A malformed or unacceptable message, or too many bad frames.
    Protocol,
    /// The client could not keep up with its queue.
    Overflow,
    /// The client stopped answering pings.
    Timeout,
    /// Storage failed.
    Storage,
    /// Refused by a cap on connections (per address, per user).
    Limited,
}

impl Failure {
    const ALL: [Failure; 8] = [
        Failure::Auth,
        Failure::Plan,
        Failure::BadRequest,
        Failure::Protocol,
        Failure::Overflow,
        Failure::Timeout,
        Failure::Storage,
        Failure::Limited,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Auth => "auth",
            Failure::Plan => "plan",
            Failure::BadRequest => "bad_request",
            Failure::Protocol => "protocol",
            Failure::Overflow => "overflow",
            Failure::Timeout => "timeout",
            Failure::Storage => "storage",
            Failure::Limited => "limited",
        }
    }
}

/// The metrics of one kind of connection.
pub struct KindMetrics {
    pub active: Gauge,
    pub opened: Counter,
    pub duration: Histogram,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub messages_in: Counter,
    pub messages_out: Counter,
}

impl KindMetrics {
    fn new(kind: Kind) -> KindMetrics {
        let k = kind.label();
        KindMetrics {
            active: metrics::gauge!("tandem_connections_active", "kind" => k),
            opened: counter!("tandem_connections_opened_total", "kind" => k),
            duration: metrics::histogram!("tandem_connection_duration_seconds", "kind" => k),
            bytes_in: counter!("tandem_bytes_received_total", "kind" => k),
            bytes_out: counter!("tandem_bytes_sent_total", "kind" => k),
            messages_in: counter!("tandem_messages_received_total", "kind" => k),
            messages_out: counter!("tandem_messages_sent_total", "kind" => k),
        }
    }
}

/// Every handle the server records into.
pub struct Metrics {
    pub document: KindMetrics,
    pub dashboard: KindMetrics,
    pub long_poll: KindMetrics,
    pub hocuspocus: KindMetrics,
    failed: [Counter; Failure::ALL.len()],
    pub reconnects: Counter,
    /// Update received → handed to the last peer's socket.
    pub propagation: Histogram,
    /// Event published → handed to the last subscriber's socket.
    pub event_delivery: Histogram,
    pub rooms_loaded: Gauge,
    pub workspaces_loaded: Gauge,
    pub room_load: Histogram,
    pub update_log_flush: Histogram,
    pub event_log_flush: Histogram,
    /// Bytes appended to the update log (what its flushes write).
    pub update_log_bytes: Counter,
    pub client_errors: Counter,
    /// Messages received from and published to the cluster's bus.
    pub bus_in: Counter,
    pub bus_out: Counter,
    /// Rooms repaired from the store after a lost bus message, and how long each took.
    pub gaps_repaired: Counter,
    pub repair: Histogram,
    /// Nodes of the cluster this node sees alive, itself included.
    pub nodes_alive: Gauge,
    /// A query's round trip to the shared store, timed at each heartbeat.
    pub store_roundtrip: Histogram,
    /// Webhook messages queued, attempts by outcome, each attempt's latency, and the
    /// messages waiting in every outbox.
    pub webhooks_queued: Counter,
    pub webhook_deliveries_delivered: Counter,
    pub webhook_deliveries_failed: Counter,
    pub webhook_deliveries_gave_up: Counter,
    pub webhook_latency: Histogram,
    pub webhook_outbox_depth: Gauge,
}

impl Metrics {
    pub fn kind(&self, kind: Kind) -> &KindMetrics {
        match kind {
            Kind::Document => &self.document,
            Kind::Dashboard => &self.dashboard,
            Kind::LongPoll => &self.long_poll,
            Kind::Hocuspocus => &self.hocuspocus,
        }
    }

    /// Counts a failed connection.
    pub fn failed(&self, failure: Failure) {
        let index = Failure::ALL.iter().position(|f| *f == failure).unwrap_or(0);
        self.failed[index].increment(1);
    }

    /// Counts a closed connection, with why.
    pub fn closed(&self, kind: Kind, reason: &'static str) {
        counter!("tandem_connections_closed_total", "kind" => kind.label(), "reason" => reason)
            .increment(1);
    }
}

/// Buckets of the latency histograms, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// Buckets of connection durations, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 3_600.0, 14_400.0, 43_200.0, 86_400.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The recorder's handle; installs the recorder on first use. `None` when another recorder was
/// installed in this process first (then `/metrics` says so).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("tandem_connection_duration_seconds".into()),
                        DURATION_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(builder) => builder.install_recorder(),
                Err(err) => {
                    tracing::error!(error = %err, "bad histogram buckets");
                    return None;
                }
            };
            match recorder {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// The server's metrics (the recorder is installed first, so the handles record).
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let _ = handle();
        Metrics {
            document: KindMetrics::new(Kind::Document),
            dashboard: KindMetrics::new(Kind::Dashboard),
            long_poll: KindMetrics::new(Kind::LongPoll),
            hocuspocus: KindMetrics::new(Kind::Hocuspocus),
            failed: Failure::ALL.map(|f| {
                counter!("tandem_connections_failed_total", "reason" => f.label())
            }),
            reconnects: counter!("tandem_reconnects_total"),
            propagation: metrics::histogram!("tandem_update_propagation_seconds"),
            event_delivery: metrics::histogram!("tandem_event_delivery_seconds"),
            rooms_loaded: metrics::gauge!("tandem_rooms_loaded"),
            workspaces_loaded: metrics::gauge!("tandem_workspaces_loaded"),
            room_load: metrics::histogram!("tandem_document_load_seconds"),
            update_log_flush: metrics::histogram!("tandem_storage_flush_seconds", "log" => "updates"),
            event_log_flush: metrics::histogram!("tandem_storage_flush_seconds", "log" => "events"),
            update_log_bytes: counter!("tandem_storage_written_bytes_total", "log" => "updates"),
            client_errors: counter!("tandem_client_errors_total"),
            bus_in: counter!("tandem_cluster_bus_messages_total", "direction" => "in"),
            bus_out: counter!("tandem_cluster_bus_messages_total", "direction" => "out"),
            gaps_repaired: counter!("tandem_cluster_gaps_repaired_total"),
            repair: metrics::histogram!("tandem_cluster_repair_seconds"),
            nodes_alive: metrics::gauge!("tandem_cluster_nodes_alive"),
            store_roundtrip: metrics::histogram!("tandem_cluster_postgres_roundtrip_seconds"),
            webhooks_queued: counter!("tandem_webhook_messages_total"),
            webhook_deliveries_delivered: counter!("tandem_webhook_deliveries_total", "outcome" => "delivered"),
            webhook_deliveries_failed: counter!("tandem_webhook_deliveries_total", "outcome" => "failed"),
            webhook_deliveries_gave_up: counter!("tandem_webhook_deliveries_total", "outcome" => "gave_up"),
            webhook_latency: metrics::histogram!("tandem_webhook_delivery_seconds"),
            webhook_outbox_depth: metrics::gauge!("tandem_webhook_outbox_depth"),
        }
    })
}

/// Seconds, as histograms take them.
pub fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn describe() {
    describe_counter!(
        "tandem_webhook_messages_total",
        "Webhook messages written to an endpoint's outbox"
    );
    describe_counter!(
        "tandem_webhook_deliveries_total",
        "Webhook delivery attempts, by outcome (delivered, failed and to be retried, gave_up)"
    );
    describe_histogram!(
        "tandem_webhook_delivery_seconds",
        Unit::Seconds,
        "How long each webhook delivery attempt took"
    );
    describe_gauge!(
        "tandem_webhook_outbox_depth",
        "Webhook messages waiting to be delivered, over every endpoint"
    );
    describe_gauge!("tandem_connections_active", "Open connections, by kind");
    describe_counter!(
        "tandem_connections_opened_total",
        "Connections opened, by kind"
    );
    describe_counter!(
        "tandem_connections_closed_total",
        "Connections closed, by kind and reason"
    );
    describe_counter!(
        "tandem_connections_failed_total",
        "Connections refused or closed for a fault, by reason"
    );
    describe_histogram!(
        "tandem_connection_duration_seconds",
        Unit::Seconds,
        "How long connections lasted"
    );
    describe_counter!(
        "tandem_reconnects_total",
        "Connections of a user to a document (or the dashboard) they left within the reconnect window"
    );
    describe_counter!(
        "tandem_bytes_received_total",
        Unit::Bytes,
        "Bytes received in WebSocket messages"
    );
    describe_counter!(
        "tandem_bytes_sent_total",
        Unit::Bytes,
        "Bytes sent in WebSocket messages"
    );
    describe_counter!(
        "tandem_messages_received_total",
        "WebSocket messages received"
    );
    describe_counter!("tandem_messages_sent_total", "WebSocket messages sent");
    describe_histogram!(
        "tandem_update_propagation_seconds",
        Unit::Seconds,
        "From an update's arrival to its hand-over to the last peer's socket"
    );
    describe_histogram!(
        "tandem_event_delivery_seconds",
        Unit::Seconds,
        "From an event's publication to its hand-over to the last subscriber's socket"
    );
    describe_gauge!("tandem_rooms_loaded", "Documents in memory");
    describe_gauge!("tandem_workspaces_loaded", "Dashboard workspaces in memory");
    describe_histogram!(
        "tandem_document_load_seconds",
        Unit::Seconds,
        "Loading a document from storage"
    );
    describe_histogram!(
        "tandem_storage_flush_seconds",
        Unit::Seconds,
        "Group commits of the update and event logs"
    );
    describe_counter!(
        "tandem_storage_written_bytes_total",
        Unit::Bytes,
        "Bytes appended to the update log"
    );
    describe_counter!(
        "tandem_client_errors_total",
        "Errors reported by clients (POST /api/v1/client-errors)"
    );
    describe_counter!(
        "tandem_cluster_bus_messages_total",
        "Messages received from (in) and published to (out) the cluster's Redis bus"
    );
    describe_counter!(
        "tandem_cluster_gaps_repaired_total",
        "Rooms repaired from PostgreSQL after a lost bus message, a Redis reconnect or a dead node"
    );
    describe_histogram!(
        "tandem_cluster_repair_seconds",
        Unit::Seconds,
        "Repairing one room from PostgreSQL"
    );
    describe_gauge!(
        "tandem_cluster_nodes_alive",
        "Nodes of the cluster this node sees alive, itself included"
    );
    describe_histogram!(
        "tandem_cluster_postgres_roundtrip_seconds",
        Unit::Seconds,
        "A query's round trip to PostgreSQL, timed at each heartbeat (commits: tandem_storage_flush_seconds)"
    );
    describe_counter!(
        "tandem_auth_refusals_total",
        "Requests refused by authentication or authorization, by reason and route"
    );
}
