//! [`Probe`]: a lightweight protocol client for load tests. It completes the sync handshake
//! without keeping a document, sends ready-made updates, and hands back every frame it receives,
//! so one bench process can drive thousands of connections and saturate a server rather than
//! itself.
//!
//! It speaks the y-websocket framing and Hocuspocus's, which prefixes every message with the
//! document name and wants an authentication message first. Messages are encoded with
//! `tandem-sync`'s codec; the Hocuspocus framing is only as much of that protocol as a load test
//! needs.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use tandem_sync::message::{self, MSG_SYNC, MSG_SYNC_STEP_1, MSG_SYNC_STEP_2};
use tandem_sync::ClientError;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Hocuspocus's message type for an answer to a sync message (same layout as sync).
const HOCUSPOCUS_SYNC_REPLY: u64 = 4;
/// Hocuspocus's auth message type and its "token" sub-type.
const HOCUSPOCUS_AUTH: u64 = 2;

/// The most a probe reads per system call; frames larger than this still arrive whole.
const PROBE_READ_BUFFER_BYTES: usize = 8 * 1024;
const HOCUSPOCUS_AUTH_TOKEN: u64 = 0;

/// How messages are framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// One y-protocols message per frame, the document named by the URL.
    YWebsocket,
    /// Hocuspocus: every message starts with `varString(document)`.
    Hocuspocus { document: String },
}

impl Framing {
    fn prefix(&self) -> Vec<u8> {
        match self {
            Framing::YWebsocket => Vec::new(),
            Framing::Hocuspocus { document } => {
                let mut prefix = Vec::with_capacity(document.len() + 2);
                prefix.write_string(document);
                prefix
            }
        }
    }
}

/// A connected probe.
pub struct Probe {
    socket: Socket,
    prefix: Vec<u8>,
}

impl Probe {
    /// Connects to `url` (the document's full URL for y-websocket; the server URL for
    /// Hocuspocus, whose document is named in every message).
    ///
    /// # Errors
    /// The WebSocket handshake failed.
    pub async fn connect(url: &str, framing: Framing) -> Result<Probe, ClientError> {
        // tungstenite zeroes its whole read buffer before every read: at the default 128 KiB,
        // that memset was most of what a load client spent per connection.
        let config = WebSocketConfig::default().read_buffer_size(PROBE_READ_BUFFER_BYTES);
        let (socket, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
        let mut probe = Probe {
            socket,
            prefix: framing.prefix(),
        };
        if let Framing::Hocuspocus { .. } = framing {
            let mut auth = probe.prefix.clone();
            auth.write_var(HOCUSPOCUS_AUTH);
            auth.write_var(HOCUSPOCUS_AUTH_TOKEN);
            auth.write_string("");
            probe.socket.send(WsMessage::Binary(auth.into())).await?;
        }
        Ok(probe)
    }

    /// Sends sync step 1 with an empty state vector, answers the server's step 1 with an empty
    /// step 2, and waits for the server's step 2.
    ///
    /// # Errors
    /// The connection closed or the step 2 did not come within `timeout`.
    pub async fn handshake(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let step1 = message::encode_step1(&[0]);
        self.send_framed(&step1).await?;
        let wait = async {
            loop {
                let frame = match self.socket.next().await {
                    Some(Ok(WsMessage::Binary(frame))) => frame,
                    Some(Ok(WsMessage::Close(_))) | None => return Err(ClientError::Closed),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                };
                let Some(body) = frame.get(self.prefix.len()..) else {
                    continue;
                };
                let mut cursor = Cursor::new(body);
                let (Ok(tag), Ok(sub)) = (cursor.read_var::<u64>(), cursor.read_var::<u64>())
                else {
                    continue;
                };
                if tag != MSG_SYNC && tag != HOCUSPOCUS_SYNC_REPLY {
                    continue;
                }
                if sub == MSG_SYNC_STEP_1 {
                    self.send_framed(&message::encode_step2(&[0, 0])).await?;
                } else if sub == MSG_SYNC_STEP_2 {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout(timeout, "sync step 2"))?
    }

    /// Sends one y-protocols message, framed.
    ///
    /// # Errors
    /// The connection is broken.
    pub async fn send_framed(&mut self, message: &[u8]) -> Result<(), ClientError> {
        let frame = frame_with(&self.prefix, message);
        self.socket.send(WsMessage::Binary(frame)).await?;
        Ok(())
    }

    /// Splits into a sending and a receiving half.
    pub fn split(self) -> (ProbeSink, ProbeStream) {
        let (sink, stream) = self.socket.split();
        let prefix_len = self.prefix.len();
        (
            ProbeSink {
                sink,
                prefix: self.prefix,
            },
            ProbeStream {
                stream,
                prefix_len,
                ended: None,
            },
        )
    }
}

fn frame_with(prefix: &[u8], message: &[u8]) -> Bytes {
    if prefix.is_empty() {
        return Bytes::copy_from_slice(message);
    }
    let mut frame = Vec::with_capacity(prefix.len() + message.len());
    frame.extend_from_slice(prefix);
    frame.extend_from_slice(message);
    frame.into()
}

/// The sending half of a [`Probe`].
pub struct ProbeSink {
    sink: SplitSink<Socket, WsMessage>,
    prefix: Vec<u8>,
}

impl ProbeSink {
    /// Sends a v1 update as a sync update message.
    ///
    /// # Errors
    /// The connection is broken.
    pub async fn send_update(&mut self, update: &[u8]) -> Result<(), ClientError> {
        let message = message::encode_update(update);
        self.sink
            .send(WsMessage::Binary(frame_with(&self.prefix, &message)))
            .await?;
        Ok(())
    }

    /// Queues an update without flushing; call [`ProbeSink::flush`] after a batch.
    ///
    /// # Errors
    /// The connection is broken.
    pub async fn feed_update(&mut self, update: &[u8]) -> Result<(), ClientError> {
        let message = message::encode_update(update);
        self.sink
            .feed(WsMessage::Binary(frame_with(&self.prefix, &message)))
            .await?;
        Ok(())
    }

    /// Writes out everything fed so far.
    ///
    /// # Errors
    /// The connection is broken.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.sink.flush().await?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.sink.close().await;
    }
}

/// The receiving half of a [`Probe`].
pub struct ProbeStream {
    stream: SplitStream<Socket>,
    prefix_len: usize,
    ended: Option<String>,
}

impl ProbeStream {
    /// The next binary frame, without its framing prefix; `None` once the connection ended
    /// ([`ProbeStream::ended`] says how).
    pub async fn next_message(&mut self) -> Option<Bytes> {
        loop {
            let message = match self.stream.next().await {
                Some(message) => message,
                None => {
                    self.ended.get_or_insert_with(|| "connection ended".into());
                    return None;
                }
            };
            match message {
                Ok(WsMessage::Binary(frame)) => {
                    if frame.len() >= self.prefix_len {
                        return Some(frame.slice(self.prefix_len..));
                    }
                }
                Ok(WsMessage::Close(frame)) => {
                    self.ended = Some(match frame {
                        Some(frame) => format!(
                            "closed by the server with {} {:?}",
                            u16::from(frame.code),
                            frame.reason.as_str()
                        ),
                        None => "closed by the server".into(),
                    });
                    return None;
                }
                Err(err) => {
                    self.ended = Some(format!("connection failed: {err}"));
                    return None;
                }
                Ok(_) => {}
            }
        }
    }

    /// How the connection ended, once [`ProbeStream::next_message`] returned `None`.
    pub fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }
}
