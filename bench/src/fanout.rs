//! `tandem-bench fanout`: writers make small text edits carrying a marker at a fixed rate; every
//! other client of the room measures send→receive latency; every update that never arrives is
//! reported (and fails the run).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use yrs::{Doc, Text, Transact};

use crate::measure::{print_deliveries, server_cpu, Latency};
use crate::probe::{Probe, ProbeStream};
use crate::Protocol;

/// Options of `tandem-bench fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Server URL up to the room name (`ws://127.0.0.1:8000/ws`); for Hocuspocus the server URL.
    /// Repeat it for the nodes of a cluster: each room's clients are spread over them in turn.
    #[arg(long = "url", default_value = "ws://127.0.0.1:8000/ws", num_args = 1)]
    pub urls: Vec<String>,
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
    /// PID of the server, to measure its CPU time per delivered update (repeat it for the
    /// nodes of a cluster: their CPU times are summed).
    #[arg(long = "server-pid", num_args = 1)]
    pub server_pids: Vec<u32>,
    /// Prefix of the room names, so runs do not share documents.
    #[arg(long, default_value = "fanout")]
    pub room_prefix: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of `tandem-bench fanout`.
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
    #[serde(flatten)]
    pub latency: Latency,
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
pub async fn run(args: FanoutArgs) -> Result<FanoutReport, String> {
    if args.urls.is_empty() {
        return Err("need at least one --url".into());
    }
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
            // Round-robin over the nodes, so a room's clients sit on different ones.
            let node = &args.urls[(room * args.clients + client) % args.urls.len()];
            let (url, framing) = args.protocol.endpoint(node, &doc);
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
    let cpu_before = crate::measure::total_cpu(&args.server_pids)?;

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
    let cpu_after = crate::measure::total_cpu(&args.server_pids)?;
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
        latency: Latency::of(&histogram),
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

/// Prints the report as a table.
pub fn print(r: &FanoutReport) {
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
    print_deliveries(
        r.lost,
        r.duplicates,
        &r.latency,
        (r.server_cpu_secs, r.server_cpu_us_per_delivery),
        "delivered update",
    );
}

#[cfg(test)]
mod tests {
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
