//! Storage: appending updates to the log (the journal in front of sled), the group-commit flush,
//! and compaction.
//!
//! Run: `cargo bench --bench storage`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tandem_storage::{DocStore, SledStore};

/// A typical keystroke update is a few dozen bytes.
const UPDATE: [u8; 32] = [7; 32];

fn storage(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("sled");
    let mut group = c.benchmark_group("storage");
    group.measurement_time(Duration::from_secs(10));

    group.throughput(Throughput::Elements(1));
    // Appends buffer in memory until a flush: flushed (untimed) every 10,000, as the server's
    // group commit would, or millions of iterations would hold gigabytes.
    group.bench_function("append", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(10_000);
                let started = std::time::Instant::now();
                for _ in 0..chunk {
                    store.append("bench/doc", &UPDATE).expect("append");
                }
                spent += started.elapsed();
                runtime.block_on(store.flush()).expect("flush");
                left -= chunk;
            }
            spent
        })
    });

    // A group commit after 1, 10 and 100 appends: what one flush costs, and how it amortises.
    for appends in [1u64, 10, 100] {
        group.throughput(Throughput::Elements(appends));
        group.bench_function(format!("append_then_flush/{appends}"), |b| {
            b.iter(|| {
                for _ in 0..appends {
                    store.append("bench/flush", &UPDATE).expect("append");
                }
                runtime.block_on(store.flush()).expect("flush");
            })
        });
    }

    // Compacting 1,000 logged updates under a 200 KB snapshot (about the automerge-paper doc).
    let snapshot = vec![3u8; 200 * 1024];
    group.throughput(Throughput::Elements(1000));
    group.sample_size(20);
    group.bench_function("compact/1000_updates_200KB", |b| {
        b.iter_batched(
            || {
                let mut last = None;
                for _ in 0..1000 {
                    last = Some(store.append("bench/compact", &UPDATE).expect("append"));
                }
                // The server's group commit runs every few ms: the log is on disk by then.
                runtime.block_on(store.flush()).expect("flush");
                last.expect("appended")
            },
            |upto| {
                runtime
                    .block_on(store.compact("bench/compact", snapshot.clone(), upto))
                    .expect("compact")
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, storage);
criterion_main!(benches);
