//! Server configuration: every limit, with a sane default, settable as a `--flag` or a
//! `TANDEM_*` environment variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the secret must not be empty".into());
        }
        Ok(Secret(s.to_owned()))
    }
}

/// How `tandem serve` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// Directory of the sled database (unused with `--database-url`).
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "./tandem-data")]
    pub data_dir: PathBuf,

    /// Keep documents, events and every other durable record in this PostgreSQL database
    /// (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`) instead of sled in `--data-dir`. The
    /// schema is created and migrated at start-up.
    #[arg(long, env = "TANDEM_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Join a cluster through this Redis (`redis://HOST:PORT`): the node shares documents,
    /// awareness and node liveness with every other node of the same `--cluster-name`.
    /// Requires `--database-url` (the nodes' shared store).
    #[arg(long, env = "TANDEM_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Prefixes every Redis key and channel, so several clusters can share one Redis.
    #[arg(long, env = "TANDEM_CLUSTER_NAME", default_value = "tandem")]
    pub cluster_name: String,

    /// This node's name in logs and the admin API (default: a fresh one per boot).
    #[arg(long, env = "TANDEM_NODE_ID")]
    pub node_id: Option<String>,

    /// A node of the cluster not heard of for this long is dead: the others drop its clients'
    /// awareness and repair their rooms from PostgreSQL. Heartbeats go every third of it.
    #[arg(long, env = "TANDEM_NODE_TTL_MS", default_value_t = Config::DEFAULT_NODE_TTL_MS)]
    pub node_ttl_ms: u64,

    /// Connections to PostgreSQL.
    #[arg(long, env = "TANDEM_DATABASE_POOL_SIZE", default_value_t = Config::DEFAULT_DATABASE_POOL_SIZE)]
    pub database_pool_size: usize,

    /// How long a storage call, and an acknowledged write waiting for its group commit, may
    /// take before it fails (HTTP 503 `storage_unavailable`), in milliseconds.
    #[arg(long, env = "TANDEM_STORAGE_TIMEOUT_MS", default_value_t = Config::DEFAULT_STORAGE_TIMEOUT_MS)]
    pub storage_timeout_ms: u64,

    /// Largest WebSocket message (and HTTP update body) accepted, in bytes. A larger one closes
    /// the connection with 1009.
    #[arg(long, env = "TANDEM_MAX_FRAME_BYTES", default_value_t = Config::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// Largest document, in bytes of its stored form (snapshot plus updates since). An update
    /// that would grow a document past it is refused (1009 on WebSocket, 413 over HTTP).
    #[arg(long, env = "TANDEM_MAX_DOC_BYTES", default_value_t = Config::DEFAULT_MAX_DOC_BYTES)]
    pub max_doc_bytes: usize,

    /// The most shared types (nested maps, arrays, texts, XML nodes) a document may hold; an
    /// update past it is refused (close 1009, HTTP 413). Types nest at most this deep, and
    /// deleting nested types recurses once per level: the server's threads get stacks sized
    /// for this bound ([`Config::thread_stack_bytes`]).
    #[arg(long, env = "TANDEM_MAX_DOC_TYPES", default_value_t = Config::DEFAULT_MAX_DOC_TYPES)]
    pub max_doc_types: u64,

    /// Read buffer of each WebSocket, in bytes: allocated up front for every connection (so it
    /// dominates the memory of idle ones) and the most read per syscall. Larger frames still
    /// arrive whole, in more reads.
    #[arg(long, env = "TANDEM_WS_READ_BUFFER_BYTES", default_value_t = Config::DEFAULT_WS_READ_BUFFER_BYTES)]
    pub ws_read_buffer_bytes: usize,

    /// Awareness client ids one connection may keep alive (a browser tab uses one). More closes
    /// the connection with 1008.
    #[arg(long, env = "TANDEM_MAX_AWARENESS_PER_CONNECTION", default_value_t = Config::DEFAULT_MAX_AWARENESS_PER_CONNECTION)]
    pub max_awareness_per_connection: usize,

    /// Messages queued for one connection. A client this far behind is closed with 1013 and
    /// resyncs on reconnect; nothing is dropped silently.
    #[arg(long, env = "TANDEM_OUTBOUND_QUEUE", default_value_t = Config::DEFAULT_OUTBOUND_QUEUE)]
    pub outbound_queue: usize,

    /// How long a burst may wait for room in a document connection's full queue (or a dashboard's
    /// replay in a dashboard connection's) before that connection is closed with 1013 as too
    /// slow, in milliseconds. Meanwhile the sender is slowed down. A dashboard connection whose
    /// queue is full when a live event arrives is closed at once: it resumes with `since`.
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

    /// Largest dashboard (`/ws`) frame in bytes (a larger one gets an error frame, `too_large`),
    /// and the largest small JSON body over HTTP (presence, preferences, badges, client errors,
    /// development tokens) and awareness state in a long-poll round (413 `too_large`).
    #[arg(long, env = "TANDEM_MAX_DASHBOARD_FRAME_BYTES", default_value_t = Config::DEFAULT_MAX_DASHBOARD_FRAME_BYTES)]
    pub max_dashboard_frame_bytes: usize,

    /// Bad frames a dashboard client may send within a minute before it is closed with 1008.
    #[arg(long, env = "TANDEM_MAX_BAD_FRAMES", default_value_t = Config::DEFAULT_MAX_BAD_FRAMES)]
    pub max_bad_frames: u32,

    /// Events that become ready within this many milliseconds of the last one sent to a
    /// dashboard connection go out together as one `batch` frame (0: only those already
    /// queued).
    #[arg(long, env = "TANDEM_DASHBOARD_BATCH_MS", default_value_t = Config::DEFAULT_DASHBOARD_BATCH_MS)]
    pub dashboard_batch_ms: u64,

    /// Events kept per workspace for replay (`since`) and long-polling.
    #[arg(long, env = "TANDEM_EVENT_RETENTION_COUNT", default_value_t = Config::DEFAULT_EVENT_RETENTION_COUNT)]
    pub event_retention_count: usize,

    /// Events older than this many seconds are dropped.
    #[arg(long, env = "TANDEM_EVENT_RETENTION_SECS", default_value_t = Config::DEFAULT_EVENT_RETENTION_SECS)]
    pub event_retention_secs: u64,

    /// How often retention trims the event log, in milliseconds.
    #[arg(long, env = "TANDEM_EVENT_TRIM_INTERVAL_MS", default_value_t = Config::DEFAULT_EVENT_TRIM_INTERVAL_MS)]
    pub event_trim_interval_ms: u64,

    /// Events per second one workspace may publish; more get 429 with Retry-After.
    #[arg(long, env = "TANDEM_PUBLISH_RATE_WORKSPACE", default_value_t = Config::DEFAULT_PUBLISH_RATE_WORKSPACE)]
    pub publish_rate_workspace: u32,

    /// Events per second one publisher (token subject) may publish.
    #[arg(long, env = "TANDEM_PUBLISH_RATE_USER", default_value_t = Config::DEFAULT_PUBLISH_RATE_USER)]
    pub publish_rate_user: u32,

    /// Chat sessions with unread messages kept per user: past it, the session whose last
    /// message is oldest loses its badge.
    #[arg(long, env = "TANDEM_MAX_CHAT_BADGES_PER_USER", default_value_t = Config::DEFAULT_MAX_CHAT_BADGES_PER_USER)]
    pub max_chat_badges_per_user: usize,

    /// Locks one dashboard connection may hold at once.
    #[arg(long, env = "TANDEM_MAX_LOCKS_PER_CONNECTION", default_value_t = Config::DEFAULT_MAX_LOCKS_PER_CONNECTION)]
    pub max_locks_per_connection: usize,

    /// Actions per second one dashboard connection may send (twice that in a burst); more get
    /// a `rate_limited` error frame, which counts as a bad frame.
    #[arg(long, env = "TANDEM_DASHBOARD_ACTIONS_PER_SEC", default_value_t = Config::DEFAULT_DASHBOARD_ACTIONS_PER_SEC)]
    pub dashboard_actions_per_sec: u32,

    /// How long an advisory lock lasts without renewal, in milliseconds.
    #[arg(long, env = "TANDEM_LOCK_TTL_MS", default_value_t = Config::DEFAULT_LOCK_TTL_MS)]
    pub lock_ttl_ms: u64,

    /// A user without activity for this many milliseconds is idle.
    #[arg(long, env = "TANDEM_PRESENCE_IDLE_MS", default_value_t = Config::DEFAULT_PRESENCE_IDLE_MS)]
    pub presence_idle_ms: u64,

    /// A user's page changes are published at most this often, in milliseconds.
    #[arg(long, env = "TANDEM_PRESENCE_DEBOUNCE_MS", default_value_t = Config::DEFAULT_PRESENCE_DEBOUNCE_MS)]
    pub presence_debounce_ms: u64,

    /// An HTTP poller's presence lasts this long without renewal, in milliseconds.
    #[arg(long, env = "TANDEM_PRESENCE_POLL_TTL_MS", default_value_t = Config::DEFAULT_PRESENCE_POLL_TTL_MS)]
    pub presence_poll_ttl_ms: u64,

    /// A client syncing a document over HTTP (`POST /api/v1/docs/{doc}/sync`) stays in the room,
    /// cursor and all, this long after its last poll, in milliseconds. Pollers poll at least
    /// every 30 s.
    #[arg(long, env = "TANDEM_DOC_POLL_TTL_MS", default_value_t = Config::DEFAULT_DOC_POLL_TTL_MS)]
    pub doc_poll_ttl_ms: u64,

    /// The most clients one user may sync one document with over HTTP at once; past it, the one
    /// that would lapse first goes (a reloaded tab is a new client).
    #[arg(long, env = "TANDEM_MAX_POLLERS_PER_USER", default_value_t = Config::DEFAULT_MAX_POLLERS_PER_USER)]
    pub max_pollers_per_user: usize,

    /// A document's user counts as actively editing while their awareness there (cursor,
    /// selection) changed within this many milliseconds.
    #[arg(long, env = "TANDEM_EDITING_IDLE_MS", default_value_t = Config::DEFAULT_EDITING_IDLE_MS)]
    pub editing_idle_ms: u64,

    /// A user back on the same document (or the dashboard) within this many milliseconds of
    /// leaving counts as a reconnect.
    #[arg(long, env = "TANDEM_RECONNECT_WINDOW_MS", default_value_t = Config::DEFAULT_RECONNECT_WINDOW_MS)]
    pub reconnect_window_ms: u64,

    /// Client error reports (`POST /api/v1/client-errors`) one user may send per minute.
    #[arg(long, env = "TANDEM_CLIENT_ERRORS_PER_MINUTE", default_value_t = Config::DEFAULT_CLIENT_ERRORS_PER_MINUTE)]
    pub client_errors_per_minute: u32,

    /// The longest `timeout` a long-poll may ask for, in seconds.
    #[arg(long, env = "TANDEM_LONG_POLL_MAX_SECS", default_value_t = Config::DEFAULT_LONG_POLL_MAX_SECS)]
    pub long_poll_max_secs: u64,

    /// How long a client may take to send a request's headers, in milliseconds: a connection
    /// that dribbles them (or sends none) is closed, so it holds nothing for long.
    #[arg(long, env = "TANDEM_HTTP_HEADER_TIMEOUT_MS", default_value_t = Config::DEFAULT_HTTP_HEADER_TIMEOUT_MS)]
    pub http_header_timeout_ms: u64,

    /// How long a client may take to send a request's body once its headers are in, in
    /// milliseconds: past it the request is answered 408 and the connection closed.
    #[arg(long, env = "TANDEM_HTTP_BODY_TIMEOUT_MS", default_value_t = Config::DEFAULT_HTTP_BODY_TIMEOUT_MS)]
    pub http_body_timeout_ms: u64,

    /// Connections (documents, dashboards, long-polls) one client address may hold open at
    /// once; more are refused with 429. 0: no cap.
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS_PER_IP", default_value_t = Config::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,

    /// Connections one user of a workspace may hold open at once (with authentication); more
    /// are refused with 429. 0: no cap.
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS_PER_USER", default_value_t = Config::DEFAULT_MAX_CONNECTIONS_PER_USER)]
    pub max_connections_per_user: usize,

    /// Distinct documents one user of a workspace may hold open at once (with authentication),
    /// over WebSocket connections and HTTP pollers together; a new one past it is refused with
    /// 429 `too_many_documents`. 0: no cap.
    #[arg(long, env = "TANDEM_MAX_DOCS_PER_USER", default_value_t = Config::DEFAULT_MAX_DOCS_PER_USER)]
    pub max_docs_per_user: usize,

    /// Documents one Hocuspocus socket (`/hocuspocus`) may have open at once; one more is
    /// refused with PermissionDenied saying so.
    #[arg(long, env = "TANDEM_MAX_DOCS_PER_SOCKET", default_value_t = Config::DEFAULT_MAX_DOCS_PER_SOCKET)]
    pub max_docs_per_socket: usize,

    /// Bytes of one Hocuspocus stateless message; a larger one closes its socket with 1009.
    #[arg(long, env = "TANDEM_MAX_STATELESS_BYTES", default_value_t = Config::DEFAULT_MAX_STATELESS_BYTES)]
    pub max_stateless_bytes: usize,

    /// Hocuspocus stateless messages one socket may send per second (and in a burst); more
    /// close it with 1008.
    #[arg(long, env = "TANDEM_MAX_STATELESS_PER_SEC", default_value_t = Config::DEFAULT_MAX_STATELESS_PER_SEC)]
    pub max_stateless_per_sec: u32,

    /// A document that changed gets a version this long after its first change since the
    /// last one, so at most one per this many seconds of activity, in seconds.
    #[arg(long, env = "TANDEM_VERSION_INTERVAL_SECS", default_value_t = Config::DEFAULT_VERSION_INTERVAL_SECS)]
    pub version_interval_secs: u64,

    /// Versions kept per document (the newest).
    #[arg(long, env = "TANDEM_VERSIONS_KEEP", default_value_t = Config::DEFAULT_VERSIONS_KEEP)]
    pub versions_keep: usize,

    /// Deliver webhooks to private, loopback and link-local addresses too (tests, local
    /// development); otherwise such endpoints are refused, against server-side request forgery.
    #[arg(long, env = "TANDEM_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// A document's `document.updated` webhook goes out once it has not changed for this long
    /// (or five times this after its first change, under continuous editing), in milliseconds.
    #[arg(long, env = "TANDEM_WEBHOOK_DEBOUNCE_MS", default_value_t = Config::DEFAULT_WEBHOOK_DEBOUNCE_MS)]
    pub webhook_debounce_ms: u64,

    /// How long one webhook delivery attempt may take, connection included, in milliseconds.
    #[arg(long, env = "TANDEM_WEBHOOK_TIMEOUT_MS", default_value_t = Config::DEFAULT_WEBHOOK_TIMEOUT_MS)]
    pub webhook_timeout_ms: u64,

    /// Attempts at one webhook message before it is given up.
    #[arg(long, env = "TANDEM_WEBHOOK_MAX_ATTEMPTS", default_value_t = Config::DEFAULT_WEBHOOK_MAX_ATTEMPTS)]
    pub webhook_max_attempts: u32,

    /// The wait after a webhook's first failed attempt, doubling at each one after, in
    /// milliseconds (with a fifth of jitter either way).
    #[arg(long, env = "TANDEM_WEBHOOK_RETRY_BASE_MS", default_value_t = Config::DEFAULT_WEBHOOK_RETRY_BASE_MS)]
    pub webhook_retry_base_ms: u64,

    /// The longest wait between two attempts, in milliseconds.
    #[arg(long, env = "TANDEM_WEBHOOK_RETRY_MAX_MS", default_value_t = Config::DEFAULT_WEBHOOK_RETRY_MAX_MS)]
    pub webhook_retry_max_ms: u64,

    /// An endpoint every attempt at which failed for this long is disabled, in seconds.
    #[arg(long, env = "TANDEM_WEBHOOK_DISABLE_AFTER_SECS", default_value_t = Config::DEFAULT_WEBHOOK_DISABLE_AFTER_SECS)]
    pub webhook_disable_after_secs: u64,

    /// The largest document content a `document.updated` webhook carries (as JSON); a larger
    /// one goes without it.
    #[arg(long, env = "TANDEM_WEBHOOK_MAX_CONTENT_BYTES", default_value_t = Config::DEFAULT_WEBHOOK_MAX_CONTENT_BYTES)]
    pub webhook_max_content_bytes: usize,

    /// Versions older than this are removed (the newest of a document always stays), in
    /// seconds; 0 keeps them whatever their age.
    #[arg(long, env = "TANDEM_VERSIONS_MAX_AGE_SECS", default_value_t = Config::DEFAULT_VERSIONS_MAX_AGE_SECS)]
    pub versions_max_age_secs: u64,

    /// Origins (`https://app.example.com`, comma-separated) whose pages may call the HTTP API
    /// from the browser (CORS). None by default: the dashboard page is same-origin, and a
    /// browser refuses other origins' pages.
    #[arg(long, env = "TANDEM_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Mebibytes kept free on the data directory's disk (sled): below it writes are refused
    /// with 503 `storage_unavailable` and `/readyz` fails, and they resume by themselves once
    /// space is freed. sled cannot recover from running out of space without a restart, so
    /// the reserve keeps it from ever getting there. 0: no reserve.
    #[arg(long, env = "TANDEM_MIN_FREE_DISK_MIB", default_value_t = Config::DEFAULT_MIN_FREE_DISK_MIB)]
    pub min_free_disk_mib: u64,

    /// Mebibytes of sled's page cache. Documents in use live in their rooms; the cache only
    /// speeds up loads and compactions, and sled's own default (a gibibyte) makes the
    /// server's memory grow with the data stored.
    #[arg(long, env = "TANDEM_SLED_CACHE_MIB", default_value_t = Config::DEFAULT_SLED_CACHE_MIB)]
    pub sled_cache_mib: u64,

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

    /// How long a dashboard workspace nobody uses (no connection, nobody present, nothing
    /// waiting) stays in memory, in milliseconds.
    #[arg(long, env = "TANDEM_WORKSPACE_IDLE_MS", default_value_t = Config::DEFAULT_WORKSPACE_IDLE_MS)]
    pub workspace_idle_ms: u64,

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

    /// Who may show the browser dashboard in a frame, as the sources of a CSP `frame-ancestors`
    /// directive: `'self'`, or the origins of the apps that embed it (`'self'
    /// https://app.example.com`). An embedding app hands the page its token, so only apps named
    /// here can.
    #[arg(long, env = "TANDEM_FRAME_ANCESTORS", default_value = "'self'")]
    pub frame_ancestors: String,

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
    pub const DEFAULT_MAX_DOC_TYPES: u64 = 100_000;
    pub const DEFAULT_MIN_FREE_DISK_MIB: u64 = 64;
    pub const DEFAULT_SLED_CACHE_MIB: u64 = 64;
    pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
    pub const DEFAULT_MAX_AWARENESS_PER_CONNECTION: usize = 64;
    pub const DEFAULT_WS_READ_BUFFER_BYTES: usize = 1024;
    pub const DEFAULT_LAG_TIMEOUT_MS: u64 = 2_000;
    pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 5;
    pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1024;
    pub const DEFAULT_HTTP_HEADER_TIMEOUT_MS: u64 = 10_000;
    pub const DEFAULT_HTTP_BODY_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 256;
    pub const DEFAULT_MAX_DOCS_PER_USER: usize = 128;
    pub const DEFAULT_MAX_DOCS_PER_SOCKET: usize = 64;
    pub const DEFAULT_MAX_STATELESS_BYTES: usize = 64 * 1024;
    pub const DEFAULT_MAX_STATELESS_PER_SEC: u32 = 50;
    pub const DEFAULT_VERSION_INTERVAL_SECS: u64 = 600;
    pub const DEFAULT_WEBHOOK_DEBOUNCE_MS: u64 = 2000;
    pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 10_000;
    pub const DEFAULT_WEBHOOK_MAX_ATTEMPTS: u32 = 16;
    pub const DEFAULT_WEBHOOK_RETRY_BASE_MS: u64 = 5_000;
    pub const DEFAULT_WEBHOOK_RETRY_MAX_MS: u64 = 10 * 3600 * 1000;
    pub const DEFAULT_WEBHOOK_DISABLE_AFTER_SECS: u64 = 24 * 3600;
    pub const DEFAULT_WEBHOOK_MAX_CONTENT_BYTES: usize = 64 * 1024;
    pub const DEFAULT_VERSIONS_KEEP: usize = 100;
    pub const DEFAULT_VERSIONS_MAX_AGE_SECS: u64 = 90 * 24 * 3600;
    pub const DEFAULT_COMPACT_AFTER_UPDATES: usize = 1000;
    pub const DEFAULT_COMPACT_AFTER_BYTES: usize = 1024 * 1024;
    pub const DEFAULT_JOURNAL_CHECKPOINT_BYTES: usize = 4 * 1024 * 1024;
    pub const DEFAULT_COMPACTION_CONCURRENCY: usize = 1;
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;
    pub const DEFAULT_ROOM_GRACE_MS: u64 = 10_000;
    pub const DEFAULT_WORKSPACE_IDLE_MS: u64 = 300_000;
    pub const DEFAULT_MAX_DASHBOARD_FRAME_BYTES: usize = 16 * 1024;
    pub const DEFAULT_MAX_BAD_FRAMES: u32 = 20;
    pub const DEFAULT_DASHBOARD_BATCH_MS: u64 = 10;
    pub const DEFAULT_EVENT_RETENTION_COUNT: usize = 10_000;
    pub const DEFAULT_EVENT_RETENTION_SECS: u64 = 7 * 24 * 3600;
    pub const DEFAULT_EVENT_TRIM_INTERVAL_MS: u64 = 60_000;
    pub const DEFAULT_PUBLISH_RATE_WORKSPACE: u32 = 1_000;
    pub const DEFAULT_PUBLISH_RATE_USER: u32 = 500;
    pub const DEFAULT_LOCK_TTL_MS: u64 = 30_000;
    pub const DEFAULT_MAX_LOCKS_PER_CONNECTION: usize = 32;
    pub const DEFAULT_MAX_CHAT_BADGES_PER_USER: usize = 200;
    pub const DEFAULT_DASHBOARD_ACTIONS_PER_SEC: u32 = 50;
    pub const DEFAULT_PRESENCE_IDLE_MS: u64 = 5 * 60 * 1000;
    pub const DEFAULT_PRESENCE_DEBOUNCE_MS: u64 = 10_000;
    pub const DEFAULT_PRESENCE_POLL_TTL_MS: u64 = 90_000;
    pub const DEFAULT_DOC_POLL_TTL_MS: u64 = 45_000;
    pub const DEFAULT_MAX_POLLERS_PER_USER: usize = 8;
    pub const DEFAULT_LONG_POLL_MAX_SECS: u64 = 60;
    pub const DEFAULT_EDITING_IDLE_MS: u64 = 60_000;
    pub const DEFAULT_RECONNECT_WINDOW_MS: u64 = 30_000;
    pub const DEFAULT_CLIENT_ERRORS_PER_MINUTE: u32 = 30;
    pub const DEFAULT_PING_INTERVAL_MS: u64 = 15_000;
    pub const DEFAULT_PING_TIMEOUT_MS: u64 = 45_000;
    pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;
    pub const DEFAULT_DATABASE_POOL_SIZE: usize = 16;
    pub const DEFAULT_NODE_TTL_MS: u64 = 10_000;
    pub const DEFAULT_STORAGE_TIMEOUT_MS: u64 = 10_000;

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

    /// The stack each of the server's threads needs: yrs deletes and garbage-collects nested
    /// shared types by recursion, one frame per level (about 350 bytes measured in a release
    /// build, 2 KiB in a debug one), and a document's types nest at most `--max-doc-types`
    /// deep. The memory is reserved, not used, until a deep document needs it.
    pub fn thread_stack_bytes(&self) -> usize {
        let per_level: u64 = if cfg!(debug_assertions) { 4096 } else { 640 };
        let needed = self.max_doc_types.saturating_mul(per_level);
        (8 << 20)
            + usize::try_from(needed)
                .unwrap_or(usize::MAX / 2)
                .min(4 << 30)
    }

    pub(crate) fn http_body_timeout(&self) -> Duration {
        Duration::from_millis(self.http_body_timeout_ms)
    }

    pub(crate) fn doc_poll_ttl(&self) -> Duration {
        Duration::from_millis(self.doc_poll_ttl_ms)
    }

    pub(crate) fn room_grace(&self) -> Duration {
        Duration::from_millis(self.room_grace_ms)
    }

    pub(crate) fn version_interval(&self) -> Duration {
        Duration::from_secs(self.version_interval_secs)
    }

    /// Which versions of a document are kept, as of now.
    pub(crate) fn version_retention(&self) -> tandem_storage::VersionRetention {
        let max_age_ms = i64::try_from(self.versions_max_age_secs.saturating_mul(1000)).ok();
        tandem_storage::VersionRetention {
            keep: self.versions_keep.max(1),
            not_before_ms: max_age_ms
                .filter(|&age| age > 0)
                .map(|age| i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX) - age),
        }
    }

    pub(crate) fn reconnect_window(&self) -> Duration {
        Duration::from_millis(self.reconnect_window_ms)
    }

    pub(crate) fn dashboard_batch(&self) -> Duration {
        Duration::from_millis(self.dashboard_batch_ms)
    }

    pub fn storage_timeout(&self) -> Duration {
        Duration::from_millis(self.storage_timeout_ms)
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// Checks the limits and settings that have no sane meaning at some values.
    ///
    /// # Errors
    /// What is wrong, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        for origin in &self.cors_origins {
            let valid = matches!(origin.split_once("://"), Some(("http" | "https", host))
                if !host.is_empty() && !host.contains('/') && !host.contains(char::is_whitespace));
            if !valid {
                return Err(format!(
                    "--cors-origins: {origin:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
        }
        let config = self;
        let positive = [
            ("http-header-timeout-ms", config.http_header_timeout_ms),
            ("http-body-timeout-ms", config.http_body_timeout_ms),
            ("max-frame-bytes", config.max_frame_bytes as u64),
            ("max-doc-bytes", config.max_doc_bytes as u64),
            ("max-doc-types", config.max_doc_types),
            ("outbound-queue", config.outbound_queue as u64),
            (
                "compaction-concurrency",
                config.compaction_concurrency as u64,
            ),
            ("max-event-bytes", config.max_event_bytes as u64),
            (
                "max-dashboard-frame-bytes",
                config.max_dashboard_frame_bytes as u64,
            ),
            ("lock-ttl-ms", config.lock_ttl_ms),
            (
                "max-chat-badges-per-user",
                config.max_chat_badges_per_user as u64,
            ),
            (
                "max-locks-per-connection",
                config.max_locks_per_connection as u64,
            ),
            (
                "dashboard-actions-per-sec",
                u64::from(config.dashboard_actions_per_sec),
            ),
            ("presence-idle-ms", config.presence_idle_ms),
            ("presence-poll-ttl-ms", config.presence_poll_ttl_ms),
            ("doc-poll-ttl-ms", config.doc_poll_ttl_ms),
            ("max-pollers-per-user", config.max_pollers_per_user as u64),
            ("max-docs-per-socket", config.max_docs_per_socket as u64),
            ("max-stateless-bytes", config.max_stateless_bytes as u64),
            (
                "max-stateless-per-sec",
                u64::from(config.max_stateless_per_sec),
            ),
            (
                "publish-rate-workspace",
                u64::from(config.publish_rate_workspace),
            ),
            ("publish-rate-user", u64::from(config.publish_rate_user)),
            ("version-interval-secs", config.version_interval_secs),
            ("versions-keep", config.versions_keep as u64),
            ("webhook-timeout-ms", config.webhook_timeout_ms),
            (
                "webhook-max-attempts",
                u64::from(config.webhook_max_attempts),
            ),
            ("webhook-retry-base-ms", config.webhook_retry_base_ms),
            ("webhook-retry-max-ms", config.webhook_retry_max_ms),
            ("event-retention-secs", config.event_retention_secs),
            ("event-trim-interval-ms", config.event_trim_interval_ms),
            (
                "journal-checkpoint-bytes",
                config.journal_checkpoint_bytes as u64,
            ),
            (
                "max-awareness-per-connection",
                config.max_awareness_per_connection as u64,
            ),
            ("ws-read-buffer-bytes", config.ws_read_buffer_bytes as u64),
            ("compact-after-updates", config.compact_after_updates as u64),
            ("compact-after-bytes", config.compact_after_bytes as u64),
            ("ping-interval-ms", config.ping_interval_ms),
            ("storage-timeout-ms", config.storage_timeout_ms),
            ("database-pool-size", config.database_pool_size as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("--{name} must be at least 1"));
            }
        }
        // A client only answers pings it receives: with a timeout shorter than the interval, a
        // quiet but healthy connection would be closed between two pings.
        if config.ping_timeout_ms <= config.ping_interval_ms {
            return Err("--ping-timeout-ms must be longer than --ping-interval-ms".into());
        }
        // jsonwebtoken subtracts the leeway from the current time; a day is already generous.
        if config.auth_leeway_secs > 86_400 {
            return Err("--auth-leeway-secs must be at most 86400".into());
        }
        if config.frame_ancestors.trim().is_empty()
            || axum::http::HeaderValue::from_str(&config.frame_ancestors).is_err()
        {
            return Err(
                "--frame-ancestors must be CSP sources such as 'self' or https://app.example.com"
                    .into(),
            );
        }
        if config.redis_url.is_some() && config.database_url.is_none() {
            return Err(
                "--redis-url needs --database-url: the nodes of a cluster share their documents \
                 and events through PostgreSQL (Redis only carries messages, and may lose them)"
                    .into(),
            );
        }
        if config.cluster_name.is_empty()
            || !config
                .cluster_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(
                "--cluster-name must be letters, digits, '-', '_' or '.' (it prefixes Redis keys)"
                    .into(),
            );
        }
        if config.node_ttl_ms < 300 {
            return Err("--node-ttl-ms must be at least 300".into());
        }
        if config.realtime_plans.iter().all(|p| p.trim().is_empty()) {
            return Err("--realtime-plans must name at least one plan".into());
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("./tandem-data"),
            database_url: None,
            redis_url: None,
            cluster_name: "tandem".to_owned(),
            node_id: None,
            node_ttl_ms: Config::DEFAULT_NODE_TTL_MS,
            database_pool_size: Config::DEFAULT_DATABASE_POOL_SIZE,
            storage_timeout_ms: Config::DEFAULT_STORAGE_TIMEOUT_MS,
            max_frame_bytes: Config::DEFAULT_MAX_FRAME_BYTES,
            max_doc_bytes: Config::DEFAULT_MAX_DOC_BYTES,
            max_doc_types: Config::DEFAULT_MAX_DOC_TYPES,
            min_free_disk_mib: Config::DEFAULT_MIN_FREE_DISK_MIB,
            sled_cache_mib: Config::DEFAULT_SLED_CACHE_MIB,
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
            workspace_idle_ms: Config::DEFAULT_WORKSPACE_IDLE_MS,
            max_dashboard_frame_bytes: Config::DEFAULT_MAX_DASHBOARD_FRAME_BYTES,
            max_bad_frames: Config::DEFAULT_MAX_BAD_FRAMES,
            dashboard_batch_ms: Config::DEFAULT_DASHBOARD_BATCH_MS,
            event_retention_count: Config::DEFAULT_EVENT_RETENTION_COUNT,
            event_retention_secs: Config::DEFAULT_EVENT_RETENTION_SECS,
            event_trim_interval_ms: Config::DEFAULT_EVENT_TRIM_INTERVAL_MS,
            publish_rate_workspace: Config::DEFAULT_PUBLISH_RATE_WORKSPACE,
            publish_rate_user: Config::DEFAULT_PUBLISH_RATE_USER,
            lock_ttl_ms: Config::DEFAULT_LOCK_TTL_MS,
            max_locks_per_connection: Config::DEFAULT_MAX_LOCKS_PER_CONNECTION,
            max_chat_badges_per_user: Config::DEFAULT_MAX_CHAT_BADGES_PER_USER,
            dashboard_actions_per_sec: Config::DEFAULT_DASHBOARD_ACTIONS_PER_SEC,
            presence_idle_ms: Config::DEFAULT_PRESENCE_IDLE_MS,
            presence_debounce_ms: Config::DEFAULT_PRESENCE_DEBOUNCE_MS,
            presence_poll_ttl_ms: Config::DEFAULT_PRESENCE_POLL_TTL_MS,
            doc_poll_ttl_ms: Config::DEFAULT_DOC_POLL_TTL_MS,
            max_pollers_per_user: Config::DEFAULT_MAX_POLLERS_PER_USER,
            long_poll_max_secs: Config::DEFAULT_LONG_POLL_MAX_SECS,
            cors_origins: Vec::new(),
            http_header_timeout_ms: Config::DEFAULT_HTTP_HEADER_TIMEOUT_MS,
            http_body_timeout_ms: Config::DEFAULT_HTTP_BODY_TIMEOUT_MS,
            max_connections_per_ip: Config::DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_connections_per_user: Config::DEFAULT_MAX_CONNECTIONS_PER_USER,
            max_docs_per_user: Config::DEFAULT_MAX_DOCS_PER_USER,
            max_docs_per_socket: Config::DEFAULT_MAX_DOCS_PER_SOCKET,
            max_stateless_bytes: Config::DEFAULT_MAX_STATELESS_BYTES,
            max_stateless_per_sec: Config::DEFAULT_MAX_STATELESS_PER_SEC,
            version_interval_secs: Config::DEFAULT_VERSION_INTERVAL_SECS,
            webhook_allow_private: false,
            webhook_debounce_ms: Config::DEFAULT_WEBHOOK_DEBOUNCE_MS,
            webhook_timeout_ms: Config::DEFAULT_WEBHOOK_TIMEOUT_MS,
            webhook_max_attempts: Config::DEFAULT_WEBHOOK_MAX_ATTEMPTS,
            webhook_retry_base_ms: Config::DEFAULT_WEBHOOK_RETRY_BASE_MS,
            webhook_retry_max_ms: Config::DEFAULT_WEBHOOK_RETRY_MAX_MS,
            webhook_disable_after_secs: Config::DEFAULT_WEBHOOK_DISABLE_AFTER_SECS,
            webhook_max_content_bytes: Config::DEFAULT_WEBHOOK_MAX_CONTENT_BYTES,
            versions_keep: Config::DEFAULT_VERSIONS_KEEP,
            versions_max_age_secs: Config::DEFAULT_VERSIONS_MAX_AGE_SECS,
            editing_idle_ms: Config::DEFAULT_EDITING_IDLE_MS,
            reconnect_window_ms: Config::DEFAULT_RECONNECT_WINDOW_MS,
            client_errors_per_minute: Config::DEFAULT_CLIENT_ERRORS_PER_MINUTE,
            ping_interval_ms: Config::DEFAULT_PING_INTERVAL_MS,
            ping_timeout_ms: Config::DEFAULT_PING_TIMEOUT_MS,
            shutdown_timeout_ms: Config::DEFAULT_SHUTDOWN_TIMEOUT_MS,
            auth_secret: None,
            auth_public_key: None,
            auth_leeway_secs: 0,
            auth_audience: None,
            realtime_plans: vec!["scale".to_string()],
            frame_ancestors: "'self'".to_string(),
            insecure_no_auth: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_mistakes_are_refused_with_the_flag_named() {
        assert!(Config::default().validate().is_ok());
        let cases = [
            (
                Config {
                    outbound_queue: 0,
                    ..Config::default()
                },
                "--outbound-queue",
            ),
            (
                Config {
                    ping_interval_ms: 5_000,
                    ping_timeout_ms: 5_000,
                    ..Config::default()
                },
                "--ping-timeout-ms",
            ),
            (
                Config {
                    auth_leeway_secs: 86_401,
                    ..Config::default()
                },
                "--auth-leeway-secs",
            ),
            (
                Config {
                    realtime_plans: vec![String::new()],
                    ..Config::default()
                },
                "--realtime-plans",
            ),
        ];
        for (config, flag) in cases {
            match config.validate() {
                Err(message) => assert!(message.contains(flag), "{message}"),
                Ok(()) => panic!("{flag}: expected a configuration error"),
            }
        }
    }
}
