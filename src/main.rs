//! The `tandem` binary: `tandem serve` (the default) runs the server.

use clap::{Parser, Subcommand, ValueEnum};
use tandem::auth::{Claims, DocPermission, Role, Secret};
use tandem::Config;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "A real-time collaboration server speaking the Yjs protocol"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: Config,

    /// Log format.
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (what `tandem` with no subcommand does).
    Serve(Box<Config>),
    /// Mint a token signed with the server's secret, for development and scripts.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The HS256 secret the server verifies with.
    #[arg(long, env = "TANDEM_AUTH_SECRET", hide_env_values = true)]
    secret: Secret,
    /// User id (`sub`).
    #[arg(long)]
    sub: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Workspace: the first segment of the documents it may open.
    #[arg(long)]
    workspace: String,
    /// Plan.
    #[arg(long, default_value = "scale")]
    plan: String,
    /// Role.
    #[arg(long, value_enum, default_value_t = Role::Member)]
    role: Role,
    /// A document grant `GLOB=read` or `GLOB=write` (repeatable); none: the whole workspace,
    /// read-write.
    #[arg(long = "doc", value_name = "GLOB=read|write")]
    docs: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

/// jemalloc rather than the system's malloc: with glibc's, memory freed by a room or workspace
/// that unloads mostly stays with the process (its arenas fragment), so a server that has
/// served much memory keeps it; jemalloc returns free pages to the system within seconds.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (`_RJEM_MALLOC_CONF` in the environment overrides them): a background
/// thread returns pages freed for 5 s to the system, so an idle server shrinks by itself.
#[cfg(all(unix, not(target_env = "musl")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 63] =
    b"background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:5000\0";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(config)) => *config,
        None => cli.serve,
        Some(Command::Token(args)) => {
            init_logging(cli.log_format, None);
            println!("{}", mint_token(args)?);
            return Ok(());
        }
    };
    let mut config = config;
    if config.redis_url.is_some() && config.node_id.is_none() {
        // A node of a cluster is named in every log line: a fresh name per boot by default.
        config.node_id = Some(format!("node-{:06x}", tandem::boot_id() & 0xff_ffff));
    }
    init_logging(cli.log_format, config.node_id.as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(config.thread_stack_bytes())
        .build()?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.bind))?;
    tandem::serve(listener, config, shutdown_signal()).await?;
    Ok(())
}

fn mint_token(args: TokenArgs) -> anyhow::Result<String> {
    let mut docs = std::collections::BTreeMap::new();
    for grant in &args.docs {
        let (glob, permission) = grant
            .rsplit_once('=')
            .ok_or_else(|| anyhow::anyhow!("--doc {grant:?}: expected GLOB=read or GLOB=write"))?;
        let permission = match permission {
            "read" => DocPermission::Read,
            "write" => DocPermission::Write,
            other => anyhow::bail!("--doc {grant:?}: {other:?} is neither read nor write"),
        };
        docs.insert(glob.to_owned(), permission);
    }
    let claims = Claims {
        sub: args.sub,
        name: args.name,
        workspace: args.workspace,
        plan: Some(args.plan),
        role: args.role,
        docs: (!docs.is_empty()).then_some(docs),
        exp: tandem::auth::now_secs() + args.ttl_secs,
        iat: Some(tandem::auth::now_secs()),
        nbf: None,
    };
    Ok(tandem::auth::mint(&args.secret, &claims)?)
}

/// Logs to stdout in `format`; with `node`, every line names the node (`node=…` first in
/// pretty lines, a `"node"` field in JSON ones).
fn init_logging(format: LogFormat, node: Option<&str>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let node = node.map(str::to_owned);
    match format {
        LogFormat::Pretty => {
            let inner = tracing_subscriber::fmt::format::Format::default();
            builder.event_format(WithNode { node, inner }).init();
        }
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format::Format::default().json();
            builder
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(WithNode { node, inner })
                .init();
        }
    }
}

/// An event format that names the node in every line.
struct WithNode<F> {
    node: Option<String>,
    inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithNode<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(node) = &self.node else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            // A JSON object: the node is its first field.
            Some(rest) => {
                let node = serde_json::to_string(node).map_err(|_| std::fmt::Error)?;
                write!(writer, "{{\"node\":{node},{rest}")
            }
            None => write!(writer, "node={node} {line}"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
