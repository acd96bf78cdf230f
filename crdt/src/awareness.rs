//! The room's awareness states, with the merge rules of `y-protocols/awareness`.
//!
//! It remembers what clients announced so that a late joiner can be told and a closed
//! connection's clients can be removed, and it holds the states the server sets itself (client
//! ids from [`SERVER_CLIENT_BASE`] up, which clients may not use). yrs has an
//! `Awareness` too, but it owns a `Doc` and keeps every removed client forever; this one keeps a
//! bounded number of removal tombstones, which is what a long-lived room under reconnect storms
//! needs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Awareness client ids from here up (the top 2^32 of the 53 bits JavaScript numbers hold
/// exactly) belong to the server. Yjs clients pick random 32-bit ids and other clients random
/// 53-bit ones, so a client lands here once in two million at worst; an entry that does is
/// ignored.
pub const SERVER_CLIENT_BASE: u64 = (1 << 53) - (1 << 32);

use tandem_sync::{AwarenessEntry, AwarenessUpdate, Known};

/// How many removed clients are remembered. A tombstone only matters while a stale copy of the
/// removed state may still be in flight, which is seconds; 1,024 bounds the memory of a room
/// that sees many short visits.
const REMOVED_TOMBSTONES: usize = 1024;

#[derive(Debug, Clone)]
struct State {
    clock: u64,
    json: Option<Arc<str>>,
}

/// What applying an update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Clients whose state was added or renewed (even with the same content).
    pub updated: Vec<u64>,
    /// Clients that were removed.
    pub removed: Vec<u64>,
    /// Of `updated`, those whose state is new or differs from the one before (a renewal that
    /// repeats the same state is not here).
    pub changed: Vec<u64>,
}

impl Changes {
    /// Whether the update changed anything, so that it is worth forwarding.
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

/// Awareness states by client id.
#[derive(Debug, Default)]
pub struct Awareness {
    states: HashMap<u64, State>,
    tombstones: VecDeque<u64>,
}

impl Awareness {
    /// Applies an update with the y-protocols rules: an entry wins when its clock is newer, or
    /// when it removes a live state at the same clock.
    pub fn apply(&mut self, update: &AwarenessUpdate) -> Changes {
        let mut changes = Changes::default();
        for entry in &update.entries {
            if !self.wins(entry) {
                continue;
            }
            let before = self
                .states
                .get(&entry.client_id)
                .and_then(|s| s.json.clone());
            let was_live = before.is_some();
            if entry.state.is_some() && before != entry.state {
                changes.changed.push(entry.client_id);
            }
            self.states.insert(
                entry.client_id,
                State {
                    clock: entry.clock,
                    json: entry.state.clone(),
                },
            );
            match (&entry.state, was_live) {
                (Some(_), _) => changes.updated.push(entry.client_id),
                (None, true) => {
                    changes.removed.push(entry.client_id);
                    self.remember_removal(entry.client_id);
                }
                (None, false) => self.remember_removal(entry.client_id),
            }
        }
        changes
    }

    /// Whether `entry` would change what is known of its client
    /// ([`AwarenessEntry::supersedes`]): its clock is newer, or it removes a live state at the
    /// same clock. A new client's removal does not.
    pub fn wins(&self, entry: &AwarenessEntry) -> bool {
        let known = self.states.get(&entry.client_id).map(|s| Known {
            clock: s.clock,
            live: s.json.is_some(),
        });
        entry.supersedes(known)
    }

    /// Removes `clients` (those still live) and returns the update announcing it, if any.
    pub fn remove(&mut self, clients: impl IntoIterator<Item = u64>) -> Option<AwarenessUpdate> {
        let mut entries = Vec::new();
        for client_id in clients {
            let Some(state) = self.states.get_mut(&client_id) else {
                continue;
            };
            if state.json.is_none() {
                continue;
            }
            state.clock = state.clock.saturating_add(1);
            state.json = None;
            entries.push(AwarenessEntry {
                client_id,
                clock: state.clock,
                state: None,
            });
            self.remember_removal(client_id);
        }
        (!entries.is_empty()).then_some(AwarenessUpdate { entries })
    }

    /// Every live state, as one update (for a client that joins or asks).
    pub fn full_update(&self) -> Option<AwarenessUpdate> {
        let entries: Vec<_> = self
            .states
            .iter()
            .filter_map(|(&client_id, s)| {
                s.json.as_ref().map(|json| AwarenessEntry {
                    client_id,
                    clock: s.clock,
                    state: Some(Arc::clone(json)),
                })
            })
            .collect();
        (!entries.is_empty()).then_some(AwarenessUpdate { entries })
    }

    /// Sets (or with `None` removes) a state the server itself owns, with the next clock, and at
    /// least `min_clock`: the caller passes the time in milliseconds, so a state set again after
    /// the room was reloaded (its clock forgotten) still wins over what clients remember.
    /// Returns the update to broadcast, or `None` when nothing changed.
    pub fn set_own(
        &mut self,
        client_id: u64,
        state: Option<Arc<str>>,
        min_clock: u64,
    ) -> Option<AwarenessUpdate> {
        let known = self.states.get(&client_id);
        if known.map(|s| &s.json) == Some(&state) || (known.is_none() && state.is_none()) {
            return None;
        }
        let clock = known
            .map_or(0, |s| s.clock.saturating_add(1))
            .max(min_clock);
        let entry = AwarenessEntry {
            client_id,
            clock,
            state,
        };
        let update = AwarenessUpdate {
            entries: vec![entry],
        };
        self.apply(&update);
        Some(update)
    }

    /// Renews every live state the server owns (clients drop a remote state that was not renewed
    /// for 30 s): the update to broadcast, `None` when there is none.
    pub fn renew_own(&mut self, min_clock: u64) -> Option<AwarenessUpdate> {
        let mut entries = Vec::new();
        for (&client_id, state) in &mut self.states {
            let Some(json) = &state.json else { continue };
            if client_id < SERVER_CLIENT_BASE {
                continue;
            }
            state.clock = state.clock.saturating_add(1).max(min_clock);
            entries.push(AwarenessEntry {
                client_id,
                clock: state.clock,
                state: Some(Arc::clone(json)),
            });
        }
        (!entries.is_empty()).then_some(AwarenessUpdate { entries })
    }

    /// The removal of `client_id`, if its state was removed (and the removal is remembered).
    pub fn removal(&self, client_id: u64) -> Option<AwarenessEntry> {
        let state = self.states.get(&client_id)?;
        state.json.is_none().then_some(AwarenessEntry {
            client_id,
            clock: state.clock,
            state: None,
        })
    }

    /// The live state of one client.
    pub fn get(&self, client_id: u64) -> Option<&str> {
        self.states.get(&client_id)?.json.as_deref()
    }

    /// How many clients have a live state.
    pub fn live_count(&self) -> usize {
        self.states.values().filter(|s| s.json.is_some()).count()
    }

    fn remember_removal(&mut self, client_id: u64) {
        self.tombstones.push_back(client_id);
        while self.tombstones.len() > REMOVED_TOMBSTONES {
            if let Some(old) = self.tombstones.pop_front() {
                // The same id may have come back to life since; keep it then.
                if self.states.get(&old).is_some_and(|s| s.json.is_none()) {
                    self.states.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(client_id: u64, clock: u64, state: Option<&str>) -> AwarenessUpdate {
        AwarenessUpdate {
            entries: vec![AwarenessEntry {
                client_id,
                clock,
                state: state.map(Into::into),
            }],
        }
    }

    #[test]
    fn newer_clock_wins_and_stale_is_ignored() {
        let mut awareness = Awareness::default();
        assert_eq!(awareness.apply(&update(1, 2, Some("{}"))).updated, vec![1]);
        assert!(awareness
            .apply(&update(1, 1, Some("{\"old\":1}")))
            .is_empty());
        assert_eq!(awareness.get(1), Some("{}"));
    }

    #[test]
    fn removal_at_same_clock_wins_and_bumps_on_server_removal() {
        let mut awareness = Awareness::default();
        awareness.apply(&update(1, 3, Some("{}")));
        assert_eq!(awareness.apply(&update(1, 3, None)).removed, vec![1]);
        awareness.apply(&update(2, 1, Some("{}")));
        let removal = awareness.remove([2, 99]).unwrap();
        assert_eq!(removal, update(2, 2, None));
        assert_eq!(awareness.live_count(), 0);
        assert!(awareness.full_update().is_none());
    }

    #[test]
    fn renewals_are_updates_but_not_changes() {
        let mut awareness = Awareness::default();
        assert_eq!(awareness.apply(&update(1, 1, Some("{}"))).changed, vec![1]);
        let renewal = awareness.apply(&update(1, 2, Some("{}")));
        assert_eq!((renewal.updated, renewal.changed), (vec![1], vec![]));
        assert_eq!(
            awareness.apply(&update(1, 3, Some("{\"a\":1}"))).changed,
            vec![1]
        );
    }

    #[test]
    fn the_server_sets_its_own_states_with_rising_clocks() {
        let mut awareness = Awareness::default();
        let own = SERVER_CLIENT_BASE + 7;
        let first = awareness.set_own(own, Some("{\"a\":1}".into()), 0).unwrap();
        assert_eq!(first.entries[0].clock, 0);
        assert!(awareness
            .set_own(own, Some("{\"a\":1}".into()), 0)
            .is_none());
        let second = awareness.set_own(own, Some("{\"a\":2}".into()), 0).unwrap();
        assert_eq!(second.entries[0].clock, 1);
        let renewed = awareness.renew_own(0).unwrap();
        assert_eq!(renewed.entries[0].clock, 2);
        // After a reload the clock restarts from the time given, above what clients saw.
        let mut reloaded = Awareness::default();
        let again = reloaded.set_own(own, Some("{}".into()), 1_000).unwrap();
        assert_eq!(again.entries[0].clock, 1_000);
        let gone = awareness.set_own(own, None, 0).unwrap();
        assert_eq!((gone.entries[0].clock, awareness.live_count()), (3, 0));
        assert!(awareness.set_own(own + 1, None, 0).is_none());
        assert!(awareness.renew_own(0).is_none());
    }

    #[test]
    fn a_removal_at_the_highest_clock_does_not_overflow() {
        let mut awareness = Awareness::default();
        awareness.apply(&update(1, u64::MAX, Some("{}")));
        let removal = awareness.remove([1]).unwrap();
        assert_eq!(removal.entries[0].clock, u64::MAX);
        assert_eq!(awareness.live_count(), 0);
    }

    #[test]
    fn tombstones_are_bounded() {
        let mut awareness = Awareness::default();
        for id in 0..(REMOVED_TOMBSTONES as u64 * 3) {
            awareness.apply(&update(id, 1, Some("{}")));
            awareness.remove([id]);
        }
        assert!(awareness.states.len() <= REMOVED_TOMBSTONES);
    }
}
