//! `tandem bench`: load scenarios against any y-websocket server, driven by `tandem-sync`'s
//! client. Every scenario is bounded in count and time and ends with a table (or `--json`).
//!
//! - `connect`: opens N connections over R rooms, each completing the sync handshake, and holds
//!   them idle; reports the connect rate, failures and, with `--server-pid`, the server's RSS
//!   per connection.
//! - `fanout`: writers make small text edits carrying a marker at a fixed rate; every other
//!   client of the room measures send→receive latency; every update that never arrives is
//!   reported (and fails the run).
//! - `trace`: replays an editing trace from one client while another observes, until the
//!   observer holds exactly the trace's final text.
//! - `events` ([`events`]): dashboard subscribers on `/ws`, events published over HTTP;
//!   publish→deliver latency and losses.
//! - `poll` ([`poll`]): clients syncing documents over HTTP polling (degraded mode), each
//!   editing every round; round-trip latency, server CPU per round, convergence.
//!
//! Load comes from [`tandem_sync::probe::Probe`]s, which keep no document, so the bench costs
//! little next to the server it measures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use tandem_sync::probe::{Framing, Probe, ProbeStream};
use tokio::sync::{watch, Semaphore};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

use crate::trace::Trace;

pub mod events;
pub mod poll;

/// `tandem bench` scenarios.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Open many idle, synced connections and measure connect rate and server memory.
    Connect(ConnectArgs),
    /// Writers edit at a fixed rate; everyone else measures delivery latency and losses.
    Fanout(FanoutArgs),
    /// Replay an editing trace through the server and time it.
    Trace(TraceArgs),
    /// Dashboard subscribers on /ws; events published over HTTP at a fixed rate.
    Events(events::EventsArgs),
    /// Clients syncing documents over HTTP polling, each editing every round.
    Poll(poll::PollArgs),
}

/// The wire protocol of the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// y-websocket: the document is the last URL segment (Tandem, the reference server, y-sweet).
    YWebsocket,
    /// Hocuspocus: one URL, the document named inside every message.
    Hocuspocus,
}

impl Protocol {
    /// The URL and framing of document `doc` on a server at `base`.
    fn endpoint(self, base: &str, doc: &str) -> (String, Framing) {
        let base = base.trim_end_matches('/');
        match self {
            Protocol::YWebsocket => (format!("{base}/{doc}"), Framing::YWebsocket),
            Protocol::Hocuspocus => (
                base.to_owned(),
                Framing::Hocuspocus {
                    document: doc.to_owned(),
                },
            ),
        }
    }
}

/// Options of `tandem bench connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Server URL up to the room name (`ws://127.0.0.1:8000/ws`); for Hocuspocus the server URL.
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,
    /// Wire protocol of the server.
    #[arg(long, value_enum, default_value_t = Protocol::YWebsocket)]
    pub protocol: Protocol,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Rooms to spread them over (`bench-0` … `bench-{R-1}`).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// PID of the server, to read its resident memory before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds to hold the connections idle before measuring memory.
    #[arg(long, default_value_t = 2)]
    pub hold_secs: u64,
    /// Seconds one handshake may take before it counts as failed.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of `tandem bench connect`.
#[derive(Debug, Serialize)]
pub struct ConnectReport {
    pub clients: usize,
    pub rooms: usize,
    pub connected: usize,
    pub failed: usize,
    pub elapsed_secs: f64,
    pub connects_per_sec: f64,
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_after_bytes: Option<u64>,
    pub server_rss_per_connection_bytes: Option<f64>,
}

/// Runs a scenario and prints its report.
///
/// # Errors
/// The scenario could not run at all (bad arguments, unreadable server memory).
pub async fn run(scenario: Scenario) -> Result<(), String> {
    match scenario {
        Scenario::Connect(args) => {
            let json = args.json;
            let report = connect(args).await?;
            emit(json, &report, print_connect)?;
            match report.failed {
                0 => Ok(()),
                failed => Err(format!("{failed} connections failed")),
            }
        }
        Scenario::Fanout(args) => {
            let json = args.json;
            let report = fanout(args).await?;
            emit(json, &report, print_fanout)?;
            match report.lost {
                0 => Ok(()),
                lost => Err(format!("LOST {lost} updates")),
            }
        }
        Scenario::Events(args) => {
            let json = args.json;
            let report = events::run(args).await?;
            emit(json, &report, events::print)?;
            match (report.lost, report.publish_errors) {
                (0, 0) => Ok(()),
                (lost, errors) => Err(format!("LOST {lost} deliveries, {errors} publish errors")),
            }
        }
        Scenario::Poll(args) => {
            let json = args.json;
            let report = poll::run(args).await?;
            emit(json, &report, poll::print)?;
            match (report.diverged, report.errors) {
                (0, 0) => Ok(()),
                (diverged, errors) => Err(format!(
                    "{diverged} clients DIVERGED, {errors} rounds failed"
                )),
            }
        }
        Scenario::Trace(args) => {
            let json = args.json;
            let report = trace(args).await?;
            emit(json, &report, print_trace)?;
            match (&report.matches_end_content, &report.observer_ended) {
                (true, _) => Ok(()),
                (false, Some(how)) => Err(format!(
                    "the observer did not end with the trace's final text: its connection {how}"
                )),
                (false, None) => Err("the observer did not end with the trace's final text".into()),
            }
        }
    }
}

/// Prints a report as JSON or as the scenario's table.
pub(crate) fn emit<R: Serialize>(json: bool, report: &R, table: fn(&R)) -> Result<(), String> {
    if json {
        let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        table(report);
    }
    Ok(())
}

/// The `connect` scenario.
///
/// # Errors
/// Bad arguments, or the server's memory could not be read.
pub async fn connect(args: ConnectArgs) -> Result<ConnectReport, String> {
    if args.clients == 0 || args.rooms == 0 || args.concurrency == 0 {
        return Err("--clients, --rooms and --concurrency must be at least 1".into());
    }
    let rss_before = args.server_pid.map(rss_bytes).transpose()?;
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let done = Arc::new(AtomicUsize::new(0));
    let timeout = Duration::from_secs(args.timeout_secs);
    let started = Instant::now();
    let mut joins = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (url, framing) = args
            .protocol
            .endpoint(&args.url, &format!("bench-{}", i % args.rooms));
        let permits = Arc::clone(&permits);
        let done = Arc::clone(&done);
        joins.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            let probe = tokio::time::timeout(timeout, async {
                let mut probe = Probe::connect(&url, framing).await.ok()?;
                probe.handshake(timeout).await.ok()?;
                Some(probe)
            })
            .await
            .ok()
            .flatten();
            done.fetch_add(1, Ordering::Relaxed);
            // Keep reading, so the connection answers the server's pings while it idles.
            probe.map(|probe| {
                let (sink, mut stream) = probe.split();
                let reader =
                    tokio::spawn(async move { while stream.next_message().await.is_some() {} });
                (sink, reader)
            })
        }));
    }
    let progress = tokio::spawn({
        let done = Arc::clone(&done);
        let total = args.clients;
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                eprint!("\rconnect: {}/{total}", done.load(Ordering::Relaxed));
            }
        }
    });
    let mut clients = Vec::with_capacity(args.clients);
    for join in joins {
        if let Ok(Some(client)) = join.await {
            clients.push(client);
        }
    }
    let elapsed = started.elapsed();
    progress.abort();
    eprintln!("\rconnect: {}/{} done", clients.len(), args.clients);

    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let rss_after = args.server_pid.map(rss_bytes).transpose()?;
    let connected = clients.len();
    let per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if connected > 0 => {
            Some(after.saturating_sub(before) as f64 / connected as f64)
        }
        _ => None,
    };
    for (sink, reader) in clients {
        reader.abort();
        drop(sink);
    }
    Ok(ConnectReport {
        clients: args.clients,
        rooms: args.rooms,
        connected,
        failed: args.clients - connected,
        elapsed_secs: elapsed.as_secs_f64(),
        connects_per_sec: connected as f64 / elapsed.as_secs_f64(),
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: rss_after,
        server_rss_per_connection_bytes: per_connection,
    })
}

fn print_connect(report: &ConnectReport) {
    println!("scenario              connect");
    println!(
        "connections           {} over {} rooms",
        report.clients, report.rooms
    );
    println!(
        "connected / failed    {} / {}",
        report.connected, report.failed
    );
    println!("elapsed               {:.2} s", report.elapsed_secs);
    println!("connects/s            {:.0}", report.connects_per_sec);
    if let (Some(before), Some(after)) = (
        report.server_rss_before_bytes,
        report.server_rss_after_bytes,
    ) {
        println!(
            "server RSS            {:.1} MiB -> {:.1} MiB",
            mib(before),
            mib(after)
        );
    }
    if let Some(per) = report.server_rss_per_connection_bytes {
        println!("server RSS/connection {:.1} KiB", per / 1024.0);
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Options of `tandem bench fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Server URL up to the room name (`ws://127.0.0.1:8000/ws`); for Hocuspocus the server URL.
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,
    /// Wire protocol of the server.
    #[arg(long, value_enum, default_value_t = Protocol::YWebsocket)]
    pub protocol: Protocol,
    /// Rooms (documents).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Clients per room, writers included.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Writers per room.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Edits per second per writer.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of writing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for stragglers after the last write before counting losses.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// PID of the server, to measure its CPU time per delivered update.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Prefix of the room names, so runs do not share documents.
    #[arg(long, default_value = "fanout")]
    pub room_prefix: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of `tandem bench fanout`.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub protocol: Protocol,
    pub rooms: usize,
    pub clients_per_room: usize,
    pub writers_per_room: usize,
    pub rate_hz: f64,
    pub duration_secs: f64,
    pub sent: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub delivered_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// What one receiving connection saw.
struct Received {
    histogram: Histogram<u64>,
    unique: u64,
    duplicates: u64,
}

/// Markers ride inside the inserted text: STX, 16 hex digits of the update's index, ETX. They
/// appear verbatim in the update bytes, so receivers find them without decoding the CRDT.
const MARK_START: u8 = 0x02;
const MARK_END: u8 = 0x03;
const MARK_LEN: usize = 18;

fn marker(index: u64) -> String {
    format!("\u{2}{index:016x}\u{3}")
}

fn markers_in(bytes: &[u8], mut found: impl FnMut(u64)) {
    let mut i = 0;
    while i + MARK_LEN <= bytes.len() {
        if bytes[i] == MARK_START && bytes[i + MARK_LEN - 1] == MARK_END {
            let digits = &bytes[i + 1..i + MARK_LEN - 1];
            if let Some(index) = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u64::from_str_radix(d, 16).ok())
            {
                found(index);
                i += MARK_LEN;
                continue;
            }
        }
        i += 1;
    }
}

/// The `fanout` scenario.
///
/// # Errors
/// Bad arguments, or connections that could not be opened.
pub async fn fanout(args: FanoutArgs) -> Result<FanoutReport, String> {
    if args.rooms == 0 || args.clients == 0 || args.writers == 0 || args.writers > args.clients {
        return Err("need --rooms >= 1 and 1 <= --writers <= --clients".into());
    }
    if !(args.rate > 0.0 && args.duration > 0.0) {
        return Err("--rate and --duration must be positive".into());
    }
    let per_writer = (args.rate * args.duration).ceil() as u64;
    let total_writers = (args.rooms * args.writers) as u64;
    let timeout = Duration::from_secs(10);

    // Connect everything first, so connection setup is not measured as latency.
    eprintln!("fanout: connecting {} clients", args.rooms * args.clients);
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut joins = Vec::new();
    for room in 0..args.rooms {
        for client in 0..args.clients {
            let doc = format!("{}-{room}", args.room_prefix);
            let (url, framing) = args.protocol.endpoint(&args.url, &doc);
            let permits = Arc::clone(&permits);
            joins.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
                let mut probe = Probe::connect(&url, framing)
                    .await
                    .map_err(|e| format!("connect {url}: {e}"))?;
                probe
                    .handshake(timeout)
                    .await
                    .map_err(|e| format!("handshake {url}: {e}"))?;
                Ok::<_, String>((room, client, probe))
            }));
        }
    }
    let mut probes = Vec::with_capacity(joins.len());
    for join in joins {
        probes.push(join.await.map_err(|e| e.to_string())??);
    }

    let base = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new(
        (0..total_writers * per_writer)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu_before = args.server_pid.map(cpu_seconds).transpose()?;

    let mut receivers = Vec::new();
    let mut writers = Vec::new();
    for (room, client, probe) in probes {
        let (sink, stream) = probe.split();
        let own = (client < args.writers).then(|| (room * args.writers + client) as u64);
        let room_writers = (room * args.writers) as u64..((room + 1) * args.writers) as u64;
        let expected = args.writers as u64 * per_writer - own.map_or(0, |_| per_writer);
        receivers.push(tokio::spawn(receive(
            stream,
            ReceiveSpec {
                own,
                room_writers,
                per_writer,
                expected,
            },
            Arc::clone(&sent_at),
            base,
            stop_rx.clone(),
        )));
        if let Some(writer) = own {
            let sent_at = Arc::clone(&sent_at);
            let interval = Duration::from_secs_f64(1.0 / args.rate);
            writers.push(tokio::spawn(async move {
                let mut sink = sink;
                let doc = Doc::with_client_id(1_000_000 + writer);
                let text = doc.get_or_insert_text("t");
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut sent = 0u64;
                for n in 0..per_writer {
                    ticks.tick().await;
                    let index = writer * per_writer + n;
                    let update = {
                        let mut txn = doc.transact_mut();
                        text.insert(&mut txn, 0, &marker(index));
                        txn.encode_update_v1()
                    };
                    sent_at[index as usize]
                        .store(base.elapsed().as_nanos() as u64 + 1, Ordering::Release);
                    if sink.send_update(&update).await.is_err() {
                        break;
                    }
                    sent += 1;
                }
                (sent, sink)
            }));
        } else {
            drop(sink);
        }
    }
    eprintln!(
        "fanout: {} writers at {} Hz for {} s",
        total_writers, args.rate, args.duration
    );
    let mut sent = 0;
    let mut sinks = Vec::new();
    for writer in writers {
        let (count, sink) = writer.await.map_err(|e| e.to_string())?;
        sent += count;
        sinks.push(sink);
    }
    let writing = base.elapsed();
    // Let stragglers arrive; receivers that have everything finish on their own.
    let deadline = tokio::time::sleep(Duration::from_secs_f64(args.drain));
    tokio::pin!(deadline);
    let mut results = Vec::new();
    let mut pending = receivers;
    loop {
        let all_done = pending.iter().all(|r| r.is_finished());
        if all_done {
            break;
        }
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let _ = stop_tx.send(true);
    let cpu_after = args.server_pid.map(cpu_seconds).transpose()?;
    for receiver in pending.drain(..) {
        results.push(receiver.await.map_err(|e| e.to_string())?);
    }
    for sink in sinks {
        sink.close().await;
    }

    let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut delivered, mut duplicates, mut expected) = (0, 0, 0);
    for (received, wanted) in &results {
        histogram
            .add(&received.histogram)
            .map_err(|e| e.to_string())?;
        delivered += received.unique;
        duplicates += received.duplicates;
        expected += wanted;
    }
    // Only what was actually sent can be expected.
    let unsent = total_writers * per_writer - sent;
    let expected = expected.saturating_sub(unsent * (args.clients as u64 - 1));
    let (server_cpu_secs, server_cpu_us_per_delivery) =
        server_cpu(cpu_before, cpu_after, delivered);
    let [latency_p50_ms, latency_p95_ms, latency_p99_ms, latency_max_ms] = latencies_ms(&histogram);
    Ok(FanoutReport {
        protocol: args.protocol,
        rooms: args.rooms,
        clients_per_room: args.clients,
        writers_per_room: args.writers,
        rate_hz: args.rate,
        duration_secs: args.duration,
        sent,
        expected_deliveries: expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates,
        delivered_per_sec: delivered as f64 / writing.as_secs_f64(),
        latency_p50_ms,
        latency_p95_ms,
        latency_p99_ms,
        latency_max_ms,
        server_cpu_secs,
        server_cpu_us_per_delivery,
    })
}

struct ReceiveSpec {
    /// This connection's own writer index, whose echoes are ignored.
    own: Option<u64>,
    room_writers: std::ops::Range<u64>,
    per_writer: u64,
    expected: u64,
}

async fn receive(
    mut stream: ProbeStream,
    spec: ReceiveSpec,
    sent_at: Arc<Vec<AtomicU64>>,
    base: Instant,
    mut stop: watch::Receiver<bool>,
) -> (Received, u64) {
    let mut received = Received {
        // Latencies in nanoseconds, 1 µs to 60 s.
        histogram: Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
            .expect("static histogram bounds are valid"),
        unique: 0,
        duplicates: 0,
    };
    let mut seen = HashSet::with_capacity(spec.expected as usize);
    while received.unique < spec.expected {
        let frame: Bytes = tokio::select! {
            _ = stop.changed() => break,
            frame = stream.next_message() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        let now = base.elapsed().as_nanos() as u64;
        markers_in(&frame, |index| {
            let writer = index / spec.per_writer.max(1);
            if Some(writer) == spec.own || !spec.room_writers.contains(&writer) {
                return;
            }
            if !seen.insert(index) {
                received.duplicates += 1;
                return;
            }
            received.unique += 1;
            let sent = sent_at
                .get(index as usize)
                .map_or(0, |s| s.load(Ordering::Acquire));
            if sent > 0 {
                let _ = received
                    .histogram
                    .record(now.saturating_sub(sent - 1).max(1_000));
            }
        });
    }
    (received, spec.expected)
}

fn print_fanout(r: &FanoutReport) {
    println!("scenario              fanout ({:?})", r.protocol);
    println!(
        "load                  {} rooms x {} clients, {} writer(s)/room at {} Hz for {} s",
        r.rooms, r.clients_per_room, r.writers_per_room, r.rate_hz, r.duration_secs
    );
    println!("updates sent          {}", r.sent);
    println!(
        "delivered             {} of {} ({:.0}/s)",
        r.delivered, r.expected_deliveries, r.delivered_per_sec
    );
    println!("LOST                  {}", r.lost);
    println!("duplicates            {}", r.duplicates);
    println!(
        "latency ms            p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        r.latency_p50_ms, r.latency_p95_ms, r.latency_p99_ms, r.latency_max_ms
    );
    if let (Some(cpu), Some(per)) = (r.server_cpu_secs, r.server_cpu_us_per_delivery) {
        println!("server CPU            {cpu:.2} s, {per:.1} µs per delivered update");
    }
}

/// Options of `tandem bench trace`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Server URL up to the room name; for Hocuspocus the server URL.
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,
    /// Wire protocol of the server.
    #[arg(long, value_enum, default_value_t = Protocol::YWebsocket)]
    pub protocol: Protocol,
    /// The trace (`.json` or `.json.gz`, the editing-traces format).
    #[arg(long, default_value = "benches/data/automerge-paper.json.gz")]
    pub file: PathBuf,
    /// Edits per update (1 = one update per edit).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Document name (a fresh one per run by default).
    #[arg(long)]
    pub doc: Option<String>,
    /// Seconds before giving up.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of `tandem bench trace`.
#[derive(Debug, Serialize)]
pub struct TraceReport {
    pub protocol: Protocol,
    pub file: String,
    pub edits: usize,
    pub updates: usize,
    pub batch: usize,
    pub elapsed_secs: f64,
    pub edits_per_sec: f64,
    pub matches_end_content: bool,
    /// How the observer's connection ended, when it ended before the final text arrived.
    pub observer_ended: Option<String>,
}

/// The `trace` scenario.
///
/// # Errors
/// The trace cannot be read or replayed, or the connections fail.
pub async fn trace(args: TraceArgs) -> Result<TraceReport, String> {
    let trace = Trace::load(&args.file).map_err(|e| e.to_string())?;
    let writer_id = 7_000_001;
    let updates = trace
        .updates_batched(writer_id, "t", args.batch.max(1))
        .map_err(|e| e.to_string())?;
    let doc_name = args.doc.clone().unwrap_or_else(|| {
        format!(
            "trace-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        )
    });
    let (url, framing) = args.protocol.endpoint(&args.url, &doc_name);
    let timeout = Duration::from_secs(args.timeout_secs);

    // The observer keeps a real document and checks it against the trace's end.
    let mut observer = Probe::connect(&url, framing.clone())
        .await
        .map_err(|e| e.to_string())?;
    observer
        .handshake(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let (_observer_sink, observer_stream) = observer.split();
    let end_content = trace.end_content.clone();
    let observe = tokio::spawn(observe_until(observer_stream, end_content));

    let mut writer = Probe::connect(&url, framing)
        .await
        .map_err(|e| e.to_string())?;
    writer
        .handshake(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sink, mut writer_stream) = writer.split();
    // Servers echo to the writer too (the reference server does); keep reading so its socket
    // never fills.
    let drain = tokio::spawn(async move { while writer_stream.next_message().await.is_some() {} });

    eprintln!(
        "trace: {} edits as {} updates",
        trace.edit_count(),
        updates.len()
    );
    let started = Instant::now();
    for chunk in updates.chunks(256) {
        for update in chunk {
            sink.feed_update(update).await.map_err(|e| e.to_string())?;
        }
        sink.flush().await.map_err(|e| e.to_string())?;
    }
    let (matches, observer_ended) = match tokio::time::timeout(timeout, observe).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("the observer did not catch up within {timeout:?}")),
    };
    let elapsed = started.elapsed();
    sink.close().await;
    drain.abort();
    Ok(TraceReport {
        protocol: args.protocol,
        file: args.file.display().to_string(),
        edits: trace.edit_count(),
        updates: updates.len(),
        batch: args.batch.max(1),
        elapsed_secs: elapsed.as_secs_f64(),
        edits_per_sec: trace.edit_count() as f64 / elapsed.as_secs_f64(),
        matches_end_content: matches,
        observer_ended,
    })
}

/// Applies every update that arrives until the text is exactly `end_content` (true), or the
/// connection ends first (false, with how it ended). The caller bounds it with a timeout.
async fn observe_until(mut stream: ProbeStream, end_content: String) -> (bool, Option<String>) {
    // The socket is read by its own task into an unbounded queue, as a browser buffers what it
    // receives: the observer never makes the server wait, however fast the writer goes.
    let (frames, mut queue) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let reader = tokio::spawn(async move {
        while let Some(frame) = stream.next_message().await {
            if frames.send(frame).is_err() {
                break;
            }
        }
        stream.ended().map(str::to_owned)
    });
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut matched = false;
    while let Some(frame) = queue.recv().await {
        for item in tandem_sync::MessageReader::new(frame) {
            let Ok((message, _)) = item else { break };
            let update = match message {
                tandem_sync::Message::Sync(tandem_sync::SyncMessage::Update(u))
                | tandem_sync::Message::Sync(tandem_sync::SyncMessage::Step2(u)) => u,
                _ => continue,
            };
            if let Ok(update) = Update::decode_v1(&update) {
                let _ = doc.transact_mut().apply_update(update);
            }
        }
        // The length is cheap; the text is compared only when it matches.
        let txn = doc.transact();
        if text.len(&txn) as usize == end_content.len() && text.get_string(&txn) == end_content {
            matched = true;
            break;
        }
    }
    if matched {
        reader.abort();
        return (true, None);
    }
    // The queue ran dry: the reader has finished and says how the connection ended.
    (false, reader.await.ok().flatten())
}

fn print_trace(r: &TraceReport) {
    println!("scenario              trace ({:?})", r.protocol);
    println!("file                  {}", r.file);
    println!(
        "edits / updates       {} / {} ({} per update)",
        r.edits, r.updates, r.batch
    );
    println!("elapsed               {:.2} s", r.elapsed_secs);
    println!("edits/s               {:.0}", r.edits_per_sec);
    println!(
        "final text            {}",
        if r.matches_end_content {
            "matches"
        } else {
            "DIFFERS"
        }
    );
    if let Some(how) = &r.observer_ended {
        println!("observer              {how}");
    }
}

/// The server's CPU seconds between two readings, and per delivery.
pub(crate) fn server_cpu(
    before: Option<f64>,
    after: Option<f64>,
    delivered: u64,
) -> (Option<f64>, Option<f64>) {
    let cpu = before.zip(after).map(|(a, b)| b - a);
    let per = cpu
        .filter(|_| delivered > 0)
        .map(|cpu| cpu * 1e6 / delivered as f64);
    (cpu, per)
}

/// p50, p95, p99 and max of a histogram of nanoseconds, in milliseconds.
pub(crate) fn latencies_ms(histogram: &Histogram<u64>) -> [f64; 4] {
    let ms = |ns: u64| ns as f64 / 1e6;
    [
        ms(histogram.value_at_quantile(0.50)),
        ms(histogram.value_at_quantile(0.95)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.max()),
    ]
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/{pid}/stat`.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read the CPU time of process {pid}: {e}"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| "malformed /proc stat".to_string())
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; sysconf would need libc.
    100.0
}

/// Resident memory of a process, from `/proc/{pid}/status`.
fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read the memory of process {pid}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_rss_and_cpu() {
        assert!(super::rss_bytes(std::process::id()).unwrap() > 0);
        assert!(super::cpu_seconds(std::process::id()).unwrap() >= 0.0);
    }

    #[test]
    fn markers_are_found_inside_update_bytes() {
        use yrs::{Doc, Text, Transact};
        let doc = Doc::with_client_id(3);
        let text = doc.get_or_insert_text("t");
        let update = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, &super::marker(0x1234));
            text.insert(&mut txn, 0, &super::marker(7));
            txn.encode_update_v1()
        };
        let mut found = Vec::new();
        super::markers_in(&update, |i| found.push(i));
        found.sort();
        assert_eq!(found, vec![7, 0x1234]);
    }
}
