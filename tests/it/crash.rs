//! Nothing acknowledged is lost: the real `tandem` binary is killed with SIGKILL at awkward
//! moments and restarted on the same data: each scenario runs on sled in a data directory and
//! on PostgreSQL.

use std::time::Duration;

use crate::support::process::ServerProcess;
use crate::support::{Backing, Dash, Served, TIMEOUT};
use tandem_sync::client::{Client, ClientOptions};
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Text, Transact};

/// Each scenario as two tests, `NAME::sled` and `NAME::postgres`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sled() {
                super::$name(Backing::sled()).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$name(Backing::postgres().await).await;
            }
        }
    )*};
}

on_both_stores!(
    http_writes_acknowledged_before_sigkill_survive,
    edits_synced_by_polling_survive_sigkill,
    client_updates_survive_sigkill_after_a_group_commit,
    client_updates_older_than_a_flush_interval_survive_sigkill,
    an_edit_a_hocuspocus_provider_was_told_is_saved_survives_sigkill,
    sigkill_while_compactions_run_loses_nothing,
    published_events_acknowledged_before_sigkill_keep_their_ids,
    a_user_online_when_the_server_is_killed_is_listed_offline_afterwards,
    versions_and_restores_acknowledged_before_sigkill_survive,
);

/// A writer whose every edit appends `[n]` and is encoded as its own update, so a lost update
/// leaves a visible gap: yrs keeps every later update pending and the text stops at the gap.
struct Writer {
    doc: Doc,
    next: usize,
}

impl Writer {
    fn new(client_id: u64) -> Writer {
        Writer {
            doc: Doc::with_client_id(client_id),
            next: 0,
        }
    }

    fn next_update(&mut self) -> Vec<u8> {
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, &format!("[{}]", self.next));
        self.next += 1;
        txn.encode_update_v1()
    }
}

fn markers(count: usize) -> String {
    (0..count).map(|i| format!("[{i}]")).collect()
}

/// The recovered text must be the first `n` markers for some `n >= acked`: nothing
/// acknowledged lost, no gap, and a stored state that still decodes and applies.
fn assert_prefix_with_at_least(text: &str, acked: usize, sent: usize) {
    let n = (acked..=sent).find(|&n| markers(n) == text);
    assert!(
        n.is_some(),
        "recovered {text:?}, expected the first n markers with {acked} <= n <= {sent}"
    );
}

async fn http_writes_acknowledged_before_sigkill_survive(backing: Backing) {
    let server = ServerProcess::start(&backing, &[]);
    let http = reqwest::Client::new();
    let mut writer = Writer::new(1);
    for _ in 0..40 {
        assert!(server.post(&http, "acked", writer.next_update()).await);
    }
    server.kill();

    let server = ServerProcess::start(&backing, &[]);
    assert_eq!(server.text("acked").await, markers(40));
}

async fn edits_synced_by_polling_survive_sigkill(backing: Backing) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let server = ServerProcess::start(&backing, &[]);
    let http = reqwest::Client::new();
    let mut writer = Writer::new(3);
    for _ in 0..30 {
        let update = writer.next_update();
        let sv = writer.doc.transact().state_vector().encode_v1();
        let response = http
            .post(format!("{}/sync", server.doc_url("polled")))
            .json(&serde_json::json!({
                "client_id": 3,
                "state_vector": b64.encode(sv),
                "update": b64.encode(update),
            }))
            .send()
            .await
            .expect("sync");
        assert_eq!(response.status(), 200);
    }
    server.kill();

    let server = ServerProcess::start(&backing, &[]);
    assert_eq!(server.text("polled").await, markers(30));
}

async fn client_updates_survive_sigkill_after_a_group_commit(backing: Backing) {
    let server = ServerProcess::start(&backing, &["--flush-interval-ms", "10"]);
    let client = Client::connect_with(
        &server.ws_url("ws-doc"),
        ClientOptions { client_id: Some(2) },
    )
    .await
    .unwrap();
    client.synced(TIMEOUT).await.unwrap();
    for i in 0..200 {
        client.push_text("t", &format!("[{i}]"));
    }
    // Another client seeing everything means every update is in the log.
    let observer = Client::connect(&server.ws_url("ws-doc")).await.unwrap();
    observer
        .wait_for("all updates", TIMEOUT, |c| c.text("t") == markers(200))
        .await
        .unwrap();
    // An acknowledged HTTP write is flushed by a group commit that covers all of the above.
    let http = reqwest::Client::new();
    assert!(
        server
            .post(&http, "barrier", Writer::new(3).next_update())
            .await
    );
    server.kill();

    let server = ServerProcess::start(&backing, &[]);
    assert_eq!(server.text("ws-doc").await, markers(200));
}

async fn client_updates_older_than_a_flush_interval_survive_sigkill(backing: Backing) {
    let server = ServerProcess::start(&backing, &["--flush-interval-ms", "5"]);
    let client = Client::connect(&server.ws_url("timed")).await.unwrap();
    client.synced(TIMEOUT).await.unwrap();
    for i in 0..50 {
        client.push_text("t", &format!("[{i}]"));
    }
    let observer = Client::connect(&server.ws_url("timed")).await.unwrap();
    observer
        .wait_for("all updates", TIMEOUT, |c| c.text("t") == markers(50))
        .await
        .unwrap();
    // The promise under test: an update more than one group-commit interval old is durable.
    // Wait many intervals past the moment everything was in the log.
    tokio::time::sleep(Duration::from_millis(250)).await;
    server.kill();

    let server = ServerProcess::start(&backing, &[]);
    assert_eq!(server.text("timed").await, markers(50));
}

async fn an_edit_a_hocuspocus_provider_was_told_is_saved_survives_sigkill(backing: Backing) {
    // A group commit every two seconds: acknowledging on receipt, as Hocuspocus does, would tell
    // the provider its edit is saved well before it is, and the kill below would lose it.
    let server = ServerProcess::start(&backing, &["--flush-interval-ms", "2000"]);
    // A write just before: its group commit starts the two seconds in which the provider's
    // edit comes.
    let mut writer = Writer::new(8);
    assert!(
        server
            .post(&reqwest::Client::new(), "other", writer.next_update())
            .await
    );
    let args = [
        "save".to_string(),
        format!("ws://{}", server.addr()),
        String::new(),
        "hp-saved".to_string(),
        "saved;".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The script exits as soon as the provider's unsyncedChanges is back to 0.
    let out = crate::support::node("tests/js", "hocuspocus.mjs", &args).await;
    assert!(out.contains("saved;"), "{out}");
    server.kill();

    let server = ServerProcess::start(&backing, &[]);
    assert_eq!(server.text("hp-saved").await, "saved;");
}

async fn sigkill_while_compactions_run_loses_nothing(backing: Backing) {
    let args = ["--compact-after-updates", "4"];
    let mut writer = Writer::new(4);
    let mut acked = 0;
    let http = reqwest::Client::new();
    // Compact every few updates and kill the server at a different point each round, while
    // writes (and so compactions) are in full flow.
    for kill_after in [37, 71, 18] {
        let server = ServerProcess::start(&backing, &args);
        assert_prefix_with_at_least(&server.text("compacting").await, acked, writer.next);
        // Resync as a reconnecting client would: the whole state, which is idempotent, so
        // updates that were in flight at the last kill are not left missing.
        let full = writer
            .doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        assert!(server.post(&http, "compacting", full).await);
        acked = writer.next;
        for _ in 0..kill_after {
            if server.post(&http, "compacting", writer.next_update()).await {
                acked = writer.next;
            }
        }
        // A few more without waiting for their answers, then the kill, mid-flight.
        let url = format!("{}/update", server.doc_url("compacting"));
        for _ in 0..5 {
            tokio::spawn(http.post(&url).body(writer.next_update()).send());
        }
        tokio::task::yield_now().await;
        server.kill();
    }

    let server = ServerProcess::start(&backing, &args);
    assert_prefix_with_at_least(&server.text("compacting").await, acked, writer.next);
}

async fn published_events_acknowledged_before_sigkill_keep_their_ids(backing: Backing) {
    let http = reqwest::Client::new();
    let publish = |server: &ServerProcess| {
        http.post(server.http_url("/api/v1/events?workspace=acme"))
            .json(&serde_json::json!({"type":"workflow_triggered","workflow_id":"wf-1"}))
            .send()
    };
    let server = ServerProcess::start(&backing, &[]);
    for expected in 1..=3 {
        let response = publish(&server).await.expect("publish");
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["id"], expected);
    }
    server.kill();
    // Had any acknowledged event been lost, its id would be handed out again.
    let server = ServerProcess::start(&backing, &[]);
    let body: serde_json::Value = publish(&server)
        .await
        .expect("publish")
        .json()
        .await
        .expect("json");
    assert_eq!(body["id"], 4);
    // And a dashboard client that replays from the start gets every acknowledged event.
    let mut dash = Dash::connect(&server.dash_url("workspace=acme")).await;
    let replayed = dash.subscribe(&["workflows"], Some(0)).await;
    let ids: Vec<_> = replayed.iter().map(|e| e["id"].as_u64()).collect();
    assert_eq!(ids, [Some(1), Some(2), Some(3), Some(4)]);
}

async fn a_user_online_when_the_server_is_killed_is_listed_offline_afterwards(backing: Backing) {
    let server = ServerProcess::start(&backing, &[]);
    let mut ada = Dash::connect(&server.dash_url("workspace=acme&user=ada&name=Ada")).await;
    ada.subscribe(&["presence"], None).await;
    // A publication is acknowledged once the workspace's store is flushed: Ada's record, written
    // when she came online, is on disk with it.
    let response = reqwest::Client::new()
        .post(server.http_url("/api/v1/events?workspace=acme"))
        .json(&serde_json::json!({"type":"workflow_triggered","workflow_id":"wf-1"}))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 201);
    server.kill();

    let server = ServerProcess::start(&backing, &[]);
    let listed: serde_json::Value =
        reqwest::get(server.http_url("/api/v1/presence?workspace=acme&include_offline=true"))
            .await
            .expect("presence")
            .json()
            .await
            .expect("json");
    let users = listed["users"].as_array().expect("users");
    let ada = users
        .iter()
        .find(|u| u["user_id"] == "ada")
        .unwrap_or_else(|| panic!("Ada is not listed: {listed}"));
    assert_eq!(ada["status"], "offline");
    assert_eq!(ada["name"], "Ada");
    assert!(ada["last_seen"].is_string(), "{listed}");
}

async fn versions_and_restores_acknowledged_before_sigkill_survive(backing: Backing) {
    let server = ServerProcess::start(&backing, &[]);
    let http = reqwest::Client::new();
    let mut writer = Writer::new(1);
    for _ in 0..3 {
        assert!(
            server
                .post(&http, "acme/history", writer.next_update())
                .await
        );
    }
    let versions = server.http_url("/api/v1/docs/acme/history/versions");
    let taken: serde_json::Value = http
        .post(&versions)
        .json(&serde_json::json!({"label": "three"}))
        .send()
        .await
        .expect("a version")
        .json()
        .await
        .expect("json");
    let id = taken["version"]["id"].clone();
    for _ in 0..2 {
        assert!(
            server
                .post(&http, "acme/history", writer.next_update())
                .await
        );
    }
    let restore = server.http_url(&format!("/api/v1/docs/acme/history/versions/{id}/restore"));
    let restored = http.post(&restore).send().await.expect("a restore");
    assert_eq!(restored.status(), 200);
    server.kill();

    let server = ServerProcess::start(&backing, &[]);
    // The restore was acknowledged once durable, and so were its two versions.
    assert_eq!(server.text("acme/history").await, markers(3));
    let listed: serde_json::Value = http
        .get(server.http_url("/api/v1/docs/acme/history/versions"))
        .send()
        .await
        .expect("versions")
        .json()
        .await
        .expect("json");
    let reasons: Vec<&str> = listed["versions"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["restore", "before_restore", "named"]);
}
