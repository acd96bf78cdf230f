//! The PostgreSQL backend: [`PgStore`] (documents), [`PgEventStore`] and [`PgStateStore`], one
//! connection pool for the three, for a node that keeps everything in a database it shares.
//!
//! # Layout
//! - here: connecting, the pool, the options and the errors;
//! - `schema`: the versioned migrations (`storage/migrations/*.sql`), applied at start-up under
//!   an advisory lock, and the refusal of a schema newer than this build;
//! - `docs`: [`PgStore`]'s [`DocStore`](crate::DocStore);
//! - `events`, `state`: the dashboard's log and records;
//! - `versions`: documents' version history;
//! - `testing` (`testing` feature): a database of its own for each test.
//!
//! Writes are buffered as the traits want (`append` and `put` are cheap and synchronous) and a
//! group commit's `flush` writes the whole buffer in one statement, so one round trip per
//! commit, whatever its size. Each buffered row carries this node's `origin` (a fresh id per
//! boot) and a sequence number of its own: a flush retried after an unknown outcome (the
//! connection dropped around the COMMIT) inserts nothing twice.
//!
//! Compaction runs in one transaction holding the document's snapshot row (`FOR UPDATE SKIP
//! LOCKED`: a second node wanting to compact the same document skips it), reads the stored
//! snapshot and every logged row, folds them and the caller's snapshot together with the
//! [`Merge`] the server gives (this crate knows no yrs), and deletes exactly the rows it read,
//! so an append another node commits meanwhile is kept.

mod docs;
mod events;
mod schema;
mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod versions;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

pub use events::PgEventStore;
pub use schema::SCHEMA_VERSION;
pub use state::PgStateStore;
pub use versions::PgVersionStore;

use crate::StoreError;

/// Folds updates into one: the first is the caller's snapshot, then the stored snapshot (if
/// any), then the logged updates, oldest first. The server passes yrs' merge.
pub type Merge = Arc<dyn Fn(&[&[u8]]) -> Result<Vec<u8>, String> + Send + Sync>;

/// How a [`PgStore`] connects and behaves.
#[derive(Clone)]
pub struct PgOptions {
    /// This node's id for what it appends: unique per boot (the server draws it at random).
    pub origin: i64,
    /// How compaction folds a snapshot and the log.
    pub merge: Merge,
    /// Connections in the pool.
    pub pool_size: usize,
    /// The longest any one storage call may take (waiting for a connection included) before
    /// it fails.
    pub timeout: Duration,
}

/// Documents in PostgreSQL, and the handle the event and state stores are opened from.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<docs::Docs>,
    /// One of each per store: their sequence numbers, with the origin, key the rows.
    events: PgEventStore,
    state: PgStateStore,
    versions: PgVersionStore,
}

/// What the three stores share: the pool and how long a call may take.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    origin: i64,
    timeout: Duration,
}

impl PgStore {
    /// Connects to `url`, applies the migrations this build knows, and opens the store.
    ///
    /// # Errors
    /// The URL is invalid, the database cannot be reached, or its schema is newer than this
    /// build ([`StoreError::SchemaTooNew`]).
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("invalid database URL: {e}")))?;
        config.connect_timeout(options.timeout);
        config.application_name("tandem");
        // PostgreSQL ends a statement that waits longer than the store's time limit itself
        // (a lock, a full disk), so the connection comes back usable; commits are durable
        // (synchronous_commit on, whatever the server's default); notices (a migration's
        // "already exists, skipping") stay out of the log.
        let limit_ms = options.timeout.as_millis().max(1);
        config.options(format!(
            "-c statement_timeout={limit_ms} -c idle_in_transaction_session_timeout={} \
             -c synchronous_commit=on -c client_min_messages=warning",
            limit_ms.saturating_mul(2)
        ));
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .build()
            .map_err(|e| StoreError::Config(format!("cannot build the connection pool: {e}")))?;
        let db = Db {
            pool,
            origin: options.origin,
            timeout: options.timeout,
        };
        db.run(|db| async move {
            let mut client = db.client().await?;
            schema::migrate(&mut client).await
        })
        .await?;
        Ok(PgStore {
            events: PgEventStore::new(db.clone()),
            state: PgStateStore::new(db.clone()),
            versions: PgVersionStore::new(db.clone()),
            inner: Arc::new(docs::Docs::new(db, options.merge)),
        })
    }

    /// The event log in the same database (the same one at every call).
    pub fn events(&self) -> PgEventStore {
        self.events.clone()
    }

    /// The per-user records in the same database (the same ones at every call).
    pub fn state(&self) -> PgStateStore {
        self.state.clone()
    }

    /// Documents' version history in the same database.
    pub fn versions(&self) -> PgVersionStore {
        self.versions.clone()
    }

    /// This node's origin id.
    pub fn origin(&self) -> i64 {
        self.inner.db.origin
    }
}

impl Db {
    /// A connection from the pool.
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(backend)
    }

    /// Runs one statement (prepared once per connection) and returns its rows, within the
    /// store's time limit.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.run(|db| async move {
            let client = db.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(backend)?;
            client.query(&statement, params).await.map_err(backend)
        })
        .await
    }

    /// [`Db::query`] of a statement that returns exactly one row.
    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, StoreError> {
        self.query(sql, params)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                StoreError::Backend(format!("no row from a query that returns one: {sql}").into())
            })
    }

    /// Runs `op` with the store's time limit. PostgreSQL enforces it on each statement; this
    /// one, with some slack, is for a database that does not answer at all.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Db) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let limit = self.timeout + self.timeout / 2;
        match tokio::time::timeout(limit, op(self.clone())).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Backend(
                format!("PostgreSQL did not answer within {:?}", limit).into(),
            )),
        }
    }
}

/// A backend error, boxed so that no PostgreSQL type leaves the crate.
fn backend(err: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(err))
}

/// A number for a `bigint` column (ids and times stay far below `i64::MAX`).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A `bigint` read back; negative values never occur in what this crate writes.
fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// PostgreSQL's text cannot hold NUL: refused when buffered, so one bad key never blocks a
/// group commit.
fn no_nul(what: &str, value: &str) -> Result<(), StoreError> {
    if value.contains('\0') {
        return Err(StoreError::Backend(
            format!("{what} {value:?} contains a NUL character, which PostgreSQL cannot store")
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::testing::TempDatabase;
    use super::*;
    use crate::{contract, Compaction, DocStore, EventStore, Since, StateStore};

    async fn open(db: &TempDatabase, origin: i64, timeout: Duration) -> PgStore {
        PgStore::connect(
            db.url(),
            PgOptions {
                origin,
                merge: Arc::new(contract::token_merge),
                pool_size: 4,
                timeout,
            },
        )
        .await
        .expect("connect")
    }

    async fn raw(db: &TempDatabase) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    const SECOND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn honours_the_contracts() {
        let db = TempDatabase::create().await;
        let store = open(&db, 1, SECOND).await;
        contract::doc_store(&store).await;
        contract::event_store(&store.events()).await;
        contract::state_store(&store.state()).await;
        contract::version_store(&store.versions()).await;
    }

    #[tokio::test]
    async fn migrates_once_and_refuses_a_newer_schema() {
        let db = TempDatabase::create().await;
        open(&db, 1, SECOND).await;
        // A second node starting on the same database finds the schema current.
        open(&db, 2, SECOND).await;
        let client = raw(&db).await;
        let versions: i64 = client
            .query_one("SELECT count(*) FROM tandem_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(versions, SCHEMA_VERSION);
        client
            .execute(
                "INSERT INTO tandem_migrations (version, name) VALUES ($1, 'future')",
                &[&(SCHEMA_VERSION + 1)],
            )
            .await
            .unwrap();
        let refused = PgStore::connect(
            db.url(),
            PgOptions {
                origin: 3,
                merge: Arc::new(contract::token_merge),
                pool_size: 2,
                timeout: SECOND,
            },
        )
        .await
        .err()
        .expect("a newer schema is refused");
        assert!(matches!(refused, StoreError::SchemaTooNew { found, known }
            if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION));
        assert!(refused.to_string().contains("newer"), "{refused}");
    }

    #[tokio::test]
    async fn loads_and_compactions_see_every_nodes_updates() {
        let db = TempDatabase::create().await;
        let (a, b) = (open(&db, 1, SECOND).await, open(&db, 2, SECOND).await);
        a.append("d", b"a1").unwrap();
        a.flush().await.unwrap();
        b.append("d", b"b1").unwrap();
        b.flush().await.unwrap();
        // Buffered, not committed: this node's loads see it, the other's do not yet.
        let s = a.append("d", b"a2").unwrap();
        assert_eq!(
            contract::tokens(&a.load("d").await.unwrap()),
            [b"a1", b"a2", b"b1"].map(|t| t.to_vec()).into()
        );
        assert_eq!(b.load("d").await.unwrap().log.len(), 2);

        // A's room knew only its own updates; the compaction folds B's in and deletes exactly
        // the rows it read, so A's buffered update lands after it and is kept.
        assert_eq!(
            a.compact("d", b"a1+a2".to_vec(), s).await.unwrap(),
            Compaction::Done { removed: 2 }
        );
        a.flush().await.unwrap();
        let after = b.load("d").await.unwrap();
        assert_eq!(after.snapshot.as_ref().unwrap().bytes, b"a1+a2+b1".to_vec());
        assert_eq!(after.log.len(), 1);
        assert_eq!(
            contract::tokens(&after),
            [b"a1", b"a2", b"b1"].map(|t| t.to_vec()).into()
        );
    }

    #[tokio::test]
    async fn nodes_publishing_to_one_workspace_share_one_gap_free_sequence() {
        let db = TempDatabase::create().await;
        let (a, b) = (
            open(&db, 1, SECOND).await.events(),
            open(&db, 2, SECOND).await.events(),
        );
        let mut slots = Vec::new();
        for _ in 0..20 {
            for (store, n) in [(&a, 3), (&b, 2)] {
                for _ in 0..n {
                    slots.push(store.append("acme", 1, b"{}").unwrap());
                }
            }
            // Both commit at once: the counter row takes them one after the other.
            let (ra, rb) = tokio::join!(a.flush(), b.flush());
            ra.unwrap();
            rb.unwrap();
        }
        let mut ids: Vec<u64> = slots.iter().map(|s| s.id().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=100).collect::<Vec<u64>>());
        assert_eq!(b.last_id("acme").await.unwrap(), 100);
        let Since::Events(all) = a.since("acme", 0, 1000).await.unwrap() else {
            panic!("resync")
        };
        assert_eq!(all.len(), 100);
    }

    #[tokio::test]
    async fn one_node_compacts_a_document_at_a_time() {
        let db = TempDatabase::create().await;
        let store = open(&db, 1, SECOND).await;
        let s = store.append("d", b"x").unwrap();
        store.flush().await.unwrap();
        store.compact("d", b"x".to_vec(), s).await.unwrap();
        // Another node holds the document's snapshot row, as its compaction does.
        let mut other = raw(&db).await;
        let tx = other.transaction().await.unwrap();
        tx.query_one(
            "SELECT body FROM doc_snapshots WHERE doc = 'd' FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
        let s = store.append("d", b"y").unwrap();
        store.flush().await.unwrap();
        assert_eq!(
            store.compact("d", b"x+y".to_vec(), s).await.unwrap(),
            Compaction::Stale
        );
        tx.rollback().await.unwrap();
        assert_eq!(
            store.compact("d", b"x+y".to_vec(), s).await.unwrap(),
            Compaction::Done { removed: 1 }
        );
    }

    #[tokio::test]
    async fn of_two_nodes_saving_one_record_the_newer_version_stays() {
        let db = TempDatabase::create().await;
        let (a, b) = (
            open(&db, 1, Duration::from_secs(5)).await.state(),
            open(&db, 2, Duration::from_secs(5)).await.state(),
        );
        a.put("users/acme", "ada", 7, Some(b"seven")).unwrap();
        a.flush().await.unwrap();
        // The other node is behind: its write lands later and is dropped.
        b.put("users/acme", "ada", 6, Some(b"six")).unwrap();
        b.flush().await.unwrap();
        assert_eq!(
            b.scan("users/acme").await.unwrap(),
            vec![("ada".to_owned(), b"seven".to_vec())]
        );
        b.put("users/acme", "ada", 8, Some(b"eight")).unwrap();
        b.flush().await.unwrap();
        assert_eq!(
            a.scan("users/acme").await.unwrap(),
            vec![("ada".to_owned(), b"eight".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_failed_group_commit_is_retried_without_duplicates() {
        let db = TempDatabase::create().await;
        let store = open(&db, 1, Duration::from_millis(300)).await;
        let events = store.events();
        let state = store.state();
        store.append("d", b"first").unwrap();
        events.append("acme", 1, b"{}").unwrap();
        state.put("s", "k", 1, Some(b"v1")).unwrap();
        // Another session locks the tables against writes: the flushes time out, and the
        // buffers keep the rows, which reads still see.
        let mut other = raw(&db).await;
        let tx = other.transaction().await.unwrap();
        tx.batch_execute(
            "LOCK TABLE doc_updates, events, event_counters, dashboard_state IN EXCLUSIVE MODE",
        )
        .await
        .unwrap();
        assert!(store.flush().await.is_err());
        assert!(events.flush().await.is_err());
        assert!(state.flush().await.is_err());
        store.append("d", b"second").unwrap();
        state.put("s", "k", 2, Some(b"v2")).unwrap();
        assert_eq!(store.load("d").await.unwrap().log.len(), 2);
        tx.commit().await.unwrap();

        store.flush().await.unwrap();
        events.flush().await.unwrap();
        state.flush().await.unwrap();
        let stored = store.load("d").await.unwrap();
        assert_eq!(
            stored
                .log
                .iter()
                .map(|(_, u)| u.as_slice())
                .collect::<Vec<_>>(),
            [b"first".as_slice(), b"second"]
        );
        let client = raw(&db).await;
        let rows: i64 = client
            .query_one("SELECT count(*) FROM doc_updates", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 2);
        let logged: i64 = client
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(logged, 1);
        assert_eq!(
            state.scan("s").await.unwrap(),
            vec![("k".to_owned(), b"v2".to_vec())]
        );
        // A fresh node reads what was committed.
        let fresh = open(&db, 2, SECOND).await;
        assert_eq!(fresh.events().last_id("acme").await.unwrap(), 1);
        assert_eq!(
            fresh.state().scan("s").await.unwrap(),
            vec![("k".to_owned(), b"v2".to_vec())]
        );
    }

    #[tokio::test]
    async fn refuses_names_postgres_cannot_store() {
        let db = TempDatabase::create().await;
        let store = open(&db, 1, SECOND).await;
        assert!(store.append("a\0b", b"x").is_err());
        assert!(store.state().put("s", "k\0", 0, Some(b"v")).is_err());
        // Nothing was buffered, so the next group commit goes through.
        store.flush().await.unwrap();
        store.state().flush().await.unwrap();
    }
}
