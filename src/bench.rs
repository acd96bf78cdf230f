//! `tandem bench`: load scenarios against any y-websocket server, driven by `tandem-sync`'s
//! client. Every scenario is bounded in count and time and ends with a table (or `--json`).
//!
//! - `connect`: opens N connections over R rooms, each completing the sync handshake, and holds
//!   them idle; reports the connect rate, failures and, with `--server-pid`, the server's RSS
//!   per connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_sync::Client;
use tokio::sync::Semaphore;

/// `tandem bench` scenarios.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Open many idle, synced connections and measure connect rate and server memory.
    Connect(ConnectArgs),
}

/// Options of `tandem bench connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Server URL up to the room name (`ws://127.0.0.1:8000/ws`).
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,
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
            if json {
                let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
                println!("{text}");
            } else {
                print_connect(&report);
            }
            if report.failed > 0 {
                return Err(format!("{} connections failed", report.failed));
            }
            Ok(())
        }
    }
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
        let url = format!(
            "{}/bench-{}",
            args.url.trim_end_matches('/'),
            i % args.rooms
        );
        let permits = Arc::clone(&permits);
        let done = Arc::clone(&done);
        joins.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            let client = tokio::time::timeout(timeout, async {
                let client = Client::connect(&url).await.ok()?;
                client.synced(timeout).await.ok()?;
                Some(client)
            })
            .await
            .ok()
            .flatten();
            done.fetch_add(1, Ordering::Relaxed);
            client
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
    for client in clients {
        client.abort();
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
    fn reads_own_rss() {
        assert!(super::rss_bytes(std::process::id()).unwrap() > 0);
    }
}
