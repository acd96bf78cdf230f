//! An event ready to send ([`Delivered`]: its frame and what decides who gets it) and who gets
//! it ([`Viewer`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde_json::Value;
use tandem_storage::StoredEvent;
use tokio::time::Instant;

use super::catalogue::ChannelSet;
use super::catalogue::{self, Channel, Event};
use super::preferences::Muted;
use crate::auth::DocPermission;
use crate::docname::DocName;

/// An event ready to send: its frame (the stored object with its `id`) and what decides who
/// gets it.
#[derive(Debug)]
pub struct Delivered {
    pub id: u64,
    type_index: usize,
    channel: Channel,
    user_ids: Vec<String>,
    /// The document it names (who is editing it, a lock on one of its fields): only those who
    /// may read that document see it.
    document: Option<String>,
    pub frame: Utf8Bytes,
    /// When it was published (live events only), for the delivery delay.
    pub published: Option<Instant>,
    /// Subscribers yet to hand it to their socket (or to drop it).
    remaining: AtomicUsize,
}

impl Delivered {
    /// The event as read back from the log; `None` for a record the catalogue no longer knows.
    pub(super) fn from_stored(stored: &StoredEvent) -> Option<Delivered> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            user_ids: Vec<Value>,
            #[serde(default)]
            document: Option<Value>,
            #[serde(default)]
            resource: Option<Value>,
        }
        let head: Head = serde_json::from_slice(&stored.body).ok()?;
        Some(Delivered {
            id: stored.id,
            type_index: catalogue::type_index(&head.kind)?,
            channel: catalogue::channel_of(&head.kind)?,
            user_ids: head
                .user_ids
                .iter()
                .filter_map(catalogue::id_text)
                .collect(),
            document: document_of(&head.kind, head.document.as_ref(), head.resource.as_ref()),
            frame: frame_with_id(stored.id, &stored.body)?.into(),
            published: None,
            remaining: AtomicUsize::new(0),
        })
    }

    /// A live event just appended as `id`, with its stored `body`.
    pub(super) fn live(id: u64, event: &Event, body: &str, published: Instant) -> Delivered {
        Delivered {
            id,
            type_index: catalogue::type_index(event.kind).unwrap_or(0),
            channel: event.channel,
            user_ids: event.user_ids.clone(),
            // The event's fields are in `body` by now.
            document: matches!(event.kind, "editing" | "lock_acquired" | "lock_released")
                .then(|| serde_json::from_str::<serde_json::Map<String, Value>>(body).ok())
                .flatten()
                .and_then(|fields| {
                    document_of(event.kind, fields.get("document"), fields.get("resource"))
                }),
            frame: frame_with_id(id, body.as_bytes())
                .unwrap_or_default()
                .into(),
            published: Some(published),
            remaining: AtomicUsize::new(0),
        }
    }

    /// This many subscribers will each hand it over once.
    pub(super) fn expect_recipients(&self, recipients: usize) {
        self.remaining.store(recipients, Ordering::Release);
    }

    /// One subscriber is done with this event. For the last one, when it was published.
    pub fn handed_over(&self) -> Option<Instant> {
        let published = self.published?;
        let before = self.remaining.fetch_sub(1, Ordering::AcqRel);
        (before == 1).then_some(published)
    }
}

/// The document a server event names: `document` of `editing`, the document of a lock's
/// `resource` (`{document}#{field}`).
fn document_of(kind: &str, document: Option<&Value>, resource: Option<&Value>) -> Option<String> {
    match kind {
        "editing" => document?.as_str().map(str::to_owned),
        "lock_acquired" | "lock_released" => {
            let resource = resource?.as_str()?;
            Some(resource.split('#').next().unwrap_or(resource).to_owned())
        }
        _ => None,
    }
}

/// The frame of a stored event: its JSON object with `"id"` first.
pub(super) fn frame_with_id(id: u64, body: &[u8]) -> Option<String> {
    let rest = std::str::from_utf8(body).ok()?.strip_prefix('{')?;
    Some(if rest.trim_start().starts_with('}') {
        format!("{{\"id\":{id}}}")
    } else {
        format!("{{\"id\":{id},{rest}")
    })
}

/// Who looks at events, and through which channels.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub user: &'a str,
    pub channels: ChannelSet,
    pub muted: Muted,
    /// The viewer's token's document grants (`None`: the whole workspace).
    pub docs: Option<&'a [(String, DocPermission)]>,
}

impl Viewer<'_> {
    /// Whether this viewer gets `event`: an event for everyone goes to the subscribers of its
    /// channel; one addressed to users (`user_ids`) only to them, through its channel or
    /// `notifications`; a muted type to nobody.
    pub(super) fn sees(&self, event: &Delivered) -> bool {
        if self.muted.mutes(event.type_index) {
            return false;
        }
        if let (Some(document), Some(docs)) = (&event.document, self.docs) {
            // Who is in a document, or holds one of its fields, is for those who may read it.
            let readable = DocName::parse(document)
                .is_ok_and(|doc| crate::auth::granted(Some(docs), &doc).is_ok());
            if !readable {
                return false;
            }
        }
        if event.user_ids.is_empty() {
            self.channels.contains(event.channel)
        } else {
            event.user_ids.iter().any(|u| u == self.user)
                && (self.channels.contains(event.channel)
                    || self.channels.contains(Channel::Notifications))
        }
    }

    /// Whether `event` is of a kind a dashboard lists as a notification (every channel but
    /// presence and activity).
    pub(super) fn is_notice(event: &Delivered) -> bool {
        !matches!(event.channel, Channel::Presence | Channel::Activity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_id_first() {
        assert_eq!(
            frame_with_id(7, br#"{"type":"x","a":1}"#).unwrap(),
            r#"{"id":7,"type":"x","a":1}"#
        );
        assert_eq!(frame_with_id(1, b"{}").unwrap(), r#"{"id":1}"#);
        assert_eq!(frame_with_id(1, b"[1]"), None);
    }

    fn delivered(kind: &str, user_ids: &[&str]) -> Delivered {
        Delivered {
            id: 1,
            type_index: catalogue::type_index(kind).unwrap(),
            channel: catalogue::channel_of(kind).unwrap(),
            user_ids: user_ids.iter().map(|u| u.to_string()).collect(),
            document: None,
            frame: "{}".into(),
            published: None,
            remaining: AtomicUsize::new(0),
        }
    }

    #[test]
    fn viewers_see_their_channels_their_notifications_and_nothing_muted() {
        let queries = Viewer {
            user: "1",
            channels: ChannelSet::of(&[Channel::Queries]),
            muted: Muted::default(),
            docs: None,
        };
        assert!(queries.sees(&delivered("query_started", &[])));
        assert!(!queries.sees(&delivered("agent_executed", &[])));
        assert!(queries.sees(&delivered("query_started", &["1"])));
        assert!(!queries.sees(&delivered("query_started", &["2"])));
        let inbox = Viewer {
            user: "2",
            channels: ChannelSet::of(&[Channel::Notifications]),
            muted: Muted::default(),
            docs: None,
        };
        assert!(inbox.sees(&delivered("agent_executed", &["2"])));
        assert!(!inbox.sees(&delivered("agent_executed", &[])));
        let muted = Viewer {
            muted: Muted::of(&["query_started".into()]),
            ..queries
        };
        assert!(!muted.sees(&delivered("query_started", &[])));
        assert!(muted.sees(&delivered("query_completed", &[])));
    }
}
