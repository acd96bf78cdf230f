//! Version history over HTTP: versions taken on schedule with their authors, by name, fetched
//! as Yjs and as JSON, restored as a change that merges with concurrent edits (and undone by
//! restoring the version taken just before), retention, rights, and the reserved route names.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tandem::auth::{Claims, DocPermission, Role};
use tandem_sync::client::Client;
use yrs::updates::decoder::Decode;
use yrs::{Text, Transact, WriteTxn};

use crate::support::{
    self, claims, sign, spawn_secured, text_of_update, wait_text, Served, TestApp,
};

const DOC: &str = "acme/queries/v1";

/// A client of `doc` signed in as `user` of acme.
async fn editor(app: &TestApp, doc: &str, user: &str) -> Client {
    let token = support::token("acme", user, Role::Member);
    let client = Client::connect(&format!("{}?token={token}", app.ws_url(doc)))
        .await
        .expect("connect");
    client.synced(support::TIMEOUT).await.expect("sync");
    client
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, app.http_url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("a response");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn versions(app: &TestApp, doc: &str, token: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/v1/docs/{doc}/versions"), token)
        .await;
    assert_eq!(status, 200, "{body}");
    body["versions"].as_array().cloned().unwrap_or_default()
}

async fn take(app: &TestApp, doc: &str, token: &str, label: &str) -> Value {
    let (status, body) = call(
        app,
        reqwest::Method::POST,
        &format!("/api/v1/docs/{doc}/versions"),
        token,
        Some(json!({ "label": label })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["version"].clone()
}

/// Version `id` of `doc` as the JSON of its shared types.
async fn content(app: &TestApp, doc: &str, id: &Value, token: &str) -> Value {
    let response = reqwest::Client::new()
        .get(app.http_url(&format!("/api/v1/docs/{doc}/versions/{id}")))
        .header("accept", "application/json")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"]["id"], *id);
    body["content"].clone()
}

#[tokio::test]
async fn versions_are_taken_on_schedule_naming_who_changed_the_document() {
    let app = spawn_secured(|c| c.version_interval_secs = 1).await;
    let admin = support::token("acme", "admin", Role::Admin);
    let ann = editor(&app, DOC, "ann").await;
    let bob = editor(&app, DOC, "bob").await;
    ann.push_text("t", "SELECT region");
    wait_text(&bob, "t", "SELECT region").await;
    bob.edit(|txn| {
        let text = txn.get_or_insert_text("t");
        let len = text.len(txn);
        text.insert(txn, len, " FROM sales");
    });
    wait_text(&ann, "t", "SELECT region FROM sales").await;
    // Bounded wait for the scheduled version (the interval is one second).
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = versions(&app, DOC, &admin).await;
        let authors = listed.first().map(|v| v["authors"].clone());
        if authors == Some(json!(["ann", "bob"])) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 1, "{listed:?}");
    let version = &listed[0];
    assert_eq!(version["authors"], json!(["ann", "bob"]));
    assert_eq!(version["reason"], "auto");
    assert!(version["at"].as_str().is_some_and(|at| at.ends_with('Z')));
    assert!(version["bytes"].as_u64().is_some_and(|b| b > 0));
    // As JSON, and as the Yjs update a client can load: what the clients saw.
    assert_eq!(
        content(&app, DOC, &version["id"], &admin).await,
        json!({ "t": "SELECT region FROM sales" })
    );
    let raw = reqwest::Client::new()
        .get(app.http_url(&format!("/api/v1/docs/{DOC}/versions/{}", version["id"])))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        text_of_update(&raw.bytes().await.unwrap()),
        "SELECT region FROM sales"
    );
    // Nothing changed since: no new version however long one waits (two more intervals).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(versions(&app, DOC, &admin).await.len(), 1);
}

#[tokio::test]
async fn a_restore_merges_with_concurrent_edits_and_is_undone_by_the_version_before_it() {
    let app = spawn_secured(|_| {}).await;
    let ann_token = support::token("acme", "ann", Role::Member);
    let ann = editor(&app, DOC, "ann").await;
    let bob = editor(&app, DOC, "bob").await;
    ann.push_text("t", "SELECT a FROM t");
    wait_text(&bob, "t", "SELECT a FROM t").await;
    let release = take(&app, DOC, &ann_token, "before release").await;
    assert_eq!(release["label"], "before release");
    assert_eq!(release["reason"], "named");
    assert_eq!(release["authors"], json!(["ann"]));

    // Bob rewrites the query.
    bob.edit(|txn| {
        let text = txn.get_or_insert_text("t");
        text.insert(txn, 8, ", b");
        let len = text.len(txn);
        text.insert(txn, len, " WHERE x > 1");
    });
    wait_text(&ann, "t", "SELECT a, b FROM t WHERE x > 1").await;
    // Eve edits a copy she took before the restore, offline: her edit is concurrent with it.
    let eve = yrs::Doc::with_client_id(4242);
    let now = app.stored(DOC, Some(&ann_token)).await;
    eve.transact_mut()
        .apply_update(yrs::Update::decode_v1(&now).unwrap())
        .unwrap();
    let eve_text = eve.get_or_insert_text("t");
    let eve_update = {
        let mut txn = eve.transact_mut();
        eve_text.insert(&mut txn, 0, "-- eve\n");
        txn.encode_update_v1()
    };

    let (status, restored) = call(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/docs/{DOC}/versions/{}/restore", release["id"]),
        &ann_token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["changed"], true);
    assert_eq!(restored["before"]["reason"], "before_restore");
    assert_eq!(restored["before"]["authors"], json!(["bob"]));
    assert_eq!(restored["after"]["reason"], "restore");
    // Both clients see the restore live.
    wait_text(&ann, "t", "SELECT a FROM t").await;
    wait_text(&bob, "t", "SELECT a FROM t").await;
    // Eve's concurrent edit merges with it.
    let response = reqwest::Client::new()
        .post(app.http_url(&format!("/api/v1/docs/{DOC}/update")))
        .bearer_auth(support::token("acme", "eve", Role::Member))
        .body(eve_update)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    wait_text(&ann, "t", "-- eve\nSELECT a FROM t").await;
    wait_text(&bob, "t", "-- eve\nSELECT a FROM t").await;

    // Restoring the version taken just before the restore undoes it (Eve's edit, made after,
    // is not in that version either).
    let (status, undone) = call(
        &app,
        reqwest::Method::POST,
        &format!(
            "/api/v1/docs/{DOC}/versions/{}/restore",
            restored["before"]["id"]
        ),
        &ann_token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{undone}");
    wait_text(&bob, "t", "SELECT a, b FROM t WHERE x > 1").await;
    let listed = versions(&app, DOC, &ann_token).await;
    let reasons: Vec<&str> = listed.iter().filter_map(|v| v["reason"].as_str()).collect();
    assert_eq!(
        reasons,
        [
            "restore",
            "before_restore",
            "restore",
            "before_restore",
            "named"
        ]
    );
    // The version before the second restore names who changed the document since the first.
    assert_eq!(listed[1]["authors"], json!(["eve"]));
    assert_eq!(listed[0]["authors"], json!(["ann"]));
    // What a client loads from the store is what the clients hold.
    let stored = app.stored(DOC, Some(&ann_token)).await;
    assert_eq!(text_of_update(&stored), bob.text("t"));
}

#[tokio::test]
async fn retention_keeps_the_newest_and_a_removed_version_is_not_found() {
    let app = spawn_secured(|c| c.versions_keep = 2).await;
    let token = support::token("acme", "ann", Role::Member);
    let ann = editor(&app, DOC, "ann").await;
    let mut taken = Vec::new();
    for n in 0..4 {
        ann.push_text("t", &format!("{n}"));
        let expected: String = (0..=n).map(|i| i.to_string()).collect();
        wait_text(&ann, "t", &expected).await;
        // The edit reached the server when another client sees it.
        let check = editor(&app, DOC, "check").await;
        wait_text(&check, "t", &expected).await;
        check.close().await;
        taken.push(take(&app, DOC, &token, &format!("v{n}")).await);
    }
    let listed = versions(&app, DOC, &token).await;
    let labels: Vec<&str> = listed.iter().filter_map(|v| v["label"].as_str()).collect();
    assert_eq!(labels, ["v3", "v2"]);
    assert_eq!(
        content(&app, DOC, &taken[2]["id"], &token).await,
        json!({ "t": "012" })
    );
    for path in [
        format!("/api/v1/docs/{DOC}/versions/{}", taken[0]["id"]),
        format!("/api/v1/docs/{DOC}/versions/{}/restore", taken[0]["id"]),
    ] {
        let method = if path.ends_with("restore") {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let (status, body) = call(&app, method, &path, &token, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"], "version_not_found");
    }
    // Paging: one at a time, following `next_before`.
    let (_, first) = app
        .get(&format!("/api/v1/docs/{DOC}/versions?limit=1"), &token)
        .await;
    assert_eq!(first["versions"][0]["label"], "v3");
    let next = &first["next_before"];
    let (_, second) = app
        .get(
            &format!("/api/v1/docs/{DOC}/versions?limit=1&before={next}"),
            &token,
        )
        .await;
    assert_eq!(second["versions"][0]["label"], "v2");
}

#[tokio::test]
async fn reading_versions_needs_read_access_and_taking_or_restoring_them_write_access() {
    let app = spawn_secured(|_| {}).await;
    let writer = support::token("acme", "ann", Role::Member);
    let ann = editor(&app, DOC, "ann").await;
    ann.push_text("t", "x");
    let check = editor(&app, DOC, "check").await;
    wait_text(&check, "t", "x").await;
    let version = take(&app, DOC, &writer, "one").await;
    let reader = sign(&Claims {
        docs: Some(BTreeMap::from([(
            "acme/queries/*".to_string(),
            DocPermission::Read,
        )])),
        ..claims("acme", "rita", Role::Member)
    });
    assert_eq!(versions(&app, DOC, &reader).await.len(), 1);
    content(&app, DOC, &version["id"], &reader).await;
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/docs/{DOC}/versions"),
        &reader,
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/docs/{DOC}/versions/{}/restore", version["id"]),
        &reader,
        None,
    )
    .await;
    assert_eq!(status, 403);
    // Another workspace sees nothing of it.
    let other = support::token("globex", "gus", Role::Member);
    let (status, _) = app
        .get(&format!("/api/v1/docs/{DOC}/versions"), &other)
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn route_segments_are_refused_as_document_names() {
    let app = spawn_secured(|_| {}).await;
    let token = support::token("acme", "ann", Role::Member);
    for doc in ["acme/q/versions", "acme/q/update", "acme/versions/q"] {
        let url = format!("{}?token={token}", app.ws_url(doc));
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "{doc}");
            }
            other => panic!(
                "{doc}: expected an HTTP refusal, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    // A version id is a number; an unknown route under `versions` is not found.
    for path in [
        format!("/api/v1/docs/{DOC}/versions/latest"),
        format!("/api/v1/docs/{DOC}/versions/1/undo"),
    ] {
        let (status, body) = app.get(&path, &token).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, body) = call(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/docs/{DOC}/versions"),
        &token,
        Some(json!({ "label": "x".repeat(300) })),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_version");
}
