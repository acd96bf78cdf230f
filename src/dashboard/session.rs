//! `GET /ws`: a dashboard connection speaking the JSON protocol of [`super::protocol`].
//!
//! Like a document connection it has a reader (this module's `run`) and a writer task that
//! drains a bounded queue (`net::socket::write_loop`); the hub queues events into it. A bad
//! frame is answered with an `error` frame and the connection stays open, until a client sends
//! more than `--max-bad-frames` of them within a minute.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use governor::{Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::catalogue::ChannelSet;
use super::hub::Hub;
use super::presence::Source;
use super::protocol::{self, Action, PresenceUpdate, ProtocolError, ServerFrame};
use super::workspace::{Outgoing, Workspace};
use crate::auth::identity::Plan;
use crate::auth::{Identity, IdentityParams};
use crate::error::ApiError;
use crate::metrics::{self, Failure, Kind};
use crate::net::liveness::Liveness;
use crate::net::registry::{ConnInfo, NewConn, Registration};
use crate::net::socket::{self, Outbound, Reader};
use crate::net::{websocket_required, CloseReason, Closer, ConnId, Remote, Server};

/// Messages the writer takes from the queue per socket flush, and events per `batch` frame.
const WRITE_BATCH: usize = 256;

/// The window in which bad frames are counted against `--max-bad-frames`.
const BAD_FRAME_WINDOW: Duration = Duration::from_secs(60);

/// The upgrade handler: the token is checked (and the workspace loaded) before the upgrade, so
/// a refusal is a JSON answer with its status.
pub async fn upgrade(
    State(server): State<Server>,
    State(hub): State<Arc<Hub>>,
    Remote(remote): Remote,
    params: Result<Query<IdentityParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    const ROUTE: &str = "ws_dashboard";
    let refused = |err: ApiError| {
        metrics::get().failed(err.failure());
        err.into_response()
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(err) => {
            metrics::get().failed(Failure::BadRequest);
            return websocket_required(&err, "the dashboard protocol over WebSocket");
        }
    };
    let Ok(Query(params)) = params else {
        return refused(ApiError::bad_request(
            "bad_query",
            "the query string is malformed",
        ));
    };
    let who = match server
        .auth
        .identify(params.token.as_deref(), &params, Plan::Realtime)
    {
        Ok(who) => who,
        Err(err) => return refused(ApiError::identity(err, ROUTE)),
    };
    let ws = match hub.workspace(&who.workspace).await {
        Ok(ws) => ws,
        Err(err) => return refused(ApiError::storage(&err)),
    };
    let user = (!server.auth.is_open()).then_some(who.user.as_str());
    let admission = match server.connections.admit(remote, &who.workspace, user) {
        Ok(admission) => admission,
        Err(crowded) => return crate::http::extract::crowded(crowded),
    };
    upgrade
        .max_message_size(server.config.max_frame_bytes)
        .max_frame_size(server.config.max_frame_bytes)
        .on_upgrade(move |socket| {
            let conn = ConnId::next();
            let span = tracing::info_span!(
                "dashboard",
                %conn,
                workspace = %who.workspace,
                user = %who.user
            );
            let tasks = server.tasks.clone();
            let closer = Closer::new();
            let registration = server.connections.register(NewConn {
                id: conn,
                kind: Kind::Dashboard,
                user: who.user.clone(),
                workspace: who.workspace.clone(),
                target: "dashboard".into(),
                remote,
                closer: Some(closer.clone()),
                admission: Some(admission),
            });
            let connection = Box::new(Connection {
                conn,
                who,
                registration,
                closer,
            });
            tasks.track_future(run(server, hub, socket, ws, connection).instrument(span))
        })
}

/// A dashboard connection, before its reader starts.
struct Connection {
    conn: ConnId,
    who: Identity,
    registration: Registration,
    closer: Closer,
}

/// Serves one dashboard connection until it closes.
async fn run(
    server: Server,
    hub: Arc<Hub>,
    socket: WebSocket,
    ws: Arc<Workspace>,
    connection: Box<Connection>,
) {
    let Connection {
        conn,
        who,
        registration,
        closer,
    } = *connection;
    let (sink, mut stream) = socket.split();
    let (tx, queue) = mpsc::channel(server.config.outbound_queue);
    let writer = tokio::spawn(socket::write_loop(
        sink,
        queue,
        closer.clone(),
        DashboardOutbound {
            window: server.config.dashboard_batch(),
            batch: Vec::new(),
            last_event: None,
            sent_event: false,
        },
        conn,
        Arc::clone(&registration.info),
    ));
    hub.join(
        &ws,
        conn,
        &who.user,
        who.name.clone(),
        who.docs.clone(),
        tx.clone(),
        closer.clone(),
    );
    if server.shutdown.is_cancelled() {
        closer.close(CloseReason::ShuttingDown);
    }
    {
        // Unregisters however the loop ends, a panic included.
        let _registered = Registered {
            hub: &hub,
            ws: &ws,
            conn,
        };
        let online = PresenceUpdate {
            name: who.name.clone(),
            ..PresenceUpdate::default()
        };
        hub.presence(&ws, &who.user, Source::Dashboard(conn), &online, true);
        tracing::debug!("dashboard connected");
        let session = Session {
            server: &server,
            hub: &hub,
            ws: &ws,
            who: &who,
            conn,
            tx,
            closer: &closer,
            info: &registration.info,
        };
        session.serve(&mut stream).await;
    }
    socket::wind_down(&mut stream, &closer, writer).await;
    tracing::debug!("dashboard disconnected");
}

/// Leaves the hub when dropped.
struct Registered<'a> {
    hub: &'a Arc<Hub>,
    ws: &'a Arc<Workspace>,
    conn: ConnId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.hub.leave(self.ws, self.conn);
    }
}

/// A connection's reader and what it needs.
struct Session<'a> {
    server: &'a Server,
    hub: &'a Arc<Hub>,
    ws: &'a Arc<Workspace>,
    who: &'a Identity,
    conn: ConnId,
    tx: mpsc::Sender<Outgoing>,
    closer: &'a Closer,
    info: &'a ConnInfo,
}

/// Counts bad frames in a window.
struct BadFrames {
    limit: u32,
    count: u32,
    since: Instant,
}

impl BadFrames {
    /// Counts one; true once past the limit.
    fn note(&mut self, now: Instant) -> bool {
        if now.duration_since(self.since) > BAD_FRAME_WINDOW {
            self.count = 0;
            self.since = now;
        }
        self.count += 1;
        self.count > self.limit
    }
}

impl Session<'_> {
    async fn serve(&self, stream: &mut SplitStream<WebSocket>) {
        let config = &self.server.config;
        let liveness = Liveness::new(
            config.ping_interval(),
            config.ping_timeout(),
            self.who.expires_in,
        );
        let mut reader = Reader::new(self.closer, liveness);
        let mut bad = BadFrames {
            limit: config.max_bad_frames,
            count: 0,
            since: Instant::now(),
        };
        let per_sec = NonZeroU32::new(config.dashboard_actions_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = per_sec.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        let actions = RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst));
        let ping = || {
            let _ = self.tx.try_send(Outgoing::Ping);
        };
        while let Some(message) = reader.next(stream, ping).await {
            let refusal = match message {
                WsMessage::Text(text) => {
                    self.info.received(text.len());
                    if text.len() > config.max_dashboard_frame_bytes {
                        Some(ProtocolError::new(
                            "too_large",
                            format!(
                                "a frame may carry at most {} bytes",
                                config.max_dashboard_frame_bytes
                            ),
                        ))
                    } else {
                        match protocol::parse(&text) {
                            Ok(_) if actions.check().is_err() => Some(ProtocolError::new(
                                "rate_limited",
                                format!(
                                    "at most {} actions per second; this one was dropped",
                                    config.dashboard_actions_per_sec
                                ),
                            )),
                            Ok(action) => {
                                self.handle(action).await;
                                None
                            }
                            Err(err) => Some(err),
                        }
                    }
                }
                other => {
                    if let WsMessage::Binary(bytes) = &other {
                        self.info.received(bytes.len());
                    }
                    Some(ProtocolError::new(
                        "binary_frame",
                        "the dashboard protocol speaks JSON in text frames",
                    ))
                }
            };
            if let Some(err) = refusal {
                tracing::debug!(code = err.code, "bad dashboard frame");
                self.reply(err.frame());
                if bad.note(Instant::now()) {
                    tracing::info!(limit = bad.limit, "too many bad frames; closing");
                    self.closer.close(CloseReason::Policy(format!(
                        "more than {} bad frames within a minute",
                        bad.limit
                    )));
                    break;
                }
            }
            if self.closer.is_closed() {
                break;
            }
        }
    }

    /// Queues a reply; a client too far behind to take it is closed.
    fn reply(&self, frame: Utf8Bytes) {
        if self.tx.try_send(Outgoing::Reply(frame)).is_err() {
            self.closer.close(CloseReason::Lagging);
        }
    }

    async fn handle(&self, action: Action) {
        let (hub, ws, user) = (self.hub, self.ws, self.who.user.as_str());
        let source = Source::Dashboard(self.conn);
        if action != Action::Ping {
            hub.touch(ws, user, &source);
        }
        match action {
            Action::Subscribe { channels, since } => {
                let set = ChannelSet::of(&channels);
                if let Err(err) = hub.subscribe(ws, self.conn, set, since).await {
                    tracing::error!(error = %err, "replay failed");
                    self.reply(
                        ProtocolError::new(
                            "storage_unavailable",
                            "the event log could not be read; subscribe again",
                        )
                        .frame(),
                    );
                    return;
                }
                self.reply(self.subscriptions(true, set));
            }
            Action::Unsubscribe { channels } => {
                let set = ChannelSet::of(&channels);
                hub.unsubscribe(ws, self.conn, set);
                self.reply(self.subscriptions(false, set));
            }
            Action::Ping => self.reply(ServerFrame::Pong.text()),
            Action::Presence(update) => hub.presence(ws, user, source, &update, true),
            Action::MarkRead { session_id } => hub.mark_read(ws, user, &session_id),
            Action::Lock { resource } => {
                if !may_lock(self.who, &resource) {
                    self.reply(
                        ProtocolError::new(
                            "forbidden",
                            "a lock needs write access to its document",
                        )
                        .frame(),
                    );
                    return;
                }
                self.reply(hub.lock(ws, self.conn, &resource).await);
            }
            Action::Unlock { resource } => match hub.unlock(ws, self.conn, &resource) {
                Ok(frame) => self.reply(frame),
                // A lost race for a lock is not abuse: answered, not counted.
                Err(err) => self.reply(err.frame()),
            },
        }
    }

    /// `subscribed` or `unsubscribed`: the channels the action named, once they are live
    /// (after any replay), and all the connection now has.
    fn subscriptions(&self, subscribed: bool, changed: ChannelSet) -> Utf8Bytes {
        let now = self.hub.channels(self.ws, self.conn);
        self.info
            .set_target(format!("dashboard: {}", now.names().join(",")));
        let (channels, subscriptions) = (changed.names(), now.names());
        // A page tells the server it is in use well within this (see `presence`).
        let idle_after_ms = u64::try_from(self.hub.idle_after().as_millis()).unwrap_or(u64::MAX);
        let frame = if subscribed {
            ServerFrame::Subscribed {
                channels,
                subscriptions,
                idle_after_ms,
            }
        } else {
            ServerFrame::Unsubscribed {
                channels,
                subscriptions,
                idle_after_ms,
            }
        };
        frame.text()
    }
}

/// How a dashboard connection's queue goes out. Events that become ready within `window` of
/// the last event sent go out together as one `{"type":"batch","events":[...]}` frame (one
/// alone as itself); replies and pings keep their place between events.
struct DashboardOutbound {
    window: Duration,
    /// Events gathered for the batch being written.
    batch: Vec<Utf8Bytes>,
    /// When the last batch holding an event went out.
    last_event: Option<Instant>,
    /// Whether the batch being written holds an event.
    sent_event: bool,
}

impl DashboardOutbound {
    /// The gathered events: one alone as itself, several as a `batch` frame.
    fn flush_events(&mut self, out: &mut Vec<WsMessage>) {
        let frame = match self.batch.len() {
            0 => return,
            1 => self.batch.pop().unwrap_or_default(),
            _ => {
                let frame = protocol::batch(self.batch.iter().map(Utf8Bytes::as_str));
                self.batch.clear();
                frame
            }
        };
        out.push(WsMessage::Text(frame));
    }
}

impl Outbound for DashboardOutbound {
    type Item = Outgoing;

    const BATCH: usize = WRITE_BATCH;

    fn ping() -> Outgoing {
        Outgoing::Ping
    }

    /// Coalescing: an event close behind the previous one waits for the window's end, and
    /// whatever arrived meanwhile goes with it.
    fn hold_until(&self, first: &Outgoing) -> Option<Instant> {
        match (first, self.last_event) {
            (Outgoing::Event(_), Some(at)) => Some(at + self.window),
            _ => None,
        }
    }

    fn encode(&mut self, item: Outgoing, out: &mut Vec<WsMessage>) {
        match item {
            Outgoing::Event(event) => {
                self.sent_event = true;
                self.batch.push(event.frame.clone());
                // The last subscriber to send an event says how long delivery took.
                if let Some(published) = event.handed_over() {
                    metrics::get()
                        .event_delivery
                        .record(metrics::secs(published.elapsed()));
                }
            }
            Outgoing::Reply(reply) => {
                self.flush_events(out);
                out.push(WsMessage::Text(reply));
            }
            Outgoing::Ping => {
                self.flush_events(out);
                out.push(WsMessage::Ping(bytes::Bytes::new()));
            }
        }
    }

    fn end_batch(&mut self, out: &mut Vec<WsMessage>) {
        self.flush_events(out);
    }

    fn written(&mut self) {
        if std::mem::take(&mut self.sent_event) {
            self.last_event = Some(Instant::now());
        }
    }
}

/// Whether `who` may lock `resource` (`{document}#{field}`): it needs write access to the
/// document; a resource that names no document of the workspace needs write access to all of
/// it.
fn may_lock(who: &Identity, resource: &str) -> bool {
    let doc = resource.split('#').next().unwrap_or(resource);
    match crate::docname::DocName::parse(doc) {
        Ok(doc) if doc.workspace() == who.workspace => who.may_write(&doc),
        _ => who.docs.is_none(),
    }
}
