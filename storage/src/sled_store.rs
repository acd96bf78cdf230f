//! [`SledStore`]: the default, embedded backend.
//!
//! Two sled trees:
//! - `log`: name + `0x00` + seq (8 bytes, big-endian) → one logged update;
//! - `snapshots`: name → header (`upto`, length, chunk count), and name + `0x00` + chunk number
//!   (4 bytes, big-endian) → up to [`SNAPSHOT_CHUNK_BYTES`] of the snapshot.
//!
//! Names never contain `0x00` (the server refuses control characters), so a document's log is
//! one prefix scan and documents whose names share a prefix stay apart.
//!
//! Why this shape: sled keeps up to 16 entries in a leaf and writes a leaf larger than 128 KiB
//! as a blob file of its own, on every change. A whole snapshot in one value, next to the log,
//! made every append rewrite a blob (thousands of files, gigabytes written for one document).
//! Small chunks in their own tree keep every leaf small, and appends never touch snapshots.
//!
//! Appends do not go to sled one by one: sled's per-key work (its page cache, its IO threads)
//! cost more than everything else an update does on the fan-out path. They go to the
//! [`journal`](crate::journal) instead, a buffer in memory that each group commit writes to one
//! file with one `pwrite` and one `fdatasync`. A checkpoint moves the journaled records into
//! the `log` tree in batches and empties the journal: when it holds
//! [`SledOptions::checkpoint_bytes`], and before every delete and list, so those see the whole
//! log in sled. Records a snapshot covers by then are dropped instead of moved. A load reads the
//! journal's records of its document beside sled's. Opening the store replays a journal a crash
//! left behind.
//!
//! A compaction writes the new snapshot's chunks and header in one atomic batch; the header's
//! `upto` makes loads skip the log entries it covers, which are then removed as garbage, one by
//! one, so no long batch holds up the appends of other rooms. Flush, load and compact run on
//! tokio's blocking pool.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::journal::{self, JournalFile};
use crate::keys::{self, corrupt, prefix as name_prefix, prefix_end};
use crate::space::SpaceGuard;
use crate::{Compaction, DocStore, Seq, Snapshot, StoreError, StoredDoc};

/// Largest piece of a snapshot stored under one key: 16 of them stay well below sled's blob
/// threshold for a leaf.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4096;

const HEADER_BYTES: usize = 8 + 8 + 4;

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> StoreError {
        StoreError::Backend(Box::new(err))
    }
}

/// Document storage in a sled database directory.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

/// How the store is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledOptions {
    /// Journaled bytes that make a flush move them into sled (a checkpoint). Bounds the memory
    /// the journal holds and the time a replay takes after a crash.
    pub checkpoint_bytes: usize,
    /// Bytes kept free on the disk: writes are refused below it ([`SpaceGuard`]); 0: none.
    pub reserve_bytes: u64,
    /// Bytes of sled's page cache (its own default is a gibibyte).
    pub cache_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            checkpoint_bytes: 4 << 20,
            reserve_bytes: 64 << 20,
            cache_bytes: 64 << 20,
        }
    }
}

struct Inner {
    /// The database directory.
    dir: std::path::PathBuf,
    db: sled::Db,
    /// Refuses writes while the disk is nearly full.
    space: SpaceGuard,
    /// Records appended since the last flush, and the sequence numbers they take.
    pending: Mutex<Pending>,
    meta: sled::Tree,
    /// The journal; its lock also serialises flushes and checkpoints.
    journal: Mutex<Journal>,
    options: SledOptions,
    log: sled::Tree,
    snapshots: sled::Tree,
    /// Serialise compactions of a document with each other (so "never move a snapshot
    /// backwards" is a real check) and with its loads (so a load sees a snapshot and the log it
    /// goes with). Striped by name: documents on different stripes never wait for each other.
    compaction: [Mutex<()>; LOCK_STRIPES],
}

const LOCK_STRIPES: usize = 64;

/// The journal file and a spare buffer, swapped with `pending` at each flush so neither is
/// allocated anew.
struct Journal {
    file: JournalFile,
    spare: Vec<u8>,
}

/// The journal's file name inside the database directory.
const JOURNAL_FILE: &str = "tandem.journal";

/// Appended records waiting for the next flush, and the sequence counter. Sequence numbers are
/// handed out from a range whose end (the ceiling) is persisted before any number in it is
/// used, so none is reused after a crash. Not sled's `generate_id`: it takes sled's global
/// lock, which a checkpoint's batch holds for milliseconds, and appends run on the fan-out path.
struct Pending {
    records: Vec<u8>,
    next_seq: u64,
    ceiling: u64,
}

/// How many sequence numbers one persisted ceiling covers: one sled write and flush per this
/// many appends.
const SEQ_RESERVE: u64 = 1 << 20;

/// The `meta` tree's key of the sequence ceiling.
const SEQ_CEILING_KEY: &[u8] = b"seq_ceiling";

/// Journaled records moved into sled per batch at a checkpoint: small batches keep sled's
/// lock and the CPU free for others in between.
const CHECKPOINT_BATCH_RECORDS: usize = 2048;

impl SledStore {
    /// Opens (or creates) the database in `dir` with the default options.
    ///
    /// # Errors
    /// The directory cannot be created or is locked by another process, or the journal cannot
    /// be replayed.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, SledOptions::default())
    }

    /// Opens (or creates) the database in `dir`, replaying the journal a crash left behind.
    ///
    /// # Errors
    /// As [`SledStore::open`].
    pub fn open_with(dir: &Path, options: SledOptions) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // Sled is written at checkpoints, which flush it themselves; its own timer only
            // catches what else it keeps (its id counter).
            .flush_every_ms(Some(1000))
            .cache_capacity(options.cache_bytes)
            .open()?;
        let log = db.open_tree("log")?;
        let snapshots = db.open_tree("snapshots")?;
        let meta = db.open_tree("meta")?;
        // Past every number handed out before: those under the persisted ceiling, and those an
        // earlier version took from sled's own counter.
        let stored = match meta.get(SEQ_CEILING_KEY)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt("(meta)", "sequence ceiling"))?,
            ),
            None => 0,
        };
        let next_seq = stored.max(db.generate_id()? + 1);
        let ceiling = next_seq + SEQ_RESERVE;
        meta.insert(SEQ_CEILING_KEY, &ceiling.to_be_bytes())?;
        db.flush()?;
        let (file, torn) = JournalFile::open(&dir.join(JOURNAL_FILE))?;
        if torn.bytes > 0 {
            tracing::warn!(
                bytes = torn.bytes,
                "the journal ends in bytes that are not a whole record: a write cut short by a crash (never acknowledged), or corruption; dropped from there on"
            );
        }
        let inner = Inner {
            dir: dir.to_path_buf(),
            db,
            space: SpaceGuard::new(dir.to_path_buf(), options.reserve_bytes),
            pending: Mutex::new(Pending {
                records: Vec::new(),
                next_seq,
                ceiling,
            }),
            meta,
            journal: Mutex::new(Journal {
                file,
                spare: Vec::new(),
            }),
            options,
            log,
            snapshots,
            compaction: std::array::from_fn(|_| Mutex::new(())),
        };
        let replayed = journal::records(inner.lock_journal().file.unapplied()).count();
        match inner.checkpoint() {
            // On a nearly full disk the journal stays as it is: reads see its records, and the
            // next checkpoint moves them once space returns.
            Err(StoreError::DiskFull { free, .. }) => {
                tracing::warn!(
                    free,
                    "the disk is nearly full: the journal is replayed later"
                );
            }
            other => other?,
        }
        if replayed > 0 {
            tracing::info!(records = replayed, "replayed the journal into the log");
        }
        Ok(SledStore {
            inner: Arc::new(inner),
        })
    }

    /// The dashboard's event log, in the same database.
    ///
    /// # Errors
    /// Its trees cannot be opened.
    pub fn events(&self) -> Result<crate::SledEventStore, StoreError> {
        crate::SledEventStore::open(self.inner.db.clone(), self.inner.space.clone())
    }

    /// The dashboard's per-user records, in the same database.
    ///
    /// # Errors
    /// Its tree cannot be opened.
    pub fn state(&self) -> Result<crate::SledStateStore, StoreError> {
        crate::SledStateStore::open(self.inner.db.clone(), self.inner.space.clone())
    }

    /// Documents' version history, in the same database.
    ///
    /// # Errors
    /// Its trees cannot be opened.
    pub fn versions(&self) -> Result<crate::SledVersionStore, StoreError> {
        crate::SledVersionStore::open(self.inner.db.clone(), self.inner.space.clone())
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl Inner {
    fn lock_journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        // Every change under this lock leaves the journal whole (a failed write is cut back),
        // so a panic elsewhere does not make it unusable.
        self.journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the appended records to the journal, durably: the group commit.
    fn write_pending(&self, journal: &mut Journal) -> Result<(), StoreError> {
        let Journal { file, spare } = journal;
        std::mem::swap(&mut self.lock_pending().records, spare);
        if let Err(err) = file.write(spare) {
            // Nothing is lost: the records go back in front of those appended meanwhile, and
            // the next flush tries again.
            let mut pending = self.lock_pending();
            spare.extend_from_slice(&pending.records);
            std::mem::swap(&mut pending.records, spare);
            spare.clear();
            return Err(err.into());
        }
        spare.clear();
        Ok(())
    }

    /// The records of `doc` that are appended or journaled but not yet in sled's log.
    fn journaled(&self, doc: &str) -> Vec<(Seq, Vec<u8>)> {
        // The journal lock alone keeps records from moving out of `pending`; appends wait on
        // the pending lock only while `pending` itself is read.
        let journal = self.lock_journal();
        let mut found: Vec<_> = journal::records(journal.file.unapplied())
            .filter(|record| record.doc == doc)
            .map(|record| (record.seq, record.update.to_vec()))
            .collect();
        let pending = self.lock_pending();
        found.extend(
            journal::records(&pending.records)
                .filter(|record| record.doc == doc)
                .map(|record| (record.seq, record.update.to_vec())),
        );
        found
    }

    /// Makes every appended record durable and moves the journal into sled's log.
    fn checkpoint(&self) -> Result<(), StoreError> {
        self.space.check()?;
        let mut journal = self.lock_journal();
        self.write_pending(&mut journal)?;
        // An earlier truncation whose sync failed is made durable first: until it is, a crash
        // could bring back records of documents deleted since.
        journal.file.sync_truncation()?;
        let records = journal.file.unapplied();
        if records.is_empty() {
            return Ok(());
        }
        // Several small batches rather than one: a crash part-way leaves the journal whole,
        // and replaying records already in the log writes the same keys again.
        let mut batch = sled::Batch::default();
        let mut batched = 0;
        // Each document's snapshot, read once per checkpoint.
        let mut snapshot_upto: HashMap<&str, Seq> = HashMap::new();
        for record in journal::records(records) {
            // Records a snapshot already covers are not written at all: compactions happen
            // between checkpoints without forcing one, so most of a busy document's records
            // are covered by the time they would move, and sled would only delete them again.
            let upto = match snapshot_upto.get(record.doc) {
                Some(upto) => *upto,
                None => {
                    // A header that cannot be read covers nothing: the record is kept, and the
                    // journal keeps moving (the load of that document reports the corruption).
                    let upto = self
                        .read_header(record.doc)
                        .ok()
                        .flatten()
                        .map_or(Seq(0), |(upto, _, _)| upto);
                    snapshot_upto.insert(record.doc, upto);
                    upto
                }
            };
            if record.seq > upto {
                batch.insert(log_key(record.doc, record.seq), record.update);
                batched += 1;
            }
            if batched == CHECKPOINT_BATCH_RECORDS {
                self.log.apply_batch(std::mem::take(&mut batch))?;
                batched = 0;
                // On a loaded core, let the fan-out threads run between batches.
                std::thread::yield_now();
            }
        }
        self.log.apply_batch(batch)?;
        self.db.flush()?;
        journal.file.clear()?;
        Ok(())
    }

    fn lock_compaction(&self, doc: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        doc.hash(&mut hasher);
        let stripe = (hasher.finish() % LOCK_STRIPES as u64) as usize;
        // The guard protects no data, only ordering; a panic elsewhere changes nothing.
        self.compaction[stripe]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_header(&self, doc: &str) -> Result<Option<(Seq, usize, u32)>, StoreError> {
        let Some(header) = self.snapshots.get(doc.as_bytes())? else {
            return Ok(None);
        };
        if header.len() != HEADER_BYTES {
            return Err(corrupt(doc, "snapshot header"));
        }
        let upto = u64::from_be_bytes(header[0..8].try_into().expect("8 bytes"));
        let len = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
        let chunks = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
        let len = usize::try_from(len).map_err(|_| corrupt(doc, "snapshot length"))?;
        // The length sizes an allocation: never trust more than the chunks can hold.
        if len > chunks as usize * SNAPSHOT_CHUNK_BYTES {
            return Err(corrupt(doc, "snapshot length"));
        }
        Ok(Some((Seq(upto), len, chunks)))
    }

    fn read_snapshot(&self, doc: &str) -> Result<Option<Snapshot>, StoreError> {
        let Some((upto, len, chunks)) = self.read_header(doc)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(len);
        for number in 0..chunks {
            let chunk = self
                .snapshots
                .get(chunk_key(doc, number))?
                .ok_or_else(|| corrupt(doc, "missing snapshot chunk"))?;
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() != len {
            return Err(corrupt(doc, "snapshot length"));
        }
        Ok(Some(Snapshot { upto, bytes }))
    }

    /// Keys of `doc`'s snapshot chunks numbered `from` and up.
    fn chunk_keys_from(&self, doc: &str, from: u32) -> Result<Vec<sled::IVec>, StoreError> {
        self.snapshots
            .range(chunk_key(doc, from)..prefix_end(&name_prefix(doc)))
            .keys()
            .map(|k| k.map_err(StoreError::from))
            .collect()
    }
}

fn log_key(doc: &str, seq: Seq) -> Vec<u8> {
    keys::numbered(doc, seq.0)
}

fn chunk_key(doc: &str, number: u32) -> Vec<u8> {
    let mut key = name_prefix(doc);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

fn seq_of(doc: &str, key: &[u8]) -> Result<Seq, StoreError> {
    keys::number_of(doc, key, "log key").map(Seq)
}

#[async_trait]
impl DocStore for SledStore {
    fn append(&self, doc: &str, update: &[u8]) -> Result<Seq, StoreError> {
        if !journal::fits(doc, update) {
            return Err(StoreError::TooLarge {
                doc: doc.to_owned(),
                bytes: update.len(),
            });
        }
        let mut pending = self.inner.lock_pending();
        // Taken under the lock, so the journal holds records in sequence order.
        if pending.next_seq >= pending.ceiling {
            self.inner.space.check()?;
            // Once per `SEQ_RESERVE` appends: persist the next range before using it.
            let ceiling = pending.next_seq + SEQ_RESERVE;
            self.inner
                .meta
                .insert(SEQ_CEILING_KEY, &ceiling.to_be_bytes())?;
            self.inner.db.flush()?;
            pending.ceiling = ceiling;
        }
        let seq = Seq(pending.next_seq);
        pending.next_seq += 1;
        journal::encode(&mut pending.records, doc, seq, update);
        Ok(seq)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|inner| {
            let mut journal = inner.lock_journal();
            if !inner.lock_pending().records.is_empty() {
                inner.space.check()?;
            }
            inner.write_pending(&mut journal)?;
            if journal.file.unapplied_bytes() >= inner.options.checkpoint_bytes {
                drop(journal);
                // The records are durable in the journal already: a failed checkpoint is
                // retried at the next threshold, it does not fail the group commit.
                if let Err(err) = inner.checkpoint() {
                    tracing::error!(error = %err, "moving the journal into the log failed; retrying later");
                }
            }
            Ok(())
        })
        .await
    }

    async fn load(&self, doc: &str) -> Result<StoredDoc, StoreError> {
        let doc = doc.to_owned();
        self.blocking(move |inner| {
            // Snapshot and log are separate reads; a compaction or delete committing between
            // them would pair an old snapshot with an already-trimmed log, so loads take their
            // lock, before reading anything.
            let _guard = inner.lock_compaction(&doc);
            // The journal first, then sled: a checkpoint in between moves records from the one
            // to the other, so they are seen twice (and kept once), never missed. No checkpoint
            // here: cold loads come in storms when many clients connect, and each would pay a
            // sled flush and a journal sync.
            let journaled = inner.journaled(&doc);
            let snapshot = inner.read_snapshot(&doc)?;
            let covered = snapshot.as_ref().map_or(Seq(0), |s| s.upto);
            let mut log = std::collections::BTreeMap::new();
            for entry in inner.log.scan_prefix(name_prefix(&doc)) {
                let (key, value) = entry?;
                log.insert(seq_of(&doc, &key)?, value.to_vec());
            }
            log.extend(journaled);
            // Entries a snapshot covers may outlive a crash until the next compaction.
            let log = log.into_iter().filter(|(seq, _)| *seq > covered).collect();
            Ok(StoredDoc { snapshot, log })
        })
        .await
    }

    async fn compact(
        &self,
        doc: &str,
        snapshot: Vec<u8>,
        upto: Seq,
    ) -> Result<Compaction, StoreError> {
        let doc = doc.to_owned();
        self.blocking(move |inner| {
            // No checkpoint: covered updates still in the journal are skipped when it is moved
            // into the log (and by loads); one that slips in anyway, read as uncovered just
            // before this commits, is only garbage, skipped by loads and removed next time.
            inner.space.check()?;
            let _guard = inner.lock_compaction(&doc);
            if inner
                .read_header(&doc)?
                .is_some_and(|(stored, _, _)| stored >= upto)
            {
                return Ok(Compaction::Stale);
            }
            let chunks: Vec<&[u8]> = snapshot.chunks(SNAPSHOT_CHUNK_BYTES).collect();
            let count = u32::try_from(chunks.len()).map_err(|_| corrupt(&doc, "snapshot size"))?;
            let mut batch = sled::Batch::default();
            for (number, chunk) in (0..count).zip(&chunks) {
                batch.insert(chunk_key(&doc, number), *chunk);
            }
            // Chunks of a longer, older snapshot go in the same batch.
            for key in inner.chunk_keys_from(&doc, count)? {
                batch.remove(key);
            }
            let mut header = Vec::with_capacity(HEADER_BYTES);
            header.extend_from_slice(&upto.0.to_be_bytes());
            header.extend_from_slice(&(snapshot.len() as u64).to_be_bytes());
            header.extend_from_slice(&count.to_be_bytes());
            batch.insert(doc.as_bytes(), header);
            inner.snapshots.apply_batch(batch)?;
            // The covered log entries are garbage now: removed one by one, since a batch would
            // hold every other writer (the appends of all rooms) until it is done.
            let mut removed = 0;
            for key in inner.log.scan_prefix(name_prefix(&doc)).keys() {
                let key = key?;
                if seq_of(&doc, &key)? > upto {
                    break;
                }
                inner.log.remove(key)?;
                removed += 1;
            }
            // Covered records still in the journal are not counted: they are dropped when it is
            // moved into the log.
            Ok(Compaction::Done { removed })
        })
        .await
    }

    async fn delete(&self, doc: &str) -> Result<bool, StoreError> {
        let doc = doc.to_owned();
        self.blocking(move |inner| {
            let _guard = inner.lock_compaction(&doc);
            // A journal replayed later must not bring the document back.
            inner.checkpoint()?;
            // Newest log entries first, then the snapshot: a crash part-way leaves an older
            // state of the document (a prefix of its history), never one with a gap.
            let mut found = false;
            for key in inner.log.scan_prefix(name_prefix(&doc)).keys().rev() {
                inner.log.remove(key?)?;
                found = true;
            }
            found |= inner.snapshots.contains_key(doc.as_bytes())?;
            let mut batch = sled::Batch::default();
            batch.remove(doc.as_bytes());
            for key in inner.chunk_keys_from(&doc, 0)? {
                batch.remove(key);
            }
            inner.snapshots.apply_batch(batch)?;
            // Durable before it is acknowledged.
            inner.db.flush()?;
            Ok(found)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|inner| {
            inner.checkpoint()?;
            let mut names = std::collections::BTreeSet::new();
            let name_of = |key: &[u8]| -> Result<String, StoreError> {
                let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
                std::str::from_utf8(&key[..end])
                    .map(str::to_owned)
                    .map_err(|_| corrupt("?", "name"))
            };
            for key in inner.snapshots.iter().keys() {
                names.insert(name_of(&key?)?);
            }
            for key in inner.log.iter().keys() {
                names.insert(name_of(&key?)?);
            }
            Ok(names.into_iter().collect())
        })
        .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.inner.space.check()?;
        let path = self
            .inner
            .dir
            .join(format!(".readyz-{}", std::process::id()));
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let written = std::fs::File::create(&path).and_then(|mut file| {
                file.write_all(b"ready")?;
                file.sync_all()
            });
            // Whatever happened, nothing is left behind.
            let removed = match std::fs::remove_file(&path) {
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            };
            written.and(removed).map_err(StoreError::Io)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens the store in `dir`, waiting briefly for a previous handle's lock to go: sled's IO
    /// threads can hold the database a moment after the last handle is dropped.
    pub(crate) fn reopen(dir: &Path) -> SledStore {
        for _ in 0..100 {
            match SledStore::open(dir) {
                Ok(store) => return store,
                Err(StoreError::Backend(e)) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the database in {} stayed locked", dir.display());
    }

    #[tokio::test]
    async fn contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        crate::contract::doc_store(&store).await;
    }

    #[tokio::test]
    async fn big_snapshots_are_chunked_and_shrinking_ones_leave_no_stale_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        let big: Vec<u8> = (0..SNAPSHOT_CHUNK_BYTES * 5 + 17)
            .map(|i| i as u8)
            .collect();
        let s1 = store.append("doc", b"u").unwrap();
        store.compact("doc", big.clone(), s1).await.unwrap();
        assert_eq!(
            store.load("doc").await.unwrap().snapshot.unwrap().bytes,
            big
        );
        let s2 = store.append("doc", b"v").unwrap();
        store.compact("doc", b"small".to_vec(), s2).await.unwrap();
        assert_eq!(
            store.load("doc").await.unwrap().snapshot.unwrap().bytes,
            b"small".to_vec()
        );
        assert_eq!(store.inner.chunk_keys_from("doc", 0).unwrap().len(), 1);
        assert!(store.delete("doc").await.unwrap());
        assert!(store.inner.snapshots.is_empty());
        assert!(store.inner.log.is_empty());
    }

    #[tokio::test]
    async fn appends_live_in_the_journal_until_a_checkpoint_moves_them_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join(JOURNAL_FILE);
        let store = SledStore::open_with(
            dir.path(),
            SledOptions {
                checkpoint_bytes: 200,
                ..SledOptions::default()
            },
        )
        .unwrap();
        store.append("doc", b"first").unwrap();
        store.flush().await.unwrap();
        assert!(std::fs::metadata(&journal).unwrap().len() > 0);
        assert!(store.inner.log.is_empty());

        // Past the threshold, a flush checkpoints.
        for _ in 0..10 {
            store.append("doc", &[7; 20]).unwrap();
        }
        store.flush().await.unwrap();
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
        assert_eq!(store.inner.log.len(), 11);

        // A load sees what is only journaled, or only appended, without a checkpoint.
        store.append("doc", b"journaled").unwrap();
        store.flush().await.unwrap();
        store.append("doc", b"appended").unwrap();
        let doc = store.load("doc").await.unwrap();
        assert_eq!(doc.log.len(), 13);
        assert_eq!(doc.log[11].1, b"journaled".to_vec());
        assert_eq!(doc.log[12].1, b"appended".to_vec());
        assert!(doc.log.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(store.inner.log.len(), 11);
    }

    #[tokio::test]
    async fn records_a_snapshot_covers_are_dropped_at_the_checkpoint_instead_of_moved() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        store.append("doc", b"one").unwrap();
        let two = store.append("doc", b"two").unwrap();
        let three = store.append("doc", b"three").unwrap();
        store.flush().await.unwrap();
        assert_eq!(
            store
                .compact("doc", b"ONE+TWO".to_vec(), two)
                .await
                .unwrap(),
            Compaction::Done { removed: 0 }
        );
        // `list` checkpoints: only the uncovered record reaches sled's log.
        store.list().await.unwrap();
        let keys: Vec<_> = store.inner.log.iter().keys().map(|k| k.unwrap()).collect();
        assert_eq!(keys, vec![sled::IVec::from(log_key("doc", three))]);
        assert_eq!(
            store.load("doc").await.unwrap().log,
            vec![(three, b"three".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_torn_journal_tail_is_dropped_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let seq = {
            let store = reopen(dir.path());
            let seq = store.append("doc", b"kept").unwrap();
            store.flush().await.unwrap();
            seq
        };
        // A crash in the middle of the next write.
        let mut torn = Vec::new();
        journal::encode(&mut torn, "doc", Seq(seq.0 + 1), b"never acknowledged");
        torn.truncate(torn.len() - 3);
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&torn);
        std::fs::write(&path, bytes).unwrap();

        let store = reopen(dir.path());
        assert_eq!(
            store.load("doc").await.unwrap().log,
            vec![(seq, b"kept".to_vec())]
        );
    }

    #[tokio::test]
    async fn deleted_and_compacted_records_do_not_come_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, tail) = {
            let store = reopen(dir.path());
            store.append("gone", b"x").unwrap();
            let kept = store.append("kept", b"covered").unwrap();
            store.flush().await.unwrap();
            assert!(store.delete("gone").await.unwrap());
            store.compact("kept", b"SNAP".to_vec(), kept).await.unwrap();
            let tail = store.append("kept", b"tail").unwrap();
            store.flush().await.unwrap();
            (kept, tail)
        };
        let store = reopen(dir.path());
        assert!(store.load("gone").await.unwrap().is_empty());
        let doc = store.load("kept").await.unwrap();
        assert_eq!(doc.snapshot.unwrap().upto, kept);
        assert_eq!(doc.log, vec![(tail, b"tail".to_vec())]);
        assert_eq!(store.list().await.unwrap(), vec!["kept".to_string()]);
    }

    #[tokio::test]
    async fn sequence_numbers_are_never_reused_across_reserved_ranges_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let store = reopen(dir.path());
            {
                // A range that runs out after two appends, to cross a reservation.
                let mut pending = store.inner.lock_pending();
                pending.ceiling = pending.next_seq + 2;
            }
            for _ in 0..5 {
                seen.push(store.append("doc", b"u").unwrap());
            }
            // Not flushed: a crash loses the records, but their numbers stay used.
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    }

    #[tokio::test]
    async fn flushed_appends_survive_reopen_and_seqs_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = reopen(dir.path());
            let seq = store.append("doc", b"u1").unwrap();
            store.flush().await.unwrap();
            seq
        };
        let store = reopen(dir.path());
        let doc = store.load("doc").await.unwrap();
        assert_eq!(doc.log, vec![(before, b"u1".to_vec())]);
        assert!(store.append("doc", b"u2").unwrap() > before);
    }
}
