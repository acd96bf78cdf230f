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
//! A compaction writes the new snapshot's chunks and header in one atomic batch; the header's
//! `upto` makes loads skip the log entries it covers, which are then removed as garbage, one by
//! one, so no long batch holds up the appends of other rooms. Appends go to sled's in-memory log,
//! which does not block, so they are called inline; flush, load and compact run on tokio's
//! blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{Compaction, DocStore, Seq, Snapshot, StoreError, StoredDoc};

/// Largest piece of a snapshot stored under one key: 16 of them stay well below sled's blob
/// threshold for a leaf.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4096;

const HEADER_BYTES: usize = 8 + 8 + 4;

/// Document storage in a sled database directory.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    log: sled::Tree,
    snapshots: sled::Tree,
    /// Serialise compactions of a document with each other (so "never move a snapshot
    /// backwards" is a real check) and with its loads (so a load sees a snapshot and the log it
    /// goes with). Striped by name: documents on different stripes never wait for each other.
    compaction: [Mutex<()>; LOCK_STRIPES],
}

const LOCK_STRIPES: usize = 64;

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    ///
    /// # Errors
    /// The directory cannot be created or is locked by another process.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // The server's group commit flushes every few milliseconds; sled's own timer is
            // only a safety net for embedders that never call `flush`.
            .flush_every_ms(Some(1000))
            .open()?;
        let log = db.open_tree("log")?;
        let snapshots = db.open_tree("snapshots")?;
        Ok(SledStore {
            inner: Arc::new(Inner {
                db,
                log,
                snapshots,
                compaction: std::array::from_fn(|_| Mutex::new(())),
            }),
        })
    }

    /// Bytes the database takes on disk.
    ///
    /// # Errors
    /// The size could not be read.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
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

/// `name` + `0x00`: the prefix of a document's log entries and snapshot chunks.
fn name_prefix(doc: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(doc.len() + 13);
    key.extend_from_slice(doc.as_bytes());
    key.push(0);
    key
}

/// The first key after every key starting with `prefix` (which ends in `0x00`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    end
}

fn log_key(doc: &str, seq: Seq) -> Vec<u8> {
    let mut key = name_prefix(doc);
    key.extend_from_slice(&seq.0.to_be_bytes());
    key
}

fn chunk_key(doc: &str, number: u32) -> Vec<u8> {
    let mut key = name_prefix(doc);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

fn seq_of(doc: &str, key: &[u8]) -> Result<Seq, StoreError> {
    let tail: [u8; 8] = key
        .len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .ok_or_else(|| corrupt(doc, "log key"))?;
    Ok(Seq(u64::from_be_bytes(tail)))
}

fn corrupt(doc: &str, what: &'static str) -> StoreError {
    StoreError::Corrupt {
        doc: doc.to_owned(),
        what,
    }
}

#[async_trait]
impl DocStore for SledStore {
    fn append(&self, doc: &str, update: &[u8]) -> Result<Seq, StoreError> {
        // Seq(0) means "nothing"; sled's ids start at 0.
        let seq = Seq(self.inner.db.generate_id()? + 1);
        self.inner.log.insert(log_key(doc, seq), update)?;
        Ok(seq)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|inner| {
            inner.db.flush()?;
            Ok(())
        })
        .await
    }

    async fn load(&self, doc: &str) -> Result<StoredDoc, StoreError> {
        let doc = doc.to_owned();
        self.blocking(move |inner| {
            // Snapshot and log are separate reads; a compaction committing between them would
            // pair an old snapshot with an already-trimmed log, so loads take its lock.
            let _guard = inner.lock_compaction(&doc);
            let snapshot = inner.read_snapshot(&doc)?;
            let covered = snapshot.as_ref().map_or(Seq(0), |s| s.upto);
            let mut log = Vec::new();
            for entry in inner.log.scan_prefix(name_prefix(&doc)) {
                let (key, value) = entry?;
                let seq = seq_of(&doc, &key)?;
                // Entries a snapshot covers may outlive a crash until the next compaction.
                if seq > covered {
                    log.push((seq, value.to_vec()));
                }
            }
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
            Ok(Compaction::Done { removed })
        })
        .await
    }

    async fn delete(&self, doc: &str) -> Result<bool, StoreError> {
        let doc = doc.to_owned();
        self.blocking(move |inner| {
            let _guard = inner.lock_compaction(&doc);
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
            Ok(found)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|inner| {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        crate::contract::append_load_compact(&store).await;
    }

    #[tokio::test]
    async fn big_snapshots_are_chunked_and_shrinking_ones_leave_no_stale_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
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
    async fn flushed_appends_survive_reopen_and_seqs_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = SledStore::open(dir.path()).unwrap();
            let seq = store.append("doc", b"u1").unwrap();
            store.flush().await.unwrap();
            seq
        };
        let store = SledStore::open(dir.path()).unwrap();
        let doc = store.load("doc").await.unwrap();
        assert_eq!(doc.log, vec![(before, b"u1".to_vec())]);
        assert!(store.append("doc", b"u2").unwrap() > before);
    }
}
