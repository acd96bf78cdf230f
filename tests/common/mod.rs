//! Shared test harness: a real server on an ephemeral port, and clients for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tandem::Config;
use tandem_sync::client::{Client, ClientOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

/// How long a test waits for anything before failing.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A server running in this process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tandem::ServeError>>>,
}

/// Starts a server with the default configuration on a fresh data dir.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server whose configuration `tweak` adjusts, on a fresh data dir.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::with_data_dir(dir.path());
    tweak(&mut config);
    start(dir, config).await
}

async fn start(dir: tempfile::TempDir, mut config: Config) -> TestApp {
    config.data_dir = dir.path().to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(tandem::serve(listener, config, async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn ws_url(&self, doc: &str) -> String {
        format!("ws://{}/ws/{}", self.addr, doc)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A client of `doc`, synced.
    pub async fn join(&self, doc: &str) -> Client {
        let client = Client::connect(&self.ws_url(doc)).await.expect("connect");
        client.synced(TIMEOUT).await.expect("sync");
        client
    }

    /// A client of `doc` with a fixed yrs client id, synced.
    pub async fn join_as(&self, doc: &str, client_id: u64) -> Client {
        let options = ClientOptions {
            client_id: Some(client_id),
        };
        let client = Client::connect_with(&self.ws_url(doc), options)
            .await
            .expect("connect");
        client.synced(TIMEOUT).await.expect("sync");
        client
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown_and_wait().await;
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    /// Shuts down gracefully and starts again on the same data dir with `config`.
    pub async fn restart_with(mut self, config: Config) -> TestApp {
        self.shutdown_and_wait().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        start(dir, config).await
    }

    async fn shutdown_and_wait(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(TIMEOUT, server)
                .await
                .expect("server stops in time")
                .expect("server task")
                .expect("server result");
        }
    }
}

/// Waits until `client`'s root text `name` equals `expected`.
pub async fn wait_text(client: &Client, name: &str, expected: &str) {
    let result = client
        .wait_for("text", TIMEOUT, |c| c.text(name) == expected)
        .await;
    assert!(
        result.is_ok(),
        "text {name:?} is {:?}, expected {expected:?}",
        client.text(name)
    );
}

/// A v1 update inserting `text` at the start of root text `t`, by yrs client `client`.
pub fn text_update(client: u64, text: &str) -> Vec<u8> {
    let doc = Doc::with_client_id(client);
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

/// The root text `t` of the document a v1 update (e.g. a whole state) describes.
pub fn text_of_update(update: &[u8]) -> String {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).expect("a decodable update"))
        .expect("an applicable update");
    let txn = doc.transact();
    t.get_string(&txn)
}
