//! The y-websocket frame decoder: any bytes decode to messages or a clear error, never a panic,
//! within the allocation bound; every message decoded encodes to one that decodes the same (the
//! bytes may differ: a varint may come in non-canonically, as lib0 also reads it).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tandem_fuzz::{check_bound, measure};
use tandem_sync::message::decode_state_vector;
use tandem_sync::{Message, MessageReader, SyncMessage};

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let (messages, allocated) = measure(|| {
        let mut messages = Vec::new();
        for item in MessageReader::new(frame.clone()) {
            match item {
                Ok((message, range)) => {
                    assert!(range.start < range.end && range.end <= frame.len());
                    messages.push((message, range));
                }
                Err(_) => break,
            }
        }
        messages
    });
    check_bound("MessageReader", data.len(), allocated, 16);
    for (message, range) in messages {
        // What was read is the bytes its range names, and what is sent on reads back the same.
        let alone = tandem_sync::decode(frame.slice(range));
        assert_eq!(alone.as_ref(), Ok(&message));
        let encoded = message.encode();
        assert_eq!(
            tandem_sync::decode(Bytes::from(encoded)).as_ref(),
            Ok(&message)
        );
        if let Message::Sync(SyncMessage::Step1(sv)) = &message {
            let (_, allocated) = measure(|| decode_state_vector(sv));
            check_bound("decode_state_vector", sv.len(), allocated, 64);
        }
    }
});
