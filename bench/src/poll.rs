//! `tandem-bench poll`: the dashboard's degraded mode under load. N clients sync documents over
//! `POST /api/v1/docs/{doc}/sync` (no WebSocket at all), one round every `--interval-ms` each,
//! every round appending a marker to the shared text and sending a cursor. Reports the round
//! trip (which includes the durable append of the edit), rounds per second and the server's CPU
//! per round; then every client polls once more and each one's text must hold every marker made
//! to its document, or the run fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hdrhistogram::Histogram;
use serde::Serialize;
use tandem_sync::{AwarenessEntry, AwarenessUpdate};
use tokio::sync::Barrier;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use crate::measure::{cpu_seconds, print_cpu, print_latency, server_cpu, Latency};

const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Options of `tandem-bench poll`.
#[derive(Debug, clap::Args)]
pub struct PollArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Clients syncing over HTTP.
    #[arg(long, default_value_t = 100)]
    pub pollers: usize,
    /// Documents they share (`bench/poll-{run}-0` … `-{D-1}`, new names every run).
    #[arg(long, default_value_t = 10)]
    pub docs: usize,
    /// Milliseconds between one client's rounds (the dashboard polls every 2 s while busy).
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// Seconds of polling.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// PID of the server, to measure its CPU time per round.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of `tandem-bench poll`.
#[derive(Debug, Serialize)]
pub struct PollReport {
    pub pollers: usize,
    pub docs: usize,
    pub interval_ms: u64,
    pub duration_secs: f64,
    pub rounds: u64,
    pub errors: u64,
    pub rounds_per_sec: f64,
    #[serde(flatten)]
    pub latency: Latency,
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_round: Option<f64>,
    /// Markers made; each client's text must hold all of its document's.
    pub edits: u64,
    /// Clients whose final text lacked markers of their document.
    pub diverged: usize,
}

/// One client: its replica, and the server's state vector from its last answer.
struct Poller {
    doc: Doc,
    url: String,
    server_sv: StateVector,
    clock: u64,
}

impl Poller {
    /// One round: what the server lacks and a cursor go up, what the client lacks comes back.
    async fn round(&mut self, http: &reqwest::Client) -> Result<(), String> {
        let body = {
            let txn = self.doc.transact();
            self.clock += 1;
            let cursor = AwarenessUpdate {
                entries: vec![AwarenessEntry {
                    client_id: self.doc.client_id().get(),
                    clock: self.clock,
                    state: Some(format!(r#"{{"cursor":{}}}"#, self.clock).into()),
                }],
            };
            serde_json::json!({
                "client_id": self.doc.client_id().get(),
                "state_vector": BASE64URL.encode(txn.state_vector().encode_v1()),
                "update": BASE64URL.encode(txn.encode_state_as_update_v1(&self.server_sv)),
                "awareness": BASE64URL.encode(cursor.encode()),
            })
        };
        let response = http
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("sync answered {}", response.status()));
        }
        let answer: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        let field = |name: &str| {
            answer[name]
                .as_str()
                .ok_or_else(|| format!("the answer has no {name}"))
                .and_then(|text| BASE64URL.decode(text).map_err(|e| e.to_string()))
        };
        let update = Update::decode_v1(&field("update")?).map_err(|e| e.to_string())?;
        self.doc
            .transact_mut()
            .apply_update(update)
            .map_err(|e| e.to_string())?;
        self.server_sv =
            StateVector::decode_v1(&field("state_vector")?).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn append(&self, marker: &str) {
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        let end = text.len(&txn);
        text.insert(&mut txn, end, marker);
    }

    fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("t");
        text.get_string(&self.doc.transact())
    }
}

/// What one client did.
struct Done {
    doc: usize,
    histogram: Histogram<u64>,
    rounds: u64,
    errors: u64,
    edits: u64,
    text: String,
}

/// The `poll` scenario.
///
/// # Errors
/// Bad arguments.
pub async fn run(args: PollArgs) -> Result<PollReport, String> {
    if args.pollers == 0 || args.docs == 0 || args.interval_ms == 0 {
        return Err("--pollers, --docs and --interval-ms must be at least 1".into());
    }
    if args.duration <= 0.0 {
        return Err("--duration must be positive".into());
    }
    let base_url = args.url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    // Fresh documents every run: a server that ran this before holds the old ones, with the
    // client ids and clocks this run would reuse.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // The final rounds, all at once, stay within a sane number of sockets.
    let finishing = Arc::new(tokio::sync::Semaphore::new(256));
    let interval = Duration::from_millis(args.interval_ms);
    let duration = Duration::from_secs_f64(args.duration);
    // Every client has edited before any takes its final round; this task waits with them, to
    // read the clock and the server's CPU where the timed part ends.
    let edited = Arc::new(Barrier::new(args.pollers + 1));
    let cpu_before = args.server_pid.map(cpu_seconds).transpose()?;
    eprintln!(
        "poll: {} clients over {} documents, a round every {} ms each, for {} s",
        args.pollers, args.docs, args.interval_ms, args.duration
    );
    let start = Instant::now();
    let mut clients = Vec::with_capacity(args.pollers);
    for i in 0..args.pollers {
        let doc_index = i % args.docs;
        let mut poller = Poller {
            doc: Doc::with_client_id(i as u64 + 1),
            url: format!("{base_url}/api/v1/docs/bench/poll-{run}-{doc_index}/sync"),
            server_sv: StateVector::default(),
            clock: 0,
        };
        let (http, edited, finishing) = (http.clone(), Arc::clone(&edited), Arc::clone(&finishing));
        // Spread the clients over the interval, as independent browsers are.
        let offset = interval.mul_f64(i as f64 / args.pollers as f64);
        clients.push(tokio::spawn(async move {
            let mut done = Done {
                doc: doc_index,
                histogram: Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
                    .expect("static histogram bounds are valid"),
                rounds: 0,
                errors: 0,
                edits: 0,
                text: String::new(),
            };
            let mut next = tokio::time::Instant::from_std(start) + offset;
            while next.into_std() < start + duration {
                tokio::time::sleep_until(next).await;
                next += interval;
                poller.append(&format!("[{i}:{}]", done.edits));
                done.edits += 1;
                let sent = Instant::now();
                match poller.round(&http).await {
                    Ok(()) => {
                        done.rounds += 1;
                        let _ = done
                            .histogram
                            .record(sent.elapsed().as_nanos().max(1_000) as u64);
                    }
                    Err(err) => {
                        done.errors += 1;
                        eprintln!("poll: client {i}: {err}");
                    }
                }
            }
            edited.wait().await;
            // Its own last edits go up (a failed round's too), then everyone's come down.
            for _ in 0..2 {
                let permit = finishing.acquire().await;
                if let Err(err) = poller.round(&http).await {
                    done.errors += 1;
                    eprintln!("poll: client {i}, final round: {err}");
                }
                drop(permit);
                edited.wait().await;
            }
            done.text = poller.text();
            done
        }));
    }
    edited.wait().await;
    let polling = start.elapsed();
    let cpu_after = args.server_pid.map(cpu_seconds).transpose()?;
    eprintln!("poll: final rounds");
    for _ in 0..2 {
        edited.wait().await;
    }
    let mut finished = Vec::with_capacity(clients.len());
    for client in clients {
        finished.push(client.await.map_err(|e| e.to_string())?);
    }

    let mut made = vec![0u64; args.docs];
    for done in &finished {
        made[done.doc] += done.edits;
    }
    let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut rounds, mut errors, mut diverged) = (0, 0, 0);
    for done in &finished {
        histogram.add(&done.histogram).map_err(|e| e.to_string())?;
        rounds += done.rounds;
        errors += done.errors;
        if done.text.matches('[').count() as u64 != made[done.doc] {
            diverged += 1;
        }
    }
    let (server_cpu_secs, server_cpu_us_per_round) = server_cpu(cpu_before, cpu_after, rounds);
    Ok(PollReport {
        pollers: args.pollers,
        docs: args.docs,
        interval_ms: args.interval_ms,
        duration_secs: args.duration,
        rounds,
        errors,
        rounds_per_sec: rounds as f64 / polling.as_secs_f64(),
        latency: Latency::of(&histogram),
        server_cpu_secs,
        server_cpu_us_per_round,
        edits: made.iter().sum(),
        diverged,
    })
}

/// Prints the report as a table.
pub fn print(r: &PollReport) {
    println!("scenario              poll");
    println!(
        "load                  {} clients over {} documents, a round every {} ms each, {} s",
        r.pollers, r.docs, r.interval_ms, r.duration_secs
    );
    println!(
        "rounds                {} ({:.0}/s), {} errors",
        r.rounds, r.rounds_per_sec, r.errors
    );
    print_latency("round trip ms", &r.latency);
    print_cpu(r.server_cpu_secs, r.server_cpu_us_per_round, "round");
    println!("edits                 {}", r.edits);
    println!("DIVERGED              {} clients", r.diverged);
}
