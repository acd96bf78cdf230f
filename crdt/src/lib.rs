//! `tandem-crdt`: a document room's state over yrs: apply, diff, snapshot and awareness.
//!
//! Pure logic: bytes in, bytes out. No IO, no tokio, no storage; the server decides where the
//! frames go and when snapshots are written.

pub mod awareness;
pub mod outbox;
mod owners;
pub mod room;

pub use yrs::Any;

pub use awareness::SERVER_CLIENT_BASE;
pub use outbox::{AwarenessChange, Departure, Outbox, PollInput, Polled};
pub use room::{Access, PeerId, Room, RoomError, RoomLimits};
