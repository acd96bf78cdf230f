//! Tandem: a real-time collaboration server speaking the Yjs protocol.
//!
//! This crate is the transport and the product: configuration, the axum router, WebSocket
//! connections, the room registry and the persistence workers. The protocol lives in
//! `tandem-sync`, document logic in `tandem-crdt`, storage in `tandem-storage`.
//!
//! One entry point: [`serve`] takes a bound listener, a [`Config`] and a shutdown future.

mod admin;
mod api;
pub mod auth;
pub mod config;
pub mod connections;
pub mod dashboard;
pub mod docname;
pub mod durability;
mod error;
pub mod events;
pub mod metrics;
pub mod peer;
pub mod rooms;
mod web;
mod ws;

use std::future::Future;
use std::sync::Arc;

use axum::routing::{delete, get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tandem_storage::{DocStore, EventStore, SledOptions, SledStore, StateStore, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use docname::{DocName, DocNameError};

use auth::{Auth, AuthConfigError, AuthSettings};
use dashboard::Hub;
use durability::Durability;
use peer::CloseReason;
use rooms::Rooms;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    auth: Arc<Auth>,
    rooms: Arc<Rooms>,
    durability: Arc<Durability>,
    /// The dashboard: events, subscriptions, presence, badges, locks.
    hub: Arc<Hub>,
    /// The open connections, for the admin API and the connection metrics.
    connections: Arc<connections::Connections>,
    /// How often each user may report client errors.
    client_error_limit: Arc<admin::ClientErrorLimit>,
    /// The readiness check's last look at the data directory.
    storage_probe: Arc<admin::StorageProbe>,
    /// Connection tasks, awaited at shutdown.
    tasks: TaskTracker,
    /// Cancelled when shutdown starts.
    shutdown: CancellationToken,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("could not open the database in {dir}: {source}")]
    Storage {
        dir: std::path::PathBuf,
        source: StoreError,
    },
    #[error("invalid auth configuration: {0}")]
    Auth(#[from] AuthConfigError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server on `listener` with the sled database of `config.data_dir` until `shutdown`
/// resolves, then closes every connection with 1001, snapshots every room and flushes.
///
/// # Errors
/// The configuration is invalid, the database cannot be opened, or the listener fails.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let options = SledOptions {
        checkpoint_bytes: config.journal_checkpoint_bytes,
    };
    let store =
        SledStore::open_with(&config.data_dir, options).map_err(|source| ServeError::Storage {
            dir: config.data_dir.clone(),
            source,
        })?;
    let storage_error = |source| ServeError::Storage {
        dir: config.data_dir.clone(),
        source,
    };
    let stores = Stores {
        events: Arc::new(store.events().map_err(storage_error)?),
        state: Arc::new(store.state().map_err(storage_error)?),
        docs: Arc::new(store),
    };
    serve_with_stores(listener, config, stores, shutdown).await
}

/// Where the server keeps what it keeps.
pub struct Stores {
    /// Documents: update logs and snapshots.
    pub docs: Arc<dyn DocStore>,
    /// The dashboard's event log.
    pub events: Arc<dyn EventStore>,
    /// The dashboard's per-user records.
    pub state: Arc<dyn StateStore>,
}

/// [`serve`] with any stores.
///
/// # Errors
/// The configuration is invalid or the listener fails.
pub async fn serve_with_stores(
    listener: TcpListener,
    config: Config,
    stores: Stores,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Stores {
        docs: store,
        events,
        state,
    } = stores;
    let dashboard_stores = Arc::new(durability::DashboardStores {
        events: Arc::clone(&events),
        state: Arc::clone(&state),
    });
    validate(&config)?;
    let auth = Arc::new(Auth::new(AuthSettings {
        secret: config.auth_secret.as_ref(),
        public_key: config.auth_public_key.as_deref(),
        realtime_plans: &config.realtime_plans,
        leeway_secs: config.auth_leeway_secs,
        audience: config.auth_audience.as_deref(),
    })?);
    let addr = listener.local_addr()?;
    if auth.is_open() {
        if !addr.ip().is_loopback() && !config.insecure_no_auth {
            return Err(ServeError::Config(format!(
                "no --auth-secret or --auth-public-key: refusing to run without authentication on \
                 the non-loopback address {addr} (pass --insecure-no-auth to do it anyway)"
            )));
        }
        tracing::warn!(
            %addr,
            "no --auth-secret or --auth-public-key: running OPEN, every request is allowed"
        );
    }
    let config = Arc::new(config);
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let durability = Durability::new();
    let stop_flusher = CancellationToken::new();
    let flusher = durability.spawn_flusher(
        Arc::clone(&store),
        config.flush_interval(),
        stop_flusher.clone(),
    );
    // The event log has a group commit of its own: publishers wait for it, not for documents.
    let event_durability = Durability::named("event log", metrics::get().event_log_flush.clone());
    let event_flusher = event_durability.spawn_flusher(
        Arc::clone(&dashboard_stores),
        config.flush_interval(),
        stop_flusher.clone(),
    );
    let hub = Arc::new(Hub::new(
        Arc::clone(&events),
        Arc::clone(&state),
        Arc::clone(&event_durability),
        config.hub_settings(),
    ));
    let rooms = Arc::new(Rooms::new(
        Arc::clone(&store),
        Arc::clone(&durability),
        Arc::clone(&config),
        tasks.clone(),
        token.clone(),
    ));
    hub.attach_rooms(&rooms);
    let connections = connections::Connections::new(config.reconnect_window());
    let client_error_limit = Arc::new(admin::ClientErrorLimit::per_minute(
        config.client_errors_per_minute,
    ));
    let maintenance = spawn_maintenance(
        Arc::clone(&hub),
        Arc::clone(&rooms),
        Arc::clone(&connections),
        Arc::clone(&client_error_limit),
        std::time::Duration::from_millis(config.event_trim_interval_ms),
        stop_flusher.clone(),
    );
    rooms.observe_with(Arc::new(dashboard::hub::Observer(Arc::clone(&hub))));
    let state = AppState {
        config: Arc::clone(&config),
        auth,
        rooms: Arc::clone(&rooms),
        durability: Arc::clone(&durability),
        hub: Arc::clone(&hub),
        connections: Arc::clone(&connections),
        client_error_limit: Arc::clone(&client_error_limit),
        storage_probe: Arc::default(),
        tasks: tasks.clone(),
        shutdown: token.clone(),
    };

    tracing::info!(%addr, data_dir = %config.data_dir.display(), "tandem listening");
    let cancel = token.clone();
    let closing = Arc::clone(&rooms);
    let closing_hub = Arc::clone(&hub);
    // Small frames must leave at once: without TCP_NODELAY, Nagle's algorithm holds them back
    // until the previous one is acknowledged, and delayed acks turn that into tens of ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        cancel.cancel();
        closing.close_all_peers(&CloseReason::ShuttingDown);
        closing_hub.close_all(&CloseReason::ShuttingDown);
    })
    .await?;

    tracing::info!("shutting down: closing connections");
    token.cancel();
    rooms.close_all_peers(&CloseReason::ShuttingDown);
    hub.close_all(&CloseReason::ShuttingDown);
    tasks.close();
    if tokio::time::timeout(config.shutdown_timeout(), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    rooms.unload_all().await;
    stop_flusher.cancel();
    let _ = flusher.await;
    let _ = event_flusher.await;
    let _ = maintenance.await;
    if let Err(err) = durability.flush_now(store.as_ref()).await {
        tracing::error!(error = %err, "final flush failed");
    }
    if let Err(err) = event_durability.flush_now(dashboard_stores.as_ref()).await {
        tracing::error!(error = %err, "final flush of the event log failed");
    }
    tracing::info!("shut down");
    Ok(())
}

/// How often the hub expires locks and presence and publishes debounced presence.
const HUB_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the server's own awareness states are renewed: clients drop a remote state that
/// was not renewed for 30 s, and renew their own every 15 s.
const AWARENESS_RENEWAL: std::time::Duration = std::time::Duration::from_secs(15);

/// The timers: the hub's tick every second (or every trim interval, when shorter), retention
/// every `trim_every`, the renewal of the server's awareness states, the sweep of lapsed HTTP
/// pollers of documents.
fn spawn_maintenance(
    hub: Arc<Hub>,
    rooms: Arc<Rooms>,
    connections: Arc<connections::Connections>,
    client_errors: Arc<admin::ClientErrorLimit>,
    trim_every: std::time::Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HUB_TICK.min(trim_every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_trim = tokio::time::Instant::now();
        let mut next_renewal = tokio::time::Instant::now() + AWARENESS_RENEWAL;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            hub.tick();
            connections.sweep();
            rooms.expire_pollers();
            client_errors.sweep();
            // Histogram samples wait in buckets until drained; drain them even when nobody
            // scrapes, so they cannot pile up.
            if let Some(handle) = metrics::handle() {
                handle.run_upkeep();
            }
            if tokio::time::Instant::now() >= next_renewal {
                next_renewal = tokio::time::Instant::now() + AWARENESS_RENEWAL;
                rooms.renew_server_awareness();
            }
            if tokio::time::Instant::now() >= next_trim {
                next_trim = tokio::time::Instant::now() + trim_every;
                match hub.trim().await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "retention trimmed the event log"),
                    Err(err) => tracing::error!(error = %err, "retention failed"),
                }
            }
        }
    })
}

fn validate(config: &Config) -> Result<(), ServeError> {
    let positive = [
        ("max-frame-bytes", config.max_frame_bytes as u64),
        ("max-doc-bytes", config.max_doc_bytes as u64),
        ("outbound-queue", config.outbound_queue as u64),
        (
            "compaction-concurrency",
            config.compaction_concurrency as u64,
        ),
        ("max-event-bytes", config.max_event_bytes as u64),
        (
            "max-dashboard-frame-bytes",
            config.max_dashboard_frame_bytes as u64,
        ),
        ("lock-ttl-ms", config.lock_ttl_ms),
        (
            "max-chat-badges-per-user",
            config.max_chat_badges_per_user as u64,
        ),
        (
            "max-locks-per-connection",
            config.max_locks_per_connection as u64,
        ),
        (
            "dashboard-actions-per-sec",
            u64::from(config.dashboard_actions_per_sec),
        ),
        ("presence-idle-ms", config.presence_idle_ms),
        ("presence-poll-ttl-ms", config.presence_poll_ttl_ms),
        ("doc-poll-ttl-ms", config.doc_poll_ttl_ms),
        ("max-pollers-per-user", config.max_pollers_per_user as u64),
        (
            "publish-rate-workspace",
            u64::from(config.publish_rate_workspace),
        ),
        ("publish-rate-user", u64::from(config.publish_rate_user)),
        ("event-retention-secs", config.event_retention_secs),
        ("event-trim-interval-ms", config.event_trim_interval_ms),
        (
            "journal-checkpoint-bytes",
            config.journal_checkpoint_bytes as u64,
        ),
        (
            "max-awareness-per-connection",
            config.max_awareness_per_connection as u64,
        ),
        ("ws-read-buffer-bytes", config.ws_read_buffer_bytes as u64),
        ("compact-after-updates", config.compact_after_updates as u64),
        ("compact-after-bytes", config.compact_after_bytes as u64),
        ("ping-interval-ms", config.ping_interval_ms),
    ];
    for (name, value) in positive {
        if value == 0 {
            return Err(ServeError::Config(format!("--{name} must be at least 1")));
        }
    }
    // A client only answers pings it receives: with a timeout shorter than the interval, a
    // quiet but healthy connection would be closed between two pings.
    if config.ping_timeout_ms <= config.ping_interval_ms {
        return Err(ServeError::Config(
            "--ping-timeout-ms must be longer than --ping-interval-ms".into(),
        ));
    }
    // jsonwebtoken subtracts the leeway from the current time; a day is already generous.
    if config.auth_leeway_secs > 86_400 {
        return Err(ServeError::Config(
            "--auth-leeway-secs must be at most 86400".into(),
        ));
    }
    if config.frame_ancestors.trim().is_empty()
        || axum::http::HeaderValue::from_str(&config.frame_ancestors).is_err()
    {
        return Err(ServeError::Config(
            "--frame-ancestors must be CSP sources such as 'self' or https://app.example.com"
                .into(),
        ));
    }
    if config.realtime_plans.iter().all(|p| p.trim().is_empty()) {
        return Err(ServeError::Config(
            "--realtime-plans must name at least one plan".into(),
        ));
    }
    Ok(())
}

/// The routes.
pub fn router(state: AppState) -> Router {
    web::prepare();
    Router::new()
        .route("/ws/{*doc}", get(ws::upgrade))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/api/v1/admin/connections", get(admin::connections))
        .route("/api/v1/admin/connections/{id}", delete(admin::kick))
        .route("/api/v1/admin/rooms", get(admin::rooms))
        .route("/api/v1/admin/rooms/{*doc}", post(admin::compact))
        .route("/api/v1/client-errors", post(admin::client_error))
        .route("/api/v1/dev/token", post(api::dev_token))
        .route("/api/v1/docs/{*doc}", get(api::get_doc).post(api::post_doc))
        .route("/", get(web::page))
        .route("/queries/{id}", get(web::page))
        .route("/assets/{file}", get(web::file))
        .route("/ws", get(dashboard::session::upgrade))
        .route(
            "/api/v1/events",
            post(api::publish_event).get(api::poll_events),
        )
        .route(
            "/api/v1/presence",
            get(api::get_presence).post(api::post_presence),
        )
        .route("/api/v1/activity", get(api::get_activity))
        .route("/api/v1/editing", get(api::get_editing))
        .route("/api/v1/notifications", get(api::get_notifications))
        .route(
            "/api/v1/preferences",
            get(api::get_preferences).put(api::put_preferences),
        )
        .route("/api/v1/badges", get(api::get_badges))
        .route("/api/v1/badges/read", post(api::post_badges_read))
        .fallback(api::not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_mistakes_are_refused_with_the_flag_named() {
        assert!(validate(&Config::default()).is_ok());
        let cases = [
            (
                Config {
                    outbound_queue: 0,
                    ..Config::default()
                },
                "--outbound-queue",
            ),
            (
                Config {
                    ping_interval_ms: 5_000,
                    ping_timeout_ms: 5_000,
                    ..Config::default()
                },
                "--ping-timeout-ms",
            ),
            (
                Config {
                    auth_leeway_secs: 86_401,
                    ..Config::default()
                },
                "--auth-leeway-secs",
            ),
            (
                Config {
                    realtime_plans: vec![String::new()],
                    ..Config::default()
                },
                "--realtime-plans",
            ),
        ];
        for (config, flag) in cases {
            match validate(&config) {
                Err(ServeError::Config(message)) => assert!(message.contains(flag), "{message}"),
                other => panic!("{flag}: expected a configuration error, got {other:?}"),
            }
        }
    }
}
