//! The HTTP API: document read/write, health, and JSON errors for bad requests.

use crate::support::{
    self, json_error, spawn_app, spawn_app_with, text_of_update, text_update, wait_text, Served,
    TestApp,
};
use base64::Engine;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact};

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
    refused_and_nothing_written(&app, cases.into()).await;
}

/// Sends each request and expects its JSON error; none of them wrote document `d`.
async fn refused_and_nothing_written(
    app: &TestApp,
    cases: Vec<(reqwest::RequestBuilder, u16, &str)>,
) {
    for (request, status, code) in cases {
        json_error(request.send().await.unwrap(), status, code, code).await;
    }
    assert_eq!(app.stored("d", None).await.as_ref(), [0, 0]);
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
        // No other site may frame it (and hand it a token) unless --frame-ancestors says so.
        assert_eq!(
            response.headers()["content-security-policy"],
            "frame-ancestors 'self'"
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
    let etag = script.headers()["etag"].clone();
    let full = script.bytes().await.unwrap().len();
    assert!(full > 10_000);
    let http = reqwest::Client::new();
    // A browser that takes gzip gets it compressed, the same file under the same ETag.
    let gzipped = http
        .get(app.http_url("/assets/app.js"))
        .header("accept-encoding", "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    assert_eq!(gzipped.headers()["etag"], etag);
    let body = gzipped.bytes().await.unwrap();
    assert_eq!(&body[..2], [0x1f, 0x8b]);
    assert!(body.len() < full / 2, "{} of {full}", body.len());
    // One that still holds it is told so, and gets no body.
    let revalidated = http
        .get(app.http_url("/assets/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);
    assert!(revalidated.bytes().await.unwrap().is_empty());
    let missing = reqwest::get(app.http_url("/assets/nothing.js"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// A client syncing over `POST /api/v1/docs/{doc}/sync`, as the dashboard does in degraded
/// mode: its own yrs document, and the server's state vector from its last answer.
struct Poller {
    doc: yrs::Doc,
    url: String,
    server_sv: Option<yrs::StateVector>,
    clock: u64,
    token: Option<String>,
}

impl Poller {
    fn new(app: &support::TestApp, doc: &str, client_id: u64) -> Poller {
        Poller {
            doc: yrs::Doc::with_client_id(client_id),
            url: app.http_url(&format!("/api/v1/docs/{doc}/sync")),
            server_sv: None,
            clock: 0,
            token: None,
        }
    }

    /// The same, signed in as `name` with a development token.
    async fn signed_in(app: &support::TestApp, doc: &str, client_id: u64, name: &str) -> Poller {
        Poller {
            token: Some(app.dev_token(name).await),
            ..Poller::new(app, doc, client_id)
        }
    }

    /// Posts one round and returns the raw answer.
    async fn post(&mut self, awareness: Option<&str>) -> reqwest::Response {
        let body = self.body(awareness);
        let mut request = reqwest::Client::new().post(&self.url).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    fn type_text(&self, text: &str) {
        use yrs::Text;
        let t = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        let len = t.len(&txn);
        t.insert(&mut txn, len, text);
    }

    fn text(&self) -> String {
        use yrs::GetString;
        let t = self.doc.get_or_insert_text("t");
        t.get_string(&self.doc.transact())
    }

    /// The request body: its state vector, what the server lacks, and `awareness` if given.
    fn body(&mut self, awareness: Option<&str>) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let txn = self.doc.transact();
        let pending = txn.encode_state_as_update_v1(&self.server_sv.clone().unwrap_or_default());
        let mut body = serde_json::json!({
            "client_id": self.doc.client_id().get(),
            "state_vector": b64.encode(txn.state_vector().encode_v1()),
            "update": b64.encode(pending),
        });
        if let Some(state) = awareness {
            self.clock += 1;
            let update = tandem_sync::AwarenessUpdate {
                entries: vec![tandem_sync::AwarenessEntry {
                    client_id: self.doc.client_id().get(),
                    clock: self.clock,
                    state: Some(state.into()),
                }],
            };
            body["awareness"] = b64.encode(update.encode()).into();
        }
        body
    }

    /// One round: posts and applies the answer; returns the room's awareness states.
    async fn poll(&mut self, awareness: Option<&str>) -> Vec<(u64, Option<String>)> {
        use yrs::updates::decoder::Decode;
        let response = self.post(awareness).await;
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE;
        let update = b64.decode(answer["update"].as_str().unwrap()).unwrap();
        self.doc
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&update).unwrap())
            .unwrap();
        let sv = b64
            .decode(answer["state_vector"].as_str().unwrap())
            .unwrap();
        self.server_sv = Some(yrs::StateVector::decode_v1(&sv).unwrap());
        assert!(answer["poll_ttl_ms"].as_u64().is_some(), "{answer}");
        match answer["awareness"].as_str() {
            Some(states) => tandem_sync::AwarenessUpdate::decode(&b64.decode(states).unwrap())
                .unwrap()
                .entries
                .into_iter()
                .map(|e| (e.client_id, e.state.map(|s| s.to_string())))
                .collect(),
            None => Vec::new(),
        }
    }
}

#[tokio::test]
async fn a_poller_and_a_socket_client_edit_one_document_and_see_each_other() {
    let app = spawn_app_with(|c| c.doc_poll_ttl_ms = 1500).await;
    let socket = app.join("acme/queries/1").await;
    socket.push_text("t", "socket ");
    socket.set_awareness(r#"{"user":{"name":"Sam"}}"#).unwrap();
    // Once another client sees the socket's cursor, the room holds it.
    app.join("acme/queries/1")
        .await
        .wait_for("the socket's cursor", support::TIMEOUT, |c| {
            c.awareness().values().any(|s| s.contains("Sam"))
        })
        .await
        .unwrap();
    let mut poller = Poller::new(&app, "acme/queries/1", 4242);
    poller.type_text("polled");

    // The first round brings the socket's text and cursor; the poller's edit reaches the socket
    // and so does its cursor.
    let states = poller.poll(Some(r#"{"user":{"name":"Pat"}}"#)).await;
    assert!(
        states
            .iter()
            .any(|(_, s)| s.as_deref().is_some_and(|s| s.contains("Sam"))),
        "{states:?}"
    );
    assert!(poller.text().contains("socket ") && poller.text().contains("polled"));
    wait_text(&socket, "t", &poller.text()).await;
    socket
        .wait_for("the poller's cursor", support::TIMEOUT, |c| {
            c.awareness().get(&4242).is_some_and(|s| s.contains("Pat"))
        })
        .await
        .expect("the poller's awareness reaches the socket");

    // The socket types on; the next round carries just that.
    socket.push_text("t", "more ");
    wait_text(&socket, "t", &format!("{}more ", poller.text())).await;
    poller.poll(None).await;
    assert_eq!(poller.text(), socket.text("t"));
    // Nothing new: the answer is an empty update and the poller stays as it is.
    let before = poller.text();
    poller.poll(None).await;
    assert_eq!(poller.text(), before);

    // A poller that stops polling leaves the room as a closed connection would.
    socket
        .wait_for("the poller's cursor to go", support::TIMEOUT, |c| {
            !c.awareness().contains_key(&4242)
        })
        .await
        .expect("a lapsed poller's awareness is removed");
    let rooms: serde_json::Value = reqwest::get(app.http_url("/api/v1/admin/rooms"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rooms["rooms"][0]["pollers"], 0, "{rooms}");
}

#[tokio::test]
async fn bad_sync_requests_get_json_errors_and_change_nothing() {
    let app = spawn_app_with(|c| c.max_frame_bytes = 1024).await;
    let http = reqwest::Client::new();
    let url = app.http_url("/api/v1/docs/d/sync");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sv = b64.encode([0u8]);
    let someone_else = tandem_sync::AwarenessUpdate {
        entries: vec![tandem_sync::AwarenessEntry {
            client_id: 9,
            clock: 1,
            state: Some("{}".into()),
        }],
    };
    let cases = [
        (http.post(&url).body("not json"), 400, "bad_body"),
        (
            http.post(&url).json(&serde_json::json!({ "client_id": 1 })),
            400,
            "bad_body",
        ),
        (
            http.post(&url)
                .json(&serde_json::json!({ "client_id": 1, "state_vector": sv, "extra": 1 })),
            400,
            "bad_body",
        ),
        (
            http.post(&url)
                .json(&serde_json::json!({ "client_id": 1, "state_vector": "***" })),
            400,
            "bad_state_vector",
        ),
        (
            http.post(&url).json(
                &serde_json::json!({ "client_id": 1, "state_vector": b64.encode([0xff, 0xff]) }),
            ),
            400,
            "bad_state_vector",
        ),
        (
            http.post(&url).json(&serde_json::json!({
                "client_id": 9_007_199_254_740_000u64, "state_vector": sv,
            })),
            400,
            "bad_client_id",
        ),
        (
            http.post(&url).json(&serde_json::json!({
                "client_id": 1, "state_vector": sv, "update": b64.encode([0xff, 0xff, 0xff, 0x7f]),
            })),
            400,
            "bad_update",
        ),
        (
            http.post(&url).json(&serde_json::json!({
                "client_id": 1, "state_vector": sv, "update": b64.encode(vec![0u8; 2048]),
            })),
            413,
            "too_large",
        ),
        (
            http.post(&url).json(&serde_json::json!({
                "client_id": 1, "state_vector": sv, "awareness": b64.encode([5, 1]),
            })),
            400,
            "bad_awareness",
        ),
        (
            http.post(&url).json(&serde_json::json!({
                "client_id": 1, "state_vector": sv, "awareness": b64.encode(someone_else.encode()),
            })),
            400,
            "bad_awareness",
        ),
        (
            http.post(app.http_url("/api/v1/docs/a%01b/sync"))
                .json(&serde_json::json!({ "client_id": 1, "state_vector": sv })),
            400,
            "bad_document_name",
        ),
    ];
    refused_and_nothing_written(&app, cases.into()).await;
}

#[tokio::test]
async fn a_user_keeps_a_bounded_number_of_pollers_and_no_one_else_s_client() {
    let app = spawn_app_with(|c| c.max_pollers_per_user = 2).await;
    let socket = app.join("acme/queries/2").await;
    // Ada syncs from three tabs; her oldest poller goes when the third comes.
    let mut tabs = Vec::new();
    for client in [11, 12, 13] {
        let mut tab = Poller::signed_in(&app, "acme/queries/2", client, "Ada").await;
        tab.poll(Some(&format!(r#"{{"tab":{client}}}"#))).await;
        tabs.push(tab);
    }
    socket
        .wait_for("Ada's first tab to go", support::TIMEOUT, |c| {
            let states = c.awareness();
            !states.contains_key(&11) && states.contains_key(&12) && states.contains_key(&13)
        })
        .await
        .expect("the oldest poller is evicted");

    // Bob may not speak for Ada's client: his edits sync, his claim to her cursor is dropped.
    let mut bob = Poller::signed_in(&app, "acme/queries/2", 12, "Bob").await;
    bob.type_text("bob was here");
    bob.poll(Some(r#"{"tab":"forged"}"#)).await;
    socket
        .wait_for("Bob's edit", support::TIMEOUT, |c| {
            c.text("t").contains("bob was here")
        })
        .await
        .expect("Bob's edit arrives");
    assert!(socket.awareness()[&12].contains("12"));

    // An awareness state is a cursor and a name, not a payload.
    let big = format!(r#"{{"junk":"{}"}}"#, "x".repeat(20_000));
    json_error(
        tabs[2].post(Some(&big)).await,
        413,
        "too_large",
        "a big poll",
    )
    .await;
}

#[tokio::test]
async fn cors_is_refused_by_default_and_allowed_for_the_configured_origins() {
    let http = reqwest::Client::new();
    let preflight = |app: &crate::support::TestApp, origin: &str| {
        http.request(reqwest::Method::OPTIONS, app.http_url("/api/v1/events"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = |response: &reqwest::Response| {
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // The default: no CORS at all, so a browser keeps other origins' pages out.
    let app = crate::support::spawn_app().await;
    let answer = preflight(&app, "https://evil.example").await.unwrap();
    assert_eq!(allowed(&answer), None);
    let answer = http
        .get(app.http_url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed(&answer), None);

    let app = crate::support::spawn_app_with(|c| {
        c.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    let answer = preflight(&app, "https://app.example").await.unwrap();
    assert_eq!(allowed(&answer).as_deref(), Some("https://app.example"));
    let methods = answer.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let answer = preflight(&app, "https://evil.example").await.unwrap();
    assert_eq!(allowed(&answer), None, "only the configured origins");
    assert!(tandem::Config {
        cors_origins: vec!["app.example/path".into()],
        ..tandem::Config::with_data_dir(std::path::Path::new("/tmp"))
    }
    .validate()
    .is_err());
}

#[tokio::test]
async fn connections_are_capped_per_address_and_per_user() {
    use tandem::auth::Role;
    let refused = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let retry = response.headers().get("retry-after").is_some();
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or(b"{}")).unwrap();
            (
                status,
                retry,
                body["error"].as_str().unwrap_or("").to_owned(),
            )
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("admitted"),
    };
    // Per address: two sockets, not a third, until one closes.
    let app = crate::support::spawn_app_with(|c| c.max_connections_per_ip = 2).await;
    let first = app.join("capped").await;
    let _second = app.join("capped").await;
    let third = tokio_tungstenite::connect_async(app.ws_url("capped")).await;
    assert_eq!(refused(third), (429, true, "too_many_connections".into()));
    first.close().await;
    let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
    loop {
        if tokio_tungstenite::connect_async(app.ws_url("capped"))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "its place came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Per user, across kinds: one socket each; another user is not affected.
    let app = crate::support::spawn_app_with(|c| {
        c.auth_secret = Some(crate::support::secret());
        c.max_connections_per_user = 1;
    })
    .await;
    let ada = crate::support::token("acme", "ada", Role::Member);
    let url = |token: &str| format!("{}?token={token}", app.ws_url("acme/queries/1"));
    let _held = tokio_tungstenite::connect_async(url(&ada)).await.unwrap();
    let again =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={ada}", app.addr())).await;
    assert_eq!(refused(again), (429, true, "too_many_connections".into()));
    let bob = crate::support::token("acme", "bob", Role::Member);
    assert!(tokio_tungstenite::connect_async(url(&bob)).await.is_ok());
}

#[tokio::test]
async fn one_user_holds_at_most_so_many_documents_over_sockets_and_pollers() {
    use tandem::auth::Role;
    let app = crate::support::spawn_app_with(|c| {
        c.auth_secret = Some(crate::support::secret());
        c.max_docs_per_user = 2;
        c.doc_poll_ttl_ms = 300;
    })
    .await;
    let ada = crate::support::token("acme", "ada", Role::Member);
    let url = |doc: &str| format!("{}?token={ada}", app.ws_url(&format!("acme/queries/{doc}")));
    let http = reqwest::Client::new();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let poll = |doc: &str| {
        http.post(app.http_url(&format!("/api/v1/docs/acme/queries/{doc}/sync")))
            .bearer_auth(&ada)
            .json(&serde_json::json!({ "client_id": 7, "state_vector": b64.encode([0u8]) }))
            .send()
    };
    let refused = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or(b"{}")).unwrap();
            (
                response.status().as_u16(),
                response.headers().get("retry-after").is_some(),
                body["error"].as_str().unwrap_or("").to_owned(),
            )
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("admitted"),
    };
    // A socket on one document and a poller of another: two documents.
    let (first, _) = tokio_tungstenite::connect_async(url("1")).await.unwrap();
    assert_eq!(poll("2").await.unwrap().status(), 200);
    // More of what they hold is fine: a second socket on the first, a poll of it.
    let _again = tokio_tungstenite::connect_async(url("1")).await.unwrap();
    assert_eq!(poll("1").await.unwrap().status(), 200);
    // A third document is not, by socket or by poll; another user is not affected.
    assert_eq!(
        refused(tokio_tungstenite::connect_async(url("3")).await),
        (429, true, "too_many_documents".into())
    );
    let answer = poll("3").await.unwrap();
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().get("retry-after").is_some());
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "too_many_documents", "{body}");
    let bob = crate::support::token("acme", "bob", Role::Member);
    let bobs = format!("{}?token={bob}", app.ws_url("acme/queries/3"));
    assert!(tokio_tungstenite::connect_async(bobs).await.is_ok());
    // Once the poller of the second lapses and the sockets of the first close, both places
    // come back.
    drop(first);
    drop(_again);
    let deadline = tokio::time::Instant::now() + crate::support::TIMEOUT;
    let mut admitted = Vec::new();
    for doc in ["3", "4"] {
        loop {
            if let Ok((socket, _)) = tokio_tungstenite::connect_async(url(doc)).await {
                admitted.push(socket);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the place of document {doc} came back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_client_that_dribbles_its_body_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::support::spawn_app_with(|c| c.http_body_timeout_ms = 300).await;
    let mut slow = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    slow.write_all(
        b"POST /api/v1/docs/slow/update HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n\x01",
    )
    .await
    .unwrap();
    // The rest of the body never comes: 408 with the reason, and the connection closes.
    let mut answer = Vec::new();
    tokio::time::timeout(crate::support::TIMEOUT, slow.read_to_end(&mut answer))
        .await
        .expect("closed by the server")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    // Nothing was written.
    let stored = reqwest::get(app.http_url("/api/v1/docs/slow"))
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.bytes().await.unwrap().as_ref(), [0, 0]);
}

#[tokio::test]
async fn a_client_that_dribbles_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::support::spawn_app_with(|c| c.http_header_timeout_ms = 300).await;
    let mut slow = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The headers never end: the server closes the connection (it answers 408 first, or not).
    let mut answer = Vec::new();
    let read = tokio::time::timeout(crate::support::TIMEOUT, slow.read_to_end(&mut answer))
        .await
        .expect("closed by the server");
    assert!(
        read.is_err()
            || String::from_utf8_lossy(&answer).is_empty()
            || String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // A client that sends its request in time is served.
    let response = reqwest::get(app.http_url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
}
