//! A bare relay: the ceiling no Yjs server can beat on this machine. It forwards every frame a
//! client sends to the other clients on the same URL path, batching socket writes like Tandem
//! does, with no CRDT and no storage. The only protocol it speaks: a sync step 1 is answered
//! with an empty step 2, so clients finish their handshake.
//!
//! usage: cargo run --release -p tandem-bench --example relay -- 127.0.0.1:18203

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Rooms = Arc<Mutex<HashMap<String, HashMap<u64, mpsc::UnboundedSender<Bytes>>>>>;

const EMPTY_STEP2: [u8; 5] = [0, 1, 2, 0, 0];

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18203".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("relay listening on {addr}");
    let rooms: Rooms = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream, id, Arc::clone(&rooms)));
    }
}

// The handshake callback's error type (an HTTP response) is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, id: u64, rooms: Rooms) {
    let mut path = String::new();
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    // Small read buffers, as Tandem uses: tungstenite allocates 128 KiB per connection otherwise.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let Ok(socket) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let (mut sink, mut source) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    rooms
        .lock()
        .expect("relay lock")
        .entry(path.clone())
        .or_default()
        .insert(id, tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.feed(Message::Binary(frame)).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = source.next().await {
        let Message::Binary(frame) = message else {
            continue;
        };
        if frame.starts_with(&[0, 0]) {
            let _ = tx.send(Bytes::from_static(&EMPTY_STEP2));
            continue;
        }
        if frame.starts_with(&[0, 1]) {
            continue;
        }
        let rooms = rooms.lock().expect("relay lock");
        if let Some(peers) = rooms.get(&path) {
            for (peer, peer_tx) in peers {
                if *peer != id {
                    let _ = peer_tx.send(frame.clone());
                }
            }
        }
    }
    if let Some(peers) = rooms.lock().expect("relay lock").get_mut(&path) {
        peers.remove(&id);
    }
    writer.abort();
}
