//! [`PgStore`]'s documents: the buffered log, its group commit, loads, and compaction.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{backend, big, no_nul, unsigned, Db, Merge, PgStore};
use crate::{Compaction, DocStore, Seq, Snapshot, StoreError, StoredDoc};

/// One appended update not yet committed.
#[derive(Clone)]
struct Row {
    doc: String,
    seq: u64,
    body: Vec<u8>,
}

/// What is appended and not yet committed: `pending` waits for the next flush, `inflight` is
/// being written by the current one. Loads see both.
#[derive(Default)]
struct Buffer {
    pending: Vec<Row>,
    inflight: Arc<Vec<Row>>,
}

pub(super) struct Docs {
    pub(super) db: Db,
    merge: Merge,
    buffer: Mutex<Buffer>,
    next_seq: AtomicU64,
    /// One flush at a time, so this node's rows commit in the order of their sequence numbers.
    flushing: tokio::sync::Mutex<()>,
}

impl Docs {
    pub(super) fn new(db: Db, merge: Merge) -> Docs {
        Docs {
            db,
            merge,
            buffer: Mutex::new(Buffer::default()),
            next_seq: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        // Plain data, changed in single steps: a panic elsewhere cannot leave it half-written.
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The buffered updates of `doc`, oldest first.
    fn buffered(&self, doc: &str) -> Vec<(Seq, Vec<u8>)> {
        let buffer = self.buffer();
        buffer
            .inflight
            .iter()
            .chain(buffer.pending.iter())
            .filter(|row| row.doc == doc)
            .map(|row| (Seq(row.seq), row.body.clone()))
            .collect()
    }
}

/// The whole log in one statement: one round trip per group commit.
const INSERT_UPDATES: &str = "INSERT INTO doc_updates (doc, origin, seq, body)
     SELECT doc, $1, seq, body FROM unnest($2::text[], $3::bigint[], $4::bytea[]) AS b(doc, seq, body)
     ON CONFLICT (origin, seq) DO NOTHING";

/// The snapshot and the log of a document in one statement, so in one view of the database: a
/// compaction committing meanwhile is seen whole or not at all.
const LOAD: &str = "SELECT 0 AS part, 0::bigint AS id, 0::bigint AS origin, upto AS seq, body
       FROM doc_snapshots WHERE doc = $1 AND body IS NOT NULL
     UNION ALL
     SELECT 1, id, origin, seq, body FROM doc_updates WHERE doc = $1
     ORDER BY part, id";

#[async_trait]
impl DocStore for PgStore {
    fn append(&self, doc: &str, update: &[u8]) -> Result<Seq, StoreError> {
        no_nul("document name", doc)?;
        let docs = &self.inner;
        let mut buffer = docs.buffer();
        // Taken under the buffer's lock, so the buffer is in sequence order.
        let seq = docs.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        buffer.pending.push(Row {
            doc: doc.to_owned(),
            seq,
            body: update.to_vec(),
        });
        Ok(Seq(seq))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let docs = &self.inner;
        let _one = docs.flushing.lock().await;
        let batch = {
            let mut buffer = docs.buffer();
            if buffer.pending.is_empty() {
                return Ok(());
            }
            let rows = std::mem::take(&mut buffer.pending);
            buffer.inflight = Arc::new(rows);
            Arc::clone(&buffer.inflight)
        };
        let written = {
            let names: Vec<&str> = batch.iter().map(|r| r.doc.as_str()).collect();
            let seqs: Vec<i64> = batch.iter().map(|r| big(r.seq)).collect();
            let bodies: Vec<&[u8]> = batch.iter().map(|r| r.body.as_slice()).collect();
            docs.db
                .query(INSERT_UPDATES, &[&docs.db.origin, &names, &seqs, &bodies])
                .await
                .map(drop)
        };
        // The buffer's is then the only reference: a failure takes the rows back uncopied.
        drop(batch);
        let mut buffer = docs.buffer();
        let inflight = std::mem::take(&mut buffer.inflight);
        if written.is_err() {
            // Back in front of what came since, in order; the retry's (origin, seq) keys make
            // it insert nothing twice if this attempt did commit.
            let mut rows = Arc::unwrap_or_clone(inflight);
            rows.append(&mut buffer.pending);
            buffer.pending = rows;
        }
        written
    }

    async fn load(&self, doc: &str) -> Result<StoredDoc, StoreError> {
        let docs = &self.inner;
        // What is buffered is taken before the read: a flush committing meanwhile then has its
        // rows in one of the two (in both, they are kept once).
        let buffered = docs.buffered(doc);
        let rows = docs.db.query(LOAD, &[&doc]).await?;
        let mut stored = StoredDoc::default();
        let mut committed = HashSet::new();
        for row in rows {
            let part: i32 = row.get(0);
            let origin: i64 = row.get(2);
            let seq = unsigned(row.get(3));
            let body: Vec<u8> = row.get(4);
            if part == 0 {
                stored.snapshot = Some(Snapshot {
                    upto: Seq(seq),
                    bytes: body,
                });
            } else {
                if origin == docs.db.origin {
                    committed.insert(seq);
                }
                stored.log.push((Seq(seq), body));
            }
        }
        stored.log.extend(
            buffered
                .into_iter()
                .filter(|(seq, _)| !committed.contains(&seq.0)),
        );
        Ok(stored)
    }

    async fn compact(
        &self,
        doc: &str,
        snapshot: Vec<u8>,
        upto: Seq,
    ) -> Result<Compaction, StoreError> {
        let docs = &self.inner;
        let merge = Arc::clone(&docs.merge);
        docs.db
            .run(|db| async move {
                let mut client = db.client().await?;
                let tx = client.transaction().await.map_err(backend)?;
                tx.execute(
                    "INSERT INTO doc_snapshots (doc) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&doc],
                )
                .await
                .map_err(backend)?;
                let Some(held) = tx
                    .query_opt(
                        "SELECT body FROM doc_snapshots WHERE doc = $1 FOR UPDATE SKIP LOCKED",
                        &[&doc],
                    )
                    .await
                    .map_err(backend)?
                else {
                    // Another node is compacting this document right now.
                    return Ok(Compaction::Stale);
                };
                let stored: Option<Vec<u8>> = held.get(0);
                let logged = tx
                    .query(
                        "SELECT id, body FROM doc_updates WHERE doc = $1 ORDER BY id",
                        &[&doc],
                    )
                    .await
                    .map_err(backend)?;
                let ids: Vec<i64> = logged.iter().map(|r| r.get(0)).collect();
                let bodies: Vec<Vec<u8>> = logged.iter().map(|r| r.get(1)).collect();
                let merged = tokio::task::spawn_blocking(move || {
                    let mut parts: Vec<&[u8]> = Vec::with_capacity(bodies.len() + 2);
                    parts.push(&snapshot);
                    if let Some(stored) = &stored {
                        parts.push(stored);
                    }
                    parts.extend(bodies.iter().map(Vec::as_slice));
                    merge(&parts)
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
                .map_err(|what| StoreError::Backend(format!("cannot merge {doc:?}: {what}").into()))?;
                tx.execute(
                    "UPDATE doc_snapshots SET body = $2, upto = GREATEST(upto, $3), updated_at = now()
                     WHERE doc = $1",
                    &[&doc, &merged, &big(upto.0)],
                )
                .await
                .map_err(backend)?;
                // Exactly the rows folded in: one committed meanwhile stays in the log.
                let removed = tx
                    .execute("DELETE FROM doc_updates WHERE id = ANY($1)", &[&ids])
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(Compaction::Done {
                    removed: usize::try_from(removed).unwrap_or(usize::MAX),
                })
            })
            .await
    }

    async fn delete(&self, doc: &str) -> Result<bool, StoreError> {
        let docs = &self.inner;
        let buffered = {
            let mut buffer = docs.buffer();
            let before = buffer.pending.len();
            buffer.pending.retain(|row| row.doc != doc);
            before != buffer.pending.len()
        };
        let stored = docs
            .db
            .run(|db| async move {
                let mut client = db.client().await?;
                let tx = client.transaction().await.map_err(backend)?;
                let logged = tx
                    .execute("DELETE FROM doc_updates WHERE doc = $1", &[&doc])
                    .await
                    .map_err(backend)?;
                let snapshots = tx
                    .execute(
                        "DELETE FROM doc_snapshots WHERE doc = $1 AND body IS NOT NULL",
                        &[&doc],
                    )
                    .await
                    .map_err(backend)?;
                tx.execute("DELETE FROM doc_snapshots WHERE doc = $1", &[&doc])
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(logged + snapshots > 0)
            })
            .await?;
        Ok(stored || buffered)
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let docs = &self.inner;
        let rows = docs
            .db
            .query(
                "SELECT doc FROM doc_snapshots WHERE body IS NOT NULL
                         UNION SELECT DISTINCT doc FROM doc_updates",
                &[],
            )
            .await?;
        let mut names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        {
            let buffer = docs.buffer();
            for row in buffer.inflight.iter().chain(buffer.pending.iter()) {
                names.push(row.doc.clone());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .run(|db| async move {
                let client = db.client().await?;
                client.simple_query("SELECT 1").await.map_err(backend)?;
                Ok(())
            })
            .await
    }
}
