//! Documents: the registry of loaded rooms ([`Rooms`], one [`tandem_crdt::Room`] per open
//! document, in [`rooms`]), the peers of each (connections and HTTP pollers), and what happens
//! around a room: delivery to the peers' queues ([`delivery`]), persistence, compaction and
//! unload (`persist`), pollers ([`pollers`]), the server's own awareness states
//! (`server_awareness`), what other servers of a cluster tell the rooms ([`remote`], through the
//! [`RoomBus`] seam the cluster implements), the `/ws/{doc}` connection ([`socket`]), and the Hocuspocus one, many documents on one socket
//! ([`hocuspocus`]), and version history with restore ([`versions`]).

pub mod delivery;
pub mod hocuspocus;
mod persist;
pub mod pollers;
pub mod remote;
pub mod rooms;
mod server_awareness;
pub mod socket;
pub mod versions;

pub use remote::Remote;
pub use rooms::{DocHooks, RoomBus, RoomHandle, RoomObserver, RoomOpError, RoomSummary, Rooms};
pub use versions::{Restored, VersionError};
