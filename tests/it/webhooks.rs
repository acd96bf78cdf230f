//! Webhooks against a real HTTP receiver (axum on a loopback port) that verifies every
//! signature with the `standardwebhooks` crate (an implementation of the specification that is
//! not ours), answers 500 for a while to force retries, and is down across a SIGKILL of the
//! server: every event arrives at least once, in order.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use tandem::auth::Role;
use tandem_sync::client::Client;

use crate::support::process::ServerProcess;
use crate::support::{self, spawn_secured, wait_text, Backing, Served, TestApp};

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Every request, in arrival order: its `webhook-id` and body.
    requests: Vec<(String, Value)>,
    /// Requests whose signature did not verify.
    bad_signatures: usize,
}

struct Receiver {
    addr: SocketAddr,
    secret: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Seen>>,
    /// Requests still to be answered 500.
    failures: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ReceiverState {
    secret: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Seen>>,
    failures: Arc<AtomicUsize>,
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let secret = state.secret.lock().unwrap().clone();
    let verified = secret
        .as_deref()
        .map(|s| standardwebhooks::Webhook::new(s).expect("a secret"))
        .is_some_and(|hook| hook.verify(&body, &headers).is_ok());
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    {
        let mut seen = state.seen.lock().unwrap();
        if !verified {
            seen.bad_signatures += 1;
        }
        seen.requests.push((id, value));
    }
    let failing = state
        .failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

impl Receiver {
    /// A receiver on `addr` (a fresh port when `None`) answering the first `failures` requests
    /// with 500.
    async fn start(addr: Option<SocketAddr>, failures: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let state = ReceiverState {
            secret: Arc::default(),
            seen: Arc::default(),
            failures: Arc::new(AtomicUsize::new(failures)),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            secret: state.secret,
            seen: state.seen,
            failures: state.failures,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The messages delivered, once each, in the order they first arrived: (type, data).
    fn messages(&self) -> Vec<(String, Value)> {
        let seen = self.seen.lock().unwrap();
        let mut ids = HashSet::new();
        seen.requests
            .iter()
            .filter(|(id, _)| ids.insert(id.clone()))
            .map(|(_, body)| {
                (
                    body["type"].as_str().unwrap_or("").to_owned(),
                    body["data"].clone(),
                )
            })
            .collect()
    }

    /// Waits (bounded) until a message of `kind` matching `test` arrived.
    async fn wait_for(&self, kind: &str, test: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some((_, data)) = self
                .messages()
                .into_iter()
                .find(|(k, d)| k == kind && test(d))
            {
                return data;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {kind} arrived; got {:?}", self.messages());
    }
}

/// Registers the receiver for every event type, with the document's content.
async fn register(base: &str, admin: Option<&str>, receiver: &Receiver, query: &str) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/api/v1/admin/webhooks{query}"))
        .json(&json!({
            "url": receiver.url(),
            "events": ["document.updated", "document.version_created", "document.restored",
                       "user.entered", "user.left", "notification.undelivered", "approval.decided"],
            "description": "the test's receiver",
            "include_content": true,
        }));
    if let Some(admin) = admin {
        request = request.bearer_auth(admin);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    *receiver.secret.lock().unwrap() = Some(body["secret"].as_str().unwrap().to_owned());
    body
}

async fn editor(app: &TestApp, doc: &str, user: &str) -> Client {
    let token = support::token("acme", user, Role::Member);
    let client = Client::connect(&format!("{}?token={token}", app.ws_url(doc)))
        .await
        .expect("connect");
    client.synced(support::TIMEOUT).await.expect("sync");
    client
        .set_awareness(&json!({"user": {"name": user}}).to_string())
        .expect("awareness");
    client
}

#[tokio::test]
async fn every_event_reaches_a_receiver_that_verifies_it_in_order_through_failures() {
    let receiver = Receiver::start(None, 3).await;
    let app = spawn_secured(|c| {
        c.webhook_allow_private = true;
        c.webhook_debounce_ms = 200;
        c.webhook_retry_base_ms = 50;
        c.webhook_retry_max_ms = 200;
    })
    .await;
    let admin = support::token("acme", "root", Role::Admin);
    let base = app.http_url("");
    let endpoint = register(&base, Some(&admin), &receiver, "").await;
    assert!(endpoint["secret"].as_str().unwrap().starts_with("whsec_"));

    let doc = "acme/queries/hooked";
    let ann = editor(&app, doc, "ann").await;
    receiver
        .wait_for("user.entered", |d| {
            d["user_id"] == "ann" && d["document"] == doc
        })
        .await;
    let bob = editor(&app, doc, "bob").await;
    receiver
        .wait_for("user.entered", |d| d["user_id"] == "bob")
        .await;
    ann.push_text("t", "SELECT 1");
    wait_text(&bob, "t", "SELECT 1").await;
    let updated = receiver
        .wait_for("document.updated", |d| d["document"] == doc)
        .await;
    assert_eq!(updated["authors"], json!(["ann"]));
    assert_eq!(updated["content"], json!({"t": "SELECT 1"}));
    assert!(updated["state_vector"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));

    // A version and a restore.
    let http = reqwest::Client::new();
    let ann_token = support::token("acme", "ann", Role::Member);
    let version: Value = http
        .post(app.http_url(&format!("/api/v1/docs/{doc}/versions")))
        .bearer_auth(&ann_token)
        .json(&json!({"label": "one"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = version["version"]["id"].clone();
    receiver
        .wait_for("document.version_created", |d| d["version"]["id"] == id)
        .await;
    bob.push_text("t", " + 1");
    wait_text(&ann, "t", "SELECT 1 + 1").await;
    let restored = http
        .post(app.http_url(&format!("/api/v1/docs/{doc}/versions/{id}/restore")))
        .bearer_auth(&ann_token)
        .send()
        .await
        .unwrap();
    assert_eq!(restored.status(), 200);
    let told = receiver
        .wait_for("document.restored", |d| d["restored_version"] == id)
        .await;
    assert_eq!(told["by"], "ann");
    assert_eq!(told["before"]["authors"], json!(["bob"]));

    // An event for a user who is online (Ann, present through the presence API) and one who
    // is not: only Zed's copy is undelivered.
    let present = http
        .post(app.http_url("/api/v1/presence"))
        .bearer_auth(&ann_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(present.status().is_success());
    let service = support::token("acme", "backend", Role::Service);
    let published = http
        .post(app.http_url("/api/v1/events"))
        .bearer_auth(&service)
        .json(&json!({"type": "approval_request", "approval_id": 7, "title": "Ship it?", "user_ids": ["zed", "ann"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let undelivered = receiver
        .wait_for("notification.undelivered", |_| true)
        .await;
    assert_eq!(undelivered["user_ids"], json!(["zed"]));
    assert_eq!(undelivered["event"]["type"], "approval_request");

    // Ann decides on it: `approval.decided`, naming her.
    let decided = http
        .post(app.http_url("/api/v1/approvals/7/decision"))
        .bearer_auth(&ann_token)
        .json(&json!({"decision": "denied", "comment": "not on a Friday"}))
        .send()
        .await
        .unwrap();
    assert_eq!(decided.status(), 201);
    let decision = receiver
        .wait_for("approval.decided", |d| d["approval_id"] == 7)
        .await;
    assert_eq!(decision["decision"], "denied");
    assert_eq!(decision["user_id"], "ann");
    assert_eq!(decision["comment"], "not on a Friday");

    bob.close().await;
    receiver
        .wait_for("user.left", |d| d["user_id"] == "bob")
        .await;

    // Every request verified; the first three were refused and retried, in order.
    {
        let seen = receiver.seen.lock().unwrap();
        assert_eq!(seen.bad_signatures, 0);
        assert_eq!(receiver.failures.load(Ordering::SeqCst), 0);
        let first = &seen.requests[0].0;
        assert_eq!(
            seen.requests
                .iter()
                .take(4)
                .filter(|(id, _)| id == first)
                .count(),
            4,
            "the first message was retried until it was taken, nothing overtook it"
        );
    }
    let kinds: Vec<String> = receiver.messages().into_iter().map(|(k, _)| k).collect();
    let first = |kind: &str| kinds.iter().position(|k| k == kind).unwrap();
    let milestones = [
        "user.entered",
        "document.updated",
        "document.version_created",
        "document.restored",
        "notification.undelivered",
        "user.left",
    ];
    let positions: Vec<usize> = milestones.iter().map(|k| first(k)).collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    assert_eq!(positions, sorted, "{kinds:?}");

    // The deliveries as the admin API shows them.
    let (status, deliveries) = app
        .get(
            &format!(
                "/api/v1/admin/webhooks/{}/deliveries",
                endpoint["id"].as_str().unwrap()
            ),
            &admin,
        )
        .await;
    assert_eq!(status, 200);
    let outcomes: BTreeSet<&str> = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, BTreeSet::from(["delivered", "failed"]));
    receiver.server.abort();
}

#[tokio::test]
async fn endpoints_are_for_admins_of_their_workspace_and_private_targets_are_refused() {
    let app = spawn_secured(|_| {}).await;
    let admin = support::token("acme", "root", Role::Admin);
    let member = support::token("acme", "ann", Role::Member);
    let http = reqwest::Client::new();
    let post = |token: &str, url: &str| {
        http.post(app.http_url("/api/v1/admin/webhooks"))
            .bearer_auth(token)
            .json(&json!({"url": url, "events": ["user.entered"]}))
            .send()
    };
    assert_eq!(
        post(&member, "https://example.com/h")
            .await
            .unwrap()
            .status(),
        403
    );
    let refused = post(&admin, "http://127.0.0.1:9/h").await.unwrap();
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "invalid_webhook");
    let made: Value = post(&admin, "https://example.com/h")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = made["id"].as_str().unwrap().to_owned();
    let (_, listed) = app.get("/api/v1/admin/webhooks", &admin).await;
    assert_eq!(listed["webhooks"][0]["id"], id);
    assert!(listed["webhooks"][0].get("secret").is_none());
    // Another workspace's admin sees none of it, and cannot remove it.
    let other = support::token("globex", "root", Role::Admin);
    let (_, theirs) = app.get("/api/v1/admin/webhooks", &other).await;
    assert_eq!(theirs["webhooks"], json!([]));
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/admin/webhooks/{id}"),
            &other,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/admin/webhooks/{id}"),
            &admin,
        )
        .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn messages_queued_while_the_receiver_is_down_survive_a_sigkill() {
    // A port nothing listens on yet.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let backing = Backing::sled();
    let flags = [
        "--webhook-allow-private",
        "--webhook-retry-base-ms",
        "100",
        "--webhook-retry-max-ms",
        "300",
    ];
    let server = ServerProcess::start(&backing, &flags);
    let base = server.http_url("");
    // Registered while the receiver is down (a stand-in receiver takes the secret).
    let stand_in = Receiver {
        addr: port,
        secret: Arc::default(),
        seen: Arc::default(),
        failures: Arc::default(),
        server: tokio::spawn(async {}),
    };
    let endpoint = register(&base, None, &stand_in, "?workspace=acme").await;
    let http = reqwest::Client::new();
    let mut versions = Vec::new();
    for label in ["a", "b", "c"] {
        let version: Value = http
            .post(server.http_url("/api/v1/docs/acme/q/versions"))
            .json(&json!({ "label": label }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        versions.push(version["version"]["id"].clone());
    }
    // Once the versions are acknowledged their messages are in the outbox; let an attempt or
    // two fail against the closed port, then kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();

    let receiver = Receiver::start(Some(port), 0).await;
    *receiver.secret.lock().unwrap() = Some(endpoint["secret"].as_str().unwrap().to_owned());
    let _server = ServerProcess::start(&backing, &flags);
    for id in &versions {
        receiver
            .wait_for("document.version_created", |d| d["version"]["id"] == *id)
            .await;
    }
    let labels: Vec<Value> = receiver
        .messages()
        .iter()
        .filter(|(k, _)| k == "document.version_created")
        .map(|(_, d)| d["version"]["label"].clone())
        .collect();
    assert_eq!(labels, [json!("a"), json!("b"), json!("c")]);
    assert_eq!(receiver.seen.lock().unwrap().bad_signatures, 0);
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_disabled_and_the_workspace_told() {
    let receiver = Receiver::start(None, usize::MAX).await;
    let app = spawn_secured(|c| {
        c.webhook_allow_private = true;
        c.webhook_retry_base_ms = 50;
        c.webhook_retry_max_ms = 100;
        c.webhook_disable_after_secs = 1;
    })
    .await;
    let admin = support::token("acme", "root", Role::Admin);
    let endpoint = register(&app.http_url(""), Some(&admin), &receiver, "").await;
    let http = reqwest::Client::new();
    let taken = http
        .post(app.http_url("/api/v1/docs/acme/q/versions"))
        .bearer_auth(support::token("acme", "ann", Role::Member))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 201);
    let mut disabled = Value::Null;
    for _ in 0..100 {
        let (_, listed) = app.get("/api/v1/admin/webhooks", &admin).await;
        disabled = listed["webhooks"][0].clone();
        if disabled["disabled"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(disabled["id"], endpoint["id"]);
    assert_eq!(disabled["disabled"], true, "{disabled}");
    assert!(disabled["disabled_reason"].as_str().is_some());
    let (_, notifications) = app.get("/api/v1/notifications", &admin).await;
    let alert = notifications["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "system_alert")
        .cloned()
        .expect("a system alert");
    assert!(alert["message"].as_str().unwrap().contains("disabled"));
    // Disabled, it sends nothing more.
    let before = receiver.seen.lock().unwrap().requests.len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.seen.lock().unwrap().requests.len(), before);
}

#[tokio::test]
async fn an_endpoint_registered_on_one_node_of_a_cluster_hears_from_every_node() {
    let receiver = Receiver::start(None, 0).await;
    let (_services, nodes) = crate::support::cluster::start(2, |c| {
        c.auth_secret = Some(support::secret());
        c.webhook_allow_private = true;
    })
    .await;
    let admin = support::token("acme", "root", Role::Admin);
    register(&nodes[0].http_url(""), Some(&admin), &receiver, "").await;
    let ann = support::token("acme", "ann", Role::Member);
    let http = reqwest::Client::new();
    // Node 1 reads the endpoints again every two seconds: until it has, its version is not
    // told; one taken after is. Bounded: a version a second for at most ten seconds.
    let mut told = false;
    for n in 0..10 {
        let taken = http
            .post(nodes[1].http_url("/api/v1/docs/acme/q/versions"))
            .bearer_auth(&ann)
            .json(&json!({ "label": format!("from node 1, {n}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(taken.status(), 201);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if receiver
            .messages()
            .iter()
            .any(|(k, _)| k == "document.version_created")
        {
            told = true;
            break;
        }
    }
    assert!(
        told,
        "node 1 never delivered to the endpoint registered on node 0"
    );
    assert_eq!(receiver.seen.lock().unwrap().bad_signatures, 0);
}
