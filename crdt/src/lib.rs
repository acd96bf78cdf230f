//! `tandem-crdt`: a document room's state over yrs: apply, diff, snapshot and awareness.
//!
//! Pure logic: bytes in, bytes out. No IO, no tokio, no storage; the server decides where the
//! frames go and when snapshots are written.

pub mod awareness;
pub mod room;

pub use yrs::Any;

pub use awareness::SERVER_CLIENT_BASE;
pub use room::{
    Access, AwarenessChange, Departure, Outbox, PeerId, PollInput, Polled, Room, RoomError,
    RoomLimits,
};
