//! `tandem-storage`: persistence over bytes, behind three seams.
//!
//! # Layout
//! - [`DocStore`] (here): an append-only update log per document plus a compacted snapshot.
//! - [`EventStore`] ([`events`](crate::EventStore)): the dashboard's per-workspace event log.
//! - [`StateStore`] ([`state`](crate::StateStore)): the dashboard's small per-user records.
//! - [`VersionStore`] ([`versions`](crate::VersionStore)): documents' version history, whole
//!   copies with who changed what since the one before.
//! - `sled_store` + `journal`: [`SledStore`], the default backend: appends go to a write-ahead
//!   journal (one `pwrite` + `fdatasync` per group commit) and move into sled at checkpoints;
//!   [`SledStore::events`], [`SledStore::state`] and [`SledStore::versions`] open the others in
//!   the same database.
//! - [`pg`]: [`PgStore`], [`PgEventStore`] and [`PgStateStore`], the three in PostgreSQL for a
//!   node (or a cluster of them) on a shared database, with versioned migrations; its
//!   `testing` module (`testing` feature) gives each test a database of its own.
//! - `memory`: [`MemoryStore`], a volatile `DocStore` for tests and benches ([`MemoryEventStore`]
//!   and [`MemoryStateStore`] sit beside their traits).
//! - `contract` (tests, and the `testing` feature): the behaviour every backend owes its
//!   trait, which every backend here runs.
//!
//! One update's path: the server calls [`DocStore::append`] (buffered, returns its [`Seq`]),
//! then [`DocStore::flush`] in its group commit; a later [`DocStore::compact`] folds the log into
//! a snapshot, and [`DocStore::load`] gives both back. Nothing here knows yrs: updates,
//! snapshots, events and records are opaque bytes, and errors name no backend's types.

#[cfg(any(test, feature = "testing"))]
pub mod contract;
mod events;
mod journal;
mod keys;
mod memory;
pub mod pg;
mod sled_store;
mod space;
mod state;
mod versions;

pub use events::{
    EventSlot, EventStore, MemoryEventStore, Retention, Since, SledEventStore, StoredEvent,
};
pub use memory::MemoryStore;
pub use pg::{Merge, PgEventStore, PgOptions, PgStateStore, PgStore, PgVersionStore};
pub use sled_store::{SledOptions, SledStore};
pub use space::SpaceGuard;
pub use state::{MemoryStateStore, SledStateStore, StateStore};
pub use versions::{
    MemoryVersionStore, NewVersion, SledVersionStore, Version, VersionReason, VersionRetention,
    VersionStore,
};

use async_trait::async_trait;

/// Why a storage call failed. Neutral: a backend's own errors are boxed in
/// [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored record for document {doc:?} is corrupt: {what}")]
    Corrupt { doc: String, what: &'static str },
    #[error("storage task failed: {0}")]
    Task(String),
    #[error("journal file failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("an update of {bytes} bytes for document {doc:?} is too large to log")]
    TooLarge { doc: String, bytes: usize },
    #[error("{0}")]
    Config(String),
    #[error(
        "the data directory's disk has {free} bytes free, less than the {reserve} kept in \
         reserve: writes wait until space is freed"
    )]
    DiskFull { free: u64, reserve: u64 },
    #[error(
        "the database's schema is at version {found}, newer than version {known} that this \
         build of tandem knows: run a newer tandem (a downgrade would not understand the data)"
    )]
    SchemaTooNew { found: i64, known: i64 },
}

/// A document as stored: the latest snapshot and the log appended after it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredDoc {
    pub snapshot: Option<Snapshot>,
    /// Updates appended after the snapshot, oldest first, with their sequence numbers.
    pub log: Vec<(Seq, Vec<u8>)>,
}

impl StoredDoc {
    /// Whether nothing is stored for the document.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.log.is_empty()
    }

    /// The snapshot's and the log's bytes together.
    pub fn total_bytes(&self) -> usize {
        self.snapshot.as_ref().map_or(0, |s| s.bytes.len())
            + self.log.iter().map(|(_, u)| u.len()).sum::<usize>()
    }

    /// The highest sequence number the stored state covers (0 when empty).
    pub fn last_seq(&self) -> Seq {
        let logged = self.log.last().map(|(seq, _)| *seq);
        let snap = self.snapshot.as_ref().map(|s| s.upto);
        logged.or(snap).unwrap_or(Seq(0))
    }
}

/// A compacted state: the whole document as one update, covering the log up to `upto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub upto: Seq,
    pub bytes: Vec<u8>,
}

/// The position of an update in the store's log. Sequence numbers only grow, across documents
/// and across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// The snapshot was written and this many stored log entries it covers removed (entries
    /// still in a write-ahead journal are not counted: they are dropped instead of stored).
    Done { removed: usize },
    /// A snapshot covering as much or more was already stored; nothing changed.
    Stale,
}

/// Document persistence. Object-safe, so the server holds an `Arc<dyn DocStore>`.
#[async_trait]
pub trait DocStore: Send + Sync + 'static {
    /// Buffers `update` at the end of `doc`'s log and returns its sequence number. Cheap and
    /// non-blocking: the update is in the log for every later `load`, but it is durable only
    /// once a later [`DocStore::flush`] returns.
    ///
    /// # Errors
    /// The backend refused the write.
    fn append(&self, doc: &str, update: &[u8]) -> Result<Seq, StoreError>;

    /// Makes everything appended so far durable (a group commit).
    ///
    /// # Errors
    /// The backend could not write or sync.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Reads `doc`'s snapshot and the log after it.
    ///
    /// # Errors
    /// The backend failed or a record is corrupt.
    async fn load(&self, doc: &str) -> Result<StoredDoc, StoreError>;

    /// Replaces `doc`'s snapshot with `snapshot`, which covers every update up to `upto`, and
    /// removes those updates from the log. Crash-safe: a load after a crash at any point sees
    /// either the old snapshot with the whole log or the new one with the tail (covered log
    /// entries that outlive a crash are skipped by loads and removed by the next compaction). A snapshot never moves backwards: when
    /// the stored one already covers `upto`, this is [`Compaction::Stale`].
    ///
    /// # Errors
    /// The backend failed.
    async fn compact(
        &self,
        doc: &str,
        snapshot: Vec<u8>,
        upto: Seq,
    ) -> Result<Compaction, StoreError>;

    /// Removes everything stored for `doc`; says whether anything was.
    ///
    /// # Errors
    /// The backend failed.
    async fn delete(&self, doc: &str) -> Result<bool, StoreError>;

    /// The names of every stored document.
    ///
    /// # Errors
    /// The backend failed or a key is corrupt.
    async fn list(&self) -> Result<Vec<String>, StoreError>;

    /// Whether the store takes writes now, for a readiness check: sled writes and syncs a file
    /// in its directory, PostgreSQL answers a query. May hang on a failing disk or network:
    /// the caller bounds it.
    ///
    /// # Errors
    /// What the store would fail with.
    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
