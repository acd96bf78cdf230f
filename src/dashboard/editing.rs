//! "Ada is editing": who is in each document of a workspace, from the documents' awareness,
//! and who of them changed their cursor or selection lately (active). [`Editing`] is plain
//! state: it says when the list of a document changed ([`Editors`]), and the hub publishes that
//! as an `editing` event.
//!
//! In a cluster each node sees the awareness of its own connections: it tells the others who
//! is in each document through it ([`Editing::told`]) and hears what they say
//! ([`Editing::set_remote`]); a document's list is all of it together.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_crdt::AwarenessChange;
use tokio::time::Instant;

use super::catalogue::Event;
use super::catalogue::UserId;
use super::presence;
use crate::docname::DocName;

/// Who is in the documents of one workspace.
#[derive(Debug)]
pub struct Editing {
    docs: HashMap<String, DocEditing>,
    /// What changed of who is in each document through this node, to tell the others: the
    /// document and its new list (empty: nobody any more).
    telling: Vec<(String, Vec<NodeEditor>)>,
    /// A user is active while their awareness changed within this.
    idle: Duration,
}

/// The awareness clients of one document and what was last published about them.
#[derive(Debug, Default)]
struct DocEditing {
    /// By awareness client id: an id belongs to the connection that announced it last.
    clients: HashMap<u64, Editor>,
    /// Who is in it through the other nodes of a cluster, by origin.
    remote: HashMap<i64, Vec<NodeEditor>>,
    /// Who is in it through this node, as last told to the others.
    told: Vec<NodeEditor>,
    /// (user, active) as last published.
    published: Vec<(String, bool)>,
}

/// One user in a document through one node, as that node tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEditor {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub active: bool,
}

#[derive(Debug)]
struct Editor {
    user: String,
    name: Option<String>,
    last_change: Instant,
}

/// Who is in a document, as an `editing` event (and `GET /api/v1/editing`) says it:
/// `{"document","query_id"?,"users":[{"user_id","name"?,"active"}]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Editors {
    pub document: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_id: Option<Value>,
    pub users: Vec<EditorSummary>,
}

/// One user in a document: each user once, named if any of their clients gave a name, active
/// if any of them changed lately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EditorSummary {
    pub user_id: UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub active: bool,
}

impl Editors {
    /// The `editing` event that says it.
    pub fn event(&self) -> Event {
        let fields = match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        Event::server("editing", fields)
    }
}

impl Editing {
    /// Nobody anywhere; a user is active while their awareness changed within `idle`.
    pub fn new(idle: Duration) -> Editing {
        Editing {
            docs: HashMap::new(),
            telling: Vec::new(),
            idle,
        }
    }

    /// What a connection of `user` changed in `doc`'s awareness, at `now`; the document's new
    /// list when it changed.
    pub fn apply(
        &mut self,
        doc: &str,
        user: &str,
        changes: Vec<AwarenessChange>,
        now: Instant,
    ) -> Option<Editors> {
        let entry = self.docs.entry(doc.to_owned()).or_default();
        for change in changes {
            let key = change.client;
            let Some(state) = change.state else {
                entry.clients.remove(&key);
                continue;
            };
            let name = presence::from_awareness(&state).name;
            let editor = entry.clients.entry(key).or_insert_with(|| Editor {
                user: user.to_owned(),
                name: None,
                last_change: now,
            });
            if editor.user != user {
                // The id moved to another user's connection.
                *editor = Editor {
                    user: user.to_owned(),
                    name: None,
                    last_change: now,
                };
            }
            if change.changed {
                editor.last_change = now;
            }
            if name.is_some() {
                editor.name = name;
            }
        }
        self.due(doc, now)
    }

    /// What the node `origin` says of who is in `doc` through it (empty: nobody); the
    /// document's new list when it changed.
    pub fn set_remote(
        &mut self,
        doc: &str,
        origin: i64,
        editors: Vec<NodeEditor>,
        now: Instant,
    ) -> Option<Editors> {
        if editors.is_empty() && !self.docs.contains_key(doc) {
            return None;
        }
        let entry = self.docs.entry(doc.to_owned()).or_default();
        if editors.is_empty() {
            entry.remote.remove(&origin);
        } else {
            entry.remote.insert(origin, editors);
        }
        self.due(doc, now)
    }

    /// What to tell the other nodes: each document whose list through this node changed, with
    /// that list.
    pub fn told(&mut self) -> Vec<(String, Vec<NodeEditor>)> {
        std::mem::take(&mut self.telling)
    }

    /// Who is in each document through this node, as last told (to tell it all again).
    pub fn local(&self) -> Vec<(String, Vec<NodeEditor>)> {
        self.docs
            .iter()
            .filter(|(_, entry)| !entry.told.is_empty())
            .map(|(doc, entry)| (doc.clone(), entry.told.clone()))
            .collect()
    }

    /// Whether nobody is in any document (here or, as far as told, elsewhere).
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The lists that changed by themselves since they were last said (users who turned
    /// inactive).
    pub fn tick(&mut self, now: Instant) -> Vec<Editors> {
        let docs: Vec<String> = self.docs.keys().cloned().collect();
        docs.iter().filter_map(|doc| self.due(doc, now)).collect()
    }

    /// Who is in each document now, by document name: what a dashboard opened later starts
    /// from.
    pub fn now(&self, now: Instant) -> Vec<Editors> {
        let mut docs: Vec<(&String, &DocEditing)> = self
            .docs
            .iter()
            .filter(|(_, entry)| !entry.clients.is_empty() || !entry.remote.is_empty())
            .collect();
        docs.sort_by_key(|(doc, _)| *doc);
        docs.into_iter()
            .map(|(doc, entry)| editors(doc, entry, now, self.idle).1)
            .collect()
    }

    /// `doc`'s list, when it differs from what was last said; a document nobody is in goes.
    fn due(&mut self, doc: &str, now: Instant) -> Option<Editors> {
        let entry = self.docs.get_mut(doc)?;
        let local = local_editors(entry, now, self.idle);
        if local != entry.told {
            entry.told.clone_from(&local);
            self.telling.push((doc.to_owned(), local));
        }
        let (summary, list) = editors(doc, entry, now, self.idle);
        let gone = entry.clients.is_empty() && entry.remote.is_empty();
        let news = summary != entry.published;
        entry.published = summary;
        if gone {
            self.docs.remove(doc);
        }
        news.then_some(list)
    }
}

/// Who is in a document through this node: each user once, by user id.
fn local_editors(entry: &DocEditing, now: Instant, idle: Duration) -> Vec<NodeEditor> {
    let mut users: BTreeMap<&str, (Option<&str>, bool)> = BTreeMap::new();
    for editor in entry.clients.values() {
        let active = now.duration_since(editor.last_change) < idle;
        let seen = users.entry(&editor.user).or_insert((None, false));
        seen.0 = seen.0.or(editor.name.as_deref());
        seen.1 |= active;
    }
    users
        .into_iter()
        .map(|(user, (name, active))| NodeEditor {
            user: user.to_owned(),
            name: name.map(str::to_owned),
            active,
        })
        .collect()
}

/// Who is in `doc` through every node: the summary to compare with what was published, and
/// the list.
fn editors(
    doc: &str,
    entry: &DocEditing,
    now: Instant,
    idle: Duration,
) -> (Vec<(String, bool)>, Editors) {
    let mut users: BTreeMap<&str, (Option<&str>, bool)> = BTreeMap::new();
    let local = local_editors(entry, now, idle);
    for editor in local.iter().chain(entry.remote.values().flatten()) {
        let seen = users.entry(&editor.user).or_insert((None, false));
        seen.0 = seen.0.or(editor.name.as_deref());
        seen.1 |= editor.active;
    }
    let summary = users
        .iter()
        .map(|(user, (_, active))| ((*user).to_owned(), *active))
        .collect();
    let query_id = DocName::parse(doc)
        .ok()
        .as_ref()
        .and_then(DocName::query_id)
        .map(|id| {
            id.parse::<u64>()
                .map_or_else(|_| Value::String(id.to_owned()), Value::from)
        });
    let list = Editors {
        document: doc.to_owned(),
        query_id,
        users: users
            .into_iter()
            .map(|(user, (name, active))| EditorSummary {
                user_id: UserId(user.to_owned()),
                name: name.map(str::to_owned),
                active,
            })
            .collect(),
    };
    (summary, list)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn change(client: u64, state: Option<&str>) -> AwarenessChange {
        AwarenessChange {
            client,
            state: state.map(Into::into),
            changed: true,
        }
    }

    #[test]
    fn a_document_lists_each_user_once_and_says_so_only_when_it_changes() {
        let mut editing = Editing::new(IDLE);
        let t0 = Instant::now();
        let doc = "acme/queries/456";
        let news = editing
            .apply(
                doc,
                "1",
                vec![change(10, Some(r#"{"user":{"name":"Ada"}}"#))],
                t0,
            )
            .expect("Ada came in");
        assert_eq!(
            serde_json::to_value(&news).unwrap(),
            serde_json::json!({"document": doc, "query_id": 456,
                "users": [{"user_id": 1, "name": "Ada", "active": true}]})
        );
        // A second tab of the same user changes nothing said.
        assert_eq!(
            editing.apply(doc, "1", vec![change(11, Some("{}"))], t0),
            None
        );
        assert_eq!(editing.now(t0).len(), 1);
        // Idle after a while, without any input.
        let later = t0 + IDLE;
        let idle = editing.tick(later);
        assert!(!idle[0].users[0].active);
        assert!(editing.tick(later).is_empty());
        // Both tabs gone: the document goes, said once.
        let gone = editing
            .apply(doc, "1", vec![change(10, None), change(11, None)], later)
            .expect("Ada left");
        assert!(gone.users.is_empty());
        assert!(editing.now(later).is_empty());
        assert!(editing.tick(later).is_empty());
    }

    #[test]
    fn a_document_lists_who_is_in_it_through_every_node() {
        let mut editing = Editing::new(IDLE);
        let t0 = Instant::now();
        let doc = "acme/queries/7";
        let ada = NodeEditor {
            user: "ada".into(),
            name: Some("Ada".into()),
            active: true,
        };
        let listed = editing
            .set_remote(doc, 2, vec![ada.clone()], t0)
            .expect("Ada came in on another node");
        assert_eq!(listed.users.len(), 1);
        assert!(
            editing.told().is_empty(),
            "nobody is in it through this node"
        );
        let both = editing
            .apply(doc, "bob", vec![change(3, Some("{}"))], t0)
            .expect("Bob came in here");
        let users: Vec<&str> = both.users.iter().map(|u| u.user_id.0.as_str()).collect();
        assert_eq!(users, ["ada", "bob"]);
        let told = editing.told();
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].1[0].user, "bob");
        assert_eq!(editing.now(t0).len(), 1);
        // Ada's node goes: she goes with it; Bob leaves: the document goes, told once.
        let left = editing
            .set_remote(doc, 2, Vec::new(), t0)
            .expect("Ada left with her node");
        assert_eq!(left.users.len(), 1);
        let gone = editing
            .apply(doc, "bob", vec![change(3, None)], t0)
            .expect("Bob left");
        assert!(gone.users.is_empty());
        assert_eq!(editing.told(), vec![(doc.to_owned(), Vec::new())]);
        assert!(editing.now(t0).is_empty());
        assert_eq!(editing.set_remote(doc, 2, Vec::new(), t0), None);
    }

    #[test]
    fn a_client_id_taken_over_by_another_user_is_theirs() {
        let mut editing = Editing::new(IDLE);
        let t0 = Instant::now();
        editing.apply("w/doc", "ada", vec![change(5, Some("{}"))], t0);
        let moved = editing
            .apply("w/doc", "bob", vec![change(5, Some("{}"))], t0)
            .unwrap();
        assert_eq!(moved.users.len(), 1);
        assert_eq!(moved.users[0].user_id, UserId("bob".into()));
        assert_eq!(moved.query_id, None);
    }
}
