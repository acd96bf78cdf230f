//! [`Dash`]: a dashboard client on `/ws`.

use std::time::Duration;

use serde_json::Value;

use super::{Served, TestApp, TIMEOUT};

/// A dashboard client on `/ws`: JSON text frames, with `batch` frames flattened into the events
/// they carry.
pub struct Dash {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    backlog: std::collections::VecDeque<Value>,
    /// Raw frames received, `batch` frames included, for tests of batching.
    pub frames: Vec<Value>,
}

impl TestApp {
    /// A dashboard connection with `query`.
    pub async fn dash(&self, query: &str) -> Dash {
        Dash::connect(&self.dash_url(query)).await
    }
}

impl Dash {
    pub async fn connect(url: &str) -> Dash {
        let (socket, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Dash {
            socket,
            backlog: Default::default(),
            frames: Vec::new(),
        }
    }

    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next object from the server, or `None` after `wait` without one.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(value) = self.backlog.pop_front() {
                return Some(value);
            }
            let message = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("the server closed the connection"),
                Ok(Some(message)) => message.expect("a frame"),
            };
            match message {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("a JSON frame");
                    self.frames.push(value.clone());
                    if value["type"] == "batch" {
                        let events = value["events"].as_array().expect("batch events");
                        self.backlog.extend(events.iter().cloned());
                    } else {
                        self.backlog.push_back(value);
                    }
                }
                Message::Close(frame) => panic!("closed by the server: {frame:?}"),
                _ => {}
            }
        }
    }

    /// The next object from the server.
    pub async fn next(&mut self) -> Value {
        self.next_within(TIMEOUT)
            .await
            .expect("a frame from the server in time")
    }

    /// Every object up to and including the first of type `kind`.
    pub async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let value = self.next().await;
            let done = value["type"] == kind;
            seen.push(value);
            if done {
                return seen;
            }
        }
    }

    /// The next object of type `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        self.until(kind).await.pop().expect("one at least")
    }

    /// Subscribes and waits until the subscription is live; returns what was replayed before
    /// the acknowledgement.
    pub async fn subscribe(&mut self, channels: &[&str], since: Option<u64>) -> Vec<Value> {
        let mut frame = serde_json::json!({"action": "subscribe", "channels": channels});
        if let Some(since) = since {
            frame["since"] = since.into();
        }
        self.send(frame).await;
        let mut seen = self.until("subscribed").await;
        seen.pop();
        seen
    }

    /// Waits for the server to close the connection; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let wait = async {
            while let Some(message) = self.socket.next().await {
                if let Ok(Message::Close(Some(frame))) = message {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
            }
            panic!("the connection ended without a close frame");
        };
        tokio::time::timeout(TIMEOUT, wait)
            .await
            .expect("closed in time")
    }

    /// Closes the connection from the client side.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
