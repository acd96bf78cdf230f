//! The event log of the dashboard layer: per workspace, events with monotonic ids.
//!
//! [`EventStore`] is the seam beside [`crate::DocStore`]; [`SledEventStore`] keeps events in the
//! document database (tree `events`: workspace + `0x00` + id, 8 bytes big-endian → time in
//! milliseconds, 8 bytes big-endian, then the event's JSON), [`MemoryEventStore`] in memory.
//! Events are opaque bytes here: what a type must carry is the server's business.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::keys::{corrupt, number_of, numbered, prefix, prefix_end};
use crate::StoreError;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Monotonic within the workspace, starting at 1.
    pub id: u64,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The event's JSON.
    pub body: Vec<u8>,
}

/// An appended event's id: known at once in a store that is its log's only writer (sled,
/// memory), once the flush that commits it is done in one that shares its log (PostgreSQL,
/// where ids are handed out in the commit, so every node's ids are one gap-free sequence).
#[derive(Debug, Clone, Default)]
pub struct EventSlot(Arc<std::sync::OnceLock<u64>>);

impl EventSlot {
    /// A slot whose id is known.
    pub fn assigned(id: u64) -> EventSlot {
        let slot = EventSlot::default();
        slot.fill(id);
        slot
    }

    /// The id, once it is known.
    pub fn id(&self) -> Option<u64> {
        self.0.get().copied()
    }

    /// Records the id (the first one given stays).
    pub fn fill(&self, id: u64) {
        let _ = self.0.set(id);
    }
}

/// What a workspace's log holds after a given id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Every retained event after it, oldest first (at most the limit asked for).
    Events(Vec<StoredEvent>),
    /// Events after it were already dropped by retention: the reader must start over. `oldest`
    /// is the oldest id still kept (0 when none is).
    Resync { oldest: u64 },
}

/// How much of each workspace's log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest events kept per workspace.
    pub max_events: usize,
    /// Events older than this many milliseconds are dropped.
    pub max_age_ms: u64,
}

/// Event persistence. Object-safe, so the server holds an `Arc<dyn EventStore>`.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `body` to `workspace`'s log. Durable once a later [`EventStore::flush`]
    /// returns, and its id known (in the returned slot) by then at the latest; ids of one
    /// workspace are 1, 2, 3, … with no gap, in the order of the flushes, and of the appends
    /// within one.
    ///
    /// # Errors
    /// The backend refused the write.
    fn append(&self, workspace: &str, at_ms: u64, body: &[u8]) -> Result<EventSlot, StoreError>;

    /// Makes every appended event durable, and its id known.
    ///
    /// # Errors
    /// The backend could not write or sync.
    async fn flush(&self) -> Result<(), StoreError>;

    /// The events of `workspace` after `after` (0: from the start), at most `limit`.
    ///
    /// # Errors
    /// The backend failed or a record is corrupt.
    async fn since(&self, workspace: &str, after: u64, limit: usize) -> Result<Since, StoreError>;

    /// The newest `limit` events of `workspace` with ids below `before`, oldest first.
    ///
    /// # Errors
    /// The backend failed or a record is corrupt.
    async fn before(
        &self,
        workspace: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The newest `limit` events of `workspace`, oldest first.
    ///
    /// # Errors
    /// The backend failed or a record is corrupt.
    async fn latest(&self, workspace: &str, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.before(workspace, u64::MAX, limit).await
    }

    /// The id of `workspace`'s newest committed event, 0 when it has none (retention does not
    /// lower it).
    ///
    /// # Errors
    /// The backend failed or a record is corrupt.
    async fn last_id(&self, workspace: &str) -> Result<u64, StoreError>;

    /// [`EventStore::last_id`] of each of `workspaces`, in their order (one round trip where
    /// the backend can).
    ///
    /// # Errors
    /// The backend failed or a record is corrupt.
    async fn last_ids(&self, workspaces: &[String]) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::with_capacity(workspaces.len());
        for workspace in workspaces {
            ids.push(self.last_id(workspace).await?);
        }
        Ok(ids)
    }

    /// Drops what `retention` no longer keeps, as of `now_ms`; returns how many events went.
    ///
    /// # Errors
    /// The backend failed.
    async fn trim(&self, retention: Retention, now_ms: u64) -> Result<usize, StoreError>;
}

/// Whether a reader that saw everything up to `after` missed events retention dropped: `floor`
/// is the highest id it removed (0: none).
fn missed(after: u64, floor: u64) -> bool {
    after < floor
}

/// Events in the document database.
#[derive(Clone)]
pub struct SledEventStore {
    inner: Arc<SledEvents>,
}

struct SledEvents {
    db: sled::Db,
    /// Refuses writes while the disk is nearly full: sled does not survive running out.
    space: crate::SpaceGuard,
    events: sled::Tree,
    /// Per workspace: the last id handed out, found on first use.
    last_ids: Mutex<HashMap<String, u64>>,
    /// Per workspace: the highest id retention has dropped (kept in tree `events_floor`).
    floors: sled::Tree,
}

impl SledEventStore {
    pub(crate) fn open(
        db: sled::Db,
        space: crate::SpaceGuard,
    ) -> Result<SledEventStore, StoreError> {
        let events = db.open_tree("events")?;
        let floors = db.open_tree("events_floor")?;
        Ok(SledEventStore {
            inner: Arc::new(SledEvents {
                db,
                space,
                events,
                last_ids: Mutex::new(HashMap::new()),
                floors,
            }),
        })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&SledEvents) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn decode(workspace: &str, key: &[u8], value: &[u8]) -> Result<StoredEvent, StoreError> {
    let id = number_of(workspace, key, "event key")?;
    let at_ms = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(workspace, "event record"))?;
    Ok(StoredEvent {
        id,
        at_ms,
        body: value[8..].to_vec(),
    })
}

impl SledEvents {
    fn floor(&self, workspace: &str) -> Result<u64, StoreError> {
        match self.floors.get(workspace.as_bytes())? {
            Some(bytes) => bytes
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(workspace, "event floor")),
            None => Ok(0),
        }
    }

    fn last_id(&self, workspace: &str) -> Result<u64, StoreError> {
        let newest = match self
            .events
            .scan_prefix(prefix(workspace))
            .keys()
            .next_back()
        {
            Some(key) => number_of(workspace, &key?, "event key")?,
            None => 0,
        };
        // A trimmed-empty log still never reuses an id.
        Ok(newest.max(self.floor(workspace)?))
    }
}

impl SledEventStore {
    fn last_ids(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.inner
            .last_ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EventStore for SledEventStore {
    fn append(&self, workspace: &str, at_ms: u64, body: &[u8]) -> Result<EventSlot, StoreError> {
        self.inner.space.check()?;
        let mut last_ids = self.last_ids();
        let last = match last_ids.get(workspace) {
            Some(last) => *last,
            None => self.inner.last_id(workspace)?,
        };
        let id = last + 1;
        let mut value = Vec::with_capacity(8 + body.len());
        value.extend_from_slice(&at_ms.to_be_bytes());
        value.extend_from_slice(body);
        self.inner.events.insert(numbered(workspace, id), value)?;
        last_ids.insert(workspace.to_owned(), id);
        Ok(EventSlot::assigned(id))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|inner| {
            inner.space.check()?;
            inner.db.flush()?;
            Ok(())
        })
        .await
    }

    async fn since(&self, workspace: &str, after: u64, limit: usize) -> Result<Since, StoreError> {
        let workspace = workspace.to_owned();
        self.blocking(move |inner| {
            let floor = inner.floor(&workspace)?;
            if missed(after, floor) {
                let oldest = match inner.events.scan_prefix(prefix(&workspace)).keys().next() {
                    Some(key) => number_of(&workspace, &key?, "event key")?,
                    None => 0,
                };
                return Ok(Since::Resync { oldest });
            }
            let start = numbered(&workspace, after.saturating_add(1));
            let end = numbered(&workspace, u64::MAX);
            let mut events = Vec::new();
            for entry in inner.events.range(start..=end).take(limit) {
                let (key, value) = entry?;
                events.push(decode(&workspace, &key, &value)?);
            }
            Ok(Since::Events(events))
        })
        .await
    }

    async fn before(
        &self,
        workspace: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let workspace = workspace.to_owned();
        self.blocking(move |inner| {
            let mut events = Vec::new();
            let range = numbered(&workspace, 0)..numbered(&workspace, before);
            for entry in inner.events.range(range).rev().take(limit) {
                let (key, value) = entry?;
                events.push(decode(&workspace, &key, &value)?);
            }
            events.reverse();
            Ok(events)
        })
        .await
    }

    async fn last_id(&self, workspace: &str) -> Result<u64, StoreError> {
        let mut last_ids = self.last_ids();
        if let Some(last) = last_ids.get(workspace) {
            return Ok(*last);
        }
        let last = self.inner.last_id(workspace)?;
        last_ids.insert(workspace.to_owned(), last);
        Ok(last)
    }

    async fn trim(&self, retention: Retention, now_ms: u64) -> Result<usize, StoreError> {
        self.inner.space.check()?;
        self.blocking(move |inner| {
            // Workspaces are the key prefixes; walk them one by one.
            let mut removed = 0;
            let mut next: Option<Vec<u8>> = Some(Vec::new());
            while let Some(from) = next.take() {
                let Some(first) = inner.events.range(from..).keys().next() else {
                    break;
                };
                let first = first?;
                let end = first.iter().position(|&b| b == 0).unwrap_or(first.len());
                let workspace = std::str::from_utf8(&first[..end])
                    .map_err(|_| corrupt("?", "event key"))?
                    .to_owned();
                let ws_prefix = prefix(&workspace);
                let count = inner.events.scan_prefix(&ws_prefix).keys().count();
                let mut excess = count.saturating_sub(retention.max_events);
                let mut doomed = Vec::new();
                for entry in inner.events.scan_prefix(&ws_prefix) {
                    let (key, value) = entry?;
                    let event = decode(&workspace, &key, &value)?;
                    let too_old = now_ms.saturating_sub(event.at_ms) > retention.max_age_ms;
                    if excess == 0 && !too_old {
                        break;
                    }
                    doomed.push((event.id, key));
                    excess = excess.saturating_sub(1);
                }
                if let Some((newest, _)) = doomed.last() {
                    // The floor first: a crash before the removals leaves events that readers
                    // are told to resync past, never a gap they are not told about.
                    let floor = inner.floor(&workspace)?.max(*newest);
                    inner
                        .floors
                        .insert(workspace.as_bytes(), &floor.to_be_bytes())?;
                    removed += doomed.len();
                    for (_, key) in doomed {
                        inner.events.remove(key)?;
                    }
                }
                next = Some(prefix_end(&ws_prefix));
            }
            Ok(removed)
        })
        .await
    }
}

/// Events in memory, for tests and benches.
#[derive(Default, Clone)]
pub struct MemoryEventStore {
    inner: Arc<Mutex<HashMap<String, MemoryLog>>>,
}

#[derive(Default)]
struct MemoryLog {
    events: BTreeMap<u64, (u64, Vec<u8>)>,
    last_id: u64,
    floor: u64,
}

impl MemoryEventStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemoryLog>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MemoryLog {
    fn event(id: u64, (at_ms, body): &(u64, Vec<u8>)) -> StoredEvent {
        StoredEvent {
            id,
            at_ms: *at_ms,
            body: body.clone(),
        }
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    fn append(&self, workspace: &str, at_ms: u64, body: &[u8]) -> Result<EventSlot, StoreError> {
        let mut logs = self.lock();
        let log = logs.entry(workspace.to_owned()).or_default();
        log.last_id += 1;
        log.events.insert(log.last_id, (at_ms, body.to_vec()));
        Ok(EventSlot::assigned(log.last_id))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn since(&self, workspace: &str, after: u64, limit: usize) -> Result<Since, StoreError> {
        let logs = self.lock();
        let Some(log) = logs.get(workspace) else {
            return Ok(Since::Events(Vec::new()));
        };
        if missed(after, log.floor) {
            let oldest = log.events.keys().next().copied().unwrap_or(0);
            return Ok(Since::Resync { oldest });
        }
        Ok(Since::Events(
            log.events
                .range(after.saturating_add(1)..)
                .take(limit)
                .map(|(id, event)| MemoryLog::event(*id, event))
                .collect(),
        ))
    }

    async fn before(
        &self,
        workspace: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let logs = self.lock();
        let Some(log) = logs.get(workspace) else {
            return Ok(Vec::new());
        };
        let mut events: Vec<_> = log
            .events
            .range(..before)
            .rev()
            .take(limit)
            .map(|(id, event)| MemoryLog::event(*id, event))
            .collect();
        events.reverse();
        Ok(events)
    }

    async fn last_id(&self, workspace: &str) -> Result<u64, StoreError> {
        Ok(self.lock().get(workspace).map_or(0, |log| log.last_id))
    }

    async fn trim(&self, retention: Retention, now_ms: u64) -> Result<usize, StoreError> {
        let mut logs = self.lock();
        let mut removed = 0;
        for log in logs.values_mut() {
            let mut excess = log.events.len().saturating_sub(retention.max_events);
            while let Some((&id, (at_ms, _))) = log.events.iter().next() {
                let too_old = now_ms.saturating_sub(*at_ms) > retention.max_age_ms;
                if excess == 0 && !too_old {
                    break;
                }
                log.events.remove(&id);
                log.floor = log.floor.max(id);
                excess = excess.saturating_sub(1);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_contract() {
        crate::contract::event_store(&MemoryEventStore::default()).await;
    }

    #[tokio::test]
    async fn sled_contract_and_ids_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::sled_store::tests::reopen(dir.path())
                .events()
                .unwrap();
            crate::contract::event_store(&store).await;
            store.flush().await.unwrap();
        }
        let store = crate::sled_store::tests::reopen(dir.path())
            .events()
            .unwrap();
        assert_eq!(store.append("acme", 12_000, b"{}").unwrap().id(), Some(7));
        assert_eq!(store.append("acme2", 12_000, b"{}").unwrap().id(), Some(2));
        assert_eq!(store.latest("acme", 10).await.unwrap().len(), 2);
    }
}
