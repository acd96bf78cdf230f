//! An async y-websocket client over tokio-tungstenite, used by the integration tests and tools
//! (feature `client`). It keeps a yrs [`Doc`] in sync with a server exactly as the JS `WebsocketProvider` does:
//! step 1 on connect, step 2 in answer to the server's step 1, local edits sent as updates,
//! awareness kept in a map of client id → state.
//!
//! This is the only async code of the crate; it knows nothing of rooms or storage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, TransactionMut, Update};

use crate::awareness::{AwarenessEntry, AwarenessUpdate};
use crate::message::{self, AuthMessage, Message, MessageReader, SyncMessage};

/// The transaction origin of updates that came from the server, so they are not sent back.
const REMOTE_ORIGIN: &str = "tandem-sync:remote";

/// The most the client reads per system call; larger frames still arrive whole.
const CLIENT_READ_BUFFER_BYTES: usize = 16 * 1024;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("the connection is closed")]
    Closed,
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("could not encode awareness state: {0}")]
    Json(String),
}

/// How the server closed the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code, or `None` when the connection ended without a close frame.
    pub code: Option<u16>,
    pub reason: String,
}

/// Options for [`Client::connect_with`].
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The yrs client id of the local document; random when `None`.
    pub client_id: Option<u64>,
}

#[derive(Default)]
struct Shared {
    awareness: HashMap<u64, AwarenessEntry>,
    synced: bool,
    closed: Option<CloseInfo>,
    permission_denied: Vec<String>,
    custom: Vec<(u64, Bytes)>,
    errors: Vec<String>,
    local_awareness_clock: u64,
    frames_received: u64,
}

enum Command {
    Frame(Bytes),
    Close,
}

/// A y-websocket client connected to one document.
pub struct Client {
    doc: Doc,
    shared: Arc<Mutex<Shared>>,
    changed: watch::Receiver<u64>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8000/ws/my-doc`) and starts syncing.
    ///
    /// # Errors
    /// The WebSocket handshake failed (the server refused the upgrade or is unreachable).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with explicit options.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let doc = match options.client_id {
            Some(id) => Doc::with_client_id(id),
            None => Doc::new(),
        };
        Self::connect_doc(url, doc).await
    }

    /// Connects with an existing document, e.g. one edited while offline, which is merged on
    /// connect through the sync handshake.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_doc(url: &str, doc: Doc) -> Result<Client, ClientError> {
        // tungstenite zeroes its whole read buffer before every read; its 128 KiB default made
        // a stream of small frames cost a 128 KiB memset each.
        let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER_BYTES);
        let (socket, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (changed_tx, changed) = watch::channel(0u64);
        let (commands, command_rx) = mpsc::unbounded_channel();

        let local = commands.clone();
        doc.observe_update_v1("tandem-sync:client", move |txn, event| {
            let remote = txn
                .origin()
                .is_some_and(|o| o.as_ref() == REMOTE_ORIGIN.as_bytes());
            if !remote {
                // The receiver only goes away when the client is closed.
                let _ = local.send(Command::Frame(message::encode_update(&event.update)));
            }
        })
        .map_err(|_| ClientError::Closed)?;

        let step1 = message::encode_step1(&doc.transact().state_vector().encode_v1());
        commands
            .send(Command::Frame(step1))
            .map_err(|_| ClientError::Closed)?;

        let task = tokio::spawn(run(
            socket,
            doc.clone(),
            Arc::clone(&shared),
            changed_tx,
            command_rx,
        ));
        Ok(Client {
            doc,
            shared,
            changed,
            commands,
            task,
        })
    }

    /// The local document. Edits made through it are sent to the server.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// Inserts `text` at the end of the root text `name`.
    pub fn push_text(&self, name: &str, text: &str) {
        let field = self.doc.get_or_insert_text(name);
        let mut txn = self.doc.transact_mut();
        let len = field.len(&txn);
        field.insert(&mut txn, len, text);
    }

    /// Runs `edit` in one transaction, sent to the server as one update.
    pub fn edit<R>(&self, edit: impl FnOnce(&mut TransactionMut<'_>) -> R) -> R {
        let mut txn = self.doc.transact_mut();
        edit(&mut txn)
    }

    /// The content of the root text `name`.
    pub fn text(&self, name: &str) -> String {
        let field = self.doc.get_or_insert_text(name);
        let txn = self.doc.transact();
        field.get_string(&txn)
    }

    /// Sets the local awareness state (a JSON value) and sends it.
    ///
    /// # Errors
    /// The connection is closed.
    pub fn set_awareness(&self, state: &str) -> Result<(), ClientError> {
        let client_id = self.doc.client_id().get();
        let entry = {
            let mut shared = lock(&self.shared);
            shared.local_awareness_clock += 1;
            let entry = AwarenessEntry {
                client_id,
                clock: shared.local_awareness_clock,
                state: Some(state.into()),
            };
            shared.awareness.insert(client_id, entry.clone());
            entry
        };
        let update = AwarenessUpdate {
            entries: vec![entry],
        };
        self.send_raw(message::encode_awareness(&update.encode()))
    }

    /// The awareness states this client knows, by client id, without removed clients.
    pub fn awareness(&self) -> HashMap<u64, String> {
        lock(&self.shared)
            .awareness
            .iter()
            .filter_map(|(id, e)| e.state.as_ref().map(|s| (*id, s.to_string())))
            .collect()
    }

    /// Sends one raw frame, for tests of malformed input.
    ///
    /// # Errors
    /// The connection is closed.
    pub fn send_raw(&self, frame: impl Into<Bytes>) -> Result<(), ClientError> {
        self.commands
            .send(Command::Frame(frame.into()))
            .map_err(|_| ClientError::Closed)
    }

    /// Whether a sync step 2 has been received.
    pub fn is_synced(&self) -> bool {
        lock(&self.shared).synced
    }

    /// How the connection ended, once it has.
    pub fn close_info(&self) -> Option<CloseInfo> {
        lock(&self.shared).closed.clone()
    }

    /// The reasons of every permission-denied message received.
    pub fn permission_denied(&self) -> Vec<String> {
        lock(&self.shared).permission_denied.clone()
    }

    /// Messages of types this client does not interpret (e.g. a heartbeat echo).
    pub fn custom_messages(&self) -> Vec<(u64, Bytes)> {
        lock(&self.shared).custom.clone()
    }

    /// How many binary frames the server has sent so far.
    pub fn frames_received(&self) -> u64 {
        lock(&self.shared).frames_received
    }

    /// Problems met while applying what the server sent (should stay empty).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared).errors.clone()
    }

    /// Waits until `condition` holds, re-checking after every frame received.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when it does not hold within `timeout`.
    pub async fn wait_for(
        &self,
        what: &'static str,
        timeout: Duration,
        mut condition: impl FnMut(&Client) -> bool,
    ) -> Result<(), ClientError> {
        let mut changed = self.changed.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changed.borrow_and_update();
            if condition(self) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                // The connection ended: one last look, then give up.
                Ok(Err(_)) => {
                    return if condition(self) {
                        Ok(())
                    } else {
                        Err(ClientError::Closed)
                    }
                }
                Err(_) => return Err(ClientError::Timeout(timeout, what)),
            }
        }
    }

    /// Waits for the first sync step 2.
    ///
    /// # Errors
    /// As [`Client::wait_for`].
    pub async fn synced(&self, timeout: Duration) -> Result<(), ClientError> {
        self.wait_for("sync step 2", timeout, Client::is_synced)
            .await
    }

    /// Waits until the server closes the connection and says how.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when it stays open.
    pub async fn closed(&self, timeout: Duration) -> Result<CloseInfo, ClientError> {
        self.wait_for("the connection to close", timeout, |c| {
            c.close_info().is_some()
        })
        .await?;
        self.close_info().ok_or(ClientError::Closed)
    }

    /// Closes the connection with 1000 and waits for the socket task to end.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    /// Drops the connection without a close handshake, as a crashed client would.
    pub fn abort(self) {
        self.task.abort();
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding this lock can only come from a bug in this module; the state is
    // plain data and stays usable.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run(
    mut socket: Socket,
    doc: Doc,
    shared: Arc<Mutex<Shared>>,
    changed: watch::Sender<u64>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let close = loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Frame(frame)) => {
                    if let Err(err) = socket.send(WsMessage::Binary(frame)).await {
                        break CloseInfo { code: None, reason: err.to_string() };
                    }
                }
                Some(Command::Close) | None => {
                    let _ = socket.close(None).await;
                    break CloseInfo { code: Some(1000), reason: "closed by client".into() };
                }
            },
            incoming = socket.next() => match incoming {
                Some(Ok(WsMessage::Binary(frame))) => {
                    lock(&shared).frames_received += 1;
                    for reply in handle_frame(&doc, &shared, frame) {
                        if let Err(err) = socket.send(WsMessage::Binary(reply)).await {
                            lock(&shared).errors.push(err.to_string());
                        }
                    }
                    changed.send_modify(|n| *n += 1);
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    break match frame {
                        Some(f) => CloseInfo { code: Some(u16::from(f.code)), reason: f.reason.to_string() },
                        None => CloseInfo { code: Some(u16::from(CloseCode::Status)), reason: String::new() },
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => break CloseInfo { code: None, reason: err.to_string() },
                None => break CloseInfo { code: None, reason: "connection ended".into() },
            },
        }
    };
    lock(&shared).closed = Some(close);
    changed.send_modify(|n| *n += 1);
}

fn handle_frame(doc: &Doc, shared: &Mutex<Shared>, frame: Bytes) -> Vec<Bytes> {
    let mut replies = Vec::new();
    for item in MessageReader::new(frame) {
        let message = match item {
            Ok((message, _)) => message,
            Err(err) => {
                lock(shared)
                    .errors
                    .push(format!("bad frame from server: {err}"));
                break;
            }
        };
        match message {
            Message::Sync(SyncMessage::Step1(sv)) => match message::decode_state_vector(&sv) {
                Ok(sv) => {
                    let diff = doc.transact().encode_state_as_update_v1(&sv);
                    replies.push(message::encode_step2(&diff));
                }
                Err(err) => lock(shared).errors.push(format!("bad state vector: {err}")),
            },
            Message::Sync(SyncMessage::Step2(update)) => {
                apply_remote(doc, shared, &update);
                lock(shared).synced = true;
            }
            Message::Sync(SyncMessage::Update(update)) => apply_remote(doc, shared, &update),
            Message::Awareness(payload) => match AwarenessUpdate::decode(&payload) {
                Ok(update) => merge_awareness(&mut lock(shared), update),
                Err(err) => lock(shared).errors.push(format!("bad awareness: {err}")),
            },
            Message::QueryAwareness => {
                let guard = lock(shared);
                let own = doc.client_id().get();
                if let Some(entry) = guard.awareness.get(&own) {
                    let update = AwarenessUpdate {
                        entries: vec![entry.clone()],
                    };
                    replies.push(message::encode_awareness(&update.encode()));
                }
            }
            Message::Auth(AuthMessage::PermissionDenied(reason)) => {
                lock(shared).permission_denied.push(reason)
            }
            Message::Auth(AuthMessage::PermissionGranted(_)) => {}
            Message::Custom { tag, payload } => lock(shared).custom.push((tag, payload)),
        }
    }
    replies
}

fn apply_remote(doc: &Doc, shared: &Mutex<Shared>, update: &[u8]) {
    let result = Update::decode_v1(update)
        .map_err(|e| e.to_string())
        .and_then(|update| {
            doc.transact_mut_with(REMOTE_ORIGIN)
                .apply_update(update)
                .map_err(|e| e.to_string())
        });
    if let Err(err) = result {
        lock(shared).errors.push(format!("bad update: {err}"));
    }
}

/// Takes every entry that supersedes what is known of its client ([`AwarenessEntry::supersedes`],
/// the rule the server's rooms apply too).
fn merge_awareness(shared: &mut Shared, update: AwarenessUpdate) {
    for entry in update.entries {
        let known = shared
            .awareness
            .get(&entry.client_id)
            .map(AwarenessEntry::known);
        if entry.supersedes(known) {
            shared.awareness.insert(entry.client_id, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awareness_merge_follows_clock_rules() {
        let mut shared = Shared::default();
        let entry = |clock, state: Option<&str>| AwarenessUpdate {
            entries: vec![AwarenessEntry {
                client_id: 1 << 50,
                clock,
                state: state.map(Into::into),
            }],
        };
        merge_awareness(&mut shared, entry(2, Some("{\"a\":2}")));
        merge_awareness(&mut shared, entry(1, Some("{\"a\":1}")));
        assert_eq!(
            shared.awareness[&(1 << 50)].state.as_deref(),
            Some("{\"a\":2}")
        );
        merge_awareness(&mut shared, entry(2, None));
        assert_eq!(shared.awareness[&(1 << 50)].state, None);
    }
}
