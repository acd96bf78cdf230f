//! The shared test harness: a real server in this process on an ephemeral port ([`TestApp`])
//! or the real binary ([`process::ServerProcess`]), the URLs of either ([`Served`]), tokens
//! signed with the tests' [`secret`], HTTP helpers, a dashboard client ([`dash::Dash`]) and the
//! Node.js runner ([`node`]).

pub mod backing;
pub mod cluster;
pub mod dash;
pub mod node;
pub mod postgres;
pub mod process;
pub mod redis;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tandem::auth::{mint, now_secs, Claims, Role, Secret};
use tandem::Config;
use tandem_sync::client::{Client, ClientOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

pub use backing::Backing;
pub use dash::Dash;
pub use node::node;

/// Nanoseconds since the Unix epoch, for names no other run uses.
pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// How long a test waits for anything before failing.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The secret the tests' secured servers verify tokens with.
pub const SECRET: &str = "tandem-test-secret";

/// [`SECRET`] as the server takes it.
pub fn secret() -> Secret {
    SECRET.parse().expect("a secret")
}

/// Claims for user `sub` of `workspace` on the `scale` plan, valid for ten minutes.
pub fn claims(workspace: &str, sub: &str, role: Role) -> Claims {
    Claims {
        sub: sub.into(),
        name: None,
        workspace: workspace.into(),
        plan: Some("scale".into()),
        role,
        docs: None,
        exp: now_secs() + 600,
        iat: None,
        nbf: None,
    }
}

/// `claims` signed with [`secret`].
pub fn sign(claims: &Claims) -> String {
    mint(&secret(), claims).expect("a token")
}

/// A token of [`claims`], signed with [`secret`].
pub fn token(workspace: &str, sub: &str, role: Role) -> String {
    sign(&claims(workspace, sub, role))
}

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
        name: name.map(Into::into),
        ..claims(workspace, sub, role)
    };
    mint(secret, &claims).expect("a token")
}

/// Where a server under test answers.
pub trait Served {
    fn addr(&self) -> SocketAddr;

    /// The WebSocket URL of document `doc`.
    fn ws_url(&self, doc: &str) -> String {
        format!("ws://{}/ws/{}", self.addr(), doc)
    }

    /// The URL of `path`.
    fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// The dashboard URL with `query` (e.g. `token=...` or `user=ada`).
    fn dash_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{}", self.addr(), query)
    }
}

/// A server running in this process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database it keeps its data in, when it does (else sled in `dir`).
    database: Option<std::sync::Arc<tandem_storage::pg::testing::TempDatabase>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tandem::ServeError>>>,
}

/// Starts a server with the default configuration on a fresh data dir (or database: see
/// [`Backing::from_env`]).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server whose configuration `tweak` adjusts, on a fresh data dir (or database).
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let database = match Backing::from_env().await {
        Backing::Postgres(db) => Some(std::sync::Arc::new(db)),
        Backing::Sled(_) => None,
    };
    spawn_on(database, tweak).await
}

/// Starts a server whose configuration `tweak` adjusts on sled in a fresh data dir, whatever
/// `TANDEM_TEST_STORE` says (for what only sled has), or on the database `tweak` names.
pub async fn spawn_on_sled(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_on(None, tweak).await
}

pub(crate) async fn spawn_on(
    database: Option<std::sync::Arc<tandem_storage::pg::testing::TempDatabase>>,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::with_data_dir(dir.path());
    tweak(&mut config);
    start(dir, database, config).await
}

async fn start(
    dir: tempfile::TempDir,
    database: Option<std::sync::Arc<tandem_storage::pg::testing::TempDatabase>>,
    mut config: Config,
) -> TestApp {
    config.data_dir = dir.path().to_path_buf();
    if let Some(database) = &database {
        config.database_url = Some(database.url().parse().expect("a database URL"));
    }
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
        database,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl Served for TestApp {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Starts a server that checks tokens signed with [`secret`], its configuration adjusted by
/// `tweak`, on a fresh data dir.
pub async fn spawn_secured(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|config| {
        config.auth_secret = Some(secret());
        tweak(config);
    })
    .await
}

impl TestApp {
    /// The development token an open server mints for `name` (`POST /api/v1/dev/token`).
    pub async fn dev_token(&self, name: &str) -> String {
        let minted: Value = reqwest::Client::new()
            .post(self.http_url("/api/v1/dev/token"))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .expect("POST /api/v1/dev/token")
            .json()
            .await
            .expect("a JSON answer");
        minted["token"].as_str().expect("a token").to_owned()
    }

    /// `method` on `path` with `bearer`: the status and the JSON body (`null` when there is
    /// none).
    pub async fn call(&self, method: reqwest::Method, path: &str, bearer: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .request(method, self.http_url(path))
            .bearer_auth(bearer)
            .send()
            .await
            .expect("a response");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` with `bearer`.
    pub async fn get(&self, path: &str, bearer: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, bearer).await
    }

    /// `POST /api/v1/events` with `body`, with `token` when given.
    pub async fn publish(&self, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(self.http_url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("a response");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// The whole stored document `doc` as one v1 update, read with `bearer` when given.
    pub async fn stored(&self, doc: &str, bearer: Option<&str>) -> bytes::Bytes {
        let mut request = reqwest::Client::new().get(self.http_url(&format!("/api/v1/docs/{doc}")));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request
            .send()
            .await
            .expect("a response")
            .bytes()
            .await
            .expect("a body")
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

    /// Shuts down gracefully and starts again on the same data dir (or database) with
    /// `config`.
    pub async fn restart_with(mut self, config: Config) -> TestApp {
        self.shutdown_and_wait().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        start(dir, self.database.take(), config).await
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

/// Asserts an API error: `status`, a JSON body with `error` = `code` and a message (`case` says
/// which request it was). Returns the body.
pub async fn json_error(response: reqwest::Response, status: u16, code: &str, case: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "{case}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("a content type")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{case}: {content_type}"
    );
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["error"], code, "{case}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {body}"
    );
    body
}
