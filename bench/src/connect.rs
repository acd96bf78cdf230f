//! `tandem-bench connect`: opens N connections over R rooms, each completing the sync handshake,
//! and holds them idle; reports the connect rate, failures and, with `--server-pid`, the
//! server's RSS per connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::measure::{mib, rss_bytes};
use crate::probe::Probe;
use crate::Protocol;

/// Options of `tandem-bench connect`.
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

/// The outcome of `tandem-bench connect`.
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

/// The `connect` scenario.
///
/// # Errors
/// Bad arguments, or the server's memory could not be read.
pub async fn run(args: ConnectArgs) -> Result<ConnectReport, String> {
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

/// Prints the report as a table.
pub fn print(report: &ConnectReport) {
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
