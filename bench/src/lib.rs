//! `tandem-bench`: load scenarios against any Yjs server (Tandem, the reference y-websocket
//! server, Hocuspocus, y-sweet), built on `tandem-sync`'s codec and nothing of the server's.
//! Every scenario is bounded in count and time and ends with a table (or `--json`).
//!
//! # Layout
//! - [`connect`]: N idle, synced connections; connect rate and server memory per connection.
//! - [`fanout`]: writers edit at a fixed rate, everyone else measures send→receive latency and
//!   counts losses.
//! - [`replay`] (the `trace` scenario): an editing trace replayed through the server until an
//!   observer holds its final text.
//! - [`events`]: dashboard subscribers on `/ws`, events published over HTTP; publish→deliver
//!   latency and losses.
//! - [`poll`]: clients syncing documents over HTTP polling (degraded mode), each editing every
//!   round; round trips, server CPU per round, convergence.
//! - [`probe`]: the lightweight connection the socket scenarios drive (y-websocket or
//!   Hocuspocus framing); it keeps no document, so the bench costs little next to the server.
//! - [`trace`]: editing traces replayed into yrs updates (also used by the criterion benches).
//! - [`measure`]: server CPU and memory from `/proc`, latency percentiles.
//!
//! One update's path through `fanout`: a writer's yrs doc encodes an edit carrying a marker,
//! [`probe::ProbeSink::send_update`] frames it with `tandem_sync::message::encode_update`, and
//! each receiver finds the marker in the bytes it gets back and records the latency.

use serde::Serialize;

pub mod connect;
pub mod events;
pub mod fanout;
pub mod measure;
pub mod poll;
pub mod probe;
pub mod replay;
pub mod soak;
pub mod trace;

use probe::Framing;

/// The scenarios.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Open many idle, synced connections and measure connect rate and server memory.
    Connect(connect::ConnectArgs),
    /// Writers edit at a fixed rate; everyone else measures delivery latency and losses.
    Fanout(fanout::FanoutArgs),
    /// Replay an editing trace through the server and time it.
    Trace(replay::TraceArgs),
    /// Dashboard subscribers on /ws; events published over HTTP at a fixed rate.
    Events(events::EventsArgs),
    /// Clients syncing documents over HTTP polling, each editing every round.
    Poll(poll::PollArgs),
    /// Mixed load on a server it runs and SIGKILLs at random moments, checking after every
    /// restart that nothing acknowledged was lost (`--kills 0`: a steady soak with RSS samples).
    Soak(soak::SoakArgs),
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

/// Runs a scenario and prints its report.
///
/// # Errors
/// The scenario could not run at all (bad arguments, unreadable server memory).
pub async fn run(scenario: Scenario) -> Result<(), String> {
    match scenario {
        Scenario::Connect(args) => {
            let json = args.json;
            let report = connect::run(args).await?;
            emit(json, &report, connect::print)?;
            match report.failed {
                0 => Ok(()),
                failed => Err(format!("{failed} connections failed")),
            }
        }
        Scenario::Fanout(args) => {
            let json = args.json;
            let report = fanout::run(args).await?;
            emit(json, &report, fanout::print)?;
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
        Scenario::Soak(args) => {
            let json = args.json;
            let report = soak::run(args).await?;
            emit(json, &report, soak::print)?;
            let failed = report.lost
                + report.duplicate_events
                + report.event_id_gaps
                + report.clients_diverged
                + report.presence_unsettled;
            match failed {
                0 => Ok(()),
                _ => Err(format!(
                    "LOST {} acknowledged updates or events, {} problems in all",
                    report.lost,
                    report.problems.len()
                )),
            }
        }
        Scenario::Trace(args) => {
            let json = args.json;
            let report = replay::run(args).await?;
            emit(json, &report, replay::print)?;
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
fn emit<R: Serialize>(json: bool, report: &R, table: fn(&R)) -> Result<(), String> {
    if json {
        let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        table(report);
    }
    Ok(())
}
