//! `GET /ws`: a dashboard connection speaking the JSON protocol of [`super::protocol`].
//!
//! Like a document connection it has a reader (this module's [`run`]) and a writer task that
//! drains a bounded queue; the hub queues events into it. A bad frame is answered with an
//! `error` frame and the connection stays open, until a client sends more than
//! `--max-bad-frames` of them within a minute.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::{Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::hub::{Hub, Outgoing, Workspace};
use super::presence::Source;
use super::protocol::{self, Action, PresenceUpdate, ProtocolError};
use super::ChannelSet;
use crate::api::{identity, Identity, IdentityParams};
use crate::connections::{ConnInfo, NewConn, Registration, Remote};
use crate::error::ApiError;
use crate::metrics::{Failure, Kind};
use crate::peer::{CloseReason, Closer, Liveness, Side, Tick};
use crate::ws::{drain_until_closed, finish, read_error_reason, websocket_required, CLOSE_TIMEOUT};
use crate::AppState;

/// Frames the writer sends per socket flush, and events per `batch` frame.
const WRITE_BATCH: usize = 256;

/// The window in which bad frames are counted against `--max-bad-frames`.
const BAD_FRAME_WINDOW: Duration = Duration::from_secs(60);

/// The upgrade handler: the token is checked (and the workspace loaded) before the upgrade, so
/// a refusal is a JSON answer with its status.
pub async fn upgrade(
    State(app): State<AppState>,
    Remote(remote): Remote,
    params: Result<Query<IdentityParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    const ROUTE: &str = "ws_dashboard";
    let refused = |err: ApiError| {
        crate::metrics::get().failed(Failure::of(&err));
        err.into_response()
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(err) => {
            crate::metrics::get().failed(Failure::BadRequest);
            return websocket_required(&err, "the dashboard protocol over WebSocket");
        }
    };
    let Ok(Query(params)) = params else {
        return refused(ApiError::bad_request(
            "bad_query",
            "the query string is malformed",
        ));
    };
    let who = match identity(&app, params.token.as_deref(), &params, ROUTE, true) {
        Ok(who) => who,
        Err(err) => return refused(err),
    };
    let ws = match app.hub.workspace(&who.workspace).await {
        Ok(ws) => ws,
        Err(err) => return refused(ApiError::storage(&err)),
    };
    upgrade
        .max_message_size(app.config.max_frame_bytes)
        .max_frame_size(app.config.max_frame_bytes)
        .on_upgrade(move |socket| {
            let conn = crate::ws::next_conn_id();
            let span = tracing::info_span!(
                "dashboard",
                conn,
                workspace = %who.workspace,
                user = %who.user
            );
            let tasks = app.tasks.clone();
            let closer = Closer::new();
            let registration = app.connections.register(NewConn {
                id: conn,
                kind: Kind::Dashboard,
                user: who.user.clone(),
                workspace: who.workspace.clone(),
                target: "dashboard".into(),
                remote,
                closer: Some(closer.clone()),
            });
            let connection = Box::new((who, registration, closer));
            tasks.track_future(run(app, socket, ws, connection, conn).instrument(span))
        })
}

/// Serves one dashboard connection until it closes.
async fn run(
    app: AppState,
    socket: WebSocket,
    ws: Arc<Workspace>,
    connection: Box<(Identity, Registration, Closer)>,
    conn: u64,
) {
    let (who, registration, closer) = *connection;
    let (sink, mut stream) = socket.split();
    let (tx, queue) = mpsc::channel(app.config.outbound_queue);
    let writer = tokio::spawn(write_loop(
        sink,
        queue,
        closer.clone(),
        app.config.dashboard_batch(),
        Arc::clone(&registration.info),
    ));
    let hub = Arc::clone(&app.hub);
    hub.join(
        &ws,
        conn,
        &who.user,
        who.name.clone(),
        tx.clone(),
        closer.clone(),
    );
    if app.shutdown.is_cancelled() {
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
            app: &app,
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
    let abort = writer.abort_handle();
    let drain = async {
        if closer.is_closed() {
            drain_until_closed(&mut stream).await;
        }
    };
    let (_, finished) = tokio::join!(drain, tokio::time::timeout(CLOSE_TIMEOUT * 2, writer));
    if finished.is_err() {
        abort.abort();
    }
    tracing::debug!("dashboard disconnected");
}

/// Leaves the hub when dropped.
struct Registered<'a> {
    hub: &'a Arc<Hub>,
    ws: &'a Arc<Workspace>,
    conn: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.hub.leave(self.ws, self.conn);
    }
}

/// A connection's reader and what it needs.
struct Session<'a> {
    app: &'a AppState,
    hub: &'a Arc<Hub>,
    ws: &'a Arc<Workspace>,
    who: &'a Identity,
    conn: u64,
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
        let config = &self.app.config;
        let closed = self.closer.closed(Side::Reader);
        tokio::pin!(closed);
        let mut liveness = Liveness::new(
            config.ping_interval(),
            config.ping_timeout(),
            self.who.expires_in,
        );
        let timer = tokio::time::sleep_until(liveness.deadline());
        tokio::pin!(timer);
        let mut bad = BadFrames {
            limit: config.max_bad_frames,
            count: 0,
            since: Instant::now(),
        };
        let per_sec = NonZeroU32::new(config.dashboard_actions_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = per_sec.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        let actions = RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst));
        loop {
            let incoming = tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = &mut timer => {
                    match liveness.tick(Instant::now()) {
                        Tick::Nothing => {}
                        Tick::Ping => {
                            let _ = self.tx.try_send(Outgoing::Ping);
                        }
                        Tick::Expired => {
                            tracing::info!("token expired; closing with 4401");
                            self.closer.close(CloseReason::TokenExpired);
                            break;
                        }
                        Tick::Unresponsive => {
                            tracing::info!("dashboard client stopped answering pings; closing");
                            self.closer.close(CloseReason::Unresponsive);
                            break;
                        }
                    }
                    timer.as_mut().reset(liveness.deadline());
                    continue;
                }
                incoming = stream.next() => incoming,
            };
            liveness.heard();
            if let Some(Ok(WsMessage::Text(text))) = &incoming {
                self.info.received(text.len());
            } else if let Some(Ok(WsMessage::Binary(bytes))) = &incoming {
                self.info.received(bytes.len());
            }
            let refusal = match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    if text.len() > config.max_dashboard_frame_bytes {
                        Some(ProtocolError {
                            code: "too_large",
                            message: format!(
                                "a frame may carry at most {} bytes",
                                config.max_dashboard_frame_bytes
                            ),
                        })
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
                Some(Ok(WsMessage::Binary(_))) => Some(ProtocolError {
                    code: "binary_frame",
                    message: "the dashboard protocol speaks JSON in text frames".into(),
                }),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => None,
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Err(err)) => {
                    if let Some(reason) = read_error_reason(err) {
                        tracing::info!(code = reason.code(), reason = %reason.text(), "closing dashboard connection");
                        self.closer.close(reason);
                    }
                    break;
                }
            };
            if let Some(err) = refusal {
                tracing::debug!(code = err.code, "bad dashboard frame");
                self.reply(err.frame().into());
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
                        ProtocolError {
                            code: "storage_unavailable",
                            message: "the event log could not be read; subscribe again".into(),
                        }
                        .frame()
                        .into(),
                    );
                    return;
                }
                self.reply(self.subscriptions("subscribed", set));
            }
            Action::Unsubscribe { channels } => {
                let set = ChannelSet::of(&channels);
                hub.unsubscribe(ws, self.conn, set);
                self.reply(self.subscriptions("unsubscribed", set));
            }
            Action::Ping => self.reply(r#"{"type":"pong"}"#.into()),
            Action::Presence(update) => hub.presence(ws, user, source, &update, true),
            Action::MarkRead { session_id } => hub.mark_read(ws, user, &session_id),
            Action::Lock { resource } => self.reply(hub.lock(ws, self.conn, &resource)),
            Action::Unlock { resource } => match hub.unlock(ws, self.conn, &resource) {
                Ok(frame) => self.reply(frame),
                // A lost race for a lock is not abuse: answered, not counted.
                Err(err) => self.reply(err.frame().into()),
            },
        }
    }

    /// `{"type":"subscribed","channels":[...]}`: the channels the action named, once they are
    /// live (after any replay), and all the connection now has.
    fn subscriptions(&self, kind: &str, changed: ChannelSet) -> Utf8Bytes {
        let now = self.hub.channels(self.ws, self.conn);
        self.info
            .set_target(format!("dashboard: {}", now.names().join(",")));
        serde_json::json!({
            "type": kind,
            "channels": changed.names(),
            "subscriptions": now.names(),
            // A page tells the server it is in use well within this (see `presence`).
            "idle_after_ms": u64::try_from(self.hub.idle_after().as_millis()).unwrap_or(u64::MAX),
        })
        .to_string()
        .into()
    }
}

/// Sends queued frames until closed. Events that become ready within `window` of the last
/// event sent go out together as one `{"type":"batch","events":[...]}` frame; replies keep
/// their place between events.
async fn write_loop(
    sink: SplitSink<WebSocket, WsMessage>,
    mut queue: mpsc::Receiver<Outgoing>,
    closer: Closer,
    window: Duration,
    info: Arc<ConnInfo>,
) {
    let mut sink = sink;
    let mut broken = false;
    let mut last_event: Option<Instant> = None;
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
        // Coalescing: an event close behind the previous one waits for the window's end, and
        // whatever arrived meanwhile goes with it.
        if let (Outgoing::Event(_), Some(at)) = (&first, last_event) {
            let end = at + window;
            if end > Instant::now() {
                tokio::select! {
                    biased;
                    _ = &mut closed => break,
                    _ = tokio::time::sleep_until(end) => {}
                }
            }
        }
        let write = async {
            let mut sent_event = false;
            let mut batch: Vec<Utf8Bytes> = Vec::new();
            let mut next = Some(first);
            let mut count = 0;
            while let Some(frame) = next.take() {
                match frame {
                    Outgoing::Event(event) => {
                        sent_event = true;
                        batch.push(event.frame.clone());
                        // The last subscriber to send an event says how long delivery took.
                        if let Some(published) = event.handed_over() {
                            crate::metrics::get()
                                .event_delivery
                                .record(crate::metrics::secs(published.elapsed()));
                        }
                    }
                    Outgoing::Reply(reply) => {
                        feed_batch(&mut sink, &mut batch, &info).await?;
                        info.sent(reply.len());
                        sink.feed(WsMessage::Text(reply)).await?;
                    }
                    Outgoing::Ping => {
                        feed_batch(&mut sink, &mut batch, &info).await?;
                        sink.feed(WsMessage::Ping(bytes::Bytes::new())).await?;
                    }
                }
                count += 1;
                if count < WRITE_BATCH {
                    next = queue.try_recv().ok();
                }
            }
            feed_batch(&mut sink, &mut batch, &info).await?;
            sink.flush().await.map(|()| sent_event)
        };
        tokio::pin!(write);
        let result = tokio::select! {
            biased;
            _ = &mut closed => {
                if tokio::time::timeout(CLOSE_TIMEOUT, &mut write).await.is_err() {
                    return;
                }
                break;
            }
            result = &mut write => result,
        };
        match result {
            Ok(true) => last_event = Some(Instant::now()),
            Ok(false) => {}
            Err(err) => {
                tracing::debug!(error = %err, "dashboard write failed");
                broken = true;
                break;
            }
        }
    }
    finish(sink, &closer, broken).await;
}

/// Feeds the gathered events: one alone as itself, several as a `batch` frame.
async fn feed_batch(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    batch: &mut Vec<Utf8Bytes>,
    info: &ConnInfo,
) -> Result<(), axum::Error> {
    let frame = match batch.len() {
        0 => return Ok(()),
        1 => batch.pop().unwrap_or_default(),
        _ => {
            let mut text = String::from(r#"{"type":"batch","events":["#);
            for (i, event) in batch.drain(..).enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(event.as_str());
            }
            text.push_str("]}");
            text.into()
        }
    };
    info.sent(frame.len());
    sink.feed(WsMessage::Text(frame)).await
}
