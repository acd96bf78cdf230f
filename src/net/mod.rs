//! The transport layer both WebSocket endpoints and the long-poll stand on: connection ids
//! ([`ConnId`]), how a connection is told to close ([`close`]), its timer ([`liveness`]), the
//! registry of open connections behind the admin API and the connection metrics ([`registry`]),
//! the reader and the one writer loop of a socket ([`socket`]), and what an upgrade handler
//! needs ([`Server`], [`Remote`], [`websocket_required`]).
//!
//! Nothing here knows documents or the dashboard: their handlers plug a protocol into
//! [`socket::Outbound`] and read with [`socket::Reader`].

pub mod close;
pub mod liveness;
pub mod registry;
pub mod socket;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Config;
use crate::error::ApiError;

pub use close::{CloseReason, Closer};
pub use registry::{ConnId, Connections};

/// What every connection handler needs of the server: its configuration, the token verifier,
/// the registry of connections, the tracker its tasks join (awaited at shutdown) and the
/// shutdown signal.
#[derive(Clone)]
pub struct Server {
    pub config: Arc<Config>,
    pub auth: Arc<Auth>,
    pub connections: Arc<Connections>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

/// The peer's address, when the server runs with connect info (as `serve` does).
pub struct Remote(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Remote {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Remote, Self::Rejection> {
        Ok(Remote(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|info| info.0),
        ))
    }
}

/// The answer to a plain HTTP request on a WebSocket endpoint: 426 with what it speaks.
/// A document socket's upgrade with the server's limits: `--max-frame-bytes` per message and
/// frame, `--ws-read-buffer-bytes` of read buffer.
pub fn limited(upgrade: WebSocketUpgrade, config: &Config) -> WebSocketUpgrade {
    let max = config.max_frame_bytes;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(config.ws_read_buffer_bytes)
}

pub fn websocket_required(err: &WebSocketUpgradeRejection, speaks: &str) -> Response {
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "websocket_required",
        format!("this endpoint speaks {speaks}: {}", err.body_text()),
    )
    .into_response()
}
