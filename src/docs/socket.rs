//! `GET /ws/{doc}`: a document over the y-websocket protocol.
//!
//! The connection's task reads frames and applies them to the room; the room queues messages
//! for every peer; the writer ([`net::socket::write_loop`](crate::net::socket::write_loop)) sends
//! them. Joining and leaving go through [`Rooms`]; a `Membership` guard leaves the room however
//! the reader ends.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::StreamExt;
use tandem_crdt::{Access, PeerId, RoomError};
use tandem_sync::{AuthMessage, Message};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::delivery::{Outgoing, Overflow, PeerLink};
use super::rooms::{RoomHandle, RoomOpError, Rooms};
use crate::auth::Principal;
use crate::docname::DocName;
use crate::error::ApiError;
use crate::metrics::{self, Failure, Kind};
use crate::net::liveness::Liveness;
use crate::net::registry::{DocHold, NewConn, Registration};
use crate::net::socket::{self, Outbound, Reader};
use crate::net::{websocket_required, CloseReason, Closer, ConnId, Remote, Server};

/// The upgrade handler. The document name and the token are checked before the upgrade, so a
/// refusal is a JSON answer with its status instead of a socket.
pub async fn upgrade(
    State(server): State<Server>,
    State(rooms): State<Arc<Rooms>>,
    Remote(remote): Remote,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<TokenParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let bad_request = |response: Response| {
        metrics::get().failed(Failure::BadRequest);
        response
    };
    let name = match path {
        Ok(Path(raw)) => match DocName::parse(&raw) {
            Ok(name) => name,
            Err(err) => {
                return bad_request(
                    ApiError::bad_request("bad_document_name", err.to_string()).into_response(),
                )
            }
        },
        Err(err) => {
            return bad_request(
                ApiError::bad_request("bad_document_name", err.body_text()).into_response(),
            )
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(err) => return bad_request(websocket_required(&err, "the y-websocket protocol")),
    };
    let Ok(Query(params)) = params else {
        return bad_request(
            ApiError::bad_request("bad_query", "the query string is malformed").into_response(),
        );
    };
    let (principal, access) = match server.auth.authorize_doc(params.token.as_deref(), &name) {
        Ok(granted) => granted,
        Err(err) => {
            metrics::get().failed(err.failure());
            return ApiError::refusal(err, "ws_doc", Some(&name)).into_response();
        }
    };
    // Anonymous clients of a server without authentication are nobody in particular: only
    // their address is capped.
    let user = (!server.auth.is_open()).then_some(principal.user.as_str());
    let admission = match server.connections.admit(remote, name.workspace(), user) {
        Ok(admission) => admission,
        Err(crowded) => return crate::http::extract::crowded(crowded),
    };
    let hold = match user.map(|u| {
        server
            .connections
            .hold_doc(name.workspace(), u, name.as_str())
    }) {
        Some(Err(crowded)) => return crate::http::extract::crowded(crowded),
        Some(Ok(hold)) => Some(hold),
        None => None,
    };
    crate::net::limited(upgrade, &server.config).on_upgrade(move |ws| {
        let conn = ConnId::next();
        let span = tracing::info_span!("conn", %conn, doc = %name, user = %principal.user);
        let tasks = server.tasks.clone();
        let closer = Closer::new();
        let registration = server.connections.register(NewConn {
            id: conn,
            kind: Kind::Document,
            user: principal.user.clone(),
            workspace: name.workspace().to_owned(),
            target: name.as_str().to_owned(),
            remote,
            closer: Some(closer.clone()),
            admission: Some(admission),
        });
        let session = Box::new(Session {
            name,
            conn,
            access,
            principal,
            closer,
            registration,
            _hold: hold,
        });
        // Split here: a WebSocket held by value as an argument of `run` would stay in the
        // connection task's state for its whole life, even once moved out.
        let (sink, stream) = ws.split();
        tasks.track_future(run(server, rooms, sink, stream, session).instrument(span))
    })
}

/// The token of a WebSocket request: browsers cannot set headers, so it rides the URL.
#[derive(Debug, serde::Deserialize)]
pub struct TokenParams {
    token: Option<String>,
}

/// Who is connected to which document, with what rights.
struct Session {
    name: DocName,
    conn: ConnId,
    access: Access,
    principal: Principal,
    closer: Closer,
    /// Unregisters the connection when the session ends.
    registration: Registration,
    /// The user's hold on the document, under `--max-docs-per-user`.
    _hold: Option<DocHold>,
}

/// Serves one connection until it closes.
///
/// Idle connections are most of a server's connections, so this task's state is kept small:
/// joining and closing, awaited once each, run as boxed futures of their own (held inline, the
/// largest would size the task for its whole life), and the loop in between holds only what it
/// uses.
async fn run(
    server: Server,
    rooms: Arc<Rooms>,
    sink: SplitSink<WebSocket, WsMessage>,
    mut stream: SplitStream<WebSocket>,
    session: Box<Session>,
) {
    let (joined, writer, closer) = Box::pin(connect(&server, &rooms, sink, session)).await;
    // Kept to the end: the close frame's bytes and the whole duration count.
    let mut _registration = None;
    if let Some(conn) = joined {
        {
            // Leaves the room however the loop ends, a panic included: a peer left behind
            // would keep the room loaded and its awareness alive.
            let _membership = Membership {
                rooms: &rooms,
                handle: &conn.handle,
                peer: conn.peer,
            };
            serve(&server, &rooms, &conn, &closer, &mut stream).await;
        }
        _registration = Some(conn.registration);
    }
    // Leaving the room dropped the room's sender of the queue and `conn` the last one, so the
    // writer ends by itself once the queue is drained.
    Box::pin(socket::wind_down(&mut stream, &closer, writer)).await;
    tracing::debug!("disconnected");
}

/// A connection that joined its room.
struct Joined {
    handle: Arc<RoomHandle>,
    peer: PeerId,
    access: Access,
    /// A sender of the connection's own queue, for pings.
    pinger: mpsc::Sender<Arc<Outgoing>>,
    /// How long the token has left.
    expires_in: Option<Duration>,
    registration: Registration,
}

/// Starts the writer and joins the room; `None` when the room could not be loaded (the writer
/// then closes the connection with 1011).
async fn connect(
    server: &Server,
    rooms: &Arc<Rooms>,
    sink: SplitSink<WebSocket, WsMessage>,
    session: Box<Session>,
) -> (Option<Joined>, tokio::task::JoinHandle<()>, Closer) {
    let session = *session;
    let closer = session.closer;
    let peer = PeerId(session.conn.0);
    let (outbound, queue) = mpsc::channel(server.config.outbound_queue);
    // No span on the writer: entering one on every poll is measurable on the fan-out path, and
    // its only log lines name the connection itself.
    let writer = tokio::spawn(socket::write_loop(
        sink,
        queue,
        closer.clone(),
        DocOutbound,
        session.conn,
        Arc::clone(&session.registration.info),
    ));
    let pinger = outbound.clone();
    let link = PeerLink {
        peer,
        user: Arc::from(session.principal.user.as_str()),
        outbound,
        closer: closer.clone(),
        stateless: false,
    };
    // A read-only connection is told so first (auth, "permission granted: read"), so its editor
    // can refuse edits up front; y-websocket ignores what it does not know of that message.
    if session.access == Access::ReadOnly {
        let granted = Message::Auth(AuthMessage::PermissionGranted("read".into())).encode();
        // The queue is new and empty: there is room.
        let _ = link
            .outbound
            .try_send(Arc::new(Outgoing::reply(Bytes::from(granted))));
    }
    let mut overflow = Overflow::default();
    let joined = rooms.join(&session.name, link, &mut overflow).await;
    overflow.deliver(server.config.lag_timeout()).await;
    let handle = match joined {
        Ok(handle) => handle,
        Err(err) => {
            tracing::error!(error = %err, "could not load the document");
            closer.close(CloseReason::Storage);
            return (None, writer, closer);
        }
    };
    // Shutdown closes the peers it finds in rooms; one that joined after that sees the token.
    if server.shutdown.is_cancelled() {
        closer.close(CloseReason::ShuttingDown);
    }
    tracing::debug!("connected");
    let joined = Joined {
        handle,
        peer,
        access: session.access,
        pinger,
        expires_in: session.principal.expires_in(),
        registration: session.registration,
    };
    (Some(joined), writer, closer)
}

/// Reads frames and applies them to the room until the connection closes.
async fn serve(
    server: &Server,
    rooms: &Arc<Rooms>,
    conn: &Joined,
    closer: &Closer,
    stream: &mut SplitStream<WebSocket>,
) {
    let config = &server.config;
    let liveness = Liveness::new(
        config.ping_interval(),
        config.ping_timeout(),
        conn.expires_in,
    );
    let mut reader = Reader::new(closer, liveness);
    let ping = || {
        let _ = conn.pinger.try_send(DocOutbound::ping());
    };
    while let Some(message) = reader.next(stream, ping).await {
        let WsMessage::Binary(frame) = message else {
            closer.close(CloseReason::Unsupported(
                "text frames are not part of the y-websocket protocol".into(),
            ));
            break;
        };
        conn.registration.info.received(frame.len());
        let mut overflow = Overflow::default();
        let received = rooms.receive(&conn.handle, conn.peer, frame, conn.access, &mut overflow);
        if !overflow.is_empty() {
            // Backpressure: this sender waits while a slow peer catches up.
            Box::pin(overflow.deliver(config.lag_timeout())).await;
        }
        if let Err(err) = received {
            let reason = close_reason(&err);
            tracing::info!(error = %err, code = reason.code(), "closing connection");
            closer.close(reason);
            break;
        }
    }
}

/// Leaves the room when dropped.
struct Membership<'a> {
    rooms: &'a Arc<Rooms>,
    handle: &'a Arc<RoomHandle>,
    peer: PeerId,
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.rooms.leave(self.handle, self.peer);
    }
}

/// How a document connection's queue goes out: each message as one binary frame; an empty one
/// (rooms never queue one: every message has at least its type) is a ping.
struct DocOutbound;

impl Outbound for DocOutbound {
    type Item = Arc<Outgoing>;

    const BATCH: usize = 64;

    fn ping() -> Arc<Outgoing> {
        Arc::new(Outgoing::reply(Bytes::new()))
    }

    fn encode(&mut self, item: Arc<Outgoing>, out: &mut Vec<WsMessage>) {
        if item.bytes.is_empty() {
            out.push(WsMessage::Ping(Bytes::new()));
            return;
        }
        // The last peer to hand a broadcast to its socket says how long it took to reach
        // everyone.
        if let Some(received) = item.handed_over() {
            metrics::get()
                .propagation
                .record(metrics::secs(received.elapsed()));
        }
        // The last one to hold it takes its bytes; the others share them.
        out.push(WsMessage::Binary(match Arc::try_unwrap(item) {
            Ok(item) => item.bytes,
            Err(shared) => shared.bytes.clone(),
        }));
    }
}

/// What the client is told when a room refuses its frame.
pub(super) fn close_reason(err: &RoomOpError) -> CloseReason {
    match err {
        RoomOpError::Room(RoomError::Decode(e)) => {
            CloseReason::Protocol(format!("malformed message: {e}"))
        }
        RoomOpError::Room(RoomError::BadStateVector(e)) => {
            CloseReason::Protocol(format!("malformed state vector: {e}"))
        }
        RoomOpError::Room(RoomError::BadUpdate(e)) => {
            CloseReason::Unsupported(format!("malformed update: {e}"))
        }
        RoomOpError::Room(RoomError::Rejected(e)) => {
            CloseReason::Unsupported(format!("update rejected: {e}"))
        }
        RoomOpError::Room(RoomError::Unsupported(tag)) => {
            CloseReason::Unsupported(format!("unsupported message type {tag}"))
        }
        RoomOpError::Room(RoomError::TooLarge { limit }) => {
            CloseReason::TooLarge(format!("document would exceed its limit of {limit} bytes"))
        }
        RoomOpError::Room(RoomError::TooManyTypes { limit }) => CloseReason::TooLarge(format!(
            "document would hold more than {limit} shared types"
        )),
        RoomOpError::Room(RoomError::TooManyAwarenessClients { limit }) => CloseReason::Policy(
            format!("a connection may announce at most {limit} awareness clients"),
        ),
        RoomOpError::Room(RoomError::Poisoned) => CloseReason::Reloading,
        RoomOpError::Store(_) => CloseReason::Storage,
    }
}
