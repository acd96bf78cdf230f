//! Awareness states the server keeps in rooms (the dashboard's presence mirrors and inboxes):
//! set in a loaded room at once, put back whenever the room loads again, and renewed every 15 s
//! (clients drop a remote state that was not renewed for 30 s). Their clocks start from the
//! time in milliseconds, so they keep rising across reloads and restarts.

use std::sync::Arc;

use tandem_crdt::Room;

use super::rooms::Rooms;
use crate::docname::DocName;

impl Rooms {
    /// Sets (or with `None` removes) an awareness state the server keeps in `name` under
    /// `client`. A loaded room gets it at once and its peers are told; an unloaded one gets it
    /// when it loads, so nobody loads a room just for this.
    pub fn set_server_awareness(&self, name: &DocName, client: u64, state: Option<Arc<str>>) {
        match &state {
            Some(state) => {
                self.server_awareness
                    .entry(name.clone())
                    .or_default()
                    .insert(client, Arc::clone(state));
            }
            None => {
                self.server_awareness.remove_if_mut(name, |_, states| {
                    states.remove(&client);
                    states.is_empty()
                });
            }
        }
        let handle = self.map.get(name).map(|e| Arc::clone(e.value()));
        let Some(handle) = handle.filter(|h| h.state.get().is_some()) else {
            return;
        };
        let mut state_guard = handle.lock();
        if state_guard.closed {
            return;
        }
        if let Some(frame) =
            state_guard
                .room
                .set_own_awareness(client, state, crate::clock::now_ms())
        {
            self.broadcast_detached(&state_guard, frame);
        }
    }

    /// Puts the server's states for `name` into `room` (a no-op for those it already holds).
    pub(super) fn restore_server_awareness(&self, name: &DocName, room: &mut Room) {
        if let Some(states) = self.server_awareness.get(name) {
            let now = crate::clock::now_ms();
            for (client, state) in states.iter() {
                room.set_own_awareness(*client, Some(Arc::clone(state)), now);
            }
        }
    }

    /// Renews the server's awareness states in every loaded room: clients drop a remote state
    /// that was not renewed for 30 s.
    pub fn renew_server_awareness(&self) {
        let names: Vec<DocName> = self
            .server_awareness
            .iter()
            .map(|e| e.key().clone())
            .collect();
        let now = crate::clock::now_ms();
        for name in names {
            let handle = self.map.get(&name).map(|e| Arc::clone(e.value()));
            let Some(handle) = handle.filter(|h| h.state.get().is_some()) else {
                continue;
            };
            let mut state = handle.lock();
            if state.closed {
                continue;
            }
            if let Some(frame) = state.room.renew_own_awareness(now) {
                self.broadcast_detached(&state, frame);
            }
        }
    }
}
