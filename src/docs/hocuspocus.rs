//! `GET /hocuspocus`: documents over the Hocuspocus protocol, many on one socket.
//!
//! `@hocuspocus/provider` opens one socket and names the document before every message
//! ([`tandem_sync::hocuspocus`]). Each document the client authenticates for becomes a peer of
//! its room, exactly as a `/ws/{doc}` connection is (same rooms, limits, awareness ownership,
//! metrics), with its own token check, and the room's messages come back with the document's
//! address put before them. What Hocuspocus adds is handled here:
//!
//! - **Auth per document**: the token rides an Auth message; the answer is Authenticated
//!   (`read-write` or `readonly`) or PermissionDenied with the reason, and the socket stays open
//!   either way. What the client sends for a document before its token waits (bounded) and is
//!   replayed once it is in.
//! - **SyncStatus once durable**: an update is acknowledged only after the group commit that
//!   makes it durable, so the provider's `unsyncedChanges` reaching 0 means saved (Hocuspocus
//!   itself acknowledges on receipt). A read-only client's update is refused with SyncStatus 0.
//! - **Stateless** messages go to the document's other Hocuspocus clients, bounded in size and
//!   rate; backends send them with `POST /api/v1/docs/{doc}/stateless`.
//! - **Close** detaches one document; the socket and its other documents go on.
//!
//! The connection's task reads frames; one writer drains the connection's own queue (Auth
//! answers, SyncStatus, pings) and one queue per document, the one the room fills
//! ([`Lanes`]). A fault in any document closes the whole socket with the code `/ws/{doc}`
//! would use (the provider reconnects and resyncs every document), and a document whose token
//! expires does too, with 4401, so the provider comes back with a fresh token.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::StreamExt;
use governor::{Quota, RateLimiter};
use tandem_crdt::{Access, PeerId};
use tandem_sync::hocuspocus::{self, Body, Frame, FrameError};
use tandem_sync::message::{MSG_SYNC_STEP_2, MSG_SYNC_UPDATE};
use tandem_sync::{Message, SyncMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::delivery::{Outgoing, Overflow, PeerLink};
use super::rooms::{RoomHandle, Rooms};
use super::socket::close_reason;
use crate::docname::DocName;
use crate::durability::Ticket;
use crate::metrics::{self, Failure, Kind};
use crate::net::liveness::Liveness;
use crate::net::registry::{DocHold, NewConn, Registration};
use crate::net::socket::{self, Outbound, Queue, Reader};
use crate::net::{websocket_required, CloseReason, Closer, ConnId, Remote, Server};

/// Frames one socket may send for documents it has not authenticated yet, and their bytes:
/// the provider sends its sync step 1 and awareness right behind its token, so a few wait at
/// times; more is a client that never authenticates.
const MAX_WAITING_FRAMES: usize = 256;
const MAX_WAITING_BYTES: usize = 4 << 20;

/// The upgrade handler. Who the client is comes with each document's Auth message, so only
/// its address is capped here.
pub async fn upgrade(
    State(server): State<Server>,
    State(rooms): State<Arc<Rooms>>,
    Remote(remote): Remote,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(err) => {
            metrics::get().failed(Failure::BadRequest);
            return websocket_required(&err, "the Hocuspocus protocol");
        }
    };
    let admission = match server.connections.admit(remote, "", None) {
        Ok(admission) => admission,
        Err(crowded) => return crate::http::extract::crowded(crowded),
    };
    crate::net::limited(upgrade, &server.config).on_upgrade(move |ws| {
        let conn = ConnId::next();
        let span = tracing::info_span!("conn", %conn, protocol = "hocuspocus");
        let closer = Closer::new();
        let registration = server.connections.register(NewConn {
            id: conn,
            kind: Kind::Hocuspocus,
            user: String::new(),
            workspace: String::new(),
            target: String::new(),
            remote,
            closer: Some(closer.clone()),
            admission: Some(admission),
        });
        let tasks = server.tasks.clone();
        let (sink, stream) = ws.split();
        tasks.track_future(
            run(server, rooms, sink, stream, conn, closer, registration).instrument(span),
        )
    })
}

/// Serves one socket until it closes.
async fn run(
    server: Server,
    rooms: Arc<Rooms>,
    sink: SplitSink<WebSocket, WsMessage>,
    mut stream: SplitStream<WebSocket>,
    conn: ConnId,
    closer: Closer,
    registration: Registration,
) {
    let (control, queue) = mpsc::channel(server.config.outbound_queue);
    let writer = tokio::spawn(socket::write_loop(
        sink,
        Lanes::new(queue),
        closer.clone(),
        HocuspocusOutbound,
        conn,
        Arc::clone(&registration.info),
    ));
    let (acks, acked) = mpsc::channel(server.config.outbound_queue);
    {
        let per_sec =
            NonZeroU32::new(server.config.max_stateless_per_sec).unwrap_or(NonZeroU32::MIN);
        let mut session = Session {
            server: &server,
            rooms: &rooms,
            closer: &closer,
            registration: &registration,
            control: control.clone(),
            acks,
            docs: HashMap::new(),
            waiting: HashMap::new(),
            waiting_frames: 0,
            waiting_bytes: 0,
            tokens_changed: false,
            v4: false,
            stateless: RateLimiter::direct(Quota::per_second(per_sec)),
        };
        tokio::select! {
            () = session.serve(&mut stream) => {}
            () = acknowledge(&rooms, acked, &control, &closer) => {}
        }
    }
    // Leaving the rooms dropped their senders of the documents' queues; with the control
    // queue's gone too, the writer ends once everything is sent.
    drop(control);
    Box::pin(socket::wind_down(&mut stream, &closer, writer)).await;
    tracing::debug!("disconnected");
}

/// One socket's documents and what waits for theirs.
struct Session<'a> {
    server: &'a Server,
    rooms: &'a Arc<Rooms>,
    closer: &'a Closer,
    registration: &'a Registration,
    /// The connection's own queue: answers, acknowledgements, pings, new documents' queues.
    control: mpsc::Sender<Control>,
    /// Updates to acknowledge once durable.
    acks: mpsc::Sender<Ack>,
    /// The documents it is in, by address.
    docs: HashMap<String, Attached>,
    /// Frames for addresses not authenticated yet, in order.
    waiting: HashMap<String, Vec<Bytes>>,
    waiting_frames: usize,
    waiting_bytes: usize,
    /// A document came, went, or had its token renewed: the socket's expiry is looked at again.
    tokens_changed: bool,
    /// A 4.x provider spoke (its Auth carried its version): it answers the bare ping byte,
    /// which older ones fail on, and its liveness check counts only messages.
    v4: bool,
    stateless: RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        governor::clock::DefaultClock,
    >,
}

/// A document the socket is in.
struct Attached {
    name: DocName,
    handle: Arc<RoomHandle>,
    peer: PeerId,
    access: Access,
    user: String,
    expires_at: Option<Instant>,
    /// The user's hold on the document, under `--max-docs-per-user`.
    _hold: Option<DocHold>,
}

/// An update to acknowledge: the SyncStatus to send once `ticket` is durable.
struct Ack {
    ticket: Ticket,
    status: Bytes,
}

impl Session<'_> {
    /// Reads frames until the connection is over.
    async fn serve(&mut self, stream: &mut SplitStream<WebSocket>) {
        let config = &self.server.config;
        let liveness = Liveness::new(config.ping_interval(), config.ping_timeout(), None);
        let mut reader = Reader::new(self.closer, liveness);
        let mut expires_at = None;
        let mut replay = VecDeque::new();
        loop {
            let frame = match replay.pop_front() {
                Some(frame) => frame,
                None => {
                    let control = &self.control;
                    let v4 = self.v4;
                    let ping = || {
                        let ping = match v4 {
                            true => Control::Frame(Bytes::from_static(&[hocuspocus::PING])),
                            false => Control::WsPing,
                        };
                        let _ = control.try_send(ping);
                    };
                    let Some(message) = reader.next(stream, ping).await else {
                        return;
                    };
                    let WsMessage::Binary(frame) = message else {
                        self.closer.close(CloseReason::Unsupported(
                            "text frames are not part of the Hocuspocus protocol".into(),
                        ));
                        return;
                    };
                    self.registration.info.received(frame.len());
                    frame
                }
            };
            if let Err(reason) = self.handle(frame, &mut replay).await {
                tracing::info!(code = reason.code(), reason = %reason.text(), "closing connection");
                self.closer.close(reason);
                return;
            }
            if std::mem::take(&mut self.tokens_changed) {
                let earliest = self.docs.values().filter_map(|d| d.expires_at).min();
                if earliest != expires_at {
                    expires_at = earliest;
                    reader.set_expiry(earliest);
                }
            }
        }
    }

    /// Acts on one frame; `Err` closes the socket with that reason.
    async fn handle(
        &mut self,
        frame: Bytes,
        replay: &mut VecDeque<Bytes>,
    ) -> Result<(), CloseReason> {
        let (address, body, message) = match hocuspocus::decode(&frame) {
            // Proof of life, which the reader already took note of.
            Ok(Frame::Ping | Frame::Pong) => return Ok(()),
            Ok(Frame::Doc {
                address,
                body,
                message,
            }) => (address, body, message),
            Err(FrameError::Decode(e)) => {
                return Err(CloseReason::Protocol(format!("malformed message: {e}")))
            }
            Err(e) => return Err(CloseReason::Unsupported(e.to_string())),
        };
        match message {
            Body::Token { token, version } => {
                self.v4 |= version.is_some();
                self.tokens_changed = true;
                return self.authenticate(address, token, replay).await;
            }
            // Only servers ask for tokens; from a client, an Auth without one.
            Body::TokenRequest => {
                self.tokens_changed = true;
                return self.authenticate(address, "", replay).await;
            }
            _ => {}
        }
        if !self.docs.contains_key(address) {
            return match message {
                Body::Close(_) => {
                    self.forget_waiting(address);
                    Ok(())
                }
                _ => self.wait(address, frame.clone()),
            };
        }
        match message {
            Body::Room(kind) => self.relay(address, frame.slice(body), kind).await,
            Body::Stateless(payload) => self.stateless(address, payload).await,
            Body::Close(_) => {
                self.detach(address).await;
                Ok(())
            }
            // What only a server sends.
            Body::Authenticated(_)
            | Body::PermissionDenied(_)
            | Body::SyncStatus(_)
            | Body::Token { .. }
            | Body::TokenRequest => Ok(()),
        }
    }

    /// The client's token for `address`: opens the document, or (for one already open, a
    /// token sync) renews its expiry.
    async fn authenticate(
        &mut self,
        address: &str,
        token: &str,
        replay: &mut VecDeque<Bytes>,
    ) -> Result<(), CloseReason> {
        let token = (!token.is_empty()).then_some(token);
        let auth = &self.server.auth;
        if let Some(doc) = self.docs.get_mut(address) {
            match auth.authorize_doc(token, &doc.name) {
                Ok((principal, access)) if principal.user == doc.user => {
                    doc.access = access;
                    doc.expires_at = principal.expires_in().map(|left| Instant::now() + left);
                    return Ok(());
                }
                Ok(_) => {
                    let reason = "forbidden: the new token is another user's";
                    self.detach(address).await;
                    return self.deny(address, reason).await;
                }
                Err(err) => {
                    metrics::get().failed(err.failure());
                    let reason = format!("{}: {err}", err.reason());
                    self.detach(address).await;
                    return self.deny(address, &reason).await;
                }
            }
        }
        let (name, _session) = hocuspocus::split_address(address);
        let name = match DocName::parse(name) {
            Ok(name) => name,
            Err(err) => {
                metrics::get().failed(Failure::BadRequest);
                return self
                    .deny(address, &format!("bad_document_name: {err}"))
                    .await;
            }
        };
        let config = &self.server.config;
        if self.docs.len() >= config.max_docs_per_socket {
            metrics::get().failed(Failure::Limited);
            let reason = format!(
                "too_many_documents: this connection has {} documents open, the most allowed",
                config.max_docs_per_socket
            );
            return self.deny(address, &reason).await;
        }
        let (principal, access) = match auth.authorize_doc(token, &name) {
            Ok(granted) => granted,
            Err(err) => {
                metrics::get().failed(err.failure());
                tracing::info!(doc = %name, reason = err.reason(), "document refused");
                return self
                    .deny(address, &format!("{}: {err}", err.reason()))
                    .await;
            }
        };
        // Anonymous clients of a server without authentication are nobody in particular.
        let hold = match (!auth.is_open()).then(|| {
            self.server
                .connections
                .hold_doc(name.workspace(), &principal.user, name.as_str())
        }) {
            Some(Err(crowded)) => {
                metrics::get().failed(Failure::Limited);
                return self
                    .deny(address, &format!("{}: {crowded}", crowded.code()))
                    .await;
            }
            Some(Ok(hold)) => Some(hold),
            None => None,
        };
        let scope = match access {
            Access::ReadWrite => hocuspocus::SCOPE_READ_WRITE,
            Access::ReadOnly => hocuspocus::SCOPE_READ_ONLY,
        };
        // Authenticated goes first on the document's own queue, which the writer reads only
        // once the peer is in its room: a client told it is in misses nothing said after.
        let (outbound, queue) = mpsc::channel(config.outbound_queue);
        let authenticated = hocuspocus::authenticated_body(scope);
        let _ = outbound.try_send(Arc::new(Outgoing::reply(Bytes::from(authenticated))));
        let peer = PeerId(ConnId::next().0);
        let link = PeerLink {
            peer,
            user: Arc::from(principal.user.as_str()),
            outbound,
            closer: self.closer.clone(),
            stateless: true,
        };
        let mut overflow = Overflow::default();
        let joined = self.rooms.join(&name, link, &mut overflow).await;
        overflow.deliver(config.lag_timeout()).await;
        let handle = match joined {
            Ok(handle) => handle,
            Err(err) => {
                tracing::error!(doc = %name, error = %err, "could not load the document");
                return Err(CloseReason::Storage);
            }
        };
        let _ = self
            .control
            .send(Control::Lane(Lane {
                prefix: Bytes::from(hocuspocus::address_prefix(address)),
                queue,
            }))
            .await;
        tracing::debug!(doc = %name, user = %principal.user, %address, "document opened");
        self.docs.insert(
            address.to_owned(),
            Attached {
                name,
                handle,
                peer,
                access,
                user: principal.user.clone(),
                expires_at: principal.expires_in().map(|left| Instant::now() + left),
                _hold: hold,
            },
        );
        self.describe();
        // Shutdown closes the peers it finds in rooms; one that joined after that sees the token.
        if self.server.shutdown.is_cancelled() {
            return Err(CloseReason::ShuttingDown);
        }
        // What the client sent before its token, in order.
        if let Some(waiting) = self.waiting.remove(address) {
            self.waiting_frames -= waiting.len();
            self.waiting_bytes -= waiting.iter().map(Bytes::len).sum::<usize>();
            replay.extend(waiting);
        }
        Ok(())
    }

    /// Refuses `address` with `reason` (PermissionDenied); the socket stays open.
    async fn deny(&mut self, address: &str, reason: &str) -> Result<(), CloseReason> {
        self.forget_waiting(address);
        self.send(hocuspocus::permission_denied(address, reason))
            .await;
        Ok(())
    }

    /// Keeps a frame for `address` until its token comes.
    fn wait(&mut self, address: &str, frame: Bytes) -> Result<(), CloseReason> {
        let new_address = !self.waiting.contains_key(address);
        if self.waiting_frames >= MAX_WAITING_FRAMES
            || self.waiting_bytes + frame.len() > MAX_WAITING_BYTES
            || (new_address && self.waiting.len() >= self.server.config.max_docs_per_socket)
        {
            return Err(CloseReason::Policy(
                "too much sent for documents without a token (send Auth first)".into(),
            ));
        }
        self.waiting_frames += 1;
        self.waiting_bytes += frame.len();
        self.waiting
            .entry(address.to_owned())
            .or_default()
            .push(frame);
        Ok(())
    }

    fn forget_waiting(&mut self, address: &str) {
        if let Some(waiting) = self.waiting.remove(address) {
            self.waiting_frames -= waiting.len();
            self.waiting_bytes -= waiting.iter().map(Bytes::len).sum::<usize>();
        }
    }

    /// A Sync, Awareness or QueryAwareness message for an open document (`body`: the
    /// y-websocket message it is).
    async fn relay(&mut self, address: &str, body: Bytes, kind: u64) -> Result<(), CloseReason> {
        let Some(doc) = self.docs.get(address) else {
            return Ok(());
        };
        // A sync step 2 or update (its sub-type is the byte after the type): acknowledged once
        // durable. The room reads the message itself; only a read-only one is read here.
        let acknowledge = kind == hocuspocus::MSG_SYNC
            && matches!(
                body.get(1).map(|&sub| u64::from(sub)),
                Some(MSG_SYNC_STEP_2 | MSG_SYNC_UPDATE)
            );
        if acknowledge && doc.access == Access::ReadOnly {
            // Refused as Hocuspocus refuses it: not applied, SyncStatus 0 (the provider keeps
            // it as unsynced). An answer to step 1 with nothing new is in sync.
            let message = tandem_sync::decode(body)
                .map_err(|e| CloseReason::Protocol(format!("malformed message: {e}")))?;
            let taken = match message {
                Message::Sync(SyncMessage::Step2(update)) => doc.handle.lock().room.covers(&update),
                _ => false,
            };
            self.send(hocuspocus::sync_status(address, taken)).await;
            return Ok(());
        }
        let mut overflow = Overflow::default();
        let received = self
            .rooms
            .receive(&doc.handle, doc.peer, body, doc.access, &mut overflow);
        if !overflow.is_empty() {
            // Backpressure: this sender waits while a slow peer catches up.
            Box::pin(overflow.deliver(self.server.config.lag_timeout())).await;
        }
        let ticket = received.map_err(|err| {
            let reason = close_reason(&err);
            tracing::info!(doc = %doc.name, error = %err, "refused a message");
            reason
        })?;
        if acknowledge {
            // An update that changed nothing may be on its way to disk from someone else.
            let ticket = ticket.unwrap_or_else(|| self.rooms.barrier());
            let status = Bytes::from(hocuspocus::sync_status(address, true));
            let _ = self.acks.send(Ack { ticket, status }).await;
        }
        Ok(())
    }

    /// A client's stateless message: to the document's other Hocuspocus clients.
    async fn stateless(&mut self, address: &str, payload: &str) -> Result<(), CloseReason> {
        let config = &self.server.config;
        if payload.len() > config.max_stateless_bytes {
            return Err(CloseReason::TooLarge(format!(
                "a stateless message may carry at most {} bytes",
                config.max_stateless_bytes
            )));
        }
        if self.stateless.check().is_err() {
            return Err(CloseReason::Policy(format!(
                "at most {} stateless messages per second",
                config.max_stateless_per_sec
            )));
        }
        let Some(doc) = self.docs.get(address) else {
            return Ok(());
        };
        let body = Bytes::from(hocuspocus::stateless_body(payload));
        let mut overflow = Overflow::default();
        self.rooms
            .stateless(&doc.handle, Some(doc.peer), body, &mut overflow);
        if !overflow.is_empty() {
            Box::pin(overflow.deliver(config.lag_timeout())).await;
        }
        Ok(())
    }

    /// Leaves the document on `address` (the client detached it); the socket goes on.
    async fn detach(&mut self, address: &str) {
        if let Some(doc) = self.docs.remove(address) {
            self.tokens_changed = true;
            self.rooms.leave(&doc.handle, doc.peer);
            tracing::debug!(doc = %doc.name, %address, "document closed");
            self.describe();
            self.send(hocuspocus::close(address, Some("provider_initiated")))
                .await;
        }
    }

    /// Queues a frame of the connection's own.
    async fn send(&self, frame: Vec<u8>) {
        let _ = self.control.send(Control::Frame(Bytes::from(frame))).await;
    }

    /// What the connection list says of this socket: the documents it has open.
    fn describe(&self) {
        let mut names: Vec<&str> = self.docs.values().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        self.registration.info.set_target(names.join(" "));
    }
}

impl Drop for Session<'_> {
    /// Leaves every room however the session ends, a panic included: a peer left behind would
    /// keep its room loaded and its awareness alive.
    fn drop(&mut self) {
        for (_, doc) in self.docs.drain() {
            self.rooms.leave(&doc.handle, doc.peer);
        }
    }
}

/// Sends the SyncStatus of each update once it is durable, in order (tickets only grow, so
/// waiting for one in turn costs nothing more). A store that cannot make one durable closes
/// the socket: the provider reconnects and sends what is still unsynced again.
async fn acknowledge(
    rooms: &Rooms,
    mut acks: mpsc::Receiver<Ack>,
    control: &mpsc::Sender<Control>,
    closer: &Closer,
) {
    while let Some(Ack { ticket, status }) = acks.recv().await {
        if let Err(err) = rooms.durable(ticket).await {
            tracing::warn!(error = %err, "an update was not made durable; closing so it is sent again");
            closer.close(CloseReason::Storage);
            return;
        }
        if control.send(Control::Frame(status)).await.is_err() {
            return;
        }
    }
}

/// What the connection's own queue carries.
enum Control {
    /// A whole frame.
    Frame(Bytes),
    /// A WebSocket ping (for providers older than 4.x).
    WsPing,
    /// A document's queue, read from now on.
    Lane(Lane),
}

/// The queue a room fills for one document of the socket, and the address its messages go to.
struct Lane {
    prefix: Bytes,
    queue: mpsc::Receiver<Arc<Outgoing>>,
}

/// What the writer sends.
enum Item {
    Frame(Bytes),
    WsPing,
    /// A room's message, to put on the address `prefix`.
    Doc(Bytes, Arc<Outgoing>),
}

/// The connection's queue and its documents' queues read as one: its own first (an
/// Authenticated goes out before what its document's room says), then the documents' in turn.
/// A document's queue is dropped once its room lets go of it; the whole ends when the
/// connection's queue and every document's are closed and empty.
struct Lanes {
    control: mpsc::Receiver<Control>,
    control_open: bool,
    lanes: Vec<Lane>,
    next: usize,
}

impl Lanes {
    fn new(control: mpsc::Receiver<Control>) -> Lanes {
        Lanes {
            control,
            control_open: true,
            lanes: Vec::new(),
            next: 0,
        }
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        while self.control_open {
            match self.control.poll_recv(cx) {
                Poll::Ready(Some(Control::Lane(lane))) => self.lanes.push(lane),
                Poll::Ready(Some(Control::Frame(frame))) => {
                    return Poll::Ready(Some(Item::Frame(frame)))
                }
                Poll::Ready(Some(Control::WsPing)) => return Poll::Ready(Some(Item::WsPing)),
                Poll::Ready(None) => self.control_open = false,
                Poll::Pending => break,
            }
        }
        let mut polled = 0;
        while polled < self.lanes.len() {
            let at = (self.next + polled) % self.lanes.len();
            match self.lanes[at].queue.poll_recv(cx) {
                Poll::Ready(Some(message)) => {
                    self.next = at + 1;
                    let prefix = self.lanes[at].prefix.clone();
                    return Poll::Ready(Some(Item::Doc(prefix, message)));
                }
                Poll::Ready(None) => {
                    self.lanes.swap_remove(at);
                }
                Poll::Pending => polled += 1,
            }
        }
        match !self.control_open && self.lanes.is_empty() {
            true => Poll::Ready(None),
            false => Poll::Pending,
        }
    }
}

impl Queue<Item> for Lanes {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Item>> + Send {
        std::future::poll_fn(move |cx| self.poll_item(cx))
    }

    fn try_recv(&mut self) -> Option<Item> {
        // The writer polls `recv` again (with its own waker) before it ever waits.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_item(&mut cx) {
            Poll::Ready(item) => item,
            Poll::Pending => None,
        }
    }
}

/// How a Hocuspocus socket's items go out: a room's message with its document's address put
/// before it, everything else as it is.
struct HocuspocusOutbound;

impl Outbound for HocuspocusOutbound {
    type Item = Item;

    const BATCH: usize = 64;

    fn ping() -> Item {
        Item::WsPing
    }

    fn encode(&mut self, item: Item, out: &mut Vec<WsMessage>) {
        match item {
            Item::Frame(frame) => out.push(WsMessage::Binary(frame)),
            Item::WsPing => out.push(WsMessage::Ping(Bytes::new())),
            Item::Doc(prefix, message) => {
                if let Some(received) = message.handed_over() {
                    metrics::get()
                        .propagation
                        .record(metrics::secs(received.elapsed()));
                }
                out.push(WsMessage::Binary(message.addressed(&prefix)));
            }
        }
    }
}
