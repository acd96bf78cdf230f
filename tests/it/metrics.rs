//! `GET /metrics` moves as a scripted session goes: connections open and close, an edit
//! propagates, a bad frame, an auth failure, a slow consumer, a reconnect, a dashboard event, a
//! long-poll and a client error. Metrics are global to a process, so the server under test is
//! the real binary in a process of its own: no other test moves its counters.

use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tandem::auth::Role;
use tandem_sync::client::Client;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::process::ServerProcess;
use crate::support::Backing;
use crate::support::{self, Dash, Served, SECRET, TIMEOUT};

fn token(sub: &str, role: Role) -> String {
    support::token("acme", sub, role)
}

/// Every sample of the exposition, by name with its labels as written (`name{a="b"}`).
async fn scrape(app: &ServerProcess) -> HashMap<String, f64> {
    let text = reqwest::get(app.http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// How much a sample grew between two scrapes (absent counts as 0).
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

async fn doc_client(app: &ServerProcess, doc: &str, sub: &str) -> Client {
    let url = format!("{}?token={}", app.ws_url(doc), token(sub, Role::Member));
    let client = Client::connect(&url).await.unwrap();
    client.synced(TIMEOUT).await.unwrap();
    client
}

#[tokio::test]
async fn a_scripted_session_moves_each_metric() {
    let backing = Backing::sled();
    let app = ServerProcess::start(
        &backing,
        &["--auth-secret", SECRET, "--outbound-queue", "8"],
    );
    let before = scrape(&app).await;

    // Two editors of one document; an edit reaches the other.
    let ada = doc_client(&app, "acme/doc", "ada").await;
    let bob = doc_client(&app, "acme/doc", "bob").await;
    ada.push_text("t", "hello");
    support::wait_text(&bob, "t", "hello").await;
    let during = scrape(&app).await;
    assert_eq!(
        delta(
            &before,
            &during,
            r#"tandem_connections_active{kind="document"}"#
        ),
        2.0
    );
    assert_eq!(
        delta(
            &before,
            &during,
            r#"tandem_connections_opened_total{kind="document"}"#
        ),
        2.0
    );
    assert!(
        delta(
            &before,
            &during,
            r#"tandem_bytes_received_total{kind="document"}"#
        ) > 0.0
    );
    assert!(
        delta(
            &before,
            &during,
            r#"tandem_bytes_sent_total{kind="document"}"#
        ) > 0.0
    );
    assert!(
        delta(
            &before,
            &during,
            r#"tandem_messages_received_total{kind="document"}"#
        ) >= 3.0
    );
    assert_eq!(
        delta(&before, &during, "tandem_update_propagation_seconds_count"),
        1.0
    );
    assert_eq!(during.get("tandem_rooms_loaded"), Some(&1.0));
    assert_eq!(
        delta(&before, &during, "tandem_document_load_seconds_count"),
        1.0
    );
    assert!(
        delta(
            &before,
            &during,
            r#"tandem_storage_written_bytes_total{log="updates"}"#
        ) > 0.0
    );

    // A bad frame closes its connection as a protocol failure.
    let bad = doc_client(&app, "acme/doc", "eve").await;
    bad.send_raw(vec![0u8, 9, 9]).unwrap();
    bad.closed(TIMEOUT).await.unwrap();
    // No token: refused as an auth failure.
    let refused = tokio_tungstenite::connect_async(app.ws_url("acme/doc")).await;
    assert!(refused.is_err());

    // A slow consumer: a tiny receive window, and it stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr()).await.unwrap();
    let url = format!(
        "{}?token={}",
        app.ws_url("acme/doc"),
        token("slow", Role::Member)
    );
    let (mut slow, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    slow.send(WsMessage::Ping(Default::default()))
        .await
        .unwrap();
    let chunk = "z".repeat(32 * 1024);
    let mut expected = "hello".to_string();
    for _ in 0..100 {
        ada.push_text("t", &chunk);
        expected.insert_str(0, &chunk);
        let len = expected.len();
        bob.wait_for("the update", TIMEOUT, |c| {
            use yrs::{GetString, Transact};
            let text = c.doc().get_or_insert_text("t");
            let n = text.get_string(&c.doc().transact()).len();
            n == len
        })
        .await
        .unwrap();
    }
    let closed = loop {
        match tokio::time::timeout(TIMEOUT, slow.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed, 1013);

    // Bob leaves and comes back: a reconnect (once the server saw him leave).
    bob.close().await;
    let admin = token("root", Role::Admin);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let listed: serde_json::Value = reqwest::Client::new()
            .get(app.http_url("/api/v1/admin/connections"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let gone = !listed["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["user"] == "bob" && c["kind"] == "document");
        if gone {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let bob = doc_client(&app, "acme/doc", "bob").await;

    // A dashboard subscriber gets an event; a long-poll; a client error.
    let mut dash =
        Dash::connect(&app.dash_url(&format!("token={}", token("carol", Role::Member)))).await;
    dash.subscribe(&["system"], None).await;
    let response = reqwest::Client::new()
        .post(app.http_url("/api/v1/events"))
        .bearer_auth(token("backend", Role::Service))
        .json(&json!({"type":"system_alert","message":"m","severity":"info"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    dash.next_of("system_alert").await;
    let poll = reqwest::Client::new()
        .get(app.http_url("/api/v1/events?timeout=0"))
        .bearer_auth(token("dave", Role::Member))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 200);
    let report = reqwest::Client::new()
        .post(app.http_url("/api/v1/client-errors"))
        .bearer_auth(token("carol", Role::Member))
        .json(&json!({"message":"TypeError: x is undefined","page":"/queries/456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 202);

    // Everyone leaves.
    ada.close().await;
    bob.close().await;
    dash.close().await;
    drop(slow);
    let after = loop {
        let after = scrape(&app).await;
        let active = |kind: &str| {
            delta(
                &before,
                &after,
                &format!(r#"tandem_connections_active{{kind="{kind}"}}"#),
            )
        };
        if active("document") == 0.0 && active("dashboard") == 0.0 {
            break after;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let grew = |key: &str| delta(&before, &after, key);
    let exact = [
        (r#"tandem_connections_failed_total{reason="protocol"}"#, 1.0),
        (r#"tandem_connections_failed_total{reason="auth"}"#, 1.0),
        (r#"tandem_connections_failed_total{reason="overflow"}"#, 1.0),
        (
            r#"tandem_connections_closed_total{kind="document",reason="protocol"}"#,
            1.0,
        ),
        (
            r#"tandem_connections_closed_total{kind="document",reason="overflow"}"#,
            1.0,
        ),
        ("tandem_reconnects_total", 1.0),
        (
            r#"tandem_connection_duration_seconds_count{kind="document"}"#,
            5.0,
        ),
        (r#"tandem_connections_opened_total{kind="dashboard"}"#, 1.0),
        (r#"tandem_connections_opened_total{kind="long_poll"}"#, 1.0),
        (r#"tandem_connections_active{kind="long_poll"}"#, 0.0),
        ("tandem_event_delivery_seconds_count", 1.0),
        ("tandem_client_errors_total", 1.0),
    ];
    for (key, want) in exact {
        assert_eq!(grew(key), want, "{key}");
    }
    assert!(grew(r#"tandem_storage_flush_seconds_count{log="events"}"#) >= 1.0);
    // The group commit follows the broadcast; by now it has happened.
    assert!(grew(r#"tandem_storage_flush_seconds_count{log="updates"}"#) >= 1.0);
    assert!(grew(r#"tandem_auth_refusals_total{reason="missing_token",route="ws_doc"}"#) >= 1.0);
    // Histograms have buckets, not quantiles.
    assert!(after
        .keys()
        .any(|k| k.starts_with("tandem_update_propagation_seconds_bucket{le=")));
}
