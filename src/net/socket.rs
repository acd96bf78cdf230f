//! What both WebSocket endpoints (`/ws/{doc}` and `/ws`) do the same way: the reader's wait for
//! the next message ([`Reader`]), the one writer loop ([`write_loop`], told how to encode its
//! queue by an [`Outbound`]), and the close handshake.
//!
//! Each connection has a reader (the connection's task) and a writer task that owns the socket's
//! sink and drains a bounded queue. Whoever decides the connection must end fires its
//! [`Closer`]; the writer then sends the close frame, and the reader waits briefly for the
//! client's answer so the close code is not lost to a reset.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use super::close::{CloseReason, Closer, Side};
use super::liveness::{Liveness, Tick};
use super::registry::{ConnId, ConnInfo};

/// How long closing may take: the writer finishing its last frame and sending the close frame
/// (a lagging client must drain its socket to see it), and the reader waiting for the client's
/// answer. A client that does nothing meanwhile is cut off.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's reader: the next message from the client, with the connection's timer
/// (pings, silence, the token's expiry) and its closer minded on the way.
pub struct Reader<'a> {
    closer: &'a Closer,
    liveness: Liveness,
    timer: Pin<Box<Sleep>>,
}

impl<'a> Reader<'a> {
    /// A reader of the connection `closer` closes, on the timer of `liveness`.
    pub fn new(closer: &'a Closer, liveness: Liveness) -> Self {
        let timer = Box::pin(tokio::time::sleep_until(liveness.deadline()));
        Reader {
            closer,
            liveness,
            timer,
        }
    }

    /// Makes the connection end at `at` (with 4401, as a token expiry), or never.
    pub fn set_expiry(&mut self, at: Option<Instant>) {
        self.liveness.set_expiry(at);
        let deadline = self.liveness.deadline();
        self.timer.as_mut().reset(deadline);
    }

    /// The next text or binary message; `None` once the connection is over: closed by the
    /// server (the closer fired, the token expired, the client went silent, a read failed
    /// with a reason to give) or by the client. A due ping is handed to `ping` to queue.
    pub async fn next(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        ping: impl Fn(),
    ) -> Option<WsMessage> {
        loop {
            let closed = self.closer.closed(Side::Reader);
            let incoming = tokio::select! {
                // Closing and expiry come first: no message is handed on once either happened.
                biased;
                _ = closed => return None,
                _ = self.timer.as_mut() => {
                    match self.liveness.tick(Instant::now()) {
                        Tick::Nothing => {}
                        // A full queue means the writer is busy anyway; that traffic is the probe.
                        Tick::Ping => ping(),
                        Tick::Expired => {
                            tracing::info!("token expired; closing with 4401");
                            self.closer.close(CloseReason::TokenExpired);
                            return None;
                        }
                        Tick::Unresponsive => {
                            tracing::info!("client stopped answering pings; closing");
                            self.closer.close(CloseReason::Unresponsive);
                            return None;
                        }
                    }
                    let deadline = self.liveness.deadline();
                    self.timer.as_mut().reset(deadline);
                    continue;
                }
                incoming = stream.next() => incoming,
            };
            self.liveness.heard();
            match incoming {
                Some(Ok(message @ (WsMessage::Binary(_) | WsMessage::Text(_)))) => {
                    return Some(message)
                }
                // tungstenite answers pings itself; pongs only prove liveness.
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                Some(Ok(WsMessage::Close(_))) | None => return None,
                Some(Err(err)) => {
                    if let Some(reason) = read_error_reason(err) {
                        tracing::info!(code = reason.code(), reason = %reason.text(), "closing connection");
                        self.closer.close(reason);
                    }
                    return None;
                }
            }
        }
    }
}

/// How a connection's queued items go out: the protocol's part of [`write_loop`].
pub trait Outbound: Send + 'static {
    /// What the connection's queue carries.
    type Item: Send + 'static;

    /// Items taken from the queue per socket flush: one write for a burst.
    const BATCH: usize;

    /// The item a reader queues when a ping is due.
    fn ping() -> Self::Item;

    /// When `first`, next in line, may go out; `None` (the default) for now. The dashboard holds
    /// an event that closely follows the last one, to send what comes meanwhile with it.
    fn hold_until(&self, first: &Self::Item) -> Option<Instant> {
        let _ = first;
        None
    }

    /// Appends the messages for `item` to `out`; it may keep some back until
    /// [`Outbound::end_batch`].
    fn encode(&mut self, item: Self::Item, out: &mut Vec<WsMessage>);

    /// The batch is complete: appends whatever [`Outbound::encode`] kept back.
    fn end_batch(&mut self, out: &mut Vec<WsMessage>) {
        let _ = out;
    }

    /// The batch went out whole.
    fn written(&mut self) {}
}

/// Where a writer takes its items from: a connection's queue, or (for many documents on one
/// socket) several queues read as one.
pub trait Queue<T>: Send {
    /// The next item; `None` once every sender is gone and nothing is left. Cancel-safe.
    fn recv(&mut self) -> impl std::future::Future<Output = Option<T>> + Send;

    /// The next item if one is ready.
    fn try_recv(&mut self) -> Option<T>;
}

impl<T: Send> Queue<T> for mpsc::Receiver<T> {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<T>> + Send {
        mpsc::Receiver::recv(self)
    }

    fn try_recv(&mut self) -> Option<T> {
        mpsc::Receiver::try_recv(self).ok()
    }
}

/// Sends queued items until the closer fires or every sender is gone, batching whatever is
/// ready into one socket flush; then sends the close frame (`finish`).
pub async fn write_loop<O: Outbound>(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut queue: impl Queue<O::Item>,
    closer: Closer,
    mut outbound: O,
    conn: ConnId,
    info: Arc<ConnInfo>,
) {
    let mut broken = false;
    let closed = closer.closed(Side::Writer);
    tokio::pin!(closed);
    let mut out = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut closed => break,
            item = queue.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        if let Some(until) = outbound.hold_until(&first) {
            if until > Instant::now() {
                tokio::select! {
                    biased;
                    _ = &mut closed => break,
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
        }
        outbound.encode(first, &mut out);
        for _ in 1..O::BATCH {
            match queue.try_recv() {
                Some(item) => outbound.encode(item, &mut out),
                None => break,
            }
        }
        outbound.end_batch(&mut out);
        let write = async {
            for message in out.drain(..) {
                if let WsMessage::Binary(bytes) = &message {
                    info.sent(bytes.len());
                } else if let WsMessage::Text(text) = &message {
                    info.sent(text.len());
                }
                sink.feed(message).await?;
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
                    tracing::debug!(%conn, "write did not finish; dropping the connection");
                    return;
                }
                break;
            }
            result = &mut write => result,
        };
        match result {
            Ok(()) => outbound.written(),
            Err(err) => {
                tracing::debug!(%conn, error = %err, "write failed");
                broken = true;
                break;
            }
        }
    }
    finish(sink, &closer, broken).await;
}

/// Sends the close frame with the closer's reason (unless the socket broke) and completes the
/// close handshake, within [`CLOSE_TIMEOUT`].
async fn finish(mut sink: SplitSink<WebSocket, WsMessage>, closer: &Closer, broken: bool) {
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

/// Ends a connection whose reader is done: waits for the writer (which sends the close frame
/// once the closer fired, or ends when its queue's senders are gone) while reading until the
/// client answers the close, so that its unread data does not turn our close frame into a
/// connection reset. A writer that takes longer than twice [`CLOSE_TIMEOUT`] is aborted.
pub async fn wind_down(
    stream: &mut SplitStream<WebSocket>,
    closer: &Closer,
    writer: tokio::task::JoinHandle<()>,
) {
    let abort = writer.abort_handle();
    let drain = async {
        if closer.is_closed() {
            drain_until_closed(stream).await;
        }
    };
    let (_, finished) = tokio::join!(drain, tokio::time::timeout(CLOSE_TIMEOUT * 2, writer));
    if finished.is_err() {
        abort.abort();
    }
}

/// After the server sent its close frame, reads until the client answers (or the timeout), so
/// the client's unread data does not turn our close into a connection reset.
async fn drain_until_closed(stream: &mut SplitStream<WebSocket>) {
    let drain = async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, WsMessage::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

/// The close reason for a failed read, or `None` when the connection simply broke.
fn read_error_reason(err: axum::Error) -> Option<CloseReason> {
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
