//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/{target}/`) from real traffic: the
//! frames a y-websocket client sends while replaying the start of the B4 editing trace
//! (`benches/data/automerge-paper.json.gz`), awareness states as y-protocols writes them, the
//! dashboard's frames, HTTP bodies as the page and backends post them, and a valid token.
//!
//! `cargo run --example fuzz_seeds -- fuzz/corpus` (the fuzz targets' README says when to).

use std::path::{Path, PathBuf};

use base64::Engine;
use tandem::auth::{mint, Claims, Role, Secret};
use tandem_sync::hocuspocus;
use tandem_sync::message::{encode_awareness, encode_step1, encode_step2, encode_update};
use tandem_sync::{AuthMessage, AwarenessEntry, AwarenessUpdate, Message};

/// The secret `fuzz/fuzz_targets/jwt.rs` verifies with.
const JWT_SECRET: &str = "fuzzing-secret-0123456789abcdef0123456789abcdef";

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let trace =
        tandem_bench::trace::Trace::load(Path::new("benches/data/automerge-paper.json.gz"))?;
    // The first edits of the trace, one and ten per update, as a client sends them.
    let updates: Vec<Vec<u8>> = trace.updates(7, "t")?.into_iter().take(40).collect();
    let batched: Vec<Vec<u8>> = trace
        .updates_batched(8, "t", 10)?
        .into_iter()
        .take(8)
        .collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let states = [
        r##"{"user":{"name":"Ada","color":"#30bced","colorLight":"#30bced33"},"cursor":null}"##,
        r##"{"user":{"name":"Grace","color":"#6eeb83"},"cursor":{"anchor":{"type":null,"tname":"t","item":{"client":7,"clock":12},"assoc":0},"head":{"type":null,"tname":"t","item":{"client":7,"clock":15},"assoc":0}}}"##,
        r#"{"status":"active","page":"/queries/456"}"#,
        "null",
    ];
    let awareness: Vec<Vec<u8>> = states
        .iter()
        .enumerate()
        .map(|(i, state)| {
            AwarenessUpdate {
                entries: vec![AwarenessEntry {
                    client_id: 1000 + i as u64,
                    clock: i as u64 + 1,
                    state: (*state != "null").then(|| (*state).into()),
                }],
            }
            .encode()
        })
        .collect();
    let removal = AwarenessUpdate {
        entries: vec![AwarenessEntry {
            client_id: 1000,
            clock: 9,
            state: None,
        }],
    }
    .encode();

    // Frames, as y-websocket sends them.
    let mut frames: Vec<Vec<u8>> = vec![
        encode_step1(&[0]).to_vec(),
        encode_step1(&[1, 7, 40]).to_vec(),
        encode_step2(&updates[0]).to_vec(),
        encode_awareness(&removal).to_vec(),
        Message::QueryAwareness.encode(),
        Message::Auth(AuthMessage::PermissionDenied("read-only".into())).encode(),
        vec![102],
    ];
    frames.extend(updates.iter().map(|u| encode_update(u).to_vec()));
    frames.extend(batched.iter().map(|u| encode_update(u).to_vec()));
    frames.extend(awareness.iter().map(|a| encode_awareness(a).to_vec()));
    // Several messages in one frame.
    frames.push([encode_update(&updates[1]), encode_awareness(&awareness[0])].concat());
    write(&out, "sync_frame", &frames)?;
    // The same on Hocuspocus addresses, and what a provider and a server say besides.
    let mut hocuspocus_frames: Vec<Vec<u8>> = frames
        .iter()
        .take(12)
        .map(|f| hocuspocus::on_address("acme/queries/456", f))
        .collect();
    hocuspocus_frames.extend([
        hocuspocus::token(
            "acme/queries/456",
            "eyJhbGciOiJIUzI1NiJ9.e30.sig",
            Some("4.8.0"),
        ),
        hocuspocus::token("docs/alpha\0rwsess1", "", None),
        hocuspocus::authenticated("docs/alpha", hocuspocus::SCOPE_READ_ONLY),
        hocuspocus::permission_denied("docs/alpha", "forbidden: no access"),
        hocuspocus::stateless("docs/alpha", r#"{"saved":true}"#),
        hocuspocus::close("docs/alpha", None),
        hocuspocus::close("docs/alpha", Some("provider_initiated")),
        hocuspocus::sync_status("docs/alpha", true),
        vec![hocuspocus::PING],
        vec![hocuspocus::PONG],
    ]);
    write(&out, "hocuspocus_frame", &hocuspocus_frames)?;
    write(
        &out,
        "awareness",
        &[awareness.clone(), vec![removal.clone()]].concat(),
    )?;
    // Updates as clients send them, one edit and ten edits each, and a whole document.
    let mut whole = updates.clone();
    whole.extend(batched.iter().cloned());
    let merged = yrs::merge_updates_v1(&whole)?;
    write(
        &out,
        "update_v1",
        &[updates[..10].to_vec(), batched.clone(), vec![merged]].concat(),
    )?;

    // Rooms: sequences of records `[selector][len u16 LE][bytes]` (see fuzz/src/lib.rs).
    let record = |selector: u8, bytes: &[u8]| -> Vec<u8> {
        let mut out = vec![selector];
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
        out
    };
    let mut rooms = Vec::new();
    // A writer typing with its cursor, a reader trying to write, a poller, an HTTP update.
    let mut session = Vec::new();
    session.extend(record(0, &encode_step1(&[0])));
    for (i, update) in updates.iter().take(12).enumerate() {
        session.extend(record(0, &encode_update(update)));
        if i % 4 == 0 {
            session.extend(record(0, &encode_awareness(&awareness[i % 3])));
        }
    }
    session.extend(record(1, &encode_update(&updates[12])));
    session.extend(record(1, &encode_awareness(&awareness[3])));
    session.extend(record(2, &[0]));
    session.extend(record(3, &batched[0]));
    rooms.push(session);
    rooms.push(batched.iter().flat_map(|u| record(3, u)).collect());
    rooms.push(
        [
            record(0, &encode_awareness(&awareness[0])),
            record(0, &encode_awareness(&removal)),
        ]
        .concat(),
    );
    write(&out, "room", &rooms)?;

    // The dashboard's frames.
    let dashboard: Vec<Vec<u8>> = [
        r#"{"action":"subscribe","channels":["presence","queries"],"since":1234}"#,
        r#"{"action":"unsubscribe","channels":["queries"]}"#,
        r#"{"action":"ping"}"#,
        r##"{"action":"presence","status":"online","workspace":"queries","current_page":"/queries/456","name":"Ada","color":"#30bced"}"##,
        r#"{"action":"mark_read","session_id":999}"#,
        r#"{"action":"lock","resource":"acme/queries/456#title"}"#,
        r#"{"action":"unlock","resource":"acme/queries/456#title"}"#,
    ]
    .iter()
    .map(|f| f.as_bytes().to_vec())
    .collect();
    write(&out, "dashboard_frame", &dashboard)?;

    // HTTP bodies: the first byte picks the parser (0 sync, 1 event, 2 presence).
    let sync = serde_json::json!({
        "client_id": 1001,
        "state_vector": b64.encode([1, 7, 40]),
        "update": b64.encode(&updates[3]),
        "awareness": b64.encode(&awareness[1]),
    });
    let mut bodies = vec![[&[0u8][..], sync.to_string().as_bytes()].concat()];
    for event in [
        serde_json::json!({"type":"query_started","query_id":456,"started_by":123}),
        serde_json::json!({"type":"query_completed","query_id":456,"result_count":100,"execution_time":2.5}),
        serde_json::json!({"type":"new_chat_message","session_id":999,"message":"Hello, I need help","sender":"visitor","user_ids":["bob"]}),
        serde_json::json!({"type":"agent_executed","agent_id":789,"status":"completed","insights_found":3,"needs_approval":false}),
        serde_json::json!({"type":"system_alert","message":"disk almost full","severity":"critical"}),
    ] {
        bodies.push([&[1u8][..], event.to_string().as_bytes()].concat());
    }
    bodies.push(
        [
            &[2u8][..],
            br#"{"status":"idle","workspace":"queries","current_page":"/"}"#,
        ]
        .concat(),
    );
    write(&out, "http_bodies", &bodies)?;

    // A valid token of the jwt target's secret, and the shapes of broken ones.
    let secret: Secret = JWT_SECRET.parse().map_err(anyhow::Error::msg)?;
    let token = mint(
        &secret,
        &Claims {
            sub: "ada".into(),
            name: Some("Ada".into()),
            workspace: "acme".into(),
            plan: Some("scale".into()),
            role: Role::Member,
            docs: None,
            exp: 4_102_444_800,
            iat: Some(1_700_000_000),
            nbf: None,
        },
    )?;
    let tokens: Vec<Vec<u8>> = [
        token.clone(),
        token.replace('.', ""),
        format!("{token}."),
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZGEifQ.".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    write(&out, "jwt", &tokens)?;
    Ok(())
}

/// Writes `inputs` as `{out}/{target}/seed-NN`.
fn write(out: &Path, target: &str, inputs: &[Vec<u8>]) -> anyhow::Result<()> {
    let dir = out.join(target);
    std::fs::create_dir_all(&dir)?;
    for (i, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), input)?;
    }
    Ok(())
}
