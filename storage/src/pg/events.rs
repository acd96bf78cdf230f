//! The dashboard's event log in PostgreSQL, which every node of a cluster appends to.
//!
//! Ids are handed out in the commit: each flush is one statement that raises the counter row
//! of every workspace it writes (`event_counters`, locked until the commit, so flushes of one
//! workspace from any node take their ids one after the other, gap-free and in commit order)
//! and inserts the events numbered below it. A retried flush whose first attempt did commit
//! finds its events by (origin, seq) and takes their ids instead of new ones. A sequence would
//! leave gaps; the counter row does not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{big, no_nul, unsigned, Db};
use crate::{EventSlot, EventStore, Retention, Since, StoreError, StoredEvent};

/// Events in PostgreSQL.
#[derive(Clone)]
pub struct PgEventStore {
    db: Db,
    inner: Arc<Inner>,
}

/// One appended event not yet committed.
struct Row {
    workspace: String,
    at_ms: u64,
    body: Vec<u8>,
    seq: u64,
    slot: EventSlot,
}

#[derive(Default)]
struct Buffer {
    pending: Vec<Row>,
}

struct Inner {
    buffer: Mutex<Buffer>,
    next_seq: AtomicU64,
    flushing: tokio::sync::Mutex<()>,
}

const INSERT_EVENTS: &str = "WITH batch AS (
         SELECT * FROM unnest($2::text[], $3::bigint[], $4::bytea[], $5::bigint[])
             WITH ORDINALITY AS b(workspace, at_ms, body, seq, ord)
     ), done AS (
         SELECT e.seq, e.id FROM events e
         WHERE e.origin = $1 AND e.seq IN (SELECT seq FROM batch)
     ), fresh AS (
         SELECT * FROM batch WHERE seq NOT IN (SELECT seq FROM done)
     ), counts AS (
         SELECT workspace, count(*) AS n FROM fresh GROUP BY workspace
     ), bumped AS (
         INSERT INTO event_counters AS c (workspace, last_id)
         SELECT workspace, n FROM counts ORDER BY workspace
         ON CONFLICT (workspace) DO UPDATE SET last_id = c.last_id + EXCLUDED.last_id
         RETURNING c.workspace, c.last_id
     ), numbered AS (
         SELECT f.workspace, f.at_ms, f.body, f.seq,
                b.last_id - n.n + row_number() OVER (PARTITION BY f.workspace ORDER BY f.ord) AS id
         FROM fresh f JOIN bumped b USING (workspace) JOIN counts n USING (workspace)
     ), inserted AS (
         INSERT INTO events (workspace, id, at_ms, body, origin, seq)
         SELECT workspace, id, at_ms, body, $1, seq FROM numbered
         RETURNING seq, id
     )
     SELECT seq, id FROM inserted UNION ALL SELECT seq, id FROM done";

const SINCE: &str = "SELECT f.floor, e.id, e.at_ms, e.body
     FROM (SELECT coalesce((SELECT floor FROM event_counters WHERE workspace = $1), 0) AS floor) f
     LEFT JOIN LATERAL (
         SELECT id, at_ms, body FROM events WHERE workspace = $1 AND id > $2 ORDER BY id LIMIT $3
     ) e ON true";

/// Per workspace, everything up to the newest event that is beyond the count or too old goes
/// (so no hole is left below what is kept), and the floor rises to it. One node at a time (a
/// transaction-scoped advisory lock; the others' trims find it taken and do nothing).
const TRIM: &str = "WITH turn AS (
         SELECT pg_try_advisory_xact_lock(7612345, 1) AS mine
     ), ranked AS (
         SELECT workspace, id, at_ms,
                row_number() OVER (PARTITION BY workspace ORDER BY id DESC) AS rank
         FROM events WHERE (SELECT mine FROM turn)
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
    pub(super) fn new(db: Db) -> PgEventStore {
        PgEventStore {
            db,
            inner: Arc::new(Inner {
                buffer: Mutex::new(Buffer::default()),
                next_seq: AtomicU64::new(0),
                flushing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        // Plain data, changed in single steps.
        self.inner.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventStore for PgEventStore {
    fn append(&self, workspace: &str, at_ms: u64, body: &[u8]) -> Result<EventSlot, StoreError> {
        no_nul("workspace", workspace)?;
        let slot = EventSlot::default();
        let mut buffer = self.buffer();
        // Taken under the buffer's lock, so the buffer is in sequence order.
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        buffer.pending.push(Row {
            workspace: workspace.to_owned(),
            at_ms,
            body: body.to_vec(),
            seq,
            slot: slot.clone(),
        });
        Ok(slot)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let _one = self.inner.flushing.lock().await;
        let batch = std::mem::take(&mut self.buffer().pending);
        if batch.is_empty() {
            return Ok(());
        }
        let written = {
            let workspaces: Vec<&str> = batch.iter().map(|r| r.workspace.as_str()).collect();
            let times: Vec<i64> = batch.iter().map(|r| big(r.at_ms)).collect();
            let bodies: Vec<&[u8]> = batch.iter().map(|r| r.body.as_slice()).collect();
            let seqs: Vec<i64> = batch.iter().map(|r| big(r.seq)).collect();
            self.db
                .query(
                    INSERT_EVENTS,
                    &[&self.db.origin, &workspaces, &times, &bodies, &seqs],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| (unsigned(r.get(0)), unsigned(r.get(1))))
                        .collect::<HashMap<u64, u64>>()
                })
        };
        match written {
            Ok(ids) => {
                for row in batch.iter() {
                    if let Some(id) = ids.get(&row.seq) {
                        row.slot.fill(*id);
                    }
                }
                Ok(())
            }
            Err(err) => {
                // Back in front of what came since, in order: the retry finds what this
                // attempt committed, if it did, by (origin, seq).
                let mut buffer = self.buffer();
                let mut rows = batch;
                rows.append(&mut buffer.pending);
                buffer.pending = rows;
                Err(err)
            }
        }
    }

    async fn since(&self, workspace: &str, after: u64, limit: usize) -> Result<Since, StoreError> {
        let limit = big(limit as u64);
        let rows = self
            .db
            .query(SINCE, &[&workspace, &big(after), &limit])
            .await?;
        let floor = rows.first().map_or(0, |r| unsigned(r.get(0)));
        if after < floor {
            let oldest = self
                .db
                .query_one(
                    "SELECT coalesce(min(id), 0) FROM events WHERE workspace = $1",
                    &[&workspace],
                )
                .await?;
            return Ok(Since::Resync {
                oldest: unsigned(oldest.get(0)),
            });
        }
        Ok(Since::Events(
            rows.iter()
                .filter(|r| r.get::<_, Option<i64>>(1).is_some())
                .map(|r| event(r, 1))
                .collect(),
        ))
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
            .query(
                "SELECT id, at_ms, body FROM events WHERE workspace = $1 AND id < $2
                         ORDER BY id DESC LIMIT $3",
                &[&workspace, &big(before), &limit],
            )
            .await?;
        let mut events: Vec<StoredEvent> = rows.iter().map(|r| event(r, 0)).collect();
        events.reverse();
        Ok(events)
    }

    async fn last_id(&self, workspace: &str) -> Result<u64, StoreError> {
        let row = self
            .db
            .query(
                "SELECT last_id FROM event_counters WHERE workspace = $1",
                &[&workspace],
            )
            .await
            .map(|rows| rows.into_iter().next())?;
        Ok(row.map_or(0, |r| unsigned(r.get(0))))
    }

    async fn last_ids(&self, workspaces: &[String]) -> Result<Vec<u64>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT workspace, last_id FROM event_counters WHERE workspace = ANY($1)",
                &[&workspaces],
            )
            .await?;
        let known: HashMap<String, u64> = rows
            .iter()
            .map(|r| (r.get(0), unsigned(r.get(1))))
            .collect();
        Ok(workspaces
            .iter()
            .map(|w| known.get(w).copied().unwrap_or(0))
            .collect())
    }

    async fn trim(&self, retention: Retention, now_ms: u64) -> Result<usize, StoreError> {
        let keep = big(retention.max_events as u64);
        // Too old: more than `max_age_ms` before now.
        let cutoff = big(now_ms.saturating_sub(retention.max_age_ms));
        let removed = self.db.query_one(TRIM, &[&keep, &cutoff]).await?;
        Ok(usize::try_from(removed.get::<_, i64>(0)).unwrap_or(0))
    }
}
