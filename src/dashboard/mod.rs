//! The live dashboard layer: the event catalogue ([`catalogue`]), the JSON protocol on `/ws`
//! ([`protocol`]), and the hub ([`hub`]) that takes events from their durable append to every
//! interested connection: per workspace its state ([`workspace`]), the path of an event
//! (`pipeline`), who gets it ([`delivery`]), what a client reads back ([`history`]), and the
//! plain state it keeps: locks ([`locks`]), inboxes and badges ([`inbox`]), who is editing
//! ([`editing`]), presence ([`presence`]), preferences ([`preferences`]) and the users' records
//! (`users`, kept as a fold over the event log: `records`), and what the nodes of a cluster tell each other of a workspace ([`roster`]). The `/ws` connection itself is [`session`].

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
mod records;
pub mod roster;
pub mod session;
mod users;
pub mod workspace;

pub use catalogue::{ChannelSet, UserId};
pub use hub::{EventHook, Hub, HubBus, HubObserver, HubSettings};
pub use protocol::{parse, Action, PresenceStatus, PresenceUpdate, ProtocolError};
pub use users::PreferencesError;
