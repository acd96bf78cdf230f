//! A workspace across a cluster: what each node tells the others of it, and which node speaks
//! for it.
//!
//! A node's entries, by key: `n` (it has the workspace loaded), `p/{user}` (the presence its
//! own sources give the user, a [`NodePresence`]), `e/{doc}` (who is in the document through
//! it, [`NodeEditor`]s). Each node numbers what it tells of a workspace, and the cluster keeps
//! the latest of every entry beside the bus (`cluster::roster`), so a node that missed a
//! message (a gap in the numbers, a heartbeat naming a later one, a reconnect) reads them all
//! again. Every node keeps the same picture; the node with the lowest origin among those that
//! have the workspace loaded speaks for it: only it appends the `presence_update` and
//! `editing` events, so each change is said once.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::editing::NodeEditor;
use super::hub::Hub;
use super::presence::NodePresence;
use super::workspace::{State, Workspace};
use crate::durability::Ticket;

/// The entry that says a node has the workspace loaded.
pub const NODE_KEY: &str = "n";

/// The entry of a user's presence.
pub fn presence_key(user: &str) -> String {
    format!("p/{user}")
}

/// The entry of who is in a document.
pub fn editing_key(doc: &str) -> String {
    format!("e/{doc}")
}

/// What one node told of a workspace: the number of its latest message, and its entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Told {
    pub seq: u64,
    pub entries: HashMap<String, String>,
}

/// What a node says in one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Heard {
    /// One entry is now `value` (`None`: gone).
    Set { key: String, value: Option<String> },
    /// Its entries are these, and no others (after Redis came back).
    All { entries: HashMap<String, String> },
}

/// The other nodes' entries of one workspace.
#[derive(Debug, Default)]
pub struct Roster {
    remote: HashMap<i64, Told>,
}

/// Entries that changed: (key, new value).
type Changes = Vec<(String, Option<String>)>;

impl Roster {
    /// `origin`'s message `seq`: the entries it changes, and whether a message before it was
    /// missed (then the caller reads everything again).
    pub fn hear(&mut self, origin: i64, seq: u64, heard: Heard) -> (Changes, bool) {
        let told = self.remote.entry(origin).or_default();
        if seq <= told.seq {
            return (Vec::new(), false);
        }
        let gap = seq > told.seq + 1 && matches!(heard, Heard::Set { .. });
        told.seq = seq;
        let changes = match heard {
            Heard::Set { key, value } => {
                let old = match &value {
                    Some(value) => told.entries.insert(key.clone(), value.clone()),
                    None => told.entries.remove(&key),
                };
                if old == value {
                    Vec::new()
                } else {
                    vec![(key, value)]
                }
            }
            Heard::All { entries } => replace(told, entries),
        };
        (changes, gap)
    }

    /// What the cluster holds of the workspace, read again: the entries that change, by
    /// origin. The hash holds a node's entries as of the number it names (one script sets
    /// both), so a read at the number last heard is exact and replaces what a lost message
    /// left wrong; an older read is skipped. A node missing from the read (Redis lost it)
    /// keeps its entries until it tells them again.
    pub fn reread(&mut self, read: Vec<(i64, Told)>) -> Vec<(i64, Changes)> {
        let mut changed = Vec::new();
        for (origin, fresh) in read {
            let told = self.remote.entry(origin).or_default();
            if fresh.seq < told.seq {
                continue;
            }
            told.seq = fresh.seq;
            let changes = replace(told, fresh.entries);
            if !changes.is_empty() {
                changed.push((origin, changes));
            }
        }
        changed
    }

    /// Forgets `origin` (it is gone): the keys it had.
    pub fn forget(&mut self, origin: i64) -> Vec<String> {
        self.remote
            .remove(&origin)
            .map(|told| told.entries.into_keys().collect())
            .unwrap_or_default()
    }

    /// Whether the node `me` speaks for the workspace: no node with a lower origin has it.
    pub fn speaks(&self, me: i64) -> bool {
        self.remote
            .iter()
            .filter(|(_, told)| !told.entries.is_empty())
            .all(|(origin, _)| *origin > me)
    }

    /// Whether another node says anyone is present or editing in the workspace.
    pub fn has_users(&self) -> bool {
        self.remote
            .values()
            .any(|told| told.entries.keys().any(|key| key != NODE_KEY))
    }

    /// Whether `origin`'s message `seq` was not heard yet.
    pub fn behind(&self, origin: i64, seq: u64) -> bool {
        self.remote.get(&origin).map_or(0, |told| told.seq) < seq
    }
}

/// Replaces `told`'s entries with `entries`: what changed.
fn replace(told: &mut Told, entries: HashMap<String, String>) -> Changes {
    let mut changes: Changes = told
        .entries
        .keys()
        .filter(|key| !entries.contains_key(*key))
        .map(|key| (key.clone(), None))
        .collect();
    for (key, value) in &entries {
        if told.entries.get(key) != Some(value) {
            changes.push((key.clone(), Some(value.clone())));
        }
    }
    told.entries = entries;
    changes
}

impl Hub {
    /// Whether this node appends `ws`'s presence and editing events: always, but in a
    /// cluster where a node with a lower origin has the workspace loaded.
    pub(super) fn speaks(&self, st: &State) -> bool {
        self.bus().is_none_or(|bus| st.roster.speaks(bus.origin()))
    }

    /// Tells the other nodes what changed of who is in `ws`'s documents through this node.
    pub(super) fn tell_editing(&self, ws: &Workspace, st: &mut State) {
        let told = st.editing.told();
        let Some(bus) = self.bus() else { return };
        for (doc, editors) in told {
            let value = (!editors.is_empty())
                .then(|| serde_json::to_string(&editors).ok())
                .flatten();
            bus.tell(&ws.name, &editing_key(&doc), value);
        }
    }

    /// Everything this node tells of `workspace` (said again once Redis is back).
    pub fn told_entries(&self, workspace: &str) -> HashMap<String, String> {
        let Some(ws) = self.loaded(workspace) else {
            return HashMap::new();
        };
        let st = ws.lock();
        let mut entries = HashMap::from([(NODE_KEY.to_owned(), "1".to_owned())]);
        for (user, entry) in &st.users {
            if let Some(json) = entry
                .presence
                .told()
                .and_then(|told| serde_json::to_string(told).ok())
            {
                entries.insert(presence_key(user), json);
            }
        }
        for (doc, editors) in st.editing.local() {
            if let Ok(json) = serde_json::to_string(&editors) {
                entries.insert(editing_key(&doc), json);
            }
        }
        entries
    }

    /// Whether `workspace` is loaded here.
    pub fn is_loaded(&self, workspace: &str) -> bool {
        self.loaded(workspace).is_some()
    }

    /// The names of the workspaces loaded here.
    pub fn loaded_names(&self) -> Vec<String> {
        self.all_loaded().iter().map(|ws| ws.name.clone()).collect()
    }

    /// Another node's message `seq` about `workspace`; whether one before it was missed.
    pub fn remote_told(
        self: &Arc<Self>,
        workspace: &str,
        origin: i64,
        seq: u64,
        heard: Heard,
    ) -> bool {
        let Some(ws) = self.loaded(workspace) else {
            return false;
        };
        let mut st = ws.lock();
        let (changes, gap) = st.roster.hear(origin, seq, heard);
        let ticket = self.apply_told(&ws, &mut st, origin, changes, true);
        drop(st);
        self.settle_later(&ws, ticket);
        gap
    }

    /// What the cluster holds of `workspace`, read again.
    pub fn reread_told(self: &Arc<Self>, workspace: &str, read: Vec<(i64, Told)>) {
        let Some(ws) = self.loaded(workspace) else {
            return;
        };
        let mut st = ws.lock();
        let mut ticket = None;
        for (origin, changes) in st.roster.reread(read) {
            ticket = self
                .apply_told(&ws, &mut st, origin, changes, true)
                .or(ticket);
        }
        drop(st);
        self.settle_later(&ws, ticket);
    }

    /// Whether `origin`'s message `seq` about `workspace` was missed here.
    pub fn told_behind(&self, workspace: &str, origin: i64, seq: u64) -> bool {
        self.loaded(workspace)
            .is_some_and(|ws| ws.lock().roster.behind(origin, seq))
    }

    /// The node `origin` is gone: what it said goes, everywhere (its users go offline unless
    /// connected elsewhere, and leave its documents).
    pub fn forget_origin(self: &Arc<Self>, origin: i64) {
        for ws in self.all_loaded() {
            let mut st = ws.lock();
            let keys = st.roster.forget(origin);
            let changes = keys.into_iter().map(|key| (key, None)).collect();
            let ticket = self.apply_told(&ws, &mut st, origin, changes, true);
            drop(st);
            self.settle_later(&ws, ticket);
        }
    }

    /// What `origin` now says (`changes`), applied to `ws`'s presence and editing; `emit`:
    /// published as events where this node speaks (when a workspace loads, what it reads is
    /// taken as already said).
    pub(super) fn apply_told(
        &self,
        ws: &Workspace,
        st: &mut State,
        origin: i64,
        changes: Changes,
        emit: bool,
    ) -> Option<Ticket> {
        let mut ticket = None;
        let now = Instant::now();
        for (key, value) in changes {
            if let Some(user) = key.strip_prefix("p/") {
                let said = value.and_then(|json| {
                    serde_json::from_str::<NodePresence>(&json)
                        .inspect_err(|err| {
                            tracing::warn!(workspace = %ws.name, origin, %user, error = %err, "an unreadable presence from another node");
                        })
                        .ok()
                });
                let entry = st.users.entry(user.to_owned()).or_default();
                entry.presence.set_remote(origin, said);
                ticket = self.presence_news(ws, st, user, emit).or(ticket);
            } else if let Some(doc) = key.strip_prefix("e/") {
                let editors: Vec<NodeEditor> = value
                    .and_then(|json| {
                        serde_json::from_str(&json)
                            .inspect_err(|err| {
                                tracing::warn!(workspace = %ws.name, origin, doc, error = %err, "an unreadable editing list from another node");
                            })
                            .ok()
                    })
                    .unwrap_or_default();
                let news = st.editing.set_remote(doc, origin, editors, now);
                if let Some(editors) = news.filter(|_| emit && self.speaks(st)) {
                    ticket = self.emit(ws, st, editors.event()).or(ticket);
                }
            }
        }
        ticket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: Option<&str>) -> Heard {
        Heard::Set {
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn messages_apply_in_order_and_a_gap_asks_for_a_read() {
        let mut roster = Roster::default();
        assert!(roster.speaks(5), "alone");
        let (changes, gap) = roster.hear(3, 1, set(NODE_KEY, Some("1")));
        assert_eq!(changes, vec![(NODE_KEY.to_owned(), Some("1".to_owned()))]);
        assert!(!gap);
        assert!(!roster.speaks(5), "node 3 has it loaded too");
        assert!(roster.speaks(2));
        // A repeat changes nothing; a message after a lost one applies and asks for a read.
        assert_eq!(roster.hear(3, 1, set("p/ada", Some("{}"))), (vec![], false));
        let (changes, gap) = roster.hear(3, 3, set("p/ada", Some("{}")));
        assert_eq!(changes.len(), 1);
        assert!(gap);
        assert!(roster.behind(3, 4));
        assert!(!roster.behind(3, 3));
        // The read: what message 2 did shows, an older read changes nothing.
        let read = Told {
            seq: 4,
            entries: HashMap::from([
                (NODE_KEY.to_owned(), "1".to_owned()),
                ("p/ada".to_owned(), "{}".to_owned()),
                ("e/acme/q".to_owned(), "[]".to_owned()),
            ]),
        };
        let changed = roster.reread(vec![(3, read.clone())]);
        assert_eq!(
            changed,
            vec![(3, vec![("e/acme/q".to_owned(), Some("[]".to_owned()))])]
        );
        assert!(roster.reread(vec![(3, read)]).is_empty());
        // A read at the number of the message that showed a gap repairs what the lost one
        // said.
        roster.hear(3, 6, set("p/bob", Some("{}")));
        let read = Told {
            seq: 6,
            entries: HashMap::from([
                (NODE_KEY.to_owned(), "1".to_owned()),
                ("p/bob".to_owned(), "{}".to_owned()),
            ]),
        };
        let mut changed = roster.reread(vec![(3, read)]);
        changed[0].1.sort();
        assert_eq!(
            changed,
            vec![(
                3,
                vec![("e/acme/q".to_owned(), None), ("p/ada".to_owned(), None)]
            )]
        );
        let stale = Told {
            seq: 5,
            entries: HashMap::new(),
        };
        assert!(
            roster.reread(vec![(3, stale)]).is_empty(),
            "older than heard"
        );
        let mut keys = roster.forget(3);
        keys.sort();
        assert_eq!(keys, ["n", "p/bob"]);
        assert!(roster.speaks(5));
    }

    #[test]
    fn all_replaces_a_node_s_entries() {
        let mut roster = Roster::default();
        roster.hear(7, 1, set("p/ada", Some("a")));
        roster.hear(7, 2, set("p/bob", Some("b")));
        let (mut changes, gap) = roster.hear(
            7,
            9,
            Heard::All {
                entries: HashMap::from([("p/bob".to_owned(), "b2".to_owned())]),
            },
        );
        changes.sort();
        assert!(!gap, "it says everything");
        assert_eq!(
            changes,
            vec![
                ("p/ada".to_owned(), None),
                ("p/bob".to_owned(), Some("b2".to_owned()))
            ]
        );
    }
}
