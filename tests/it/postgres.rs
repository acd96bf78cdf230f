//! What only PostgreSQL has: its outage (a private server the test stops and restarts) and its
//! schema's versions. (The rest of the suite runs on PostgreSQL with
//! `TANDEM_TEST_STORE=postgres`; the crash tests run on both stores.)

use std::time::Duration;

use serde_json::Value;

use crate::support::postgres::PrivatePostgres;
use crate::support::{self, text_update, Served, TIMEOUT};

/// `GET /readyz`: its status and body.
async fn ready(app: &impl Served) -> (u16, Value) {
    let response = reqwest::get(app.http_url("/readyz")).await.expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn while_postgres_is_down_nothing_is_acknowledged_and_everything_lands_once_it_is_back() {
    let postgres = PrivatePostgres::start();
    let url = postgres.url();
    let app = support::spawn_on_sled(|c| {
        c.database_url = Some(url.parse().expect("url"));
        c.storage_timeout_ms = 1_000;
    })
    .await;
    let http = reqwest::Client::new();
    let post = |update: Vec<u8>| {
        http.post(app.http_url("/api/v1/docs/acme/outage/update"))
            .body(update)
            .send()
    };
    let publish = || {
        http.post(app.http_url("/api/v1/events?workspace=acme"))
            .json(&serde_json::json!({"type":"workflow_triggered","workflow_id":"wf"}))
            .send()
    };
    let writer = app.join_as("acme/outage", 7).await;
    let reader = app.join("acme/outage").await;
    writer.push_text("t", "[up]");
    assert_eq!(
        post(text_update(8, "[http-up]")).await.unwrap().status(),
        200
    );
    assert_eq!(publish().await.unwrap().status(), 201);
    assert_eq!(ready(&app).await.0, 200);

    postgres.stop();
    // Nothing is acknowledged: the write is refused once the storage timeout passes...
    let refused = post(text_update(9, "[http-down]")).await.unwrap();
    let refused =
        support::json_error(refused, 503, "storage_unavailable", "write while down").await;
    assert!(refused["message"].as_str().is_some());
    let event = publish().await.unwrap();
    assert_eq!(event.status(), 503, "{:?}", event.text().await);
    // ...readiness says why...
    let (status, body) = ready(&app).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["failing"]
        .as_array()
        .expect("failing")
        .iter()
        .any(|f| f["part"] == "storage"));
    // ...and the room goes on live: clients still see each other's edits, buffered meanwhile.
    writer.push_text("t", "[down]");
    reader
        .wait_for("the edit made while down", TIMEOUT, |c| {
            c.text("t").contains("[down]")
        })
        .await
        .expect("live while PostgreSQL is down");

    postgres.resume();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while ready(&app).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post(text_update(10, "[http-back]")).await.unwrap().status(),
        200
    );
    let after: Value = publish().await.unwrap().json().await.unwrap();
    let expected = writer.text("t");
    drop((writer, reader));
    let dir = app.stop().await;
    drop(dir);

    // A fresh server on the same database has every edit once, and the event ids have no gap
    // (the refused event landed once the database was back; its publisher was told to retry).
    let app = support::spawn_on_sled(|c| c.database_url = Some(url.parse().expect("url"))).await;
    let fresh = app.join("acme/outage").await;
    let text = fresh.text("t");
    for part in ["[up]", "[down]", "[http-up]", "[http-down]", "[http-back]"] {
        assert_eq!(text.matches(part).count(), 1, "{part} once in {text:?}");
    }
    assert!(text.contains(&expected), "{text:?} holds {expected:?}");
    assert_eq!(after["id"], 3, "the refused event took id 2: {after}");
    let mut dash = app.dash("workspace=acme").await;
    let ids: Vec<u64> = dash
        .subscribe(&["workflows"], Some(0))
        .await
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    // No update row was written twice.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let duplicates: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT body FROM doc_updates GROUP BY body HAVING count(*) > 1) d",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(duplicates, 0);
}

#[tokio::test]
async fn a_server_refuses_a_schema_newer_than_it_knows() {
    let database = tandem_storage::pg::testing::TempDatabase::create().await;
    // A first start creates the schema; a later build's migration is then recorded.
    let app = support::spawn_on_sled(|c| {
        c.database_url = Some(database.url().parse().expect("url"));
    })
    .await;
    app.stop().await;
    let (client, connection) = tokio_postgres::connect(database.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO tandem_migrations (version, name) VALUES ($1, 'from the future')",
            &[&(tandem_storage::pg::SCHEMA_VERSION + 1)],
        )
        .await
        .expect("insert");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            database.url(),
        ])
        .output()
        .expect("run tandem");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("newer than version") && stderr.contains("run a newer tandem"),
        "{stderr}"
    );
}
