//! `tandem-crdt`: a document room's state over yrs: apply, diff, snapshot and awareness.
//!
//! Pure logic: bytes in, bytes out. No IO, no tokio, no storage; the server decides where the
//! frames go and when snapshots are written.
//!
//! # Layout
//! - [`room`]: [`Room`], one document and its awareness, driven by y-websocket frames
//!   ([`Room::receive`]), HTTP pollers ([`Room::poll`]) and the server's own edits; with the
//!   limits it enforces ([`RoomLimits`]: document size, awareness clients per peer).
//! - [`outbox`]: what a room hands back for the caller to deliver ([`Outbox`], [`Departure`],
//!   [`Polled`]).
//! - [`awareness`]: the room's awareness states, with a bounded memory of removed clients.
//! - [`content`]: a document's content as JSON, and the edits that restore an earlier copy.
//! - [`peer`]: a peer's id and what it may do; `owners`: which peer keeps which awareness
//!   client, and whose each client is.
//!
//! One update's path: [`Room::receive`] decodes the frame with `tandem-sync`, applies the update
//! to the yrs document (a panic inside yrs poisons the room instead of the process), and puts
//! it in [`Outbox::persist`] and, framed for the others, in [`Outbox::broadcast`]; the caller
//! appends the first to the log before it delivers the second.

pub mod awareness;
pub mod content;
pub mod outbox;
mod owners;
pub mod peer;
pub mod room;

pub use yrs::Any;

pub use awareness::SERVER_CLIENT_BASE;
pub use content::{content_json, restoring_update};
pub use outbox::{AwarenessChange, Departure, Outbox, PollInput, Polled};
pub use peer::{Access, PeerId};
pub use room::{Room, RoomError, RoomLimits};

/// Folds v1 updates into one that holds everything any of them holds (what a store's
/// compaction does with a snapshot and the log after it; yrs' `merge_updates_v1`, which keeps
/// even what is not yet integrable).
///
/// # Errors
/// One of them is not a v1 update.
pub fn merge_updates(parts: &[&[u8]]) -> Result<Vec<u8>, String> {
    yrs::merge_updates_v1(parts.iter().copied()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

    fn text_of(update: &[u8]) -> String {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        txn.apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
        text.get_string(&txn)
    }

    #[test]
    fn a_merge_holds_a_snapshot_and_the_updates_after_it_in_any_order() {
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        let mut updates = Vec::new();
        for word in ["one ", "two ", "three"] {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, word);
            updates.push(txn.encode_update_v1());
        }
        let snapshot = updates[0].clone();
        // The snapshot, the updates (one of them twice), newest first.
        let merged =
            super::merge_updates(&[&snapshot, &updates[2], &updates[1], &updates[0]]).unwrap();
        assert_eq!(text_of(&merged), "one two three");
        let whole = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(text_of(&whole), text_of(&merged));
        assert!(super::merge_updates(&[b"not an update"]).is_err());
    }
}
