//! The dashboard's event log in PostgreSQL.
//!
//! Ids are handed out at `append` from each workspace's counter (read from `event_counters`
//! when the store opens), and each flush writes the buffered events and raises the counters in
//! one statement. Reads see this node's buffered events, as the trait wants. This node is then the only writer of the log: a cluster allocates ids in
//! the commit instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{backend, big, no_nul, unsigned, Db};
use crate::{EventStore, Retention, Since, StoreError, StoredEvent};

/// Events in PostgreSQL.
#[derive(Clone)]
pub struct PgEventStore {
    db: Db,
    inner: Arc<Inner>,
}

/// One appended event not yet committed.
struct Row {
    workspace: String,
    id: u64,
    at_ms: u64,
    body: Vec<u8>,
    seq: u64,
}

#[derive(Default)]
struct Buffer {
    pending: Vec<Row>,
    /// Being written by the current flush.
    inflight: Arc<Vec<Row>>,
    /// Per workspace: the last id handed out.
    last_ids: HashMap<String, u64>,
}

struct Inner {
    buffer: Mutex<Buffer>,
    next_seq: AtomicU64,
    flushing: tokio::sync::Mutex<()>,
}

const INSERT_EVENTS: &str = "WITH batch AS (
         SELECT * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bigint[])
             AS b(workspace, id, at_ms, body, seq)
     ), inserted AS (
         INSERT INTO events (workspace, id, at_ms, body, origin, seq)
         SELECT workspace, id, at_ms, body, $1, seq FROM batch
         ON CONFLICT (origin, seq) DO NOTHING
     )
     INSERT INTO event_counters (workspace, last_id)
     SELECT workspace, max(id) FROM batch GROUP BY workspace
     ON CONFLICT (workspace) DO UPDATE SET last_id = GREATEST(event_counters.last_id, EXCLUDED.last_id)";

/// The floor and the events after an id, in one statement (one view of the log): a trim
/// committing meanwhile is seen whole or not at all.
const SINCE: &str = "SELECT f.floor, e.id, e.at_ms, e.body
     FROM (SELECT coalesce((SELECT floor FROM event_counters WHERE workspace = $1), 0) AS floor) f
     LEFT JOIN LATERAL (
         SELECT id, at_ms, body FROM events WHERE workspace = $1 AND id > $2 ORDER BY id LIMIT $3
     ) e ON true";

/// Per workspace, everything up to the newest event that is beyond the count or too old goes
/// (so no hole is left below what is kept), and the floor rises to it.
const TRIM: &str = "WITH ranked AS (
         SELECT workspace, id, at_ms,
                row_number() OVER (PARTITION BY workspace ORDER BY id DESC) AS rank
         FROM events
     ), cut AS (
         SELECT workspace, max(id) AS upto FROM ranked
         WHERE rank > $1 OR at_ms < $2 GROUP BY workspace
     ), floors AS (
         UPDATE event_counters c SET floor = GREATEST(c.floor, cut.upto)
         FROM cut WHERE c.workspace = cut.workspace
     ), removed AS (
         DELETE FROM events e USING cut
         WHERE e.workspace = cut.workspace AND e.id <= cut.upto
         RETURNING 1
     )
     SELECT count(*) FROM removed";

fn event(row: &tokio_postgres::Row, first: usize) -> StoredEvent {
    StoredEvent {
        id: unsigned(row.get(first)),
        at_ms: unsigned(row.get(first + 1)),
        body: row.get(first + 2),
    }
}

impl PgEventStore {
    pub(super) async fn open(db: Db) -> Result<PgEventStore, StoreError> {
        let rows = db
            .run(|db| async move {
                let client = db.client().await?;
                client
                    .query("SELECT workspace, last_id FROM event_counters", &[])
                    .await
                    .map_err(backend)
            })
            .await?;
        let last_ids = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), unsigned(r.get(1))))
            .collect();
        Ok(PgEventStore {
            db,
            inner: Arc::new(Inner {
                buffer: Mutex::new(Buffer {
                    last_ids,
                    ..Buffer::default()
                }),
                next_seq: AtomicU64::new(0),
                flushing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        // Plain data, changed in single steps.
        self.inner.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `committed` with this node's buffered events of `workspace` whose ids `keep` accepts,
    /// in id order (an event being committed may be in both).
    fn with_buffered(
        &self,
        workspace: &str,
        committed: Vec<StoredEvent>,
        keep: impl Fn(u64) -> bool,
    ) -> Vec<StoredEvent> {
        let mut all: BTreeMap<u64, StoredEvent> =
            committed.into_iter().map(|e| (e.id, e)).collect();
        let buffer = self.buffer();
        for row in buffer.inflight.iter().chain(buffer.pending.iter()) {
            if row.workspace == workspace && keep(row.id) {
                all.entry(row.id).or_insert_with(|| StoredEvent {
                    id: row.id,
                    at_ms: row.at_ms,
                    body: row.body.clone(),
                });
            }
        }
        all.into_values().collect()
    }
}

#[async_trait]
impl EventStore for PgEventStore {
    fn append(&self, workspace: &str, at_ms: u64, body: &[u8]) -> Result<u64, StoreError> {
        no_nul("workspace", workspace)?;
        let mut buffer = self.buffer();
        let last = buffer.last_ids.entry(workspace.to_owned()).or_insert(0);
        *last += 1;
        let id = *last;
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        buffer.pending.push(Row {
            workspace: workspace.to_owned(),
            id,
            at_ms,
            body: body.to_vec(),
            seq,
        });
        Ok(id)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let _one = self.inner.flushing.lock().await;
        let batch = {
            let mut buffer = self.buffer();
            if buffer.pending.is_empty() {
                return Ok(());
            }
            let rows = std::mem::take(&mut buffer.pending);
            buffer.inflight = Arc::new(rows);
            Arc::clone(&buffer.inflight)
        };
        let written = self
            .db
            .run(|db| {
                let batch = Arc::clone(&batch);
                async move {
                    let client = db.client().await?;
                    let insert = client
                        .prepare_cached(INSERT_EVENTS)
                        .await
                        .map_err(backend)?;
                    let workspaces: Vec<&str> =
                        batch.iter().map(|r| r.workspace.as_str()).collect();
                    let ids: Vec<i64> = batch.iter().map(|r| big(r.id)).collect();
                    let times: Vec<i64> = batch.iter().map(|r| big(r.at_ms)).collect();
                    let bodies: Vec<&[u8]> = batch.iter().map(|r| r.body.as_slice()).collect();
                    let seqs: Vec<i64> = batch.iter().map(|r| big(r.seq)).collect();
                    client
                        .execute(
                            &insert,
                            &[&db.origin, &workspaces, &ids, &times, &bodies, &seqs],
                        )
                        .await
                        .map_err(backend)?;
                    Ok(())
                }
            })
            .await;
        let mut buffer = self.buffer();
        let inflight = std::mem::take(&mut buffer.inflight);
        if written.is_err() {
            // Back in front, in order; (origin, seq) makes the retry idempotent.
            let mut rows = Arc::try_unwrap(inflight).unwrap_or_else(|shared| {
                shared
                    .iter()
                    .map(|r| Row {
                        workspace: r.workspace.clone(),
                        id: r.id,
                        at_ms: r.at_ms,
                        body: r.body.clone(),
                        seq: r.seq,
                    })
                    .collect()
            });
            rows.append(&mut buffer.pending);
            buffer.pending = rows;
        }
        written
    }

    async fn since(&self, workspace: &str, after: u64, limit: usize) -> Result<Since, StoreError> {
        let limit = big(limit as u64);
        let rows = self
            .db
            .run(|db| async move {
                let client = db.client().await?;
                let since = client.prepare_cached(SINCE).await.map_err(backend)?;
                client
                    .query(&since, &[&workspace, &big(after), &limit])
                    .await
                    .map_err(backend)
            })
            .await?;
        let floor = rows.first().map_or(0, |r| unsigned(r.get(0)));
        if after < floor {
            let oldest = self
                .db
                .run(|db| async move {
                    let client = db.client().await?;
                    client
                        .query_one(
                            "SELECT coalesce(min(id), 0) FROM events WHERE workspace = $1",
                            &[&workspace],
                        )
                        .await
                        .map_err(backend)
                })
                .await?;
            return Ok(Since::Resync {
                oldest: unsigned(oldest.get(0)),
            });
        }
        let committed = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .map(|r| event(r, 1))
            .collect();
        let mut events = self.with_buffered(workspace, committed, |id| id > after);
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(Since::Events(events))
    }

    async fn before(
        &self,
        workspace: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = big(limit as u64);
        let rows = self
            .db
            .run(|db| async move {
                let client = db.client().await?;
                client
                    .query(
                        "SELECT id, at_ms, body FROM events WHERE workspace = $1 AND id < $2
                         ORDER BY id DESC LIMIT $3",
                        &[&workspace, &big(before), &limit],
                    )
                    .await
                    .map_err(backend)
            })
            .await?;
        let committed = rows.iter().map(|r| event(r, 0)).collect();
        let mut events = self.with_buffered(workspace, committed, |id| id < before);
        let excess = events
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
        events.drain(..excess);
        Ok(events)
    }

    fn last_id(&self, workspace: &str) -> Result<u64, StoreError> {
        Ok(self.buffer().last_ids.get(workspace).copied().unwrap_or(0))
    }

    async fn trim(&self, retention: Retention, now_ms: u64) -> Result<usize, StoreError> {
        let keep = big(retention.max_events as u64);
        // Too old: more than `max_age_ms` before now.
        let cutoff = big(now_ms.saturating_sub(retention.max_age_ms));
        let removed = self
            .db
            .run(|db| async move {
                let client = db.client().await?;
                client
                    .query_one(TRIM, &[&keep, &cutoff])
                    .await
                    .map_err(backend)
            })
            .await?;
        Ok(usize::try_from(removed.get::<_, i64>(0)).unwrap_or(0))
    }
}
