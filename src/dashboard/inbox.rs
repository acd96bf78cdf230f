//! A user's inbox: unread chat messages per session (the chat badges) and the latest events
//! addressed to them. [`Inbox`] is plain state, persisted in the user's record; the hub pushes
//! its [`ChatBadges`] to the user's connections and writes its [`Inbox::awareness_state`] into
//! the user's inbox room, where Yjs clients read it through awareness.

use std::collections::{BTreeMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::catalogue::UserId;

/// Notifications kept in a user's inbox.
const NOTIFICATIONS: usize = 20;

/// One user's inbox, as stored in their record.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox {
    /// Unread messages per chat session.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    badges: BTreeMap<String, u32>,
    /// The sessions of `badges`, the one whose last message is oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    badge_order: VecDeque<String>,
    /// The latest events addressed to the user, oldest first, as sent.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    notifications: VecDeque<String>,
}

/// A user's chat badges as they are pushed: `{"unread":{"999":2},"total":2}` (with
/// `"type":"chat_badges"` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatBadges {
    pub unread: BTreeMap<String, u32>,
    pub total: u64,
}

impl Inbox {
    /// One more unread message in `session`; past `max` sessions, the one whose last message
    /// is oldest loses its badge.
    pub fn raise_badge(&mut self, session: &str, max: usize) {
        *self.badges.entry(session.to_owned()).or_default() += 1;
        self.badge_order.retain(|s| s != session);
        if self.badge_order.len() + 1 < self.badges.len() {
            // A record from before the order was kept: its sessions count as the oldest.
            let known: HashSet<&String> = self.badge_order.iter().collect();
            let older: Vec<String> = self
                .badges
                .keys()
                .filter(|s| *s != session && !known.contains(s))
                .cloned()
                .collect();
            for s in older.into_iter().rev() {
                self.badge_order.push_front(s);
            }
        }
        self.badge_order.push_back(session.to_owned());
        while self.badges.len() > max.max(1) {
            let Some(oldest) = self.badge_order.pop_front() else {
                break;
            };
            self.badges.remove(&oldest);
        }
    }

    /// Whether `session` has unread messages.
    pub fn has_badge(&self, session: &str) -> bool {
        self.badges.contains_key(session)
    }

    /// The user read `session`: its badge goes. False when it had none.
    pub fn mark_read(&mut self, session: &str) -> bool {
        if self.badges.remove(session).is_none() {
            return false;
        }
        self.badge_order.retain(|s| s != session);
        true
    }

    /// Keeps an event addressed to the user (its frame), with the latest few before it.
    pub fn notify(&mut self, frame: &str) {
        self.notifications.push_back(frame.to_owned());
        while self.notifications.len() > NOTIFICATIONS {
            self.notifications.pop_front();
        }
    }

    /// The chat badges.
    pub fn badges(&self) -> ChatBadges {
        ChatBadges {
            total: self.badges.values().map(|n| u64::from(*n)).sum(),
            unread: self.badges.clone(),
        }
    }

    /// The server's awareness state in `user`'s inbox room:
    /// `{"user_id","notifications":[...],"chat_badges":{"unread","total"}}`.
    pub fn awareness_state(&self, user: &str) -> String {
        #[derive(Serialize)]
        struct State {
            user_id: UserId,
            notifications: Vec<Value>,
            chat_badges: ChatBadges,
        }
        let state = State {
            user_id: UserId(user.to_owned()),
            notifications: self
                .notifications
                .iter()
                .filter_map(|frame| serde_json::from_str(frame).ok())
                .collect(),
            chat_badges: self.badges(),
        };
        serde_json::to_string(&state).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badges_past_the_cap_drop_the_session_whose_last_message_is_oldest() {
        let mut inbox = Inbox::default();
        for session in ["a", "b", "c", "a"] {
            inbox.raise_badge(session, 3);
        }
        inbox.raise_badge("d", 3);
        // "b" had the oldest last message ("a" had one after "c").
        assert_eq!(
            inbox.badges,
            BTreeMap::from([("a".into(), 2), ("c".into(), 1), ("d".into(), 1)])
        );
        assert_eq!(inbox.badge_order, ["c", "a", "d"]);

        // A record stored before the order was kept: its sessions go first.
        let mut legacy: Inbox = serde_json::from_str(r#"{"badges":{"x":4,"y":1}}"#).unwrap();
        legacy.raise_badge("z", 2);
        assert_eq!(legacy.badges.len(), 2);
        assert!(legacy.badges.contains_key("z"));
        assert_eq!(legacy.badge_order.len(), 2);
    }

    #[test]
    fn reading_clears_a_badge_and_the_inbox_state_carries_badges_and_notifications() {
        let mut inbox = Inbox::default();
        inbox.raise_badge("999", 10);
        inbox.raise_badge("999", 10);
        assert_eq!(inbox.badges().total, 2);
        for id in 0..25 {
            inbox.notify(&format!(r#"{{"id":{id}}}"#));
        }
        let state: Value = serde_json::from_str(&inbox.awareness_state("7")).unwrap();
        assert_eq!(state["user_id"], 7);
        assert_eq!(state["chat_badges"]["unread"]["999"], 2);
        let kept = state["notifications"].as_array().unwrap();
        assert_eq!(
            (kept.len(), &kept[0]["id"]),
            (NOTIFICATIONS, &Value::from(5))
        );
        assert!(inbox.mark_read("999"));
        assert!(!inbox.mark_read("999"));
        assert_eq!(inbox.badges().total, 0);
    }
}
