//! Tandem: a real-time collaboration server speaking the Yjs protocol.
//!
//! This crate is the transport and the product. The wire protocol lives in `tandem-sync`, a
//! document room's state in `tandem-crdt`, storage in `tandem-storage`.
//!
//! # Layout
//! Lower layers first; a module imports only from layers above it in this list, never the
//! other way (and no handler imports another handler).
//! - Foundations: [`config`] (every flag and limit), [`docname`] (document names and what they
//!   are for), [`clock`], [`metrics`] (the Prometheus handles), [`durability`] (group commits).
//! - [`auth`]: tokens, who a request speaks for, what it may do. [`error`]: the HTTP answers to
//!   refusals.
//! - [`net`]: connection ids, closing, liveness, the connection registry, and the reader and
//!   the one writer loop both WebSocket endpoints use.
//! - [`docs`]: the rooms (one `tandem_crdt::Room` per loaded document), delivery to their
//!   peers, persistence and compaction, HTTP pollers, the server's own awareness states, and
//!   the `/ws/{doc}` endpoint.
//! - [`dashboard`]: the event catalogue, the `/ws` protocol, the per-workspace hub (delivery
//!   pipeline, history, locks, inbox and badges, who is editing, presence, preferences) and
//!   the `/ws` endpoint.
//! - [`cluster`]: the nodes of a cluster over Redis (documents, events, locks, heartbeats),
//!   above the rooms and the hub, which tell it what happens through `docs::RoomBus` and
//!   `dashboard::HubBus`.
//! - [`webhooks`]: the workspaces' endpoints, their durable outboxes and signed deliveries,
//!   above the rooms and the hub, which tell it what happens through `docs::DocHooks` and
//!   `dashboard::EventHook`.
//! - [`http`]: the router, its shared state, its extractors and one module per API area.
//! - `app`: the composition root ([`serve_with_stores`]) and the background work.
//!
//! # One document update
//! A client's frame arrives on `/ws/{doc}` (`docs::socket`), goes to [`docs::Rooms::receive`],
//! which under the room's lock applies it (`tandem_crdt::Room::receive` fills an `Outbox`),
//! appends the update to the store (`DocStore::append`, durable at the next group commit of
//! [`durability`]) and queues it for every other peer (`docs::delivery`); each peer's writer
//! (`net::socket::write_loop`) sends it. An HTTP write (`POST /api/v1/docs/{doc}/update`) takes
//! the same path and answers once its group commit is done. `docs/ARCHITECTURE.md` has the
//! whole picture, the path of a dashboard event too.
//!
//! Two entry points: [`serve`] takes a bound listener, a [`Config`] and a shutdown future and
//! opens sled in the configured data directory (or PostgreSQL with `--database-url`, and joins
//! a cluster with `--redis-url`); [`serve_with_stores`] takes the [`Stores`] to use instead.

mod app;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod docname;
pub mod docs;
pub mod durability;
pub mod error;
pub mod http;
pub mod metrics;
pub mod net;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use tandem_storage::{PgOptions, PgStore, SledOptions, SledStore};
use tokio::net::TcpListener;

pub use app::{serve_with_stores, ServeError, Stores, DEV_KEY_FILE};
pub use config::Config;
pub use docname::{DocName, DocNameError};

/// Runs the server on `listener` with the stores `config` names (sled in `config.data_dir`, or
/// PostgreSQL with `config.database_url`) until `shutdown` resolves, then closes every
/// connection with 1001, snapshots every room and flushes.
///
/// # Errors
/// The configuration is invalid, the database cannot be opened, or the listener fails.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate().map_err(ServeError::Config)?;
    let stores = match &config.database_url {
        Some(url) => postgres_stores(url.expose(), &config).await?,
        None => sled_stores(&config)?,
    };
    serve_with_stores(listener, config, stores, shutdown).await
}

/// The sled database of `config.data_dir`.
fn sled_stores(config: &Config) -> Result<Stores, ServeError> {
    let options = SledOptions {
        checkpoint_bytes: config.journal_checkpoint_bytes,
        reserve_bytes: config.min_free_disk_mib.saturating_mul(1 << 20),
        cache_bytes: config.sled_cache_mib.saturating_mul(1 << 20),
    };
    let storage_error = |source| ServeError::Storage {
        dir: config.data_dir.clone(),
        source,
    };
    let store = SledStore::open_with(&config.data_dir, options).map_err(storage_error)?;
    Ok(Stores {
        events: Arc::new(store.events().map_err(storage_error)?),
        state: Arc::new(store.state().map_err(storage_error)?),
        versions: Arc::new(store.versions().map_err(storage_error)?),
        docs: Arc::new(store),
        origin: 0,
    })
}

/// The PostgreSQL database at `url`, migrated to this build's schema.
async fn postgres_stores(url: &str, config: &Config) -> Result<Stores, ServeError> {
    let origin = boot_id();
    let options = PgOptions {
        origin,
        merge: Arc::new(tandem_crdt::merge_updates),
        pool_size: config.database_pool_size,
        timeout: config.storage_timeout(),
    };
    let store = PgStore::connect(url, options)
        .await
        .map_err(ServeError::Database)?;
    let events = store.events();
    tracing::info!(
        schema = tandem_storage::pg::SCHEMA_VERSION,
        origin = store.origin(),
        "storing in PostgreSQL"
    );
    Ok(Stores {
        events: Arc::new(events),
        state: Arc::new(store.state()),
        versions: Arc::new(store.versions()),
        docs: Arc::new(store),
        origin,
    })
}

/// A random id for this boot of the server: what its writes to a shared database are keyed by
/// (and, shortened, a cluster node's default name).
pub fn boot_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the operating system's randomness.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // Positive, so it reads plainly in the database.
    (hasher.finish() >> 1) as i64
}
