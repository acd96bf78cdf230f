//! `tandem-bench trace`: replays an editing trace from one client while another observes, until
//! the observer holds exactly the trace's final text.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tandem_sync::{Message, MessageReader, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

use crate::probe::{Probe, ProbeStream};
use crate::trace::Trace;
use crate::Protocol;

/// Options of `tandem-bench trace`.
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

/// The outcome of `tandem-bench trace`.
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
pub async fn run(args: TraceArgs) -> Result<TraceReport, String> {
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
        for item in MessageReader::new(frame) {
            let Ok((message, _)) = item else { break };
            let update = match message {
                Message::Sync(SyncMessage::Update(u)) | Message::Sync(SyncMessage::Step2(u)) => u,
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

/// Prints the report as a table.
pub fn print(r: &TraceReport) {
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
