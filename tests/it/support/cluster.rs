//! Several nodes of one cluster in this process: by default one PostgreSQL database of the
//! test's own and a cluster name of its own on the machine's Redis (`TANDEM_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`), so tests run side by side; or the private services of a
//! test that stops them.

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

/// What the nodes of a test cluster share.
#[derive(Clone)]
pub struct Services {
    pub database_url: String,
    pub redis_url: String,
    pub name: String,
    /// The test's own database, kept as long as a node may use it.
    pub database: Option<Arc<TempDatabase>>,
}

impl Services {
    /// A fresh database and cluster name on the machine's PostgreSQL and Redis.
    pub async fn fresh() -> Services {
        let database = Arc::new(TempDatabase::create().await);
        Services {
            database_url: database.url().to_owned(),
            redis_url: redis_url(),
            name: fresh_name(),
            database: Some(database),
        }
    }

    /// A cluster on `database_url` and `redis_url` (private servers of the test's).
    pub fn on(database_url: String, redis_url: String) -> Services {
        Services {
            database_url,
            redis_url,
            name: fresh_name(),
            database: None,
        }
    }

    /// Starts node `id` of the cluster, its configuration adjusted by `tweak`.
    pub async fn node(&self, id: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
        super::spawn_on(self.database.clone(), |config| {
            config.database_url = Some(self.database_url.parse().expect("database url"));
            config.redis_url = Some(self.redis_url.parse().expect("redis url"));
            config.cluster_name = self.name.clone();
            config.node_ttl_ms = 1_500;
            config.node_id = Some(id.to_owned());
            tweak(config);
        })
        .await
    }

    /// `n` nodes, `node-0` to `node-{n-1}`, each adjusted by `tweak`.
    pub async fn nodes(&self, n: usize, tweak: impl Fn(&mut Config)) -> Vec<TestApp> {
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(self.node(&format!("node-{i}"), &tweak).await);
        }
        nodes
    }
}

/// `n` nodes of a new cluster on fresh services, each adjusted by `tweak`.
pub async fn start(n: usize, tweak: impl Fn(&mut Config)) -> (Services, Vec<TestApp>) {
    let services = Services::fresh().await;
    let nodes = services.nodes(n, tweak).await;
    (services, nodes)
}
