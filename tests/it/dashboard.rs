//! The dashboard end to end: events published over HTTP reach `/ws` subscribers of their
//! channel (and nobody else), replay with `since`, error frames, locks, chat badges, presence,
//! long-polling, activity, preferences and publishing limits.

use std::time::Duration;

use serde_json::{json, Value};
use tandem::auth::{mint, now_secs, Claims, Role};
use tandem::Config;

use crate::support::{self, secret, spawn_app_with, Dash, Served, TestApp, TIMEOUT};

fn secured(config: &mut Config) {
    config.auth_secret = Some(secret());
}

fn token(workspace: &str, sub: &str, role: Role) -> String {
    support::mint_token(
        &secret(),
        workspace,
        sub,
        Some(&format!("User {sub}")),
        role,
    )
}

fn member(workspace: &str, sub: &str) -> String {
    format!("token={}", token(workspace, sub, Role::Member))
}

async fn publish(app: &TestApp, workspace: &str, event: Value) -> u64 {
    let (status, body) = publish_raw(app, workspace, &event).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_u64().expect("an id")
}

async fn publish_raw(app: &TestApp, workspace: &str, event: &Value) -> (u16, Value) {
    let backend = token(workspace, "backend", Role::Service);
    app.publish(Some(&backend), &event.to_string()).await
}

/// One example of every type a backend publishes, with its channel.
fn every_type() -> Vec<(Value, &'static str)> {
    vec![
        (
            json!({"type":"query_started","query_id":456,"started_by":123}),
            "queries",
        ),
        (
            json!({"type":"query_completed","query_id":456,"result_count":100,"execution_time":2.5}),
            "queries",
        ),
        (
            json!({"type":"query_failed","query_id":457,"error":"timeout"}),
            "queries",
        ),
        (
            json!({"type":"agent_executed","agent_id":789,"status":"completed","insights_found":3,"needs_approval":false}),
            "agents",
        ),
        (
            json!({"type":"approval_request","approval_id":5,"title":"Send the report"}),
            "approvals",
        ),
        (
            json!({"type":"new_chat_message","session_id":999,"message":"Hello, I need help","sender":"visitor"}),
            "chat_sessions",
        ),
        (
            json!({"type":"new_chat_session","session_id":1000,"visitor_location":"New York, US"}),
            "chat_sessions",
        ),
        (
            json!({"type":"system_alert","message":"disk almost full","severity":"warning"}),
            "system",
        ),
        (
            json!({"type":"workflow_triggered","workflow_id":"wf-1"}),
            "workflows",
        ),
        (
            json!({"type":"query_executed","user_id":123,"query_id":456}),
            "activity",
        ),
        (
            json!({"type":"template_created","user_id":123,"template_id":7}),
            "activity",
        ),
        (
            json!({"type":"agent_triggered","user_id":123,"agent_id":789}),
            "activity",
        ),
        (
            json!({"type":"file_uploaded","user_id":123,"file_name":"q3.csv"}),
            "activity",
        ),
    ]
}

/// The event objects of a list of frames, without the server's replies.
fn events_only(frames: Vec<Value>) -> Vec<Value> {
    frames.into_iter().filter(|f| f["id"].is_u64()).collect()
}

/// `event` as delivered, without its `id` and `timestamp`.
fn published_fields(delivered: &Value) -> Value {
    let mut fields = delivered.clone();
    let object = fields.as_object_mut().unwrap();
    assert!(object.remove("id").unwrap().is_u64());
    let timestamp = object.remove("timestamp").unwrap();
    assert!(timestamp.as_str().unwrap().ends_with('Z'), "{timestamp}");
    fields
}

#[tokio::test]
async fn every_event_type_reaches_the_subscribers_of_its_channel_and_nobody_else() {
    let app = spawn_app_with(secured).await;
    let mut by_channel = Vec::new();
    for channel in [
        "queries",
        "agents",
        "approvals",
        "chat_sessions",
        "system",
        "workflows",
        "activity",
    ] {
        let mut dash = app.dash(&member("acme", "7")).await;
        dash.subscribe(&[channel], None).await;
        by_channel.push((channel, dash));
    }
    let mut elsewhere = app.dash(&member("globex", "7")).await;
    let all = [
        "presence",
        "queries",
        "agents",
        "approvals",
        "chat_sessions",
        "notifications",
        "activity",
        "system",
        "workflows",
    ];
    elsewhere.subscribe(&all, None).await;

    let mut ids = Vec::new();
    for (event, _) in every_type() {
        ids.push(publish(&app, "acme", event).await);
    }
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    // A last event every acme subscriber... of the system channel gets; the others are checked
    // by count: events arrive in id order, so once the last one for a channel has arrived,
    // any stray event would have arrived before it.
    for (channel, dash) in &mut by_channel {
        let expected: Vec<Value> = every_type()
            .into_iter()
            .filter(|(_, c)| c == channel)
            .map(|(event, _)| event)
            .collect();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let frame = dash.next().await;
            if frame["id"].is_u64() {
                got.push(published_fields(&frame));
            }
        }
        assert_eq!(got, expected, "channel {channel}");
    }
    // Another workspace sees nothing of acme's: its own event is the first it gets.
    let own = publish(
        &app,
        "globex",
        json!({"type":"workflow_triggered","workflow_id":"g"}),
    )
    .await;
    let first = elsewhere.next_of("workflow_triggered").await;
    assert_eq!(first["id"], own);
    assert_eq!(first["workflow_id"], "g");
    for (channel, dash) in &mut by_channel {
        assert!(
            dash.next_within(Duration::from_millis(200)).await.is_none(),
            "channel {channel} got an event of another channel"
        );
    }
}

#[tokio::test]
async fn events_for_users_reach_only_them_as_notifications() {
    let app = spawn_app_with(secured).await;
    let mut ada = app.dash(&member("acme", "ada")).await;
    ada.subscribe(&["notifications"], None).await;
    let mut bob = app.dash(&member("acme", "bob")).await;
    bob.subscribe(&["notifications", "approvals"], None).await;

    let for_ada = publish(
        &app,
        "acme",
        json!({"type":"approval_request","approval_id":1,"title":"Ship it","user_ids":["ada"]}),
    )
    .await;
    let for_everyone = publish(
        &app,
        "acme",
        json!({"type":"approval_request","approval_id":2,"title":"All"}),
    )
    .await;
    let got = ada.next().await;
    assert_eq!(
        (got["id"].as_u64(), &got["approval_id"]),
        (Some(for_ada), &json!(1))
    );
    // Bob is not addressed by the first, and subscribed to approvals for the second.
    let got = bob.next().await;
    assert_eq!(got["id"].as_u64(), Some(for_everyone));
    // Ada is not subscribed to approvals: the broadcast is not a notification.
    assert!(ada.next_within(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn a_client_that_comes_back_with_since_misses_nothing() {
    let app = spawn_app_with(secured).await;
    let alert =
        |n: u64| json!({"type":"system_alert","message":format!("alert {n}"),"severity":"info"});
    let mut dash = app.dash(&member("acme", "7")).await;
    dash.subscribe(&["system"], None).await;
    publish(&app, "acme", alert(1)).await;
    let seen = dash.next().await;
    let last = seen["id"].as_u64().unwrap();
    dash.close().await;

    // Missed while away, including events of a channel it does not follow.
    let mut missed = Vec::new();
    for n in 2..=6 {
        missed.push(publish(&app, "acme", alert(n)).await);
        publish(
            &app,
            "acme",
            json!({"type":"workflow_triggered","workflow_id":n}),
        )
        .await;
    }
    let mut dash = app.dash(&member("acme", "7")).await;
    let replayed = events_only(dash.subscribe(&["system"], Some(last)).await);
    let ids: Vec<u64> = replayed.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, missed);
    assert_eq!(replayed[4]["message"], "alert 6");
    // And live from there, without a gap or a repeat.
    let live = publish(&app, "acme", alert(7)).await;
    assert_eq!(dash.next().await["id"].as_u64(), Some(live));
}

#[tokio::test]
async fn a_since_the_log_never_gave_is_told_to_resync() {
    // As after the data directory was restored from an older backup under open pages.
    let app = spawn_app_with(secured).await;
    let latest = publish(
        &app,
        "acme",
        json!({"type":"workflow_triggered","workflow_id":1}),
    )
    .await;
    let ahead = latest + 1000;
    let mut dash = app.dash(&member("acme", "7")).await;
    let replayed = dash.subscribe(&["workflows"], Some(ahead)).await;
    let resync = replayed
        .iter()
        .find(|f| f["type"] == "resync_required")
        .unwrap_or_else(|| panic!("no resync in {replayed:?}"));
    assert_eq!(resync["since"], ahead);
    let told = resync["latest"].as_u64().unwrap();
    assert!(told >= latest && told < ahead, "{resync}");
    let bearer = token("acme", "7", Role::Member);
    let (status, page) = app
        .get(&format!("/api/v1/events?since={ahead}&timeout=0"), &bearer)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["resync_required"], true, "{page}");
    assert!(page["last_id"].as_u64().unwrap() < ahead, "{page}");
}

#[tokio::test]
async fn a_since_older_than_retention_is_told_to_resync() {
    let app = spawn_app_with(|c| {
        secured(c);
        c.event_retention_count = 2;
        c.event_trim_interval_ms = 50;
    })
    .await;
    for n in 0..5 {
        publish(
            &app,
            "acme",
            json!({"type":"workflow_triggered","workflow_id":n}),
        )
        .await;
    }
    // Retention runs on its own timer; poll until it has trimmed.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut dash = app.dash(&member("acme", "7")).await;
        let replayed = dash.subscribe(&["workflows"], Some(1)).await;
        if let Some(resync) = replayed.iter().find(|f| f["type"] == "resync_required") {
            // Presence updates of these very connections share the log, so the ids run on.
            assert_eq!(resync["since"], 1);
            let (oldest, latest) = (
                resync["oldest"].as_u64().unwrap(),
                resync["latest"].as_u64().unwrap(),
            );
            assert!(oldest > 2 && oldest <= latest, "{resync}");
            // A long-poll from there is told the same, and where to go on from: passing its
            // `last_id` on as it is does not ask for the lost part again.
            let bearer = token("acme", "7", Role::Member);
            let (status, page) = app.get("/api/v1/events?since=1&timeout=0", &bearer).await;
            assert_eq!(status, 200);
            assert_eq!(page["resync_required"], true, "{page}");
            let next = page["last_id"].as_u64().unwrap();
            assert!(next >= latest, "{page}");
            let (_, after) = app
                .get(&format!("/api/v1/events?since={next}&timeout=0"), &bearer)
                .await;
            assert_eq!(after.get("resync_required"), None, "{after}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never trimmed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_bad_frame_gets_its_error_and_too_many_close_the_connection() {
    let app = spawn_app_with(|c| {
        c.max_bad_frames = 9;
        c.max_dashboard_frame_bytes = 1024;
    })
    .await;
    let mut dash = app.dash("user=ada").await;
    dash.send(json!({"action":"ping"})).await;
    assert_eq!(dash.next().await, json!({"type":"pong"}));
    let cases = [
        ("{nope".to_string(), "invalid_json"),
        ("[1]".to_string(), "not_an_object"),
        (r#"{"channels":["system"]}"#.to_string(), "missing_field"),
        (r#"{"action":"dance"}"#.to_string(), "unknown_action"),
        (
            r#"{"action":"subscribe","channels":["weather"]}"#.to_string(),
            "unknown_channel",
        ),
        (
            r#"{"action":"subscribe","channels":"system"}"#.to_string(),
            "bad_field",
        ),
        (r#"{"action":"mark_read"}"#.to_string(), "missing_field"),
        (
            format!(r#"{{"action":"ping","pad":"{}"}}"#, "x".repeat(2000)),
            "too_large",
        ),
    ];
    for (frame, code) in &cases {
        dash.send_text(frame).await;
        let error = dash.next().await;
        assert_eq!(error["type"], "error", "{frame}");
        assert_eq!(error["code"], *code, "{frame}: {error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    // Still open and served.
    dash.send(json!({"action":"ping"})).await;
    assert_eq!(dash.next().await, json!({"type":"pong"}));
    // The ninth bad frame is answered; the tenth is one too many.
    dash.send_text("{nope").await;
    assert_eq!(dash.next().await["code"], "invalid_json");
    dash.send_text("{nope").await;
    let (code, reason) = dash.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("bad frames"), "{reason}");
    // Others are unaffected.
    let mut other = app.dash("user=bob").await;
    other.send(json!({"action":"ping"})).await;
    assert_eq!(other.next().await, json!({"type":"pong"}));
}

#[tokio::test]
async fn the_dashboard_refuses_bad_tokens_before_upgrading() {
    let app = spawn_app_with(secured).await;
    let refused = |query: String| {
        let url = app.dash_url(&query);
        async move {
            match tokio_tungstenite::connect_async(url).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    response.status().as_u16()
                }
                other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
            }
        }
    };
    assert_eq!(refused(String::new()).await, 401);
    assert_eq!(refused("token=nonsense".into()).await, 401);
    let free = Claims {
        plan: Some("free".into()),
        ..Claims {
            sub: "7".into(),
            name: None,
            workspace: "acme".into(),
            plan: None,
            role: Role::Member,
            docs: None,
            exp: now_secs() + 600,
            iat: None,
            nbf: None,
        }
    };
    assert_eq!(
        refused(format!("token={}", mint(&secret(), &free).unwrap())).await,
        403
    );
    assert_eq!(
        refused(format!("{}&workspace=globex", member("acme", "7"))).await,
        403
    );
}

#[tokio::test]
async fn locks_are_granted_denied_released_and_expire() {
    let app = spawn_app_with(|c| {
        secured(c);
        c.lock_ttl_ms = 1_500;
    })
    .await;
    let resource = "acme/queries/456#title";
    let mut ada = app.dash(&member("acme", "1")).await;
    let mut bob = app.dash(&member("acme", "2")).await;
    bob.subscribe(&["presence"], None).await;

    ada.send(json!({"action":"lock","resource":resource})).await;
    let granted = ada.next_of("lock_acquired").await;
    assert_eq!(granted["resource"], resource);
    assert_eq!(granted["user_id"], 1);
    assert_eq!(granted["renewed"], false);
    let broadcast = bob.next_of("lock_acquired").await;
    assert_eq!(
        (broadcast["user_id"].clone(), broadcast["id"].is_u64()),
        (json!(1), true)
    );

    bob.send(json!({"action":"lock","resource":resource})).await;
    let denied = bob.next_of("lock_denied").await;
    assert_eq!(denied["holder"], json!({"user_id": 1, "name": "User 1"}));
    bob.send(json!({"action":"unlock","resource":resource}))
        .await;
    assert_eq!(bob.next_of("error").await["code"], "not_holder");

    // Renewing is the holder sending lock again.
    ada.send(json!({"action":"lock","resource":resource})).await;
    assert_eq!(ada.next_of("lock_acquired").await["renewed"], true);

    // Released when the holder disconnects.
    ada.close().await;
    let released = bob.next_of("lock_released").await;
    assert_eq!(
        (released["resource"].as_str(), released["reason"].as_str()),
        (Some(resource), Some("disconnect"))
    );
    bob.send(json!({"action":"lock","resource":resource})).await;
    assert_eq!(bob.next_of("lock_acquired").await["user_id"], 2);
    bob.send(json!({"action":"unlock","resource":resource}))
        .await;
    assert_eq!(bob.next_of("lock_released").await["reason"], "unlock");

    // And when nobody renews it.
    let mut carol = app.dash(&member("acme", "3")).await;
    carol
        .send(json!({"action":"lock","resource":"acme/queries/9"}))
        .await;
    carol.next_of("lock_acquired").await;
    let expired = carol.next_of("lock_released").await;
    assert_eq!(expired["reason"], "expired");
    let broadcast = loop {
        let frame = bob.next_of("lock_released").await;
        if frame["resource"] == "acme/queries/9" {
            break frame;
        }
    };
    assert_eq!(broadcast["reason"], "expired");
}

#[tokio::test]
async fn chat_badges_rise_clear_and_survive_a_restart() {
    let app = spawn_app_with(secured).await;
    let mut ada = app.dash(&member("acme", "ada")).await;
    let initial = ada.subscribe(&["chat_sessions"], None).await;
    assert_eq!(
        initial,
        vec![json!({"type":"chat_badges","unread":{},"total":0})]
    );
    let mut bob = app.dash(&member("acme", "bob")).await;
    bob.subscribe(&["chat_sessions"], None).await;

    let message = |session: u64, sender: &str| json!({"type":"new_chat_message","session_id":session,"message":"hi","sender":sender});
    publish(&app, "acme", message(999, "visitor")).await;
    publish(&app, "acme", message(999, "visitor")).await;
    // Bob sent this one: it raises Ada's count only.
    publish(&app, "acme", message(1000, "bob")).await;
    let mut last = json!(null);
    for _ in 0..3 {
        last = ada.next_of("chat_badges").await;
    }
    assert_eq!(
        last,
        json!({"type":"chat_badges","unread":{"999":2,"1000":1},"total":3})
    );
    let mut bobs = json!(null);
    for _ in 0..2 {
        bobs = bob.next_of("chat_badges").await;
    }
    assert_eq!(bobs["unread"], json!({"999":2}));

    ada.send(json!({"action":"mark_read","session_id":999}))
        .await;
    assert_eq!(
        ada.next_of("chat_badges").await,
        json!({"type":"chat_badges","unread":{"1000":1},"total":1})
    );
    ada.close().await;
    bob.close().await;

    let mut config = Config::with_data_dir(app.dir.path());
    secured(&mut config);
    let app = app.restart_with(config).await;
    let (status, badges) = app
        .get("/api/v1/badges", &token("acme", "ada", Role::Member))
        .await;
    assert_eq!(status, 200);
    assert_eq!(badges["unread"], json!({"1000":1}));
    let (_, badges) = app
        .get("/api/v1/badges", &token("acme", "bob", Role::Member))
        .await;
    assert_eq!(badges["total"], 2);
}

#[tokio::test]
async fn presence_goes_online_idle_offline_and_remembers_last_seen() {
    let app = spawn_app_with(|c| {
        secured(c);
        c.presence_idle_ms = 400;
        c.presence_debounce_ms = 60_000;
    })
    .await;
    let mut watcher = app.dash(&member("acme", "1")).await;
    watcher
        .send(json!({"action": "subscribe", "channels": ["presence"]}))
        .await;
    // The answer says after how long a user turns idle, so a page knows how often to say it is
    // in use.
    let subscribed = watcher.until("subscribed").await.pop().unwrap();
    assert_eq!(subscribed["idle_after_ms"], 400, "{subscribed}");

    let mut ada = app.dash(&member("acme", "123")).await;
    let online = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 123 {
            break update;
        }
    };
    assert_eq!(online["status"], "online");
    assert_eq!(online["name"], "User 123");
    ada.send(json!({"action":"presence","status":"online","workspace":"queries","current_page":"/queries/456"}))
        .await;

    let idle = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 123 && update["status"] == "idle" {
            break update;
        }
    };
    // Every update carries where the user is.
    assert_eq!(idle["current_page"], "/queries/456");
    assert_eq!(idle["workspace"], "queries");

    let bearer = token("acme", "1", Role::Member);
    let (_, listed) = app.get("/api/v1/presence", &bearer).await;
    let users = listed["users"].as_array().unwrap();
    assert!(
        users
            .iter()
            .any(|u| u["user_id"] == 123 && u["status"] == "idle"),
        "{listed}"
    );

    ada.close().await;
    let offline = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 123 && update["status"] == "offline" {
            break update;
        }
    };
    let last_seen = offline["last_seen"].as_str().unwrap().to_owned();
    assert!(last_seen.ends_with('Z'), "{last_seen}");
    let (_, listed) = app.get("/api/v1/presence", &bearer).await;
    assert!(!listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["user_id"] == 123));
    watcher.close().await;

    let mut config = Config::with_data_dir(app.dir.path());
    secured(&mut config);
    let app = app.restart_with(config).await;
    let (_, listed) = app
        .get("/api/v1/presence?include_offline=true", &bearer)
        .await;
    let ada = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_id"] == 123)
        .cloned()
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(ada["status"], "offline");
    assert_eq!(ada["last_seen"], last_seen.as_str());
    // Listed by the name they went by, across the restart.
    assert_eq!(ada["name"], "User 123");
    // A user who was never present (who only set preferences, say) is no offline user.
    let never = token("acme", "77", Role::Member);
    let response = reqwest::Client::new()
        .put(app.http_url("/api/v1/preferences"))
        .bearer_auth(&never)
        .json(&json!({"realtime": {"query_started": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, listed) = app
        .get("/api/v1/presence?include_offline=true", &bearer)
        .await;
    assert!(
        !listed["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user_id"] == 77),
        "{listed}"
    );
}

#[tokio::test]
async fn long_polls_return_events_at_once_or_when_they_come_and_time_out_empty() {
    let app = spawn_app_with(secured).await;
    let bearer = token("acme", "7", Role::Member);
    let first = publish(
        &app,
        "acme",
        json!({"type":"workflow_triggered","workflow_id":1}),
    )
    .await;
    publish(
        &app,
        "acme",
        json!({"type":"system_alert","message":"m","severity":"info"}),
    )
    .await;

    let (status, page) = app
        .get(
            "/api/v1/events?channels=workflows&since=0&timeout=5",
            &bearer,
        )
        .await;
    assert_eq!(status, 200);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"].as_u64(), Some(first));
    let last = page["last_id"].as_u64().unwrap();

    // Nothing new on the channel: an empty answer after the timeout.
    let started = tokio::time::Instant::now();
    let (status, page) = app
        .get(
            &format!("/api/v1/events?channels=workflows&since={last}&timeout=0.3"),
            &bearer,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["events"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A waiting poll returns when an event comes.
    let url = format!(
        "/api/v1/events?channels=workflows&since={}&timeout=10",
        page["last_id"]
    );
    let waiting = {
        let app_url = app.http_url(&url);
        let bearer = bearer.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(app_url)
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let later = publish(
        &app,
        "acme",
        json!({"type":"workflow_triggered","workflow_id":2}),
    )
    .await;
    let page = tokio::time::timeout(TIMEOUT, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page["events"][0]["id"].as_u64(), Some(later));

    let (status, body) = app.get("/api/v1/events?channels=weather", &bearer).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unknown_channel"))
    );
    let (status, _) = app.get("/api/v1/events?timeout=600", &bearer).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_activity_feed_lists_the_latest_activity() {
    let app = spawn_app_with(secured).await;
    for n in 0..5 {
        publish(
            &app,
            "acme",
            json!({"type":"file_uploaded","user_id":1,"file_name":format!("f{n}.csv")}),
        )
        .await;
        publish(
            &app,
            "acme",
            json!({"type":"workflow_triggered","workflow_id":n}),
        )
        .await;
    }
    let (status, body) = app
        .get(
            "/api/v1/activity?limit=3",
            &token("acme", "7", Role::Member),
        )
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["f2.csv", "f3.csv", "f4.csv"]);
}

#[tokio::test]
async fn a_page_opened_later_gets_the_latest_notifications_it_may_see() {
    let app = spawn_app_with(secured).await;
    let reader = token("acme", "7", Role::Member);
    let response = reqwest::Client::new()
        .put(app.http_url("/api/v1/preferences"))
        .bearer_auth(&reader)
        .json(&json!({"realtime":{"agent_executed":false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for event in [
        json!({"type":"query_completed","query_id":1,"result_count":3,"execution_time":0.1}),
        // Activity and presence are not notifications; muted types and others' are not theirs.
        json!({"type":"file_uploaded","user_id":1,"file_name":"a.csv"}),
        json!({"type":"query_executed","user_id":1,"query_id":4,"user_ids":[7]}),
        json!({"type":"agent_executed","agent_id":1,"status":"ok","insights_found":0,"needs_approval":false}),
        json!({"type":"system_alert","message":"for 8","severity":"info","user_ids":[8]}),
        json!({"type":"system_alert","message":"for 7","severity":"info","user_ids":[7]}),
        json!({"type":"approval_request","approval_id":2,"title":"Send report"}),
    ] {
        publish(&app, "acme", event).await;
    }
    let (status, body) = app.get("/api/v1/notifications?limit=10", &reader).await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["query_completed", "system_alert", "approval_request"],
        "{body}"
    );
    assert_eq!(body["events"][1]["message"], "for 7");
    let (_, latest) = app.get("/api/v1/notifications?limit=1", &reader).await;
    assert_eq!(latest["events"][0]["type"], "approval_request");
    let (status, _) = app.get("/api/v1/notifications?limit=0", &reader).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_page_goes_live_from_where_its_history_ends_without_a_gap_or_a_repeat() {
    let app = spawn_app_with(secured).await;
    let reader = token("acme", "7", Role::Member);
    let alert =
        |n: u64| json!({"type":"system_alert","message":format!("alert {n}"),"severity":"info"});
    let uploaded =
        |n: u64| json!({"type":"file_uploaded","user_id":1,"file_name":format!("f{n}.csv")});
    let mut shown = Vec::new();
    for n in 0..3 {
        shown.push(publish(&app, "acme", alert(n)).await);
        shown.push(publish(&app, "acme", uploaded(n)).await);
    }
    let (_, notifications) = app.get("/api/v1/notifications?limit=10", &reader).await;
    let (_, activity) = app.get("/api/v1/activity?limit=10", &reader).await;
    let last_ids = [&notifications, &activity].map(|page| page["last_id"].as_u64().unwrap());
    // Both read after the same events: each ends at the last of them.
    assert_eq!(last_ids, [*shown.last().unwrap(); 2]);
    let listed = |page: &Value| -> Vec<u64> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect()
    };
    let mut history = [listed(&notifications), listed(&activity)].concat();
    history.sort_unstable();
    assert_eq!(history, shown);

    // Between the page's snapshot and its subscription, more happens.
    let between = [
        publish(&app, "acme", alert(3)).await,
        publish(&app, "acme", uploaded(3)).await,
    ];
    let mut dash = app.dash(&member("acme", "7")).await;
    let replayed = events_only(
        dash.subscribe(&["system", "activity"], Some(last_ids[0]))
            .await,
    );
    let ids: Vec<u64> = replayed.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, between);
    let live = publish(&app, "acme", alert(4)).await;
    assert_eq!(dash.next().await["id"].as_u64(), Some(live));
}

#[tokio::test]
async fn muted_event_types_are_not_pushed() {
    let app = spawn_app_with(secured).await;
    let bearer = token("acme", "7", Role::Member);
    let response = reqwest::Client::new()
        .put(app.http_url("/api/v1/preferences"))
        .bearer_auth(&bearer)
        .json(&json!({"realtime":{"query_started":false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let prefs: Value = response.json().await.unwrap();
    assert_eq!(prefs["realtime"]["query_started"], false);
    assert_eq!(prefs["realtime"]["query_completed"], true);

    let mut dash = app.dash(&format!("token={bearer}")).await;
    dash.subscribe(&["queries"], None).await;
    publish(
        &app,
        "acme",
        json!({"type":"query_started","query_id":1,"started_by":7}),
    )
    .await;
    let completed = publish(
        &app,
        "acme",
        json!({"type":"query_completed","query_id":1,"result_count":1,"execution_time":0.1}),
    )
    .await;
    assert_eq!(dash.next().await["id"].as_u64(), Some(completed));

    let response = reqwest::Client::new()
        .put(app.http_url("/api/v1/preferences"))
        .bearer_auth(&bearer)
        .json(&json!({"realtime":{"query_exploded":false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn publishing_past_the_rate_gets_429_with_retry_after() {
    let app = spawn_app_with(|c| {
        secured(c);
        c.publish_rate_user = 3;
    })
    .await;
    let event = json!({"type":"workflow_triggered","workflow_id":1});
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let response = reqwest::Client::new()
            .post(app.http_url("/api/v1/events"))
            .bearer_auth(token("acme", "backend", Role::Service))
            .json(&event)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], &[201, 201, 201]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let retry_after: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
}

#[tokio::test]
async fn rapid_events_are_coalesced_into_batch_frames() {
    let app = spawn_app_with(|c| {
        secured(c);
        c.dashboard_batch_ms = 300;
    })
    .await;
    let mut dash = app.dash(&member("acme", "7")).await;
    dash.subscribe(&["workflows"], None).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(
            publish(
                &app,
                "acme",
                json!({"type":"workflow_triggered","workflow_id":n}),
            )
            .await,
        );
    }
    let mut got = Vec::new();
    while got.len() < ids.len() {
        got.push(dash.next().await["id"].as_u64().unwrap());
    }
    assert_eq!(got, ids);
    assert!(
        dash.frames.iter().any(|f| f["type"] == "batch"),
        "no batch frame among {:?}",
        dash.frames
    );
}

#[tokio::test]
async fn a_dashboard_client_without_a_token_works_on_an_open_server() {
    let app = spawn_app_with(|_| {}).await;
    let mut dash = Dash::connect(&format!("ws://{}/ws", app.addr)).await;
    dash.subscribe(&["queries"], None).await;
    let response = reqwest::Client::new()
        .post(app.http_url("/api/v1/events"))
        .json(&json!({"type":"query_started","query_id":456,"started_by":123}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let event = dash.next().await;
    assert_eq!(event["type"], "query_started");
    assert_eq!(event["query_id"], 456);
}

/// A synced document client with `token`.
async fn yjs(app: &TestApp, doc: &str, token: &str) -> tandem_sync::client::Client {
    let url = format!("{}?token={token}", app.ws_url(doc));
    let client = tandem_sync::client::Client::connect(&url).await.unwrap();
    client.synced(TIMEOUT).await.unwrap();
    client
}

#[tokio::test]
async fn presence_rides_awareness_both_ways() {
    let app = spawn_app_with(secured).await;
    let mut watcher = app.dash(&member("acme", "1")).await;
    watcher.subscribe(&["presence"], None).await;

    // A Yjs client's awareness in the presence room becomes a presence_update for its token's
    // user, whatever user id the state claims.
    let ada = yjs(
        &app,
        "acme/__presence__",
        &token("acme", "123", Role::Member),
    )
    .await;
    ada.set_awareness(r#"{"status":"online","workspace":"queries","current_page":"/queries/456","user_id":999,"user":{"name":"Ada","color":"orange"}}"#)
        .unwrap();
    let update = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 123 {
            break update;
        }
    };
    assert_eq!(update["status"], "online");
    assert_eq!(update["current_page"], "/queries/456");
    assert_eq!(update["name"], "Ada");
    assert_eq!(update["color"], "orange");

    // A dashboard user appears to the Yjs client as an awareness state of the server's.
    let mut bob = app.dash(&member("acme", "77")).await;
    bob.send(json!({"action":"presence","status":"online","current_page":"/dashboards/1"}))
        .await;
    let mirrored = ada
        .wait_for("bob's presence", TIMEOUT, |c| {
            c.awareness()
                .values()
                .any(|s| s.contains(r#""user_id":77"#))
        })
        .await;
    assert!(mirrored.is_ok(), "{:?}", ada.awareness());
    let state: Value = ada
        .awareness()
        .values()
        .map(|s| serde_json::from_str::<Value>(s).unwrap())
        .find(|s| s["user_id"] == 77)
        .unwrap();
    assert_eq!(state["status"], "online");
    assert_eq!(state["name"], "User 77");

    // Leaving the presence room is going offline.
    ada.close().await;
    let gone = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 123 {
            break update;
        }
    };
    assert_eq!(gone["status"], "offline");
    // And a dashboard user who leaves disappears from the room.
    let carol = yjs(&app, "acme/__presence__", &token("acme", "5", Role::Member)).await;
    carol
        .wait_for("bob mirrored", TIMEOUT, |c| {
            c.awareness()
                .values()
                .any(|s| s.contains(r#""user_id":77"#))
        })
        .await
        .unwrap();
    bob.close().await;
    carol
        .wait_for("bob gone", TIMEOUT, |c| {
            !c.awareness()
                .values()
                .any(|s| s.contains(r#""user_id":77"#))
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn who_is_editing_a_query_follows_its_awareness() {
    let app = spawn_app_with(secured).await;
    let mut watcher = app.dash(&member("acme", "1")).await;
    watcher.subscribe(&["presence"], None).await;
    let ada = yjs(
        &app,
        "acme/queries/456",
        &token("acme", "123", Role::Member),
    )
    .await;
    ada.set_awareness(r#"{"user":{"name":"Ada","color":"orange"},"cursor":{"anchor":1}}"#)
        .unwrap();
    let editing = watcher.next_of("editing").await;
    assert_eq!(editing["document"], "acme/queries/456");
    assert_eq!(editing["query_id"], 456);
    assert_eq!(
        editing["users"],
        json!([{"user_id": 123, "name": "Ada", "active": true}])
    );
    // A dashboard opened now starts from the same picture.
    let bearer = token("acme", "1", Role::Member);
    let (status, now) = app.get("/api/v1/editing", &bearer).await;
    assert_eq!(status, 200);
    assert_eq!(
        now,
        json!({ "documents": [{
            "document": editing["document"],
            "query_id": editing["query_id"],
            "users": editing["users"],
        }] })
    );
    ada.close().await;
    let editing = watcher.next_of("editing").await;
    assert_eq!(editing["users"], json!([]));
    let (_, now) = app.get("/api/v1/editing", &bearer).await;
    assert_eq!(now, json!({ "documents": [] }));
}

#[tokio::test]
async fn query_events_write_the_status_map_every_editor_sees() {
    let app = spawn_app_with(secured).await;
    let editor = yjs(
        &app,
        "acme/queries/456",
        &token("acme", "123", Role::Member),
    )
    .await;
    let status = |client: &tandem_sync::client::Client, key: &str| -> Option<String> {
        use yrs::{Map, Transact};
        let map = client.doc().get_or_insert_map("status");
        let txn = client.doc().transact();
        map.get(&txn, key).map(|v| v.to_string(&txn))
    };
    publish(
        &app,
        "acme",
        json!({"type":"query_started","query_id":456,"started_by":123}),
    )
    .await;
    editor
        .wait_for("running", TIMEOUT, |c| {
            status(c, "status").as_deref() == Some("running")
        })
        .await
        .unwrap();
    let id = publish(
        &app,
        "acme",
        json!({"type":"query_completed","query_id":456,"result_count":100,"execution_time":2.5}),
    )
    .await;
    editor
        .wait_for("completed", TIMEOUT, |c| {
            status(c, "status").as_deref() == Some("completed")
        })
        .await
        .unwrap();
    assert_eq!(status(&editor, "result_count").as_deref(), Some("100"));
    assert_eq!(status(&editor, "execution_time").as_deref(), Some("2.5"));
    assert_eq!(status(&editor, "event_id"), Some(id.to_string()));
    assert!(status(&editor, "finished_at").unwrap().ends_with('Z'));
    // Over HTTP too: the status is part of the document.
    let response = reqwest::Client::new()
        .get(app.http_url("/api/v1/docs/acme/queries/456"))
        .bearer_auth(token("acme", "9", Role::Member))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_users_inbox_room_carries_their_notifications_and_badges_as_awareness() {
    let app = spawn_app_with(secured).await;
    let ada_token = token("acme", "ada", Role::Member);
    // Known users get chat badges: Ada has been on the dashboard once.
    app.dash(&format!("token={ada_token}")).await.close().await;
    let inbox = yjs(&app, "acme/__inbox__/ada", &ada_token).await;
    publish(
        &app,
        "acme",
        json!({"type":"approval_request","approval_id":5,"title":"Ship it","user_ids":["ada"]}),
    )
    .await;
    publish(
        &app,
        "acme",
        json!({"type":"new_chat_message","session_id":999,"message":"hi","sender":"visitor"}),
    )
    .await;
    let state = |client: &tandem_sync::client::Client| -> Option<Value> {
        client
            .awareness()
            .values()
            .map(|s| serde_json::from_str::<Value>(s).unwrap())
            .find(|s| s["user_id"] == "ada")
    };
    inbox
        .wait_for("the inbox state", TIMEOUT, |c| {
            state(c).is_some_and(|s| s["chat_badges"]["total"] == 1)
        })
        .await
        .unwrap_or_else(|_| panic!("{:?}", inbox.awareness()));
    let state = state(&inbox).unwrap();
    assert_eq!(state["notifications"][0]["title"], "Ship it");
    assert_eq!(state["chat_badges"]["unread"], json!({"999": 1}));

    // Only Ada's token opens Ada's inbox.
    let url = format!(
        "{}?token={}",
        app.ws_url("acme/__inbox__/ada"),
        token("acme", "bob", Role::Member)
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn shutdown_closes_dashboard_connections_and_answers_long_polls() {
    let app = spawn_app_with(|_| {}).await;
    let mut dash = app.dash("user=ada").await;
    dash.subscribe(&["system"], None).await;
    let poll = tokio::spawn(
        reqwest::Client::new()
            .get(app.http_url("/api/v1/events?channels=system&timeout=50"))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(app.stop());
    assert_eq!(dash.closed().await.0, 1001);
    drop(dash);
    let answer = poll.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let page: Value = answer.json().await.unwrap();
    assert_eq!(page["events"], json!([]));
    // The server stopped without waiting out the long-poll (the harness allows it 10 s).
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_polling_client_keeps_its_presence_alive_over_http() {
    let app = spawn_app_with(|c| {
        secured(c);
        c.presence_poll_ttl_ms = 300;
    })
    .await;
    let mut watcher = app.dash(&member("acme", "1")).await;
    watcher.subscribe(&["presence"], None).await;
    let bearer = token("acme", "42", Role::Member);
    let response = reqwest::Client::new()
        .post(app.http_url("/api/v1/presence"))
        .bearer_auth(&bearer)
        .json(&json!({"status":"online","current_page":"/queries/9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let online = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 42 {
            break update;
        }
    };
    assert_eq!(online["status"], "online");
    assert_eq!(online["current_page"], "/queries/9");
    // Named by its token, as a dashboard connection is.
    assert_eq!(online["name"], "User 42");
    let (_, listed) = app.get("/api/v1/presence", &bearer).await;
    assert!(listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["user_id"] == 42));
    // Not renewed: gone once its time is up.
    let offline = loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 42 {
            break update;
        }
    };
    assert_eq!(offline["status"], "offline");

    let response = reqwest::Client::new()
        .post(app.http_url("/api/v1/presence"))
        .bearer_auth(&bearer)
        .json(&json!({"status":"asleep"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn a_connection_holds_a_bounded_number_of_locks_and_sends_a_bounded_rate_of_actions() {
    let app = spawn_app_with(|c| {
        c.max_locks_per_connection = 2;
        c.dashboard_actions_per_sec = 2;
        c.max_bad_frames = 100;
    })
    .await;
    let mut dash = app.dash("user=ada").await;
    for resource in ["a", "b"] {
        dash.send(json!({"action":"lock","resource":resource}))
            .await;
        assert_eq!(dash.next_of("lock_acquired").await["resource"], resource);
    }
    dash.send(json!({"action":"lock","resource":"c"})).await;
    assert_eq!(dash.next().await["code"], "too_many_locks");
    let mut limited = 0;
    for _ in 0..10 {
        dash.send(json!({"action":"ping"})).await;
    }
    for _ in 0..10 {
        let frame = dash.next().await;
        if frame["code"] == "rate_limited" {
            limited += 1;
        } else {
            assert_eq!(frame["type"], "pong");
        }
    }
    assert!(
        limited > 0,
        "ten pings at once went past a budget of 2/s (burst 4)"
    );
}

#[tokio::test]
async fn subscribing_with_since_replays_only_the_channels_it_adds() {
    let app = spawn_app_with(secured).await;
    let mut dash = app.dash(&member("acme", "7")).await;
    dash.subscribe(&["system"], None).await;
    let alert = publish(
        &app,
        "acme",
        json!({"type":"system_alert","message":"m","severity":"info"}),
    )
    .await;
    assert_eq!(dash.next().await["id"].as_u64(), Some(alert));
    let flow = publish(
        &app,
        "acme",
        json!({"type":"workflow_triggered","workflow_id":1}),
    )
    .await;
    // `system` was live: its event is not sent again.
    let replayed = events_only(dash.subscribe(&["system", "workflows"], Some(0)).await);
    let ids: Vec<_> = replayed.iter().map(|e| e["id"].as_u64()).collect();
    assert_eq!(ids, [Some(flow)]);
}

/// The next `presence_update` of user 123.
async fn next_for_123(watcher: &mut Dash) -> Value {
    loop {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == 123 {
            return update;
        }
    }
}

#[tokio::test]
async fn a_yjs_client_that_reconnects_with_its_client_id_keeps_its_user_online() {
    use tandem_sync::client::{Client, ClientOptions};
    let app = spawn_app_with(secured).await;
    let mut watcher = app.dash(&member("acme", "1")).await;
    watcher.subscribe(&["presence"], None).await;
    let url = format!(
        "{}?token={}",
        app.ws_url("acme/__presence__"),
        token("acme", "123", Role::Member)
    );
    let connect = || async {
        let options = ClientOptions {
            client_id: Some(4242),
        };
        let client = Client::connect_with(&url, options).await.unwrap();
        client.synced(TIMEOUT).await.unwrap();
        client
    };
    let first = connect().await;
    first
        .set_awareness(r#"{"status":"online","current_page":"/a"}"#)
        .unwrap();
    assert_eq!(next_for_123(&mut watcher).await["status"], "online");
    // The same client id from a new connection (the old one not yet gone), with a newer clock.
    let second = connect().await;
    second
        .set_awareness(r#"{"status":"online","current_page":"/a"}"#)
        .unwrap();
    second
        .set_awareness(r#"{"status":"idle","current_page":"/a"}"#)
        .unwrap();
    assert_eq!(next_for_123(&mut watcher).await["status"], "idle");
    // The old connection going takes nothing with it.
    first.close().await;
    second
        .set_awareness(r#"{"status":"online","current_page":"/a"}"#)
        .unwrap();
    assert_eq!(next_for_123(&mut watcher).await["status"], "online");
    second.close().await;
    assert_eq!(next_for_123(&mut watcher).await["status"], "offline");
}

#[tokio::test]
async fn a_lock_needs_write_access_to_its_document() {
    use std::collections::BTreeMap;
    use tandem::auth::DocPermission;
    let app = spawn_app_with(secured).await;
    let with_docs = |docs: &[(&str, DocPermission)]| {
        let claims = Claims {
            docs: Some(
                docs.iter()
                    .map(|(glob, permission)| ((*glob).to_owned(), *permission))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..support::claims("acme", "7", Role::Member)
        };
        format!("token={}", support::sign(&claims))
    };
    let lock = |resource: &str| json!({"action":"lock","resource":resource});
    // Read-only on queries: no lock there; write on reports: a lock there.
    let mut rex = app
        .dash(&with_docs(&[
            ("acme/queries/*", DocPermission::Read),
            ("acme/reports/*", DocPermission::Write),
        ]))
        .await;
    for resource in [
        "acme/queries/1#title",
        "acme/dashboards/2#name",
        "free-form",
    ] {
        rex.send(lock(resource)).await;
        let answer = rex.next().await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{resource}: {answer}"
        );
    }
    rex.send(lock("acme/reports/3#title")).await;
    assert_eq!(
        rex.next_of("lock_acquired").await["resource"],
        "acme/reports/3#title"
    );
    // Nobody else was blocked by the refused ones.
    let mut ada = app.dash(&member("acme", "1")).await;
    ada.send(lock("acme/queries/1#title")).await;
    assert_eq!(ada.next_of("lock_acquired").await["user_id"], 1);
}

#[tokio::test]
async fn a_long_poll_answers_by_its_token_s_expiry() {
    // Sockets close with 4401 when their token expires; a long-poll must not go on waiting
    // (and deliver events) past it either.
    let app = spawn_app_with(secured).await;
    let expiring = support::sign(&Claims {
        exp: now_secs() + 2,
        ..support::claims("acme", "7", Role::Member)
    });
    let url = app.http_url("/api/v1/events?channels=workflows&since=0&timeout=30");
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(expiring)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    // Well after the expiry, an event comes: the poll had answered by then, without it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish(
        &app,
        "acme",
        json!({"type":"workflow_triggered","workflow_id":"late"}),
    )
    .await;
    let page = tokio::time::timeout(TIMEOUT, waiting)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(page["events"], json!([]), "{page}");
}

#[tokio::test]
async fn who_is_in_a_document_is_told_only_to_those_who_may_read_it() {
    use std::collections::BTreeMap;
    use tandem::auth::DocPermission;
    let app = spawn_app_with(secured).await;
    // Rex may read reports only.
    let rex_claims = Claims {
        docs: Some(BTreeMap::from([(
            "acme/reports/*".to_owned(),
            DocPermission::Read,
        )])),
        ..support::claims("acme", "9", Role::Member)
    };
    let rex_token = support::sign(&rex_claims);
    let mut rex = app.dash(&format!("token={rex_token}")).await;
    rex.subscribe(&["presence"], None).await;
    let mut watcher = app.dash(&member("acme", "1")).await;
    watcher.subscribe(&["presence"], None).await;

    // Ada edits a query and locks its title: everyone else hears it, Rex does not.
    let ada = yjs(&app, "acme/queries/5", &token("acme", "123", Role::Member)).await;
    ada.set_awareness(r#"{"user":{"name":"Ada"}}"#).unwrap();
    let mut ada_dash = app.dash(&member("acme", "123")).await;
    ada_dash
        .send(json!({"action":"lock","resource":"acme/queries/5#title"}))
        .await;
    ada_dash.next_of("lock_acquired").await;
    watcher.next_of("lock_acquired").await;
    // Then a report, which Rex may read: the first thing of the kind he hears is about it.
    let report = yjs(&app, "acme/reports/2", &token("acme", "123", Role::Member)).await;
    report.set_awareness(r#"{"user":{"name":"Ada"}}"#).unwrap();
    let heard = rex.until("editing").await;
    assert!(
        !heard.iter().any(|e| e["type"] == "lock_acquired"),
        "{heard:?}"
    );
    let editing = heard.last().unwrap();
    assert_eq!(editing["document"], "acme/reports/2", "{editing}");
    let (_, now) = app.get("/api/v1/editing", &rex_token).await;
    let documents: Vec<&str> = now["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["document"].as_str())
        .collect();
    assert_eq!(documents, ["acme/reports/2"], "{now}");
    // A replay tells him no more than the live stream did.
    let mut again = app.dash(&format!("token={rex_token}")).await;
    let replayed = again.subscribe(&["presence"], Some(0)).await;
    assert!(
        replayed
            .iter()
            .all(|e| e["document"] != "acme/queries/5" && e["resource"] != "acme/queries/5#title"),
        "{replayed:?}"
    );
}

#[tokio::test]
async fn a_workspace_nobody_uses_leaves_memory_and_comes_back_whole() {
    let app = spawn_app_with(|c| {
        secured(c);
        c.workspace_idle_ms = 200;
    })
    .await;
    let loaded = || async {
        let text = reqwest::get(app.http_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("tandem_workspaces_loaded "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut ada = app.dash(&member("acme", "123")).await;
    ada.subscribe(&["workflows"], None).await;
    let id = publish(
        &app,
        "acme",
        json!({"type":"workflow_triggered","workflow_id":"w"}),
    )
    .await;
    ada.next_of("workflow_triggered").await;
    // While she is connected it stays; once she is gone and the workspace idle, it goes.
    ada.close().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while loaded().await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workspace stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Loaded again on the next use: the log, and her record (offline since she left).
    let mut again = app.dash(&member("acme", "1")).await;
    let replayed = again.subscribe(&["workflows"], Some(0)).await;
    assert!(replayed.iter().any(|e| e["id"] == id), "{replayed:?}");
    let bearer = token("acme", "1", Role::Member);
    let (_, listed) = app
        .get("/api/v1/presence?include_offline=true", &bearer)
        .await;
    let ada = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_id"] == 123)
        .cloned()
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(ada["status"], "offline");
    assert!(ada["last_seen"].is_string(), "{ada}");
}

#[tokio::test]
async fn a_decision_on_an_approval_is_an_event_naming_who_decided() {
    let app = spawn_app_with(secured).await;
    let mut bob = app.dash(&member("acme", "bob")).await;
    bob.subscribe(&["approvals"], None).await;
    let request = publish(
        &app,
        "acme",
        json!({"type":"approval_request","approval_id":9,"title":"Drop the table"}),
    )
    .await;
    assert_eq!(bob.next().await["id"].as_u64(), Some(request));

    let http = reqwest::Client::new();
    let decide = |body: Value| {
        http.post(app.http_url("/api/v1/approvals/9/decision"))
            .bearer_auth(token("acme", "ada", Role::Member))
            .json(&body)
            .send()
    };
    let answer = decide(json!({"decision": "approved"})).await.unwrap();
    assert_eq!(answer.status(), 201);
    let id = answer.json::<Value>().await.unwrap()["id"].as_u64();
    let got = bob.next().await;
    assert_eq!(got["id"].as_u64(), id);
    assert_eq!(got["type"], "approval_decided");
    assert_eq!(got["approval_id"], 9);
    assert_eq!(got["decision"], "approved");
    assert_eq!(got["user_id"], "ada");
    assert_eq!(got["name"], "User ada");

    // Anything but "approved" or "denied", or a comment that is not short text, is refused
    // and publishes nothing.
    for bad in [
        json!({"decision": "maybe"}),
        json!({}),
        json!({"decision": "denied", "comment": 7}),
    ] {
        let refused = decide(bad.clone()).await.unwrap();
        assert_eq!(refused.status(), 422, "{bad}");
        assert_eq!(
            refused.json::<Value>().await.unwrap()["error"],
            "invalid_decision"
        );
    }
    assert!(bob.next_within(Duration::from_millis(200)).await.is_none());
    // Without a token, nothing.
    let anonymous = http
        .post(app.http_url("/api/v1/approvals/9/decision"))
        .json(&json!({"decision": "approved"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn decisions_are_held_to_the_publishing_rate_of_their_user() {
    let app = spawn_app_with(|c| {
        secured(c);
        c.publish_rate_user = 3;
    })
    .await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let answer = http
            .post(app.http_url("/api/v1/approvals/5/decision"))
            .bearer_auth(token("acme", "ada", Role::Member))
            .json(&json!({"decision": "denied"}))
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
        if answer.status() == 429 {
            assert!(answer.headers().contains_key("retry-after"));
        }
    }
    assert!(statuses.contains(&201), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
}
