//! Publishing dashboard events over HTTP: `POST /api/v1/events` with a service token.

use crate::support::{claims, sign, spawn_secured};
use serde_json::json;
use tandem::auth::{Claims, Role};

/// A token for a backend of `workspace` (no plan: backends are on none).
fn token(workspace: &str, role: Role) -> String {
    sign(&Claims {
        plan: None,
        ..claims(workspace, "backend", role)
    })
}

#[tokio::test]
async fn accepted_events_get_monotonic_ids_per_workspace() {
    let app = spawn_secured(|_| {}).await;
    let acme = token("acme", Role::Service);
    let other = token("other", Role::Service);
    let completed =
        json!({"type":"query_completed","query_id":456,"result_count":100,"execution_time":2.5});
    for expected in 1..=3 {
        let (status, body) = app.publish(Some(&acme), &completed.to_string()).await;
        assert_eq!((status, body), (201, json!({ "id": expected })));
    }
    // Another workspace counts on its own.
    let (status, body) = app.publish(Some(&other), &completed.to_string()).await;
    assert_eq!((status, body), (201, json!({ "id": 1 })));
}

#[tokio::test]
async fn each_bad_publication_gets_its_status_and_message() {
    let app = spawn_secured(|_| {}).await;
    let service = token("acme", Role::Service);
    let member = token("acme", Role::Member);

    let (status, body) = app.publish(None, "{}").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );

    let ok = json!({"type":"workflow_triggered","workflow_id":"wf-1"}).to_string();
    let (status, body) = app.publish(Some(&member), &ok).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("role_required")),
        "{body}"
    );

    let (status, body) = app.publish(Some(&service), "{not json").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_json")));

    let (status, body) = app
        .publish(Some(&service), r#"{"type":"query_exploded"}"#)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_event"))
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("unknown event type \"query_exploded\""));

    let missing =
        json!({"type":"agent_executed","agent_id":789,"status":"completed","insights_found":3});
    let (status, body) = app.publish(Some(&service), &missing.to_string()).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["message"],
        "agent_executed needs `needs_approval`: true or false"
    );

    let huge = json!({"type":"system_alert","severity":"info","message":"x".repeat(70_000)});
    let (status, body) = app.publish(Some(&service), &huge.to_string()).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")));

    // Nothing refused took an id.
    let (status, body) = app.publish(Some(&service), &ok).await;
    assert_eq!((status, body), (201, json!({ "id": 1 })));
}
