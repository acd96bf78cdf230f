//! The composition root: [`serve_with_stores`] builds every part of the server from a
//! [`Config`] and its [`Stores`], serves the router until shutdown, then closes connections,
//! snapshots rooms and makes the last appends durable. The background work (group commits and
//! timers) is one [`Background`] guard.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tandem_storage::{DocStore, EventStore, StateStore, StoreError, VersionStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, AuthConfigError, AuthSettings};
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::Config;
use crate::dashboard::{Hub, HubObserver, HubSettings};
use crate::docs::Rooms;
use crate::durability::{DashboardStores, Durability};
use crate::http::state::ClientErrorLimit;
use crate::http::{router, AppState};
use crate::metrics;
use crate::net::{CloseReason, Connections};
use crate::webhooks::{Listener, WebhookSettings, Webhooks};

/// Where the server keeps what it keeps.
pub struct Stores {
    /// Documents: update logs and snapshots.
    pub docs: Arc<dyn DocStore>,
    /// The dashboard's event log.
    pub events: Arc<dyn EventStore>,
    /// The dashboard's per-user records.
    pub state: Arc<dyn StateStore>,
    /// Documents' version history.
    pub versions: Arc<dyn VersionStore>,
    /// What this server's writes to a shared store are keyed by (a fresh id per boot; 0 for
    /// a store of its own): a cluster's messages carry it too.
    pub origin: i64,
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
    #[error("could not open the PostgreSQL database: {0}")]
    Database(StoreError),
    #[error("could not join the cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("invalid auth configuration: {0}")]
    Auth(#[from] AuthConfigError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The file in the data directory that keeps the key of development tokens (open mode).
pub const DEV_KEY_FILE: &str = "dev-token.key";

/// [`serve`](crate::serve) with any stores: serves `listener` with `stores` until `shutdown`
/// resolves.
///
/// # Errors
/// The configuration is invalid or the listener fails.
pub async fn serve_with_stores(
    listener: TcpListener,
    config: Config,
    stores: Stores,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate().map_err(ServeError::Config)?;
    let auth = Arc::new(Auth::new(AuthSettings {
        secret: config.auth_secret.as_ref(),
        public_key: config.auth_public_key.as_deref(),
        realtime_plans: &config.realtime_plans,
        leeway_secs: config.auth_leeway_secs,
        audience: config.auth_audience.as_deref(),
        dev_key_file: Some(&config.data_dir.join(DEV_KEY_FILE)),
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
    let mut background = Background::default();

    let durability = Durability::new();
    background.spawn(|stop| {
        durability.spawn_flusher(Arc::clone(&stores.docs), config.flush_interval(), stop)
    });
    // The event log has a group commit of its own: publishers wait for it, not for documents.
    let dashboard_stores = Arc::new(DashboardStores {
        events: Arc::clone(&stores.events),
        state: Arc::clone(&stores.state),
    });
    let event_durability = Durability::named("event log", metrics::get().event_log_flush.clone());
    background.spawn(|stop| {
        event_durability.spawn_flusher(Arc::clone(&dashboard_stores), config.flush_interval(), stop)
    });
    let hub = Arc::new(Hub::new(
        Arc::clone(&stores.events),
        Arc::clone(&stores.state),
        Arc::clone(&event_durability),
        HubSettings::of(&config),
    ));
    let rooms = Arc::new(Rooms::new(
        Arc::clone(&stores.docs),
        Arc::clone(&stores.versions),
        Arc::clone(&durability),
        Arc::clone(&config),
        tasks.clone(),
        token.clone(),
    ));
    hub.attach_rooms(&rooms);
    rooms.observe_with(Arc::new(HubObserver(Arc::clone(&hub))));
    let webhooks = Webhooks::open(
        Arc::clone(&stores.state),
        WebhookSettings::of(&config),
        tasks.clone(),
        token.clone(),
    )
    .await
    .map_err(|source| ServeError::Storage {
        dir: config.data_dir.clone(),
        source,
    })?;
    webhooks.attach_rooms(&rooms);
    webhooks.attach_hub(&hub);
    rooms.hook(Arc::new(Listener(Arc::clone(&webhooks))));
    hub.hook_events(Arc::new(Listener(Arc::clone(&webhooks))));
    let cluster_stop = CancellationToken::new();
    let cluster = match &config.redis_url {
        // Every node's messages are told apart by the origin its store writes with.
        Some(_) if stores.origin == 0 => {
            return Err(ServeError::Config(
                "--redis-url needs stores keyed by this boot's origin (the PostgreSQL store of \
                 --database-url)"
                    .into(),
            ));
        }
        Some(url) => {
            let settings = ClusterSettings {
                name: config.cluster_name.clone(),
                node_id: config
                    .node_id
                    .clone()
                    .unwrap_or_else(|| format!("node-{:x}", stores.origin)),
                origin: stores.origin,
                node_ttl: Duration::from_millis(config.node_ttl_ms),
                timeout: config.storage_timeout().min(Duration::from_secs(2)),
                addr: addr.to_string(),
                // Clients renew their awareness every 15 s; an HTTP poller lives as long as
                // its TTL without it.
                mirror_quiet: Duration::from_secs(45)
                    .max(config.doc_poll_ttl() + Duration::from_secs(15)),
            };
            let cluster = Cluster::join(
                url.expose(),
                settings,
                &rooms,
                &hub,
                Arc::clone(&durability),
                cluster_stop.clone(),
            )
            .await?;
            rooms.connect_bus(Arc::clone(&cluster) as Arc<dyn crate::docs::RoomBus>);
            hub.connect_bus(Arc::clone(&cluster) as Arc<dyn crate::dashboard::HubBus>);
            Some(cluster)
        }
        None => None,
    };
    let connections = Connections::new(
        config.reconnect_window(),
        crate::net::registry::Caps {
            per_ip: config.max_connections_per_ip,
            per_user: config.max_connections_per_user,
            docs_per_user: config.max_docs_per_user,
        },
    );
    let client_errors = Arc::new(ClientErrorLimit::per_minute(
        config.client_errors_per_minute,
    ));
    let timers = Timers {
        hub: Arc::clone(&hub),
        rooms: Arc::clone(&rooms),
        connections: Arc::clone(&connections),
        client_errors: Arc::clone(&client_errors),
        webhooks: Arc::clone(&webhooks),
        trim_every: Duration::from_millis(config.event_trim_interval_ms),
    };
    background.spawn(|stop| tokio::spawn(timers.run(stop)));
    let state = AppState {
        config: Arc::clone(&config),
        auth,
        rooms: Arc::clone(&rooms),
        durability: Arc::clone(&durability),
        hub: Arc::clone(&hub),
        webhooks: Arc::clone(&webhooks),
        connections,
        client_errors,
        storage_probe: Arc::default(),
        cluster: cluster.clone(),
        tasks: tasks.clone(),
        shutdown: token.clone(),
    };

    match (&config.database_url, &cluster) {
        (Some(_), Some(cluster)) => tracing::info!(
            %addr,
            store = "postgres",
            node = %cluster.me().node_id,
            cluster = %config.cluster_name,
            "tandem listening"
        ),
        (Some(_), None) => tracing::info!(%addr, store = "postgres", "tandem listening"),
        (None, _) => tracing::info!(
            %addr,
            store = "sled",
            data_dir = %config.data_dir.display(),
            "tandem listening"
        ),
    }
    let cancel = token.clone();
    let (closing_rooms, closing_hub) = (Arc::clone(&rooms), Arc::clone(&hub));
    serve_http(
        listener,
        router(state),
        Duration::from_millis(config.http_header_timeout_ms),
        config.shutdown_timeout(),
        async move {
            shutdown.await;
            cancel.cancel();
            closing_rooms.close_all_peers(&CloseReason::ShuttingDown);
            closing_hub.close_all(&CloseReason::ShuttingDown);
        },
    )
    .await;

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
    // Changes no version holds yet get one, while the rooms are still loaded.
    rooms.take_pending_versions().await;
    rooms.unload_all().await;
    background.stop().await;
    if let Err(err) = durability.flush_now(stores.docs.as_ref()).await {
        tracing::error!(error = %err, "final flush failed");
    }
    if let Err(err) = event_durability.flush_now(dashboard_stores.as_ref()).await {
        tracing::error!(error = %err, "final flush of the event log failed");
    }
    // Last: what is committed is published, then the node says it leaves (the others repair
    // from what is now all in PostgreSQL).
    cluster_stop.cancel();
    if let Some(cluster) = &cluster {
        cluster.stopped().await;
    }
    tracing::info!("shut down");
    Ok(())
}

/// The server's background tasks (group-commit flushers, timers): one signal stops them all,
/// and [`Background::stop`] waits for them. Dropped without `stop`, it still signals them.
#[derive(Default)]
struct Background {
    stop: CancellationToken,
    running: Vec<JoinHandle<()>>,
}

impl Background {
    /// Starts a task that ends when its token is cancelled.
    fn spawn(&mut self, start: impl FnOnce(CancellationToken) -> JoinHandle<()>) {
        self.running.push(start(self.stop.clone()));
    }

    /// Stops every task and waits for them.
    async fn stop(mut self) {
        self.stop.cancel();
        for task in self.running.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How often the hub expires locks and presence and publishes debounced presence.
const HUB_TICK: Duration = Duration::from_secs(1);

/// How often the server's own awareness states are renewed: clients drop a remote state that
/// was not renewed for 30 s, and renew their own every 15 s.
const AWARENESS_RENEWAL: Duration = Duration::from_secs(15);

/// The timers: the hub's tick every second (or every trim interval, when shorter), retention
/// every `trim_every`, the renewal of the server's awareness states, the sweeps of lapsed HTTP
/// pollers of documents, of the reconnect window and of the client-error budgets, and the
/// histograms' upkeep.
struct Timers {
    hub: Arc<Hub>,
    rooms: Arc<Rooms>,
    connections: Arc<Connections>,
    client_errors: Arc<ClientErrorLimit>,
    webhooks: Arc<Webhooks>,
    trim_every: Duration,
}

impl Timers {
    async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(HUB_TICK.min(self.trim_every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_trim = tokio::time::Instant::now();
        let mut next_renewal = tokio::time::Instant::now() + AWARENESS_RENEWAL;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.hub.tick();
            self.connections.sweep();
            self.rooms.expire_pollers();
            self.rooms.take_due_versions();
            self.webhooks.tick();
            self.client_errors.sweep();
            // Histogram samples wait in buckets until drained; drain them even when nobody
            // scrapes, so they cannot pile up.
            if let Some(handle) = metrics::handle() {
                handle.run_upkeep();
            }
            if tokio::time::Instant::now() >= next_renewal {
                next_renewal = tokio::time::Instant::now() + AWARENESS_RENEWAL;
                self.rooms.renew_server_awareness();
            }
            if tokio::time::Instant::now() >= next_trim {
                next_trim = tokio::time::Instant::now() + self.trim_every;
                match self.hub.trim().await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "retention trimmed the event log"),
                    Err(err) => tracing::error!(error = %err, "retention failed"),
                }
            }
        }
    }
}

/// Serves `router` on `listener` (HTTP/1 and HTTP/2, with WebSocket upgrades) until `shutdown`
/// completes, then waits up to `drain_timeout` for the requests in flight. Each connection gets `TCP_NODELAY`, its
/// peer's address (`ConnectInfo`), and `header_timeout` to send each request's headers: one
/// that dribbles them, or sends none, is closed.
async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    header_timeout: Duration,
    drain_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small frames must leave at once: without TCP_NODELAY, Nagle's algorithm holds them
        // back until the previous one is acknowledged, and delayed acks turn that into tens of
        // ms.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let service = tower_http::add_extension::AddExtension::new(
            router.clone(),
            axum::extract::ConnectInfo(remote),
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%remote, error = %err, "an HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    // Upgraded sockets are no longer HTTP connections: the rooms and the hub close them. A
    // request still being sent after `drain_timeout` is abandoned.
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP requests did not finish in time");
    }
}
