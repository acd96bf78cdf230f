//! The admin API (admin role), readiness, and client error reports.

use serde_json::{json, Value};
use tandem::auth::Role;

use crate::support::{self, spawn_secured, token, Served, TestApp, TIMEOUT};
use tandem_sync::client::Client;

async fn secured() -> TestApp {
    spawn_secured(|c| c.client_errors_per_minute = 2).await
}

#[tokio::test]
async fn admins_list_and_kick_connections_of_their_workspace_only() {
    let app = secured().await;
    let url = format!(
        "{}?token={}",
        app.ws_url("acme/queries/1"),
        token("acme", "ada", Role::Member)
    );
    let ada = Client::connect(&url).await.unwrap();
    ada.synced(TIMEOUT).await.unwrap();
    ada.push_text("t", "hi");
    let mut dash = app
        .dash(&format!("token={}", token("acme", "bob", Role::Member)))
        .await;
    dash.subscribe(&["system"], None).await;

    let admin = token("acme", "root", Role::Admin);
    let (status, listed) = app
        .call(reqwest::Method::GET, "/api/v1/admin/connections", &admin)
        .await;
    assert_eq!(status, 200);
    let conns = listed["connections"].as_array().unwrap();
    let doc = conns.iter().find(|c| c["user"] == "ada").unwrap();
    assert_eq!(doc["kind"], "document");
    assert_eq!(doc["target"], "acme/queries/1");
    assert!(doc["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(doc["bytes_received"].as_u64().unwrap() > 0);
    assert!(doc["messages_sent"].as_u64().unwrap() > 0);
    assert!(doc["connected_since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(doc["reconnects"], 0);
    let board = conns.iter().find(|c| c["user"] == "bob").unwrap();
    assert_eq!(
        (board["kind"].as_str(), board["target"].as_str()),
        (Some("dashboard"), Some("dashboard: system"))
    );

    // Members may not; another workspace's admin sees and kicks nothing here.
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/connections",
            &token("acme", "ada", Role::Member),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("role_required"))
    );
    let other = token("globex", "root", Role::Admin);
    let (_, listed) = app
        .call(reqwest::Method::GET, "/api/v1/admin/connections", &other)
        .await;
    assert_eq!(listed["connections"], json!([]));
    let id = doc["id"].as_u64().unwrap();
    let path = format!("/api/v1/admin/connections/{id}");
    let (status, _) = app.call(reqwest::Method::DELETE, &path, &other).await;
    assert_eq!(status, 404);

    // The kick: 4000 with a reason.
    let (status, body) = app.call(reqwest::Method::DELETE, &path, &admin).await;
    assert_eq!((status, body["closed"].as_u64()), (200, Some(id)));
    let closed = ada.closed(TIMEOUT).await.unwrap();
    assert_eq!(closed.code, Some(4000));
    let (status, _) = app.call(reqwest::Method::DELETE, &path, &admin).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn admins_see_rooms_and_compact_them() {
    let app = secured().await;
    let url = format!(
        "{}?token={}",
        app.ws_url("acme/queries/2"),
        token("acme", "ada", Role::Member)
    );
    let ada = Client::connect(&url).await.unwrap();
    ada.synced(TIMEOUT).await.unwrap();
    for n in 0..5 {
        ada.push_text("t", &format!("{n}"));
    }
    let admin = token("acme", "root", Role::Admin);
    let rooms = loop {
        let (_, rooms) = app
            .call(reqwest::Method::GET, "/api/v1/admin/rooms", &admin)
            .await;
        if rooms["rooms"][0]["updates_since_snapshot"] == 5 {
            break rooms;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let room = &rooms["rooms"][0];
    assert_eq!(room["document"], "acme/queries/2");
    assert_eq!(room["clients"], 1);
    assert!(room["bytes"].as_u64().unwrap() > 0);

    let (status, body) = app
        .call(
            reqwest::Method::POST,
            "/api/v1/admin/rooms/acme/queries/2/compact",
            &admin,
        )
        .await;
    assert_eq!((status, body["compacted_updates"].as_u64()), (200, Some(5)));
    let (_, rooms) = app
        .call(reqwest::Method::GET, "/api/v1/admin/rooms", &admin)
        .await;
    assert_eq!(rooms["rooms"][0]["updates_since_snapshot"], 0);
    let (status, _) = app
        .call(
            reqwest::Method::POST,
            "/api/v1/admin/rooms/globex/x/compact",
            &admin,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn readyz_turns_503_when_the_data_dir_is_not_writable() {
    let app = support::spawn_on_sled(|c| c.auth_secret = Some(support::secret())).await;
    let ready = || async {
        let response = reqwest::get(app.http_url("/readyz")).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    assert_eq!(ready().await, (200, json!({"status":"ready"})));
    let alive = reqwest::get(app.http_url("/healthz")).await.unwrap();
    assert_eq!(alive.status(), 200);

    // The data directory moves away and a file takes its place (root ignores permissions, so
    // this is how a test makes it unwritable).
    let dir = app.dir.path().to_path_buf();
    let moved = dir.with_extension("moved");
    std::fs::rename(&dir, &moved).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let (status, body) = ready().await;
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&moved, &dir).unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["failing"][0]["part"], "storage");
    assert_eq!(ready().await.0, 200);
}

#[tokio::test]
async fn below_the_disk_reserve_writes_are_refused_and_readyz_says_why() {
    // A reserve larger than any disk: as if it were full (benches/soak fills a real one and
    // frees it again).
    let app = support::spawn_on_sled(|c| c.min_free_disk_mib = 1 << 40).await;
    let response = reqwest::get(app.http_url("/readyz")).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["failing"][0]["part"], "storage", "{body}");
    assert!(
        body["failing"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("kept in reserve"),
        "{body}"
    );
    let http = reqwest::Client::new();
    let write = http
        .post(app.http_url("/api/v1/docs/full/update"))
        .body(support::text_update(5, "refused"))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 503);
    let body: Value = write.json().await.unwrap();
    assert_eq!(body["error"], "storage_unavailable", "{body}");
    // Reading still works.
    let read = http
        .get(app.http_url("/api/v1/docs/full"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
}

#[tokio::test]
async fn client_errors_are_accepted_bounded_and_rate_limited() {
    let app = secured().await;
    let post = |bearer: Option<String>, body: Value| {
        let mut request = reqwest::Client::new()
            .post(app.http_url("/api/v1/client-errors"))
            .json(&body);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let ada = token("acme", "ada", Role::Member);
    let error = json!({"message":"TypeError","page":"/queries/1","stack":"at x"});
    assert_eq!(post(None, error.clone()).await, 401);
    assert_eq!(post(Some(ada.clone()), json!({"page":"/"})).await, 422);
    assert_eq!(post(Some(ada.clone()), error.clone()).await, 202);
    // Two a minute in this test's configuration; the 422 above counted too.
    assert_eq!(post(Some(ada.clone()), error.clone()).await, 429);
    // Another user has a budget of their own.
    assert_eq!(
        post(Some(token("acme", "bob", Role::Member)), error).await,
        202
    );
}
