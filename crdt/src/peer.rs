//! Who a room talks to: a peer's id ([`PeerId`]: a connection or an HTTP poller) and what it may
//! do to the document ([`Access`]).

use std::fmt;

/// A peer's id within the server (a connection's id, or an HTTP poller's); the room only uses
/// it to track awareness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a peer may do to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// Reads and awareness only: updates are dropped and answered with permission denied.
    ReadOnly,
}
