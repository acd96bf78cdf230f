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
//! - [`peer`]: a peer's id and what it may do; `owners`: which peer keeps which awareness
//!   client, and whose each client is.
//!
//! One update's path: [`Room::receive`] decodes the frame with `tandem-sync`, applies the update
//! to the yrs document (a panic inside yrs poisons the room instead of the process), and puts
//! it in [`Outbox::persist`] and, framed for the others, in [`Outbox::broadcast`]; the caller
//! appends the first to the log before it delivers the second.

pub mod awareness;
pub mod outbox;
mod owners;
pub mod peer;
pub mod room;

pub use yrs::Any;

pub use awareness::SERVER_CLIENT_BASE;
pub use outbox::{AwarenessChange, Departure, Outbox, PollInput, Polled};
pub use peer::{Access, PeerId};
pub use room::{Room, RoomError, RoomLimits};
