//! Advisory locks ("Lock certain fields to prevent conflicts"): a resource (`acme/queries/456
//! #title`) is one dashboard connection's until it lets go, leaves, or stops renewing it within
//! `--lock-ttl-ms`. [`Locks`] is plain state: each call returns what happened, and the hub
//! turns that into frames and `lock_acquired` / `lock_released` events. The JSON of a lock is
//! written here ([`LockInfo`], [`Holder`], [`Released::event`]), whichever way it goes out.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::catalogue::Event;
use super::catalogue::UserId;
use crate::net::ConnId;

/// The locks of one workspace.
#[derive(Debug)]
pub struct Locks {
    leases: HashMap<String, Lease>,
    /// How long a lock lasts without renewal.
    ttl: Duration,
    /// Locks one connection may hold at once.
    max_per_conn: usize,
}

/// A held lock.
#[derive(Debug, Clone)]
struct Lease {
    conn: ConnId,
    info: LockInfo,
    expires: Instant,
}

/// Who holds a lock, as frames and events name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Holder {
    pub user_id: UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A lock as frames and events carry it: `{"resource","user_id","name"?,"expires_at"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LockInfo {
    pub resource: String,
    #[serde(flatten)]
    pub holder: Holder,
    pub expires_at: String,
}

impl LockInfo {
    /// The `lock_acquired` event of this lock.
    pub fn acquired_event(&self) -> Event {
        Event::server("lock_acquired", fields(self))
    }
}

/// What [`Locks::acquire`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock is the connection's (`renewed` when it was already). `lapsed` is the previous
    /// holder's lock, which had expired without being swept yet: it goes first.
    Acquired {
        lock: LockInfo,
        renewed: bool,
        lapsed: Option<Released>,
    },
    /// Someone else holds it.
    Denied(LockInfo),
    /// The connection holds as many locks as it may.
    TooMany { limit: usize },
}

/// Why a connection cannot release a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockError {
    /// Nobody holds it.
    NotLocked,
    /// Someone else does.
    NotHolder,
}

/// A lock that went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub resource: String,
    /// The connection that held it.
    pub conn: ConnId,
    pub user: String,
}

impl Released {
    /// The `lock_released` event: `{"resource","user_id","reason"}`.
    pub fn event(&self, reason: &'static str) -> Event {
        #[derive(Serialize)]
        struct Fields<'a> {
            resource: &'a str,
            user_id: UserId,
            reason: &'static str,
        }
        Event::server(
            "lock_released",
            fields(&Fields {
                resource: &self.resource,
                user_id: UserId(self.user.clone()),
                reason,
            }),
        )
    }
}

/// The fields of a struct of strings, as an event carries them.
fn fields(value: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    }
}

impl Locks {
    /// No locks; each lasts `ttl` without renewal, a connection holds `max_per_conn` at most.
    pub fn new(ttl: Duration, max_per_conn: usize) -> Locks {
        Locks {
            leases: HashMap::new(),
            ttl,
            max_per_conn,
        }
    }

    /// Whether nobody holds a lock.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Takes or renews `resource` for `conn` (of `holder`) at `now` (`wall` is the same time
    /// on the wall clock, for `expires_at`).
    pub fn acquire(
        &mut self,
        conn: ConnId,
        holder: Holder,
        resource: &str,
        now: Instant,
        wall: OffsetDateTime,
    ) -> LockOutcome {
        let renewed = self.leases.get(resource).is_some_and(|l| l.conn == conn);
        let held = self.leases.values().filter(|l| l.conn == conn).count();
        if !renewed && held >= self.max_per_conn {
            return LockOutcome::TooMany {
                limit: self.max_per_conn,
            };
        }
        let mut lapsed = None;
        if let Some(lease) = self.leases.get(resource).filter(|l| l.conn != conn) {
            if lease.expires > now {
                return LockOutcome::Denied(lease.info.clone());
            }
            // Expired but not yet swept: its holder hears it went before it changes hands.
            lapsed = self.take(resource);
        }
        let info = LockInfo {
            resource: resource.to_owned(),
            holder,
            expires_at: crate::clock::rfc3339(wall + self.ttl).unwrap_or_default(),
        };
        self.leases.insert(
            resource.to_owned(),
            Lease {
                conn,
                info: info.clone(),
                expires: now + self.ttl,
            },
        );
        LockOutcome::Acquired {
            lock: info,
            renewed,
            lapsed,
        }
    }

    /// What [`Locks::acquire`] would make of the lock if it succeeds, without taking it;
    /// `None` when it would not (held here by another connection, or too many).
    pub fn preview(
        &self,
        conn: ConnId,
        holder: Holder,
        resource: &str,
        now: Instant,
        wall: OffsetDateTime,
    ) -> Option<LockInfo> {
        let renewed = self.leases.get(resource).is_some_and(|l| l.conn == conn);
        let held = self.leases.values().filter(|l| l.conn == conn).count();
        if !renewed && held >= self.max_per_conn {
            return None;
        }
        if self
            .leases
            .get(resource)
            .is_some_and(|l| l.conn != conn && l.expires > now)
        {
            return None;
        }
        Some(LockInfo {
            resource: resource.to_owned(),
            holder,
            expires_at: crate::clock::rfc3339(wall + self.ttl).unwrap_or_default(),
        })
    }

    /// Releases `conn`'s lock on `resource`.
    ///
    /// # Errors
    /// [`UnlockError::NotLocked`] when nobody holds it, [`UnlockError::NotHolder`] when someone
    /// else does.
    pub fn release(&mut self, conn: ConnId, resource: &str) -> Result<Released, UnlockError> {
        match self.leases.get(resource) {
            Some(lease) if lease.conn != conn => Err(UnlockError::NotHolder),
            Some(_) => self.take(resource).ok_or(UnlockError::NotLocked),
            None => Err(UnlockError::NotLocked),
        }
    }

    /// Releases every lock `conn` holds (it disconnected).
    pub fn release_all_of(&mut self, conn: ConnId) -> Vec<Released> {
        self.take_where(|lease| lease.conn == conn)
    }

    /// Releases every lock not renewed in time.
    pub fn expire(&mut self, now: Instant) -> Vec<Released> {
        self.take_where(|lease| lease.expires <= now)
    }

    /// How long a holder has to renew: what it renews within, whatever its clock says of
    /// `expires_at`.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn take(&mut self, resource: &str) -> Option<Released> {
        let lease = self.leases.remove(resource)?;
        Some(Released {
            resource: resource.to_owned(),
            conn: lease.conn,
            user: lease.info.holder.user_id.0,
        })
    }

    fn take_where(&mut self, doomed: impl Fn(&Lease) -> bool) -> Vec<Released> {
        let gone: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, lease)| doomed(lease))
            .map(|(resource, _)| resource.clone())
            .collect();
        gone.iter()
            .filter_map(|resource| self.take(resource))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn holder(user: &str) -> Holder {
        Holder {
            user_id: UserId(user.into()),
            name: Some(user.to_uppercase()),
        }
    }

    fn wall() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_704_900_600).unwrap()
    }

    #[test]
    fn a_lock_is_one_connections_until_released_and_others_are_told_who_holds_it() {
        let mut locks = Locks::new(TTL, 8);
        let t0 = Instant::now();
        let taken = locks.acquire(ConnId(1), holder("1"), "q#title", t0, wall());
        let LockOutcome::Acquired {
            lock,
            renewed: false,
            lapsed: None,
        } = taken
        else {
            panic!("{taken:?}");
        };
        assert_eq!(lock.expires_at, "2024-01-10T15:30:30Z");
        let info = serde_json::to_value(&lock).unwrap();
        assert_eq!(
            info,
            serde_json::json!({"resource": "q#title", "user_id": 1, "name": "1",
                "expires_at": "2024-01-10T15:30:30Z"})
        );
        assert_eq!(
            locks.acquire(ConnId(2), holder("ada"), "q#title", t0, wall()),
            LockOutcome::Denied(lock.clone())
        );
        assert!(matches!(
            locks.acquire(ConnId(1), holder("1"), "q#title", t0, wall()),
            LockOutcome::Acquired { renewed: true, .. }
        ));
        assert_eq!(
            locks.release(ConnId(2), "q#title"),
            Err(UnlockError::NotHolder)
        );
        let released = locks.release(ConnId(1), "q#title").unwrap();
        assert_eq!((released.conn, released.user.as_str()), (ConnId(1), "1"));
        assert_eq!(
            locks.release(ConnId(1), "q#title"),
            Err(UnlockError::NotLocked)
        );
        let event = released.event("unlock");
        assert_eq!(event.kind, "lock_released");
        assert_eq!(event.fields["reason"], "unlock");
        assert_eq!(event.fields["user_id"], 1);
    }

    #[test]
    fn an_expired_lock_changes_hands_and_the_sweep_takes_the_rest() {
        let mut locks = Locks::new(TTL, 8);
        let t0 = Instant::now();
        locks.acquire(ConnId(1), holder("a"), "x", t0, wall());
        locks.acquire(ConnId(1), holder("a"), "y", t0, wall());
        let later = t0 + TTL;
        let LockOutcome::Acquired { lapsed, .. } =
            locks.acquire(ConnId(2), holder("b"), "x", later, wall())
        else {
            panic!("an expired lock is free");
        };
        assert_eq!(lapsed.map(|r| r.conn), Some(ConnId(1)));
        let swept = locks.expire(later);
        assert_eq!(
            swept
                .iter()
                .map(|r| r.resource.as_str())
                .collect::<Vec<_>>(),
            ["y"]
        );
        assert_eq!(locks.release_all_of(ConnId(2)).len(), 1);
        assert!(locks.expire(later + TTL).is_empty());
    }

    #[test]
    fn a_connection_holds_at_most_its_share_but_may_renew() {
        let mut locks = Locks::new(TTL, 2);
        let t0 = Instant::now();
        for resource in ["a", "b"] {
            locks.acquire(ConnId(1), holder("u"), resource, t0, wall());
        }
        assert_eq!(
            locks.acquire(ConnId(1), holder("u"), "c", t0, wall()),
            LockOutcome::TooMany { limit: 2 }
        );
        assert!(matches!(
            locks.acquire(ConnId(1), holder("u"), "a", t0, wall()),
            LockOutcome::Acquired { renewed: true, .. }
        ));
    }
}
