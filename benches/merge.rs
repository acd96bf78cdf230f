//! Merge throughput and cold load, on the real automerge-paper editing trace (259,778 edits;
//! see `benches/data/README.md` for its origin and license).
//!
//! - `trace/one_update_per_edit`: every edit as its own sync-update frame through
//!   `Room::receive`, the path a WebSocket frame takes (decode, apply, persist list, forward).
//! - `trace/one_merged_update`: the finished document as one update into an empty room.
//! - `trace/inspect_*`: the check every update passes before yrs decodes it
//!   (`tandem_sync::inspect_v1`), alone: its share of the two above.
//! - `codec/*`: encode/decode of sync messages.
//! - `cold_load/*`: the finished document read from sled and loaded into a room.
//! - `versions/*`: what version history costs on the trace's document: a version's size (the
//!   whole document, printed once), reading a version as JSON, and computing the restore of
//!   the document as it was halfway through the trace (the edits, from the finished text).
//!
//! Run: `cargo bench --bench merge` (figures land in `target/criterion/`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tandem_bench::trace::Trace;
use tandem_crdt::{Access, Outbox, PeerId, Room, RoomLimits};
use tandem_storage::{DocStore, SledStore};
use tandem_sync::message::encode_update;
use yrs::{ReadTxn, StateVector, Transact};

fn trace_frames() -> (Trace, Vec<Bytes>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data/automerge-paper.json.gz");
    let trace = Trace::load(&path).expect("trace");
    let frames = trace
        .updates(1, "t")
        .expect("replay")
        .iter()
        .map(|u| encode_update(u))
        .collect();
    (trace, frames)
}

fn final_state(frames: &[Bytes]) -> Vec<u8> {
    let mut room = Room::new(RoomLimits::default());
    for frame in frames {
        let mut outbox = Outbox::default();
        room.receive(PeerId(1), frame.clone(), Access::ReadWrite, &mut outbox)
            .expect("apply");
    }
    let state = room
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    state
}

fn trace(c: &mut Criterion) {
    let (trace, frames) = trace_frames();
    let mut group = c.benchmark_group("trace");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(trace.edit_count() as u64));
    group.bench_function("one_update_per_edit", |b| {
        b.iter_batched(
            || Room::new(RoomLimits::default()),
            |mut room| {
                for frame in &frames {
                    let mut outbox = Outbox::default();
                    room.receive(PeerId(1), frame.clone(), Access::ReadWrite, &mut outbox)
                        .expect("apply");
                    assert_eq!(outbox.broadcast.len(), 1);
                }
                room
            },
            BatchSize::PerIteration,
        )
    });
    let merged = Bytes::from(final_state(&frames));
    group.bench_function("one_merged_update", |b| {
        b.iter_batched(
            || Room::new(RoomLimits::default()),
            |mut room| {
                room.apply_update(merged.clone()).expect("apply");
                room
            },
            BatchSize::PerIteration,
        )
    });
    // The updates the frames carry.
    let updates: Vec<Bytes> = trace
        .updates(1, "t")
        .expect("replay")
        .into_iter()
        .map(Bytes::from)
        .collect();
    group.bench_function("inspect_every_update", |b| {
        b.iter(|| {
            for update in &updates {
                tandem_sync::inspect_v1(std::hint::black_box(update)).expect("passes");
            }
        })
    });
    group.bench_function("inspect_merged_update", |b| {
        b.iter(|| tandem_sync::inspect_v1(std::hint::black_box(&merged)).expect("passes"))
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [32usize, 1024, 64 * 1024] {
        let payload = vec![7u8; size];
        let frame = encode_update(&payload);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("encode_update/{size}"), |b| {
            b.iter(|| encode_update(std::hint::black_box(&payload)))
        });
        group.bench_function(format!("decode/{size}"), |b| {
            b.iter(|| tandem_sync::decode(std::hint::black_box(frame.clone())).expect("decode"))
        });
    }
    group.finish();
}

fn cold_load(c: &mut Criterion) {
    let (_, frames) = trace_frames();
    let snapshot = final_state(&frames);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SledStore::open(dir.path()).expect("sled"));
    runtime.block_on(async {
        // The finished document as it is stored after compaction: one snapshot.
        let seq = store.append("paper", &snapshot).expect("append");
        store
            .compact("paper", snapshot.clone(), seq)
            .await
            .expect("compact");
        // And one with 1,000 updates in the log after the snapshot, as after a crash.
        let seq = store.append("paper+tail", &snapshot).expect("append");
        store
            .compact("paper+tail", snapshot.clone(), seq)
            .await
            .expect("compact");
        let mut room = Room::load(RoomLimits::default(), Some(&snapshot), []).expect("load");
        let extra = tandem_bench::trace::Trace {
            start_content: String::new(),
            end_content: "x".repeat(1000),
            txns: (0..1000)
                .map(|i| tandem_bench::trace::TraceTxn {
                    patches: vec![tandem_bench::trace::Patch(i, 0, "x".into())],
                })
                .collect(),
        };
        for update in extra.updates(2, "tail").expect("replay") {
            room.apply_update(update.clone().into()).expect("apply");
            store.append("paper+tail", &update).expect("append");
        }
        store.flush().await.expect("flush");
    });
    let mut group = c.benchmark_group("cold_load");
    group.throughput(Throughput::Bytes(snapshot.len() as u64));
    for doc in ["paper", "paper+tail"] {
        group.bench_function(doc, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let stored = store.load(doc).await.expect("load");
                    let snapshot = stored.snapshot.as_ref().map(|s| s.bytes.as_slice());
                    let log = stored.log.iter().map(|(_, u)| u.as_slice());
                    Room::load(RoomLimits::default(), snapshot, log).expect("room")
                })
            })
        });
    }
    group.finish();
}

fn versions(c: &mut Criterion) {
    let (_, frames) = trace_frames();
    let finished = final_state(&frames);
    let halfway = final_state(&frames[..frames.len() / 2]);
    println!(
        "versions: a version of the finished B4 document is {} bytes ({} halfway)",
        finished.len(),
        halfway.len()
    );
    let edits = tandem_crdt::restoring_update(&finished, &halfway, 1 << 52)
        .expect("restore")
        .expect("edits");
    println!(
        "versions: restoring the halfway version takes one update of {} bytes",
        edits.len()
    );
    let mut group = c.benchmark_group("versions");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("restore_b4_to_halfway", |b| {
        b.iter(|| tandem_crdt::restoring_update(&finished, &halfway, 1 << 52).expect("restore"))
    });
    group.bench_function("content_json_b4", |b| {
        b.iter(|| tandem_crdt::content_json(&finished).expect("json"))
    });
    group.finish();
}

criterion_group!(benches, trace, codec, cold_load, versions);
criterion_main!(benches);
