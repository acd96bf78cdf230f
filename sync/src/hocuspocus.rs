//! The Hocuspocus protocol (`@hocuspocus/provider` 2.x to 4.x): many documents over one socket.
//!
//! Every frame but the bare ping and pong names its document first:
//!
//! ```text
//! frame := varString(address) varUint(type) payload
//!        | 0x09                      server → client ping (4.x), no address
//!        | 0x0a                      client → server pong (4.x), no address
//! ```
//!
//! `address` is the document's name, or `name \0 session` for a 4.x provider created with
//! `sessionAwareness` (one document open twice on one socket); replies carry the address
//! exactly as the client wrote it. Sync (0), Awareness (1) and QueryAwareness (3) are laid out
//! as in y-websocket, so after the address such a frame *is* a y-websocket message: the server
//! hands [`Frame::Doc`]'s `body` range to the room as is and puts [`address_prefix`] before
//! what the room answers. The rest is Hocuspocus' own: Auth (2: a token one way, Authenticated
//! with a scope or PermissionDenied with a reason the other), Stateless (5: an application
//! string), Close (7: the client detaches a document; the server's carries a reason) and
//! SyncStatus (8: 1 when an update was taken, 0 when refused).
//!
//! Read from the packages' own source (`packages/common/src/auth.ts`,
//! `packages/provider/src/MessageReceiver.ts`, `packages/server/src/ClientConnection.ts`); the
//! tests decode bytes captured from the real provider 4.8.0 and server 4.7.0. This module never
//! touches a socket.

use std::ops::Range;

use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use crate::message::DecodeError;

/// Message types of the Hocuspocus protocol.
pub const MSG_SYNC: u64 = 0;
pub const MSG_AWARENESS: u64 = 1;
pub const MSG_AUTH: u64 = 2;
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Sent between Hocuspocus servers only; a client that sends it is refused.
pub const MSG_SYNC_REPLY: u64 = 4;
pub const MSG_STATELESS: u64 = 5;
/// Sent between Hocuspocus servers only; a client that sends it is refused.
pub const MSG_BROADCAST_STATELESS: u64 = 6;
pub const MSG_CLOSE: u64 = 7;
pub const MSG_SYNC_STATUS: u64 = 8;

/// The whole of a ping frame (server to a 4.x provider, which answers [`PONG`] at once).
pub const PING: u8 = 9;
/// The whole of a pong frame.
pub const PONG: u8 = 10;

/// Auth sub-types.
pub const AUTH_TOKEN: u64 = 0;
pub const AUTH_PERMISSION_DENIED: u64 = 1;
pub const AUTH_AUTHENTICATED: u64 = 2;

/// The scope an Authenticated message grants.
pub const SCOPE_READ_WRITE: &str = "read-write";
pub const SCOPE_READ_ONLY: &str = "readonly";

/// One decoded frame. Strings borrow from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The bare ping byte.
    Ping,
    /// The bare pong byte.
    Pong,
    /// A message about one document.
    Doc {
        /// As the client wrote it: the document name, maybe with `\0` and a session id.
        address: &'a str,
        /// Where the message after the address starts: for [`Body::Room`], the y-websocket
        /// message to hand to the document's room.
        body: Range<usize>,
        message: Body<'a>,
    },
}

/// What a document message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    /// Sync, Awareness or QueryAwareness: a y-websocket message of this type (its payload is
    /// checked by the room, not here).
    Room(u64),
    /// The client's token; 4.x providers add their version (the only way to tell 4.x from
    /// older providers, which fail on the bare [`PING`]).
    Token {
        token: &'a str,
        version: Option<&'a str>,
    },
    /// The server's answer: access refused, with a reason.
    PermissionDenied(&'a str),
    /// The server's answer: access granted, with [`SCOPE_READ_WRITE`] or [`SCOPE_READ_ONLY`].
    Authenticated(&'a str),
    /// The server asks for the token again (a token sync); an empty Auth Token message.
    TokenRequest,
    /// An application message for the other clients of the document.
    Stateless(&'a str),
    /// The client detaches the document (no reason), or the server closed it (a reason).
    Close(Option<&'a str>),
    /// The server took (`true`) or refused (`false`) an update.
    SyncStatus(bool),
}

/// What was wrong with a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("message type {0} is not one a client may send")]
    NotForClients(u64),
    #[error("unknown message type {0}")]
    UnknownType(u64),
    #[error("unknown auth message type {0}")]
    UnknownAuthType(u64),
}

/// Decodes one frame as the server reads it from a client: trailing bytes after the fields a
/// message has are ignored, as the JS packages do.
///
/// # Errors
/// [`FrameError`] naming what was malformed.
pub fn decode(frame: &[u8]) -> Result<Frame<'_>, FrameError> {
    match frame {
        [] => return Err(DecodeError::Empty.into()),
        [PING] => return Ok(Frame::Ping),
        [PONG] => return Ok(Frame::Pong),
        _ => {}
    }
    let mut cursor = Cursor::new(frame);
    let address = read_str(frame, &mut cursor, "the document address")?;
    let start = cursor.next;
    let kind: u64 = cursor
        .read_var()
        .map_err(|e| DecodeError::from_read(e, "the message type"))?;
    let message = match kind {
        MSG_SYNC | MSG_AWARENESS | MSG_QUERY_AWARENESS => Body::Room(kind),
        MSG_AUTH => {
            let sub: u64 = cursor
                .read_var()
                .map_err(|e| DecodeError::from_read(e, "the auth message type"))?;
            match sub {
                AUTH_TOKEN if cursor.next == frame.len() => Body::TokenRequest,
                AUTH_TOKEN => {
                    let token = read_str(frame, &mut cursor, "the token")?;
                    let version = match cursor.next < frame.len() {
                        true => Some(read_str(frame, &mut cursor, "the provider version")?),
                        false => None,
                    };
                    Body::Token { token, version }
                }
                AUTH_PERMISSION_DENIED => {
                    Body::PermissionDenied(read_str(frame, &mut cursor, "the refusal reason")?)
                }
                AUTH_AUTHENTICATED => {
                    Body::Authenticated(read_str(frame, &mut cursor, "the scope")?)
                }
                other => return Err(FrameError::UnknownAuthType(other)),
            }
        }
        MSG_STATELESS => Body::Stateless(read_str(frame, &mut cursor, "the stateless payload")?),
        MSG_CLOSE => match cursor.next < frame.len() {
            true => Body::Close(Some(read_str(frame, &mut cursor, "the close reason")?)),
            false => Body::Close(None),
        },
        MSG_SYNC_STATUS => {
            let status: u64 = cursor
                .read_var()
                .map_err(|e| DecodeError::from_read(e, "the sync status"))?;
            Body::SyncStatus(status == 1)
        }
        MSG_SYNC_REPLY | MSG_BROADCAST_STATELESS => return Err(FrameError::NotForClients(kind)),
        other => return Err(FrameError::UnknownType(other)),
    };
    Ok(Frame::Doc {
        address,
        body: start..frame.len(),
        message,
    })
}

/// A varString of `frame` at the cursor, borrowed from the frame.
fn read_str<'a>(
    frame: &'a [u8],
    cursor: &mut Cursor<'_>,
    what: &'static str,
) -> Result<&'a str, DecodeError> {
    let range = crate::message::read_range(frame.len(), cursor, what)?;
    std::str::from_utf8(&frame[range]).map_err(|_| DecodeError::BadUtf8(what))
}

/// The bytes that put a y-websocket message on `address`: its varString.
pub fn address_prefix(address: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(address.len() + 2);
    buf.write_string(address);
    buf
}

/// The document name an address is for, and its session id if it has one: split at the first
/// `\0`, as the server of 4.x does. An empty session id is no session.
pub fn split_address(address: &str) -> (&str, Option<&str>) {
    match address.split_once('\0') {
        Some((name, session)) if !session.is_empty() => (name, Some(session)),
        Some((name, _)) => (name, None),
        None => (address, None),
    }
}

fn doc_message(address: &str, kind: u64, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = address_prefix(address);
    buf.write_var(kind);
    fill(&mut buf);
    buf
}

/// `Authenticated(scope)` for `address`.
pub fn authenticated(address: &str, scope: &str) -> Vec<u8> {
    doc_message(address, MSG_AUTH, |buf| {
        buf.write_var(AUTH_AUTHENTICATED);
        buf.write_string(scope);
    })
}

/// The body of `Authenticated(scope)`, without its address (what a document's queue carries).
pub fn authenticated_body(scope: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(scope.len() + 3);
    buf.write_var(MSG_AUTH);
    buf.write_var(AUTH_AUTHENTICATED);
    buf.write_string(scope);
    buf
}

/// `PermissionDenied(reason)` for `address`.
pub fn permission_denied(address: &str, reason: &str) -> Vec<u8> {
    doc_message(address, MSG_AUTH, |buf| {
        buf.write_var(AUTH_PERMISSION_DENIED);
        buf.write_string(reason);
    })
}

/// A client's `Auth Token` for `address`, with the provider version 4.x adds.
pub fn token(address: &str, token: &str, version: Option<&str>) -> Vec<u8> {
    doc_message(address, MSG_AUTH, |buf| {
        buf.write_var(AUTH_TOKEN);
        buf.write_string(token);
        if let Some(version) = version {
            buf.write_string(version);
        }
    })
}

/// `Stateless(payload)` for `address`.
pub fn stateless(address: &str, payload: &str) -> Vec<u8> {
    doc_message(address, MSG_STATELESS, |buf| buf.write_string(payload))
}

/// The body of a Stateless message, without its address (what a room broadcasts).
pub fn stateless_body(payload: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(payload.len() + 4);
    buf.write_var(MSG_STATELESS);
    buf.write_string(payload);
    buf
}

/// The server's `Close(reason)` for `address`; a client's has no reason.
pub fn close(address: &str, reason: Option<&str>) -> Vec<u8> {
    doc_message(address, MSG_CLOSE, |buf| {
        if let Some(reason) = reason {
            buf.write_string(reason);
        }
    })
}

/// `SyncStatus` for `address`: whether the update was taken.
pub fn sync_status(address: &str, taken: bool) -> Vec<u8> {
    doc_message(address, MSG_SYNC_STATUS, |buf| {
        buf.write_var(u64::from(taken))
    })
}

/// A y-websocket message of the room put on `address`.
pub fn on_address(address: &str, message: &[u8]) -> Vec<u8> {
    let mut buf = address_prefix(address);
    buf.extend_from_slice(message);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{self, Message, SyncMessage};
    use bytes::Bytes;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Captured between @hocuspocus/provider 4.8.0 and @hocuspocus/server 4.7.0 (yjs 13.6.33),
    // document "docs/alpha", client id 1001, token "secret-token".
    const AUTH: &str = "0a646f63732f616c70686102000c7365637265742d746f6b656e05342e382e30";
    const STEP1: &str = "0a646f63732f616c70686100000100";
    const AWARENESS: &str = "0a646f63732f616c706861010701e90700027b7d";
    const AUTHENTICATED: &str = "0a646f63732f616c70686102020a726561642d7772697465";
    const UPDATE: &str = "0a646f63732f616c7068610002130101e90700040107636f6e74656e7402686900";
    const SYNC_STATUS: &str = "0a646f63732f616c7068610801";
    const STATELESS: &str = "0a646f63732f616c706861050568656c6c6f";
    const CLIENT_CLOSE: &str = "0a646f63732f616c70686107";
    const SERVER_CLOSE: &str = "0a646f63732f616c706861071270726f76696465725f696e69746961746564";
    const DENIED: &str = "0a646f63732f616c7068610201117065726d697373696f6e2d64656e696564";
    // A session-aware provider's step 1 for "docs/alpha\0rwsess1".
    const SESSION_STEP1: &str = "12646f63732f616c706861007277736573733100000100";
    // A 3.x provider's token: no version.
    const V3_AUTH: &str = "08646f63732f72617702000c7365637265742d746f6b656e";

    #[test]
    fn what_the_provider_sends_decodes() {
        let auth = hex(AUTH);
        assert_eq!(
            decode(&auth).unwrap(),
            Frame::Doc {
                address: "docs/alpha",
                body: 11..auth.len(),
                message: Body::Token {
                    token: "secret-token",
                    version: Some("4.8.0")
                },
            }
        );
        assert!(matches!(
            decode(&hex(V3_AUTH)).unwrap(),
            Frame::Doc {
                address: "docs/raw",
                message: Body::Token {
                    token: "secret-token",
                    version: None
                },
                ..
            }
        ));
        // Sync and awareness are y-websocket messages after the address.
        for (frame, kind) in [
            (STEP1, MSG_SYNC),
            (AWARENESS, MSG_AWARENESS),
            (UPDATE, MSG_SYNC),
        ] {
            let frame = hex(frame);
            let Frame::Doc { body, message, .. } = decode(&frame).unwrap() else {
                panic!("not a document message");
            };
            assert_eq!(message, Body::Room(kind));
            message::decode(Bytes::copy_from_slice(&frame[body])).unwrap();
        }
        let update = hex(UPDATE);
        let Frame::Doc { body, .. } = decode(&update).unwrap() else {
            unreachable!()
        };
        assert!(matches!(
            message::decode(Bytes::copy_from_slice(&update[body])).unwrap(),
            Message::Sync(SyncMessage::Update(_))
        ));
        assert!(matches!(
            decode(&hex(STATELESS)).unwrap(),
            Frame::Doc {
                message: Body::Stateless("hello"),
                ..
            }
        ));
        assert!(matches!(
            decode(&hex(CLIENT_CLOSE)).unwrap(),
            Frame::Doc {
                message: Body::Close(None),
                ..
            }
        ));
        assert_eq!(decode(&[PONG]).unwrap(), Frame::Pong);
        let session = hex(SESSION_STEP1);
        let Frame::Doc { address, .. } = decode(&session).unwrap() else {
            unreachable!()
        };
        assert_eq!(split_address(address), ("docs/alpha", Some("rwsess1")));
        assert_eq!(split_address("docs/alpha\0"), ("docs/alpha", None));
        assert_eq!(split_address("docs/alpha"), ("docs/alpha", None));
    }

    #[test]
    fn what_the_server_sends_is_byte_for_byte_what_hocuspocus_sends() {
        assert_eq!(
            authenticated("docs/alpha", SCOPE_READ_WRITE),
            hex(AUTHENTICATED)
        );
        assert_eq!(
            on_address("docs/alpha", &authenticated_body(SCOPE_READ_WRITE)),
            hex(AUTHENTICATED)
        );
        assert_eq!(sync_status("docs/alpha", true), hex(SYNC_STATUS));
        assert_eq!(
            close("docs/alpha", Some("provider_initiated")),
            hex(SERVER_CLOSE)
        );
        assert_eq!(
            permission_denied("docs/alpha", "permission-denied"),
            hex(DENIED)
        );
        assert_eq!(stateless("docs/alpha", "hello"), hex(STATELESS));
        assert_eq!(
            token("docs/alpha", "secret-token", Some("4.8.0")),
            hex(AUTH)
        );
        assert_eq!(on_address("docs/alpha", &[0, 0, 1, 0]), hex(STEP1));
        assert_eq!(
            on_address("docs/alpha", &stateless_body("hello")),
            hex(STATELESS)
        );
        // And they decode as the provider reads them.
        assert!(matches!(
            decode(&hex(SERVER_CLOSE)).unwrap(),
            Frame::Doc {
                message: Body::Close(Some("provider_initiated")),
                ..
            }
        ));
        assert!(matches!(
            decode(&hex(AUTHENTICATED)).unwrap(),
            Frame::Doc {
                message: Body::Authenticated(SCOPE_READ_WRITE),
                ..
            }
        ));
        assert!(matches!(
            decode(&hex(SYNC_STATUS)).unwrap(),
            Frame::Doc {
                message: Body::SyncStatus(true),
                ..
            }
        ));
    }

    #[test]
    fn malformed_frames_say_what_is_wrong() {
        assert_eq!(decode(&[]), Err(FrameError::Decode(DecodeError::Empty)));
        // An address longer than the frame.
        assert!(matches!(
            decode(&[0x20, b'a']),
            Err(FrameError::Decode(DecodeError::Truncated(_)))
        ));
        // An address that is not UTF-8.
        assert!(matches!(
            decode(&[2, 0xff, 0xfe, 0]),
            Err(FrameError::Decode(_))
        ));
        let address = address_prefix("d");
        let with = |rest: &[u8]| [address.as_slice(), rest].concat();
        assert_eq!(decode(&with(&[4])), Err(FrameError::NotForClients(4)));
        assert_eq!(
            decode(&with(&[6, 1, b'x'])),
            Err(FrameError::NotForClients(6))
        );
        assert_eq!(decode(&with(&[42])), Err(FrameError::UnknownType(42)));
        assert_eq!(decode(&with(&[2, 9])), Err(FrameError::UnknownAuthType(9)));
        assert!(decode(&with(&[])).is_err());
        assert!(decode(&with(&[5, 9, b'x'])).is_err());
    }
}
