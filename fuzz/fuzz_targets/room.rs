//! A room of a real document receiving arbitrary input: frames from a read-write and a
//! read-only connection, HTTP polls, HTTP updates. Invariants:
//! - no panic escapes (yrs panics, and updates yrs refuses halfway through, are contained: the
//!   room is poisoned, and the server reloads it from storage);
//! - no input makes the room allocate beyond a bound proportional to it;
//! - a refused frame of one message changes nothing: neither the document nor awareness;
//! - the room never holds what it would not store: replaying the seed and every update it
//!   asked to persist gives its document exactly.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tandem_crdt::{Access, Outbox, PeerId, PollInput, Room, RoomError, RoomLimits};
use tandem_fuzz::{check_bound, measure, records};

use tandem_sync::MessageReader;

/// Small limits, so the fuzzer reaches them.
const LIMITS: RoomLimits = RoomLimits {
    max_doc_bytes: 256 * 1024,
    max_awareness_per_peer: 4,
    max_types: 64,
};

/// The document every run starts from: a text with some history, a map and an array, as one
/// update.
fn seed() -> &'static [u8] {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        use yrs::{Any, Array, Map, ReadTxn, StateVector, Text, Transact};
        let doc = yrs::Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        let status = doc.get_or_insert_map("status");
        let rows = doc.get_or_insert_array("rows");
        let mut txn = doc.transact_mut();
        text.insert(
            &mut txn,
            0,
            "SELECT region, sum(revenue) FROM sales GROUP BY region",
        );
        text.remove_range(&mut txn, 7, 6);
        status.insert(&mut txn, "state", "running");
        rows.push_back(&mut txn, Any::from(42.0));
        drop(txn);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        update
    })
}

/// The whole state of a room: its document and how many awareness clients are live.
fn state(room: &Room) -> (Vec<u8>, Vec<u8>, usize) {
    use yrs::{ReadTxn, StateVector, Transact};
    let doc = room
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    (doc, room.state_vector(), room.awareness_count())
}

/// What a client reading the room sees: each root type's content, what the room has seen of
/// each client, and the clients it waits on.
fn content(room: &Room) -> (Vec<(String, String)>, Vec<u8>, Option<Vec<(u64, u32)>>) {
    use yrs::types::ToJson;
    use yrs::{ReadTxn, Transact};
    let txn = room.doc().transact();
    let mut roots: Vec<(String, String)> = txn
        .root_refs()
        .map(|(name, out)| (name.to_owned(), out.to_json(&txn).to_string()))
        .collect();
    roots.sort();
    let waiting = txn.store().pending_update().map(|p| {
        let mut missing: Vec<(u64, u32)> = p
            .missing
            .iter()
            .map(|(c, clock)| (c.get(), *clock))
            .collect();
        missing.sort_unstable();
        missing
    });
    (roots, room.state_vector(), waiting)
}

fuzz_target!(|data: &[u8]| {
    tandem_fuzz::contain_panics();
    tandem_fuzz::guarded(|| {
        let seed = seed();
        let mut room = Room::load(LIMITS, Some(seed), []).expect("the seed loads");
        let writer = PeerId(1);
        let reader = PeerId(2);
        room.join(writer);
        room.join(reader);
        let mut stored: Vec<Bytes> = Vec::new();
        for (selector, bytes) in records(data) {
            let before = state(&room);
            let mut outbox = Outbox::default();
            let single = MessageReader::new(Bytes::copy_from_slice(bytes))
                .take(2)
                .count()
                <= 1;
            let (result, allocated) = measure(|| match selector % 4 {
                0 => room.receive(
                    writer,
                    Bytes::copy_from_slice(bytes),
                    Access::ReadWrite,
                    &mut outbox,
                ),
                1 => room.receive(
                    reader,
                    Bytes::copy_from_slice(bytes),
                    Access::ReadOnly,
                    &mut outbox,
                ),
                2 => room
                    .poll(
                        PeerId(3),
                        PollInput {
                            client: 77,
                            state_vector: bytes,
                            update: None,
                            awareness: None,
                        },
                        Access::ReadWrite,
                        &mut outbox,
                    )
                    .map(|_| ()),
                _ => room
                    .apply_update(Bytes::copy_from_slice(bytes))
                    .map(|out| outbox = out),
            });
            check_bound("Room", bytes.len(), allocated, 512);
            stored.extend(outbox.persist.iter().cloned());
            if room.is_poisoned() {
                // yrs failed inside: the server discards the room and reloads what was stored.
                assert!(result.is_err(), "a poisoned room reported success");
                return;
            }
            match result {
                Ok(()) => {}
                Err(RoomError::Poisoned) => unreachable!("checked above"),
                Err(_) if single || selector % 4 >= 2 => {
                    assert!(
                        outbox.persist.is_empty(),
                        "a refused input asked to be stored"
                    );
                    let after = state(&room);
                    assert!(
                        before == after,
                        "a refused input changed the room ({:?})",
                        result
                    );
                }
                Err(_) => {}
            }
        }
        // What storage would hold, loaded again, is the room.
        let log: Vec<&[u8]> = stored.iter().map(|u| u.as_ref()).collect();
        let reloaded =
            Room::load(RoomLimits::default(), Some(seed), log).expect("stored updates load");
        assert_eq!(
            content(&reloaded),
            content(&room),
            "the room and what it stored differ"
        );
    });
});
