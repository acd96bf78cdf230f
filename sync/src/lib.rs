//! `tandem-sync`: the y-websocket wire protocol, and the Hocuspocus one around it.
//!
//! # Layout
//! - [`message`]: the [`Message`] enum, pure `encode`/`decode`, and [`MessageReader`] for frames
//!   that carry several messages.
//! - [`awareness`]: the awareness update payload, with 53-bit client ids, and the one rule that
//!   says when an entry supersedes what is known of its client.
//! - [`hocuspocus`]: the Hocuspocus protocol's frames (a document address before each
//!   y-websocket message, auth, stateless, close and sync status), for many documents on one
//!   socket.
//! - [`update`]: a v1 update's declared counts and nesting checked before yrs decodes it.
//! - [`client`] (feature `client`): an async client (tokio-tungstenite) for tests and tools;
//!   the only IO in the crate.
//!
//! One update's path: a server reads a frame, [`MessageReader`] yields
//! `Message::Sync(SyncMessage::Update(bytes))` with `bytes` a slice of the frame (no copy), and
//! [`message::encode_update`] frames an update for the other peers.
//!
//! Nothing here knows about rooms, storage or the server; the codec never touches a socket.

pub mod awareness;
#[cfg(feature = "client")]
pub mod client;
pub mod hocuspocus;
pub mod message;
pub mod update;

pub use awareness::{AwarenessEntry, AwarenessUpdate, Known};
#[cfg(feature = "client")]
pub use client::{Client, ClientError, CloseInfo};
pub use message::{decode, AuthMessage, DecodeError, Message, MessageReader, SyncMessage};
pub use update::{inspect_v1, UpdateError, UpdateShape};
