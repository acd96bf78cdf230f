//! Shared test harness: a real server on an ephemeral port, and clients for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tandem::auth::{mint, now_secs, Claims, Role, Secret};
use tandem::Config;
use tandem_sync::client::{Client, ClientOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

/// How long a test waits for anything before failing.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A token signed with `secret` for user `sub` of `workspace` on the `scale` plan, valid for ten
/// minutes.
pub fn mint_token(
    secret: &Secret,
    workspace: &str,
    sub: &str,
    name: Option<&str>,
    role: Role,
) -> String {
    let claims = Claims {
        sub: sub.into(),
        name: name.map(Into::into),
        workspace: workspace.into(),
        plan: Some("scale".into()),
        role,
        docs: None,
        exp: now_secs() + 600,
    };
    mint(secret, &claims).expect("a token")
}

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

/// A dashboard client on `/ws`: JSON text frames, with `batch` frames flattened into the events
/// they carry.
pub struct Dash {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    backlog: std::collections::VecDeque<serde_json::Value>,
    /// Raw frames received, `batch` frames included, for tests of batching.
    pub frames: Vec<serde_json::Value>,
}

impl TestApp {
    /// The dashboard URL with `query` (e.g. `token=...` or `user=ada`).
    pub fn dash_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{}", self.addr, query)
    }

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

    pub async fn send(&mut self, value: serde_json::Value) {
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
    pub async fn next_within(&mut self, wait: Duration) -> Option<serde_json::Value> {
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
                    let value: serde_json::Value =
                        serde_json::from_str(&text).expect("a JSON frame");
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
    pub async fn next(&mut self) -> serde_json::Value {
        self.next_within(TIMEOUT)
            .await
            .expect("a frame from the server in time")
    }

    /// Every object up to and including the first of type `kind`.
    pub async fn until(&mut self, kind: &str) -> Vec<serde_json::Value> {
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
    pub async fn next_of(&mut self, kind: &str) -> serde_json::Value {
        self.until(kind).await.pop().expect("one at least")
    }

    /// Subscribes and waits until the subscription is live; returns what was replayed before
    /// the acknowledgement.
    pub async fn subscribe(
        &mut self,
        channels: &[&str],
        since: Option<u64>,
    ) -> Vec<serde_json::Value> {
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

/// A Node script may take this long before the test fails.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(120);

/// `dir` (relative to the repository) with its npm packages installed from its lockfile:
/// `npm ci` the first time, and again whenever the lockfile is newer than the install.
pub fn npm_installed(dir: &str) -> std::path::PathBuf {
    static INSTALLS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut done = INSTALLS.lock().unwrap_or_else(|p| p.into_inner());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    if done.iter().any(|d| d == dir) {
        return path;
    }
    let installed = path.join("node_modules/.package-lock.json");
    let fresh = installed.metadata().and_then(|m| m.modified()).ok()
        >= path
            .join("package-lock.json")
            .metadata()
            .and_then(|m| m.modified())
            .ok();
    if !installed.exists() || !fresh {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&path)
            .status()
            .expect("npm is needed for the JavaScript and browser tests (Node.js 20 and npm)");
        assert!(status.success(), "npm ci failed in {}", path.display());
    }
    done.push(dir.to_owned());
    path
}

/// Runs `node script args…` in `dir` and returns its stdout; fails the test when the script
/// fails or hangs.
pub async fn node(dir: &str, script: &str, args: &[&str]) -> String {
    let dir = npm_installed(dir);
    let child = tokio::process::Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is needed for the JavaScript and browser tests");
    let output = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node {script} did not finish in {NODE_TIMEOUT:?}"))
        .expect("node output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node {script} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    stdout
}
