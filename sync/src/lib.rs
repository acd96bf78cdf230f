//! `tandem-sync`: the y-websocket wire protocol.
//!
//! - [`message`]: the [`Message`] enum, pure `encode`/`decode`, and [`MessageReader`] for frames
//!   that carry several messages.
//! - [`awareness`]: the awareness update payload, with 53-bit client ids.
//! - [`client`]: an async client (tokio-tungstenite) for tests and the bench tool.
//! - [`probe`]: a lightweight client for load tests: handshake, send updates, read frames.
//!
//! Nothing here knows about rooms, storage or the server; the codec never touches a socket.

pub mod awareness;
pub mod client;
pub mod message;
pub mod probe;

pub use awareness::{AwarenessEntry, AwarenessUpdate};
pub use client::{Client, ClientError, CloseInfo};
pub use message::{decode, AuthMessage, DecodeError, Message, MessageReader, SyncMessage};
