//! Group commit: of the document update log, and (a second [`Durability`]) of the dashboard's
//! event log with the users' records.
//!
//! Appends go into the store's buffer as they happen ([`Durability::appended`] counts them);
//! one flusher task makes them durable together, at most once per flush interval, and
//! publishes how far it got. An HTTP write waits for its ticket with [`Durability::wait`], so it
//! is answered only once its update is on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tandem_storage::{DocStore, EventStore, StateStore, StoreError};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How far the log is durable.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    /// Every append with a ticket up to this one is durable.
    durable: u64,
    /// Consecutive failed flushes; non-zero while the disk refuses writes.
    failures: u32,
    /// Whether the last flush was refused for a disk that is nearly full: that lasts until
    /// space is freed, so waiters are answered at once rather than at their timeout.
    refusing: bool,
}

/// A position in the sequence of appends; durable once the flusher has passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Why a wait for durability failed.
#[derive(Debug, thiserror::Error)]
pub enum DurabilityError {
    #[error("the log could not be flushed within {0:?}")]
    Timeout(Duration),
    #[error("the flusher has stopped")]
    Stopped,
    #[error("the log is not being flushed: {0}")]
    Refused(String),
}

/// Something whose appends a group commit makes durable: the document log or the event log.
pub trait Flush: Send + Sync + 'static {
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

impl Flush for dyn DocStore {
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        DocStore::flush(self)
    }
}

/// The dashboard's event log and its per-user records: one group commit makes both durable.
pub struct DashboardStores {
    pub events: Arc<dyn EventStore>,
    pub state: Arc<dyn StateStore>,
}

impl Flush for DashboardStores {
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.events.flush().await?;
            self.state.flush().await
        })
    }
}

/// The group-commit state shared by writers and the flusher.
pub struct Durability {
    /// What is flushed, for the log.
    what: &'static str,
    /// How long its flushes take.
    flush_time: metrics::Histogram,
    appended: AtomicU64,
    wake: Notify,
    flushed: watch::Sender<Flushed>,
}

impl Durability {
    /// The group commit of the update log.
    pub fn new() -> Arc<Durability> {
        Durability::named("update log", crate::metrics::get().update_log_flush.clone())
    }

    /// The group commit of `what`, whose flush times go to `flush_time`.
    pub fn named(what: &'static str, flush_time: metrics::Histogram) -> Arc<Durability> {
        Arc::new(Durability {
            what,
            flush_time,
            appended: AtomicU64::new(0),
            wake: Notify::new(),
            flushed: watch::Sender::new(Flushed::default()),
        })
    }

    /// Records that something was appended and returns the ticket that says when it is durable.
    pub fn appended(&self) -> Ticket {
        let ticket = self.appended.fetch_add(1, Ordering::AcqRel) + 1;
        // notify_one keeps a permit when the flusher is busy, so no append is ever missed.
        self.wake.notify_one();
        Ticket(ticket)
    }

    /// A ticket for everything appended so far, without appending anything.
    pub fn barrier(&self) -> Ticket {
        Ticket(self.appended.load(Ordering::Acquire))
    }

    /// Waits until `ticket` is durable.
    ///
    /// # Errors
    /// The flusher did not get there within `timeout` (the disk is failing), or it stopped,
    /// or the store refuses writes until space is freed (at once).
    pub async fn wait(&self, ticket: Ticket, timeout: Duration) -> Result<(), DurabilityError> {
        let mut rx = self.flushed.subscribe();
        let reached = tokio::time::timeout(timeout, async {
            rx.wait_for(|f| f.durable >= ticket.0 || f.refusing)
                .await
                .map(|f| *f)
        })
        .await;
        match reached {
            Ok(Ok(f)) if f.durable >= ticket.0 => Ok(()),
            Ok(Ok(_)) => Err(DurabilityError::Refused(
                "the data directory's disk is nearly full".into(),
            )),
            Ok(Err(_)) => Err(DurabilityError::Stopped),
            Err(_) => Err(DurabilityError::Timeout(timeout)),
        }
    }

    /// A ticket for everything durable so far.
    pub fn durable(&self) -> Ticket {
        Ticket(self.flushed.borrow().durable)
    }

    /// Whether the last flush failed.
    pub fn is_failing(&self) -> bool {
        self.flushed.borrow().failures > 0
    }

    /// Flushes everything appended so far, now.
    ///
    /// # Errors
    /// The store could not flush.
    pub async fn flush_now<S: Flush + ?Sized>(&self, store: &S) -> Result<(), StoreError> {
        let target = self.appended.load(Ordering::Acquire);
        let started = tokio::time::Instant::now();
        let result = store.flush().await;
        self.flush_time
            .record(crate::metrics::secs(started.elapsed()));
        match &result {
            Ok(()) => {
                let mut failed = 0;
                self.flushed.send_modify(|f| {
                    f.durable = f.durable.max(target);
                    failed = std::mem::take(&mut f.failures);
                    f.refusing = false;
                });
                if failed > 0 {
                    tracing::info!(log = self.what, failed, "flushing works again");
                }
                tracing::trace!(log = self.what, target, elapsed = ?started.elapsed(), "log flushed");
            }
            Err(err) => {
                let mut failures = 0;
                let refusing = matches!(err, StoreError::DiskFull { .. });
                self.flushed.send_modify(|f| {
                    f.failures += 1;
                    f.refusing = refusing;
                    failures = f.failures;
                });
                // Said when it starts failing and then now and again, not at every retry.
                if failures == 1 || failures % 100 == 0 {
                    tracing::error!(log = self.what, failures, error = %err, "flushing failed; retrying");
                }
            }
        }
        result
    }

    /// Runs the flusher until `stop` is cancelled: waits for appends, then for `interval` to
    /// have passed since the last flush began (so a flush gathers everything that arrived
    /// meanwhile), and flushes them together. An idle log costs no timer: the wait for the
    /// interval comes after the first append, not after every flush.
    pub fn spawn_flusher<S: Flush + ?Sized>(
        self: &Arc<Self>,
        store: Arc<S>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(
            async move {
                let mut next = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = this.wake.notified() => {}
                    }
                    if next > tokio::time::Instant::now() {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep_until(next) => {}
                        }
                    }
                    // The wake of an append the last flush already covered: nothing to do.
                    let flushed = *this.flushed.borrow();
                    if flushed.failures == 0
                        && this.appended.load(Ordering::Acquire) <= flushed.durable
                    {
                        continue;
                    }
                    next = tokio::time::Instant::now() + interval;
                    // A failure is logged and counted; waiters keep waiting and a later round
                    // retries, since the appended updates are still in the buffer: sooner at
                    // first, then at most every second (a full disk takes a while to clear).
                    let _ = this.flush_now(store.as_ref()).await;
                    let failures = this.flushed.borrow().failures;
                    if failures > 0 {
                        let backoff = interval
                            .saturating_mul(1 << failures.min(10))
                            .min(Duration::from_secs(1));
                        next = tokio::time::Instant::now() + backoff;
                        this.wake.notify_one();
                    }
                }
            }
            .instrument(tracing::info_span!("flusher")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_storage::MemoryStore;

    #[tokio::test(start_paused = true)]
    async fn waiters_are_released_by_the_next_group_commit() {
        let durability = Durability::new();
        let store: Arc<dyn DocStore> = Arc::new(MemoryStore::new());
        let stop = CancellationToken::new();
        let flusher =
            durability.spawn_flusher(Arc::clone(&store), Duration::from_millis(5), stop.clone());
        let first = durability.appended();
        let second = durability.appended();
        durability
            .wait(second, Duration::from_secs(1))
            .await
            .unwrap();
        durability
            .wait(first, Duration::from_secs(1))
            .await
            .unwrap();
        let third = durability.appended();
        durability
            .wait(third, Duration::from_secs(1))
            .await
            .unwrap();
        stop.cancel();
        flusher.await.unwrap();
    }

    /// A store that counts its flushes.
    #[derive(Default)]
    struct Counting {
        flushes: AtomicU64,
    }

    impl Flush for Counting {
        fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            self.flushes.fetch_add(1, Ordering::AcqRel);
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_append_is_flushed_at_once_and_a_burst_waits_for_the_interval() {
        let interval = Duration::from_millis(5);
        let durability = Durability::new();
        let store = Arc::new(Counting::default());
        let stop = CancellationToken::new();
        let flusher = durability.spawn_flusher(Arc::clone(&store), interval, stop.clone());
        let flushes = || store.flushes.load(Ordering::Acquire);

        // An append after a quiet while does not wait for a timer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = tokio::time::Instant::now();
        let ticket = durability.appended();
        durability.wait(ticket, interval).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(flushes(), 1);

        // Appends right after a flush wait for the interval, and go in one flush.
        let tickets: Vec<_> = (0..10).map(|_| durability.appended()).collect();
        for ticket in tickets {
            durability
                .wait(ticket, Duration::from_secs(1))
                .await
                .unwrap();
        }
        assert_eq!(started.elapsed(), interval);
        assert_eq!(flushes(), 2);

        // Idle: no flush without appends.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(flushes(), 2);
        stop.cancel();
        flusher.await.unwrap();
    }

    /// A store whose disk is nearly full until `free` is set.
    struct Full {
        free: std::sync::atomic::AtomicBool,
    }

    impl Flush for Full {
        fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            let free = self.free.load(Ordering::Acquire);
            Box::pin(async move {
                match free {
                    true => Ok(()),
                    false => Err(StoreError::DiskFull {
                        free: 1,
                        reserve: 2,
                    }),
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_full_disk_waiters_are_answered_at_once_and_writes_resume_when_it_frees() {
        let durability = Durability::new();
        let store = Arc::new(Full {
            free: std::sync::atomic::AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let flusher =
            durability.spawn_flusher(Arc::clone(&store), Duration::from_millis(5), stop.clone());
        let ticket = durability.appended();
        let started = tokio::time::Instant::now();
        assert!(matches!(
            durability.wait(ticket, Duration::from_secs(10)).await,
            Err(DurabilityError::Refused(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
        store.free.store(true, Ordering::Release);
        // The flusher retries by itself (backing off to a second at most) and gets there.
        tokio::time::sleep(Duration::from_secs(2)).await;
        durability
            .wait(ticket, Duration::from_secs(5))
            .await
            .unwrap();
        stop.cancel();
        flusher.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_without_a_flusher_times_out() {
        let durability = Durability::new();
        let ticket = durability.appended();
        assert!(matches!(
            durability.wait(ticket, Duration::from_millis(50)).await,
            Err(DurabilityError::Timeout(_))
        ));
    }
}
