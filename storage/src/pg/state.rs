//! The dashboard's per-user records in PostgreSQL: written behind (a `put` is buffered and
//! seen at once by this node's scans), committed by the group commit in one statement.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{no_nul, Db};
use crate::{StateStore, StoreError};

/// (scope, key) → the version and the value to write, or `None` to remove it.
type Writes = BTreeMap<(String, String), (u64, Option<Vec<u8>>)>;

/// Records in PostgreSQL.
#[derive(Clone)]
pub struct PgStateStore {
    db: Db,
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Buffer {
    pending: Writes,
    /// Being written by the current flush.
    inflight: Arc<Writes>,
}

struct Inner {
    buffer: Mutex<Buffer>,
    flushing: tokio::sync::Mutex<()>,
}

/// One flush: the removals, then the writes, each only over an older version (another node's
/// newer write stays).
const WRITE: &str = "WITH removed AS (
         DELETE FROM dashboard_state d
         USING unnest($1::text[], $2::text[], $3::bigint[]) AS gone (scope, key, version)
         WHERE d.scope = gone.scope AND d.key = gone.key AND d.version <= gone.version
     )
     INSERT INTO dashboard_state (scope, key, value, version)
     SELECT * FROM unnest($4::text[], $5::text[], $6::bytea[], $7::bigint[])
     ON CONFLICT (scope, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version
     WHERE dashboard_state.version <= EXCLUDED.version";

impl PgStateStore {
    pub(super) fn new(db: Db) -> PgStateStore {
        PgStateStore {
            db,
            inner: Arc::new(Inner {
                buffer: Mutex::new(Buffer::default()),
                flushing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        // Plain data, changed in single steps.
        self.inner.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl StateStore for PgStateStore {
    fn put(
        &self,
        scope: &str,
        key: &str,
        version: u64,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        no_nul("scope", scope)?;
        no_nul("key", key)?;
        if i64::try_from(version).is_err() {
            return Err(StoreError::Task(format!(
                "state version {version} is beyond PostgreSQL's bigint"
            )));
        }
        let mut buffer = self.buffer();
        let key = (scope.to_owned(), key.to_owned());
        let older = |writes: &Writes| writes.get(&key).is_some_and(|(v, _)| *v > version);
        if older(&buffer.pending) || older(&buffer.inflight) {
            return Ok(());
        }
        buffer
            .pending
            .insert(key, (version, value.map(<[u8]>::to_vec)));
        Ok(())
    }

    async fn scan(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // What is being written, then what came since (the newest write wins), taken before
        // the read: a flush committing meanwhile then has its writes in one of the two.
        let buffered: Vec<(String, Option<Vec<u8>>)> = {
            let buffer = self.buffer();
            [&*buffer.inflight, &buffer.pending]
                .into_iter()
                .flat_map(|writes| writes.iter())
                .filter(|((s, _), _)| s == scope)
                .map(|((_, key), (_, value))| (key.clone(), value.clone()))
                .collect()
        };
        let rows = self
            .db
            .query(
                "SELECT key, value FROM dashboard_state WHERE scope = $1",
                &[&scope],
            )
            .await?;
        let mut entries: BTreeMap<String, Vec<u8>> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (key, value) in buffered {
            match value {
                Some(value) => entries.insert(key, value),
                None => entries.remove(&key),
            };
        }
        Ok(entries.into_iter().collect())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let _one = self.inner.flushing.lock().await;
        let batch = {
            let mut buffer = self.buffer();
            if buffer.pending.is_empty() {
                return Ok(());
            }
            let writes = std::mem::take(&mut buffer.pending);
            buffer.inflight = Arc::new(writes);
            Arc::clone(&buffer.inflight)
        };
        let written = {
            let (mut gone_scopes, mut gone_keys, mut gone_versions) =
                (Vec::new(), Vec::new(), Vec::new());
            let (mut scopes, mut keys, mut values, mut versions) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((scope, key), (version, value)) in batch.iter() {
                // Checked when put.
                let version = i64::try_from(*version).unwrap_or(i64::MAX);
                match value {
                    Some(value) => {
                        scopes.push(scope.as_str());
                        keys.push(key.as_str());
                        values.push(value.as_slice());
                        versions.push(version);
                    }
                    None => {
                        gone_scopes.push(scope.as_str());
                        gone_keys.push(key.as_str());
                        gone_versions.push(version);
                    }
                }
            }
            self.db
                .query(
                    WRITE,
                    &[
                        &gone_scopes,
                        &gone_keys,
                        &gone_versions,
                        &scopes,
                        &keys,
                        &values,
                        &versions,
                    ],
                )
                .await
                .map(drop)
        };
        // The buffer's is then the only reference: a failure takes the writes back uncopied.
        drop(batch);
        let mut buffer = self.buffer();
        let inflight = std::mem::take(&mut buffer.inflight);
        if written.is_err() {
            // Back into the buffer, except where a newer write replaced it meanwhile.
            let writes = Arc::unwrap_or_clone(inflight);
            for (key, value) in writes {
                buffer.pending.entry(key).or_insert(value);
            }
        }
        written
    }
}
