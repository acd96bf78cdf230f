//! Real JavaScript clients: Node with the npm packages `yjs`, `y-websocket` (v3 and v1) and
//! `y-protocols`, against a real server. The scripts live in `tests/js/`; their packages are
//! installed from the committed lockfile (`npm ci`) the first time they are needed.

use crate::support;

use crate::support::{spawn_app, text_of_update, TIMEOUT};
use bytes::Bytes;
use tandem_sync::{AuthMessage, AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{StateVector, Text, WriteTxn};

/// Runs `node script args…` in `tests/js` and returns its stdout.
async fn node(script: &str, args: &[&str]) -> String {
    support::node("tests/js", script, args).await
}

fn bytes_of(vector: &serde_json::Value) -> Bytes {
    vector["bytes"]
        .as_array()
        .expect("bytes array")
        .iter()
        .map(|b| b.as_u64().expect("byte") as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn codec_reads_and_writes_what_y_protocols_writes() {
    let out = node("vectors.mjs", &[]).await;
    let vectors: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON vectors");
    for (name, vector) in vectors.as_object().expect("object") {
        let bytes = bytes_of(vector);
        let message = tandem_sync::decode(bytes.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Encoding what we decoded gives back y-protocols' exact bytes.
        assert_eq!(message.encode(), bytes.to_vec(), "{name} re-encodes");
        match (name.as_str(), &message) {
            ("step1_empty", Message::Sync(SyncMessage::Step1(sv))) => {
                assert_eq!(StateVector::decode_v1(sv).unwrap(), StateVector::default());
            }
            ("step1_hello", Message::Sync(SyncMessage::Step1(sv))) => {
                let sv = StateVector::decode_v1(sv).unwrap();
                let client = vector["client"].as_u64().unwrap();
                assert_eq!(
                    sv.get(&yrs::block::ClientID::new(client)),
                    vector["clock"].as_u64().unwrap() as u32
                );
            }
            ("step2_hello", Message::Sync(SyncMessage::Step2(update)))
            | ("update_hello", Message::Sync(SyncMessage::Update(update))) => {
                assert_eq!(text_of_update(update), vector["text"].as_str().unwrap());
            }
            ("awareness_big_id" | "awareness_removed_max_id", Message::Awareness(payload)) => {
                let update = AwarenessUpdate::decode(payload).unwrap();
                assert_eq!(update.entries.len(), 1, "{name}");
                let entry = &update.entries[0];
                assert_eq!(
                    entry.client_id,
                    vector["client"].as_u64().unwrap(),
                    "{name}"
                );
                assert_eq!(entry.clock, vector["clock"].as_u64().unwrap(), "{name}");
                assert_eq!(entry.state.as_deref(), vector["state"].as_str(), "{name}");
                assert_eq!(
                    update.encode(),
                    payload.to_vec(),
                    "{name} payload re-encodes"
                );
            }
            ("permission_denied", Message::Auth(AuthMessage::PermissionDenied(reason))) => {
                assert_eq!(reason, vector["reason"].as_str().unwrap());
            }
            ("query_awareness", Message::QueryAwareness) => {}
            (name, message) => panic!("unexpected vector {name}: {message:?}"),
        }
    }
}

#[tokio::test]
async fn js_providers_converge_with_random_disconnects() {
    let app = spawn_app().await;
    let url = format!("ws://{}/ws", app.addr);
    let out = node("converge.mjs", &[&url, "acme/queries/js", "6", "40"]).await;
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON result");
    assert_eq!(result["converged"], true, "{result}");
    assert_eq!(result["awarenessSeen"], true, "{result}");
    assert_eq!(result["items"], 240);

    // The server holds the same converged text.
    let reader = app.join("acme/queries/js").await;
    let expected = result["text"].as_str().unwrap().to_owned();
    reader
        .wait_for("server state", TIMEOUT, |c| c.text("t") == expected)
        .await
        .unwrap();
}

#[tokio::test]
async fn rust_and_js_clients_converge_in_one_room() {
    let app = spawn_app().await;
    let url = format!("ws://{}/ws", app.addr);
    let js = tokio::spawn(async move { node("mixed.mjs", &[&url, "mixed"]).await });

    let rust = app.join_as("mixed", (1 << 45) + 9).await;
    rust.set_awareness(r#"{"user":{"name":"rust"}}"#).unwrap();
    rust.wait_for("the JS client's awareness", TIMEOUT, |c| {
        c.awareness().values().any(|s| s.contains("\"js\""))
    })
    .await
    .unwrap();
    for i in 0..50 {
        rust.edit(|txn| {
            let text = txn.get_or_insert_text("t");
            let len = text.len(txn);
            text.insert(txn, len / 3, &format!("rs{i};"));
        });
    }
    rust.push_text("t", "rust-done");
    rust.wait_for("js-done", TIMEOUT, |c| c.text("t").contains("js-done"))
        .await
        .unwrap();
    rust.push_text("t", "rust-final");

    let out = js.await.unwrap();
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON result");
    assert_eq!(result["text"].as_str().unwrap(), rust.text("t"));
    let names: Vec<_> = result["awareness"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(
        names.contains(&"rust") && names.contains(&"js"),
        "{names:?}"
    );
    // Inserts at arbitrary positions may split each other's markers, so count characters:
    // every edit of both sides is there exactly once.
    let inserted: usize = (0..50)
        .map(|i| format!("rs{i};").len() + format!("js{i};").len())
        .sum::<usize>()
        + "rust-done".len()
        + "js-done".len()
        + "rust-final".len();
    assert_eq!(rust.text("t").len(), inserted);
}

#[tokio::test]
async fn a_js_client_in_the_presence_room_and_a_dashboard_see_each_other() {
    use tandem::auth::Role;
    let secret = support::secret();
    let token = |sub: &str| {
        support::mint_token(
            &secret,
            "acme",
            sub,
            Some(&format!("User {sub}")),
            Role::Member,
        )
    };
    let app = support::spawn_app_with({
        let secret = secret.clone();
        move |c| c.auth_secret = Some(secret)
    })
    .await;
    let mut watcher = app.dash(&format!("token={}", token("1"))).await;
    watcher.subscribe(&["presence"], None).await;
    let mut dashboard_user = app.dash(&format!("token={}", token("77"))).await;
    dashboard_user
        .send(serde_json::json!({"action":"presence","status":"online","current_page":"/dashboards/7"}))
        .await;

    let server_url = format!("ws://{}/ws", app.addr);
    let grace = token("123");
    let script = tokio::spawn(async move {
        node(
            "presence.mjs",
            &[&server_url, "acme/__presence__", &grace, "77"],
        )
        .await
    });
    // The JS client's awareness state, as a presence_update of its token's user.
    let online = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 123 {
            break update;
        }
    };
    assert_eq!(online["status"], "online");
    assert_eq!(online["name"], "Grace");
    assert_eq!(online["current_page"], "/queries/42");
    // The dashboard user, as an awareness state the JS client read.
    let output = script.await.unwrap();
    let seen: serde_json::Value = serde_json::from_str(output.trim()).unwrap();
    assert_eq!(seen["seen"]["status"], "online");
    assert_eq!(seen["seen"]["current_page"], "/dashboards/7");
    // It left: offline.
    let offline = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 123 {
            break update;
        }
    };
    assert_eq!(offline["status"], "offline");
}

#[tokio::test]
async fn a_crowded_room_of_js_clients_keeps_everyone_and_their_cursors() {
    // More clients than one connection may keep awareness states for: their echoes of each
    // other's states must not count against it.
    let app = support::spawn_app_with(|c| c.max_awareness_per_connection = 8).await;
    let url = format!("ws://{}/ws", app.addr);
    let out = node("crowd.mjs", &[&url, "acme/queries/crowd", "30"]).await;
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(seen["closes"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["seen"], 30, "{seen}");
}

#[tokio::test]
async fn a_reconnecting_js_client_is_told_its_state_was_removed_and_comes_back() {
    let app = support::spawn_app().await;
    let url = format!("ws://{}/ws", app.addr);
    let out = node("rejoin.mjs", &[&url, "acme/queries/rejoin"]).await;
    let seen: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(seen, serde_json::json!({"told": true, "back": true}));
}

#[tokio::test]
async fn a_restore_under_concurrent_offline_editing_converges_for_js_clients() {
    let app = support::spawn_app().await;
    let base = format!("http://{}", app.addr);
    let output = node("restore.mjs", &[&base, "acme/queries/restored"]).await;
    let seen: serde_json::Value = serde_json::from_str(output.trim()).expect("one JSON line");
    assert_eq!(seen["ok"], true, "{seen}");
    assert_eq!(seen["text"], "SELECT region FROM sales LIMIT 10");
}
