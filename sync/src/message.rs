//! The y-websocket message codec: [`Message`], pure [`Message::encode`] and [`decode`], and
//! [`MessageReader`] for frames that carry more than one message.
//!
//! The layout follows `y-protocols` (`sync.js`, `awareness.js`, `auth.js`) and the y-websocket
//! provider: every message starts with a `varUint` type tag, payloads are `varUint8Array`s and
//! strings are `varString`s. Payloads are kept as [`Bytes`] slices of the incoming frame, so
//! decoding copies nothing and a relayed update can be forwarded as the very bytes it came in.
//! This module never touches a socket.

use bytes::Bytes;
use yrs::encoding::read::{Cursor, Error as ReadError, Read};
use yrs::encoding::write::Write;
use yrs::updates::decoder::Decode;
use yrs::StateVector;

/// Message type tag of a sync message (step 1, step 2, update).
pub const MSG_SYNC: u64 = 0;
/// Message type tag of an awareness update.
pub const MSG_AWARENESS: u64 = 1;
/// Message type tag of an auth message (permission denied + reason).
pub const MSG_AUTH: u64 = 2;
/// Message type tag of a request for every awareness state the peer knows.
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Message type that y-sweet clients send as a heartbeat and expect echoed back unchanged.
pub const MSG_SYNC_STATUS_HEARTBEAT: u64 = 102;

/// Sync sub-type: "here is my state vector, send me what I lack".
pub const MSG_SYNC_STEP_1: u64 = 0;
/// Sync sub-type: the answer to step 1, an update holding what the asker lacked.
pub const MSG_SYNC_STEP_2: u64 = 1;
/// Sync sub-type: an incremental update.
pub const MSG_SYNC_UPDATE: u64 = 2;

/// Auth sub-type: permission denied, followed by a reason.
pub const PERMISSION_DENIED: u64 = 0;
/// Auth sub-type: permission granted, followed by the granted scope.
pub const PERMISSION_GRANTED: u64 = 1;

/// One y-websocket protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Document synchronisation.
    Sync(SyncMessage),
    /// An encoded awareness update (see [`crate::awareness::AwarenessUpdate`]).
    Awareness(Bytes),
    /// A request for every awareness state the receiver knows.
    QueryAwareness,
    /// Authorization outcome.
    Auth(AuthMessage),
    /// A message type this codec does not interpret; `payload` is everything after the tag.
    Custom { tag: u64, payload: Bytes },
}

/// The three sync sub-messages of `y-protocols/sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMessage {
    /// An encoded state vector.
    Step1(Bytes),
    /// An encoded v1 update answering a step 1.
    Step2(Bytes),
    /// An encoded v1 incremental update.
    Update(Bytes),
}

/// The auth message of `y-protocols/auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMessage {
    /// Access refused, with a human-readable reason. The JS client only logs it.
    PermissionDenied(String),
    /// Access granted, with its scope (`"read"` or `"read-write"` in practice).
    PermissionGranted(String),
}

/// What was wrong with a message that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    #[error("malformed variable-length integer in {0}")]
    BadVarInt(&'static str),
    #[error("invalid UTF-8 in {0}")]
    BadUtf8(&'static str),
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error("unknown auth message type {0}")]
    UnknownAuthType(u64),
    #[error("awareness client id {0} is above 2^53 - 1")]
    ClientIdOutOfRange(u64),
    #[error("awareness update announces {0} entries but the message is too short for them")]
    TooManyEntries(u64),
    /// y-protocols writes each state as `JSON.stringify` of an object, or `null`; clients
    /// `JSON.parse` what they receive, and a Node.js client dies of a state that does not parse.
    #[error("awareness state of client {0} is not a JSON object or null")]
    AwarenessState(u64),
    #[error("malformed state vector: {0}")]
    StateVector(String),
}

impl DecodeError {
    pub(crate) fn from_read(err: ReadError, what: &'static str) -> Self {
        match err {
            ReadError::EndOfBuffer(_) => DecodeError::Truncated(what),
            ReadError::Malformed(_) => DecodeError::BadUtf8(what),
            // The remaining variants come out of varint reads (overflow, bad encoding).
            _ => DecodeError::BadVarInt(what),
        }
    }
}

impl Message {
    /// Encodes this message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len_hint());
        self.encode_into(&mut buf);
        buf
    }

    /// Appends the encoding of this message to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        match self {
            Message::Sync(sync) => {
                buf.write_var(MSG_SYNC);
                let (sub, payload) = match sync {
                    SyncMessage::Step1(sv) => (MSG_SYNC_STEP_1, sv),
                    SyncMessage::Step2(update) => (MSG_SYNC_STEP_2, update),
                    SyncMessage::Update(update) => (MSG_SYNC_UPDATE, update),
                };
                buf.write_var(sub);
                buf.write_buf(payload);
            }
            Message::Awareness(update) => {
                buf.write_var(MSG_AWARENESS);
                buf.write_buf(update);
            }
            Message::QueryAwareness => buf.write_var(MSG_QUERY_AWARENESS),
            Message::Auth(AuthMessage::PermissionDenied(reason)) => {
                buf.write_var(MSG_AUTH);
                buf.write_var(PERMISSION_DENIED);
                buf.write_string(reason);
            }
            Message::Auth(AuthMessage::PermissionGranted(scope)) => {
                buf.write_var(MSG_AUTH);
                buf.write_var(PERMISSION_GRANTED);
                buf.write_string(scope);
            }
            Message::Custom { tag, payload } => {
                buf.write_var(*tag);
                buf.extend_from_slice(payload);
            }
        }
    }

    fn encoded_len_hint(&self) -> usize {
        let payload = match self {
            Message::Sync(SyncMessage::Step1(b))
            | Message::Sync(SyncMessage::Step2(b))
            | Message::Sync(SyncMessage::Update(b))
            | Message::Awareness(b)
            | Message::Custom { payload: b, .. } => b.len(),
            Message::QueryAwareness => 0,
            Message::Auth(AuthMessage::PermissionDenied(s))
            | Message::Auth(AuthMessage::PermissionGranted(s)) => s.len(),
        };
        payload + 12
    }
}

/// Encodes `[sync, update, update]` straight from a slice, for the broadcast path.
pub fn encode_update(update: &[u8]) -> Bytes {
    encode_sync(MSG_SYNC_UPDATE, update)
}

/// Encodes `[sync, step 2, update]` straight from a slice.
pub fn encode_step2(update: &[u8]) -> Bytes {
    encode_sync(MSG_SYNC_STEP_2, update)
}

/// Encodes `[sync, step 1, state vector]` straight from a slice.
pub fn encode_step1(state_vector: &[u8]) -> Bytes {
    encode_sync(MSG_SYNC_STEP_1, state_vector)
}

/// Encodes `[awareness, update]` straight from a slice.
pub fn encode_awareness(update: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(update.len() + 6);
    buf.write_var(MSG_AWARENESS);
    buf.write_buf(update);
    buf.into()
}

fn encode_sync(sub: u64, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(payload.len() + 7);
    buf.write_var(MSG_SYNC);
    buf.write_var(sub);
    buf.write_buf(payload);
    buf.into()
}

/// Decodes a state vector (the payload of a step 1) whose declared entry count its bytes can
/// hold (each entry takes two at least): yrs reserves room for the count before it reads, so a
/// few bytes could otherwise ask for gigabytes.
///
/// # Errors
/// [`DecodeError::StateVector`] saying what is wrong.
pub fn decode_state_vector(sv: &[u8]) -> Result<StateVector, DecodeError> {
    // The count as the decoder itself reads it (its varint reader takes more than five bytes).
    let mut cursor = Cursor::new(sv);
    let count: u32 = cursor
        .read_var()
        .map_err(|e| DecodeError::StateVector(e.to_string()))?;
    let room = (sv.len() - cursor.next) / 2;
    if count as usize > room {
        return Err(DecodeError::StateVector(format!(
            "it declares {count} entries in {} bytes",
            sv.len()
        )));
    }
    StateVector::decode_v1(sv).map_err(|e| DecodeError::StateVector(e.to_string()))
}

/// Decodes a frame that holds exactly one message; trailing bytes are ignored, as the JS
/// provider does. Use [`MessageReader`] for frames that may hold several.
///
/// # Errors
/// [`DecodeError`] naming the part of the message that was malformed.
pub fn decode(frame: Bytes) -> Result<Message, DecodeError> {
    match MessageReader::new(frame).next() {
        Some(result) => result.map(|(message, _)| message),
        None => Err(DecodeError::Empty),
    }
}

/// Iterates over the messages of one frame. Each item also carries the byte range the message
/// occupied, so a caller can forward a message without re-encoding it.
///
/// The reader stops after the first error: the rest of a corrupt frame cannot be trusted.
pub struct MessageReader {
    frame: Bytes,
    pos: usize,
    failed: bool,
}

impl MessageReader {
    /// Starts reading `frame` from its first byte.
    pub fn new(frame: Bytes) -> Self {
        MessageReader {
            frame,
            pos: 0,
            failed: false,
        }
    }

    fn read_one(&mut self) -> Result<Message, DecodeError> {
        let frame = &self.frame;
        let mut cursor = Cursor::new(&frame[..]);
        cursor.next = self.pos;
        let tag: u64 = read_var(&mut cursor, "message type")?;
        let message = match tag {
            MSG_SYNC => {
                let sub: u64 = read_var(&mut cursor, "sync message type")?;
                let payload = read_payload(frame, &mut cursor, "sync payload")?;
                Message::Sync(match sub {
                    MSG_SYNC_STEP_1 => SyncMessage::Step1(payload),
                    MSG_SYNC_STEP_2 => SyncMessage::Step2(payload),
                    MSG_SYNC_UPDATE => SyncMessage::Update(payload),
                    other => return Err(DecodeError::UnknownSyncType(other)),
                })
            }
            MSG_AWARENESS => {
                Message::Awareness(read_payload(frame, &mut cursor, "awareness payload")?)
            }
            MSG_QUERY_AWARENESS => Message::QueryAwareness,
            MSG_AUTH => {
                let sub: u64 = read_var(&mut cursor, "auth message type")?;
                let text = cursor
                    .read_string()
                    .map_err(|e| DecodeError::from_read(e, "auth reason"))?
                    .to_owned();
                match sub {
                    PERMISSION_DENIED => Message::Auth(AuthMessage::PermissionDenied(text)),
                    PERMISSION_GRANTED => Message::Auth(AuthMessage::PermissionGranted(text)),
                    other => return Err(DecodeError::UnknownAuthType(other)),
                }
            }
            tag => {
                // An uninterpreted message owns the rest of the frame: without knowing its
                // layout there is no way to tell where it ends.
                let payload = frame.slice(cursor.next..);
                cursor.next = frame.len();
                Message::Custom { tag, payload }
            }
        };
        self.pos = cursor.next;
        Ok(message)
    }
}

impl Iterator for MessageReader {
    /// A message and the byte range of the frame it was decoded from.
    type Item = Result<(Message, std::ops::Range<usize>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.frame.len() {
            return None;
        }
        let start = self.pos;
        match self.read_one() {
            Ok(message) => Some(Ok((message, start..self.pos))),
            Err(err) => {
                self.failed = true;
                Some(Err(err))
            }
        }
    }
}

fn read_var(cursor: &mut Cursor<'_>, what: &'static str) -> Result<u64, DecodeError> {
    cursor
        .read_var::<u64>()
        .map_err(|e| DecodeError::from_read(e, what))
}

fn read_payload(
    frame: &Bytes,
    cursor: &mut Cursor<'_>,
    what: &'static str,
) -> Result<Bytes, DecodeError> {
    read_range(frame.len(), cursor, what).map(|range| frame.slice(range))
}

/// Where the length-prefixed bytes at the cursor lie in a frame of `frame_len` bytes; the
/// cursor moves past them.
pub(crate) fn read_range(
    frame_len: usize,
    cursor: &mut Cursor<'_>,
    what: &'static str,
) -> Result<std::ops::Range<usize>, DecodeError> {
    let len = cursor
        .read_var::<u64>()
        .map_err(|e| DecodeError::from_read(e, what))?;
    let start = cursor.next;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= frame_len)
        .ok_or(DecodeError::Truncated(what))?;
    cursor.next = end;
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(message: Message) {
        let bytes = Bytes::from(message.encode());
        assert_eq!(decode(bytes).unwrap(), message);
    }

    #[test]
    fn every_variant_round_trips() {
        round_trip(Message::Sync(SyncMessage::Step1(Bytes::from_static(&[
            1, 2, 3,
        ]))));
        round_trip(Message::Sync(SyncMessage::Step2(Bytes::from_static(&[
            0, 0,
        ]))));
        round_trip(Message::Sync(SyncMessage::Update(Bytes::from(vec![
            7;
            300
        ]))));
        round_trip(Message::Awareness(Bytes::from_static(&[0])));
        round_trip(Message::QueryAwareness);
        round_trip(Message::Auth(AuthMessage::PermissionDenied("no".into())));
        round_trip(Message::Auth(AuthMessage::PermissionGranted("read".into())));
        round_trip(Message::Custom {
            tag: MSG_SYNC_STATUS_HEARTBEAT,
            payload: Bytes::from_static(&[9, 9]),
        });
    }

    // The byte vectors below were produced by the y-protocols npm package (v1.0.7) with lib0:
    // see tests/js/vectors.mjs, which prints them.
    #[test]
    fn decodes_bytes_from_y_protocols() {
        // syncProtocol.writeSyncStep1 on an empty Y.Doc: state vector `[0]`.
        assert_eq!(
            decode(Bytes::from_static(&[0, 0, 1, 0])).unwrap(),
            Message::Sync(SyncMessage::Step1(Bytes::from_static(&[0])))
        );
        // syncProtocol.writeUpdate of an empty update.
        assert_eq!(
            decode(Bytes::from_static(&[0, 2, 2, 0, 0])).unwrap(),
            Message::Sync(SyncMessage::Update(Bytes::from_static(&[0, 0])))
        );
        // authProtocol.writePermissionDenied(encoder, 'denied'), after the message type 2.
        assert_eq!(
            decode(Bytes::from_static(&[
                2, 0, 6, b'd', b'e', b'n', b'i', b'e', b'd'
            ]))
            .unwrap(),
            Message::Auth(AuthMessage::PermissionDenied("denied".into()))
        );
        // messageQueryAwareness as the provider sends it.
        assert_eq!(
            decode(Bytes::from_static(&[3])).unwrap(),
            Message::QueryAwareness
        );
    }

    #[test]
    fn reader_yields_every_message_of_a_frame_with_its_range() {
        let mut frame = Message::QueryAwareness.encode();
        Message::Sync(SyncMessage::Update(Bytes::from_static(&[0, 0]))).encode_into(&mut frame);
        let items: Vec<_> = MessageReader::new(frame.into())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].1, 0..1);
        assert_eq!(items[1].1, 1..6);
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(decode(Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(
            decode(Bytes::from_static(&[0, 2, 5, 1])),
            Err(DecodeError::Truncated("sync payload"))
        );
        assert_eq!(
            decode(Bytes::from_static(&[0, 7, 0])),
            Err(DecodeError::UnknownSyncType(7))
        );
        // A varint whose continuation bit never ends.
        assert!(matches!(
            decode(Bytes::from_static(&[0x80, 0x80, 0x80])),
            Err(DecodeError::Truncated(_) | DecodeError::BadVarInt(_))
        ));
        assert!(matches!(
            decode(Bytes::from_static(&[0xff; 12])),
            Err(DecodeError::BadVarInt(_) | DecodeError::Truncated(_))
        ));
        assert_eq!(
            decode(Bytes::from_static(&[2, 0, 2, 0xff, 0xfe])),
            Err(DecodeError::BadUtf8("auth reason"))
        );
    }

    #[test]
    fn a_state_vector_may_not_declare_more_entries_than_its_bytes_hold() {
        assert_eq!(decode_state_vector(&[0]).unwrap(), StateVector::default());
        let mut forged = Vec::new();
        forged.write_var(u64::from(u32::MAX));
        assert!(matches!(
            decode_state_vector(&forged),
            Err(DecodeError::StateVector(why)) if why.contains("declares")
        ));
    }

    #[test]
    fn unknown_types_pass_through_whole() {
        let frame = Bytes::from_static(&[102, 1, 2, 3]);
        let message = decode(frame.clone()).unwrap();
        assert_eq!(
            message,
            Message::Custom {
                tag: 102,
                payload: Bytes::from_static(&[1, 2, 3])
            }
        );
        assert_eq!(message.encode(), frame.to_vec());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for item in MessageReader::new(bytes.into()) {
                let _ = item;
            }
        }

        #[test]
        fn sync_payloads_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..512), sub in 0u8..3) {
            let payload = Bytes::from(payload);
            let message = Message::Sync(match sub {
                0 => SyncMessage::Step1(payload),
                1 => SyncMessage::Step2(payload),
                _ => SyncMessage::Update(payload),
            });
            prop_assert_eq!(decode(message.encode().into()).unwrap(), message);
        }
    }
}
