//! What the nodes of a cluster say to each other over Redis: [`DocMessage`] on a document's
//! channel (binary: a kind byte, the sender's origin, then the kind's fields), [`Heartbeat`] on
//! the nodes' channel (JSON).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::dashboard::roster::Heard;

const KIND_UPDATE: u8 = 1;
const KIND_AWARENESS: u8 = 2;
const KIND_LEFT: u8 = 3;
/// After 4 (an event) and 5 (a roster message), which go on workspace channels.
const KIND_STATELESS: u8 = 6;

/// A message about one document, from the node `origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMessage {
    pub origin: i64,
    pub body: DocBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocBody {
    /// A committed update, the origin's `seq`; `prev` is its previous one for the same
    /// document (0: none this node remembers).
    Update { seq: u64, prev: u64, update: Bytes },
    /// An awareness frame (a whole y-websocket message) from the origin's `peer` of `user`.
    Awareness {
        peer: u64,
        user: String,
        frame: Bytes,
    },
    /// The origin's `peer` left the document.
    Left { peer: u64 },
    /// A Hocuspocus stateless message (its type and payload, no address) for the document's
    /// Hocuspocus clients.
    Stateless { body: Bytes },
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("the message ends early")]
    Truncated,
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("a user id that is not UTF-8")]
    User,
    #[error("unreadable JSON")]
    Json,
}

impl DocMessage {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(32 + self.payload_len());
        match &self.body {
            DocBody::Update { seq, prev, update } => {
                buf.put_u8(KIND_UPDATE);
                buf.put_i64(self.origin);
                buf.put_u64(*seq);
                buf.put_u64(*prev);
                buf.put_slice(update);
            }
            DocBody::Awareness { peer, user, frame } => {
                buf.put_u8(KIND_AWARENESS);
                buf.put_i64(self.origin);
                buf.put_u64(*peer);
                // User ids are at most 256 bytes (auth::identity).
                buf.put_u16(u16::try_from(user.len()).unwrap_or(u16::MAX));
                buf.put_slice(&user.as_bytes()[..user.len().min(usize::from(u16::MAX))]);
                buf.put_slice(frame);
            }
            DocBody::Left { peer } => {
                buf.put_u8(KIND_LEFT);
                buf.put_i64(self.origin);
                buf.put_u64(*peer);
            }
            DocBody::Stateless { body } => {
                buf.put_u8(KIND_STATELESS);
                buf.put_i64(self.origin);
                buf.put_slice(body);
            }
        }
        buf.freeze()
    }

    fn payload_len(&self) -> usize {
        match &self.body {
            DocBody::Update { update, .. } => update.len(),
            DocBody::Awareness { user, frame, .. } => user.len() + frame.len(),
            DocBody::Left { .. } => 0,
            DocBody::Stateless { body } => body.len(),
        }
    }

    /// Reads a message; the payload shares `bytes`.
    ///
    /// # Errors
    /// The bytes are not a message this version writes.
    pub fn decode(mut bytes: Bytes) -> Result<DocMessage, WireError> {
        let need = |bytes: &Bytes, n: usize| {
            if bytes.remaining() < n {
                Err(WireError::Truncated)
            } else {
                Ok(())
            }
        };
        need(&bytes, 9)?;
        let kind = bytes.get_u8();
        let origin = bytes.get_i64();
        let body = match kind {
            KIND_UPDATE => {
                need(&bytes, 16)?;
                let seq = bytes.get_u64();
                let prev = bytes.get_u64();
                DocBody::Update {
                    seq,
                    prev,
                    update: bytes,
                }
            }
            KIND_AWARENESS => {
                need(&bytes, 10)?;
                let peer = bytes.get_u64();
                let len = usize::from(bytes.get_u16());
                need(&bytes, len)?;
                let user = bytes.split_to(len);
                let user = String::from_utf8(user.to_vec()).map_err(|_| WireError::User)?;
                DocBody::Awareness {
                    peer,
                    user,
                    frame: bytes,
                }
            }
            KIND_LEFT => {
                need(&bytes, 8)?;
                DocBody::Left {
                    peer: bytes.get_u64(),
                }
            }
            KIND_STATELESS => DocBody::Stateless { body: bytes },
            other => return Err(WireError::Kind(other)),
        };
        Ok(DocMessage { origin, body })
    }
}

/// A committed event of a workspace, from the node `origin` that published it (binary: the
/// kind byte 4, the origin, the id, the time, then the event's JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    pub origin: i64,
    pub id: u64,
    pub at_ms: u64,
    pub body: Bytes,
}

const KIND_EVENT: u8 = 4;

impl EventMessage {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(25 + self.body.len());
        buf.put_u8(KIND_EVENT);
        buf.put_i64(self.origin);
        buf.put_u64(self.id);
        buf.put_u64(self.at_ms);
        buf.put_slice(&self.body);
        buf.freeze()
    }

    /// # Errors
    /// The bytes are not an event message.
    pub fn decode(mut bytes: Bytes) -> Result<EventMessage, WireError> {
        if bytes.remaining() < 25 {
            return Err(WireError::Truncated);
        }
        let kind = bytes.get_u8();
        if kind != KIND_EVENT {
            return Err(WireError::Kind(kind));
        }
        Ok(EventMessage {
            origin: bytes.get_i64(),
            id: bytes.get_u64(),
            at_ms: bytes.get_u64(),
            body: bytes,
        })
    }
}

/// What a node tells the others of a workspace (`dashboard::roster`), its `seq`-th message
/// about it (binary: the kind byte 5, the origin, the number, then what it says as JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterMessage {
    pub origin: i64,
    pub seq: u64,
    pub heard: Heard,
}

const KIND_ROSTER: u8 = 5;

/// Whether a message on a workspace's channel is a [`RosterMessage`] (else an
/// [`EventMessage`]).
pub fn is_roster(bytes: &[u8]) -> bool {
    bytes.first() == Some(&KIND_ROSTER)
}

impl RosterMessage {
    pub fn encode(&self) -> Bytes {
        let json = serde_json::to_vec(&self.heard).unwrap_or_default();
        let mut buf = BytesMut::with_capacity(17 + json.len());
        buf.put_u8(KIND_ROSTER);
        buf.put_i64(self.origin);
        buf.put_u64(self.seq);
        buf.put_slice(&json);
        buf.freeze()
    }

    /// # Errors
    /// The bytes are not a roster message.
    pub fn decode(mut bytes: Bytes) -> Result<RosterMessage, WireError> {
        if bytes.remaining() < 17 {
            return Err(WireError::Truncated);
        }
        let kind = bytes.get_u8();
        if kind != KIND_ROSTER {
            return Err(WireError::Kind(kind));
        }
        let origin = bytes.get_i64();
        let seq = bytes.get_u64();
        let heard = serde_json::from_slice(&bytes).map_err(|_| WireError::Json)?;
        Ok(RosterMessage { origin, seq, heard })
    }
}

/// What each node says every third of the node TTL on the nodes' channel (and keeps in the
/// nodes' sorted set): that it lives, and the last update it published of each document it
/// wrote since its previous heartbeat, so a node that lost that update's message repairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Who beats.
    pub node: NodeInfo,
    /// Counts this node's heartbeats; a gap means one was lost.
    pub beat: u64,
    /// (document, the origin's last update sequence number published for it).
    #[serde(default)]
    pub published: Vec<(String, u64)>,
    /// (workspace, the number of the origin's last message about it) for the workspaces it
    /// told something of since its previous heartbeat.
    #[serde(default)]
    pub told: Vec<(String, u64)>,
    /// Set on the last heartbeat of a node that is shutting down.
    #[serde(default)]
    pub leaving: bool,
}

/// A node as listed in the nodes' sorted set (its member), and by the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub origin: i64,
    /// Where its HTTP listener is bound.
    pub addr: String,
    /// When it started, RFC 3339.
    pub started_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let messages = [
            DocMessage {
                origin: -7,
                body: DocBody::Update {
                    seq: 12,
                    prev: 9,
                    update: Bytes::from_static(b"\x01\x02\x03"),
                },
            },
            DocMessage {
                origin: i64::MAX,
                body: DocBody::Awareness {
                    peer: 3,
                    user: "ada@example.com".into(),
                    frame: Bytes::from_static(b"\x01\x05abc"),
                },
            },
            DocMessage {
                origin: 1,
                body: DocBody::Left { peer: u64::MAX },
            },
            DocMessage {
                origin: 2,
                body: DocBody::Stateless {
                    body: Bytes::from_static(b"\x05\x02hi"),
                },
            },
        ];
        for message in messages {
            assert_eq!(DocMessage::decode(message.encode()), Ok(message));
        }
        let event = EventMessage {
            origin: 5,
            id: 42,
            at_ms: 1_700_000_000_000,
            body: Bytes::from_static(br#"{"type":"alert"}"#),
        };
        assert_eq!(EventMessage::decode(event.encode()), Ok(event));
        let told = RosterMessage {
            origin: 9,
            seq: 3,
            heard: Heard::Set {
                key: "p/ada".into(),
                value: Some(r#"{"status":"online"}"#.into()),
            },
        };
        assert!(is_roster(&told.encode()));
        assert_eq!(RosterMessage::decode(told.encode()), Ok(told));
        assert_eq!(
            EventMessage::decode(Bytes::from_static(b"\x04\x00")),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(
            DocMessage::decode(Bytes::from_static(b"\x01\x00")),
            Err(WireError::Truncated)
        );
        let mut unknown = vec![9u8];
        unknown.extend_from_slice(&[0; 8]);
        assert_eq!(
            DocMessage::decode(Bytes::from(unknown)),
            Err(WireError::Kind(9))
        );
        let mut short_user = vec![KIND_AWARENESS];
        short_user.extend_from_slice(&[0; 16]);
        short_user.extend_from_slice(&[0, 200]);
        assert_eq!(
            DocMessage::decode(Bytes::from(short_user)),
            Err(WireError::Truncated)
        );
    }
}
