//! What the nodes tell each other of a workspace (`dashboard::roster`: who is present and
//! editing through each node) over Redis. Each entry a node tells goes, in one Lua script, into
//! the workspace's roster hash (`{origin}/{key}` → value, `{origin}` → the number of its latest
//! message) and out on the workspace's channel, so the hash always holds what the messages
//! said up to the number it names. A node that misses a message (a gap in the numbers, a
//! heartbeat naming a later one, a reconnect) reads the hash again; entries of nodes no longer
//! alive are dropped from it by whoever finds them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::bus::Outgoing;
use super::wire::{NodeInfo, RosterMessage};
use super::Cluster;
use crate::dashboard::roster::{Heard, Told};

/// How long a reread waits for other requests about the same workspace.
const REREAD_COALESCE: Duration = Duration::from_millis(20);

/// Sets (or removes) one entry, numbers it, and publishes the message. KEYS[1]: the roster;
/// ARGV: the origin, the number, the entry's field, '1' to remove it (else '0'), its value,
/// the channel, the message.
const TELL: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '1' then
    redis.call('HDEL', KEYS[1], ARGV[3])
else
    redis.call('HSET', KEYS[1], ARGV[3], ARGV[5])
end
return redis.call('PUBLISH', ARGV[6], ARGV[7])
";

/// Replaces every entry of the origin, numbers it, and publishes the message. KEYS[1]: the
/// roster; ARGV: the origin, the number, the channel, the message, then field, value pairs.
const TELL_ALL: &str = r"
local prefix = ARGV[1] .. '/'
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, string.len(prefix)) == prefix then
        redis.call('HDEL', KEYS[1], field)
    end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 5, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return redis.call('PUBLISH', ARGV[3], ARGV[4])
";

/// Drops every entry of a dead origin. KEYS[1]: the roster; ARGV[1]: the origin.
static DROP: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local prefix = ARGV[1] .. '/'
        local dropped = 0
        for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
            if field == ARGV[1] or string.sub(field, 1, string.len(prefix)) == prefix then
                dropped = dropped + redis.call('HDEL', KEYS[1], field)
            end
        end
        return dropped
        ",
    )
});

impl Cluster {
    fn roster_key(&self, workspace: &str) -> String {
        self.key(&format!("roster:{workspace}"))
    }

    /// The number of this node's next message about `workspace` (remembered for the next
    /// heartbeat).
    fn next_told(&self, workspace: &str) -> u64 {
        let seq = {
            let mut seq = self.told_seq.entry(workspace.to_owned()).or_insert(0);
            *seq += 1;
            *seq
        };
        self.announce_told
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(workspace.to_owned(), seq);
        seq
    }

    /// Adds an [`Outgoing::Told`] to `pipe`, as a script that updates the roster hash and
    /// publishes the message.
    pub(super) fn add_told(&self, pipe: &mut redis::Pipeline, workspace: &str, heard: Heard) {
        let origin = self.settings.origin;
        let seq = self.next_told(workspace);
        let message = RosterMessage {
            origin,
            seq,
            heard: heard.clone(),
        }
        .encode();
        let channel = self.events_channel(workspace);
        let key = self.roster_key(workspace);
        match heard {
            Heard::Set { key: entry, value } => {
                pipe.cmd("EVAL")
                    .arg(TELL)
                    .arg(1)
                    .arg(key)
                    .arg(origin)
                    .arg(seq)
                    .arg(format!("{origin}/{entry}"))
                    .arg(if value.is_none() { "1" } else { "0" })
                    .arg(value.unwrap_or_default())
                    .arg(channel)
                    .arg(message.as_ref())
                    .ignore();
            }
            Heard::All { entries } => {
                let cmd = pipe
                    .cmd("EVAL")
                    .arg(TELL_ALL)
                    .arg(1)
                    .arg(key)
                    .arg(origin)
                    .arg(seq)
                    .arg(channel)
                    .arg(message.as_ref());
                for (entry, value) in entries {
                    cmd.arg(format!("{origin}/{entry}")).arg(value);
                }
                cmd.ignore();
            }
        }
    }

    /// What every live node but this one told of `workspace`; entries of dead nodes found on
    /// the way are dropped.
    pub(super) async fn read_roster(&self, workspace: &str) -> Result<Vec<(i64, Told)>, String> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(self.roster_key(workspace));
        pipe.cmd("ZRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg(crate::clock::now_ms())
            .arg("+inf");
        let read = tokio::time::timeout(
            self.settings.timeout,
            pipe.query_async::<(HashMap<String, String>, Vec<String>)>(&mut self.redis.clone()),
        )
        .await;
        let (fields, members) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(err)) => return Err(err.to_string()),
            Err(_) => return Err("Redis did not answer in time".to_owned()),
        };
        let live: HashSet<i64> = members
            .iter()
            .filter_map(|member| serde_json::from_str::<NodeInfo>(member).ok())
            .map(|node| node.origin)
            .chain(self.nodes.iter().map(|node| *node.key()))
            .collect();
        let mut told: HashMap<i64, Told> = HashMap::new();
        let mut dead = HashSet::new();
        for (field, value) in fields {
            let (origin, entry) = match field.split_once('/') {
                Some((origin, entry)) => (origin, Some(entry)),
                None => (field.as_str(), None),
            };
            let Ok(origin) = origin.parse::<i64>() else {
                continue;
            };
            if origin == self.settings.origin {
                continue;
            }
            if !live.contains(&origin) {
                dead.insert(origin);
                continue;
            }
            let node = told.entry(origin).or_default();
            match entry {
                Some(entry) => {
                    node.entries.insert(entry.to_owned(), value);
                }
                None => node.seq = value.parse().unwrap_or(0),
            }
        }
        for origin in dead {
            self.drop_told(workspace, origin);
        }
        Ok(told.into_iter().collect())
    }

    /// Drops `origin`'s entries of `workspace` from Redis (it is dead).
    pub(super) fn drop_told(&self, workspace: &str, origin: i64) {
        let (mut redis, timeout) = (self.redis.clone(), self.settings.timeout);
        let key = self.roster_key(workspace);
        self.tasks.spawn(async move {
            let mut drop = DROP.key(key);
            drop.arg(origin);
            if !matches!(
                tokio::time::timeout(timeout, drop.invoke_async::<i64>(&mut redis)).await,
                Ok(Ok(_))
            ) {
                tracing::debug!(origin, "dropping a dead node's roster entries failed");
            }
        });
    }

    /// Another node's message about `workspace`.
    pub(super) fn on_told(self: &Arc<Self>, workspace: &str, payload: Vec<u8>) {
        let message = match RosterMessage::decode(Bytes::from(payload)) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(workspace, error = %err, "an unreadable roster message on the bus");
                return;
            }
        };
        if message.origin == self.settings.origin {
            return;
        }
        let Some(hub) = self.hub() else { return };
        if hub.remote_told(workspace, message.origin, message.seq, message.heard) {
            tracing::debug!(
                workspace,
                origin = message.origin,
                seq = message.seq,
                "a gap in a node's roster messages"
            );
            self.schedule_reread(workspace.to_owned());
        }
    }

    /// What a heartbeat says `origin` told last: reads again what was missed.
    pub(super) fn check_told(self: &Arc<Self>, origin: i64, told: Vec<(String, u64)>) {
        let Some(hub) = self.hub() else { return };
        for (workspace, seq) in told {
            if hub.told_behind(&workspace, origin, seq) {
                tracing::debug!(
                    workspace,
                    origin,
                    seq,
                    "a node's last roster message was lost"
                );
                self.schedule_reread(workspace);
            }
        }
    }

    /// Reads `workspace`'s roster again soon (requests meanwhile share the read).
    pub(super) fn schedule_reread(self: &Arc<Self>, workspace: String) {
        if !self.rereads.insert(workspace.clone()) {
            return;
        }
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            tokio::time::sleep(REREAD_COALESCE).await;
            // A workspace still loading is read once loaded (it asks then, too).
            let Some(hub) = this.hub() else { return };
            let mut waited = Duration::ZERO;
            while !hub.is_loaded(&workspace) && waited < this.settings.timeout {
                tokio::time::sleep(REREAD_COALESCE).await;
                waited += REREAD_COALESCE;
            }
            this.rereads.remove(&workspace);
            match this.read_roster(&workspace).await {
                Ok(read) => hub.reread_told(&workspace, read),
                Err(err) => {
                    // Once Redis answers again, every roster is read again.
                    tracing::debug!(workspace, error = %err, "reading a roster failed");
                    this.mark_down("reading a roster failed");
                }
            }
        });
    }

    /// Redis is back: this node tells everything again, and reads what the others told.
    pub(super) fn tell_all_again(self: &Arc<Self>) {
        let Some(hub) = self.hub() else { return };
        for workspace in hub.loaded_names() {
            let entries = hub.told_entries(&workspace);
            let _ = self.outgoing.send(Outgoing::Told {
                workspace: workspace.clone(),
                heard: Heard::All { entries },
            });
            self.schedule_reread(workspace);
        }
    }

    /// `origin` is gone: what it told goes, here and in Redis.
    pub(super) fn forget_told(&self, origin: i64) {
        let Some(hub) = self.hub() else { return };
        hub.forget_origin(origin);
        for workspace in hub.loaded_names() {
            self.drop_told(&workspace, origin);
        }
    }
}
