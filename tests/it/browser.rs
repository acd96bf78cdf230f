//! The browser dashboard in a real browser: Debian's `chromium`, driven by `playwright-core`
//! from Node (`tests/browser/`), against a real server. Screenshots of both users' windows land
//! in `target/browser-artifacts/`.

use crate::support;

use crate::support::{spawn_app, spawn_app_with};
use std::collections::BTreeMap;

use tandem::auth::{Claims, DocPermission, Role};

/// Where the scripts write their screenshots.
fn artifacts() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts")
}

/// Runs `tests/browser/{script}` and returns the one JSON line it printed, which must say `ok`.
async fn browse(script: &str, args: &[&str]) -> serde_json::Value {
    let output = support::node("tests/browser", script, args).await;
    let seen: serde_json::Value = serde_json::from_str(output.trim()).expect("one JSON line");
    assert_eq!(seen["ok"], true, "{seen}");
    seen
}

#[tokio::test]
async fn two_users_edit_one_query_and_see_each_other_and_its_result() {
    // Locks lapse quickly unless renewed (the page renews at a third of this, leaving a busy
    // CI machine two seconds of slack): the page must renew the one it holds.
    const LOCK_TTL_MS: u64 = 3000;
    let app = spawn_app_with(|c| {
        c.lock_ttl_ms = LOCK_TTL_MS;
        // Someone whose cursor has not moved for 2 s is viewing, not editing.
        c.editing_idle_ms = 2000;
    })
    .await;
    let artifacts = artifacts();
    let base = format!("http://{}", app.addr);
    let seen = browse(
        "collaborate.mjs",
        &[
            &base,
            &artifacts.display().to_string(),
            &LOCK_TTL_MS.to_string(),
        ],
    )
    .await;
    assert_eq!(seen["rows"], "100");
    assert!(
        seen["titleLock"].as_str().unwrap().contains("Ada"),
        "{seen}"
    );
    assert_eq!(seen["accessibility"], serde_json::json!({}), "{seen}");
    // Ten awareness changes reach the other user one by one from a visible tab, as one from a
    // hidden tab.
    assert_eq!(
        seen["awarenessUpdates"],
        serde_json::json!({"visible": 10, "hidden": 1}),
        "{seen}"
    );
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    for shot in ["ada.png", "bob.png", "dashboard.png"] {
        assert!(artifacts.join(shot).exists(), "{shot}");
    }
}

#[tokio::test]
async fn the_indicator_follows_a_server_restart_and_nothing_typed_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    // A free port for the script's own server, which it stops and starts again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let seen = browse(
        "restart.mjs",
        &[
            env!("CARGO_BIN_EXE_tandem"),
            &dir.path().display().to_string(),
            &port.to_string(),
            &artifacts().display().to_string(),
        ],
    )
    .await;
    assert!(
        seen["text"]
            .as_str()
            .unwrap()
            .contains("SELECT 1; SELECT 2;"),
        "{seen}"
    );
    // While the server was down: "Server unreachable: retrying in 4 s (10 edits saved on this
    // device)", or "Disconnected: reconnecting…" with the same count.
    assert!(
        seen["label"]
            .as_str()
            .unwrap()
            .contains("edits saved on this device"),
        "{seen}"
    );
}

#[tokio::test]
async fn a_browser_without_websockets_degrades_to_http_and_still_collaborates() {
    let app = spawn_app().await;
    let artifacts = artifacts();
    let base = format!("http://{}", app.addr);
    let seen = browse("degraded.mjs", &[&base, &artifacts.display().to_string()]).await;
    assert_eq!(seen["degradedState"], "degraded", "{seen}");
    assert!(
        seen["label"].as_str().unwrap().contains("Degraded"),
        "{seen}"
    );
    assert_eq!(seen["text"], "SELECT 42 AS answer; -- again", "{seen}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert!(artifacts.join("ada-degraded.png").exists());
}

#[tokio::test]
async fn an_embedded_page_whose_token_expires_gets_another_and_goes_on() {
    // The app's tokens for Ada last this long; the server allows no leeway.
    const LIFETIME_SECS: u64 = 3;
    let secret = support::secret();
    let app = spawn_app_with(|c| {
        c.auth_secret = Some(secret.clone());
        c.frame_ancestors = "'self' http://127.0.0.1:*".into();
    })
    .await;
    let bob = support::mint_token(&secret, "acme", "bob", Some("Bob"), Role::Member);
    let backend = support::mint_token(&secret, "acme", "backend", None, Role::Service);
    let base = format!("http://{}", app.addr);
    let seen = browse(
        "expired.mjs",
        &[
            &base,
            secret.expose(),
            &bob,
            &backend,
            &LIFETIME_SECS.to_string(),
        ],
    )
    .await;
    assert_eq!(seen["renewed"], true, "{seen}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
}

#[tokio::test]
async fn with_auth_on_the_page_takes_its_token_from_the_embedding_app_or_the_url() {
    let secret = support::secret();
    let app = spawn_app_with(|c| {
        c.auth_secret = Some(secret.clone());
        // Apps on 127.0.0.1 may frame the dashboard; apps elsewhere (localhost) may not.
        c.frame_ancestors = "'self' http://127.0.0.1:*".into();
    })
    .await;
    let token = support::mint_token(&secret, "acme", "ada", Some("Ada Lovelace"), Role::Member);
    let reader = tandem::auth::mint(
        &secret,
        &Claims {
            sub: "rex".into(),
            name: Some("Rex".into()),
            workspace: "acme".into(),
            plan: Some("scale".into()),
            role: Role::Member,
            docs: Some(BTreeMap::from([(
                "acme/queries/*".into(),
                DocPermission::Read,
            )])),
            exp: tandem::auth::now_secs() + 600,
            iat: None,
            nbf: None,
        },
    )
    .unwrap();
    let base = format!("http://{}", app.addr);
    let seen = browse("embedded.mjs", &[&base, &token, &reader]).await;
    assert_eq!(seen["embedded"], "Signed in as Ada Lovelace", "{seen}");
    assert_eq!(seen["framedElsewhere"], false, "{seen}");
    // Without a token there is nothing to connect to: no indicator.
    assert_eq!(seen["bareIndicator"], false, "{seen}");
    assert_eq!(
        seen["readOnly"],
        serde_json::json!({"editable": "false", "typed": false, "titleReadOnly": true}),
        "{seen}"
    );
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
}

#[tokio::test]
async fn a_hocuspocus_page_and_the_dashboard_editor_edit_one_query() {
    let app = spawn_app().await;
    let artifacts = artifacts();
    let base = format!("http://{}", app.addr);
    let seen = browse("hocuspocus.mjs", &[&base, &artifacts.display().to_string()]).await;
    assert_eq!(
        seen["hocuspocus"], "SELECT region FROM sales GROUP BY region;",
        "{seen}"
    );
    assert_eq!(seen["dashboard"], seen["hocuspocus"], "{seen}");
    assert!(artifacts.join("bob-hocuspocus.png").exists());
}

#[tokio::test]
async fn a_version_is_restored_from_the_history_panel_with_a_warning_naming_the_other_user() {
    let app = spawn_app().await;
    let artifacts = artifacts();
    let base = format!("http://{}", app.addr);
    let seen = browse("history.mjs", &[&base, &artifacts.display().to_string()]).await;
    assert_eq!(
        seen["warning"],
        "Bob edited this query after that version: restoring replaces their changes.",
        "{seen}"
    );
    assert_eq!(
        seen["compared"],
        serde_json::json!(["SELECT 1 + 2", "SELECT 1"]),
        "{seen}"
    );
    assert!(seen["changed"].as_u64().is_some_and(|n| n >= 2), "{seen}");
    // Titles edited offline and online at once merge: one title, both changes, the same on
    // both sides.
    let titles = seen["titles"].as_array().unwrap();
    assert_eq!(titles[0], titles[1], "{seen}");
    let title = titles[0].as_str().unwrap();
    assert_eq!(title.matches("Revenue by region").count(), 1, "{seen}");
    assert!(title.contains("(EMEA)") && title.contains("2024"), "{seen}");
    // Bob's offline edits merged with Ada's: his tab says so, and compares with the newest
    // version from before he went offline (the one the restore made).
    assert!(
        seen["merged"]
            .as_str()
            .is_some_and(|m| m.starts_with("Merged with changes by Ada while you were offline")),
        "{seen}"
    );
    assert_eq!(
        seen["mergedCompare"],
        serde_json::json!(["SELECT 1", "/* ada */ SELECT 1 -- bob offline"]),
        "{seen}"
    );
    assert_eq!(seen["overflow"], false, "{seen}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
}

#[tokio::test]
async fn five_tabs_of_one_user_share_one_dashboard_connection_and_hand_over_without_a_gap() {
    // Idle after 4 s without input: the script waits for that, then moves the mouse.
    let app = spawn_app_with(|c| c.presence_idle_ms = 4000).await;
    let base = format!("http://{}", app.addr);
    let seen = browse("tabs.mjs", &[&base, &artifacts().display().to_string()]).await;
    assert_eq!(seen["events"], 10, "{seen}");
    assert_eq!(seen["status"], "online", "{seen}");
}

#[tokio::test]
async fn the_client_library_example_page_shows_who_is_online_and_edits_a_query() {
    // The example is served from an origin of its own, which the server lets in (CORS).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = format!("http://127.0.0.1:{port}");
    let app = spawn_app_with(|c| c.cors_origins = vec![origin]).await;
    let base = format!("http://{}", app.addr);
    let examples = support::node::npm_installed("clients/js/examples");
    let seen = browse(
        "example.mjs",
        &[
            &base,
            &examples.display().to_string(),
            &port.to_string(),
            &artifacts().display().to_string(),
        ],
    )
    .await;
    assert!(
        seen["text"].as_str().unwrap().contains("SELECT 42"),
        "{seen}"
    );
}

#[tokio::test]
async fn on_a_phone_the_page_is_one_column_with_a_short_header_and_toasts_that_keep_failures() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.addr);
    let seen = browse("phone.mjs", &[&base, &artifacts().display().to_string()]).await;
    // The SQL editor takes the screen's width (it was squeezed into ~75 px), the header one
    // line (it wrapped to four), nothing scrolls sideways.
    assert!(seen["editor"]["width"].as_f64().unwrap() > 300.0, "{seen}");
    for page in ["editor", "dashboard"] {
        assert!(seen[page]["header"].as_f64().unwrap() < 60.0, "{seen}");
        assert_eq!(seen[page]["overflow"], false, "{seen}");
    }
    assert_eq!(seen["dashboard"]["columns"], 1, "{seen}");
    // A critical alert is an alert that stays; the failed query's toast opens the query;
    // every toast closes; all of them take less than a quarter of the screen.
    assert_eq!(seen["toasts"]["critical"], "alert", "{seen}");
    assert_eq!(seen["toasts"]["failed"], "/queries/5", "{seen}");
    assert_eq!(seen["toasts"]["closable"], true, "{seen}");
    assert!(seen["toasts"]["share"].as_f64().unwrap() < 0.25, "{seen}");
    assert_eq!(seen["closed"], true, "{seen}");
    assert_eq!(seen["mutedShown"], false, "{seen}");
    assert_eq!(seen["approved"], true, "{seen}");
    assert_eq!(seen["chatOpened"], true, "{seen}");
}
