//! The live dashboard layer: the event catalogue ([`catalogue`]), the JSON protocol on `/ws`
//! ([`protocol`]), the per-workspace hub that takes events from their durable append to every
//! interested connection ([`hub`]), user presence ([`presence`]) and the `/ws` connection
//! itself ([`session`]).

pub mod catalogue;
pub mod delivery;
pub mod editing;
pub mod history;
pub mod hub;
pub mod inbox;
pub mod locks;
mod pipeline;
pub mod preferences;
pub mod presence;
pub mod protocol;
pub mod session;
mod users;
pub mod workspace;

pub use catalogue::{ChannelSet, UserId};
pub use hub::{Hub, HubObserver, HubSettings};
pub use protocol::{parse, Action, PresenceStatus, PresenceUpdate, ProtocolError};
pub use users::PreferencesError;
