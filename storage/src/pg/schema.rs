//! The schema's versioned migrations, applied at start-up.
//!
//! Each migration is a file of `storage/migrations/`, compiled in. `tandem_migrations` records
//! which ran; every node runs [`migrate`] as it starts, under a transaction-scoped advisory
//! lock, so nodes starting together apply each migration once. A database whose schema is
//! newer than the newest migration here is refused: an older build would misread it.

use crate::StoreError;

use super::backend;

/// The migrations, in order: version, name, SQL.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "state_versions",
        include_str!("../../migrations/0002_state_versions.sql"),
    ),
    (
        3,
        "versions",
        include_str!("../../migrations/0003_versions.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The advisory lock every node takes while it migrates ("tandem" in ASCII).
const MIGRATION_LOCK: i64 = 0x7461_6e64_656d;

/// Brings the schema up to [`SCHEMA_VERSION`]; returns how many migrations it applied.
///
/// # Errors
/// The database failed, or its schema is newer than this build.
pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<usize, StoreError> {
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tandem_migrations (
             version    bigint PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(backend)?;
    let found: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM tandem_migrations",
            &[],
        )
        .await
        .map_err(backend)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > found) {
        tx.batch_execute(sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO tandem_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(backend)?;
        tracing::info!(version, name, "applied a schema migration");
        applied += 1;
    }
    tx.commit().await.map_err(backend)?;
    Ok(applied)
}
