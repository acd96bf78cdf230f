//! Version history: [`VersionStore`], whole copies of a document kept at moments worth going
//! back to (taken on a schedule, by name, and around every restore), each with when, who
//! changed the document since the previous one, and why.
//!
//! A version is the whole document as one update, so it loads alone, whatever retention has
//! removed around it. [`SledVersionStore`] keeps versions in the document database (trees
//! `versions`: name + `0x00` + id → the record's JSON, and `version_content`: the same key →
//! the content); [`MemoryVersionStore`] in memory; the PostgreSQL one is
//! [`PgVersionStore`](crate::PgVersionStore). Ids grow across documents and restarts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::StoreError;

/// A stored version, without its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub id: u64,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who changed the document between the version before this one and this one.
    pub authors: Vec<String>,
    /// The content's size.
    pub bytes: u64,
    /// A name given by whoever took it.
    pub label: Option<String>,
    /// Why it was taken.
    pub reason: VersionReason,
}

/// Why a version was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionReason {
    /// On the schedule, after changes (or as the document closed with changes not yet kept).
    Auto,
    /// Asked for, with or without a label.
    Named,
    /// The content just before a restore replaced it: restoring this undoes the restore.
    BeforeRestore,
    /// The content a restore made.
    Restore,
}

impl VersionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionReason::Auto => "auto",
            VersionReason::Named => "named",
            VersionReason::BeforeRestore => "before_restore",
            VersionReason::Restore => "restore",
        }
    }

    /// The reason `as_str` names.
    pub fn parse(s: &str) -> Option<VersionReason> {
        Some(match s {
            "auto" => VersionReason::Auto,
            "named" => VersionReason::Named,
            "before_restore" => VersionReason::BeforeRestore,
            "restore" => VersionReason::Restore,
            _ => return None,
        })
    }
}

/// A version to store: everything but its id and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    pub at_ms: i64,
    pub authors: Vec<String>,
    pub label: Option<String>,
    pub reason: VersionReason,
}

/// Which versions of a document are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRetention {
    /// The newest this many.
    pub keep: usize,
    /// None taken before this time (ms since the Unix epoch); `None`: no age limit.
    pub not_before_ms: Option<i64>,
}

impl VersionRetention {
    /// Of `versions` (oldest first), the ids retention removes. The newest is always kept.
    fn removed(&self, versions: &[(u64, i64)]) -> Vec<u64> {
        let count = versions.len();
        versions
            .iter()
            .enumerate()
            .filter(|&(index, &(_, at_ms))| {
                let newest = index + 1 == count;
                let beyond_count = index + self.keep.max(1) < count;
                let too_old = self.not_before_ms.is_some_and(|limit| at_ms < limit);
                !newest && (beyond_count || too_old)
            })
            .map(|(_, &(id, _))| id)
            .collect()
    }
}

/// Versions of documents. Object-safe, so the server holds an `Arc<dyn VersionStore>`.
#[async_trait]
pub trait VersionStore: Send + Sync + 'static {
    /// Stores `content` (the whole document as one update) as a new version of `doc`, durably
    /// before it returns, then removes what `retention` no longer keeps of `doc`'s versions.
    ///
    /// # Errors
    /// The backend failed; nothing is stored then.
    async fn put(
        &self,
        doc: &str,
        version: NewVersion,
        content: &[u8],
        retention: VersionRetention,
    ) -> Result<Version, StoreError>;

    /// `doc`'s versions newest first, at most `limit`, only those older than `before` (an id)
    /// when given.
    ///
    /// # Errors
    /// The backend failed or a record is corrupt.
    async fn list(
        &self,
        doc: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Version>, StoreError>;

    /// One version of `doc` with its content; `None` when there is none with that id (or
    /// retention removed it).
    ///
    /// # Errors
    /// The backend failed or the record is corrupt.
    async fn get(&self, doc: &str, id: u64) -> Result<Option<(Version, Vec<u8>)>, StoreError>;

    /// Removes what `retention` no longer keeps of `doc`'s versions; says how many went.
    ///
    /// # Errors
    /// The backend failed.
    async fn prune(&self, doc: &str, retention: VersionRetention) -> Result<usize, StoreError>;
}

/// Versions in the document database.
#[derive(Clone)]
pub struct SledVersionStore {
    db: sled::Db,
    space: crate::SpaceGuard,
    records: sled::Tree,
    contents: sled::Tree,
}

impl SledVersionStore {
    pub(crate) fn open(
        db: sled::Db,
        space: crate::SpaceGuard,
    ) -> Result<SledVersionStore, StoreError> {
        Ok(SledVersionStore {
            records: db.open_tree("versions")?,
            contents: db.open_tree("version_content")?,
            db,
            space,
        })
    }

    fn record(doc: &str, value: &[u8]) -> Result<Version, StoreError> {
        serde_json::from_slice(value).map_err(|_| keys::corrupt(doc, "version record"))
    }

    /// `doc`'s versions as (id, when), oldest first.
    fn times(&self, doc: &str) -> Result<Vec<(u64, i64)>, StoreError> {
        let mut times = Vec::new();
        for entry in self.records.scan_prefix(keys::prefix(doc)) {
            let (_, value) = entry?;
            let version = Self::record(doc, &value)?;
            times.push((version.id, version.at_ms));
        }
        Ok(times)
    }

    fn prune_now(&self, doc: &str, retention: VersionRetention) -> Result<usize, StoreError> {
        let removed = retention.removed(&self.times(doc)?);
        for &id in &removed {
            // The record first: a crash in between leaves content nothing lists.
            self.records.remove(keys::numbered(doc, id))?;
            self.contents.remove(keys::numbered(doc, id))?;
        }
        Ok(removed.len())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(SledVersionStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[async_trait]
impl VersionStore for SledVersionStore {
    async fn put(
        &self,
        doc: &str,
        version: NewVersion,
        content: &[u8],
        retention: VersionRetention,
    ) -> Result<Version, StoreError> {
        self.space.check()?;
        let (doc, content) = (doc.to_owned(), content.to_vec());
        self.blocking(move |this| {
            let id = this.db.generate_id()?;
            let version = Version {
                id,
                at_ms: version.at_ms,
                authors: version.authors,
                bytes: content.len() as u64,
                label: version.label,
                reason: version.reason,
            };
            let record = serde_json::to_vec(&version)
                .map_err(|e| StoreError::Task(format!("cannot encode a version: {e}")))?;
            let key = keys::numbered(&doc, id);
            // The content first: a record is listed only once what it names is there.
            this.contents.insert(&key, content)?;
            this.records.insert(&key, record)?;
            this.db.flush()?;
            this.prune_now(&doc, retention)?;
            Ok(version)
        })
        .await
    }

    async fn list(
        &self,
        doc: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Version>, StoreError> {
        let doc = doc.to_owned();
        self.blocking(move |this| {
            let start = keys::prefix(&doc);
            let end = match before {
                Some(id) => keys::numbered(&doc, id),
                None => keys::prefix_end(&start),
            };
            let mut versions = Vec::new();
            for entry in this.records.range(start..end).rev().take(limit) {
                let (_, value) = entry?;
                versions.push(Self::record(&doc, &value)?);
            }
            Ok(versions)
        })
        .await
    }

    async fn get(&self, doc: &str, id: u64) -> Result<Option<(Version, Vec<u8>)>, StoreError> {
        let doc = doc.to_owned();
        self.blocking(move |this| {
            let key = keys::numbered(&doc, id);
            let Some(record) = this.records.get(&key)? else {
                return Ok(None);
            };
            let version = Self::record(&doc, &record)?;
            let content = this
                .contents
                .get(&key)?
                .ok_or_else(|| keys::corrupt(&doc, "missing version content"))?;
            Ok(Some((version, content.to_vec())))
        })
        .await
    }

    async fn prune(&self, doc: &str, retention: VersionRetention) -> Result<usize, StoreError> {
        let doc = doc.to_owned();
        self.blocking(move |this| this.prune_now(&doc, retention))
            .await
    }
}

/// (document, id) → the version and its content.
type Stored = BTreeMap<(String, u64), (Version, Vec<u8>)>;

/// Versions in memory, for tests and benches.
#[derive(Default, Clone)]
pub struct MemoryVersionStore {
    versions: Arc<Mutex<(u64, Stored)>>,
}

impl MemoryVersionStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Stored)> {
        // Plain data, changed in single steps.
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn prune_locked(stored: &mut Stored, doc: &str, retention: VersionRetention) -> usize {
        let times: Vec<(u64, i64)> = stored
            .range((doc.to_owned(), 0)..=(doc.to_owned(), u64::MAX))
            .map(|((_, id), (v, _))| (*id, v.at_ms))
            .collect();
        let removed = retention.removed(&times);
        for id in &removed {
            stored.remove(&(doc.to_owned(), *id));
        }
        removed.len()
    }
}

#[async_trait]
impl VersionStore for MemoryVersionStore {
    async fn put(
        &self,
        doc: &str,
        version: NewVersion,
        content: &[u8],
        retention: VersionRetention,
    ) -> Result<Version, StoreError> {
        let mut guard = self.lock();
        let (next, stored) = &mut *guard;
        *next += 1;
        let version = Version {
            id: *next,
            at_ms: version.at_ms,
            authors: version.authors,
            bytes: content.len() as u64,
            label: version.label,
            reason: version.reason,
        };
        stored.insert(
            (doc.to_owned(), version.id),
            (version.clone(), content.to_vec()),
        );
        Self::prune_locked(stored, doc, retention);
        Ok(version)
    }

    async fn list(
        &self,
        doc: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Version>, StoreError> {
        let guard = self.lock();
        let end = before.unwrap_or(u64::MAX);
        Ok(guard
            .1
            .range((doc.to_owned(), 0)..(doc.to_owned(), end))
            .rev()
            .take(limit)
            .map(|(_, (v, _))| v.clone())
            .collect())
    }

    async fn get(&self, doc: &str, id: u64) -> Result<Option<(Version, Vec<u8>)>, StoreError> {
        Ok(self.lock().1.get(&(doc.to_owned(), id)).cloned())
    }

    async fn prune(&self, doc: &str, retention: VersionRetention) -> Result<usize, StoreError> {
        Ok(Self::prune_locked(&mut self.lock().1, doc, retention))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest_by_count_and_age_and_always_the_last() {
        let versions = [(1, 100), (2, 200), (3, 300), (4, 400)];
        let by_count = VersionRetention {
            keep: 2,
            not_before_ms: None,
        };
        assert_eq!(by_count.removed(&versions), vec![1, 2]);
        let by_age = VersionRetention {
            keep: 10,
            not_before_ms: Some(250),
        };
        assert_eq!(by_age.removed(&versions), vec![1, 2]);
        // All too old: the newest stays, so a document always has its last version.
        let all_old = VersionRetention {
            keep: 10,
            not_before_ms: Some(1_000),
        };
        assert_eq!(all_old.removed(&versions), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn memory_contract() {
        crate::contract::version_store(&MemoryVersionStore::default()).await;
    }

    #[tokio::test]
    async fn sled_contract_and_versions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let kept = {
            let store = crate::sled_store::tests::reopen(dir.path())
                .versions()
                .unwrap();
            crate::contract::version_store(&store).await;
            store.list("acme/q/1", None, 100).await.unwrap()
        };
        let store = crate::sled_store::tests::reopen(dir.path())
            .versions()
            .unwrap();
        assert_eq!(store.list("acme/q/1", None, 100).await.unwrap(), kept);
        let newest = &kept[0];
        let (version, content) = store.get("acme/q/1", newest.id).await.unwrap().unwrap();
        assert_eq!(&version, newest);
        assert_eq!(content.len() as u64, version.bytes);
        // Ids keep growing after a reopen.
        let next = store
            .put(
                "acme/q/1",
                NewVersion {
                    at_ms: 1,
                    authors: vec![],
                    label: None,
                    reason: VersionReason::Auto,
                },
                b"x",
                VersionRetention {
                    keep: 100,
                    not_before_ms: None,
                },
            )
            .await
            .unwrap();
        assert!(next.id > newest.id);
    }
}
