//! [`Liveness`]: a connection's single timer (pings, silence, the token's expiry).

use std::time::Duration;

use tokio::time::Instant;

/// A connection's single timer: pings on an interval, the peer declared gone after a timeout
/// of silence, and the token's expiry (a connection lives no longer than its token).
///
/// Every ping interval a ping is due; the peer is unresponsive once whole intervals adding up to
/// the timeout passed without anything at all (no pong, no frame) coming from it. A busy
/// connection pays one store per frame and one timer tick per interval.
pub struct Liveness {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    heard: bool,
    silent: Duration,
    expires_at: Option<Instant>,
}

/// What the timer says when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Not yet time for anything.
    Nothing,
    /// Queue a ping.
    Ping,
    /// The token expired: close with 4401.
    Expired,
    /// Nothing heard for the timeout: close with 4408.
    Unresponsive,
}

impl Liveness {
    pub fn new(interval: Duration, timeout: Duration, expires_in: Option<Duration>) -> Liveness {
        let now = Instant::now();
        Liveness {
            interval,
            timeout,
            next_ping: now + interval,
            heard: true,
            silent: Duration::ZERO,
            expires_at: expires_in.map(|left| now + left),
        }
    }

    /// When the timer must fire next.
    pub fn deadline(&self) -> Instant {
        self.expires_at
            .map_or(self.next_ping, |at| at.min(self.next_ping))
    }

    /// The connection expires at `at` (the earliest expiry of the tokens it holds), or never.
    pub fn set_expiry(&mut self, at: Option<Instant>) {
        self.expires_at = at;
    }

    /// Something came from the peer.
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// The timer fired at `now`.
    pub fn tick(&mut self, now: Instant) -> Tick {
        if self.expires_at.is_some_and(|at| now >= at) {
            return Tick::Expired;
        }
        if now < self.next_ping {
            return Tick::Nothing;
        }
        self.silent = if self.heard {
            Duration::ZERO
        } else {
            self.silent + self.interval
        };
        self.heard = false;
        if self.silent >= self.timeout {
            return Tick::Unresponsive;
        }
        self.next_ping = now + self.interval;
        Tick::Ping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn liveness_pings_then_gives_up_on_a_silent_peer_and_honours_expiry() {
        let second = Duration::from_secs(1);
        let mut live = Liveness::new(second, second * 3, None);
        assert_eq!(live.tick(Instant::now()), Tick::Nothing);
        let mut ticks = Vec::new();
        for _ in 0..4 {
            tokio::time::advance(second).await;
            ticks.push(live.tick(Instant::now()));
        }
        assert_eq!(
            ticks,
            [Tick::Ping, Tick::Ping, Tick::Ping, Tick::Unresponsive]
        );

        let mut live = Liveness::new(second, second * 3, Some(second * 2));
        for _ in 0..5 {
            tokio::time::advance(second).await;
            live.heard();
            if live.tick(Instant::now()) == Tick::Expired {
                return;
            }
        }
        panic!("the token's expiry was not noticed");
    }
}
