//! `tandem-bench events`: the dashboard under load. N subscribers on `/ws` follow one channel
//! of one workspace; a publisher posts events to `POST /api/v1/events` at a fixed rate, each
//! carrying its sequence number; every subscriber measures publish→deliver latency (from just
//! before the HTTP request to the frame's arrival, so it includes the durable append, the
//! group commit and any batching) and every event that never arrives is reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::measure::{print_deliveries, server_cpu, Latency};

/// Options of `tandem-bench events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The server's base URL. Repeat it for the nodes of a cluster: subscribers and
    /// publications are spread over them in turn (so most events cross nodes).
    #[arg(long = "url", default_value = "http://127.0.0.1:8000", num_args = 1)]
    pub urls: Vec<String>,
    /// The workspace (for a server without authentication; tokens carry their own).
    #[arg(long, default_value = "bench")]
    pub workspace: String,
    /// Dashboard connections subscribed to the channel.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Events published per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publish requests in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to wait for stragglers after the last publication.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// A service token for publishing (none: the server runs without authentication).
    #[arg(long)]
    pub publisher_token: Option<String>,
    /// A member token for the subscribers (none: `?user=sub-N` on an open server).
    #[arg(long)]
    pub subscriber_token: Option<String>,
    /// PID of the server, to measure its CPU time per delivered event (repeat it for the
    /// nodes of a cluster: their CPU times are summed).
    #[arg(long = "server-pid", num_args = 1)]
    pub server_pids: Vec<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of `tandem-bench events`.
#[derive(Debug, Serialize)]
pub struct EventsReport {
    pub subscribers: usize,
    pub rate_hz: f64,
    pub duration_secs: f64,
    pub published: u64,
    pub publish_errors: u64,
    pub published_per_sec: f64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub delivered_per_sec: f64,
    /// WebSocket frames the subscribers received: fewer than deliveries when events were
    /// batched.
    pub frames: u64,
    #[serde(flatten)]
    pub latency: Latency,
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// The field that carries an event's sequence number through the server.
const SEQ_FIELD: &str = "\"bench_seq\":";

/// Every `"bench_seq":N` in a frame (one event or a batch of them).
fn sequences_in(text: &str, mut found: impl FnMut(u64)) {
    let mut rest = text;
    while let Some(at) = rest.find(SEQ_FIELD) {
        rest = &rest[at + SEQ_FIELD.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if let Ok(seq) = rest[..end].parse() {
            found(seq);
        }
        rest = &rest[end..];
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a subscriber and waits until its subscription is live.
async fn subscribe(url: &str) -> Result<Socket, String> {
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let subscribe = r#"{"action":"subscribe","channels":["workflows"]}"#;
    socket
        .send(Message::Text(subscribe.into()))
        .await
        .map_err(|e| e.to_string())?;
    let ack = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = socket.next().await {
            if let Ok(Message::Text(text)) = message {
                if text.contains(r#""type":"subscribed""#) {
                    return Ok(());
                }
            }
        }
        Err("closed before the subscription was acknowledged".to_string())
    })
    .await;
    match ack {
        Ok(Ok(())) => Ok(socket),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no subscription acknowledgement within 10 s".into()),
    }
}

/// What one subscriber saw.
struct Seen {
    histogram: Histogram<u64>,
    unique: u64,
    duplicates: u64,
    frames: u64,
}

async fn receive(
    mut socket: Socket,
    total: u64,
    sent_at: Arc<Vec<AtomicU64>>,
    base: Instant,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen {
        histogram: Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
            .expect("static histogram bounds are valid"),
        unique: 0,
        duplicates: 0,
        frames: 0,
    };
    let mut got = vec![false; total as usize];
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = socket.next() => match message {
                Some(Ok(message)) => message,
                _ => break,
            },
        };
        let Message::Text(text) = message else {
            continue;
        };
        seen.frames += 1;
        let now = base.elapsed().as_nanos() as u64;
        sequences_in(&text, |seq| {
            let Some(slot) = got.get_mut(seq as usize) else {
                return;
            };
            if std::mem::replace(slot, true) {
                seen.duplicates += 1;
                return;
            }
            seen.unique += 1;
            let sent = sent_at[seq as usize].load(Ordering::Acquire);
            if sent > 0 {
                let _ = seen
                    .histogram
                    .record(now.saturating_sub(sent - 1).max(1_000));
            }
        });
        if seen.unique == total {
            break;
        }
    }
    let _ = socket.close(None).await;
    seen
}

/// The `events` scenario.
///
/// # Errors
/// Bad arguments, or subscribers that could not connect.
pub async fn run(args: EventsArgs) -> Result<EventsReport, String> {
    if args.subscribers == 0 || args.concurrency == 0 {
        return Err("--subscribers and --concurrency must be at least 1".into());
    }
    if !(args.rate > 0.0 && args.duration > 0.0) {
        return Err("--rate and --duration must be positive".into());
    }
    let total = (args.rate * args.duration).ceil() as u64;
    if args.urls.is_empty() {
        return Err("need at least one --url".into());
    }
    let base_urls: Vec<String> = args
        .urls
        .iter()
        .map(|url| url.trim_end_matches('/').to_owned())
        .collect();

    eprintln!("events: connecting {} subscribers", args.subscribers);
    let connecting = Arc::new(Semaphore::new(64));
    let mut joins = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        // The node after the one its publications go to first, so events cross nodes.
        let ws_base = base_urls[(i + 1) % base_urls.len()]
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        let url = match &args.subscriber_token {
            Some(token) => format!("{ws_base}/ws?token={token}"),
            None => format!("{ws_base}/ws?workspace={}&user=sub-{i}", args.workspace),
        };
        let connecting = Arc::clone(&connecting);
        joins.push(tokio::spawn(async move {
            let _permit = connecting
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            subscribe(&url).await
        }));
    }
    let mut sockets = Vec::with_capacity(joins.len());
    for join in joins {
        sockets.push(join.await.map_err(|e| e.to_string())??);
    }

    let base = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu_before = crate::measure::total_cpu(&args.server_pids)?;
    let receivers: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            tokio::spawn(receive(
                socket,
                total,
                Arc::clone(&sent_at),
                base,
                stop_rx.clone(),
            ))
        })
        .collect();

    eprintln!(
        "events: publishing {total} events at {} Hz to {} subscribers",
        args.rate, args.subscribers
    );
    let http = reqwest::Client::new();
    let publish_urls: Vec<String> = base_urls
        .iter()
        .map(|base_url| match &args.publisher_token {
            Some(_) => format!("{base_url}/api/v1/events"),
            None => format!("{base_url}/api/v1/events?workspace={}", args.workspace),
        })
        .collect();
    let in_flight = Arc::new(Semaphore::new(args.concurrency));
    let published = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::with_capacity(total as usize);
    for seq in 0..total {
        ticks.tick().await;
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let body =
            format!(r#"{{"type":"workflow_triggered","workflow_id":"bench","bench_seq":{seq}}}"#);
        let mut request = http
            .post(&publish_urls[seq as usize % publish_urls.len()])
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = &args.publisher_token {
            request = request.bearer_auth(token);
        }
        let (sent_at, published, errors) = (
            Arc::clone(&sent_at),
            Arc::clone(&published),
            Arc::clone(&errors),
        );
        requests.push(tokio::spawn(async move {
            sent_at[seq as usize].store(base.elapsed().as_nanos() as u64 + 1, Ordering::Release);
            match request.send().await {
                Ok(response) if response.status() == 201 => {
                    published.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("events: publish answered {}", response.status());
                }
                Err(err) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("events: publish failed: {err}");
                }
            }
            drop(permit);
        }));
    }
    for request in requests {
        let _ = request.await;
    }
    let publishing = base.elapsed();
    let published = published.load(Ordering::Relaxed);
    let publish_errors = errors.load(Ordering::Relaxed);

    // Stragglers: subscribers that have everything finish on their own.
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    while Instant::now() < deadline && !receivers.iter().all(|r| r.is_finished()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let cpu_after = crate::measure::total_cpu(&args.server_pids)?;
    let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut delivered, mut duplicates, mut frames) = (0, 0, 0);
    for receiver in receivers {
        let seen = receiver.await.map_err(|e| e.to_string())?;
        histogram.add(&seen.histogram).map_err(|e| e.to_string())?;
        delivered += seen.unique;
        duplicates += seen.duplicates;
        frames += seen.frames;
    }
    let expected = published * args.subscribers as u64;
    let (server_cpu_secs, server_cpu_us_per_delivery) =
        server_cpu(cpu_before, cpu_after, delivered);
    Ok(EventsReport {
        subscribers: args.subscribers,
        rate_hz: args.rate,
        duration_secs: args.duration,
        published,
        publish_errors,
        published_per_sec: published as f64 / publishing.as_secs_f64(),
        expected_deliveries: expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates,
        delivered_per_sec: delivered as f64 / publishing.as_secs_f64(),
        frames,
        latency: Latency::of(&histogram),
        server_cpu_secs,
        server_cpu_us_per_delivery,
    })
}

/// Prints the report as a table.
pub fn print(r: &EventsReport) {
    println!("scenario              events");
    println!(
        "load                  {} subscribers, {} events/s for {} s",
        r.subscribers, r.rate_hz, r.duration_secs
    );
    println!(
        "published             {} ({:.0}/s), {} errors",
        r.published, r.published_per_sec, r.publish_errors
    );
    println!(
        "delivered             {} of {} ({:.0}/s) in {} frames",
        r.delivered, r.expected_deliveries, r.delivered_per_sec, r.frames
    );
    print_deliveries(
        r.lost,
        r.duplicates,
        &r.latency,
        (r.server_cpu_secs, r.server_cpu_us_per_delivery),
        "delivered event",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_found_in_single_events_and_batches() {
        let mut found = Vec::new();
        sequences_in(
            r#"{"type":"batch","events":[{"id":1,"bench_seq":7,"x":1},{"id":2,"bench_seq":12}]}"#,
            |seq| found.push(seq),
        );
        assert_eq!(found, [7, 12]);
    }
}
