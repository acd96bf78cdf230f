//! Delivery to a room's peers: what is queued for a connection ([`Outgoing`]), a peer as the
//! room sees it ([`PeerLink`]), and the backpressure of full queues ([`Overflow`]): a message
//! never dropped, a burst slowing its sender down, a client that stays behind closed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tandem_crdt::PeerId;
use tokio::sync::mpsc;

use crate::net::{CloseReason, Closer};

/// One message queued for a connection, shared by every peer a broadcast goes to. Queues carry
/// `Arc<Outgoing>` rather than the message itself: every connection's queue allocates its first
/// block of 32 slots up front, and at 8 bytes a slot instead of 48 that block is 1.3 KiB smaller
/// per connection.
#[derive(Debug)]
pub struct Outgoing {
    pub bytes: Bytes,
    /// For a broadcast update: when it arrived, for the propagation delay.
    received: Option<Instant>,
    /// For a broadcast update: the peers yet to hand it to their socket (or to drop it).
    remaining: AtomicUsize,
    /// The message with a Hocuspocus address put before it: made by the first peer on that
    /// address to send it, and shared by the others (the peers of a room mostly use one).
    addressed: OnceLock<(Bytes, Bytes)>,
}

impl Outgoing {
    /// A message that is no broadcast of an update (a reply, awareness, a ping).
    pub fn reply(bytes: Bytes) -> Outgoing {
        Outgoing {
            bytes,
            received: None,
            remaining: AtomicUsize::new(0),
            addressed: OnceLock::new(),
        }
    }

    /// A broadcast of an update that arrived at `received`, for `peers` peers.
    pub(super) fn broadcast(bytes: Bytes, received: Option<Instant>, peers: usize) -> Outgoing {
        Outgoing {
            bytes,
            received,
            remaining: AtomicUsize::new(peers),
            addressed: OnceLock::new(),
        }
    }

    /// The message on the Hocuspocus address `prefix` (its varString): shared with the other
    /// peers on the same address, made once.
    pub fn addressed(&self, prefix: &Bytes) -> Bytes {
        if let Some((on, frame)) = self.addressed.get() {
            if on == prefix {
                return frame.clone();
            }
        }
        let mut frame = BytesMut::with_capacity(prefix.len() + self.bytes.len());
        frame.extend_from_slice(prefix);
        frame.extend_from_slice(&self.bytes);
        let frame = frame.freeze();
        let _ = self.addressed.set((prefix.clone(), frame.clone()));
        frame
    }

    /// One peer is done with this message. For the last one, the update's arrival.
    pub fn handed_over(&self) -> Option<Instant> {
        let received = self.received?;
        (self.remaining.fetch_sub(1, Ordering::AcqRel) == 1).then_some(received)
    }
}

/// A connection's handle as the room sees it: its outbound queue and its closer.
pub struct PeerLink {
    pub peer: PeerId,
    /// The user it speaks for (the token's subject).
    pub user: Arc<str>,
    pub outbound: mpsc::Sender<Arc<Outgoing>>,
    pub closer: Closer,
    /// Whether it speaks Hocuspocus, and so takes the document's stateless messages.
    pub stateless: bool,
}

/// Messages that did not fit in a peer's queue at once. The caller waits for room outside the
/// room's lock (see [`Overflow::deliver`]); a peer whose queue stays full for the lag timeout is
/// closed. This gives bursts backpressure (the producer slows to the consumers' pace) instead of
/// closing a healthy client that was momentarily behind.
#[derive(Default)]
pub struct Overflow {
    pending: VecDeque<Deferred>,
}

/// A message waiting for room in its peer's queue.
#[derive(Clone)]
struct Deferred {
    peer: PeerId,
    outbound: mpsc::Sender<Arc<Outgoing>>,
    closer: Closer,
    message: Arc<Outgoing>,
}

impl Overflow {
    fn push(&mut self, link: &PeerLink, message: Arc<Outgoing>) {
        self.pending.push_back(Deferred {
            peer: link.peer,
            outbound: link.outbound.clone(),
            closer: link.closer.clone(),
            message,
        });
    }

    /// Waits, `timeout` at most in all, for each deferred message to be queued; closes the
    /// peers that stayed full. Messages of one peer keep their order.
    pub async fn deliver(mut self, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        // Each message leaves `pending` only once it is queued, so that if this future is
        // dropped half-way (an HTTP client that hung up), `Drop` still sees what was not
        // delivered.
        while let Some(Deferred {
            peer,
            outbound,
            closer,
            message,
        }) = self.pending.front().cloned()
        {
            let mut queued = false;
            if !closer.is_closed() {
                let started = tokio::time::Instant::now();
                match tokio::time::timeout_at(deadline, outbound.send(Arc::clone(&message))).await {
                    Err(_) => {
                        tracing::info!(conn = %peer, ?timeout, "outbound queue stayed full, closing");
                        closer.close(CloseReason::Lagging);
                    }
                    Ok(sent) => {
                        queued = sent.is_ok();
                        if closer.note_stall(started.elapsed(), timeout) {
                            tracing::info!(conn = %peer, "client keeps holding its room back, closing");
                            closer.close(CloseReason::Lagging);
                        }
                    }
                }
            }
            if !queued {
                // This peer will never hand it over.
                message.handed_over();
            }
            self.pending.pop_front();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn holds(&self, peer: PeerId) -> bool {
        self.pending.iter().any(|deferred| deferred.peer == peer)
    }
}

impl Drop for Overflow {
    /// Messages that were never delivered leave a gap in their peers' documents: those peers
    /// are closed and resync on reconnect.
    fn drop(&mut self) {
        for deferred in &self.pending {
            deferred.closer.close(CloseReason::Lagging);
        }
    }
}

/// Queues `message` for a peer; when its queue is full the message waits in `overflow` for the
/// caller to deliver outside the lock. Never dropped: a gap would stall the client's document.
pub(super) fn deliver(link: &PeerLink, message: Arc<Outgoing>, overflow: &mut Overflow) {
    if link.closer.is_closed() {
        message.handed_over();
        return;
    }
    // Once one message for this peer waits, the ones after it wait too, to keep their order.
    if overflow.holds(link.peer) {
        overflow.push(link, message);
        return;
    }
    if let Err(mpsc::error::TrySendError::Full(message)) = link.outbound.try_send(message) {
        overflow.push(link, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deferred_messages_keep_their_order_and_a_stuck_peer_is_closed() {
        let (outbound, mut queue) = mpsc::channel(1);
        let link = PeerLink {
            peer: PeerId(1),
            user: Arc::from("u"),
            outbound,
            closer: Closer::new(),
            stateless: false,
        };
        let mut overflow = Overflow::default();
        for n in 0..4u8 {
            deliver(
                &link,
                Arc::new(Outgoing::reply(Bytes::from(vec![n]))),
                &mut overflow,
            );
        }
        // The first fit; the rest wait, in order, even once room frees up.
        assert_eq!(overflow.pending.len(), 3);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(message) = queue.recv().await {
                got.push(message.bytes[0]);
                if got.len() == 4 {
                    break;
                }
            }
            (got, queue)
        });
        overflow.deliver(std::time::Duration::from_secs(1)).await;
        let (got, _queue) = reader.await.unwrap();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert!(!link.closer.is_closed());

        // Nobody reads now: after the lag timeout the peer is closed, nothing is dropped silently.
        let mut overflow = Overflow::default();
        deliver(
            &link,
            Arc::new(Outgoing::reply(Bytes::from_static(b"a"))),
            &mut overflow,
        );
        deliver(
            &link,
            Arc::new(Outgoing::reply(Bytes::from_static(b"b"))),
            &mut overflow,
        );
        overflow.deliver(std::time::Duration::from_secs(1)).await;
        assert_eq!(link.closer.reason(), Some(&CloseReason::Lagging));
    }
}
