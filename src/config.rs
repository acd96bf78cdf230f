//! Server configuration: every limit, with a sane default, settable as a `--flag` or a
//! `TANDEM_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Secret;

/// How `tandem serve` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// Directory of the sled database.
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "./tandem-data")]
    pub data_dir: PathBuf,

    /// Largest WebSocket message (and HTTP update body) accepted, in bytes. A larger one closes
    /// the connection with 1009.
    #[arg(long, env = "TANDEM_MAX_FRAME_BYTES", default_value_t = Config::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// Largest document, in bytes of its stored form (snapshot plus updates since). An update
    /// that would grow a document past it is refused (1009 on WebSocket, 413 over HTTP).
    #[arg(long, env = "TANDEM_MAX_DOC_BYTES", default_value_t = Config::DEFAULT_MAX_DOC_BYTES)]
    pub max_doc_bytes: usize,

    /// Read buffer of each WebSocket, in bytes: allocated up front for every connection (so it
    /// dominates the memory of idle ones) and the most read per syscall. Larger frames still
    /// arrive whole, in more reads.
    #[arg(long, env = "TANDEM_WS_READ_BUFFER_BYTES", default_value_t = Config::DEFAULT_WS_READ_BUFFER_BYTES)]
    pub ws_read_buffer_bytes: usize,

    /// Awareness client ids one connection may keep alive (a browser tab uses one). More closes
    /// the connection with 1008.
    #[arg(long, env = "TANDEM_MAX_AWARENESS_PER_CONNECTION", default_value_t = Config::DEFAULT_MAX_AWARENESS_PER_CONNECTION)]
    pub max_awareness_per_connection: usize,

    /// Frames queued for one connection. A client this far behind is closed with 1013 and
    /// resyncs on reconnect; nothing is dropped silently.
    #[arg(long, env = "TANDEM_OUTBOUND_QUEUE", default_value_t = Config::DEFAULT_OUTBOUND_QUEUE)]
    pub outbound_queue: usize,

    /// How long a burst may wait for room in a connection's full queue before that connection is
    /// closed with 1013 as too slow, in milliseconds. Meanwhile the sender is slowed down.
    #[arg(long, env = "TANDEM_LAG_TIMEOUT_MS", default_value_t = Config::DEFAULT_LAG_TIMEOUT_MS)]
    pub lag_timeout_ms: u64,

    /// Group-commit window of the update log, in milliseconds: updates are flushed to disk
    /// together at most this often.
    #[arg(long, env = "TANDEM_FLUSH_INTERVAL_MS", default_value_t = Config::DEFAULT_FLUSH_INTERVAL_MS)]
    pub flush_interval_ms: u64,

    /// Compact a document's log into its snapshot after this many updates.
    #[arg(long, env = "TANDEM_COMPACT_AFTER_UPDATES", default_value_t = Config::DEFAULT_COMPACT_AFTER_UPDATES)]
    pub compact_after_updates: usize,

    /// Compact a document's log into its snapshot after this many bytes of updates.
    #[arg(long, env = "TANDEM_COMPACT_AFTER_BYTES", default_value_t = Config::DEFAULT_COMPACT_AFTER_BYTES)]
    pub compact_after_bytes: usize,

    /// The largest event a backend may publish, in bytes.
    #[arg(long, env = "TANDEM_MAX_EVENT_BYTES", default_value_t = Config::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,

    /// How many documents may be compacted at once.
    #[arg(long, env = "TANDEM_COMPACTION_CONCURRENCY", default_value_t = Config::DEFAULT_COMPACTION_CONCURRENCY)]
    pub compaction_concurrency: usize,

    /// Journaled update bytes that make a group commit move them into the database.
    #[arg(long, env = "TANDEM_JOURNAL_CHECKPOINT_BYTES", default_value_t = Config::DEFAULT_JOURNAL_CHECKPOINT_BYTES)]
    pub journal_checkpoint_bytes: usize,

    /// How often the server pings each WebSocket, in milliseconds.
    #[arg(long, env = "TANDEM_PING_INTERVAL_MS", default_value_t = Config::DEFAULT_PING_INTERVAL_MS)]
    pub ping_interval_ms: u64,

    /// A WebSocket that sends nothing (not even a pong) for this long is closed with 4408, in
    /// milliseconds.
    #[arg(long, env = "TANDEM_PING_TIMEOUT_MS", default_value_t = Config::DEFAULT_PING_TIMEOUT_MS)]
    pub ping_timeout_ms: u64,

    /// How long a room stays loaded after its last client left, in milliseconds.
    #[arg(long, env = "TANDEM_ROOM_GRACE_MS", default_value_t = Config::DEFAULT_ROOM_GRACE_MS)]
    pub room_grace_ms: u64,

    /// Shared secret for HS256 tokens. With neither this nor --auth-public-key the server runs
    /// open (no authentication), which it only allows on a loopback address.
    #[arg(long, env = "TANDEM_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<Secret>,

    /// PEM file of an Ed25519 (EdDSA) or RSA (RS256) public key that verifies tokens.
    #[arg(long, env = "TANDEM_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Option<PathBuf>,

    /// Clock skew tolerated on token expiry, in seconds.
    #[arg(long, env = "TANDEM_AUTH_LEEWAY_SECS", default_value_t = 0)]
    pub auth_leeway_secs: u64,

    /// When set, tokens must carry this audience (`aud`); otherwise `aud` is not checked.
    #[arg(long, env = "TANDEM_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// Plans whose tokens may use real-time features (comma-separated).
    #[arg(
        long,
        env = "TANDEM_REALTIME_PLANS",
        value_delimiter = ',',
        default_value = "scale"
    )]
    pub realtime_plans: Vec<String>,

    /// Allow running without authentication on a non-loopback address.
    #[arg(long, env = "TANDEM_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// How long shutdown waits for connections to close, in milliseconds.
    #[arg(long, env = "TANDEM_SHUTDOWN_TIMEOUT_MS", default_value_t = Config::DEFAULT_SHUTDOWN_TIMEOUT_MS)]
    pub shutdown_timeout_ms: u64,
}

impl Config {
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
    pub const DEFAULT_MAX_DOC_BYTES: usize = 64 * 1024 * 1024;
    pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
    pub const DEFAULT_MAX_AWARENESS_PER_CONNECTION: usize = 64;
    pub const DEFAULT_WS_READ_BUFFER_BYTES: usize = 2048;
    pub const DEFAULT_LAG_TIMEOUT_MS: u64 = 2_000;
    pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 5;
    pub const DEFAULT_COMPACT_AFTER_UPDATES: usize = 1000;
    pub const DEFAULT_COMPACT_AFTER_BYTES: usize = 1024 * 1024;
    pub const DEFAULT_JOURNAL_CHECKPOINT_BYTES: usize = 4 * 1024 * 1024;
    pub const DEFAULT_COMPACTION_CONCURRENCY: usize = 1;
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;
    pub const DEFAULT_ROOM_GRACE_MS: u64 = 10_000;
    pub const DEFAULT_PING_INTERVAL_MS: u64 = 15_000;
    pub const DEFAULT_PING_TIMEOUT_MS: u64 = 45_000;
    pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;

    /// The defaults, with the database in `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            ..Config::default()
        }
    }

    pub(crate) fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub(crate) fn lag_timeout(&self) -> Duration {
        Duration::from_millis(self.lag_timeout_ms)
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub(crate) fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    pub(crate) fn room_grace(&self) -> Duration {
        Duration::from_millis(self.room_grace_ms)
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("./tandem-data"),
            max_frame_bytes: Config::DEFAULT_MAX_FRAME_BYTES,
            max_doc_bytes: Config::DEFAULT_MAX_DOC_BYTES,
            outbound_queue: Config::DEFAULT_OUTBOUND_QUEUE,
            max_awareness_per_connection: Config::DEFAULT_MAX_AWARENESS_PER_CONNECTION,
            ws_read_buffer_bytes: Config::DEFAULT_WS_READ_BUFFER_BYTES,
            lag_timeout_ms: Config::DEFAULT_LAG_TIMEOUT_MS,
            flush_interval_ms: Config::DEFAULT_FLUSH_INTERVAL_MS,
            compact_after_updates: Config::DEFAULT_COMPACT_AFTER_UPDATES,
            compact_after_bytes: Config::DEFAULT_COMPACT_AFTER_BYTES,
            journal_checkpoint_bytes: Config::DEFAULT_JOURNAL_CHECKPOINT_BYTES,
            compaction_concurrency: Config::DEFAULT_COMPACTION_CONCURRENCY,
            max_event_bytes: Config::DEFAULT_MAX_EVENT_BYTES,
            room_grace_ms: Config::DEFAULT_ROOM_GRACE_MS,
            ping_interval_ms: Config::DEFAULT_PING_INTERVAL_MS,
            ping_timeout_ms: Config::DEFAULT_PING_TIMEOUT_MS,
            shutdown_timeout_ms: Config::DEFAULT_SHUTDOWN_TIMEOUT_MS,
            auth_secret: None,
            auth_public_key: None,
            auth_leeway_secs: 0,
            auth_audience: None,
            realtime_plans: vec!["scale".to_string()],
            insecure_no_auth: false,
        }
    }
}
