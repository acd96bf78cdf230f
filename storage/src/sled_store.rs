//! [`SledStore`]: the default, embedded backend.
//!
//! One sled tree holds every document:
//! - `s` + name → the snapshot: `upto` (8 bytes, big-endian) then the snapshot bytes;
//! - `l` + name + `0x00` + seq (8 bytes, big-endian) → one logged update.
//!
//! Names never contain `0x00` (the server refuses control characters), so a document's log is
//! one prefix scan and documents whose names share a prefix stay apart. A compaction is one
//! atomic sled batch. Appends write to sled's in-memory log, which is non-blocking, so they are
//! called inline; everything that may block on IO (flush, load, compact) runs on tokio's blocking
//! pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{Compaction, DocStore, Seq, Snapshot, StoreError, StoredDoc};

const SNAPSHOT: u8 = b's';
const LOG: u8 = b'l';

/// Document storage in a sled database directory.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    docs: sled::Tree,
    /// Serialises compactions with each other (so "never move a snapshot backwards" is a real
    /// check) and with loads (so a load sees a snapshot and the log it goes with).
    compaction: Mutex<()>,
}

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
        let docs = db.open_tree("docs")?;
        Ok(SledStore {
            inner: Arc::new(Inner {
                db,
                docs,
                compaction: Mutex::new(()),
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

fn snapshot_key(doc: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(doc.len() + 1);
    key.push(SNAPSHOT);
    key.extend_from_slice(doc.as_bytes());
    key
}

fn log_prefix(doc: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(doc.len() + 10);
    key.push(LOG);
    key.extend_from_slice(doc.as_bytes());
    key.push(0);
    key
}

fn log_key(doc: &str, seq: Seq) -> Vec<u8> {
    let mut key = log_prefix(doc);
    key.extend_from_slice(&seq.0.to_be_bytes());
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

fn read_snapshot(docs: &sled::Tree, doc: &str) -> Result<Option<Snapshot>, StoreError> {
    let Some(value) = docs.get(snapshot_key(doc))? else {
        return Ok(None);
    };
    let upto: [u8; 8] = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(doc, "snapshot header"))?;
    Ok(Some(Snapshot {
        upto: Seq(u64::from_be_bytes(upto)),
        bytes: value[8..].to_vec(),
    }))
}

#[async_trait]
impl DocStore for SledStore {
    fn append(&self, doc: &str, update: &[u8]) -> Result<Seq, StoreError> {
        // Seq(0) means "nothing"; sled's ids start at 0.
        let seq = Seq(self.inner.db.generate_id()? + 1);
        self.inner.docs.insert(log_key(doc, seq), update)?;
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
            // Snapshot and log are two reads; a compaction committing between them would pair
            // an old snapshot with an already-trimmed log. Loads take the compaction lock.
            let _guard = inner
                .compaction
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let snapshot = read_snapshot(&inner.docs, &doc)?;
            let covered = snapshot.as_ref().map_or(Seq(0), |s| s.upto);
            let mut log = Vec::new();
            for entry in inner.docs.scan_prefix(log_prefix(&doc)) {
                let (key, value) = entry?;
                let seq = seq_of(&doc, &key)?;
                // Entries the snapshot covers are gone after an atomic compaction; skipping them
                // anyway keeps a load correct whatever happened.
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
            let _guard = inner
                .compaction
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if read_snapshot(&inner.docs, &doc)?.is_some_and(|s| s.upto >= upto) {
                return Ok(Compaction::Stale);
            }
            let mut batch = sled::Batch::default();
            let mut removed = 0;
            for key in inner.docs.scan_prefix(log_prefix(&doc)).keys() {
                let key = key?;
                if seq_of(&doc, &key)? > upto {
                    break;
                }
                batch.remove(key);
                removed += 1;
            }
            let mut value = Vec::with_capacity(snapshot.len() + 8);
            value.extend_from_slice(&upto.0.to_be_bytes());
            value.extend_from_slice(&snapshot);
            batch.insert(snapshot_key(&doc), value);
            inner.docs.apply_batch(batch)?;
            Ok(Compaction::Done { removed })
        })
        .await
    }

    async fn delete(&self, doc: &str) -> Result<bool, StoreError> {
        let doc = doc.to_owned();
        self.blocking(move |inner| {
            let mut batch = sled::Batch::default();
            let mut found = inner.docs.contains_key(snapshot_key(&doc))?;
            for key in inner.docs.scan_prefix(log_prefix(&doc)).keys() {
                batch.remove(key?);
                found = true;
            }
            batch.remove(snapshot_key(&doc));
            inner.docs.apply_batch(batch)?;
            Ok(found)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|inner| {
            let mut names = std::collections::BTreeSet::new();
            for key in inner.docs.iter().keys() {
                let key = key?;
                let name = match key.first() {
                    Some(&SNAPSHOT) => &key[1..],
                    Some(&LOG) if key.len() >= 10 => &key[1..key.len() - 9],
                    _ => return Err(corrupt("?", "key")),
                };
                let name = std::str::from_utf8(name).map_err(|_| corrupt("?", "name"))?;
                names.insert(name.to_owned());
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
