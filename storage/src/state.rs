//! The dashboard's per-user state: [`StateStore`], a small key-value space in scopes (chat
//! badges, preferences, last seen, one record per user of a workspace), beside the event log.
//!
//! [`SledStateStore`] keeps it in the document database (tree `dashboard_state`: scope + `0x00` +
//! key → value), [`MemoryStateStore`] in memory. Values are opaque bytes here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::keys;
use crate::StoreError;

/// Small records by scope and key. Object-safe, so the server holds an `Arc<dyn StateStore>`.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Sets (or with `None` removes) `key` in `scope`, as of `version`: a write whose version
    /// is below the one stored for the key is dropped, so of two writers that save the same
    /// record the newer state wins whatever order their writes land in (a removal forgets the
    /// version). Cheap and non-blocking: later reads see it at once, and it is durable once a
    /// later [`StateStore::flush`] returns.
    ///
    /// # Errors
    /// The backend refused the write.
    fn put(
        &self,
        scope: &str,
        key: &str,
        version: u64,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError>;

    /// Every key of `scope` with its value, in key order.
    ///
    /// # Errors
    /// The backend failed or a record is corrupt.
    async fn scan(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Makes every write so far durable.
    ///
    /// # Errors
    /// The backend could not write or sync.
    async fn flush(&self) -> Result<(), StoreError>;
}

/// State in the document database.
#[derive(Clone)]
pub struct SledStateStore {
    db: sled::Db,
    /// Refuses writes while the disk is nearly full: sled does not survive running out.
    space: crate::SpaceGuard,
    tree: sled::Tree,
    /// The same keys → the version each was written at (8 bytes, big-endian).
    versions: sled::Tree,
    /// A version's check and the write it allows happen together.
    writing: Arc<Mutex<()>>,
}

impl SledStateStore {
    pub(crate) fn open(
        db: sled::Db,
        space: crate::SpaceGuard,
    ) -> Result<SledStateStore, StoreError> {
        let tree = db.open_tree("dashboard_state")?;
        let versions = db.open_tree("dashboard_state_versions")?;
        Ok(SledStateStore {
            db,
            space,
            tree,
            versions,
            writing: Arc::new(Mutex::new(())),
        })
    }
}

fn scoped(scope: &str, key: &str) -> Vec<u8> {
    let mut full = keys::prefix(scope);
    full.extend_from_slice(key.as_bytes());
    full
}

#[async_trait]
impl StateStore for SledStateStore {
    fn put(
        &self,
        scope: &str,
        key: &str,
        version: u64,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.space.check()?;
        let full = scoped(scope, key);
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self
            .versions
            .get(&full)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        if version < stored {
            return Ok(());
        }
        match value {
            Some(value) => {
                self.tree.insert(&full, value)?;
                self.versions.insert(&full, &version.to_be_bytes())?;
            }
            None => {
                self.tree.remove(&full)?;
                self.versions.remove(&full)?;
            }
        };
        Ok(())
    }

    async fn scan(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (tree, scope) = (self.tree.clone(), scope.to_owned());
        tokio::task::spawn_blocking(move || {
            let at = scope.len() + 1;
            let mut entries = Vec::new();
            for entry in tree.scan_prefix(scoped(&scope, "")) {
                let (key, value) = entry?;
                let key = std::str::from_utf8(&key[at..])
                    .map_err(|_| keys::corrupt(&scope, "state key"))?
                    .to_owned();
                entries.push((key, value.to_vec()));
            }
            Ok(entries)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.space.check()?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush().map(drop).map_err(StoreError::from))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// (scope, key) → version and value.
type Entries = BTreeMap<(String, String), (u64, Vec<u8>)>;

/// State in memory, for tests and benches.
#[derive(Default, Clone)]
pub struct MemoryStateStore {
    entries: Arc<Mutex<Entries>>,
}

impl MemoryStateStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    fn put(
        &self,
        scope: &str,
        key: &str,
        version: u64,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let key = (scope.to_owned(), key.to_owned());
        let mut entries = self.lock();
        if entries
            .get(&key)
            .is_some_and(|(stored, _)| *stored > version)
        {
            return Ok(());
        }
        match value {
            Some(value) => entries.insert(key, (version, value.to_vec())),
            None => entries.remove(&key),
        };
        Ok(())
    }

    async fn scan(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .filter(|((s, _), _)| s == scope)
            .map(|((_, key), (_, value))| (key.clone(), value.clone()))
            .collect())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_contract() {
        crate::contract::state_store(&MemoryStateStore::default()).await;
    }

    #[tokio::test]
    async fn sled_contract_and_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::sled_store::tests::reopen(dir.path())
                .state()
                .unwrap();
            crate::contract::state_store(&store).await;
        }
        let store = crate::sled_store::tests::reopen(dir.path())
            .state()
            .unwrap();
        assert_eq!(
            store.scan("badges/acme").await.unwrap(),
            vec![("u1".to_string(), b"1".to_vec())]
        );
    }
}
