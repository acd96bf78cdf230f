//! Who keeps which awareness client of a room alive ([`Owners`]): each peer's clients (removed
//! when it leaves), each client's peer (a reconnect moves a client to its new connection), and
//! whose each client is (the user its peer speaks for, remembered for a while after it went),
//! so that one user cannot move or hide another's cursor.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::awareness::Changes;
use crate::peer::PeerId;

/// How many departed awareness clients keep their user, in all: a reconnect comes within
/// seconds.
const DEPARTED_CLIENTS: usize = 1024;

/// How many of them one user's: a user who announces and removes throwaway ids pushes out
/// only their own, not everyone's.
const DEPARTED_PER_USER: usize = 32;

/// The awareness clients of a room's peers.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    /// The awareness client ids each peer announced, removed when it leaves.
    peers: HashMap<PeerId, Vec<u64>>,
    /// The peer that keeps each awareness client alive: the index of `peers`.
    owners: HashMap<u64, PeerId>,
    /// Who each tagged peer speaks for (a user).
    tags: HashMap<PeerId, Arc<str>>,
    /// Whose each awareness client is: the tag of the peer that announced it, kept while it is
    /// alive and, for the last [`DEPARTED_CLIENTS`] that went, after (so that another user
    /// cannot take over a client id while its user reconnects).
    client_tags: HashMap<u64, Arc<str>>,
    /// The departed clients still protected, per user, oldest first.
    departed: HashMap<Arc<str>, VecDeque<u64>>,
    /// All of them, oldest first; an entry already pushed out by its user's cap is skipped.
    departed_order: VecDeque<(Arc<str>, u64)>,
    departed_count: usize,
}

impl Owners {
    /// `peer` is in the room, announcing nothing yet.
    pub(crate) fn join(&mut self, peer: PeerId) {
        self.peers.entry(peer).or_default();
    }

    /// Says whom `peer` speaks for.
    pub(crate) fn tag(&mut self, peer: PeerId, tag: Arc<str>) {
        self.tags.insert(peer, tag);
    }

    /// Forgets `peer`; returns the clients it kept (`None` when it was not in the room).
    pub(crate) fn leave(&mut self, peer: PeerId) -> Option<Vec<u64>> {
        self.tags.remove(&peer);
        let clients = self.peers.remove(&peer)?;
        for &client in &clients {
            self.disown(peer, client);
        }
        Some(clients)
    }

    /// Every peer in the room.
    pub(crate) fn peers(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    /// The peer that keeps awareness `client` alive, if any.
    pub(crate) fn owner(&self, client: u64) -> Option<PeerId> {
        self.owners.get(&client).copied()
    }

    /// Whether `peer` may update awareness `client`: `peer` keeps it, or the client is no
    /// user's (yet, or any more), or it is the user's `peer` speaks for.
    pub(crate) fn may_announce(&self, peer: PeerId, client: u64) -> bool {
        if self.owners.get(&client) == Some(&peer) {
            return true;
        }
        match (self.client_tags.get(&client), self.tags.get(&peer)) {
            (None, _) => true,
            (Some(theirs), Some(ours)) => theirs == ours,
            (Some(_), None) => false,
        }
    }

    /// How many live clients `peer` would keep once `announced` (the clients of an update with
    /// a state) are in.
    pub(crate) fn count_with(&self, peer: PeerId, announced: impl Iterator<Item = u64>) -> usize {
        let kept = self.peers.get(&peer).map_or(&[][..], Vec::as_slice);
        kept.len() + announced.filter(|id| !kept.contains(id)).count()
    }

    /// Records which awareness clients `peer` now keeps alive. A client id belongs to the last
    /// connection that announced it: when a client reconnects, the old connection's late close
    /// must not remove the state the new one renewed.
    pub(crate) fn track(&mut self, peer: PeerId, changes: &Changes) {
        for &id in &changes.updated {
            if let Some(tag) = self.tags.get(&peer) {
                self.client_tags.insert(id, Arc::clone(tag));
            }
            match self.owners.insert(id, peer) {
                Some(previous) if previous == peer => continue,
                Some(previous) => {
                    if let Some(ids) = self.peers.get_mut(&previous) {
                        ids.retain(|known| *known != id);
                    }
                }
                None => {}
            }
            self.peers.entry(peer).or_default().push(id);
        }
        if !changes.removed.is_empty() {
            if let Some(ids) = self.peers.get_mut(&peer) {
                ids.retain(|id| !changes.removed.contains(id));
            }
            for &id in &changes.removed {
                self.disown(peer, id);
            }
        }
    }

    /// `peer` no longer keeps `client`: the client stays its user's for a while.
    fn disown(&mut self, peer: PeerId, client: u64) {
        if self.owners.get(&client) != Some(&peer) {
            return;
        }
        self.owners.remove(&client);
        let Some(tag) = self.client_tags.get(&client).cloned() else {
            return;
        };
        let mine = self.departed.entry(Arc::clone(&tag)).or_default();
        mine.push_back(client);
        self.departed_order.push_back((tag.clone(), client));
        self.departed_count += 1;
        if mine.len() > DEPARTED_PER_USER {
            if let Some(oldest) = mine.pop_front() {
                self.departed_count -= 1;
                self.forget(oldest);
            }
        }
        while self.departed_count > DEPARTED_CLIENTS {
            let Some((tag, oldest)) = self.departed_order.pop_front() else {
                break;
            };
            // The user's oldest, unless their cap pushed it out already.
            let theirs = self.departed.get_mut(&tag);
            if let Some(queue) = theirs.filter(|q| q.front() == Some(&oldest)) {
                queue.pop_front();
                if queue.is_empty() {
                    self.departed.remove(&tag);
                }
                self.departed_count -= 1;
                self.forget(oldest);
            }
        }
        // Entries pushed out by a user's cap stay in the order until reached: bounded.
        if self.departed_order.len() > 4 * DEPARTED_CLIENTS {
            let departed = &self.departed;
            self.departed_order
                .retain(|(tag, client)| departed.get(tag).is_some_and(|q| q.contains(client)));
        }
    }

    /// A departed `client` is nobody's any more (unless it came back meanwhile).
    fn forget(&mut self, client: u64) {
        if !self.owners.contains_key(&client) {
            self.client_tags.remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn updated(ids: &[u64]) -> Changes {
        Changes {
            updated: ids.to_vec(),
            ..Changes::default()
        }
    }

    #[test]
    fn a_client_is_its_users_while_kept_and_for_a_while_after() {
        let mut owners = Owners::default();
        let (ada, ada2, bob) = (PeerId(1), PeerId(2), PeerId(3));
        owners.tag(ada, Arc::from("ada"));
        owners.tag(ada2, Arc::from("ada"));
        owners.tag(bob, Arc::from("bob"));
        owners.track(ada, &updated(&[7]));
        assert_eq!(owners.owner(7), Some(ada));
        assert!(!owners.may_announce(bob, 7));
        assert!(owners.may_announce(ada2, 7));
        // Ada's connection drops: client 7 stays hers while she reconnects.
        assert_eq!(owners.leave(ada), Some(vec![7]));
        assert_eq!(owners.owner(7), None);
        assert!(!owners.may_announce(bob, 7));
        owners.track(ada2, &updated(&[7]));
        assert_eq!(owners.owner(7), Some(ada2));
        assert_eq!(owners.leave(ada), None);
    }

    #[test]
    fn one_user_s_throwaway_clients_do_not_push_out_another_s_protection() {
        let mut owners = Owners::default();
        let (ada, bob, bob2) = (PeerId(1), PeerId(2), PeerId(3));
        owners.tag(ada, Arc::from("ada"));
        owners.tag(bob, Arc::from("bob"));
        owners.tag(bob2, Arc::from("bob"));
        owners.track(ada, &updated(&[7]));
        owners.leave(ada);
        // Bob announces and removes thousands of ids.
        for id in 1000..(1000 + 4 * DEPARTED_CLIENTS as u64) {
            owners.track(bob, &updated(&[id]));
            owners.track(
                bob,
                &Changes {
                    removed: vec![id],
                    ..Changes::default()
                },
            );
        }
        assert!(!owners.may_announce(bob2, 7), "Ada's client is still hers");
        assert!(owners.client_tags.len() <= DEPARTED_CLIENTS + 1);
        assert!(owners.departed_order.len() <= 4 * DEPARTED_CLIENTS + 1);
    }

    #[test]
    fn a_reconnect_moves_a_client_and_the_old_peer_no_longer_counts_it() {
        let mut owners = Owners::default();
        owners.track(PeerId(1), &updated(&[5, 6]));
        owners.track(PeerId(2), &updated(&[5]));
        assert_eq!(owners.owner(5), Some(PeerId(2)));
        assert_eq!(owners.count_with(PeerId(1), [8].into_iter()), 2);
        assert_eq!(owners.leave(PeerId(1)), Some(vec![6]));
    }
}
