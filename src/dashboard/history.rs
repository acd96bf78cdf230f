//! What a client reads back of the event log: the replay of a subscription `since` an id, the
//! long-poll, and the latest activity and notifications a page opened later starts from.
//!
//! A subscription with `since` replays from the log what came after it on the channels it adds
//! (those already live missed nothing), up to the last released id when it registered; events
//! released meanwhile are held for it and follow the replay, so nothing is missed or sent
//! twice.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tandem_storage::{Since, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::catalogue::Channel;
use super::catalogue::ChannelSet;
use super::delivery::{Delivered, Viewer};
use super::hub::Hub;
use super::preferences::Muted;
use super::protocol::ServerFrame;
use super::workspace::{Outgoing, Workspace};
use crate::auth::DocPermission;
use crate::net::{CloseReason, Closer, ConnId};

/// Events read from the log at a time.
const PAGE: usize = 256;

/// Pages of the log the activity feed reads back at most.
const ACTIVITY_SCAN_PAGES: usize = 64;

/// The most events one long-poll answer carries.
const POLL_LIMIT: usize = 500;

/// The latest events of a kind, and where a client that shows them resumes from.
#[derive(Debug)]
pub struct History {
    /// The frames, oldest first.
    pub events: Vec<Utf8Bytes>,
    /// The last released event id when they were read: a subscription `since` it gets what
    /// came after them, and nothing twice.
    pub last_id: u64,
}

/// What a long-poll or a page of the log found.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<Arc<Delivered>>,
    /// The last id looked at: the next `since`.
    pub last_id: u64,
    /// Set when what was asked for is older than retention kept: the oldest id still kept.
    pub resync_from: Option<u64>,
}

impl Hub {
    /// Adds `channels` to a connection's subscriptions; with `since`, first sends what it
    /// missed after that id (or `resync_required` when retention dropped part of it).
    ///
    /// # Errors
    /// The log could not be read.
    pub async fn subscribe(
        &self,
        ws: &Workspace,
        conn: ConnId,
        channels: ChannelSet,
        since: Option<u64>,
    ) -> Result<(), StoreError> {
        if let Some(since) = since {
            self.catch_up(ws, since).await;
        }
        let (user, muted, docs, tx, closer, upto, live, fresh, since) = {
            let mut st = ws.lock();
            let upto = st.released;
            let Some(c) = st.conns.get_mut(&conn) else {
                return Ok(());
            };
            let live = c.channels;
            c.channels = c.channels.union(channels);
            // Only channels that were not live yet are replayed: the others missed nothing.
            let fresh = channels.without(live);
            let since = since.filter(|_| !fresh.is_empty());
            if since.is_some() {
                c.held.get_or_insert_with(Vec::new);
            }
            let picked = (
                c.user.clone(),
                c.muted,
                c.docs.clone(),
                c.tx.clone(),
                c.closer.clone(),
                upto,
                live,
                fresh,
                since,
            );
            if channels.contains(Channel::ChatSessions) {
                let badges = st.badges_frame(&picked.0);
                if let Some(c) = st.conns.get(&conn) {
                    c.send(Outgoing::Reply(badges));
                }
            }
            picked
        };
        let Some(since) = since else { return Ok(()) };
        let wanted = Viewer {
            user: &user,
            channels: fresh,
            muted,
            docs: docs.as_deref(),
        };
        // An event addressed to the user already came through a live `notifications`.
        let delivered = Viewer {
            user: &user,
            channels: live,
            muted,
            docs: docs.as_deref(),
        };
        let wants = |event: &Delivered| wanted.sees(event) && !delivered.sees(event);
        let replayed = self.replay(ws, &wants, since, upto, &tx, &closer).await;
        // The held events follow the replay, whatever happened to it.
        let mut st = ws.lock();
        if let Some(c) = st.conns.get_mut(&conn) {
            for event in c.held.take().unwrap_or_default() {
                if !c.send(Outgoing::Event(Arc::clone(&event))) {
                    event.handed_over();
                }
            }
        }
        replayed
    }

    /// Sends what `wants` picks of the events after `since`, up to `upto`, or `resync_required`
    /// when retention dropped part of them (or `since` is an id the log never gave).
    pub(super) async fn replay(
        &self,
        ws: &Workspace,
        wants: &(dyn Fn(&Delivered) -> bool + Sync),
        since: u64,
        upto: u64,
        tx: &mpsc::Sender<Outgoing>,
        closer: &Closer,
    ) -> Result<(), StoreError> {
        if since > upto {
            // An id this log never gave (it was restored or wiped since): start over.
            let frame = ServerFrame::ResyncRequired {
                since,
                oldest: self.oldest_kept(&ws.name).await?,
                latest: upto,
            }
            .text();
            self.send_or_close(tx, Outgoing::Reply(frame), closer).await;
            return Ok(());
        }
        let mut cursor = since;
        while cursor < upto {
            let page = self.read(&ws.name, wants, cursor, upto, PAGE).await?;
            if let Some(oldest) = page.resync_from {
                let frame = ServerFrame::ResyncRequired {
                    since,
                    oldest,
                    latest: upto,
                }
                .text();
                self.send_or_close(tx, Outgoing::Reply(frame), closer).await;
                return Ok(());
            }
            for event in page.events {
                if !self.send_or_close(tx, Outgoing::Event(event), closer).await {
                    return Ok(());
                }
            }
            if page.last_id <= cursor {
                break;
            }
            cursor = page.last_id;
        }
        Ok(())
    }

    /// Queues `message`, waiting up to the lag timeout for room; a connection that has none by
    /// then is closed as too slow. True when queued.
    async fn send_or_close(
        &self,
        tx: &mpsc::Sender<Outgoing>,
        message: Outgoing,
        closer: &Closer,
    ) -> bool {
        let sent = tx
            .send_timeout(message, self.settings.lag_timeout)
            .await
            .is_ok();
        if !sent {
            closer.close(CloseReason::Lagging);
        }
        sent
    }

    /// Up to `limit` events after `after` (and at most `upto`) that `wants` picks.
    async fn read(
        &self,
        workspace: &str,
        wants: &(dyn Fn(&Delivered) -> bool + Sync),
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut page = Page {
            last_id: after,
            ..Page::default()
        };
        while page.events.len() < limit && page.last_id < upto {
            let events = match self.store.since(workspace, page.last_id, PAGE).await? {
                Since::Resync { oldest } => {
                    page.resync_from = Some(oldest);
                    return Ok(page);
                }
                Since::Events(events) => events,
            };
            if events.is_empty() {
                break;
            }
            for stored in events {
                if stored.id > upto || page.events.len() >= limit {
                    return Ok(page);
                }
                page.last_id = stored.id;
                match Delivered::from_stored(&stored) {
                    Some(event) if wants(&event) => page.events.push(Arc::new(event)),
                    Some(_) => {}
                    // Changes to the users' records, for no subscriber.
                    None if super::records::is_internal(&stored.body) => {}
                    None => {
                        tracing::warn!(workspace, id = stored.id, "skipping an unreadable event")
                    }
                }
            }
        }
        Ok(page)
    }

    /// A `since` ahead of what this server released (another node of a cluster gave it, and
    /// its events have not come here yet) is caught up from the log first, so it does not
    /// look like an id the log never gave.
    async fn catch_up(&self, ws: &Workspace, since: u64) {
        if since <= ws.lock().released {
            return;
        }
        match self.store.last_id(&ws.name).await {
            Ok(last) if since <= last => {
                if let Err(err) = self.backfill(&ws.name).await {
                    tracing::warn!(workspace = %ws.name, error = %err, "cannot catch up from the log");
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(workspace = %ws.name, error = %err, "cannot read the log's last id")
            }
        }
    }

    /// The oldest id the log still holds (the next one when it holds none).
    async fn oldest_kept(&self, workspace: &str) -> Result<u64, StoreError> {
        Ok(match self.store.since(workspace, 0, 1).await? {
            Since::Resync { oldest } => oldest,
            Since::Events(events) => match events.first() {
                Some(first) => first.id,
                None => self.store.last_id(workspace).await?.saturating_add(1),
            },
        })
    }

    /// Long-poll: the events after `since` (or, without it, after the latest) that `user` sees
    /// through `channels`, waiting up to `timeout` for the first; empty on timeout.
    ///
    /// # Errors
    /// The store failed.
    pub async fn poll(
        &self,
        workspace: &str,
        user: &str,
        docs: Option<&[(String, DocPermission)]>,
        channels: ChannelSet,
        since: Option<u64>,
        timeout: Duration,
    ) -> Result<Page, StoreError> {
        let ws = self.workspace(workspace).await?;
        let mut released = ws.released.subscribe();
        let muted = ws
            .lock()
            .users
            .get(user)
            .map_or(Muted::default(), |u| u.muted);
        let viewer = Viewer {
            user,
            channels,
            muted,
            docs,
        };
        if let Some(since) = since {
            self.catch_up(&ws, since).await;
        }
        let now = *released.borrow();
        if since.is_some_and(|since| since > now) {
            // An id this log never gave (it was restored or wiped since): start over.
            return Ok(Page {
                last_id: now,
                resync_from: Some(self.oldest_kept(workspace).await?),
                ..Page::default()
            });
        }
        let mut cursor = since.unwrap_or(now);
        let deadline = Instant::now() + timeout;
        loop {
            let upto = *released.borrow_and_update();
            if upto > cursor {
                let page = self
                    .read(workspace, &|e| viewer.sees(e), cursor, upto, POLL_LIMIT)
                    .await?;
                if page.resync_from.is_some() {
                    // The client reloads what it shows and goes on from the latest event: a
                    // `since` it passes on as it is told never asks for the lost part again.
                    return Ok(Page {
                        last_id: upto,
                        ..page
                    });
                }
                if !page.events.is_empty() {
                    return Ok(page);
                }
                cursor = page.last_id.max(cursor);
            }
            let changed = tokio::select! {
                _ = self.closing.cancelled() => false,
                changed = tokio::time::timeout_at(deadline, released.changed()) => {
                    matches!(changed, Ok(Ok(())))
                }
            };
            if !changed {
                return Ok(Page {
                    last_id: cursor,
                    ..Page::default()
                });
            }
        }
    }

    /// The newest `limit` activity events `user` may see, oldest first.
    ///
    /// # Errors
    /// The store failed.
    pub async fn activity(
        &self,
        workspace: &str,
        user: &str,
        docs: Option<&[(String, DocPermission)]>,
        limit: usize,
    ) -> Result<History, StoreError> {
        let viewer = Viewer {
            user,
            channels: ChannelSet::of(&[Channel::Activity]),
            muted: Muted::default(),
            docs,
        };
        self.latest(workspace, &viewer, limit, |_| true).await
    }

    /// The newest `limit` events a dashboard lists as notifications that `user` may see (every
    /// channel but presence and activity, nothing they muted), oldest first: what a page opened
    /// later starts its list from.
    ///
    /// # Errors
    /// The store failed.
    pub async fn notifications(
        &self,
        workspace: &str,
        user: &str,
        docs: Option<&[(String, DocPermission)]>,
        limit: usize,
    ) -> Result<History, StoreError> {
        let muted = {
            let ws = self.workspace(workspace).await?;
            let st = ws.lock();
            st.users.get(user).map_or(Muted::default(), |u| u.muted)
        };
        let channels: Vec<Channel> = Channel::ALL
            .into_iter()
            .filter(|c| !matches!(c, Channel::Presence | Channel::Activity))
            .collect();
        let viewer = Viewer {
            user,
            channels: ChannelSet::of(&channels),
            muted,
            docs,
        };
        // One addressed to the user comes through `notifications` whatever its channel: an
        // activity event is still activity.
        self.latest(workspace, &viewer, limit, Viewer::is_notice)
            .await
    }

    /// The newest `limit` events `viewer` sees and `keep` takes, oldest first, looking a
    /// bounded way back from the last released event.
    async fn latest(
        &self,
        workspace: &str,
        viewer: &Viewer<'_>,
        limit: usize,
        keep: impl Fn(&Delivered) -> bool,
    ) -> Result<History, StoreError> {
        // Events written but not yet released would come live too, after this answer.
        let last_id = self.workspace(workspace).await?.lock().released;
        let mut found = Vec::new();
        let mut before = last_id.saturating_add(1);
        // What is looked for may be sparse in a busy log: look this far back at most.
        let mut pages = ACTIVITY_SCAN_PAGES;
        while found.len() < limit && pages > 0 {
            pages -= 1;
            let events = self.store.before(workspace, before, PAGE).await?;
            let Some(oldest) = events.first() else { break };
            before = oldest.id;
            for stored in events.iter().rev() {
                if let Some(event) = Delivered::from_stored(stored) {
                    if viewer.sees(&event) && keep(&event) && found.len() < limit {
                        found.push(event.frame);
                    }
                }
            }
        }
        found.reverse();
        Ok(History {
            events: found,
            last_id,
        })
    }
}
