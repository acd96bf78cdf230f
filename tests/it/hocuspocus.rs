//! `GET /hocuspocus`: the real `@hocuspocus/provider` (Node, `tests/js/hocuspocus.mjs`) beside
//! y-websocket clients, and raw sockets for what a provider never sends.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tandem::auth::{now_secs, Claims, DocPermission, Role};
use tandem_sync::hocuspocus;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::{self, spawn_app, spawn_secured, Served, TestApp, TIMEOUT};

/// Runs `node hocuspocus.mjs mode ws://server args…` and returns what it printed.
async fn provider(app: &impl Served, mode: &str, args: &[&str]) -> serde_json::Value {
    let server = format!("ws://{}", app.addr());
    let mut all = vec![mode, server.as_str()];
    all.extend_from_slice(args);
    let out = support::node("tests/js", "hocuspocus.mjs", &all).await;
    serde_json::from_str(out.trim()).expect("one JSON line")
}

/// Ada's token for workspace acme, with `docs` when given.
fn ada(docs: Option<BTreeMap<String, DocPermission>>) -> String {
    support::sign(&Claims {
        docs,
        ..support::claims("acme", "ada", Role::Member)
    })
}

async fn stored_text(app: &TestApp, doc: &str, bearer: Option<&str>) -> String {
    support::text_of_update(&app.stored(doc, bearer).await)
}

#[tokio::test]
async fn providers_sharing_a_socket_converge_with_y_websocket_clients() {
    let app = spawn_secured(|_| {}).await;
    let token = ada(None);
    let seen = provider(&app, "converge", &[&token, "acme/specs/a", "acme/specs/b"]).await;
    assert_eq!(seen["scope"], "read-write");
    // Everyone's edits, on each document; docB's provider left before the last edit there.
    let a = seen["a"].as_str().unwrap();
    assert!(a.starts_with("after;"), "{a}");
    assert!(a.contains("hp-a;") && a.contains("ws-a;"), "{a}");
    let b = seen["b"].as_str().unwrap();
    assert!(b.contains("hp-b;") && b.contains("ws-b;") && b.contains("unseen;"));
    assert!(!seen["bAfterDetach"].as_str().unwrap().contains("unseen;"));
    // A stateless message goes to the others, not back to its sender.
    assert_eq!(seen["echoedToSender"], false);
    assert_eq!(seen["awarenessOfHpAtWs"], serde_json::json!(["hp"]));
    assert_eq!(stored_text(&app, "acme/specs/a", Some(&token)).await, a);
}

#[tokio::test]
async fn each_document_is_checked_against_its_token() {
    let app = spawn_secured(|_| {}).await;
    // A stored document is there when the provider says it is synced.
    let http = reqwest::Client::new();
    let response = http
        .post(app.http_url("/api/v1/docs/acme/queries/q1/update"))
        .bearer_auth(ada(None))
        .body(support::text_update(9, "stored;"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let seen = provider(&app, "refused", &["not-a-token", "acme/queries/q1"]).await;
    let denied = seen["denied"][0].as_str().unwrap();
    assert!(denied.starts_with("invalid_token:"), "{denied}");
    assert_eq!(seen["synced"], false);

    let other = support::sign(&support::claims("globex", "ada", Role::Member));
    let seen = provider(&app, "refused", &[&other, "acme/queries/q1"]).await;
    assert!(seen["denied"][0]
        .as_str()
        .unwrap()
        .starts_with("forbidden:"));

    let read_only = ada(Some(BTreeMap::from([(
        "acme/queries/*".to_string(),
        DocPermission::Read,
    )])));
    let seen = provider(&app, "readonly", &[&read_only, "acme/queries/q1"]).await;
    assert_eq!(seen["scope"], "readonly");
    assert_eq!(seen["text"], "stored;");
    // Its edit was refused (SyncStatus 0), so the provider still holds it as unsynced.
    assert_eq!(seen["unsynced"], 1);
    let bearer = ada(None);
    assert_eq!(
        stored_text(&app, "acme/queries/q1", Some(&bearer)).await,
        "stored;"
    );
}

#[tokio::test]
async fn a_token_that_expires_mid_session_closes_the_socket_with_4401() {
    let app = spawn_secured(|_| {}).await;
    let token = support::sign(&Claims {
        exp: now_secs() + 3,
        ..support::claims("acme", "ada", Role::Member)
    });
    let seen = provider(&app, "expiry", &[&token, "acme/specs/short"]).await;
    assert_eq!(seen["closes"][0], 4401);
}

#[tokio::test]
async fn one_socket_opens_at_most_so_many_documents() {
    let app = spawn_secured(|c| c.max_docs_per_socket = 3).await;
    let token = ada(None);
    let seen = provider(&app, "limit", &[&token, "3", "acme/many/"]).await;
    assert_eq!(seen["scoped"], 3);
    let denied = seen["denied"][0].as_str().unwrap();
    assert!(denied.starts_with("too_many_documents:"), "{denied}");
}

/// A raw Hocuspocus socket.
struct Raw {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Raw {
    async fn connect(app: &impl Served) -> Raw {
        let url = format!("ws://{}/hocuspocus", app.addr());
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Raw { ws }
    }

    async fn send(&mut self, frame: Vec<u8>) {
        self.ws.send(WsMessage::Binary(frame.into())).await.unwrap();
    }

    /// The next binary frame, skipping what is not.
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next()).await {
                Ok(Some(Ok(WsMessage::Binary(b)))) => return Some(b.to_vec()),
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => continue,
                Err(_) => panic!("nothing from the server in {TIMEOUT:?}"),
            }
        }
    }

    /// Frames until one for `address` of message type `kind`.
    async fn until(&mut self, address: &str, kind: u64) -> Vec<u8> {
        while let Some(frame) = self.next().await {
            if let Ok(hocuspocus::Frame::Doc {
                address: a, body, ..
            }) = hocuspocus::decode(&frame)
            {
                if a == address && frame[body.start] as u64 == kind {
                    return frame;
                }
            }
        }
        panic!("the socket closed before a message of type {kind} for {address}");
    }

    /// The close frame's code and reason.
    async fn closed(&mut self) -> (CloseCode, String) {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next()).await {
                Ok(Some(Ok(WsMessage::Close(Some(frame))))) => {
                    return (frame.code, frame.reason.to_string())
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    }
}

/// A y-websocket update frame body (type, sync update) of `text` by `client`.
fn update_body(client: u64, text: &str) -> Vec<u8> {
    tandem_sync::message::encode_update(&support::text_update(client, text)).to_vec()
}

#[tokio::test]
async fn frames_sent_before_the_token_wait_for_it_and_updates_are_acknowledged() {
    let app = spawn_app().await;
    let mut raw = Raw::connect(&app).await;
    // An update and a step 1 before the token: held, then applied in order.
    raw.send(hocuspocus::on_address("early", &update_body(5, "early;")))
        .await;
    raw.send(hocuspocus::on_address("early", &[0, 0, 1, 0]))
        .await;
    raw.send(hocuspocus::token("early", "", None)).await;
    let authenticated = raw.until("early", hocuspocus::MSG_AUTH).await;
    assert_eq!(
        authenticated,
        hocuspocus::authenticated("early", hocuspocus::SCOPE_READ_WRITE)
    );
    let status = raw.until("early", hocuspocus::MSG_SYNC_STATUS).await;
    assert_eq!(status, hocuspocus::sync_status("early", true));
    assert_eq!(stored_text(&app, "early", None).await, "early;");
    // A session address answers on exactly that address, for the document before `\0`.
    raw.send(hocuspocus::token("early\0tab-2", "", Some("4.8.0")))
        .await;
    raw.until("early\0tab-2", hocuspocus::MSG_AUTH).await;
    raw.send(hocuspocus::on_address(
        "early\0tab-2",
        &update_body(6, "tab;"),
    ))
    .await;
    raw.until("early\0tab-2", hocuspocus::MSG_SYNC_STATUS).await;
    let text = stored_text(&app, "early", None).await;
    assert!(text.contains("early;") && text.contains("tab;"), "{text}");
    // Closing one document answers on its address; the socket goes on.
    raw.send(hocuspocus::close("early", None)).await;
    let close = raw.until("early", hocuspocus::MSG_CLOSE).await;
    assert_eq!(
        close,
        hocuspocus::close("early", Some("provider_initiated"))
    );
    raw.send(hocuspocus::on_address(
        "early\0tab-2",
        &update_body(7, "more;"),
    ))
    .await;
    raw.until("early\0tab-2", hocuspocus::MSG_SYNC_STATUS).await;
}

#[tokio::test]
async fn garbage_closes_its_own_socket_with_a_reason_and_nothing_else() {
    let app = spawn_app_small_frames().await;
    let mut bystander = Raw::connect(&app).await;
    bystander.send(hocuspocus::token("shared", "", None)).await;
    bystander.until("shared", hocuspocus::MSG_AUTH).await;
    let cases: Vec<(&str, WsMessage, CloseCode)> = vec![
        (
            "an address longer than the frame",
            WsMessage::Binary(vec![0x40, b'a'].into()),
            CloseCode::Protocol,
        ),
        (
            "a message type only servers send",
            WsMessage::Binary(hocuspocus::on_address("shared", &[6, 1, b'x']).into()),
            CloseCode::Unsupported,
        ),
        (
            "a text frame",
            WsMessage::Text("hello".into()),
            CloseCode::Unsupported,
        ),
        (
            "a frame over --max-frame-bytes",
            WsMessage::Binary(vec![0; 8 * 1024].into()),
            CloseCode::Size,
        ),
    ];
    for (case, frame, code) in cases {
        let mut raw = Raw::connect(&app).await;
        raw.send(hocuspocus::token("shared", "", None)).await;
        raw.until("shared", hocuspocus::MSG_AUTH).await;
        raw.ws.send(frame).await.unwrap();
        let (got, reason) = raw.closed().await;
        assert_eq!(got, code, "{case}: {reason}");
        assert!(!reason.is_empty(), "{case}");
    }
    // A bad update inside a good frame: refused with its reason, nothing stored.
    let mut raw = Raw::connect(&app).await;
    raw.send(hocuspocus::token("shared", "", None)).await;
    raw.until("shared", hocuspocus::MSG_AUTH).await;
    raw.send(hocuspocus::on_address("shared", &[0, 2, 3, 1, 2, 3]))
        .await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::Unsupported, "{reason}");
    // The bystander's document still works.
    bystander
        .send(hocuspocus::on_address("shared", &update_body(8, "fine;")))
        .await;
    bystander.until("shared", hocuspocus::MSG_SYNC_STATUS).await;
    assert_eq!(stored_text(&app, "shared", None).await, "fine;");
}

async fn spawn_app_small_frames() -> TestApp {
    support::spawn_app_with(|c| c.max_frame_bytes = 4096).await
}

#[tokio::test]
async fn stateless_messages_are_bounded_and_backends_can_send_them() {
    let app = spawn_secured(|c| {
        c.max_stateless_bytes = 16;
        c.max_stateless_per_sec = 2;
    })
    .await;
    let token = ada(None);
    let doc = "acme/notes/n1";
    let mut listener = Raw::connect(&app).await;
    listener.send(hocuspocus::token(doc, &token, None)).await;
    listener.until(doc, hocuspocus::MSG_AUTH).await;

    // From a backend, with a service token: to every Hocuspocus client of the document.
    let service = support::sign(&support::claims("acme", "indexer", Role::Service));
    let http = reqwest::Client::new();
    let response = http
        .post(app.http_url(&format!("/api/v1/docs/{doc}/stateless")))
        .bearer_auth(&service)
        .body(r#"{"saved":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["delivered"], 1);
    let got = listener.until(doc, hocuspocus::MSG_STATELESS).await;
    assert_eq!(got, hocuspocus::stateless(doc, r#"{"saved":true}"#));
    // A member's token may not.
    let response = http
        .post(app.http_url(&format!("/api/v1/docs/{doc}/stateless")))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // Too large a payload closes the sender with 1009; too many, with 1008.
    let mut sender = Raw::connect(&app).await;
    sender.send(hocuspocus::token(doc, &token, None)).await;
    sender.until(doc, hocuspocus::MSG_AUTH).await;
    sender
        .send(hocuspocus::stateless(doc, &"x".repeat(17)))
        .await;
    assert_eq!(sender.closed().await.0, CloseCode::Size);
    let mut sender = Raw::connect(&app).await;
    sender.send(hocuspocus::token(doc, &token, None)).await;
    sender.until(doc, hocuspocus::MSG_AUTH).await;
    for _ in 0..5 {
        sender.send(hocuspocus::stateless(doc, "hi")).await;
    }
    assert_eq!(sender.closed().await.0, CloseCode::Policy);
    // The listener heard the ones within the rate, and is still there.
    let heard = listener.until(doc, hocuspocus::MSG_STATELESS).await;
    assert_eq!(heard, hocuspocus::stateless(doc, "hi"));
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn across_a_cluster_updates_are_acknowledged_and_stateless_messages_reach_every_node() {
    let (services, nodes) = crate::support::cluster::start(2, |_| {}).await;
    let doc = "acme/cluster/hp";
    let mut on_0 = Raw::connect(&nodes[0]).await;
    let mut on_1 = Raw::connect(&nodes[1]).await;
    for raw in [&mut on_0, &mut on_1] {
        raw.send(hocuspocus::token(doc, "", None)).await;
        raw.until(doc, hocuspocus::MSG_AUTH).await;
    }
    let ws = nodes[1].join(doc).await;
    // An update through node 0, acknowledged once committed, reaches node 1's clients.
    on_0.send(hocuspocus::on_address(doc, &update_body(11, "across;")))
        .await;
    on_0.until(doc, hocuspocus::MSG_SYNC_STATUS).await;
    ws.wait_for("the update", TIMEOUT, |c| c.text("t") == "across;")
        .await
        .unwrap();
    // Node 1's Hocuspocus client hears it as an update (after its sync step 1).
    loop {
        let frame = on_1.until(doc, hocuspocus::MSG_SYNC).await;
        let body = &frame[hocuspocus::address_prefix(doc).len()..];
        if let Ok(tandem_sync::Message::Sync(tandem_sync::SyncMessage::Update(update))) =
            tandem_sync::decode(bytes::Bytes::copy_from_slice(body))
        {
            assert_eq!(support::text_of_update(&update), "across;");
            break;
        }
    }
    // A client's stateless message and a backend's, each through the other node.
    on_0.send(hocuspocus::stateless(doc, "from-0")).await;
    assert_eq!(
        on_1.until(doc, hocuspocus::MSG_STATELESS).await,
        hocuspocus::stateless(doc, "from-0")
    );
    // Through a third node that has not loaded the document.
    let third = services.node("node-3", |_| {}).await;
    let response = reqwest::Client::new()
        .post(third.http_url(&format!("/api/v1/docs/{doc}/stateless")))
        .body("from-backend")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        on_0.until(doc, hocuspocus::MSG_STATELESS).await,
        hocuspocus::stateless(doc, "from-backend")
    );
}

#[tokio::test]
async fn a_document_s_awareness_goes_when_it_is_closed_and_the_rest_when_the_socket_goes() {
    let app = spawn_app().await;
    let watch_x = app.join("aw/x").await;
    let watch_y = app.join("aw/y").await;
    let mut raw = Raw::connect(&app).await;
    for (doc, client) in [("aw/x", 301), ("aw/y", 302)] {
        raw.send(hocuspocus::token(doc, "", Some("4.8.0"))).await;
        raw.until(doc, hocuspocus::MSG_AUTH).await;
        let state = tandem_sync::AwarenessUpdate {
            entries: vec![tandem_sync::AwarenessEntry {
                client_id: client,
                clock: 1,
                state: Some(r#"{"user":{"name":"hp"}}"#.into()),
            }],
        };
        let message = tandem_sync::message::encode_awareness(&state.encode());
        raw.send(hocuspocus::on_address(doc, &message)).await;
        // Echoed to its sender too, as on /ws/{doc} and as Hocuspocus does.
        raw.until(doc, hocuspocus::MSG_AWARENESS).await;
    }
    watch_x
        .wait_for("x's state", TIMEOUT, |c| c.awareness().contains_key(&301))
        .await
        .unwrap();
    watch_y
        .wait_for("y's state", TIMEOUT, |c| c.awareness().contains_key(&302))
        .await
        .unwrap();
    // Closing x removes what the socket announced there; y keeps its state.
    raw.send(hocuspocus::close("aw/x", None)).await;
    watch_x
        .wait_for("x's state removed", TIMEOUT, |c| {
            !c.awareness().contains_key(&301)
        })
        .await
        .unwrap();
    assert!(watch_y.awareness().contains_key(&302));
    // The socket going removes the rest.
    drop(raw);
    watch_y
        .wait_for("y's state removed", TIMEOUT, |c| {
            !c.awareness().contains_key(&302)
        })
        .await
        .unwrap();
}
