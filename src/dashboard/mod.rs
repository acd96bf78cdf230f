//! The live dashboard layer: the event catalogue ([`catalogue`]), the JSON protocol on `/ws`
//! ([`protocol`]), the per-workspace hub that takes events from their durable append to every
//! interested connection ([`hub`]), user presence ([`presence`]) and the `/ws` connection
//! itself ([`session`]).

pub mod catalogue;
pub mod delivery;
pub mod editing;
pub mod history;
pub mod hub;
pub mod inbox;
pub mod locks;
mod pipeline;
pub mod preferences;
pub mod presence;
pub mod protocol;
pub mod session;
mod users;
pub mod workspace;

pub use hub::{Hub, HubObserver, HubSettings};
pub use protocol::{parse, Action, PresenceStatus, PresenceUpdate, ProtocolError};
pub use users::PreferencesError;

use catalogue::Channel;

/// A set of channels, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelSet(u16);

impl ChannelSet {
    pub fn of(channels: &[Channel]) -> ChannelSet {
        ChannelSet(channels.iter().fold(0, |bits, c| bits | bit(*c)))
    }

    pub fn all() -> ChannelSet {
        ChannelSet::of(&Channel::ALL)
    }

    pub fn contains(self, channel: Channel) -> bool {
        self.0 & bit(channel) != 0
    }

    pub fn union(self, other: ChannelSet) -> ChannelSet {
        ChannelSet(self.0 | other.0)
    }

    pub fn without(self, other: ChannelSet) -> ChannelSet {
        ChannelSet(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The channels' names, in [`Channel::ALL`] order.
    pub fn names(self) -> Vec<&'static str> {
        Channel::ALL
            .into_iter()
            .filter(|c| self.contains(*c))
            .map(Channel::name)
            .collect()
    }
}

fn bit(channel: Channel) -> u16 {
    1 << channel as u16
}

/// A user id as events carry it: the token's `sub`, as a JSON number when it is one (the ids of
/// MISSION.md are numbers) and as a string otherwise.
pub fn user_id_value(user: &str) -> serde_json::Value {
    match user.parse::<u64>() {
        Ok(n) if n.to_string() == user => serde_json::Value::from(n),
        _ => serde_json::Value::from(user),
    }
}

/// A user id that serializes as [`user_id_value`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(pub String);

impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.parse::<u64>() {
            Ok(n) if n.to_string() == self.0 => serializer.serialize_u64(n),
            _ => serializer.serialize_str(&self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_sets_add_and_remove() {
        let set = ChannelSet::of(&[Channel::Queries, Channel::Presence]);
        assert!(set.contains(Channel::Queries) && set.contains(Channel::Presence));
        assert!(!set.contains(Channel::System));
        let set = set.without(ChannelSet::of(&[Channel::Queries]));
        assert_eq!(set.names(), vec!["presence"]);
        assert!(set.without(set).is_empty());
        assert_eq!(ChannelSet::all().names().len(), Channel::ALL.len());
    }

    #[test]
    fn numeric_user_ids_become_numbers() {
        assert_eq!(user_id_value("123"), serde_json::json!(123));
        assert_eq!(user_id_value("007"), serde_json::json!("007"));
        assert_eq!(user_id_value("ada"), serde_json::json!("ada"));
        for user in ["123", "007", "ada"] {
            assert_eq!(
                serde_json::to_value(UserId(user.into())).unwrap(),
                user_id_value(user)
            );
        }
    }
}
