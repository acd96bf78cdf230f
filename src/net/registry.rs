//! [`Connections`], the open connections: what the admin API lists and kicks, and what the
//! connection metrics count (opened, active, duration, bytes and messages, reconnects, closes by
//! reason).
//!
//! A connection registers when it starts and holds a [`Registration`]; dropping it (however the
//! connection ends) unregisters it, records its duration and why it closed, and remembers the
//! user and target for the reconnect window.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde::Serialize;
use tokio::time::Instant;

use super::close::{CloseReason, Closer};
use crate::metrics::{self, Failure, Kind};

/// A connection's id: unique among every connection (document, dashboard, long-poll) for the
/// life of the process. Logs call it `conn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl ConnId {
    /// A new id.
    pub fn next() -> ConnId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One open connection.
pub struct ConnInfo {
    pub id: ConnId,
    pub kind: Kind,
    pub user: String,
    pub workspace: String,
    /// The document, or for a dashboard its subscriptions.
    target: Mutex<String>,
    pub remote: Option<SocketAddr>,
    since: SystemTime,
    /// How many times in a row this user came back to this target within the window.
    pub reconnects: u32,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    /// `None` for a long-poll, which cannot be kicked.
    closer: Option<Closer>,
}

impl ConnInfo {
    /// A message of `bytes` came in. Only this connection's own counters move (its reader
    /// is their only writer, so they stay in its core's cache); the totals of `/metrics` are
    /// summed when it is scraped.
    pub fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// A message of `bytes` went out.
    pub fn sent(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.messages_out.fetch_add(1, Ordering::Relaxed);
    }

    fn totals(&self) -> [u64; 4] {
        [
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
            self.messages_in.load(Ordering::Relaxed),
            self.messages_out.load(Ordering::Relaxed),
        ]
    }

    /// Replaces what the connection is about (a dashboard's subscriptions change).
    pub fn set_target(&self, target: String) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    fn summary(&self) -> ConnSummary {
        let [bytes_received, bytes_sent, messages_received, messages_sent] = self.totals();
        ConnSummary {
            id: self.id,
            kind: self.kind,
            user: self.user.clone(),
            workspace: self.workspace.clone(),
            target: self
                .target
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            remote_addr: self.remote.map(|a| a.to_string()),
            connected_since: crate::clock::rfc3339(time::OffsetDateTime::from(self.since)),
            bytes_received,
            bytes_sent,
            messages_received,
            messages_sent,
            reconnects: self.reconnects,
        }
    }
}

/// What the admin API says of an open connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnSummary {
    pub id: ConnId,
    pub kind: Kind,
    pub user: String,
    pub workspace: String,
    /// The document, or for a dashboard its subscriptions.
    pub target: String,
    pub remote_addr: Option<String>,
    pub connected_since: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    /// How many times in a row this user came back to this target within the window.
    pub reconnects: u32,
}

/// What a new connection is.
pub struct NewConn {
    pub id: ConnId,
    pub kind: Kind,
    pub user: String,
    pub workspace: String,
    pub target: String,
    pub remote: Option<SocketAddr>,
    pub closer: Option<Closer>,
    /// Its place under the caps ([`Connections::admit`]), held as long as it is registered.
    pub admission: Option<Admission>,
}

/// Caps on open connections (documents, dashboards and long-polls together) and on the
/// documents one user holds open; 0: none.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caps {
    /// From one client address.
    pub per_ip: usize,
    /// Of one user of a workspace.
    pub per_user: usize,
    /// Distinct documents one user of a workspace holds open, over WebSocket connections and
    /// HTTP pollers together.
    pub docs_per_user: usize,
}

/// Why a connection may not open now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Crowded {
    #[error("this address has {0} connections open, the most allowed")]
    Ip(usize),
    #[error("this user has {0} connections open, the most allowed")]
    User(usize),
    #[error("this user has {0} documents open, the most allowed")]
    Documents(usize),
}

impl Crowded {
    /// The `error` of the refusal.
    pub fn code(self) -> &'static str {
        match self {
            Crowded::Ip(_) | Crowded::User(_) => "too_many_connections",
            Crowded::Documents(_) => "too_many_documents",
        }
    }
}

/// The place a connection takes under the caps, from before its upgrade for as long as it
/// lives: given back when dropped.
pub struct Admission {
    registry: Arc<Connections>,
    ip: Option<IpAddr>,
    user: Option<(String, String)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            self.registry.per_ip.remove_if_mut(&ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
        if let Some(user) = &self.user {
            self.registry.per_user.remove_if_mut(user, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

/// A user's hold on a document they have open (a connection to it, or a live HTTP poller):
/// the document counts towards their cap until the last hold on it drops.
pub struct DocHold {
    registry: Arc<Connections>,
    key: (String, String),
    doc: String,
}

impl fmt::Debug for DocHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocHold")
            .field("workspace", &self.key.0)
            .field("user", &self.key.1)
            .field("doc", &self.doc)
            .finish()
    }
}

impl Drop for DocHold {
    fn drop(&mut self) {
        self.registry.docs.remove_if_mut(&self.key, |_, open| {
            if let Some(holds) = open.get_mut(&self.doc) {
                *holds = holds.saturating_sub(1);
                if *holds == 0 {
                    open.remove(&self.doc);
                }
            }
            open.is_empty()
        });
    }
}

/// The registry.
pub struct Connections {
    conns: DashMap<ConnId, Arc<ConnInfo>>,
    caps: Caps,
    /// Open connections per client address and per (workspace, user), while caps apply.
    per_ip: DashMap<IpAddr, usize>,
    per_user: DashMap<(String, String), usize>,
    /// (workspace, user) → the documents they hold open, with how many holds each.
    docs: DashMap<(String, String), HashMap<String, usize>>,
    /// (workspace, user, target) → when they last left and how many reconnects that was.
    recent: DashMap<(String, String, String), (Instant, u32)>,
    window: Duration,
    /// Bytes in and out, messages in and out, of the connections that closed, by kind.
    retired: [[AtomicU64; 4]; 4],
}

/// The index of a kind in [`Connections::retired`].
fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Document => 0,
        Kind::Dashboard => 1,
        Kind::LongPoll => 2,
        Kind::Hocuspocus => 3,
    }
}

/// Held by a connection while it is open.
pub struct Registration {
    registry: Arc<Connections>,
    pub info: Arc<ConnInfo>,
    opened: Instant,
    /// Its place under the caps, given back with the registration.
    _admission: Option<Admission>,
}

impl Connections {
    /// A registry whose reconnect window is `window`.
    pub fn new(window: Duration, caps: Caps) -> Arc<Connections> {
        Arc::new(Connections {
            conns: DashMap::new(),
            caps,
            per_ip: DashMap::new(),
            per_user: DashMap::new(),
            docs: DashMap::new(),
            recent: DashMap::new(),
            window,
            retired: Default::default(),
        })
    }

    /// Sets the byte and message totals of `/metrics`: what closed connections did plus what the
    /// open ones did so far.
    pub fn publish_totals(&self) {
        let mut totals = [[0u64; 4]; 4];
        for (kind, retired) in totals.iter_mut().zip(&self.retired) {
            for (total, done) in kind.iter_mut().zip(retired) {
                *total = done.load(Ordering::Relaxed);
            }
        }
        for entry in self.conns.iter() {
            let info = entry.value();
            let live = info.totals();
            for (total, n) in totals[kind_index(info.kind)].iter_mut().zip(live) {
                *total += n;
            }
        }
        let m = metrics::get();
        for kind in [
            Kind::Document,
            Kind::Dashboard,
            Kind::LongPoll,
            Kind::Hocuspocus,
        ] {
            let [bytes_in, bytes_out, messages_in, messages_out] = totals[kind_index(kind)];
            let k = m.kind(kind);
            k.bytes_in.absolute(bytes_in);
            k.bytes_out.absolute(bytes_out);
            k.messages_in.absolute(messages_in);
            k.messages_out.absolute(messages_out);
        }
    }

    /// Takes a place for a connection from `remote` of `user` (in `workspace`; `None`: nobody
    /// in particular, an anonymous client of a server without authentication) under the caps.
    ///
    /// # Errors
    /// The address or the user has as many connections open as allowed.
    pub fn admit(
        self: &Arc<Self>,
        remote: Option<SocketAddr>,
        workspace: &str,
        user: Option<&str>,
    ) -> Result<Admission, Crowded> {
        let mut admission = Admission {
            registry: Arc::clone(self),
            ip: None,
            user: None,
        };
        if let (Some(remote), cap @ 1..) = (remote, self.caps.per_ip) {
            let ip = remote.ip();
            let mut open = self.per_ip.entry(ip).or_insert(0);
            if *open >= cap {
                return Err(Crowded::Ip(cap));
            }
            *open += 1;
            admission.ip = Some(ip);
        }
        if let (Some(user), cap @ 1..) = (user, self.caps.per_user) {
            let key = (workspace.to_owned(), user.to_owned());
            let mut open = self.per_user.entry(key.clone()).or_insert(0);
            if *open >= cap {
                // The address's place goes back as `admission` drops.
                return Err(Crowded::User(cap));
            }
            *open += 1;
            admission.user = Some(key);
        }
        Ok(admission)
    }

    /// Takes a hold on document `doc` for `user` of `workspace`: a document they already hold
    /// is always granted, a new one only under the cap on documents per user.
    ///
    /// # Errors
    /// The user holds as many documents as allowed.
    pub fn hold_doc(
        self: &Arc<Self>,
        workspace: &str,
        user: &str,
        doc: &str,
    ) -> Result<DocHold, Crowded> {
        let key = (workspace.to_owned(), user.to_owned());
        let cap = self.caps.docs_per_user;
        let mut open = self.docs.entry(key.clone()).or_default();
        let held = open.len();
        match open.get_mut(doc) {
            Some(holds) => *holds += 1,
            None if cap > 0 && held >= cap => return Err(Crowded::Documents(cap)),
            None => {
                open.insert(doc.to_owned(), 1);
            }
        }
        Ok(DocHold {
            registry: Arc::clone(self),
            key,
            doc: doc.to_owned(),
        })
    }

    /// Registers a connection that just opened.
    pub fn register(self: &Arc<Self>, new: NewConn) -> Registration {
        let now = Instant::now();
        let key = (
            new.workspace.clone(),
            new.user.clone(),
            reconnect_target(new.kind, &new.target),
        );
        // A long-poll comes back after every answer by design: that is no reconnect.
        let reconnects = match self.recent.remove(&key) {
            Some((_, (left, count)))
                if new.kind != Kind::LongPoll && now.duration_since(left) <= self.window =>
            {
                metrics::get().reconnects.increment(1);
                count + 1
            }
            _ => 0,
        };
        let info = Arc::new(ConnInfo {
            id: new.id,
            kind: new.kind,
            user: new.user,
            workspace: new.workspace,
            target: Mutex::new(new.target),
            remote: new.remote,
            since: SystemTime::now(),
            reconnects,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            closer: new.closer,
        });
        let kind = metrics::get().kind(info.kind);
        kind.opened.increment(1);
        kind.active.increment(1.0);
        self.conns.insert(info.id, Arc::clone(&info));
        Registration {
            registry: Arc::clone(self),
            info,
            opened: now,
            _admission: new.admission,
        }
    }

    /// The open connections of `workspace` (all of them with `None`), oldest first.
    pub fn list(&self, workspace: Option<&str>) -> Vec<ConnSummary> {
        let mut infos: Vec<Arc<ConnInfo>> = self
            .conns
            .iter()
            .filter(|e| workspace.is_none_or(|w| e.value().workspace == w))
            .map(|e| Arc::clone(e.value()))
            .collect();
        infos.sort_by_key(|info| info.id);
        infos.iter().map(|info| info.summary()).collect()
    }

    /// Closes connection `id` (of `workspace`, when given) with 4000. False when there is no
    /// such connection or it cannot be closed (a long-poll).
    pub fn kick(&self, id: ConnId, workspace: Option<&str>) -> bool {
        let Some(info) = self.conns.get(&id).map(|e| Arc::clone(e.value())) else {
            return false;
        };
        if workspace.is_some_and(|w| info.workspace != w) {
            return false;
        }
        match &info.closer {
            Some(closer) => {
                closer.close(CloseReason::Kicked);
                true
            }
            None => false,
        }
    }

    /// Forgets departures older than the reconnect window.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.recent
            .retain(|_, (left, _)| now.duration_since(*left) <= self.window);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let info = &self.info;
        // Out of the map first, then into the retired totals: a scrape in between misses its
        // bytes for an instant (counters only take a larger value, so nothing goes backwards)
        // rather than counting them twice.
        self.registry.conns.remove(&info.id);
        let retired = &self.registry.retired[kind_index(info.kind)];
        for (done, n) in retired.iter().zip(info.totals()) {
            done.fetch_add(n, Ordering::Relaxed);
        }
        let m = metrics::get();
        let kind = m.kind(info.kind);
        kind.duration.record(metrics::secs(self.opened.elapsed()));
        let reason = info.closer.as_ref().and_then(|c| c.reason().cloned());
        let (label, failure) = close_label(reason.as_ref());
        m.closed(info.kind, label);
        if let Some(failure) = failure {
            m.failed(failure);
        }
        // Last: a scrape that no longer counts the connection as active sees why it closed.
        kind.active.decrement(1.0);
        if info.kind != Kind::LongPoll {
            self.registry.recent.insert(
                (
                    info.workspace.clone(),
                    info.user.clone(),
                    reconnect_target(
                        info.kind,
                        &info.target.lock().unwrap_or_else(|p| p.into_inner()),
                    ),
                ),
                (Instant::now(), info.reconnects),
            );
        }
    }
}

/// What a reconnect is a reconnect to: the document (a document connection's target never
/// changes), or for the others their kind.
fn reconnect_target(kind: Kind, target: &str) -> String {
    match kind {
        Kind::Document => target.to_owned(),
        Kind::Dashboard | Kind::LongPoll | Kind::Hocuspocus => kind.label().to_owned(),
    }
}

/// The `reason` label of a close, and the failure it counts as.
fn close_label(reason: Option<&CloseReason>) -> (&'static str, Option<Failure>) {
    match reason {
        None => ("client", None),
        Some(CloseReason::ShuttingDown) => ("shutdown", None),
        Some(CloseReason::TokenExpired) => ("token_expired", None),
        Some(CloseReason::Kicked) => ("kicked", None),
        Some(CloseReason::Reloading) => ("reloading", None),
        Some(CloseReason::Lagging) => ("overflow", Some(Failure::Overflow)),
        Some(CloseReason::Unresponsive) => ("timeout", Some(Failure::Timeout)),
        Some(CloseReason::Storage) => ("storage", Some(Failure::Storage)),
        Some(
            CloseReason::Protocol(_)
            | CloseReason::Unsupported(_)
            | CloseReason::Policy(_)
            | CloseReason::TooLarge(_),
        ) => ("protocol", Some(Failure::Protocol)),
    }
}
