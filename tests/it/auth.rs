//! Authentication and authorization on every path: each refusal gets its own status or close
//! code and JSON body, and changes nothing.

use std::collections::BTreeMap;

use base64::Engine;
use tandem::auth::{mint, now_secs, Claims, DocPermission, Role, Secret};
use tandem_sync::Client;

use crate::support::{
    self, json_error, sign as token, spawn_app_with, spawn_secured, text_of_update, text_update,
    wait_text, Served, TestApp, SECRET, TIMEOUT,
};

async fn secured_app() -> TestApp {
    spawn_secured(|_| {}).await
}

/// Ada (user 123) of `workspace`.
fn claims(workspace: &str) -> Claims {
    Claims {
        name: Some("Ada".into()),
        ..support::claims(workspace, "123", Role::Member)
    }
}

fn admin() -> String {
    token(&Claims {
        role: Role::Admin,
        ..claims("acme")
    })
}

/// Every way a token can be wrong, with the status and error code it must get.
fn refusals() -> Vec<(&'static str, Option<String>, u16, &'static str)> {
    let other_secret: Secret = "some-other-secret".parse().unwrap();
    vec![
        ("no token", None, 401, "missing_token"),
        ("malformed", Some("not-a-jwt".into()), 401, "invalid_token"),
        (
            "bad signature",
            Some(mint(&other_secret, &claims("acme")).unwrap()),
            401,
            "invalid_token",
        ),
        (
            "expired",
            Some(token(&Claims {
                exp: now_secs() - 60,
                ..claims("acme")
            })),
            401,
            "token_expired",
        ),
        (
            "not valid yet",
            Some(token(&Claims {
                nbf: Some(now_secs() + 3600),
                ..claims("acme")
            })),
            401,
            "invalid_token",
        ),
        (
            "issued in the future",
            Some(token(&Claims {
                iat: Some(now_secs() + 3600),
                ..claims("acme")
            })),
            401,
            "invalid_token",
        ),
        (
            "empty sub",
            Some(token(&Claims {
                sub: String::new(),
                ..claims("acme")
            })),
            401,
            "invalid_token",
        ),
        (
            "sub with a line break",
            Some(token(&Claims {
                sub: "ada\n2026-12-07T00:00:00Z INFO forged".into(),
                ..claims("acme")
            })),
            401,
            "invalid_token",
        ),
        (
            "other workspace",
            Some(token(&claims("globex"))),
            403,
            "forbidden",
        ),
        (
            "plan not allowed",
            Some(token(&Claims {
                plan: Some("free".into()),
                ..claims("acme")
            })),
            403,
            "plan_required",
        ),
        (
            "no plan",
            Some(token(&Claims {
                plan: None,
                ..claims("acme")
            })),
            403,
            "plan_required",
        ),
        (
            "outside its docs",
            Some(token(&Claims {
                docs: Some(BTreeMap::from([(
                    "acme/reports/*".to_string(),
                    DocPermission::Write,
                )])),
                ..claims("acme")
            })),
            403,
            "forbidden",
        ),
    ]
}

fn read_only_token() -> String {
    token(&Claims {
        docs: Some(BTreeMap::from([(
            "acme/queries/*".to_string(),
            DocPermission::Read,
        )])),
        ..claims("acme")
    })
}

async fn stored_text(app: &TestApp, doc: &str) -> String {
    text_of_update(&app.stored(doc, Some(&admin())).await)
}

async fn assert_json_refusal(response: reqwest::Response, status: u16, code: &str, case: &str) {
    let body = json_error(response, status, code, case).await;
    if code == "plan_required" {
        assert_eq!(body["required"], serde_json::json!(["scale"]), "{case}");
    }
}

fn ws_url(app: &TestApp, doc: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{}?token={t}", app.ws_url(doc)),
        None => app.ws_url(doc),
    }
}

#[tokio::test]
async fn websocket_refusals_come_before_the_upgrade() {
    let app = secured_app().await;
    for (case, token, status, code) in refusals() {
        let err =
            tokio_tungstenite::connect_async(ws_url(&app, "acme/queries/1", token.as_deref()))
                .await
                .expect_err(case);
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("{case}: expected an HTTP refusal, got {err}");
        };
        assert_eq!(response.status().as_u16(), status, "{case}");
        let body: serde_json::Value =
            serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
        assert_eq!(body["error"], code, "{case}: {body}");
    }
    assert_eq!(stored_text(&app, "acme/queries/1").await, "");
}

#[tokio::test]
async fn a_valid_token_syncs_and_read_only_updates_are_refused_in_band() {
    let app = secured_app().await;
    let writer = Client::connect(&ws_url(
        &app,
        "acme/queries/7",
        Some(&token(&claims("acme"))),
    ))
    .await
    .unwrap();
    writer.synced(TIMEOUT).await.unwrap();
    writer.push_text("t", "SELECT 1");

    let reader = Client::connect(&ws_url(&app, "acme/queries/7", Some(&read_only_token())))
        .await
        .unwrap();
    reader.synced(TIMEOUT).await.unwrap();
    wait_text(&reader, "t", "SELECT 1").await;
    // The reader edits its copy: the server refuses with the auth message and stays connected.
    reader.push_text("t", " -- sneaky");
    reader
        .wait_for("permission denied", TIMEOUT, |c| {
            !c.permission_denied().is_empty()
        })
        .await
        .unwrap();
    // Awareness still flows from a read-only client.
    reader.set_awareness(r#"{"user":"reader"}"#).unwrap();
    writer
        .wait_for("reader's awareness", TIMEOUT, |c| {
            c.awareness().values().any(|s| s.contains("reader"))
        })
        .await
        .unwrap();
    assert!(reader.close_info().is_none());
    assert_eq!(writer.text("t"), "SELECT 1");
    assert_eq!(stored_text(&app, "acme/queries/7").await, "SELECT 1");
}

#[tokio::test]
async fn one_user_cannot_move_or_hide_another_users_cursor() {
    let app = secured_app().await;
    let doc = "acme/queries/8";
    let ada = Client::connect(&ws_url(&app, doc, Some(&token(&claims("acme")))))
        .await
        .unwrap();
    ada.synced(TIMEOUT).await.unwrap();
    ada.set_awareness(r#"{"user":"Ada"}"#).unwrap();
    let mallory = Client::connect(&ws_url(
        &app,
        doc,
        Some(&token(&Claims {
            sub: "666".into(),
            name: Some("Mallory".into()),
            ..claims("acme")
        })),
    ))
    .await
    .unwrap();
    let ada_id = ada.doc().client_id().get();
    mallory
        .wait_for("Ada's cursor", TIMEOUT, |c| {
            c.awareness().contains_key(&ada_id)
        })
        .await
        .unwrap();
    // Mallory rewrites and then removes Ada's state with newer clocks, then shows her own.
    for state in [Some(r#"{"user":"Mallory as Ada"}"#), None] {
        let forged = tandem_sync::AwarenessUpdate {
            entries: vec![tandem_sync::AwarenessEntry {
                client_id: ada_id,
                clock: 1_000,
                state: state.map(Into::into),
            }],
        };
        mallory
            .send_raw(tandem_sync::message::encode_awareness(&forged.encode()))
            .unwrap();
    }
    mallory.set_awareness(r#"{"user":"Mallory"}"#).unwrap();
    // A third client sees Mallory's own state, which came after the forgeries, and Ada's intact.
    let watcher = Client::connect(&ws_url(&app, doc, Some(&token(&claims("acme")))))
        .await
        .unwrap();
    watcher
        .wait_for("Mallory's own cursor", TIMEOUT, |c| {
            c.awareness().values().any(|s| s.contains(r#""Mallory""#))
        })
        .await
        .unwrap();
    assert_eq!(watcher.awareness()[&ada_id], r#"{"user":"Ada"}"#);
    assert!(mallory.close_info().is_none());
}

#[tokio::test]
async fn expiry_during_a_connection_closes_it_with_4401() {
    let app = secured_app().await;
    let short = token(&Claims {
        exp: now_secs() + 2,
        ..claims("acme")
    });
    let client = Client::connect(&ws_url(&app, "acme/queries/2", Some(&short)))
        .await
        .unwrap();
    client.synced(TIMEOUT).await.unwrap();
    let close = client.closed(TIMEOUT).await.unwrap();
    assert_eq!(close.code, Some(4401), "{close:?}");
}

#[tokio::test]
async fn http_reads_and_writes_refuse_every_bad_token() {
    let app = secured_app().await;
    let http = reqwest::Client::new();
    let url = app.http_url("/api/v1/docs/acme/queries/3");
    for (case, token, status, code) in refusals() {
        let mut get = http.get(&url);
        let mut post = http
            .post(format!("{url}/update"))
            .body(text_update(5, "nope"));
        if let Some(token) = &token {
            get = get.bearer_auth(token);
            post = post.bearer_auth(token);
        }
        assert_json_refusal(get.send().await.unwrap(), status, code, case).await;
        assert_json_refusal(post.send().await.unwrap(), status, code, case).await;
    }
    // A read-only token reads but does not write.
    let reader = read_only_token();
    assert_eq!(
        http.get(&url)
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_json_refusal(
        http.post(format!("{url}/update"))
            .bearer_auth(&reader)
            .body(text_update(5, "nope"))
            .send()
            .await
            .unwrap(),
        403,
        "read_only",
        "read-only write",
    )
    .await;
    // Polling sync too: a read-only poller may read and show its cursor, not write.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sync = |update: Option<Vec<u8>>| {
        let mut body = serde_json::json!({ "client_id": 5, "state_vector": b64.encode([0u8]) });
        if let Some(update) = update {
            body["update"] = b64.encode(update).into();
        }
        http.post(format!("{url}/sync"))
            .bearer_auth(&reader)
            .json(&body)
            .send()
    };
    let answer = sync(None).await.unwrap();
    assert_eq!(answer.status(), 200);
    // It is told it may only read, so its editor can say so before any edit.
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["access"], "read", "{answer}");
    assert_json_refusal(
        sync(Some(text_update(5, "nope"))).await.unwrap(),
        403,
        "read_only",
        "read-only sync with an update",
    )
    .await;
    // Not a bearer token at all.
    assert_json_refusal(
        http.get(&url)
            .header("authorization", "Basic dXNlcjpwYXNz")
            .send()
            .await
            .unwrap(),
        401,
        "invalid_token",
        "basic auth",
    )
    .await;
    assert_eq!(stored_text(&app, "acme/queries/3").await, "");
}

#[tokio::test]
async fn service_tokens_write_their_own_workspace_only() {
    let app = secured_app().await;
    let http = reqwest::Client::new();
    let service = |workspace: &str| {
        token(&Claims {
            role: Role::Service,
            plan: None,
            ..claims(workspace)
        })
    };
    let ok = http
        .post(app.http_url("/api/v1/docs/acme/queries/4/update"))
        .bearer_auth(service("acme"))
        .body(text_update(6, "from the backend"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_json_refusal(
        http.post(app.http_url("/api/v1/docs/acme/queries/4/update"))
            .bearer_auth(service("globex"))
            .body(text_update(7, "intruder"))
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
        "service of another workspace",
    )
    .await;
    assert_eq!(
        stored_text(&app, "acme/queries/4").await,
        "from the backend"
    );
    // A service token narrowed to reports may not write a query's document through the
    // status map of a query event either; one that may write it does.
    let narrowed = |glob: &str| {
        token(&Claims {
            role: Role::Service,
            plan: None,
            docs: Some(BTreeMap::from([(glob.to_string(), DocPermission::Write)])),
            ..claims("acme")
        })
    };
    let started = serde_json::json!({"type":"query_started","query_id":4,"started_by":"ada"});
    assert_json_refusal(
        http.post(app.http_url("/api/v1/events"))
            .bearer_auth(narrowed("acme/reports/*"))
            .json(&started)
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
        "a query event outside the token's docs",
    )
    .await;
    let allowed = http
        .post(app.http_url("/api/v1/events"))
        .bearer_auth(narrowed("acme/queries/*"))
        .json(&started)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 201);
}

#[tokio::test]
async fn tokens_minted_by_the_cli_are_accepted() {
    let app = secured_app().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["token", "--sub", "42", "--workspace", "acme"])
        .args(["--doc", "acme/queries/*=read"])
        .env("TANDEM_AUTH_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let minted = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    let url = app.http_url("/api/v1/docs/acme/queries/5");
    assert_eq!(
        http.get(&url)
            .bearer_auth(&minted)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let write = http
        .post(format!("{url}/update"))
        .bearer_auth(&minted)
        .body(text_update(8, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403);
}

#[tokio::test]
async fn open_mode_refuses_a_non_loopback_bind_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let result = tandem::serve(
        listener,
        tandem::Config::with_data_dir(dir.path()),
        std::future::ready(()),
    )
    .await;
    assert!(
        matches!(result, Err(tandem::ServeError::Config(ref m)) if m.contains("--insecure-no-auth")),
        "{result:?}"
    );

    // With the flag it runs (and stops at once here).
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let config = tandem::Config {
        insecure_no_auth: true,
        ..tandem::Config::with_data_dir(dir.path())
    };
    tandem::serve(listener, config, std::future::ready(()))
        .await
        .unwrap();
}

#[tokio::test]
async fn public_key_tokens_eddsa_and_rs256_are_verified() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (algorithm, private, public) in [
        (
            jsonwebtoken::Algorithm::EdDSA,
            "ed25519-private.pem",
            "ed25519-public.pem",
        ),
        (
            jsonwebtoken::Algorithm::RS256,
            "rsa-private.pem",
            "rsa-public.pem",
        ),
    ] {
        let public = fixtures.join(public);
        let app = spawn_app_with(|c| c.auth_public_key = Some(public)).await;
        let pem = std::fs::read(fixtures.join(private)).unwrap();
        let key = match algorithm {
            jsonwebtoken::Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        }
        .unwrap();
        let signed =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims("acme"), &key)
                .unwrap();
        let http = reqwest::Client::new();
        let url = app.http_url("/api/v1/docs/acme/queries/pk");
        let ok = http.get(&url).bearer_auth(&signed).send().await.unwrap();
        assert_eq!(ok.status(), 200, "{algorithm:?}");
        // An HS256 token is not accepted by a server configured with only a public key.
        assert_json_refusal(
            http.get(&url)
                .bearer_auth(token(&claims("acme")))
                .send()
                .await
                .unwrap(),
            401,
            "invalid_token",
            "hs256 against a public key",
        )
        .await;
    }
}

#[tokio::test]
async fn open_servers_mint_development_tokens_that_name_the_user() {
    let app = support::spawn_app_with(|_| {}).await;
    let response = reqwest::Client::new()
        .post(app.http_url("/api/v1/dev/token"))
        .json(&serde_json::json!({"name": "Ada Lovelace"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let minted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(minted["user"], "ada-lovelace");
    let token = minted["token"].as_str().unwrap();

    let mut watcher = app.dash("user=watcher").await;
    watcher.subscribe(&["presence"], None).await;
    // A Yjs client in the presence room is the token's user.
    let url = format!("{}?token={token}", app.ws_url("default/__presence__"));
    let client = tandem_sync::client::Client::connect(&url).await.unwrap();
    client.synced(support::TIMEOUT).await.unwrap();
    client.set_awareness(r#"{"status":"online"}"#).unwrap();
    let update = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == "ada-lovelace" {
            break update;
        }
    };
    assert_eq!(update["status"], "online");

    let refused = reqwest::Client::new()
        .post(app.http_url("/api/v1/dev/token"))
        .json(&serde_json::json!({"name": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);

    // A server that checks tokens has no such endpoint.
    let secured =
        support::spawn_app_with(|c| c.auth_secret = Some("s3cret".parse().unwrap())).await;
    let response = reqwest::Client::new()
        .post(secured.http_url("/api/v1/dev/token"))
        .json(&serde_json::json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// A long-poller's `POST /api/v1/presence` as the holder of `token` (or of none).
async fn who_posts(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(app.http_url("/api/v1/presence"))
        .json(&serde_json::json!({"status": "online", "current_page": "/"}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn open_mode_keeps_development_tokens_across_a_restart_and_refuses_tokens_it_cannot_verify() {
    let app = support::spawn_app().await;
    let token = app.dev_token("Ada").await;
    assert_eq!(who_posts(&app, Some(&token)).await.status(), 200);
    let config = tandem::Config::with_data_dir(app.dir.path());
    let app = app.restart_with(config).await;

    // After the restart Ada is still Ada: her token verifies with the key kept in the data
    // directory.
    assert_eq!(who_posts(&app, Some(&token)).await.status(), 200);
    let presence: serde_json::Value = reqwest::Client::new()
        .get(app.http_url("/api/v1/presence"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let users: Vec<&str> = presence["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["user_id"].as_str())
        .collect();
    assert!(users.contains(&"ada"), "{presence}");
    assert!(!users.contains(&"anonymous"), "{presence}");

    // A token this server cannot verify is refused (it used to be taken as anonymous), over
    // HTTP and before a WebSocket upgrade; no token at all is still the anonymous user.
    let garbage = who_posts(&app, Some("garbage")).await;
    assert_json_refusal(garbage, 401, "invalid_token", "garbage over HTTP").await;
    let foreign = tandem::auth::mint(
        &"another-servers-key".parse().unwrap(),
        &tandem::auth::Claims {
            sub: "ada".into(),
            name: Some("Ada".into()),
            workspace: "default".into(),
            plan: None,
            role: Role::Member,
            docs: None,
            exp: tandem::auth::now_secs() + 3600,
            iat: None,
            nbf: None,
        },
    )
    .unwrap();
    let refused = who_posts(&app, Some(&foreign)).await;
    assert_json_refusal(refused, 401, "invalid_token", "another key over HTTP").await;
    let url = ws_url(&app, "default/queries/1", Some("garbage"));
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("refused before the upgrade");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected a 401, got {other}"),
    }
    assert_eq!(who_posts(&app, None).await.status(), 200);
    assert!(app.dir.path().join(tandem::DEV_KEY_FILE).exists());
}
