//! Several nodes of one cluster in this process: one PostgreSQL database of the test's own, a
//! cluster name of its own on the machine's Redis (`TANDEM_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), so tests run side by side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tandem::Config;
use tandem_storage::pg::testing::TempDatabase;

use super::TestApp;

/// The Redis the cluster tests use.
pub fn redis_url() -> String {
    std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A cluster name no other test uses.
pub fn fresh_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "tandem-test-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        crate::support::now_nanos() % 1_000_000
    )
}

/// The settings every node of a test cluster shares: its database, its Redis and name, a
/// short node TTL.
pub fn join(config: &mut Config, database: &TempDatabase, redis: &str, name: &str) {
    config.database_url = Some(database.url().parse().expect("database url"));
    config.redis_url = Some(redis.parse().expect("redis url"));
    config.cluster_name = name.to_owned();
    config.node_ttl_ms = 1_500;
}

/// `n` nodes of a new cluster, each with its configuration adjusted by `tweak`.
pub async fn start(n: usize, tweak: impl Fn(&mut Config)) -> (Arc<TempDatabase>, Vec<TestApp>) {
    let database = Arc::new(TempDatabase::create().await);
    let (redis, name) = (redis_url(), fresh_name());
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = super::spawn_on(Some(Arc::clone(&database)), |config| {
            join(config, &database, &redis, &name);
            config.node_id = Some(format!("node-{i}"));
            tweak(config);
        })
        .await;
        nodes.push(node);
    }
    (database, nodes)
}
