//! Cluster mode: nodes sharing one PostgreSQL database and one Redis, each test with a
//! database and a cluster name of its own. Nodes run in this process, or as processes where a
//! test kills one; the Redis that a test stops is a private `redis-server`.

use std::time::Duration;

use serde_json::Value;

use crate::support::cluster::{self, Services};
use crate::support::{text_update, Served, TestApp, TIMEOUT};

/// Waits until `check` holds for every client.
async fn all_see(
    clients: &[&tandem_sync::client::Client],
    what: &'static str,
    check: impl Fn(&tandem_sync::client::Client) -> bool + Copy,
) {
    for client in clients {
        client
            .wait_for(what, TIMEOUT, check)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

async fn post_update(node: &TestApp, doc: &str, update: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(node.http_url(&format!("/api/v1/docs/{doc}/update")))
        .body(update)
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

#[tokio::test]
async fn clients_spread_over_three_nodes_converge() {
    let (_services, nodes) = cluster::start(3, |_| {}).await;
    let clients = [
        nodes[0].join_as("acme/q1", 1).await,
        nodes[1].join_as("acme/q1", 2).await,
        nodes[2].join_as("acme/q1", 3).await,
    ];
    // Everyone types at once, on their own node.
    for round in 0..20 {
        for (i, client) in clients.iter().enumerate() {
            client.push_text("t", &format!("<{i}:{round}>"));
        }
    }
    let refs: Vec<_> = clients.iter().collect();
    all_see(&refs, "sixty edits", |c| {
        c.text("t").matches('<').count() == 60
    })
    .await;
    let texts: Vec<String> = clients.iter().map(|c| c.text("t")).collect();
    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
}

#[tokio::test]
async fn a_client_joining_on_another_node_gets_everything_acknowledged_in_its_first_sync() {
    let (_services, nodes) = cluster::start(2, |_| {}).await;
    // Acknowledged on node 0: committed in PostgreSQL.
    assert_eq!(
        post_update(&nodes[0], "acme/cold", text_update(5, "from node 0")).await,
        200
    );
    let writer = nodes[0].join_as("acme/cold", 6).await;
    writer.push_text("t", "+live");
    let reader = nodes[0].join("acme/cold").await;
    reader
        .wait_for("the live edit", TIMEOUT, |c| c.text("t").contains("+live"))
        .await
        .unwrap();
    // An HTTP write waits for its group commit, which covers the live edit before it.
    assert_eq!(
        post_update(&nodes[0], "acme/other", text_update(7, "x")).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Node 1 never had the document: its first step 2 holds all of it.
    let joiner = nodes[1].join("acme/cold").await;
    let text = joiner.text("t");
    assert!(
        text.contains("from node 0") && text.contains("+live"),
        "{text:?}"
    );
}

#[tokio::test]
async fn an_http_write_on_one_node_reaches_clients_on_the_others_live() {
    let (_services, nodes) = cluster::start(3, |_| {}).await;
    let on_1 = nodes[1].join("acme/live").await;
    let on_2 = nodes[2].join("acme/live").await;
    assert_eq!(
        post_update(&nodes[0], "acme/live", text_update(9, "over http")).await,
        200
    );
    all_see(&[&on_1, &on_2], "the HTTP write", |c| {
        c.text("t") == "over http"
    })
    .await;
    // And HTTP reads on every node see it.
    for node in &nodes {
        let body = reqwest::get(node.http_url("/api/v1/docs/acme/live"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(crate::support::text_of_update(&body), "over http");
    }
}

#[tokio::test]
async fn awareness_crosses_nodes_and_goes_with_its_connection() {
    let (_services, nodes) = cluster::start(2, |_| {}).await;
    let ada = nodes[0].join_as("acme/aw", 41).await;
    let bob = nodes[1].join_as("acme/aw", 42).await;
    ada.set_awareness(r#"{"user":{"name":"Ada"}}"#).unwrap();
    bob.set_awareness(r#"{"user":{"name":"Bob"}}"#).unwrap();
    bob.wait_for("Ada's cursor", TIMEOUT, |c| {
        c.awareness().get(&41).map(String::as_str) == Some(r#"{"user":{"name":"Ada"}}"#)
    })
    .await
    .unwrap();
    ada.wait_for("Bob's cursor", TIMEOUT, |c| c.awareness().contains_key(&42))
        .await
        .unwrap();
    // Ada's state changes, then her connection closes: Bob sees both.
    ada.set_awareness(r#"{"user":{"name":"Ada"},"cursor":7}"#)
        .unwrap();
    bob.wait_for("Ada's new cursor", TIMEOUT, |c| {
        c.awareness()
            .get(&41)
            .is_some_and(|s| s.contains("\"cursor\":7"))
    })
    .await
    .unwrap();
    ada.close().await;
    bob.wait_for("Ada gone", TIMEOUT, |c| !c.awareness().contains_key(&41))
        .await
        .unwrap();
}

#[tokio::test]
async fn rooms_unload_on_every_node_and_load_again_with_everything() {
    let (_services, nodes) = cluster::start(2, |c| c.room_grace_ms = 100).await;
    let a = nodes[0].join_as("acme/unload", 11).await;
    let b = nodes[1].join_as("acme/unload", 12).await;
    a.push_text("t", "a");
    b.wait_for("a", TIMEOUT, |c| c.text("t") == "a")
        .await
        .unwrap();
    b.close().await;
    // Node 1's room unloads (and drops its subscription) while node 0 keeps writing.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rooms = |node: &TestApp| {
        let url = node.http_url("/api/v1/admin/rooms");
        async move {
            let listed: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            listed["rooms"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(rooms(&nodes[1]).await, 0);
    a.push_text("t", "b");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = nodes[1].join("acme/unload").await;
    again
        .wait_for("both edits", TIMEOUT, |c| c.text("t") == "ab")
        .await
        .unwrap();
    a.push_text("t", "c");
    again
        .wait_for("the edit after the reload", TIMEOUT, |c| {
            c.text("t") == "abc"
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn the_admin_api_lists_the_live_nodes() {
    let (_services, nodes) = cluster::start(3, |_| {}).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let listed: Value = reqwest::get(nodes[2].http_url("/api/v1/admin/nodes"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = listed["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["node_id"].as_str())
            .collect();
        if ids == ["node-2", "node-0", "node-1"] {
            assert!(listed["cluster"]
                .as_str()
                .unwrap()
                .starts_with("tandem-test-"));
            assert!(listed["nodes"][1]["addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_redis_restart_loses_nothing_and_rooms_reconverge_without_reconnecting() {
    let mut redis = crate::support::redis::PrivateRedis::start();
    let services = Services {
        redis_url: redis.url(),
        ..Services::fresh().await
    };
    let nodes = services.nodes(2, |_| {}).await;
    let a = nodes[0].join_as("acme/bus", 21).await;
    let b = nodes[1].join_as("acme/bus", 22).await;
    a.push_text("t", "[before]");
    b.wait_for("the first edit", TIMEOUT, |c| c.text("t") == "[before]")
        .await
        .unwrap();

    redis.stop();
    // Writes go on being acknowledged: PostgreSQL is up.
    a.push_text("t", "[during]");
    assert_eq!(
        post_update(&nodes[0], "acme/bus", text_update(23, "[http]")).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.resume();
    // Node 1's room repairs itself from PostgreSQL once Redis is back; its client stays
    // connected throughout.
    b.wait_for("everything written while Redis was down", TIMEOUT, |c| {
        let t = c.text("t");
        t.contains("[during]") && t.contains("[http]")
    })
    .await
    .unwrap();
    assert!(b.close_info().is_none(), "{:?}", b.close_info());
    // And the bus carries edits and awareness again.
    a.push_text("t", "[after]");
    a.set_awareness(r#"{"back":true}"#).unwrap();
    b.wait_for("the edit and cursor after", TIMEOUT, |c| {
        c.text("t").contains("[after]") && c.awareness().contains_key(&21)
    })
    .await
    .unwrap();
    assert_eq!(a.text("t"), b.text("t"));
}

#[tokio::test]
async fn a_killed_node_s_clients_leave_the_others_and_its_acknowledged_writes_stay() {
    use crate::support::process::ServerProcess;
    use crate::support::Backing;
    let backing = Backing::postgres().await;
    let (redis, name) = (cluster::redis_url(), cluster::fresh_name());
    let flags = |id: &'static str| {
        vec![
            "--redis-url".to_owned(),
            redis.clone(),
            "--cluster-name".to_owned(),
            name.clone(),
            "--node-ttl-ms".to_owned(),
            "1500".to_owned(),
            "--node-id".to_owned(),
            id.to_owned(),
            "--lock-ttl-ms".to_owned(),
            "1500".to_owned(),
        ]
    };
    let args_a = flags("doomed");
    let args_b = flags("survivor");
    let doomed = ServerProcess::start(
        &backing,
        &args_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let survivor = ServerProcess::start(
        &backing,
        &args_b.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // Every log line of a node names it.
    assert_eq!(
        survivor.listening["node"], "survivor",
        "{}",
        survivor.listening
    );
    let ada = tandem_sync::client::Client::connect_with(
        &doomed.ws_url("acme/kill"),
        tandem_sync::client::ClientOptions {
            client_id: Some(31),
        },
    )
    .await
    .unwrap();
    ada.synced(TIMEOUT).await.unwrap();
    let bob = tandem_sync::client::Client::connect(&survivor.ws_url("acme/kill"))
        .await
        .unwrap();
    bob.synced(TIMEOUT).await.unwrap();
    ada.set_awareness(r#"{"user":{"name":"Ada"}}"#).unwrap();
    bob.wait_for("Ada's cursor", TIMEOUT, |c| c.awareness().contains_key(&31))
        .await
        .unwrap();
    // Ada also holds a lock, through her node.
    let resource = "acme/queries/kill#title";
    let lock = serde_json::json!({"action":"lock","resource":resource});
    let mut ada_dash =
        crate::support::Dash::connect(&doomed.dash_url("workspace=acme&user=ada")).await;
    ada_dash.send(lock.clone()).await;
    ada_dash.next_of("lock_acquired").await;
    let mut bob_dash =
        crate::support::Dash::connect(&survivor.dash_url("workspace=acme&user=bob")).await;
    bob_dash.send(lock.clone()).await;
    bob_dash.next_of("lock_denied").await;
    // The survivor lists Ada online through her node.
    let presence = survivor.http_url("/api/v1/presence?workspace=acme");
    let ada_listed = |listing: &Value| {
        listing["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["user_id"] == "ada").cloned())
    };
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let listing: Value = reqwest::get(&presence).await.unwrap().json().await.unwrap();
        if ada_listed(&listing).is_some_and(|ada| ada["status"] == "online") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listing}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bob_dash.subscribe(&["presence"], None).await;
    let http = reqwest::Client::new();
    for i in 0..10 {
        assert!(
            doomed
                .post(&http, "acme/kill", text_update(100 + i, &format!("[{i}]")))
                .await
        );
    }
    doomed.kill();
    // Within the node TTL (1.5 s) and a heartbeat, the survivor drops Ada and holds every
    // acknowledged write.
    bob.wait_for("Ada gone with her node", TIMEOUT, |c| {
        !c.awareness().contains_key(&31)
    })
    .await
    .unwrap();
    bob.wait_for("every acknowledged write", TIMEOUT, |c| {
        let t = c.text("t");
        (0..10).all(|i| t.contains(&format!("[{i}]")))
    })
    .await
    .unwrap();
    // Her presence goes with her node: offline, said on the survivor, listed so there.
    loop {
        let update = bob_dash.next_of("presence_update").await;
        if update["user_id"] == "ada" && update["status"] == "offline" {
            assert!(update["last_seen"].is_string(), "{update}");
            break;
        }
    }
    let listing: Value = reqwest::get(&presence).await.unwrap().json().await.unwrap();
    assert!(ada_listed(&listing).is_none(), "{listing}");
    // Her lock lapses with its TTL: Bob gets it.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        bob_dash.send(lock.clone()).await;
        let answer = bob_dash.next().await;
        if answer["type"] == "lock_acquired" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(ada_dash);
    let listed: Value = reqwest::get(survivor.http_url("/api/v1/admin/nodes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(ids, ["survivor"], "{listed}");
}

/// Publishes `payload` on `channel` of the test's Redis.
async fn publish_raw(channel: String, payload: Vec<u8>) {
    let client = redis::Client::open(cluster::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// Commits `update` of `doc` in the cluster's database as node `origin`'s `seq`, as a node
/// whose message about it was then lost.
async fn commit_behind_the_bus(
    services: &Services,
    doc: &str,
    origin: i64,
    seq: i64,
    update: Vec<u8>,
) {
    let (client, connection) =
        tokio_postgres::connect(&services.database_url, tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO doc_updates (doc, origin, seq, body) VALUES ($1, $2, $3, $4)",
            &[&doc, &origin, &seq, &update],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lost_update_is_repaired_from_postgres_on_the_next_message_or_heartbeat() {
    use tandem::cluster::wire::{DocBody, DocMessage, Heartbeat, NodeInfo};
    let (services, nodes) = cluster::start(1, |_| {}).await;
    let name = &services.name;
    let reader = nodes[0].join("acme/lost").await;
    // A node (origin 77) commits update 1, whose message is lost, then publishes update 2
    // naming 1 as its predecessor: the gap sends the room to PostgreSQL.
    let writer = yrs::Doc::with_client_id(77);
    let text = writer.get_or_insert_text("t");
    let edit = |s: &str| {
        use yrs::{Text, Transact};
        let mut txn = writer.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
        txn.encode_update_v1()
    };
    let (first, second, third) = (edit("one "), edit("two "), edit("three"));
    commit_behind_the_bus(&services, "acme/lost", 77, 1, first).await;
    commit_behind_the_bus(&services, "acme/lost", 77, 2, second.clone()).await;
    let message = DocMessage {
        origin: 77,
        body: DocBody::Update {
            seq: 2,
            prev: 1,
            update: second.into(),
        },
    };
    publish_raw(format!("{name}:doc:acme/lost"), message.encode().to_vec()).await;
    reader
        .wait_for("the lost update, repaired", TIMEOUT, |c| {
            c.text("t") == "one two "
        })
        .await
        .unwrap();

    // Its update 3 is committed and its message lost too: its heartbeat names it.
    commit_behind_the_bus(&services, "acme/lost", 77, 3, third).await;
    let heartbeat = Heartbeat {
        node: NodeInfo {
            node_id: "ghost".into(),
            origin: 77,
            addr: "127.0.0.1:1".into(),
            started_at: "2026-12-07T00:00:00Z".into(),
        },
        beat: 1,
        published: vec![("acme/lost".into(), 3)],
        told: Vec::new(),
        leaving: false,
    };
    publish_raw(
        format!("{name}:nodes"),
        serde_json::to_vec(&heartbeat).unwrap(),
    )
    .await;
    reader
        .wait_for("the last update, repaired", TIMEOUT, |c| {
            c.text("t") == "one two three"
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn events_published_on_every_node_reach_every_subscriber_once_in_order() {
    let (_services, nodes) = cluster::start(3, |_| {}).await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        let mut dash = node.dash("workspace=acme&user=watcher").await;
        dash.subscribe(&["workflows"], None).await;
        subscribers.push(dash);
    }
    // Ten publications on each node, all at once.
    let http = reqwest::Client::new();
    let mut posts = Vec::new();
    for round in 0..10 {
        for node in &nodes {
            let request = http
                .post(node.http_url("/api/v1/events?workspace=acme"))
                .json(&serde_json::json!({"type":"workflow_triggered","workflow_id":format!("wf-{round}")}))
                .send();
            posts.push(tokio::spawn(request));
        }
    }
    let mut acknowledged = Vec::new();
    for post in posts {
        let response = post.await.unwrap().unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        acknowledged.push(body["id"].as_u64().unwrap());
    }
    acknowledged.sort_unstable();
    acknowledged.dedup();
    assert_eq!(acknowledged.len(), 30);
    for (i, dash) in subscribers.iter_mut().enumerate() {
        let mut ids = Vec::new();
        while ids.len() < 30 {
            let event = dash.next_of("workflow_triggered").await;
            ids.push(event["id"].as_u64().unwrap());
        }
        assert_eq!(
            ids, acknowledged,
            "subscriber on node {i}: each once, in id order"
        );
        assert!(
            dash.next_within(Duration::from_millis(300)).await.is_none(),
            "nothing twice on node {i}"
        );
    }
    // The ids of the whole log (the watchers' presence events among them) have no gap.
    let mut late = nodes[2].dash("workspace=acme&user=late").await;
    let everything: Vec<u64> = late
        .subscribe(&["workflows", "presence"], Some(0))
        .await
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    let last = *acknowledged.last().unwrap();
    assert_eq!(
        everything[..last as usize],
        (1..=last).collect::<Vec<u64>>()
    );
    // A resume with `since` and a long-poll work on any node.
    let mut resumed = nodes[0].dash("workspace=acme&user=resumed").await;
    let replayed: Vec<u64> = resumed
        .subscribe(&["workflows"], Some(acknowledged[19]))
        .await
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    assert_eq!(replayed, acknowledged[20..]);
    let page: Value = reqwest::get(nodes[1].http_url(&format!(
        "/api/v1/events?workspace=acme&channels=workflows&since={}&timeout=1",
        acknowledged[26]
    )))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let polled: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    assert_eq!(polled, acknowledged[27..]);
}

#[tokio::test]
async fn a_lost_event_message_is_backfilled_from_postgres() {
    let (services, nodes) = cluster::start(2, |_| {}).await;
    let mut dash = nodes[1].dash("workspace=acme&user=watcher").await;
    dash.subscribe(&["workflows"], None).await;
    // An event committed by a node whose message was then lost: node 1 reads it from the
    // log within about a second, with nothing else published.
    let (client, connection) =
        tokio_postgres::connect(&services.database_url, tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let lost: i64 = client
        .query_one(
            r#"WITH bumped AS (
                   INSERT INTO event_counters AS c (workspace, last_id) VALUES ('acme', 1)
                   ON CONFLICT (workspace) DO UPDATE SET last_id = c.last_id + 1
                   RETURNING last_id
               )
               INSERT INTO events (workspace, id, at_ms, body, origin, seq)
               SELECT 'acme', last_id, 1, '{"type":"workflow_triggered","workflow_id":"lost"}', 99, 1
               FROM bumped RETURNING id"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A client that heard of it elsewhere resumes from it on node 0, which has not released
    // it yet: caught up from the log, not told to start over.
    let page: Value = reqwest::get(nodes[0].http_url(&format!(
        "/api/v1/events?workspace=acme&channels=workflows&since={lost}&timeout=0"
    )))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(page.get("resync_required").is_none(), "{page}");
    // Caught up to the log's end (the watcher's own presence event may follow the lost one).
    assert!(page["last_id"].as_i64() >= Some(lost), "{page}");
    let event = dash.next_of("workflow_triggered").await;
    assert_eq!(event["id"].as_i64(), Some(lost));
    assert_eq!(event["workflow_id"], "lost");
    // The next one, published on node 0, follows in order.
    let response = reqwest::Client::new()
        .post(nodes[0].http_url("/api/v1/events?workspace=acme"))
        .json(&serde_json::json!({"type":"workflow_triggered","workflow_id":"next"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let event = dash.next_of("workflow_triggered").await;
    assert!(event["id"].as_i64() > Some(lost), "{event}");
    assert_eq!(event["workflow_id"], "next");
}

#[tokio::test]
async fn a_lock_has_one_holder_across_the_cluster() {
    use serde_json::json;
    let (_services, nodes) = cluster::start(2, |c| c.lock_ttl_ms = 1_500).await;
    let resource = "acme/queries/7#title";
    let mut ada = nodes[0].dash("workspace=acme&user=ada&name=Ada").await;
    let mut bob = nodes[1].dash("workspace=acme&user=bob&name=Bob").await;
    bob.subscribe(&["presence"], None).await;

    ada.send(json!({"action":"lock","resource":resource})).await;
    assert_eq!(ada.next_of("lock_acquired").await["renewed"], false);
    bob.send(json!({"action":"lock","resource":resource})).await;
    let denied = bob.next_of("lock_denied").await;
    assert_eq!(
        denied["holder"],
        json!({"user_id": "ada", "name": "Ada"}),
        "{denied}"
    );
    assert!(denied["expires_at"].is_string());
    // Renewing is the holder sending lock again, on its own node.
    ada.send(json!({"action":"lock","resource":resource})).await;
    assert_eq!(ada.next_of("lock_acquired").await["renewed"], true);

    // Ada's connection goes: every node hears it, and the lock is Bob's to take.
    ada.close().await;
    let released = bob.next_of("lock_released").await;
    assert_eq!(released["reason"], "disconnect");
    bob.send(json!({"action":"lock","resource":resource})).await;
    assert_eq!(bob.next_of("lock_acquired").await["user_id"], "bob");

    // A holder that stops renewing loses it after the TTL, cluster-wide.
    let mut carol = nodes[0].dash("workspace=acme&user=carol").await;
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    carol
        .send(json!({"action":"lock","resource":resource}))
        .await;
    assert_eq!(carol.next_of("lock_acquired").await["user_id"], "carol");
}

#[tokio::test]
async fn the_cluster_s_metrics_are_exported() {
    let (_services, nodes) = cluster::start(2, |_| {}).await;
    let a = nodes[0].join_as("acme/metrics", 71).await;
    let b = nodes[1].join_as("acme/metrics", 72).await;
    a.push_text("t", "x");
    b.wait_for("the edit", TIMEOUT, |c| c.text("t") == "x")
        .await
        .unwrap();
    // Heartbeats time PostgreSQL every third of the TTL (500 ms here).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let text = reqwest::get(nodes[1].http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "tandem_cluster_bus_messages_total{direction=\"in\"}",
        "tandem_cluster_bus_messages_total{direction=\"out\"}",
        "tandem_cluster_nodes_alive",
        "tandem_cluster_postgres_roundtrip_seconds_count",
        "tandem_storage_flush_seconds_count{log=\"updates\"}",
    ] {
        assert!(text.contains(name), "{name} in\n{text}");
    }
}

#[tokio::test]
async fn compactions_on_one_node_lose_nothing_another_appends_meanwhile() {
    let (services, nodes) = cluster::start(2, |c| c.compact_after_updates = 3).await;
    let a = nodes[0].join_as("acme/compact", 51).await;
    let b = nodes[1].join_as("acme/compact", 52).await;
    let http = reqwest::Client::new();
    let compact = nodes[0].http_url("/api/v1/admin/rooms/acme/compact/compact");
    // Both nodes write (and compact every third update of their own), and node 0 is also
    // made to compact on demand, while node 1's updates keep committing.
    for i in 0..40 {
        a.push_text("t", &format!("<a{i}>"));
        b.push_text("t", &format!("<b{i}>"));
        if i % 5 == 0 {
            let response = http.post(&compact).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    }
    let all = |c: &tandem_sync::client::Client| {
        let t = c.text("t");
        (0..40).all(|i| t.contains(&format!("<a{i}>")) && t.contains(&format!("<b{i}>")))
    };
    all_see(&[&a, &b], "every edit", all).await;
    // An HTTP write waits for its node's group commit: what it covers is committed.
    assert_eq!(
        post_update(&nodes[0], "acme/x", text_update(1, "x")).await,
        200
    );
    assert_eq!(
        post_update(&nodes[1], "acme/x", text_update(2, "y")).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    // What PostgreSQL holds (snapshot and log) has every edit: a third node loads it cold.
    let third = services.node("node-2", |_| {}).await;
    let cold = third.join("acme/compact").await;
    assert!(all(&cold), "{}", cold.text("t"));
}

#[tokio::test]
async fn a_postgres_restart_under_writes_loses_nothing_and_lands_everything_once() {
    let postgres = crate::support::postgres::PrivatePostgres::start();
    let url = postgres.url();
    let services = Services::on(url.clone(), cluster::redis_url());
    let nodes = services
        .nodes(2, |config| config.storage_timeout_ms = 1_000)
        .await;
    let a = nodes[0].join_as("acme/pg", 61).await;
    let b = nodes[1].join_as("acme/pg", 62).await;
    a.push_text("t", "[a-up]");
    b.wait_for("the first edit", TIMEOUT, |c| c.text("t") == "[a-up]")
        .await
        .unwrap();

    postgres.stop();
    a.push_text("t", "[a-down]");
    b.push_text("t", "[b-down]");
    // Cursors are not held back behind the commits that wait for PostgreSQL.
    a.set_awareness(r#"{"user":{"name":"A"}}"#).unwrap();
    b.wait_for("A's cursor while PostgreSQL is down", TIMEOUT, |c| {
        c.awareness().contains_key(&61)
    })
    .await
    .unwrap();
    // Nothing is acknowledged while PostgreSQL is down.
    assert_eq!(
        post_update(&nodes[1], "acme/pg", text_update(63, "[http-down]")).await,
        503
    );
    postgres.resume();
    // Once it is back, the buffered updates commit and cross to the other node.
    let everything = |c: &tandem_sync::client::Client| {
        let t = c.text("t");
        ["[a-up]", "[a-down]", "[b-down]", "[http-down]"]
            .iter()
            .all(|part| t.contains(part))
    };
    all_see(
        &[&a, &b],
        "everything written while PostgreSQL was down",
        everything,
    )
    .await;
    assert_eq!(
        post_update(&nodes[0], "acme/pg", text_update(64, "[http-back]")).await,
        200
    );
    // Each update is in the log once.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let duplicates: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT origin, seq FROM doc_updates GROUP BY origin, seq HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(duplicates, 0);
}

/// What `GET path` on `node` answers.
async fn get_json(node: &TestApp, path: &str) -> Value {
    reqwest::get(node.http_url(path))
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

/// Waits until `GET path` on every node answers what `check` accepts.
async fn every_node_answers(
    nodes: &[TestApp],
    path: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    for node in nodes {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let answer = get_json(node, path).await;
            if check(&answer) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {} answers {answer}",
                node.addr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `user`'s entry in a presence listing.
fn listed<'a>(listing: &'a Value, user: &str) -> Option<&'a Value> {
    listing["users"]
        .as_array()?
        .iter()
        .find(|u| u["user_id"] == user)
}

#[tokio::test]
async fn presence_is_per_user_across_the_cluster() {
    use serde_json::json;
    let (_services, nodes) = cluster::start(3, |_| {}).await;
    let mut watcher = nodes[2].dash("workspace=acme&user=watcher").await;
    watcher.subscribe(&["presence"], None).await;
    let online = "/api/v1/presence?workspace=acme";

    // Ada comes online on node A: every node lists her.
    let ada_a = nodes[0].dash("workspace=acme&user=ada&name=Ada").await;
    every_node_answers(&nodes, online, "Ada online", |l| {
        listed(l, "ada").is_some_and(|u| u["status"] == "online" && u["name"] == "Ada")
    })
    .await;
    // She opens a second tab, on node B, and goes to a page there: every node sees where.
    let mut ada_b = nodes[1].dash("workspace=acme&user=ada&name=Ada").await;
    ada_b
        .send(json!({"action":"presence","status":"online","current_page":"/queries/9"}))
        .await;
    every_node_answers(&nodes, online, "Ada's page", |l| {
        listed(l, "ada").is_some_and(|u| u["current_page"] == "/queries/9")
    })
    .await;
    // Her first tab closes: still online, everywhere.
    ada_a.close().await;
    every_node_answers(&nodes, online, "Ada still online", |l| {
        listed(l, "ada").is_some_and(|u| u["status"] == "online")
    })
    .await;
    // Her last connection anywhere goes: offline, with when, everywhere.
    ada_b.close().await;
    every_node_answers(&nodes, online, "Ada gone", |l| listed(l, "ada").is_none()).await;
    every_node_answers(
        &nodes,
        "/api/v1/presence?workspace=acme&include_offline=true",
        "Ada offline since",
        |l| {
            listed(l, "ada").is_some_and(|u| u["status"] == "offline" && u["last_seen"].is_string())
        },
    )
    .await;

    // Each change was said once, by one node: online, her page, offline.
    let mut said = Vec::new();
    while said.last().map(|(status, _)| status) != Some(&"offline".to_owned()) {
        let update = watcher.next_of("presence_update").await;
        if update["user_id"] == "ada" {
            said.push((
                update["status"].as_str().unwrap_or_default().to_owned(),
                update["current_page"].clone(),
            ));
        }
    }
    assert_eq!(
        said,
        [
            ("online".to_owned(), Value::Null),
            ("online".to_owned(), json!("/queries/9")),
            ("offline".to_owned(), Value::Null),
        ]
    );
}

#[tokio::test]
async fn who_is_editing_is_seen_on_every_node() {
    use serde_json::json;
    let (_services, nodes) = cluster::start(3, |_| {}).await;
    let mut watcher = nodes[2].dash("workspace=acme&user=watcher").await;
    watcher.subscribe(&["presence"], None).await;
    let editing = "/api/v1/editing?workspace=acme";
    let doc = "acme/queries/9";
    let ada = nodes[0].join_as(doc, 81).await;
    ada.set_awareness(r#"{"user":{"name":"Ada"},"cursor":1}"#)
        .unwrap();
    every_node_answers(&nodes, editing, "Ada editing", |now| {
        now["documents"][0]["users"]
            == json!([{"user_id": "anonymous", "name": "Ada", "active": true}])
    })
    .await;
    let said = watcher.next_of("editing").await;
    assert_eq!(said["document"], doc);
    assert_eq!(said["query_id"], 9);
    // She leaves: the document goes, everywhere, said once more.
    ada.close().await;
    every_node_answers(&nodes, editing, "nobody editing", |now| {
        now["documents"] == json!([])
    })
    .await;
    let said = watcher.next_of("editing").await;
    assert_eq!(said["users"], json!([]), "{said}");
}

#[tokio::test]
async fn chat_badges_and_preferences_are_shared_across_the_cluster() {
    use serde_json::json;
    let (services, nodes) = cluster::start(3, |_| {}).await;
    let http = reqwest::Client::new();
    let publish = |node: &TestApp, event: Value| {
        http.post(node.http_url("/api/v1/events?workspace=acme"))
            .json(&event)
            .send()
    };
    let badges = "/api/v1/badges?workspace=acme&user=bob";
    // Bob is a user of the workspace, seen on node B.
    let mut bob_b = nodes[1].dash("workspace=acme&user=bob").await;
    bob_b.subscribe(&["chat_sessions"], None).await;
    every_node_answers(
        &nodes,
        "/api/v1/presence?workspace=acme",
        "Bob online",
        |l| listed(l, "bob").is_some(),
    )
    .await;

    // A message to everyone, published on node A: Bob's badge is pushed on node B and every
    // node counts it once.
    let chat = |session: u64| json!({"type":"new_chat_message","session_id":session,"message":"hi","sender":"ada"});
    let response = publish(&nodes[0], chat(9)).await.unwrap();
    assert_eq!(response.status(), 201);
    loop {
        let pushed = bob_b.next_of("chat_badges").await;
        if pushed["total"] == 1 {
            assert_eq!(pushed["unread"], json!({"9": 1}));
            break;
        }
    }
    // One more in another session, published on node C.
    let response = publish(&nodes[2], chat(10)).await.unwrap();
    assert_eq!(response.status(), 201);
    every_node_answers(&nodes, badges, "two unread", |b| {
        b["unread"] == json!({"9": 1, "10": 1})
    })
    .await;

    // Bob reads session 9 in a tab on node C: read everywhere.
    let mut bob_c = nodes[2].dash("workspace=acme&user=bob").await;
    bob_c.subscribe(&["chat_sessions"], None).await;
    bob_c
        .send(json!({"action":"mark_read","session_id":9}))
        .await;
    every_node_answers(&nodes, badges, "session 9 read", |b| {
        b["unread"] == json!({"10": 1})
    })
    .await;

    // Two preferences changed at once on two nodes: both hold, everywhere.
    let put = |node: &TestApp, realtime: Value| {
        http.put(node.http_url("/api/v1/preferences?workspace=acme&user=bob"))
            .json(&json!({ "realtime": realtime }))
            .send()
    };
    let (a, b) = tokio::join!(
        put(&nodes[0], json!({"agent_executed": false})),
        put(&nodes[1], json!({"query_started": false}))
    );
    assert_eq!(
        (a.unwrap().status().as_u16(), b.unwrap().status().as_u16()),
        (200, 200)
    );
    let both = |p: &Value| {
        p["realtime"]["agent_executed"] == false
            && p["realtime"]["query_started"] == false
            && p["realtime"]["query_completed"] == true
    };
    every_node_answers(
        &nodes,
        "/api/v1/preferences?workspace=acme&user=bob",
        "both preferences",
        both,
    )
    .await;
    // Node C honours them: a muted type is not pushed to Bob there, the others are.
    bob_c.subscribe(&["queries"], None).await;
    for event in [
        json!({"type":"query_started","query_id":1,"started_by":"ada"}),
        json!({"type":"query_completed","query_id":1,"result_count":3,"execution_time":0.5}),
    ] {
        let response = publish(&nodes[0], event).await.unwrap();
        assert_eq!(response.status(), 201);
    }
    let seen = bob_c.until("query_completed").await;
    assert!(
        !seen.iter().any(|frame| frame["type"] == "query_started"),
        "{seen:?}"
    );

    // A node that joins later reads the same from PostgreSQL.
    let late = services.node("late", |_| {}).await;
    let answer = get_json(&late, badges).await;
    assert_eq!(answer["unread"], json!({"10": 1}), "{answer}");
    let answer = get_json(&late, "/api/v1/preferences?workspace=acme&user=bob").await;
    assert!(both(&answer), "{answer}");
}

#[tokio::test]
async fn a_lost_roster_message_is_read_again_from_redis() {
    use tandem::cluster::wire::{Heartbeat, NodeInfo, RosterMessage};
    use tandem::dashboard::roster::Heard;
    let (services, nodes) = cluster::start(1, |_| {}).await;
    let name = &services.name;
    let mut watcher = nodes[0].dash("workspace=acme&user=watcher").await;
    watcher.subscribe(&["presence"], None).await;
    let ghost = NodeInfo {
        node_id: "ghost".into(),
        origin: 78,
        addr: "127.0.0.1:1".into(),
        started_at: "2026-12-07T00:00:00Z".into(),
    };
    let client = redis::Client::open(cluster::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    // The ghost node is alive (in the nodes' set) and has Ada online in the roster hash, as
    // its script would have written it, but the messages saying so were lost.
    let alive_until = tandem::clock::now_ms() + 60_000;
    redis::cmd("ZADD")
        .arg(format!("{name}:nodes"))
        .arg(alive_until)
        .arg(serde_json::to_string(&ghost).unwrap())
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let ada = r#"{"status":"online","name":"Ada","direct":true}"#;
    redis::cmd("HSET")
        .arg(format!("{name}:roster:acme"))
        .arg("78")
        .arg("2")
        .arg("78/n")
        .arg("1")
        .arg("78/p/ada")
        .arg(ada)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    // Its heartbeat names its last message about the workspace: the node reads the roster.
    let heartbeat = Heartbeat {
        node: ghost.clone(),
        beat: 1,
        published: Vec::new(),
        told: vec![("acme".into(), 2)],
        leaving: false,
    };
    publish_raw(
        format!("{name}:nodes"),
        serde_json::to_vec(&heartbeat).unwrap(),
    )
    .await;
    every_node_answers(
        &nodes,
        "/api/v1/presence?workspace=acme",
        "Ada, read back",
        |l| listed(l, "ada").is_some_and(|u| u["status"] == "online" && u["name"] == "Ada"),
    )
    .await;
    // Its next message (3, she leaves) is lost too, and 4 shows the gap: read again, she is
    // gone (the ghost speaks for nothing: this node's origin may be higher, so only the
    // listing is checked).
    redis::cmd("HSET")
        .arg(format!("{name}:roster:acme"))
        .arg("78")
        .arg("4")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    redis::cmd("HDEL")
        .arg(format!("{name}:roster:acme"))
        .arg("78/p/ada")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let fourth = RosterMessage {
        origin: 78,
        seq: 4,
        heard: Heard::Set {
            key: "n".into(),
            value: Some("1".into()),
        },
    };
    publish_raw(format!("{name}:events:acme"), fourth.encode().to_vec()).await;
    every_node_answers(&nodes, "/api/v1/presence?workspace=acme", "Ada gone", |l| {
        listed(l, "ada").is_none()
    })
    .await;
    drop(watcher);
}
