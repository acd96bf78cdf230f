//! Bad input closes only the offending connection, with the right close code; the room and
//! every other room keep working.

use crate::support::{spawn_app, spawn_app_with, wait_text, Served, TestApp, TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::{Doc, Text, Transact};

/// Sends `frame` from a fresh client of `victim` and checks it is closed with `code`, while
/// peers of the same room and of another room notice nothing.
async fn offender_is_closed_alone(app: &TestApp, frame: Vec<u8>, code: u16) {
    let peer = app.join("victim").await;
    let elsewhere = app.join("elsewhere").await;
    let offender = app.join("victim").await;
    offender.send_raw(frame).unwrap();
    let close = offender.closed(TIMEOUT).await.unwrap();
    assert_eq!(close.code, Some(code), "{close:?}");
    assert!(!close.reason.is_empty(), "a close reason is given");

    let marker = format!("after {code} {};", rand_suffix());
    let writer = app.join("victim").await;
    writer.push_text("t", &marker);
    peer.wait_for("room still works", TIMEOUT, |c| {
        c.text("t").contains(&marker)
    })
    .await
    .unwrap();
    let other = app.join("elsewhere").await;
    other.push_text("t", &marker);
    elsewhere
        .wait_for("other room still works", TIMEOUT, |c| {
            c.text("t").contains(&marker)
        })
        .await
        .unwrap();
    assert!(peer.close_info().is_none());
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn truncated_varint_closes_with_1002() {
    let app = spawn_app().await;
    offender_is_closed_alone(&app, vec![0x80], 1002).await;
}

#[tokio::test]
async fn truncated_payload_closes_with_1002() {
    let app = spawn_app().await;
    offender_is_closed_alone(&app, vec![0, 2, 10, 1, 2], 1002).await;
}

#[tokio::test]
async fn unknown_sync_type_closes_with_1002() {
    let app = spawn_app().await;
    offender_is_closed_alone(&app, vec![0, 9, 0], 1002).await;
}

#[tokio::test]
async fn malformed_awareness_closes_with_1002() {
    let app = spawn_app().await;
    offender_is_closed_alone(&app, vec![1, 3, 5, 1, 2], 1002).await;
}

#[tokio::test]
async fn malformed_state_vector_closes_with_1002() {
    let app = spawn_app().await;
    offender_is_closed_alone(&app, vec![0, 0, 3, 0xff, 0xff, 0xff], 1002).await;
}

#[tokio::test]
async fn unknown_message_type_closes_with_1003() {
    let app = spawn_app().await;
    offender_is_closed_alone(&app, vec![42, 1, 2], 1003).await;
}

#[tokio::test]
async fn update_yrs_rejects_closes_with_1003() {
    let app = spawn_app().await;
    // A sync update whose payload is not a v1 update.
    offender_is_closed_alone(&app, vec![0, 2, 4, 0xff, 0xff, 0xff, 0x7f], 1003).await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let app = spawn_app_with(|c| c.max_frame_bytes = 1024).await;
    let doc = Doc::with_client_id(9);
    let text = doc.get_or_insert_text("t");
    let update = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &"x".repeat(4096));
        txn.encode_update_v1()
    };
    let frame = tandem_sync::message::encode_update(&update).to_vec();
    offender_is_closed_alone(&app, frame, 1009).await;
}

#[tokio::test]
async fn document_over_its_limit_closes_with_1009() {
    let app = spawn_app_with(|c| c.max_doc_bytes = 2048).await;
    let doc = Doc::with_client_id(9);
    let text = doc.get_or_insert_text("t");
    let update = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &"y".repeat(3000));
        txn.encode_update_v1()
    };
    let frame = tandem_sync::message::encode_update(&update).to_vec();
    offender_is_closed_alone(&app, frame, 1009).await;
}

#[tokio::test]
async fn too_many_awareness_clients_closes_with_1008() {
    let app = spawn_app_with(|c| c.max_awareness_per_connection = 4).await;
    let update = tandem_sync::AwarenessUpdate {
        entries: (1..=5)
            .map(|client_id| tandem_sync::AwarenessEntry {
                client_id,
                clock: 1,
                state: Some("{}".into()),
            })
            .collect(),
    };
    let frame = tandem_sync::message::encode_awareness(&update.encode()).to_vec();
    offender_is_closed_alone(&app, frame, 1008).await;
}

#[tokio::test]
async fn updates_before_a_bad_message_in_one_frame_reach_everyone() {
    let app = spawn_app().await;
    let peer = app.join("multi").await;
    let offender = app.join("multi").await;
    let doc = Doc::with_client_id(12);
    let text = doc.get_or_insert_text("t");
    let update = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "delivered");
        txn.encode_update_v1()
    };
    let mut frame = tandem_sync::message::encode_update(&update).to_vec();
    frame.extend_from_slice(&[42, 1]);
    offender.send_raw(frame).unwrap();
    let close = offender.closed(TIMEOUT).await.unwrap();
    assert_eq!(close.code, Some(1003));
    wait_text(&peer, "t", "delivered").await;
    let late = app.join("multi").await;
    wait_text(&late, "t", "delivered").await;
}

#[tokio::test]
async fn text_frame_closes_with_1003() {
    let app = spawn_app().await;
    let peer = app.join("victim").await;
    let (mut socket, _) = tokio_tungstenite::connect_async(app.ws_url("victim"))
        .await
        .unwrap();
    socket
        .send(WsMessage::Text("{\"hello\":1}".into()))
        .await
        .unwrap();
    let code = loop {
        match tokio::time::timeout(TIMEOUT, socket.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 1003);
    let writer = app.join("victim").await;
    writer.push_text("t", "fine");
    wait_text(&peer, "t", "fine").await;
}

#[tokio::test]
async fn slow_consumer_is_closed_with_1013_and_others_get_everything() {
    let app = spawn_app_with(|c| c.outbound_queue = 8).await;
    let observer = app.join("firehose").await;

    // A client with a tiny receive window that announces itself, then stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(app.ws_url("firehose"), stream)
        .await
        .unwrap();
    let slow_id = 4242;
    let presence = tandem_sync::AwarenessUpdate {
        entries: vec![tandem_sync::AwarenessEntry {
            client_id: slow_id,
            clock: 1,
            state: Some("{\"slow\":true}".into()),
        }],
    };
    slow.send(WsMessage::Binary(tandem_sync::message::encode_awareness(
        &presence.encode(),
    )))
    .await
    .unwrap();
    observer
        .wait_for("slow client's awareness", TIMEOUT, |c| {
            c.awareness().contains_key(&slow_id)
        })
        .await
        .unwrap();

    // The writer goes in lockstep with the observer, so only the slow client falls behind.
    let writer = app.join("firehose").await;
    let chunk = "z".repeat(32 * 1024);
    let text_len = |c: &tandem_sync::Client| {
        let text = c.doc().get_or_insert_text("t");
        let len = text.len(&c.doc().transact()) as usize;
        len
    };
    for i in 1..=100 {
        writer.push_text("t", &chunk);
        observer
            .wait_for("the update", TIMEOUT, |c| text_len(c) == i * chunk.len())
            .await
            .unwrap();
    }
    // The server dropped the slow client from the room (its awareness is removed)...
    observer
        .wait_for("slow client removed", TIMEOUT, |c| {
            !c.awareness().contains_key(&slow_id)
        })
        .await
        .unwrap();

    // ...and once it reads, it finds what was queued, then the close frame.
    let mut frames = 0;
    let code = loop {
        match tokio::time::timeout(TIMEOUT, slow.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => frames += 1,
            other => panic!("expected a close frame after {frames} frames, got {other:?}"),
        }
    };
    assert_eq!(code, 1013);
    assert!(
        frames < 100,
        "the slow client was cut off, not buffered without bound"
    );
    assert!(observer.close_info().is_none());
    assert!(writer.close_info().is_none());
}

#[tokio::test]
async fn a_peer_that_vanishes_mid_stream_disturbs_no_one() {
    let app = spawn_app().await;
    let observer = app.join("vanish").await;
    let ghost = app.join("vanish").await;
    let writer = app.join("vanish").await;
    ghost.abort();
    for i in 0..50 {
        writer.push_text("t", &format!("{i},"));
    }
    let expected = writer.text("t");
    wait_text(&observer, "t", &expected).await;
}

#[tokio::test]
async fn the_document_is_intact_after_a_storm_of_rejected_frames() {
    let app = spawn_app().await;
    let writer = app.join("sturdy").await;
    writer.push_text("t", "kept");
    for frame in [vec![0, 2, 4, 0xff, 0xff, 0xff, 0x7f], vec![0x80], vec![42]] {
        let offender = app.join("sturdy").await;
        offender.send_raw(frame).unwrap();
        offender.closed(TIMEOUT).await.unwrap();
    }
    let reader = app.join("sturdy").await;
    wait_text(&reader, "t", "kept").await;
    assert!(reader.errors().is_empty());
}

/// An awareness frame announcing `state` for client `client`.
fn awareness_frame(client: u64, state: &str) -> Vec<u8> {
    use tandem_sync::{AwarenessEntry, AwarenessUpdate};
    let update = AwarenessUpdate {
        entries: vec![AwarenessEntry {
            client_id: client,
            clock: 1,
            state: Some(state.into()),
        }],
    };
    tandem_sync::message::encode_awareness(&update.encode()).to_vec()
}

#[tokio::test]
async fn an_awareness_state_that_is_not_a_json_object_is_refused_and_never_relayed() {
    // y-websocket clients JSON.parse every state they hear: in Node.js one that does not parse
    // ends the process. The offender is closed; nobody hears its state (a raw socket listens,
    // so the client codec's own check cannot hide a relay).
    let app = spawn_app().await;
    for (client, state) in [(901, "not json"), (902, "[1,2,3]"), (903, "{\"a\":")] {
        let (mut watcher, _) = tokio_tungstenite::connect_async(app.ws_url("victim"))
            .await
            .unwrap();
        offender_is_closed_alone(&app, awareness_frame(client, state), 1002).await;
        // A valid state from someone else arrives; the refused one never did.
        let marker = format!(r#"{{"marker":{client}}}"#);
        let fine = app.join("victim").await;
        fine.send_raw(awareness_frame(client + 50, &marker))
            .unwrap();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, watcher.next())
                .await
                .expect("the valid state in time")
                .expect("open")
                .expect("a frame");
            let WsMessage::Binary(bytes) = frame else {
                continue;
            };
            let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!has(state), "{state:?} was relayed");
            if has(&marker) {
                break;
            }
        }
    }
}

/// Maps nested `depth` deep under root `m` as one update, and the update that deletes the
/// outermost (yrs deletes the rest with it, by recursion). Built on a thread with a large
/// stack: the client's own yrs recurses as deep.
fn nested_maps(depth: usize) -> (Vec<u8>, Vec<u8>) {
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(move || {
            use yrs::{Map, MapPrelim, MapRef, ReadTxn};
            let doc = Doc::with_client_id(77);
            let root = doc.get_or_insert_map("m");
            let mut txn = doc.transact_mut();
            let mut inner: MapRef = root.insert(&mut txn, "k", MapPrelim::default());
            for _ in 1..depth {
                inner = inner.insert(&mut txn, "k", MapPrelim::default());
            }
            let create = txn.encode_update_v1();
            drop(txn);
            let before = doc.transact().state_vector();
            root.remove(&mut doc.transact_mut(), "k");
            let delete = doc.transact().encode_diff_v1(&before);
            (create, delete)
        })
        .expect("a builder thread")
        .join()
        .expect("built")
}

#[tokio::test]
async fn updates_that_would_exhaust_memory_or_the_stack_close_with_1003() {
    let app = spawn_app().await;
    // 2^27 clients declared in a few bytes: yrs reserves a table for that many before reading.
    offender_is_closed_alone(&app, vec![0, 2, 5, 0x80, 0x80, 0x80, 0x40, 0, 0], 1003).await;
    // A value nested 100,000 deep: yrs decodes it by recursion, and a stack overflow aborts
    // the whole process.
    let mut deep = vec![1, 1, 5, 0, 8, 1, 1, b't', 1];
    for _ in 0..100_000 {
        deep.extend([117, 1]);
    }
    deep.extend([126, 0]);
    let frame = tandem_sync::message::encode_update(&deep).to_vec();
    offender_is_closed_alone(&app, frame, 1003).await;
    // Over HTTP too: 400 with the reason.
    let answer = reqwest::Client::new()
        .post(app.http_url("/api/v1/docs/victim/update"))
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("nests deeper"),
        "{body}"
    );
}

#[tokio::test]
async fn more_shared_types_than_allowed_close_with_1009() {
    let app = spawn_app_with(|c| c.max_doc_types = 100).await;
    let (create, _) = nested_maps(101);
    let frame = tandem_sync::message::encode_update(&create).to_vec();
    offender_is_closed_alone(&app, frame, 1009).await;
    let answer = reqwest::Client::new()
        .post(app.http_url("/api/v1/docs/victim/update"))
        .body(create)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "too_many_types", "{body}");
}

#[tokio::test]
async fn deleting_types_nested_twenty_thousand_deep_does_not_kill_the_server() {
    use crate::support::process::ServerProcess;
    use crate::support::Backing;
    // The real binary, whose threads have stacks sized for --max-doc-types: yrs deletes nested
    // types by recursion, a frame per level (a default 2 MiB stack ends at a few thousand).
    let backing = Backing::sled();
    let server = ServerProcess::start(&backing, &[]);
    let (create, delete) = nested_maps(20_000);
    let http = reqwest::Client::new();
    for update in [create, delete] {
        let answer = http
            .post(format!("{}/update", server.doc_url("deep")))
            .body(update)
            .send()
            .await
            .expect("the server answers");
        assert_eq!(answer.status(), 200);
    }
    let health = http.get(server.http_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.kill();
}

#[tokio::test]
async fn an_update_yrs_refuses_halfway_leaves_nothing_behind() {
    // Found by the `room` fuzz target: nine characters, then an item whose parent is one of
    // them. yrs integrates the nine and refuses the update: the room held text that was never
    // stored (and sent it to whoever synced next).
    const HALF_APPLIED: [u8; 56] = [
        0x01, 0x0a, 0x08, 0x00, 0x04, 0x01, 0x01, 0x74, 0x01, 0x5c, 0x84, 0x08, 0x00, 0x01, 0x64,
        0x84, 0x08, 0x01, 0x01, 0x6f, 0x84, 0x08, 0x02, 0x01, 0x63, 0x84, 0x08, 0x03, 0x01, 0x75,
        0x84, 0x08, 0x04, 0x01, 0x6d, 0x84, 0x08, 0x05, 0x01, 0x65, 0x84, 0x08, 0x06, 0x01, 0x6e,
        0x84, 0x08, 0x07, 0x01, 0x08, 0x01, 0x63, 0x08, 0x01, 0x63, 0x00,
    ];
    let app = spawn_app().await;
    let writer = app.join("half").await;
    writer.push_text("t", "stored");
    let reader = app.join("half").await;
    reader
        .wait_for("the text", TIMEOUT, |c| c.text("t") == "stored")
        .await
        .unwrap();
    // Over HTTP: refused with the reason.
    let answer = reqwest::Client::new()
        .post(app.http_url("/api/v1/docs/half/update"))
        .body(HALF_APPLIED.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    // The room reloads from storage: its connections are told to reconnect (1013), and what
    // anyone syncs afterwards is what was stored.
    let close = reader.closed(TIMEOUT).await.unwrap();
    assert_eq!(close.code, Some(1013), "{close:?}");
    let fresh = app.join("half").await;
    fresh
        .wait_for("the stored text", TIMEOUT, |c| c.text("t") == "stored")
        .await
        .unwrap();
    assert_eq!(fresh.text("t"), "stored");
    // From a connection: closed with 1003, the room reloads the same way.
    let offender = app.join("half").await;
    offender
        .send_raw(tandem_sync::message::encode_update(&HALF_APPLIED).to_vec())
        .unwrap();
    let close = offender.closed(TIMEOUT).await.unwrap();
    assert_eq!(close.code, Some(1003), "{close:?}");
    let after = app.join("half").await;
    after
        .wait_for("the stored text", TIMEOUT, |c| c.text("t") == "stored")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(after.text("t"), "stored");
}
