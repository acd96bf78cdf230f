//! The room's apply + broadcast path with N in-process subscribers: what a WebSocket frame costs
//! the server between the socket read and the subscribers' queues, sockets excluded.
//!
//! Each iteration hands one sync-update frame (an edit of the real automerge-paper trace, see
//! `benches/data/README.md`) to `Rooms::receive`, exactly as the connection's reader does: the
//! room decodes and applies it, appends it to the sled store's journal (a group-commit flusher
//! runs meanwhile, as in the server), and queues the frame once for each of the N subscribers,
//! whose queues are then drained. Throughput is reported in deliveries (N per update).
//!
//! Run: `cargo bench --bench fanout` (figures land in `target/criterion/`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tandem::docs::delivery::{Outgoing, Overflow, PeerLink};
use tandem::docs::{RoomHandle, Rooms};
use tandem::durability::Durability;
use tandem::net::Closer;
use tandem::{Config, DocName};
use tandem_bench::trace::Trace;
use tandem_crdt::{Access, PeerId};
use tandem_storage::{DocStore, SledStore};
use tandem_sync::message::encode_update;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Edits per room: past this many, the next updates go to a fresh room, so no room grows
/// without bound however many iterations criterion asks for.
const EDITS_PER_ROOM: usize = 20_000;

fn frames() -> Vec<Bytes> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data/automerge-paper.json.gz");
    let trace = Trace::load(&path).expect("trace");
    let mut updates = trace.updates(1, "t").expect("replay");
    updates.truncate(EDITS_PER_ROOM);
    updates.iter().map(|u| encode_update(u)).collect()
}

struct Fixture {
    rooms: Arc<Rooms>,
    rt: tokio::runtime::Runtime,
    subscribers: usize,
    next_room: usize,
}

/// One room with its writer and subscribers joined, their queues ready to drain.
struct Room {
    handle: Arc<RoomHandle>,
    queues: Vec<mpsc::Receiver<Arc<Outgoing>>>,
}

impl Fixture {
    fn new(dir: &Path, subscribers: usize) -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let store: Arc<dyn DocStore> = Arc::new(SledStore::open(dir).expect("sled"));
        let config = Arc::new(Config::default());
        let durability = Durability::new();
        durability.spawn_flusher(
            Arc::clone(&store),
            Duration::from_millis(config.flush_interval_ms),
            CancellationToken::new(),
        );
        let rooms = Arc::new(Rooms::new(
            store,
            Arc::new(tandem_storage::MemoryVersionStore::default()),
            durability,
            config,
            TaskTracker::new(),
            CancellationToken::new(),
        ));
        Fixture {
            rooms,
            rt,
            subscribers,
            next_room: 0,
        }
    }

    fn room(&mut self) -> Room {
        self.next_room += 1;
        let name = DocName::parse(&format!("bench/room-{}", self.next_room)).expect("name");
        let mut queues = Vec::new();
        let mut handle = None;
        // Peer 0 writes; peers 1..=N subscribe.
        for peer in 0..=self.subscribers as u64 {
            let (outbound, queue) = mpsc::channel(1024);
            let link = PeerLink {
                peer: PeerId(peer),
                user: Arc::from("bench"),
                outbound,
                closer: Closer::new(),
                stateless: false,
            };
            let mut overflow = Overflow::default();
            let joined = self
                .rt
                .block_on(self.rooms.join(&name, link, &mut overflow))
                .expect("join");
            assert!(overflow.is_empty());
            handle = Some(joined);
            queues.push(queue);
        }
        let mut room = Room {
            handle: handle.expect("joined"),
            queues,
        };
        room.drain();
        room
    }
}

impl Room {
    fn drain(&mut self) -> usize {
        let mut delivered = 0;
        for queue in &mut self.queues {
            while let Ok(frame) = queue.try_recv() {
                black_box(frame);
                delivered += 1;
            }
        }
        delivered
    }
}

fn apply_and_broadcast(c: &mut Criterion) {
    let frames = frames();
    let mut group = c.benchmark_group("apply_broadcast");
    group.measurement_time(Duration::from_secs(8));
    for subscribers in [1usize, 10, 50, 100] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fixture = Fixture::new(dir.path(), subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter_custom(|iters| {
                // Compactions (every `compact_after_updates`) run as tasks on the runtime.
                let rt = fixture.rt.handle().clone();
                let _guard = rt.enter();
                let mut room = fixture.room();
                let mut spent = Duration::ZERO;
                for i in 0..iters as usize {
                    if i > 0 && i % frames.len() == 0 {
                        room = fixture.room();
                    }
                    let frame = frames[i % frames.len()].clone();
                    let started = Instant::now();
                    let mut overflow = Overflow::default();
                    fixture
                        .rooms
                        .receive(
                            &room.handle,
                            PeerId(0),
                            frame,
                            Access::ReadWrite,
                            &mut overflow,
                        )
                        .expect("receive");
                    let delivered = room.drain();
                    spent += started.elapsed();
                    // Every subscriber got the update; the writer got nothing back.
                    assert_eq!(delivered, subscribers);
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, apply_and_broadcast);
criterion_main!(benches);
