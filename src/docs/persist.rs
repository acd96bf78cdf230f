//! Persistence around a room: loading it from the store, compaction into a snapshot, and the
//! unload of a room nobody is in (with its final snapshot).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tandem_crdt::{Room, RoomLimits};
use tandem_storage::{Compaction, StoreError};
use tracing::Instrument;

use super::rooms::{RoomHandle, RoomOpError, RoomState, Rooms};
use crate::docname::DocName;

impl Rooms {
    /// Loads `name`'s room from the store: its snapshot and the log after it, with the
    /// server's own awareness states put back.
    ///
    /// # Errors
    /// The store failed, or holds something yrs cannot load.
    pub(super) async fn load(&self, name: &DocName) -> Result<Mutex<RoomState>, RoomOpError> {
        let limits = RoomLimits {
            max_doc_bytes: self.config.max_doc_bytes,
            max_awareness_per_peer: self.config.max_awareness_per_connection,
            max_types: self.config.max_doc_types,
        };
        let started = Instant::now();
        if let Some(bus) = self.bus.get() {
            // Before the read: an update committed after it is then heard of over the bus.
            bus.subscribe(name).await;
        }
        let read = async {
            let stored = self.store.load(name.as_str()).await?;
            let snapshot = stored.snapshot.as_ref().map(|s| s.bytes.as_slice());
            let log = stored.log.iter().map(|(_, u)| u.as_slice());
            let room = Room::load(limits, snapshot, log)?;
            Ok::<_, RoomOpError>((stored, room))
        };
        let (stored, mut room) = match read.await {
            Ok(read) => read,
            Err(err) => {
                // No room: nothing wants its messages (the next load subscribes again).
                if let Some(bus) = self.bus.get() {
                    bus.unsubscribe(name);
                }
                return Err(err);
            }
        };
        if self.observer.get().is_some() {
            room.observe();
        }
        self.restore_server_awareness(name, &mut room);
        let loaded = crate::metrics::get();
        loaded.rooms_loaded.increment(1.0);
        loaded
            .room_load
            .record(crate::metrics::secs(started.elapsed()));
        tracing::debug!(
            doc = %name,
            bytes = stored.total_bytes(),
            log = stored.log.len(),
            elapsed = ?started.elapsed(),
            "room loaded"
        );
        Ok(Mutex::new(RoomState {
            room,
            peers: HashMap::new(),
            pollers: HashMap::new(),
            closed: false,
            last_seq: stored.last_seq(),
            log_updates: stored.log.len(),
            log_bytes: stored.log.iter().map(|(_, u)| u.len()).sum(),
            compacting: false,
            remote_seqs: HashMap::new(),
            mirrors: HashMap::new(),
            unload_pending: false,
            activity: 0,
        }))
    }

    pub(super) fn needs_compaction(&self, state: &RoomState) -> bool {
        !state.compacting
            && (state.log_updates >= self.config.compact_after_updates
                || state.log_bytes >= self.config.compact_after_bytes)
    }

    /// Writes a snapshot of the room and drops the log it covers.
    pub(super) async fn compact(&self, handle: &Arc<RoomHandle>) {
        if let Err(err) = self.compact_now(handle).await {
            tracing::warn!(doc = %handle.name, error = %err, "compaction failed; will retry");
        }
    }

    /// Writes a snapshot of the room now; returns how many logged updates it absorbed.
    pub(super) async fn compact_now(&self, handle: &RoomHandle) -> Result<usize, StoreError> {
        // Compactions run on the blocking pool, which has threads to spare: a hundred rooms
        // crossing their threshold together would take a hundred of them, and the core away
        // from the connections. A closed semaphore never happens (it is never closed).
        let _permit = self.compactions.acquire().await;
        let (snapshot, upto, updates, bytes) = {
            let mut state = handle.lock();
            // A poisoned document may be half-changed: its log is the truth, never a snapshot.
            if state.log_updates == 0 || state.room.is_poisoned() {
                state.compacting = false;
                return Ok(0);
            }
            let Ok(snapshot) = state.room.snapshot() else {
                // yrs could not write it: poisoned, the room reloads on its next use.
                state.compacting = false;
                return Ok(0);
            };
            state.compacting = true;
            (snapshot, state.last_seq, state.log_updates, state.log_bytes)
        };
        let size = snapshot.len();
        let result = self
            .store
            .compact(handle.name.as_str(), snapshot, upto)
            .await;
        let mut state = handle.lock();
        state.compacting = false;
        match result? {
            Compaction::Done { removed } => {
                state.log_updates -= updates.min(state.log_updates);
                state.log_bytes -= bytes.min(state.log_bytes);
                tracing::debug!(doc = %handle.name, removed, snapshot_bytes = size, "compacted");
                Ok(updates)
            }
            Compaction::Stale => {
                tracing::debug!(doc = %handle.name, "compaction skipped: a newer snapshot exists");
                Ok(0)
            }
        }
    }

    /// Unloads the room once it has gone unused for the grace period. One timer per room: it
    /// re-arms itself while the room keeps being used (HTTP reads, joins that left again).
    pub(super) fn schedule_unload(self: &Arc<Self>, handle: Arc<RoomHandle>, activity: u64) {
        {
            let mut state = handle.lock();
            if state.unload_pending {
                return;
            }
            state.unload_pending = true;
        }
        let this = Arc::clone(self);
        let grace = self.config.room_grace();
        let name = handle.name.clone();
        self.tasks.spawn(
            async move {
                let mut seen = activity;
                loop {
                    tokio::select! {
                        // Shutdown unloads every room itself.
                        _ = this.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(grace) => {}
                    }
                    {
                        let mut state = handle.lock();
                        if !state.is_vacant() || state.closed {
                            state.unload_pending = false;
                            return;
                        }
                        if state.activity != seen {
                            seen = state.activity;
                            continue;
                        }
                    }
                    if !this.unload_if_idle(&handle, Some(seen)).await {
                        handle.lock().unload_pending = false;
                    }
                    return;
                }
            }
            .instrument(tracing::debug_span!("unload", doc = %name)),
        );
    }

    /// Removes the room from the registry if it has no peers (and, with `activity`, has not been
    /// used since), then persists its snapshot.
    pub(super) async fn unload_if_idle(
        &self,
        handle: &Arc<RoomHandle>,
        activity: Option<u64>,
    ) -> bool {
        let removed = self
            .map
            .remove_if(&handle.name, |_, h| {
                Arc::ptr_eq(h, handle) && {
                    let mut state = h.lock();
                    // At shutdown (no `activity`) pollers hold nothing up: they poll in vain.
                    let idle = match activity {
                        Some(a) => state.is_vacant() && a == state.activity,
                        None => state.peers.is_empty(),
                    };
                    if idle {
                        state.closed = true;
                    }
                    idle
                }
            })
            .is_some();
        if removed {
            if let Some(bus) = self.bus.get() {
                bus.unsubscribe(&handle.name);
            }
            if let Err(err) = self.compact_now(handle).await {
                // The log still holds every update; the next load replays it.
                tracing::warn!(doc = %handle.name, error = %err, "snapshot on unload failed");
            }
            crate::metrics::get().rooms_loaded.decrement(1.0);
            tracing::debug!(doc = %handle.name, "room unloaded");
        }
        removed
    }

    /// Compacts `name` now (loading it if needed): its log goes into a fresh snapshot. Returns
    /// how many updates the snapshot absorbed.
    ///
    /// # Errors
    /// The room could not be loaded or the store failed.
    pub async fn compact_doc(self: &Arc<Self>, name: &DocName) -> Result<usize, RoomOpError> {
        let (handle, idle) = self
            .with_state(name, |handle, state| {
                let idle = state.is_vacant().then_some(state.activity);
                (Arc::clone(handle), idle)
            })
            .await?;
        let updates = self.compact_now(&handle).await?;
        if let Some(activity) = idle {
            self.schedule_unload(Arc::clone(&handle), activity);
        }
        Ok(updates)
    }

    /// Unloads every room, persisting each one's snapshot. Used at shutdown.
    pub async fn unload_all(&self) {
        let handles: Vec<_> = self.map.iter().map(|e| Arc::clone(e.value())).collect();
        for handle in handles {
            if handle.state.get().is_some() {
                self.unload_if_idle(&handle, None).await;
            } else {
                self.map.remove(&handle.name);
            }
        }
    }
}
