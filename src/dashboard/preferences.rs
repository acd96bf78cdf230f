//! Notification preferences ("Configure which events you want real-time"): the event types a
//! user does not want pushed, as a [`Muted`] mask with one bit per type of the catalogue.

use serde::Serialize;
use serde_json::{Map, Value};

use super::catalogue;

/// The event types a user muted: bit `i` is the `i`th of [`catalogue::all_types`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Muted(u32);

/// A user's preferences as the API shows them: `{"realtime":{"<event type>":bool,...}}`, every
/// type with whether it is pushed in real time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preferences {
    pub realtime: Map<String, Value>,
}

impl Muted {
    /// The mask of the types named in a stored record (unknown names are ignored).
    pub fn of(names: &[String]) -> Muted {
        Muted(
            names
                .iter()
                .filter_map(|name| catalogue::type_index(name))
                .fold(0, |bits, i| bits | (1 << i)),
        )
    }

    /// Whether the type at `index` of the catalogue is muted.
    pub fn mutes(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }

    /// The names of the muted types, as a record stores them.
    pub fn names(self) -> Vec<String> {
        catalogue::all_types()
            .enumerate()
            .filter(|(i, _)| self.mutes(*i))
            .map(|(_, (name, _))| name.to_owned())
            .collect()
    }

    /// Applies `realtime` (`{"agent_executed": false, ...}`): a type set to `false` is muted,
    /// `true` unmuted, the others stay.
    ///
    /// # Errors
    /// An unknown type or a value that is not a boolean, in words for the 422 answer.
    pub fn with(self, realtime: &Map<String, Value>) -> Result<Muted, String> {
        let mut bits = self.0;
        for (name, value) in realtime {
            let index = catalogue::type_index(name).ok_or_else(|| {
                let known: Vec<_> = catalogue::all_types().map(|(n, _)| n).collect();
                format!(
                    "unknown event type {name:?}; known types: {}",
                    known.join(", ")
                )
            })?;
            let on = value
                .as_bool()
                .ok_or_else(|| format!("`realtime.{name}` must be true or false"))?;
            if on {
                bits &= !(1 << index);
            } else {
                bits |= 1 << index;
            }
        }
        Ok(Muted(bits))
    }

    /// Every type with whether it is pushed.
    pub fn preferences(self) -> Preferences {
        Preferences {
            realtime: catalogue::all_types()
                .enumerate()
                .map(|(i, (name, _))| (name.to_owned(), Value::Bool(!self.mutes(i))))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_mute_and_unmute_named_types_and_refuse_unknown_ones() {
        let muted = Muted::of(&["agent_executed".into(), "no_such_type".into()]);
        assert_eq!(muted.names(), ["agent_executed"]);
        let changes = serde_json::json!({"agent_executed": true, "query_started": false});
        let muted = muted.with(changes.as_object().unwrap()).unwrap();
        assert_eq!(muted.names(), ["query_started"]);
        let shown = muted.preferences();
        assert_eq!(shown.realtime["query_started"], false);
        assert_eq!(shown.realtime["agent_executed"], true);
        let unknown = serde_json::json!({"weather": false});
        assert!(muted
            .with(unknown.as_object().unwrap())
            .unwrap_err()
            .starts_with("unknown event type \"weather\""));
        let bad = serde_json::json!({"query_started": "no"});
        assert_eq!(
            muted.with(bad.as_object().unwrap()).unwrap_err(),
            "`realtime.query_started` must be true or false"
        );
    }
}
