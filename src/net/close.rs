//! How a connection is told to close: [`Closer`], shared by the connection's reader and writer
//! and by whoever may find its queue full (a room, the dashboard hub, an administrator), and
//! [`CloseReason`], which maps each reason to its WebSocket close code.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

/// Why a connection is closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// A malformed message or frame (1002).
    Protocol(String),
    /// Well-formed but unacceptable data: an update yrs rejects, an unknown message type, a
    /// text frame (1003).
    Unsupported(String),
    /// A limit of the server's policy was exceeded (1008).
    Policy(String),
    /// A frame or document over its size limit (1009).
    TooLarge(String),
    /// The outbound queue filled up (1013); the client resyncs on reconnect.
    Lagging,
    /// The document is being reloaded after an internal failure (1013).
    Reloading,
    /// Storage failed (1011).
    Storage,
    /// The server is shutting down (1001).
    ShuttingDown,
    /// The token expired during the connection (4401); reconnect with a fresh one.
    TokenExpired,
    /// The peer answered no ping within the timeout (4408).
    Unresponsive,
    /// An administrator closed the connection (4000).
    Kicked,
}

/// The longest close reason a close frame can carry (125 bytes of payload minus the code).
const MAX_REASON_BYTES: usize = 123;

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Protocol(_) => 1002,
            CloseReason::Unsupported(_) => 1003,
            CloseReason::Policy(_) => 1008,
            CloseReason::TooLarge(_) => 1009,
            CloseReason::Lagging | CloseReason::Reloading => 1013,
            CloseReason::Storage => 1011,
            CloseReason::ShuttingDown => 1001,
            CloseReason::TokenExpired => 4401,
            CloseReason::Unresponsive => 4408,
            CloseReason::Kicked => 4000,
        }
    }

    /// The reason text, cut to what a close frame can carry.
    pub fn text(&self) -> String {
        let text = match self {
            CloseReason::Protocol(s)
            | CloseReason::Unsupported(s)
            | CloseReason::Policy(s)
            | CloseReason::TooLarge(s) => s.as_str(),
            CloseReason::Lagging => "client too slow: outbound queue full; reconnect to resync",
            CloseReason::Reloading => "document is reloading; reconnect",
            CloseReason::Storage => "storage unavailable; try again later",
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::TokenExpired => "token expired; reconnect with a fresh token",
            CloseReason::Unresponsive => "no answer to pings",
            CloseReason::Kicked => "closed by an administrator",
        };
        let mut end = text.len().min(MAX_REASON_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    }
}

/// A one-shot close signal with the reason that fired it first.
///
/// Both halves of a connection wait on it in every round of their loops, so waiting is cheap:
/// one atomic load, and a waker stored in the half's own slot (no lock, unlike
/// `CancellationToken`, whose every poll takes a mutex).
#[derive(Clone, Default)]
pub struct Closer {
    inner: Arc<CloserInner>,
}

#[derive(Default)]
struct CloserInner {
    reason: OnceLock<CloseReason>,
    /// The waiting reader's and writer's wakers, by [`Side`].
    wakers: [AtomicWaker; 2],
    /// Since when, and how long in all, senders have waited on this connection's full queue.
    stall: Mutex<Option<(Instant, Duration)>>,
}

/// Which half of a connection waits for it to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Reader = 0,
    Writer = 1,
}

impl Closer {
    pub fn new() -> Closer {
        Closer::default()
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.inner.reason.set(reason);
        for waker in &self.inner.wakers {
            waker.wake();
        }
    }

    /// Resolves once `close` was called. One waiter per side at a time.
    pub fn closed(&self, side: Side) -> Closed<'_> {
        Closed {
            inner: &self.inner,
            side,
        }
    }

    /// Records that senders waited `waited` for room in this connection's queue. True when,
    /// within a window of ten times `budget`, they have waited more than `budget` in all: a
    /// client that keeps holding its room back, even if it never stalls for `budget` at once.
    pub fn note_stall(&self, waited: Duration, budget: Duration) -> bool {
        let now = Instant::now();
        let mut stall = self.inner.stall.lock().unwrap_or_else(|e| e.into_inner());
        let (since, spent) = match *stall {
            Some((since, spent)) if now.duration_since(since) <= budget * 10 => (since, spent),
            _ => (now, Duration::ZERO),
        };
        let spent = spent + waited;
        *stall = Some((since, spent));
        spent > budget
    }

    /// The reason, once closed.
    pub fn reason(&self) -> Option<&CloseReason> {
        self.inner.reason.get()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.reason.get().is_some()
    }
}

/// The future of [`Closer::closed`].
pub struct Closed<'a> {
    inner: &'a CloserInner,
    side: Side,
}

impl Future for Closed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.reason.get().is_some() {
            return Poll::Ready(());
        }
        self.inner.wakers[self.side as usize].register(cx.waker());
        // A close between the check and the registration woke nobody: look again.
        if self.inner.reason.get().is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stalls_add_up_within_a_window_and_are_forgotten_after_it() {
        let closer = Closer::new();
        let budget = Duration::from_secs(2);
        assert!(!closer.note_stall(Duration::from_millis(1500), budget));
        assert!(closer.note_stall(Duration::from_millis(600), budget));
        tokio::time::advance(budget * 11).await;
        assert!(!closer.note_stall(Duration::from_millis(1500), budget));
    }

    #[test]
    fn first_reason_wins_and_text_fits_a_close_frame() {
        let closer = Closer::new();
        closer.close(CloseReason::Protocol("é".repeat(100)));
        closer.close(CloseReason::Lagging);
        let reason = closer.reason().unwrap();
        assert_eq!(reason.code(), 1002);
        assert!(reason.text().len() <= MAX_REASON_BYTES);
        assert!(closer.is_closed());
    }

    #[tokio::test]
    async fn both_sides_wake_on_close() {
        let closer = Closer::new();
        let reader = tokio::spawn({
            let closer = closer.clone();
            async move { closer.closed(Side::Reader).await }
        });
        let writer = tokio::spawn({
            let closer = closer.clone();
            async move { closer.closed(Side::Writer).await }
        });
        tokio::task::yield_now().await;
        closer.close(CloseReason::ShuttingDown);
        reader.await.unwrap();
        writer.await.unwrap();
        // Already closed: resolves at once.
        closer.closed(Side::Reader).await;
    }
}
