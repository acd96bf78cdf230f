//! `GET /ws/{doc}`: a document over the y-websocket protocol.
//!
//! Each connection has a reader loop (this module's [`run`]) and a writer task that owns the
//! socket's sink and drains the connection's bounded outbound queue. The reader applies frames
//! to the room; the room queues frames for every peer. Whoever decides the connection must end
//! fires its [`Closer`]; the writer then sends the close frame and the reader waits briefly for
//! the client's answer so the close code is not lost to a reset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tandem_crdt::{Access, PeerId, RoomError};
use tandem_sync::{AuthMessage, Message};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::auth::Principal;
use crate::connections::{ConnInfo, NewConn, Registration, Remote};
use crate::docname::DocName;
use crate::error::ApiError;
use crate::metrics::{self, Failure, Kind};
use crate::peer::{CloseReason, Closer, Liveness, Side, Tick};
use crate::rooms::{Frame, Overflow, PeerLink, QueuedFrame, RoomHandle, RoomOpError};
use crate::AppState;

/// Connection ids, unique for the life of the process.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A new connection id, unique among document and dashboard connections.
pub(crate) fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// How many queued frames the writer sends before flushing the socket: one write for a burst.
const WRITE_BATCH_FRAMES: usize = 64;

/// Queued by the reader when a ping is due (an empty frame); the writer sends a WebSocket ping
/// for it. Rooms never queue an empty frame (every message has at least its type), so it
/// cannot be mistaken.
fn ping() -> QueuedFrame {
    Arc::new(Frame::reply(Bytes::new()))
}

/// How long closing may take: the writer finishing its last frame and sending the close frame
/// (a lagging client must drain its socket to see it), and the reader waiting for the client's
/// answer. A client that does nothing meanwhile is cut off.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The upgrade handler. The document name is checked before the upgrade, so a bad one gets a
/// JSON 400 instead of a socket.
pub async fn upgrade(
    State(app): State<AppState>,
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
    let (principal, access) = match app.auth.authorize_doc(params.token.as_deref(), &name) {
        Ok(granted) => granted,
        Err(err) => {
            metrics::get().failed(err.failure());
            return err.refuse("ws_doc", Some(&name)).into_response();
        }
    };
    let max = app.config.max_frame_bytes;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(app.config.ws_read_buffer_bytes)
        .on_upgrade(move |socket| {
            let conn = next_conn_id();
            let span = tracing::info_span!("conn", conn, doc = %name, user = %principal.user);
            let tasks = app.tasks.clone();
            let closer = Closer::new();
            let registration = app.connections.register(NewConn {
                id: conn,
                kind: Kind::Document,
                user: principal.user.clone(),
                workspace: name.workspace().to_owned(),
                target: name.as_str().to_owned(),
                remote,
                closer: Some(closer.clone()),
            });
            let session = Box::new(Session {
                name,
                peer: PeerId(conn),
                access,
                principal,
                closer,
                registration,
            });
            // Split here: a WebSocket held by value as an argument of `run` would stay in the
            // connection task's state for its whole life, even once moved out.
            let (sink, stream) = socket.split();
            tasks.track_future(run(app, sink, stream, session).instrument(span))
        })
}

/// The answer to a plain HTTP request on a WebSocket endpoint: 426 with what it speaks.
pub(crate) fn websocket_required(err: &WebSocketUpgradeRejection, speaks: &str) -> Response {
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "websocket_required",
        format!("this endpoint speaks {speaks}: {}", err.body_text()),
    )
    .into_response()
}

/// The token of a WebSocket request: browsers cannot set headers, so it rides the URL.
#[derive(Debug, serde::Deserialize)]
pub struct TokenParams {
    token: Option<String>,
}

/// Who is connected to which document, with what rights.
struct Session {
    name: DocName,
    peer: PeerId,
    access: Access,
    principal: Principal,
    closer: Closer,
    /// Unregisters the connection when the session ends.
    registration: Registration,
}

/// Serves one connection until it closes.
///
/// Idle connections are most of a server's connections, so this task's state is kept small:
/// joining and closing, awaited once each, run as boxed futures of their own (held inline, the
/// largest would size the task for its whole life), and the loop in between holds only what it
/// uses.
async fn run(
    app: AppState,
    sink: SplitSink<WebSocket, WsMessage>,
    mut stream: SplitStream<WebSocket>,
    session: Box<Session>,
) {
    let (conn, writer) = Box::pin(connect(&app, sink, session)).await;
    // Kept to the end: the close frame's bytes and the whole duration count.
    let mut _registration = None;
    if let Some(conn) = conn {
        {
            // Leaves the room however the loop ends, a panic included: a peer left behind
            // would keep the room loaded and its awareness alive.
            let _membership = Membership {
                rooms: &app.rooms,
                handle: &conn.handle,
                peer: conn.peer,
            };
            serve(&app, &conn, &mut stream).await;
        }
        _registration = Some(conn.registration);
    }
    // Leaving the room dropped the room's sender of the queue and `conn` the last one, so the
    // writer ends by itself once the queue is drained. Meanwhile the reader waits for the
    // client's close answer, so that unread input does not turn our close frame into a
    // connection reset.
    Box::pin(async {
        let abort = writer.task.abort_handle();
        let drain = async {
            if writer.closer.is_closed() {
                drain_until_closed(&mut stream).await;
            }
        };
        let (_, finished) =
            tokio::join!(drain, tokio::time::timeout(CLOSE_TIMEOUT * 2, writer.task));
        if finished.is_err() {
            abort.abort();
        }
    })
    .await;
    tracing::debug!("disconnected");
}

/// A connection that joined its room.
struct Connected {
    handle: Arc<RoomHandle>,
    peer: PeerId,
    access: Access,
    closer: Closer,
    /// A sender of the connection's own queue, for pings.
    pinger: mpsc::Sender<QueuedFrame>,
    /// How long the token has left.
    expires_in: Option<Duration>,
    registration: Registration,
}

/// The writer task and the closer it obeys.
struct Writer {
    task: tokio::task::JoinHandle<()>,
    closer: Closer,
}

/// Starts the writer and joins the room; `None` when the room could not be loaded (the writer
/// then closes the connection with 1011).
async fn connect(
    app: &AppState,
    sink: SplitSink<WebSocket, WsMessage>,
    session: Box<Session>,
) -> (Option<Connected>, Writer) {
    let Session {
        name,
        peer,
        access,
        principal,
        closer,
        registration,
    } = *session;
    let (outbound, queue) = mpsc::channel(app.config.outbound_queue);
    // No span on the writer: entering one on every poll is measurable on the fan-out path, and
    // its only log line names the connection itself.
    let writer = Writer {
        task: tokio::spawn(write_loop(
            sink,
            queue,
            closer.clone(),
            peer,
            Arc::clone(&registration.info),
        )),
        closer: closer.clone(),
    };
    let pinger = outbound.clone();
    let link = PeerLink {
        peer,
        user: Arc::from(principal.user.as_str()),
        outbound,
        closer: closer.clone(),
    };
    // The dashboard hears about this document's awareness: its workspace must be loaded before
    // the first awareness frame, so the hub sees them in order.
    if let Err(err) = app.hub.workspace(name.workspace()).await {
        tracing::warn!(error = %err, "could not load the workspace's dashboard state");
    }
    // A read-only connection is told so first (auth, "permission granted: read"), so its editor
    // can refuse edits up front; y-websocket ignores what it does not know of that message.
    if access == Access::ReadOnly {
        let granted = Message::Auth(AuthMessage::PermissionGranted("read".into())).encode();
        // The queue is new and empty: there is room.
        let _ = link
            .outbound
            .try_send(Arc::new(Frame::reply(Bytes::from(granted))));
    }
    let mut overflow = Overflow::default();
    let joined = app.rooms.join(&name, peer, link, &mut overflow).await;
    overflow.deliver(app.config.lag_timeout()).await;
    let handle = match joined {
        Ok(handle) => handle,
        Err(err) => {
            tracing::error!(error = %err, "could not load the document");
            closer.close(CloseReason::Storage);
            return (None, writer);
        }
    };
    // Shutdown closes the peers it finds in rooms; one that joined after that sees the token.
    if app.shutdown.is_cancelled() {
        closer.close(CloseReason::ShuttingDown);
    }
    tracing::debug!("connected");
    let expires_in = principal.expires_in();
    let conn = Connected {
        handle,
        peer,
        access,
        closer,
        pinger,
        expires_in,
        registration,
    };
    (Some(conn), writer)
}

/// Reads frames and applies them to the room until the connection closes.
async fn serve(app: &AppState, conn: &Connected, stream: &mut SplitStream<WebSocket>) {
    let Connected {
        handle,
        peer,
        access,
        closer,
        pinger,
        expires_in,
        registration,
    } = conn;
    let closed = closer.closed(Side::Reader);
    tokio::pin!(closed);
    let mut liveness = Liveness::new(
        app.config.ping_interval(),
        app.config.ping_timeout(),
        *expires_in,
    );
    let timer = tokio::time::sleep_until(liveness.deadline());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            // Closing and expiry come first: no frame is applied once either has happened.
            biased;
            _ = &mut closed => break,
            _ = &mut timer => {
                match liveness.tick(tokio::time::Instant::now()) {
                    Tick::Nothing => {}
                    Tick::Ping => {
                        // A full queue means the writer is busy anyway; that traffic is the probe.
                        let _ = pinger.try_send(ping());
                    }
                    Tick::Expired => {
                        tracing::info!("token expired; closing with 4401");
                        closer.close(CloseReason::TokenExpired);
                        break;
                    }
                    Tick::Unresponsive => {
                        tracing::info!("peer stopped answering pings; closing");
                        closer.close(CloseReason::Unresponsive);
                        break;
                    }
                }
                timer.as_mut().reset(liveness.deadline());
            }
            incoming = stream.next() => {
                liveness.heard();
                match incoming {
                    Some(Ok(WsMessage::Binary(frame))) => {
                        registration.info.received(frame.len());
                        let mut overflow = Overflow::default();
                        let received = app.rooms.receive(handle, *peer, frame, *access, &mut overflow);
                        if !overflow.is_empty() {
                            // Backpressure: this sender waits while a slow peer catches up.
                            Box::pin(overflow.deliver(app.config.lag_timeout())).await;
                        }
                        if let Err(err) = received {
                            let reason = close_reason(&err);
                            tracing::info!(error = %err, code = reason.code(), "closing connection");
                            closer.close(reason);
                            break;
                        }
                    }
                    Some(Ok(WsMessage::Text(_))) => {
                        closer.close(CloseReason::Unsupported(
                            "text frames are not part of the y-websocket protocol".into(),
                        ));
                        break;
                    }
                    Some(Ok(WsMessage::Close(_))) | None => break,
                    // tungstenite answers pings itself; pongs only prove liveness.
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    Some(Err(err)) => {
                        if let Some(reason) = read_error_reason(err) {
                            tracing::info!(code = reason.code(), reason = %reason.text(), "closing connection");
                            closer.close(reason);
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// Leaves the room when dropped.
struct Membership<'a> {
    rooms: &'a Arc<crate::rooms::Rooms>,
    handle: &'a Arc<RoomHandle>,
    peer: PeerId,
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.rooms.leave(self.handle, self.peer);
    }
}

/// Sends queued frames (and the pings the reader queues), batching whatever is ready into one
/// socket flush, until closed.
async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut queue: mpsc::Receiver<QueuedFrame>,
    closer: Closer,
    peer: PeerId,
    info: Arc<ConnInfo>,
) {
    let mut broken = false;
    let closed = closer.closed(Side::Writer);
    tokio::pin!(closed);
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut closed => break,
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        let write = async {
            sink.feed(outgoing(first, &info)).await?;
            for _ in 1..WRITE_BATCH_FRAMES {
                match queue.try_recv() {
                    Ok(frame) => sink.feed(outgoing(frame, &info)).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        tokio::pin!(write);
        let result = tokio::select! {
            biased;
            // Closing while a write is stuck on a full socket: give it a bounded time to finish,
            // so the close frame that follows lands on a frame boundary.
            _ = &mut closed => {
                if tokio::time::timeout(CLOSE_TIMEOUT, &mut write).await.is_err() {
                    tracing::debug!(conn = %peer, "write did not finish; dropping the connection");
                    return;
                }
                break;
            }
            result = &mut write => result,
        };
        if let Err(err) = result {
            tracing::debug!(conn = %peer, error = %err, "write failed");
            broken = true;
            break;
        }
    }
    finish(sink, &closer, broken).await;
}

/// Sends the close frame with the closer's reason (unless the socket broke) and completes the
/// close handshake, within [`CLOSE_TIMEOUT`].
pub(crate) async fn finish(
    mut sink: SplitSink<WebSocket, WsMessage>,
    closer: &Closer,
    broken: bool,
) {
    let finish = async {
        if let (Some(reason), false) = (closer.reason(), broken) {
            let frame = CloseFrame {
                code: reason.code(),
                reason: reason.text().into(),
            };
            sink.send(WsMessage::Close(Some(frame))).await?;
        }
        // Completes the close handshake when the client started it (tungstenite queued its
        // answer), even after a failed write.
        sink.close().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, finish).await;
}

/// The WebSocket message for a queued frame, counted as sent.
fn outgoing(frame: QueuedFrame, info: &ConnInfo) -> WsMessage {
    if frame.bytes.is_empty() {
        return WsMessage::Ping(Bytes::new());
    }
    info.sent(frame.bytes.len());
    // The last peer to hand a broadcast to its socket says how long it took to reach everyone.
    if let Some(received) = frame.handed_over() {
        metrics::get()
            .propagation
            .record(metrics::secs(received.elapsed()));
    }
    // The last one to hold it takes its bytes; the others share them.
    match Arc::try_unwrap(frame) {
        Ok(frame) => WsMessage::Binary(frame.bytes),
        Err(shared) => WsMessage::Binary(shared.bytes.clone()),
    }
}

/// After the server sent its close frame, reads until the client answers (or the timeout), so
/// the client's unread data does not turn our close into a connection reset.
pub(crate) async fn drain_until_closed(stream: &mut SplitStream<WebSocket>) {
    let drain = async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, WsMessage::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

fn close_reason(err: &RoomOpError) -> CloseReason {
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
        RoomOpError::Room(RoomError::TooManyAwarenessClients { limit }) => CloseReason::Policy(
            format!("a connection may announce at most {limit} awareness clients"),
        ),
        RoomOpError::Room(RoomError::Poisoned) => CloseReason::Reloading,
        RoomOpError::Store(_) => CloseReason::Storage,
    }
}

/// The close reason for a failed read, or `None` when the connection simply broke.
pub(crate) fn read_error_reason(err: axum::Error) -> Option<CloseReason> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
            Some(CloseReason::TooLarge(format!(
                "message of {size} bytes exceeds the limit of {max_size}"
            )))
        }
        Some(WsError::Capacity(e)) => Some(CloseReason::TooLarge(e.to_string())),
        // The peer vanished without a close frame: nothing to tell it.
        Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
            tracing::debug!("connection reset by the peer");
            None
        }
        Some(WsError::Protocol(e)) => Some(CloseReason::Protocol(e.to_string())),
        Some(WsError::Utf8(_)) => Some(CloseReason::Protocol(
            "invalid UTF-8 in a text frame".into(),
        )),
        _ => {
            tracing::debug!(error = %inner, "connection broke");
            None
        }
    }
}
