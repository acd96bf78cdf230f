//! Version history around the rooms: who changed which document since its last version, the
//! versions taken on the schedule (`--version-interval-secs` after the first change a version
//! does not hold yet, so at most one per interval of activity), by name, and around a
//! restore, and the restore itself, applied as a new change that merges with concurrent edits.
//!
//! What a version names as its authors is kept in memory until the version is taken, also
//! once the room unloads; at shutdown every document with changes no version holds gets one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tandem_storage::{NewVersion, Version, VersionReason};
use tracing::Instrument;

use super::rooms::{RoomOpError, Rooms};
use crate::docname::{DocName, RoomKind};

/// Where the client ids restores write their edits with start: far above Yjs's random 32-bit
/// ids, below the server's awareness clients (2^53 - 2^32) and 2^53.
const RESTORE_CLIENT_BASE: u64 = 1 << 52;

/// Changes of a document that no version holds yet.
#[derive(Debug)]
pub(super) struct Unversioned {
    /// When the first of them was made.
    since: Instant,
    /// Who made them (the users of the connections, pollers and tokens).
    authors: BTreeSet<Arc<str>>,
}

/// Why a version could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error(transparent)]
    Room(#[from] RoomOpError),
    #[error("version history failed: {0}")]
    Store(#[from] tandem_storage::StoreError),
    #[error("no version {0} of this document (retention may have removed it)")]
    NotFound(u64),
    #[error("the restore could not be made durable: {0}")]
    Durability(#[from] crate::durability::DurabilityError),
    #[error("a restore of this document is under way; retry once it is done")]
    Busy,
}

/// Holds a document's one restore; lets it go when dropped.
struct Restoring<'a>(&'a dashmap::DashSet<DocName>, DocName);

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

/// What a restore made: the version taken just before it (restoring that one undoes it) and
/// the one of the restored content.
#[derive(Debug)]
pub struct Restored {
    pub before: Version,
    pub after: Version,
    /// Whether the content changed (a restore of what the document already holds changes
    /// nothing).
    pub changed: bool,
}

impl Rooms {
    /// Notes that `author` (or the server itself, `None`) changed `name`.
    pub(super) fn note_change(&self, name: &DocName, author: Option<&Arc<str>>) {
        if name.kind() != RoomKind::Document {
            return;
        }
        if let Some(hooks) = self.hooks.get() {
            hooks.changed(name, author.map(|a| &**a));
        }
        // Most updates are to a document changed already: no key to copy for them.
        let mut entry = match self.unversioned.get_mut(name) {
            Some(entry) => entry,
            None => self
                .unversioned
                .entry(name.clone())
                .or_insert_with(|| Unversioned {
                    since: Instant::now(),
                    authors: BTreeSet::new(),
                }),
        };
        if let Some(author) = author {
            if !entry.authors.contains(author) {
                entry.authors.insert(Arc::clone(author));
            }
        }
    }

    /// Starts taking the versions that are due: of each document whose first change no version
    /// holds was made at least `--version-interval-secs` ago. Called on the server's tick.
    pub fn take_due_versions(self: &Arc<Self>) {
        let interval = self.config.version_interval();
        let due: Vec<DocName> = self
            .unversioned
            .iter()
            .filter(|e| e.since.elapsed() >= interval)
            .map(|e| e.key().clone())
            .filter(|name| self.versioning.insert(name.clone()))
            .collect();
        for name in due {
            let this = Arc::clone(self);
            let span = tracing::debug_span!("version", doc = %name);
            self.tasks.spawn(
                async move {
                    if let Err(err) = this
                        .take_version(&name, VersionReason::Auto, None, None)
                        .await
                    {
                        tracing::warn!(doc = %name, error = %err, "scheduled version failed; will retry");
                    }
                    this.versioning.remove(&name);
                }
                .instrument(span),
            );
        }
    }

    /// Takes a version of every document with changes no version holds: at shutdown, after the
    /// connections closed.
    pub async fn take_pending_versions(self: &Arc<Self>) {
        let pending: Vec<DocName> = self.unversioned.iter().map(|e| e.key().clone()).collect();
        for name in pending {
            if let Err(err) = self
                .take_version(&name, VersionReason::Auto, None, None)
                .await
            {
                tracing::warn!(doc = %name, error = %err, "version at shutdown failed");
            }
        }
    }

    /// Takes a version of `name` now: its content, who changed it since its last version (and
    /// `author`, who asked for this one), `reason` and `label`.
    ///
    /// # Errors
    /// The room could not be loaded or the version store failed (the authors are kept for the
    /// next try).
    pub async fn take_version(
        self: &Arc<Self>,
        name: &DocName,
        reason: VersionReason,
        label: Option<String>,
        author: Option<&str>,
    ) -> Result<Version, VersionError> {
        let content = self
            .read(name, |room| room.diff(&[0]))
            .await?
            .map_err(|e| VersionError::Room(RoomOpError::Room(e)))?;
        self.store_version(name, reason, label, author, content)
            .await
    }

    async fn store_version(
        &self,
        name: &DocName,
        reason: VersionReason,
        label: Option<String>,
        author: Option<&str>,
        content: Vec<u8>,
    ) -> Result<Version, VersionError> {
        let taken = self.unversioned.remove(name).map(|(_, u)| u);
        let mut authors: BTreeSet<String> = taken
            .iter()
            .flat_map(|u| u.authors.iter().map(|a| a.to_string()))
            .collect();
        if let Some(author) = author {
            authors.insert(author.to_owned());
        }
        let version = NewVersion {
            at_ms: i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX),
            authors: authors.into_iter().collect(),
            label,
            reason,
        };
        let stored = self
            .versions
            .put(
                name.as_str(),
                version,
                &content,
                self.config.version_retention(),
            )
            .await;
        match stored {
            Ok(version) => {
                if let Some(hooks) = self.hooks.get() {
                    hooks.version_created(name, &version);
                }
                tracing::debug!(doc = %name, id = version.id, bytes = version.bytes, reason = reason.as_str(), "version taken");
                Ok(version)
            }
            Err(err) => {
                // The changes still want a version naming their authors.
                if let Some(taken) = taken {
                    let mut entry = self.unversioned.entry(name.clone()).or_insert(taken);
                    entry.since = entry.since.min(Instant::now());
                }
                Err(err.into())
            }
        }
    }

    /// Who changed `name` since its last version (changes no version holds yet), sorted.
    pub fn unversioned_authors(&self, name: &DocName) -> Vec<String> {
        self.unversioned
            .get(name)
            .map(|u| u.authors.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default()
    }

    /// `name`'s versions, newest first, at most `limit`, older than the version `before`.
    ///
    /// # Errors
    /// The version store failed.
    pub async fn list_versions(
        &self,
        name: &DocName,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Version>, VersionError> {
        Ok(self.versions.list(name.as_str(), before, limit).await?)
    }

    /// Version `id` of `name` with its content (the document as one v1 update).
    ///
    /// # Errors
    /// There is no such version, or the version store failed.
    pub async fn version(
        &self,
        name: &DocName,
        id: u64,
    ) -> Result<(Version, Vec<u8>), VersionError> {
        self.versions
            .get(name.as_str(), id)
            .await?
            .ok_or(VersionError::NotFound(id))
    }

    /// Makes `name`'s content version `id`'s, as a change of its own that every client sees
    /// live and that merges with edits made at the same time: the edits from the content as it
    /// is to the version's are computed, that content is kept as a version (restoring it undoes
    /// this), the edits are applied, and the result is kept as a version too. Returns both.
    ///
    /// # Errors
    /// There is no such version, the room refused the edits, or a store failed.
    pub async fn restore(
        self: &Arc<Self>,
        name: &DocName,
        id: u64,
        author: &str,
    ) -> Result<Restored, VersionError> {
        // Two restores worked out from the same content would both insert the version's text.
        if !self.restoring.insert(name.clone()) {
            return Err(VersionError::Busy);
        }
        let _one = Restoring(&self.restoring, name.clone());
        let (_, target) = self.version(name, id).await?;
        // A client id of its own for each restore: two restores never write the same clocks.
        let client = RESTORE_CLIENT_BASE + (crate::boot_id() as u64 % (1 << 40));
        // The content now, under the room's lock; the edits are worked out away from it (on a
        // large document that takes a while) and merge with anything typed meanwhile.
        let current = self
            .read(name, |room| room.diff(&[0]))
            .await?
            .map_err(|e| VersionError::Room(RoomOpError::Room(e)))?;
        let (current, edits) = tokio::task::spawn_blocking(move || {
            let edits = tandem_crdt::restoring_update(&current, &target, client);
            (current, edits)
        })
        .await
        .map_err(|e| VersionError::Store(tandem_storage::StoreError::Task(e.to_string())))?;
        let edits = edits.map_err(|e| VersionError::Room(RoomOpError::Room(e)))?;
        let before = self
            .store_version(name, VersionReason::BeforeRestore, None, None, current)
            .await?;
        let changed = match edits {
            Some(edits) => {
                let edits = bytes::Bytes::from(edits);
                let ticket = self
                    .change(name, Some(author), |room| room.apply_update(edits.clone()))
                    .await?;
                if let Some(ticket) = ticket {
                    self.durable(ticket).await?;
                }
                true
            }
            None => false,
        };
        let label = Some(format!("restored version {id}"));
        let after = self
            .take_version(name, VersionReason::Restore, label, Some(author))
            .await?;
        let restored = Restored {
            before,
            after,
            changed,
        };
        if let Some(hooks) = self.hooks.get() {
            hooks.restored(name, id, author, &restored);
        }
        Ok(restored)
    }
}
