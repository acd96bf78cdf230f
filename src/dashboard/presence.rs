//! One user's presence, aggregated across everything that speaks for them: dashboard
//! connections, Yjs clients in the workspace's presence room, and HTTP pollers.
//!
//! Pure logic over explicit instants, so the idle and debounce rules are tested without
//! waiting. The hub decides when to look ([`UserPresence::due`]) and publishes what it returns.
//!
//! In a cluster each node knows the sources connected to it, tells the others what they say
//! ([`UserPresence::tell`], a [`NodePresence`]), and hears what the others' say
//! ([`UserPresence::set_remote`]): a user's presence is all of it together, online while any
//! node has them online.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::protocol::{PresenceStatus, PresenceUpdate, MAX_PRESENCE_FIELD_BYTES};
use crate::clock::rfc3339;
use crate::net::ConnId;

/// The presence rules.
#[derive(Debug, Clone, Copy)]
pub struct PresenceSettings {
    /// Without activity for this long, a user is idle.
    pub idle_after: Duration,
    /// Page and workspace changes go out at most this often; status changes at once.
    pub debounce: Duration,
    /// An HTTP poller that has not renewed its presence for this long is gone.
    pub poll_ttl: Duration,
}

/// What speaks for a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A dashboard connection on `/ws`.
    Dashboard(ConnId),
    /// An awareness client id in the presence room (whichever connection announced it last).
    Awareness { client: u64 },
    /// The user's HTTP poller (`POST /api/v1/presence`).
    Poller,
}

/// The latest word of one source.
#[derive(Debug, Clone)]
struct Seen {
    /// What the source said; `Online` until it says otherwise.
    status: PresenceStatus,
    fields: PresenceUpdate,
    last_active: Instant,
    /// Pollers only: gone after this.
    expires: Option<Instant>,
}

/// The presence fields events and the API carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub status: PresenceStatus,
    pub workspace: Option<String>,
    pub current_page: Option<String>,
    pub name: Option<String>,
    pub avatar: Option<String>,
    pub color: Option<String>,
    pub last_active: Option<OffsetDateTime>,
    pub last_seen: Option<OffsetDateTime>,
}

impl Snapshot {
    /// The object's fields (without `type`), with `user_id` first.
    pub fn fields(&self, user: &str) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("user_id".into(), super::catalogue::user_id_value(user));
        fields.insert(
            "status".into(),
            serde_json::to_value(self.status).unwrap_or(Value::Null),
        );
        let texts = [
            ("workspace", &self.workspace),
            ("current_page", &self.current_page),
            ("name", &self.name),
            ("avatar", &self.avatar),
            ("color", &self.color),
        ];
        for (key, value) in texts {
            if let Some(value) = value {
                fields.insert(key.into(), Value::String(value.clone()));
            }
        }
        let times = [
            ("last_active", self.last_active),
            ("last_seen", self.last_seen),
        ];
        for (key, at) in times {
            if let Some(at) = at.and_then(rfc3339) {
                fields.insert(key.into(), Value::String(at));
            }
        }
        fields
    }
}

/// The presence fields of an awareness state: at its top level (`status`, `workspace`,
/// `current_page`, `name`, `avatar`, `color`), or under `user` as y-codemirror and most Yjs
/// editors put the name and color.
pub fn from_awareness(json: &str) -> PresenceUpdate {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(json) else {
        return PresenceUpdate::default();
    };
    let nested = fields.get("user").and_then(Value::as_object);
    let text = |key: &str| {
        fields
            .get(key)
            .or_else(|| nested.and_then(|user| user.get(key)))
            .and_then(Value::as_str)
            .filter(|s| s.len() <= MAX_PRESENCE_FIELD_BYTES)
            .map(str::to_owned)
    };
    PresenceUpdate {
        status: text("status").and_then(|s| PresenceStatus::parse(&s)),
        workspace: text("workspace"),
        current_page: text("current_page"),
        name: text("name"),
        avatar: text("avatar"),
        color: text("color"),
    }
}

/// What one node of a cluster says of a user: the presence its own sources give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePresence {
    /// `status` is online or idle (a node none of whose sources speaks for the user says
    /// nothing).
    #[serde(flatten)]
    pub fields: PresenceUpdate,
    /// Their latest activity there, in Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_ms: Option<u64>,
    /// Whether a dashboard connection or a poller speaks for them there (not only a Yjs
    /// client in the presence room): then every node mirrors them into that room.
    #[serde(default)]
    pub direct: bool,
}

impl NodePresence {
    /// Whether `other` says the same, but for the time of the latest activity (which moves
    /// with every frame and is not worth telling the cluster about each time).
    fn same_as(&self, other: &NodePresence) -> bool {
        self.fields == other.fields && self.direct == other.direct
    }
}

fn wall(ms: u64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// What was last published for a user.
#[derive(Debug, Clone, PartialEq)]
struct Emitted {
    status: PresenceStatus,
    workspace: Option<String>,
    current_page: Option<String>,
    /// How the user shows: name, avatar and colour.
    looks: [Option<String>; 3],
    at: Instant,
}

/// One user's presence.
#[derive(Debug, Default)]
pub struct UserPresence {
    /// This node's sources.
    sources: HashMap<Source, Seen>,
    /// What the other nodes of a cluster say, by origin.
    remote: HashMap<i64, NodePresence>,
    /// What this node last told the others.
    told: Option<NodePresence>,
    /// Wall time of the latest activity, for `last_active`.
    last_active_wall: Option<OffsetDateTime>,
    /// When the last source went (persisted by the hub).
    pub last_seen: Option<OffsetDateTime>,
    /// The latest name any source gave, kept once they are gone (persisted by the hub).
    last_name: Option<String>,
    emitted: Option<Emitted>,
}

impl UserPresence {
    /// A user known from an earlier run: offline since `last_seen`.
    pub fn offline_since(last_seen: Option<OffsetDateTime>, name: Option<String>) -> UserPresence {
        UserPresence {
            last_seen,
            last_name: name,
            ..UserPresence::default()
        }
    }

    /// Records what `source` says. `active` is whether it counts as activity (a renewal that
    /// changes nothing does not). A source that says `offline` is removed.
    pub fn update(&mut self, source: Source, update: &PresenceUpdate, active: bool, now: Instant) {
        if update.status == Some(PresenceStatus::Offline) {
            self.remove(&source);
            return;
        }
        if update.name.is_some() {
            self.last_name.clone_from(&update.name);
        }
        let seen = self.sources.entry(source).or_insert_with(|| Seen {
            status: PresenceStatus::Online,
            fields: PresenceUpdate::default(),
            last_active: now,
            expires: None,
        });
        if let Some(status) = update.status {
            seen.status = status;
        }
        let fields = [
            (&mut seen.fields.workspace, &update.workspace),
            (&mut seen.fields.current_page, &update.current_page),
            (&mut seen.fields.name, &update.name),
            (&mut seen.fields.avatar, &update.avatar),
            (&mut seen.fields.color, &update.color),
        ];
        for (slot, value) in fields {
            if value.is_some() {
                slot.clone_from(value);
            }
        }
        if active && seen.status == PresenceStatus::Online {
            seen.last_active = now;
            self.last_active_wall = Some(OffsetDateTime::now_utc());
        }
    }

    /// Notes activity from `source` (any frame but a ping) without changing what it said.
    pub fn touch(&mut self, source: &Source, now: Instant) {
        if let Some(seen) = self.sources.get_mut(source) {
            if seen.status == PresenceStatus::Online {
                seen.last_active = now;
                self.last_active_wall = Some(OffsetDateTime::now_utc());
            }
        }
    }

    /// Keeps a poller alive until `until`.
    pub fn expire_at(&mut self, source: &Source, until: Instant) {
        if let Some(seen) = self.sources.get_mut(source) {
            seen.expires = Some(until);
        }
    }

    /// Forgets `source`; the last one going anywhere makes the user offline.
    pub fn remove(&mut self, source: &Source) {
        if self.sources.remove(source).is_some() && !self.is_connected() {
            self.last_seen = Some(OffsetDateTime::now_utc());
        }
    }

    /// What the node `origin` says of the user now (`None`: none of its sources speaks for
    /// them any more; the last one going anywhere makes the user offline).
    pub fn set_remote(&mut self, origin: i64, said: Option<NodePresence>) {
        match said {
            Some(node) => {
                if node.fields.name.is_some() {
                    self.last_name.clone_from(&node.fields.name);
                }
                self.remote.insert(origin, node);
            }
            None => {
                if self.remote.remove(&origin).is_some() && !self.is_connected() {
                    self.last_seen = Some(OffsetDateTime::now_utc());
                }
            }
        }
    }

    /// What this node should tell the others of the user, when it changed since it last did:
    /// `Some(None)` once none of its sources speaks for them any more.
    pub fn tell(
        &mut self,
        now: Instant,
        settings: &PresenceSettings,
    ) -> Option<Option<NodePresence>> {
        let local = (!self.sources.is_empty()).then(|| {
            let view = self.view(now, settings, false);
            NodePresence {
                fields: PresenceUpdate {
                    status: Some(view.status),
                    workspace: view.workspace,
                    current_page: view.current_page,
                    name: view.name,
                    avatar: view.avatar,
                    color: view.color,
                },
                last_active_ms: view.last_active.map(crate::clock::unix_ms),
                direct: self.has_local_direct_source(),
            }
        });
        let same = match (&self.told, &local) {
            (None, None) => true,
            (Some(told), Some(local)) => told.same_as(local),
            _ => false,
        };
        if same {
            return None;
        }
        self.told.clone_from(&local);
        Some(local)
    }

    /// What this node told the others last.
    pub fn told(&self) -> Option<&NodePresence> {
        self.told.as_ref()
    }

    /// Drops pollers that stopped renewing.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<_> = self
            .sources
            .iter()
            .filter(|(_, seen)| seen.expires.is_some_and(|at| at <= now))
            .map(|(source, _)| source.clone())
            .collect();
        for source in expired {
            self.remove(&source);
        }
    }

    /// Whether something other than awareness in the presence room speaks for the user (a
    /// dashboard connection or a poller) on any node: then the server mirrors the user into
    /// that room.
    pub fn has_direct_source(&self) -> bool {
        self.has_local_direct_source() || self.remote.values().any(|node| node.direct)
    }

    fn has_local_direct_source(&self) -> bool {
        self.sources
            .keys()
            .any(|source| !matches!(source, Source::Awareness { .. }))
    }

    /// Whether anything speaks for the user, here or on another node.
    pub fn is_connected(&self) -> bool {
        !self.sources.is_empty() || !self.remote.is_empty()
    }

    /// The user's presence now, across the cluster: online when any source is online and
    /// active within the idle timeout (or another node says so), idle when connected
    /// otherwise, offline when nothing speaks for them. The text fields come from the most
    /// recently active source that has them.
    pub fn current(&self, now: Instant, settings: &PresenceSettings) -> Snapshot {
        self.view(now, settings, true)
    }

    /// The user's presence from this node's sources, and `with_remote` the other nodes' too.
    fn view(&self, now: Instant, settings: &PresenceSettings, with_remote: bool) -> Snapshot {
        let wall_now = crate::clock::now_ms();
        let local = self.sources.values().map(|seen| {
            let quiet = now.saturating_duration_since(seen.last_active);
            let status = if seen.status == PresenceStatus::Online && quiet < settings.idle_after {
                PresenceStatus::Online
            } else {
                PresenceStatus::Idle
            };
            let quiet_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX);
            (wall_now.saturating_sub(quiet_ms), status, &seen.fields)
        });
        let remote = self.remote.values().filter(|_| with_remote).map(|node| {
            let status = node.fields.status.unwrap_or(PresenceStatus::Online);
            (node.last_active_ms.unwrap_or(0), status, &node.fields)
        });
        let mut views: Vec<(u64, PresenceStatus, &PresenceUpdate)> = local.chain(remote).collect();
        // The most recently active first.
        views.sort_by_key(|(at, ..)| std::cmp::Reverse(*at));
        let status = if views.is_empty() {
            PresenceStatus::Offline
        } else if views
            .iter()
            .any(|(_, status, _)| *status == PresenceStatus::Online)
        {
            PresenceStatus::Online
        } else {
            PresenceStatus::Idle
        };
        let pick = |get: fn(&PresenceUpdate) -> &Option<String>| {
            views.iter().find_map(|(_, _, fields)| get(fields).clone())
        };
        let remote_active = self
            .remote
            .values()
            .filter(|_| with_remote)
            .filter_map(|node| node.last_active_ms.and_then(wall))
            .max();
        Snapshot {
            status,
            workspace: pick(|f| &f.workspace),
            current_page: pick(|f| &f.current_page),
            // Offline, a user keeps the name they last went by.
            name: pick(|f| &f.name).or_else(|| self.last_name.clone()),
            avatar: pick(|f| &f.avatar),
            color: pick(|f| &f.color),
            last_active: self.last_active_wall.max(remote_active),
            last_seen: (status == PresenceStatus::Offline)
                .then_some(self.last_seen)
                .flatten(),
        }
    }

    /// What to publish now, if anything: a status change at once, and the first page or
    /// workspace after coming online; a page or workspace change once `debounce` has passed
    /// since the last publication (the hub looks again on its tick, so the latest page goes out
    /// at the end of the window).
    pub fn due(&mut self, now: Instant, settings: &PresenceSettings) -> Option<Snapshot> {
        let current = self.current(now, settings);
        let looks = [&current.name, &current.avatar, &current.color];
        let publish = match &self.emitted {
            // Someone never seen online stays silent until they appear.
            None => current.status != PresenceStatus::Offline,
            Some(last) if last.status != current.status => true,
            // A new name or look shows at once (it seldom changes; a page often does).
            Some(last)
                if last.looks.iter().ne(looks) && current.status != PresenceStatus::Offline =>
            {
                true
            }
            Some(last) => {
                let moved = last.workspace != current.workspace
                    || last.current_page != current.current_page;
                // Where someone is, said for the first time since they came online, is news
                // rather than a change: it goes out at once.
                let first = last.workspace.is_none() && last.current_page.is_none();
                moved
                    && current.status != PresenceStatus::Offline
                    && (first || now.duration_since(last.at) >= settings.debounce)
            }
        };
        if !publish {
            return None;
        }
        self.emitted = Some(Emitted {
            status: current.status,
            workspace: current.workspace.clone(),
            current_page: current.current_page.clone(),
            looks: looks.map(Clone::clone),
            at: now,
        });
        Some(current)
    }

    /// Whether [`UserPresence::due`] may have something to say later without any new input: a
    /// debounced page change, or an online user who will turn idle.
    pub fn may_change(&self) -> bool {
        self.is_connected()
            || self
                .emitted
                .as_ref()
                .is_some_and(|e| e.status != PresenceStatus::Offline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: PresenceSettings = PresenceSettings {
        idle_after: Duration::from_secs(300),
        debounce: Duration::from_secs(10),
        poll_ttl: Duration::from_secs(90),
    };

    fn page(page: &str) -> PresenceUpdate {
        PresenceUpdate {
            current_page: Some(page.into()),
            workspace: Some("queries".into()),
            ..PresenceUpdate::default()
        }
    }

    #[test]
    fn online_then_idle_then_offline_with_last_seen() {
        let t0 = Instant::now();
        let mut user = UserPresence::default();
        assert_eq!(user.due(t0, &SETTINGS), None, "never seen: nothing to say");
        user.update(
            Source::Dashboard(ConnId(1)),
            &page("/queries/456"),
            true,
            t0,
        );
        let first = user.due(t0, &SETTINGS).unwrap();
        assert_eq!(first.status, PresenceStatus::Online);
        assert_eq!(first.current_page.as_deref(), Some("/queries/456"));
        assert_eq!(user.due(t0, &SETTINGS), None, "nothing changed");

        let later = t0 + SETTINGS.idle_after;
        assert_eq!(
            user.due(later, &SETTINGS).unwrap().status,
            PresenceStatus::Idle
        );
        user.touch(&Source::Dashboard(ConnId(1)), later);
        assert_eq!(
            user.due(later, &SETTINGS).unwrap().status,
            PresenceStatus::Online
        );

        user.remove(&Source::Dashboard(ConnId(1)));
        let gone = user.due(later, &SETTINGS).unwrap();
        assert_eq!(gone.status, PresenceStatus::Offline);
        assert!(gone.last_seen.is_some());
        let fields = gone.fields("123");
        assert_eq!(fields["user_id"], serde_json::json!(123));
        assert_eq!(fields["status"], "offline");
        assert!(fields["last_seen"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn page_changes_are_debounced_and_status_changes_are_not() {
        let t0 = Instant::now();
        let mut user = UserPresence::default();
        user.update(Source::Dashboard(ConnId(1)), &page("/a"), true, t0);
        assert!(user.due(t0, &SETTINGS).is_some());
        let t1 = t0 + Duration::from_secs(2);
        user.update(Source::Dashboard(ConnId(1)), &page("/b"), true, t1);
        assert_eq!(user.due(t1, &SETTINGS), None, "within the window");
        let t2 = t0 + Duration::from_secs(3);
        user.update(Source::Dashboard(ConnId(1)), &page("/c"), true, t2);
        let end = t0 + SETTINGS.debounce;
        assert_eq!(
            user.due(end, &SETTINGS).unwrap().current_page.as_deref(),
            Some("/c"),
            "the latest page at the end of the window"
        );
        let idle = PresenceUpdate {
            status: Some(PresenceStatus::Idle),
            ..PresenceUpdate::default()
        };
        user.update(Source::Dashboard(ConnId(1)), &idle, true, end);
        assert_eq!(
            user.due(end, &SETTINGS).unwrap().status,
            PresenceStatus::Idle
        );
    }

    #[test]
    fn a_new_name_or_colour_shows_at_once() {
        let t0 = Instant::now();
        let mut user = UserPresence::default();
        user.update(Source::Dashboard(ConnId(1)), &page("/a"), true, t0);
        assert!(user.due(t0, &SETTINGS).is_some());
        let t1 = t0 + Duration::from_secs(1);
        let recolour = PresenceUpdate {
            color: Some("#0a0".into()),
            ..PresenceUpdate::default()
        };
        user.update(Source::Dashboard(ConnId(1)), &recolour, true, t1);
        let shown = user
            .due(t1, &SETTINGS)
            .expect("within the page debounce, still news");
        assert_eq!(shown.color.as_deref(), Some("#0a0"));
        assert_eq!(user.due(t1, &SETTINGS), None, "said once");
        let rename = PresenceUpdate {
            name: Some("Ada L.".into()),
            ..PresenceUpdate::default()
        };
        user.update(Source::Dashboard(ConnId(1)), &rename, true, t1);
        assert_eq!(
            user.due(t1, &SETTINGS).unwrap().name.as_deref(),
            Some("Ada L.")
        );
    }

    #[test]
    fn awareness_states_give_presence_fields_top_level_or_under_user() {
        let update = from_awareness(
            r##"{"status":"idle","current_page":"/queries/1","user":{"name":"Ada","color":"#f00"},"cursor":{}}"##,
        );
        assert_eq!(update.status, Some(PresenceStatus::Idle));
        assert_eq!(update.current_page.as_deref(), Some("/queries/1"));
        assert_eq!(update.name.as_deref(), Some("Ada"));
        assert_eq!(update.color.as_deref(), Some("#f00"));
        assert_eq!(from_awareness("not json"), PresenceUpdate::default());
    }

    #[test]
    fn the_first_page_after_coming_online_is_not_held_back() {
        let t0 = Instant::now();
        let mut user = UserPresence::default();
        user.update(
            Source::Dashboard(ConnId(1)),
            &PresenceUpdate::default(),
            true,
            t0,
        );
        assert!(user.due(t0, &SETTINGS).unwrap().current_page.is_none());
        user.update(Source::Dashboard(ConnId(1)), &page("/a"), true, t0);
        assert_eq!(
            user.due(t0, &SETTINGS).unwrap().current_page.as_deref(),
            Some("/a")
        );
        user.update(Source::Dashboard(ConnId(1)), &page("/b"), true, t0);
        assert_eq!(user.due(t0, &SETTINGS), None, "a change: debounced");
    }

    #[test]
    fn a_user_is_online_while_any_node_has_them_and_offline_once_the_last_goes() {
        let t0 = Instant::now();
        let mut here = UserPresence::default();
        here.update(Source::Dashboard(ConnId(1)), &page("/a"), true, t0);
        let told = here
            .tell(t0, &SETTINGS)
            .expect("news for the cluster")
            .expect("connected here");
        assert_eq!(told.fields.status, Some(PresenceStatus::Online));
        assert_eq!(told.fields.current_page.as_deref(), Some("/a"));
        assert!(told.direct);
        assert_eq!(here.tell(t0, &SETTINGS), None, "told once");
        // Activity alone is not worth a message; a new page is.
        here.touch(&Source::Dashboard(ConnId(1)), t0);
        assert_eq!(here.tell(t0, &SETTINGS), None);

        // What that node told, heard on another one where the user is connected too.
        let mut there = UserPresence::default();
        there.set_remote(7, Some(told));
        assert_eq!(there.current(t0, &SETTINGS).status, PresenceStatus::Online);
        assert!(there.has_direct_source(), "mirrored everywhere");
        let idle = PresenceUpdate {
            status: Some(PresenceStatus::Idle),
            current_page: Some("/b".into()),
            ..PresenceUpdate::default()
        };
        there.update(Source::Poller, &idle, true, t0);
        let merged = there.current(t0, &SETTINGS);
        assert_eq!(
            merged.status,
            PresenceStatus::Online,
            "online on the other node"
        );
        assert_eq!(
            merged.current_page.as_deref(),
            Some("/b"),
            "the latest active"
        );
        assert!(there.due(t0, &SETTINGS).is_some());
        assert!(there.tell(t0, &SETTINGS).is_some_and(|told| told.is_some()));

        // The poller goes: still online through the other node.
        there.remove(&Source::Poller);
        assert_eq!(there.current(t0, &SETTINGS).status, PresenceStatus::Online);
        assert_eq!(
            there.tell(t0, &SETTINGS),
            Some(None),
            "nothing here any more"
        );
        assert_eq!(
            there.due(t0, &SETTINGS),
            None,
            "same status; the page debounced"
        );
        // The other node's last source goes: offline, with when.
        there.set_remote(7, None);
        let gone = there.due(t0, &SETTINGS).expect("offline is news");
        assert_eq!(gone.status, PresenceStatus::Offline);
        assert!(gone.last_seen.is_some());
        assert_eq!(gone.current_page, None);
    }

    #[test]
    fn a_user_is_online_while_any_source_is() {
        let t0 = Instant::now();
        let mut user = UserPresence::default();
        let idle = PresenceUpdate {
            status: Some(PresenceStatus::Idle),
            ..PresenceUpdate::default()
        };
        user.update(Source::Dashboard(ConnId(1)), &idle, true, t0);
        assert_eq!(user.current(t0, &SETTINGS).status, PresenceStatus::Idle);
        user.update(Source::Poller, &page("/x"), true, t0);
        user.expire_at(&Source::Poller, t0 + SETTINGS.poll_ttl);
        assert_eq!(user.current(t0, &SETTINGS).status, PresenceStatus::Online);
        user.expire(t0 + SETTINGS.poll_ttl);
        assert_eq!(user.current(t0, &SETTINGS).status, PresenceStatus::Idle);
        user.remove(&Source::Dashboard(ConnId(1)));
        assert_eq!(user.current(t0, &SETTINGS).status, PresenceStatus::Offline);
        assert!(!user.is_connected());
    }
}
