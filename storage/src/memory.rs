//! [`MemoryStore`]: a volatile backend for tests and benchmarks. Same contract as sled, nothing
//! durable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::{Compaction, DocStore, Seq, Snapshot, StoreError, StoredDoc};

/// Documents held in memory.
#[derive(Default)]
pub struct MemoryStore {
    docs: Mutex<BTreeMap<String, StoredDoc>>,
    next_seq: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn docs(&self) -> MutexGuard<'_, BTreeMap<String, StoredDoc>> {
        // The map is plain data; a panic elsewhere cannot leave it half-written.
        self.docs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl DocStore for MemoryStore {
    fn append(&self, doc: &str, update: &[u8]) -> Result<Seq, StoreError> {
        let seq = Seq(self.next_seq.fetch_add(1, Ordering::Relaxed) + 1);
        self.docs()
            .entry(doc.to_owned())
            .or_default()
            .log
            .push((seq, update.to_vec()));
        Ok(seq)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn load(&self, doc: &str) -> Result<StoredDoc, StoreError> {
        Ok(self.docs().get(doc).cloned().unwrap_or_default())
    }

    async fn compact(
        &self,
        doc: &str,
        snapshot: Vec<u8>,
        upto: Seq,
    ) -> Result<Compaction, StoreError> {
        let mut docs = self.docs();
        let stored = docs.entry(doc.to_owned()).or_default();
        if stored.snapshot.as_ref().is_some_and(|s| s.upto >= upto) {
            return Ok(Compaction::Stale);
        }
        let before = stored.log.len();
        stored.log.retain(|(seq, _)| *seq > upto);
        stored.snapshot = Some(Snapshot {
            upto,
            bytes: snapshot,
        });
        Ok(Compaction::Done {
            removed: before - stored.log.len(),
        })
    }

    async fn delete(&self, doc: &str) -> Result<bool, StoreError> {
        Ok(self.docs().remove(doc).is_some())
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.docs().keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn contract() {
        crate::contract::doc_store(&super::MemoryStore::new()).await;
    }
}
