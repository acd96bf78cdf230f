//! `tandem-bench soak`: the crash campaign. It runs the real server itself, puts mixed load on
//! it — y-websocket editors on many documents, HTTP writers, HTTP pollers, an event publisher,
//! dashboard subscribers that resume with `since` — and SIGKILLs and restarts it at random
//! moments. After every restart it checks that nothing acknowledged is gone: every update an
//! HTTP write or poll was answered for, every update an editor sent over a live connection at
//! least a second before the kill, every event a publish was answered `201` for (with its id),
//! event ids gap-free and unique, presence settled. At the end every client must converge on the
//! server's text, which must hold every edit anyone made, and every subscriber must have received
//! every event once, in order. With `--kills 0` it is a steady soak, sampling the server's RSS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tandem_sync::client::Client;
use tokio_tungstenite::tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use crate::measure::rss_bytes;

/// Options of `tandem-bench soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// The `tandem` binary to run.
    #[arg(long)]
    pub server_bin: PathBuf,
    /// Its data directory (sled).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where its log goes (default: beside the data directory, `DATA_DIR.log`).
    #[arg(long)]
    pub server_log: Option<PathBuf>,
    /// The port it listens on.
    #[arg(long, default_value_t = 18700)]
    pub port: u16,
    /// SIGKILLs, at random moments of the run (0: a steady soak).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 300.0)]
    pub duration: f64,
    /// Documents edited.
    #[arg(long, default_value_t = 10)]
    pub docs: usize,
    /// y-websocket editors per document.
    #[arg(long, default_value_t = 3)]
    pub editors: usize,
    /// Edits per second of each editor, HTTP writer and poller.
    #[arg(long, default_value_t = 2.0)]
    pub edit_rate: f64,
    /// Clients writing with `POST …/update`.
    #[arg(long, default_value_t = 3)]
    pub http_writers: usize,
    /// Clients syncing with `POST …/sync`.
    #[arg(long, default_value_t = 3)]
    pub pollers: usize,
    /// Events published per second.
    #[arg(long, default_value_t = 10.0)]
    pub event_rate: f64,
    /// Dashboard subscribers (each a user of its own, present while connected).
    #[arg(long, default_value_t = 6)]
    pub subscribers: usize,
    /// Seconds between samples of the server's RSS.
    #[arg(long, default_value_t = 10.0)]
    pub sample_secs: f64,
    /// Seconds the server is left alone after the load (its rooms unload after their grace
    /// time), its RSS still sampled: what it keeps once nobody uses it.
    #[arg(long, default_value_t = 0.0)]
    pub settle_secs: f64,
    /// Seed of the kill times and pauses.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instead of the campaign: fill the data directory's disk by writing this file (on the
    /// same, small, filesystem) until it is full, check that writes are refused with 503 and
    /// `/readyz` fails while nothing stored is damaged, then free it and check the server
    /// recovers by itself.
    #[arg(long)]
    pub fill: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// More flags for `tandem serve` (after `--`).
    #[arg(last = true)]
    pub server_args: Vec<String>,
}

/// The outcome of `tandem-bench soak`.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub duration_secs: f64,
    pub kills: usize,
    pub restarts_checked: usize,
    pub ws_edits: u64,
    pub http_writes_acked: u64,
    pub polls_acked: u64,
    pub events_acked: u64,
    pub events_delivered: u64,
    /// Requests and frames the load sent, answered or not.
    pub inputs: u64,
    /// Acknowledged updates and events missing after a restart or at the end (must be 0).
    pub lost: u64,
    pub duplicate_events: u64,
    pub event_id_gaps: u64,
    pub clients_diverged: u64,
    pub presence_unsettled: u64,
    /// (seconds since start, RSS in MiB) of the server, through the load and the settling
    /// after it.
    pub rss_mib: Vec<(f64, f64)>,
    /// When the load stopped (seconds since start); later samples are of an idle server.
    pub load_stopped_secs: f64,
    /// The data directory's size at the end, in MiB.
    pub data_mib: f64,
    /// With `--fill`: what the server answered while its disk was full, and how long it took
    /// to recover once space came back.
    pub disk_full: Option<DiskFull>,
    pub problems: Vec<String>,
}

/// What `--fill` saw.
#[derive(Debug, Serialize, Default)]
pub struct DiskFull {
    /// Bytes written to fill the disk.
    pub ballast_bytes: u64,
    /// Status and `error` of each write tried while the disk was full.
    pub writes_while_full: Vec<(u16, String)>,
    /// Status and `error` of each event published while the disk was full.
    pub events_while_full: Vec<(u16, String)>,
    /// Status of `/readyz` while the disk was full.
    pub readyz_while_full: u16,
    /// Seconds from freeing the disk to `/readyz` answering 200 and a write succeeding.
    pub recovery_secs: Option<f64>,
}

const SECRET: &str = "soak-secret-0123456789abcdef0123456789abcdef";
const WORKSPACE: &str = "soak";

/// A small deterministic generator for kill times and pauses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The server process.
struct Server {
    args: SoakArgs,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Server {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.args.port)
    }

    async fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.args
                    .server_log
                    .clone()
                    .unwrap_or_else(|| self.args.data_dir.with_extension("log")),
            )
            .map_err(|e| format!("cannot open the server log: {e}"))?;
        let child = Command::new(&self.args.server_bin)
            .arg("serve")
            .args(["--bind", &format!("127.0.0.1:{}", self.args.port)])
            .arg("--data-dir")
            .arg(&self.args.data_dir)
            .args(["--auth-secret", SECRET, "--log-format", "json"])
            .args(["--max-connections-per-ip", "0"])
            .args(&self.args.server_args)
            .stdout(
                log.try_clone()
                    .map_err(|e| format!("cannot share the server log: {e}"))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.args.server_bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.base()))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err("the server did not become ready within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown, no last flush.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A token from `tandem token`.
fn token(bin: &PathBuf, sub: &str, role: &str) -> Result<String, String> {
    let out = Command::new(bin)
        .args([
            "token",
            "--secret",
            SECRET,
            "--sub",
            sub,
            "--workspace",
            WORKSPACE,
        ])
        .args(["--role", role, "--ttl-secs", "86400"])
        .output()
        .map_err(|e| format!("tandem token: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tandem token: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What the load did and what the server acknowledged, for the checks.
#[derive(Default)]
struct Ledger {
    /// Per document: every marker anyone wrote.
    written: HashMap<String, HashSet<String>>,
    /// Per document: markers whose loss would break a promise, with when that promise began
    /// (the answer to an HTTP write or poll; one second after an editor sent it on a live
    /// connection).
    promised: HashMap<String, Vec<(String, Instant)>>,
    /// Event id → its sequence number, for every `201`.
    events: BTreeMap<u64, u64>,
    /// Per subscriber: the event ids it received, in order.
    received: Vec<Vec<u64>>,
}

struct Shared {
    base: String,
    member: String,
    service: String,
    ledger: Mutex<Ledger>,
    stop: AtomicBool,
    inputs: AtomicU64,
    ws_edits: AtomicU64,
    http_acked: AtomicU64,
    polls_acked: AtomicU64,
}

impl Shared {
    fn wrote(&self, doc: &str, marker: &str) {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger
            .written
            .entry(doc.to_owned())
            .or_default()
            .insert(marker.to_owned());
    }

    fn promise(&self, doc: &str, marker: String, from: Instant) {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger
            .promised
            .entry(doc.to_owned())
            .or_default()
            .push((marker, from));
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn doc_name(i: usize) -> String {
    format!("{WORKSPACE}/doc-{i}")
}

/// Appends `marker` to text `t` of `doc`.
fn append(doc: &Doc, marker: &str) {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, marker);
}

fn text_of(doc: &Doc) -> String {
    let text = doc.get_or_insert_text("t");
    let txn = doc.transact();
    text.get_string(&txn)
}

/// A y-websocket editor: edits at the rate while connected (and offline too: what it typed
/// then goes up when it reconnects), reconnecting whenever the server goes.
async fn editor(shared: Arc<Shared>, doc_index: usize, me: usize, rate: f64) -> Doc {
    let name = doc_name(doc_index);
    let url = format!(
        "{}/ws/{name}?token={}",
        shared.base.replace("http://", "ws://"),
        shared.member
    );
    let doc = Doc::with_client_id(10_000 + me as u64);
    let mut client: Option<(Client, Instant)> = None;
    let mut n = 0u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    while !shared.stopped() {
        if client
            .as_ref()
            .is_some_and(|(c, _)| c.close_info().is_some())
        {
            client = None;
        }
        if client.is_none() {
            shared.inputs.fetch_add(1, Ordering::Relaxed);
            if let Ok(c) = Client::connect_doc(&url, doc.clone()).await {
                client = Some((c, Instant::now()));
            }
        }
        n += 1;
        let marker = format!("<e{me}.{n}>");
        append(&doc, &marker);
        shared.wrote(&name, &marker);
        shared.ws_edits.fetch_add(1, Ordering::Relaxed);
        shared.inputs.fetch_add(1, Ordering::Relaxed);
        if client.is_some() {
            shared.promise(&name, marker, Instant::now() + Duration::from_secs(1));
        }
        tokio::time::sleep(period).await;
    }
    // Closed, not dropped: a dropped client's socket task would keep the connection open.
    if let Some((client, _)) = client {
        client.close().await;
    }
    doc
}

/// Writes with `POST …/update`: its whole state each time (idempotent), promised once answered.
async fn http_writer(shared: Arc<Shared>, doc_index: usize, me: usize, rate: f64) {
    let name = doc_name(doc_index);
    let url = format!("{}/api/v1/docs/{name}/update", shared.base);
    let http = reqwest::Client::new();
    let doc = Doc::with_client_id(20_000 + me as u64);
    let mut n = 0u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    while !shared.stopped() {
        n += 1;
        let marker = format!("<h{me}.{n}>");
        append(&doc, &marker);
        shared.wrote(&name, &marker);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        shared.inputs.fetch_add(1, Ordering::Relaxed);
        let answer = http
            .post(&url)
            .bearer_auth(&shared.member)
            .body(update)
            .send()
            .await;
        if answer.is_ok_and(|a| a.status().is_success()) {
            shared.http_acked.fetch_add(1, Ordering::Relaxed);
            shared.promise(&name, marker, Instant::now());
        }
        tokio::time::sleep(period).await;
    }
}

/// Syncs with `POST …/sync` rounds, one edit each; what a `200` answered is promised.
async fn poller(shared: Arc<Shared>, doc_index: usize, me: usize, rate: f64) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let name = doc_name(doc_index);
    let url = format!("{}/api/v1/docs/{name}/sync", shared.base);
    let http = reqwest::Client::new();
    let doc = Doc::with_client_id(30_000 + me as u64);
    let mut n = 0u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut server_sv = StateVector::default();
    while !shared.stopped() {
        n += 1;
        let marker = format!("<p{me}.{n}>");
        append(&doc, &marker);
        shared.wrote(&name, &marker);
        let body = {
            use yrs::updates::encoder::Encode;
            let txn = doc.transact();
            json!({
                "client_id": doc.client_id().get(),
                "state_vector": b64.encode(txn.state_vector().encode_v1()),
                "update": b64.encode(txn.encode_state_as_update_v1(&server_sv)),
            })
        };
        shared.inputs.fetch_add(1, Ordering::Relaxed);
        let answer = http
            .post(&url)
            .bearer_auth(&shared.member)
            .json(&body)
            .send()
            .await;
        if let Ok(answer) = answer {
            if answer.status().is_success() {
                if let Ok(answer) = answer.json::<Value>().await {
                    let decode = |field: &str| {
                        answer[field]
                            .as_str()
                            .and_then(|s| base64::engine::general_purpose::URL_SAFE.decode(s).ok())
                    };
                    if let Some(update) = decode("update") {
                        if let Ok(update) = Update::decode_v1(&update) {
                            let _ = doc.transact_mut().apply_update(update);
                        }
                    }
                    if let Some(sv) = decode("state_vector") {
                        if let Ok(sv) = StateVector::decode_v1(&sv) {
                            server_sv = sv;
                        }
                    }
                    shared.polls_acked.fetch_add(1, Ordering::Relaxed);
                    shared.promise(&name, marker, Instant::now());
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Publishes `system_alert` events carrying their sequence number; a `201` records the id.
async fn publisher(shared: Arc<Shared>, rate: f64) {
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/events", shared.base);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut n = 0u64;
    while !shared.stopped() {
        n += 1;
        shared.inputs.fetch_add(1, Ordering::Relaxed);
        let answer = http
            .post(&url)
            .bearer_auth(&shared.service)
            .json(&json!({"type": "system_alert", "severity": "info", "message": format!("soak {n}")}))
            .send()
            .await;
        if let Ok(answer) = answer {
            if answer.status().as_u16() == 201 {
                if let Some(id) = answer
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_u64())
                {
                    let mut ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
                    ledger.events.insert(id, n);
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// The event ids in a frame: one event, or a batch of them.
fn ids_in(frame: &Value) -> Vec<u64> {
    match frame["type"].as_str() {
        Some("batch") => frame["events"]
            .as_array()
            .map(|events| events.iter().filter_map(|e| e["id"].as_u64()).collect())
            .unwrap_or_default(),
        Some("system_alert") => frame["id"].as_u64().into_iter().collect(),
        _ => Vec::new(),
    }
}

/// A dashboard subscriber of the `system` channel, present while connected, resuming with
/// `since` after every reconnect.
async fn subscriber(shared: Arc<Shared>, me: usize, token: String) {
    let url = format!(
        "{}/ws?token={token}",
        shared.base.replace("http://", "ws://")
    );
    let mut last: Option<u64> = None;
    while !shared.stopped() {
        shared.inputs.fetch_add(1, Ordering::Relaxed);
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&url).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let subscribe = json!({"action": "subscribe", "channels": ["system"], "since": last});
        let presence = json!({"action": "presence", "status": "online", "current_page": "/soak"});
        if socket
            .send(Message::Text(subscribe.to_string().into()))
            .await
            .is_err()
            || socket
                .send(Message::Text(presence.to_string().into()))
                .await
                .is_err()
        {
            continue;
        }
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
            let message = match next {
                Err(_) if shared.stopped() => break,
                Err(_) => continue,
                Ok(Some(Ok(message))) => message,
                Ok(_) => break,
            };
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if frame["type"] == "resync_required" {
                last = None;
            }
            let ids = ids_in(&frame);
            if let Some(id) = ids.last() {
                last = Some(*id);
            }
            let mut ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger.received[me].extend(ids);
        }
    }
}

/// The server's text of `doc`.
async fn server_text(http: &reqwest::Client, base: &str, token: &str, doc: &str) -> Option<String> {
    let bytes = http
        .get(format!("{base}/api/v1/docs/{doc}"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .bytes()
        .await
        .ok()?;
    let update = Update::decode_v1(&bytes).ok()?;
    let copy = Doc::new();
    copy.transact_mut().apply_update(update).ok()?;
    Some(text_of(&copy))
}

/// Every stored event of every channel in order, read with the long-poll from the start: its
/// id and, for this run's `system_alert`s, its sequence number; and the oldest id still kept
/// (retention trims the log's head).
async fn stored_events(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Option<(u64, Vec<(u64, Option<u64>)>)> {
    let mut since = 0u64;
    let mut floor = 1u64;
    let mut all = Vec::new();
    loop {
        let page: Value = http
            .get(format!("{base}/api/v1/events?since={since}&timeout=0"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        if page["resync_required"] == true && all.is_empty() {
            let oldest = page["oldest"].as_u64()?;
            if oldest > floor {
                floor = oldest;
                since = oldest - 1;
                continue;
            }
        }
        let events = page["events"].as_array()?;
        if events.is_empty() {
            return Some((floor, all));
        }
        for event in events {
            let id = event["id"].as_u64()?;
            let n = event["message"]
                .as_str()
                .filter(|_| event["type"] == "system_alert")
                .and_then(|m| m.strip_prefix("soak "))
                .and_then(|n| n.parse().ok());
            all.push((id, n));
            since = id;
        }
    }
}

struct Checks {
    restarts: usize,
    lost: u64,
    duplicates: u64,
    gaps: u64,
    unsettled: u64,
    problems: Vec<String>,
}

impl Checks {
    fn problem(&mut self, text: String) {
        eprintln!("soak: PROBLEM: {text}");
        if self.problems.len() < 50 {
            self.problems.push(text);
        }
    }

    /// After a restart: what was promised before `killed` is stored; event ids are gap-free
    /// and unique; every subscriber is listed online again.
    async fn after_restart(&mut self, shared: &Shared, killed: Instant, subscribers: usize) {
        self.restarts += 1;
        let http = reqwest::Client::new();
        let promised: Vec<(String, Vec<String>)> = {
            let ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger
                .promised
                .iter()
                .map(|(doc, markers)| {
                    let due = markers
                        .iter()
                        .filter(|(_, from)| *from <= killed)
                        .map(|(m, _)| m.clone())
                        .collect();
                    (doc.clone(), due)
                })
                .collect()
        };
        for (doc, due) in promised {
            match server_text(&http, &shared.base, &shared.member, &doc).await {
                Some(text) => {
                    let missing: Vec<&String> =
                        due.iter().filter(|m| !text.contains(m.as_str())).collect();
                    if !missing.is_empty() {
                        self.lost += missing.len() as u64;
                        self.problem(format!(
                            "restart {}: {doc} lost {} acknowledged edits, e.g. {}",
                            self.restarts,
                            missing.len(),
                            missing[0]
                        ));
                    }
                }
                None => self.problem(format!("restart {}: cannot read {doc}", self.restarts)),
            }
        }
        self.check_events(shared, &http).await;
        // Presence settles: every subscriber online again within 15 s.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let online = http
                .get(format!("{}/api/v1/presence", shared.base))
                .bearer_auth(&shared.member)
                .send()
                .await
                .ok();
            let users = match online {
                Some(r) => r.json::<Value>().await.ok(),
                None => None,
            };
            let count = users
                .as_ref()
                .and_then(|u| u["users"].as_array())
                .map(|users| {
                    users
                        .iter()
                        .filter(|u| {
                            u["user_id"]
                                .as_str()
                                .is_some_and(|id| id.starts_with("sub-"))
                                && u["status"] == "online"
                        })
                        .count()
                })
                .unwrap_or(0);
            if count == subscribers {
                break;
            }
            if Instant::now() > deadline {
                self.unsettled += 1;
                self.problem(format!(
                    "restart {}: {count} of {subscribers} subscribers listed online after 15 s",
                    self.restarts
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn check_events(&mut self, shared: &Shared, http: &reqwest::Client) {
        let Some((floor, stored)) = stored_events(http, &shared.base, &shared.service).await else {
            self.problem("cannot read the event log".into());
            return;
        };
        let ids: Vec<u64> = stored.iter().map(|(id, _)| *id).collect();
        let mut seen = HashSet::new();
        for pair in ids.windows(2) {
            if pair[1] != pair[0] + 1 {
                self.gaps += 1;
                self.problem(format!("event ids jump from {} to {}", pair[0], pair[1]));
            }
        }
        for id in &ids {
            if !seen.insert(*id) {
                self.duplicates += 1;
                self.problem(format!("event id {id} stored twice"));
            }
        }
        let by_id: HashMap<u64, Option<u64>> = stored.into_iter().collect();
        let acked: Vec<(u64, u64)> = {
            let ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger.events.iter().map(|(id, n)| (*id, *n)).collect()
        };
        // What retention trimmed is gone by design.
        for (id, n) in acked.into_iter().filter(|(id, _)| *id >= floor) {
            match by_id.get(&id) {
                Some(Some(stored)) if *stored == n => {}
                Some(other) => {
                    self.lost += 1;
                    self.problem(format!(
                        "event {id} was published as soak {n} but is stored as {other:?}"
                    ));
                }
                None => {
                    self.lost += 1;
                    self.problem(format!("acknowledged event {id} (soak {n}) is gone"));
                }
            }
        }
    }
}

/// One write of `marker` to `soak/disk` (the writer's whole state): status and `error`.
async fn disk_write(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    doc: &Doc,
    marker: &str,
) -> (u16, String) {
    append(doc, marker);
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    answer_of(
        http.post(format!("{base}/api/v1/docs/{WORKSPACE}/disk/update"))
            .bearer_auth(token)
            .body(update)
            .send()
            .await,
    )
    .await
}

async fn disk_publish(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    n: u64,
) -> (u16, String, Option<u64>) {
    let answer = http
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(token)
        .json(&json!({"type": "system_alert", "severity": "info", "message": format!("soak {n}"), "detail": "y".repeat(2048)}))
        .send()
        .await;
    match answer {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            (
                status,
                body["error"].as_str().unwrap_or("").to_owned(),
                body["id"].as_u64(),
            )
        }
        Err(e) => (0, e.to_string(), None),
    }
}

async fn answer_of(answer: reqwest::Result<reqwest::Response>) -> (u16, String) {
    match answer {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            (status, body["error"].as_str().unwrap_or("").to_owned())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// The `--fill` scenario.
async fn disk_full(args: SoakArgs, ballast: PathBuf) -> Result<SoakReport, String> {
    use std::io::Write;
    let member = token(&args.server_bin, "editor", "member")?;
    let service = token(&args.server_bin, "backend", "service")?;
    let started = Instant::now();
    let mut server = Server {
        http: reqwest::Client::new(),
        child: None,
        args,
    };
    server.start().await?;
    let base = server.base();
    let http = reqwest::Client::new();
    let doc = Doc::with_client_id(40_000);
    let mut problems = Vec::new();
    let mut report = DiskFull::default();
    let mut acked_markers = Vec::new();
    let mut acked_events = BTreeMap::new();
    let mut inputs = 0u64;
    let before = disk_write(&http, &base, &member, &doc, "<before>").await;
    inputs += 1;
    if before.0 != 200 {
        return Err(format!("the first write was answered {before:?}"));
    }
    acked_markers.push("<before>".to_owned());
    if let (201, _, Some(id)) = disk_publish(&http, &base, &service, 1).await {
        acked_events.insert(id, 1u64);
    }
    // Fill the disk.
    {
        let mut file = std::fs::File::create(&ballast)
            .map_err(|e| format!("cannot create {}: {e}", ballast.display()))?;
        for chunk in [1 << 20, 4096, 512] {
            let zeros = vec![0u8; chunk];
            while file.write_all(&zeros).is_ok() {
                report.ballast_bytes += chunk as u64;
            }
        }
        let _ = file.sync_all();
    }
    eprintln!(
        "soak: the disk is full ({} MiB of ballast)",
        report.ballast_bytes >> 20
    );
    // Large enough that the journal needs new pages (what is left of its last one takes a few
    // small writes).
    let padding = "x".repeat(2048);
    for n in 0..20 {
        inputs += 1;
        let marker = format!("<full-{n}>");
        let answer = disk_write(&http, &base, &member, &doc, &format!("{marker}{padding}")).await;
        if answer.0 == 200 {
            acked_markers.push(marker);
        }
        report.writes_while_full.push(answer);
        inputs += 1;
        let (status, error, id) = disk_publish(&http, &base, &service, 100 + n).await;
        if let Some(id) = id {
            acked_events.insert(id, 100 + n);
        }
        report.events_while_full.push((status, error));
    }
    report.readyz_while_full = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    for (status, error) in &report.writes_while_full {
        if *status == 200 {
            // It fitted after all: acknowledged, so it must stay.
            continue;
        }
        if *status != 503 || error != "storage_unavailable" {
            problems.push(format!(
                "a write on a full disk was answered {status} {error}"
            ));
        }
    }
    if report.readyz_while_full != 503 {
        problems.push(format!(
            "/readyz answered {} on a full disk",
            report.readyz_while_full
        ));
    }
    match server_text(&http, &base, &member, &format!("{WORKSPACE}/disk")).await {
        Some(text) if text.contains("<before>") => {}
        other => problems.push(format!("on a full disk the document reads {other:?}")),
    }
    // Free it: the server recovers by itself.
    std::fs::remove_file(&ballast).map_err(|e| format!("cannot remove the ballast: {e}"))?;
    let freed = Instant::now();
    let deadline = freed + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        inputs += 1;
        if ready && disk_write(&http, &base, &member, &doc, "<after>").await.0 == 200 {
            report.recovery_secs = Some(freed.elapsed().as_secs_f64());
            acked_markers.push("<after>".to_owned());
            break;
        }
        if Instant::now() > deadline {
            problems.push("the server did not recover within 60 s of the disk freeing".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let (201, _, Some(id)) = disk_publish(&http, &base, &service, 200).await {
        acked_events.insert(id, 200);
    }
    // And a crash after all that loses nothing.
    server.kill();
    server.start().await?;
    let mut lost = 0;
    let text = server_text(&http, &base, &member, &format!("{WORKSPACE}/disk"))
        .await
        .unwrap_or_default();
    for marker in &acked_markers {
        if !text.contains(marker.as_str()) {
            lost += 1;
            problems.push(format!("{marker} is gone after the restart"));
        }
    }
    let stored: HashMap<u64, Option<u64>> = stored_events(&http, &base, &service)
        .await
        .map(|(_, events)| events)
        .unwrap_or_default()
        .into_iter()
        .collect();
    for (id, n) in &acked_events {
        if stored.get(id) != Some(&Some(*n)) {
            lost += 1;
            problems.push(format!("event {id} (soak {n}) is gone after the restart"));
        }
    }
    server.kill();
    Ok(SoakReport {
        duration_secs: started.elapsed().as_secs_f64(),
        kills: 1,
        restarts_checked: 1,
        ws_edits: 0,
        http_writes_acked: acked_markers.len() as u64,
        polls_acked: 0,
        events_acked: acked_events.len() as u64,
        events_delivered: 0,
        inputs,
        lost,
        duplicate_events: 0,
        event_id_gaps: 0,
        clients_diverged: 0,
        presence_unsettled: 0,
        rss_mib: Vec::new(),
        load_stopped_secs: 0.0,
        data_mib: 0.0,
        disk_full: Some(report),
        problems,
    })
}

/// The `soak` scenario.
pub async fn run(mut args: SoakArgs) -> Result<SoakReport, String> {
    if let Some(ballast) = args.fill.take() {
        return disk_full(args, ballast).await;
    }
    if args.docs == 0 || args.edit_rate <= 0.0 || args.event_rate <= 0.0 {
        return Err("--docs, --edit-rate and --event-rate must be positive".into());
    }
    let member = token(&args.server_bin, "editor", "member")?;
    let service = token(&args.server_bin, "backend", "service")?;
    let subscriber_tokens: Vec<String> = (0..args.subscribers)
        .map(|i| token(&args.server_bin, &format!("sub-{i}"), "member"))
        .collect::<Result<_, _>>()?;
    let mut rng = Rng(args.seed.max(1));
    let total = Duration::from_secs_f64(args.duration);
    let mut kill_times: Vec<Duration> = (0..args.kills)
        .map(|_| total.mul_f64(0.05 + 0.85 * rng.unit()))
        .collect();
    kill_times.sort();
    let (docs, editors, subscribers) = (args.docs, args.editors, args.subscribers);
    let (edit_rate, event_rate) = (args.edit_rate, args.event_rate);
    let (http_writers, pollers) = (args.http_writers, args.pollers);
    let sample = Duration::from_secs_f64(args.sample_secs.max(0.5));
    let kills = args.kills;
    let mut server = Server {
        http: reqwest::Client::new(),
        child: None,
        args,
    };
    server.start().await?;
    let shared = Arc::new(Shared {
        base: server.base(),
        member,
        service,
        ledger: Mutex::new(Ledger {
            received: vec![Vec::new(); subscribers],
            ..Ledger::default()
        }),
        stop: AtomicBool::new(false),
        inputs: AtomicU64::new(0),
        ws_edits: AtomicU64::new(0),
        http_acked: AtomicU64::new(0),
        polls_acked: AtomicU64::new(0),
    });
    eprintln!(
        "soak: {docs} documents × {editors} editors, {http_writers} HTTP writers, {pollers} pollers at {edit_rate} Hz; {event_rate} events/s to {subscribers} subscribers; {kills} kills in {} s",
        total.as_secs_f64()
    );
    let mut editor_tasks = Vec::new();
    for d in 0..docs {
        for e in 0..editors {
            let me = d * editors + e;
            editor_tasks.push((
                d,
                tokio::spawn(editor(Arc::clone(&shared), d, me, edit_rate)),
            ));
        }
    }
    let mut others = Vec::new();
    for w in 0..http_writers {
        others.push(tokio::spawn(http_writer(
            Arc::clone(&shared),
            w % docs,
            w,
            edit_rate,
        )));
    }
    for p in 0..pollers {
        others.push(tokio::spawn(poller(
            Arc::clone(&shared),
            (p + 1) % docs,
            p,
            edit_rate,
        )));
    }
    others.push(tokio::spawn(publisher(Arc::clone(&shared), event_rate)));
    for (i, token) in subscriber_tokens.into_iter().enumerate() {
        others.push(tokio::spawn(subscriber(Arc::clone(&shared), i, token)));
    }

    let started = Instant::now();
    let mut checks = Checks {
        restarts: 0,
        lost: 0,
        duplicates: 0,
        gaps: 0,
        unsettled: 0,
        problems: Vec::new(),
    };
    let mut rss = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut kills_left = kill_times.into_iter().peekable();
    while started.elapsed() < total {
        let now = started.elapsed();
        if now >= next_sample {
            if let Some(pid) = server.pid() {
                if let Ok(bytes) = rss_bytes(pid) {
                    rss.push((now.as_secs_f64(), bytes as f64 / (1 << 20) as f64));
                }
            }
            next_sample += sample;
        }
        if kills_left.peek().is_some_and(|at| *at <= now) {
            kills_left.next();
            let killed = Instant::now();
            server.kill();
            eprintln!(
                "soak: kill {} at {:.1} s",
                checks.restarts + 1,
                now.as_secs_f64()
            );
            // Down for a moment: clients notice and retry meanwhile.
            tokio::time::sleep(Duration::from_millis(100 + rng.next() % 900)).await;
            server.start().await?;
            checks.after_restart(&shared, killed, subscribers).await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for task in others {
        let _ = task.await;
    }
    // Every editor reconnects once more and converges with the server, whose text must hold
    // every edit anyone made.
    let http = reqwest::Client::new();
    let mut diverged = 0u64;
    let mut docs_of: HashMap<usize, Vec<Doc>> = HashMap::new();
    for (d, task) in editor_tasks {
        if let Ok(doc) = task.await {
            docs_of.entry(d).or_default().push(doc);
        }
    }
    for (d, local_docs) in docs_of {
        let name = doc_name(d);
        let url = format!(
            "{}/ws/{name}?token={}",
            shared.base.replace("http://", "ws://"),
            shared.member
        );
        let mut clients = Vec::new();
        for doc in &local_docs {
            if let Ok(c) = Client::connect_doc(&url, doc.clone()).await {
                clients.push(c);
            }
        }
        let written: HashSet<String> = {
            let ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger.written.get(&name).cloned().unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let server_text = server_text(&http, &shared.base, &shared.member, &name)
                .await
                .unwrap_or_default();
            let converged = local_docs.iter().all(|doc| text_of(doc) == server_text);
            let complete = written.iter().all(|m| server_text.contains(m.as_str()));
            if converged && complete {
                break;
            }
            if Instant::now() > deadline {
                diverged += 1;
                let missing = written
                    .iter()
                    .filter(|m| !server_text.contains(m.as_str()))
                    .count();
                checks.problem(format!(
                    "{name}: clients {} the server after 30 s; {missing} edits missing from it",
                    if converged {
                        "agree with"
                    } else {
                        "differ from"
                    }
                ));
                checks.lost += missing as u64;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for client in clients {
            client.close().await;
        }
    }
    // Every subscriber received every stored event after its first, once, in order.
    checks.check_events(&shared, &http).await;
    let stored: Vec<u64> = stored_events(&http, &shared.base, &shared.service)
        .await
        .map(|(_, events)| events)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, n)| n.is_some())
        .map(|(id, _)| id)
        .collect();
    let mut delivered = 0u64;
    let received = {
        let ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.received.clone()
    };
    for (i, got) in received.iter().enumerate() {
        delivered += got.len() as u64;
        let mut seen = HashSet::new();
        let duplicates = got.iter().filter(|id| !seen.insert(**id)).count() as u64;
        if duplicates > 0 {
            checks.duplicates += duplicates;
            checks.problem(format!("subscriber {i} received {duplicates} events twice"));
        }
        if got.windows(2).any(|w| w[1] <= w[0]) {
            checks.problem(format!("subscriber {i} received events out of order"));
        }
        let (Some(first), Some(last)) = (got.first(), got.last()) else {
            continue;
        };
        let expected: Vec<u64> = stored
            .iter()
            .copied()
            .filter(|id| id >= first && id <= last)
            .collect();
        let missed = expected.iter().filter(|id| !seen.contains(*id)).count() as u64;
        if missed > 0 {
            checks.lost += missed;
            checks.problem(format!(
                "subscriber {i} missed {missed} of the events {first}..{last}"
            ));
        }
    }
    let load_stopped = started.elapsed();
    let settle_until = load_stopped + Duration::from_secs_f64(server.args.settle_secs);
    loop {
        if let Some(pid) = server.pid() {
            if let Ok(bytes) = rss_bytes(pid) {
                rss.push((
                    started.elapsed().as_secs_f64(),
                    bytes as f64 / (1 << 20) as f64,
                ));
            }
        }
        if started.elapsed() >= settle_until {
            break;
        }
        tokio::time::sleep(sample.min(settle_until - started.elapsed())).await;
    }
    let data_mib = dir_bytes(&server.args.data_dir) as f64 / (1 << 20) as f64;
    server.kill();
    let events_acked = {
        let ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.events.len() as u64
    };
    Ok(SoakReport {
        duration_secs: started.elapsed().as_secs_f64(),
        kills,
        restarts_checked: checks.restarts,
        ws_edits: shared.ws_edits.load(Ordering::Relaxed),
        http_writes_acked: shared.http_acked.load(Ordering::Relaxed),
        polls_acked: shared.polls_acked.load(Ordering::Relaxed),
        events_acked,
        events_delivered: delivered,
        inputs: shared.inputs.load(Ordering::Relaxed),
        lost: checks.lost,
        duplicate_events: checks.duplicates,
        event_id_gaps: checks.gaps,
        clients_diverged: diverged,
        presence_unsettled: checks.unsettled,
        rss_mib: rss,
        load_stopped_secs: load_stopped.as_secs_f64(),
        data_mib,
        disk_full: None,
        problems: checks.problems,
    })
}

pub fn print(r: &SoakReport) {
    println!("scenario              soak");
    println!(
        "ran                   {:.0} s, {} SIGKILLs, {} restarts checked",
        r.duration_secs, r.kills, r.restarts_checked
    );
    println!(
        "load held             {} editor edits, {} HTTP writes and {} polls acknowledged, {} events acknowledged, {} delivered",
        r.ws_edits, r.http_writes_acked, r.polls_acked, r.events_acked, r.events_delivered
    );
    println!("inputs tried          {}", r.inputs);
    println!(
        "lost                  {} (duplicate events {}, id gaps {}, diverged documents {}, presence unsettled {})",
        r.lost, r.duplicate_events, r.event_id_gaps, r.clients_diverged, r.presence_unsettled
    );
    if let Some(disk) = &r.disk_full {
        println!(
            "disk full             {} MiB of ballast; /readyz {}; writes {:?}; events {:?}",
            disk.ballast_bytes >> 20,
            disk.readyz_while_full,
            disk.writes_while_full,
            disk.events_while_full
        );
        match disk.recovery_secs {
            Some(secs) => println!("recovered             {secs:.1} s after the disk freed"),
            None => println!("recovered             no"),
        }
    }
    if !r.rss_mib.is_empty() {
        println!(
            "server RSS (MiB); the load stopped at {:.0} s; {:.1} MiB of data stored",
            r.load_stopped_secs, r.data_mib
        );
        for (at, mib) in &r.rss_mib {
            let idle = if *at > r.load_stopped_secs + 0.5 {
                "  (idle)"
            } else {
                ""
            };
            println!("  {at:>7.0} s  {mib:>7.1}{idle}");
        }
    }
    for problem in &r.problems {
        println!("problem: {problem}");
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
