//! [`AppState`]: what every HTTP handler shares, and the parts of it the WebSocket endpoints
//! take (`FromRef`): `net::Server`, the rooms, the hub.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tandem_storage::DocStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Config;
use crate::dashboard::Hub;
use crate::docs::Rooms;
use crate::durability::Durability;
use crate::net::{Connections, Server};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Arc<Auth>,
    /// The documents.
    pub rooms: Arc<Rooms>,
    /// The group commit of the update log, which HTTP writes wait for.
    pub durability: Arc<Durability>,
    /// The dashboard: events, subscriptions, presence, badges, locks.
    pub hub: Arc<Hub>,
    /// The workspaces' webhook endpoints and their deliveries.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// The open connections, for the admin API and the connection metrics.
    pub connections: Arc<Connections>,
    /// How often each user may report client errors.
    pub client_errors: Arc<ClientErrorLimit>,
    /// The readiness check's last look at the store.
    pub storage_probe: Arc<StorageProbe>,
    /// This node's membership of a cluster, when it is in one.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Connection tasks, awaited at shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown starts.
    pub shutdown: CancellationToken,
}

impl FromRef<AppState> for Server {
    fn from_ref(app: &AppState) -> Server {
        Server {
            config: Arc::clone(&app.config),
            auth: Arc::clone(&app.auth),
            connections: Arc::clone(&app.connections),
            tasks: app.tasks.clone(),
            shutdown: app.shutdown.clone(),
        }
    }
}

impl FromRef<AppState> for Arc<Rooms> {
    fn from_ref(app: &AppState) -> Arc<Rooms> {
        Arc::clone(&app.rooms)
    }
}

impl FromRef<AppState> for Arc<Hub> {
    fn from_ref(app: &AppState) -> Arc<Hub> {
        Arc::clone(&app.hub)
    }
}

/// How fast one user (of one workspace) may report client errors.
pub struct ClientErrorLimit(pub(super) DefaultKeyedRateLimiter<(String, String)>);

impl ClientErrorLimit {
    pub fn per_minute(n: u32) -> ClientErrorLimit {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        ClientErrorLimit(RateLimiter::keyed(Quota::per_minute(n)))
    }

    /// Forgets users whose budget is full again.
    pub fn sweep(&self) {
        self.0.retain_recent();
    }
}

/// How long a storage probe may take before the store counts as failing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The last storage probe: when, and what it found. Probes run one at a time.
#[derive(Default)]
pub struct StorageProbe(tokio::sync::Mutex<Option<(tokio::time::Instant, Result<(), String>)>>);

impl StorageProbe {
    /// Whether the store takes writes ([`DocStore::probe`]: sled's data directory takes a
    /// write and an `fsync`, PostgreSQL answers). Requests that arrive while a probe runs
    /// share its answer, so a crowd of monitors costs one probe, and a hung disk or database
    /// holds one task, not one per request.
    pub(super) async fn check(&self, store: &dyn DocStore) -> Result<(), String> {
        let asked = tokio::time::Instant::now();
        let mut last = self.0.lock().await;
        if let Some((at, result)) = &*last {
            if *at >= asked {
                return result.clone();
            }
        }
        let result = match tokio::time::timeout(PROBE_TIMEOUT, store.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("the store does not take writes: {err}")),
            Err(_) => Err(format!("the store did not answer within {PROBE_TIMEOUT:?}")),
        };
        *last = Some((tokio::time::Instant::now(), result.clone()));
        result
    }
}
