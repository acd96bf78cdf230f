//! The HTTP API: document read/write, health, and JSON errors for bad requests.

mod common;

use base64::Engine;
use common::{spawn_app, spawn_app_with, text_of_update, text_update, wait_text};
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact};

async fn json_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn healthz_answers() {
    let app = spawn_app().await;
    let response = reqwest::get(app.http_url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn post_update_reaches_clients_and_reads_back() {
    let app = spawn_app().await;
    let client = app.join("acme/queries/1").await;
    let http = reqwest::Client::new();
    let response = http
        .post(app.http_url("/api/v1/docs/acme/queries/1/update"))
        .body(text_update(77, "SELECT 1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["changed"], true);
    wait_text(&client, "t", "SELECT 1").await;

    let state = http
        .get(app.http_url("/api/v1/docs/acme/queries/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(state.status(), 200);
    assert_eq!(state.headers()["content-type"], "application/octet-stream");
    assert_eq!(text_of_update(&state.bytes().await.unwrap()), "SELECT 1");

    // The same update again is accepted and changes nothing.
    let again = http
        .post(app.http_url("/api/v1/docs/acme/queries/1/update"))
        .body(text_update(77, "SELECT 1"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["changed"], false);
}

#[tokio::test]
async fn get_with_state_vector_returns_only_the_diff() {
    let app = spawn_app().await;
    let client = app.join("diffs").await;
    client.push_text("t", "one ");
    let http = reqwest::Client::new();
    // A second writer adds more after the client's state vector is taken.
    let observer = app.join("diffs").await;
    wait_text(&observer, "t", "one ").await;
    let sv = client.doc().transact().state_vector().encode_v1();
    let more = app.join("diffs").await;
    more.push_text("t", "two");
    wait_text(&client, "t", "one two").await;

    let sv = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sv);
    let diff = http
        .get(app.http_url(&format!("/api/v1/docs/diffs?sv={sv}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let full = http
        .get(app.http_url("/api/v1/docs/diffs"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(diff.len() < full.len());
    assert_eq!(text_of_update(&full), "one two");
    // The diff holds "two" and not "one ": applied alone it shows only what was missing.
    let diff_text = text_of_update(&diff);
    assert!(!diff_text.contains("one"), "{diff_text:?}");
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let app = spawn_app_with(|c| c.max_frame_bytes = 1024).await;
    let http = reqwest::Client::new();

    let long = "x".repeat(513);
    let cases = [
        (
            http.get(app.http_url(&format!("/api/v1/docs/{long}"))),
            400,
            "bad_document_name",
        ),
        (
            http.get(app.http_url("/api/v1/docs/a%01b")),
            400,
            "bad_document_name",
        ),
        (
            http.get(app.http_url("/api/v1/docs/d?sv=***")),
            400,
            "bad_state_vector",
        ),
        (
            http.get(app.http_url("/api/v1/docs/d?sv=_____w")),
            400,
            "bad_state_vector",
        ),
        (
            http.post(app.http_url("/api/v1/docs/d/update")),
            400,
            "bad_update",
        ),
        (
            http.post(app.http_url("/api/v1/docs/d/update"))
                .body(vec![0xff, 0xff, 0xff, 0x7f]),
            400,
            "bad_update",
        ),
        (
            http.post(app.http_url("/api/v1/docs/d/update"))
                .body(vec![0u8; 4096]),
            413,
            "too_large",
        ),
        (http.post(app.http_url("/api/v1/docs/d")), 404, "not_found"),
        (http.get(app.http_url("/nope")), 404, "not_found"),
        // WebSocket endpoint: a bad name is refused before the upgrade, and a plain GET is
        // told to upgrade.
        (
            http.get(app.http_url("/ws/a%00b")),
            400,
            "bad_document_name",
        ),
        (
            http.get(app.http_url("/ws/fine")),
            426,
            "websocket_required",
        ),
    ];
    for (request, status, code) in cases {
        json_error(request.send().await.unwrap(), status, code).await;
    }

    // Nothing was written by any of it.
    let state = http
        .get(app.http_url("/api/v1/docs/d"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(state.as_ref(), [0, 0]);
}

#[tokio::test]
async fn websocket_refuses_a_bad_name_with_400() {
    let app = spawn_app().await;
    let long = "n".repeat(600);
    let err = tokio_tungstenite::connect_async(app.ws_url(&long))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 400);
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    // Percent-encoded names are decoded: "a b" and "a%20b" are the same document.
    let a = app.join("a%20b").await;
    a.push_text("t", "spaced");
    let b = app.join("a%20b").await;
    wait_text(&b, "t", "spaced").await;
    let http = reqwest::Client::new();
    let state = http
        .get(app.http_url("/api/v1/docs/a%20b"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(text_of_update(&state), "spaced");
}

#[tokio::test]
async fn the_browser_dashboard_is_served_from_the_binary() {
    let app = spawn_app().await;
    for path in ["/", "/queries/456"] {
        let response = reqwest::get(app.http_url(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=utf-8"
        );
        let page = response.text().await.unwrap();
        assert!(page.contains("<title>Tandem</title>"), "{page}");
        assert!(page.contains("/assets/app.js"));
    }
    let script = reqwest::get(app.http_url("/assets/app.js")).await.unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(script.bytes().await.unwrap().len() > 10_000);
    let missing = reqwest::get(app.http_url("/assets/nothing.js"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
