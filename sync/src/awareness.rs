//! The awareness update payload of `y-protocols/awareness`:
//! `varUint(n)` then n × (`varUint(clientID)`, `varUint(clock)`, `varString(JSON state)`), where
//! the JSON `null` means the client is gone.
//!
//! Client ids are Yjs ids of up to 53 bits and are kept as `u64`, never truncated.

use std::sync::Arc;

use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use crate::message::DecodeError;

/// The largest client id Yjs generates (`Number.MAX_SAFE_INTEGER`).
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// One decoded awareness update.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AwarenessUpdate {
    pub entries: Vec<AwarenessEntry>,
}

/// The state one client announces, or its removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    pub client_id: u64,
    pub clock: u64,
    /// The JSON state, or `None` when the client was removed (the wire carries `null`).
    pub state: Option<Arc<str>>,
}

/// What a receiver knows of one client: the clock it last took, and whether that left a live
/// state (or a removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub clock: u64,
    pub live: bool,
}

impl AwarenessEntry {
    /// Whether this entry changes what is known of its client, by the rule of
    /// `y-protocols/awareness`: its clock is newer, or it removes a live state at the same
    /// clock. Of a client never heard of, only a live state is news: there is nothing to
    /// remove. The server's rooms and the client apply this one rule.
    pub fn supersedes(&self, known: Option<Known>) -> bool {
        match known {
            None => self.state.is_some(),
            Some(known) => {
                known.clock < self.clock
                    || (known.clock == self.clock && self.state.is_none() && known.live)
            }
        }
    }

    /// What a receiver knows of the client once it took this entry.
    pub fn known(&self) -> Known {
        Known {
            clock: self.clock,
            live: self.state.is_some(),
        }
    }
}

/// Whether `json` is one JSON object (what y-protocols writes for a state).
fn is_json_object(json: &str) -> bool {
    json.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(json).is_ok()
}

impl AwarenessUpdate {
    /// Decodes an awareness payload.
    ///
    /// # Errors
    /// A truncated payload, a malformed varint, invalid UTF-8, or a client id above 2^53 - 1.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut cursor = Cursor::new(payload);
        let count = cursor
            .read_var::<u64>()
            .map_err(|e| DecodeError::from_read(e, "awareness entry count"))?;
        // Each entry takes at least three bytes, so a count beyond that is a lie; checking it
        // first keeps a forged count from reserving memory.
        let remaining = (payload.len() - cursor.next) as u64;
        if count > remaining / 3 {
            return Err(DecodeError::TooManyEntries(count));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let client_id = cursor
                .read_var::<u64>()
                .map_err(|e| DecodeError::from_read(e, "awareness client id"))?;
            if client_id > MAX_CLIENT_ID {
                return Err(DecodeError::ClientIdOutOfRange(client_id));
            }
            let clock = cursor
                .read_var::<u64>()
                .map_err(|e| DecodeError::from_read(e, "awareness clock"))?;
            let json = cursor
                .read_string()
                .map_err(|e| DecodeError::from_read(e, "awareness state"))?;
            let state = if json.trim() == "null" {
                None
            } else if is_json_object(json) {
                Some(Arc::from(json))
            } else {
                return Err(DecodeError::AwarenessState(client_id));
            };
            entries.push(AwarenessEntry {
                client_id,
                clock,
                state,
            });
        }
        Ok(AwarenessUpdate { entries })
    }

    /// Encodes this update as an awareness payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(
            1 + self
                .entries
                .iter()
                .map(|e| 20 + e.state.as_ref().map_or(4, |s| s.len()))
                .sum::<usize>(),
        );
        buf.write_var(self.entries.len() as u64);
        for entry in &self.entries {
            buf.write_var(entry.client_id);
            buf.write_var(entry.clock);
            buf.write_string(entry.state.as_deref().unwrap_or("null"));
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_53_bit_client_ids_and_removals() {
        let update = AwarenessUpdate {
            entries: vec![
                AwarenessEntry {
                    client_id: MAX_CLIENT_ID,
                    clock: 7,
                    state: Some(r#"{"user":{"name":"Ada"}}"#.into()),
                },
                AwarenessEntry {
                    client_id: (1 << 40) + 3,
                    clock: 2,
                    state: None,
                },
            ],
        };
        assert_eq!(AwarenessUpdate::decode(&update.encode()).unwrap(), update);
    }

    // awarenessProtocol.encodeAwarenessUpdate from y-protocols 1.0.7 for a doc whose clientID is
    // 4294967297 (2^32 + 1), clock 1, local state {"a":1}; see tests/js/vectors.mjs.
    #[test]
    fn a_state_that_is_not_a_json_object_is_refused() {
        let entry = |state: &str| {
            let update = AwarenessUpdate {
                entries: vec![AwarenessEntry {
                    client_id: 7,
                    clock: 1,
                    state: Some(state.into()),
                }],
            };
            AwarenessUpdate::decode(&update.encode())
        };
        for bad in [
            "not json", "{\"a\":", "[1,2]", "\"text\"", "12", "{} {}", "",
        ] {
            assert_eq!(entry(bad), Err(DecodeError::AwarenessState(7)), "{bad:?}");
        }
        for good in [
            "{}",
            r#"{"user":{"name":"Ada"},"cursor":null}"#,
            " {\"a\":1} ",
        ] {
            assert!(entry(good).is_ok(), "{good:?}");
        }
        assert_eq!(entry("null").unwrap().entries[0].state, None);
    }

    #[test]
    fn decodes_bytes_from_y_protocols() {
        let bytes = [
            1, 129, 128, 128, 128, 16, 1, 7, b'{', b'"', b'a', b'"', b':', b'1', b'}',
        ];
        let update = AwarenessUpdate::decode(&bytes).unwrap();
        assert_eq!(
            update.entries,
            vec![AwarenessEntry {
                client_id: 4_294_967_297,
                clock: 1,
                state: Some(r#"{"a":1}"#.into()),
            }]
        );
    }

    #[test]
    fn newer_clocks_and_same_clock_removals_supersede() {
        let entry = |clock, state: Option<&str>| AwarenessEntry {
            client_id: 1,
            clock,
            state: state.map(Into::into),
        };
        let live = Some(Known {
            clock: 2,
            live: true,
        });
        assert!(entry(3, Some("{}")).supersedes(live));
        assert!(!entry(2, Some("{}")).supersedes(live));
        assert!(entry(2, None).supersedes(live));
        assert!(!entry(1, None).supersedes(live));
        let removed = Some(entry(2, None).known());
        assert!(!entry(2, None).supersedes(removed));
        assert!(entry(3, None).supersedes(removed));
        // Of an unknown client, a state is news and a removal is not.
        assert!(entry(0, Some("{}")).supersedes(None));
        assert!(!entry(5, None).supersedes(None));
    }

    #[test]
    fn rejects_ids_beyond_53_bits_and_forged_counts() {
        let mut buf = Vec::new();
        buf.write_var(1u64);
        buf.write_var(1u64 << 60);
        buf.write_var(1u64);
        buf.write_string("{}");
        assert_eq!(
            AwarenessUpdate::decode(&buf),
            Err(DecodeError::ClientIdOutOfRange(1 << 60))
        );
        let mut forged = Vec::new();
        forged.write_var(u64::from(u32::MAX));
        assert_eq!(
            AwarenessUpdate::decode(&forged),
            Err(DecodeError::TooManyEntries(u64::from(u32::MAX)))
        );
    }
}
