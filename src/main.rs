//! The `hookgate` command: arguments, config, telemetry and signals; the work is in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use hookgate::config::Config;

// glibc's malloc spent a few percent of the request path consolidating freed chunks;
// mimalloc's per-thread heaps suit many short-lived request buffers (see Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hookgate",
    version,
    about = "A webhook gateway: verify, journal durably, deduplicate, forward"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(short, long, env = "HOOKGATE_CONFIG", default_value = "hookgate.toml")]
        config: PathBuf,
    },
    /// Validate a config; print each source's URL, scheme and whether its secrets resolve.
    CheckConfig {
        #[arg(short, long, env = "HOOKGATE_CONFIG", default_value = "hookgate.toml")]
        config: PathBuf,
    },
    /// Write a commented starter config.
    Init {
        #[arg(long, default_value = "hookgate.toml")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Send one correctly signed test event for a source to the running gateway.
    Send {
        #[arg(long)]
        source: String,
        #[arg(short, long, env = "HOOKGATE_CONFIG", default_value = "hookgate.toml")]
        config: PathBuf,
        /// The body to send (default: a small JSON event).
        #[arg(long)]
        body: Option<PathBuf>,
        /// Content type of --body (default: guessed from its extension).
        #[arg(long)]
        content_type: Option<String>,
        #[arg(long)]
        event_type: Option<String>,
        /// The event id (default: a new random one).
        #[arg(long)]
        id: Option<String>,
        /// Where to send (default: the config's server.listen and /hooks/SOURCE).
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        tls: hookgate::cli::client::TlsArgs,
    },
    /// Find, read, replay and follow events through the admin API.
    Events {
        #[command(subcommand)]
        action: EventsAction,
        /// The config that names the admin address and token.
        #[arg(
            short,
            long,
            env = "HOOKGATE_CONFIG",
            default_value = "hookgate.toml",
            global = true
        )]
        config: PathBuf,
        /// The admin API's base URL (default: from the config's admin.listen).
        #[arg(long, global = true)]
        admin: Option<String>,
        /// The admin token (default: the config's admin.token).
        #[arg(
            long,
            env = "HOOKGATE_ADMIN_TOKEN",
            hide_env_values = true,
            global = true
        )]
        token: Option<String>,
        /// For [admin.tls]: the CA to trust and the client certificate to present.
        #[command(flatten)]
        tls: hookgate::cli::client::TlsArgs,
    },
    /// List, create, delete and test subscriptions through the admin API.
    Subscriptions {
        #[command(subcommand)]
        action: hookgate::cli::subscriptions::SubscriptionsAction,
        #[command(flatten)]
        admin: hookgate::cli::subscriptions::AdminArgs,
    },
    /// Read a subscription's delivery log and retry deliveries through the admin API.
    Deliveries {
        #[command(subcommand)]
        action: hookgate::cli::deliveries::DeliveriesAction,
        #[command(flatten)]
        admin: hookgate::cli::subscriptions::AdminArgs,
    },
    /// Ask the running gateway's admin listener whether it is alive (or, with --ready,
    /// ready); exit 0 if it is, 1 if not. For container health checks.
    Health {
        #[arg(short, long, env = "HOOKGATE_CONFIG", default_value = "hookgate.toml")]
        config: PathBuf,
        /// Ask /readyz (journal open and, with a broker, connected) instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// For [admin.tls]: the CA to trust and the client certificate to present.
        #[command(flatten)]
        tls: hookgate::cli::client::TlsArgs,
    },
    /// Write a development CA, a server certificate for localhost/127.0.0.1/::1 and a
    /// client certificate, for trying HTTPS and mTLS.
    GenCerts {
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// The client certificate's name (SAN DNS name and CN).
        #[arg(long, default_value = "client.local")]
        client_name: String,
    },
}

/// Which events `events list` and `events tail` show.
#[derive(clap::Args)]
struct EventFilters {
    #[arg(long)]
    source: Option<String>,
    /// queued, delivered, stale or failed.
    #[arg(long)]
    status: Option<String>,
    #[arg(long = "type")]
    event_type: Option<String>,
}

impl EventFilters {
    fn filters(&self) -> hookgate::cli::events::Filters<'_> {
        hookgate::cli::events::Filters {
            source: self.source.as_deref(),
            status: self.status.as_deref(),
            event_type: self.event_type.as_deref(),
            since: None,
        }
    }
}

#[derive(Subcommand)]
enum EventsAction {
    /// List events, oldest first.
    List {
        #[command(flatten)]
        filters: EventFilters,
        /// Start after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one event: headers, payload and delivery attempts. EVENT is its seq, or its
    /// id (the provider's delivery or event id).
    Show {
        event: String,
        /// EVENT is an id even though it is a number.
        #[arg(long)]
        id: bool,
    },
    /// Forward one event again, or every event the filters match.
    Replay {
        seq: Option<u64>,
        #[arg(long, conflicts_with = "seq")]
        source: Option<String>,
        #[arg(long, conflicts_with = "seq")]
        status: Option<String>,
        /// An RFC 3339 time, or a duration back from now such as 2h.
        #[arg(long, conflicts_with = "seq")]
        since: Option<String>,
    },
    /// Print new events as they arrive, until interrupted; with --forward-to, POST each
    /// to a local app, signed like a subscription's delivery.
    Tail {
        #[command(flatten)]
        filters: EventFilters,
        /// Start after this seq instead of at the newest event.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, conflicts_with = "forward_to")]
        json: bool,
        /// Follow the live stream and POST each event to this URL (e.g.
        /// http://localhost:3000/webhooks), printing a line with the app's answer.
        #[arg(long, value_name = "URL")]
        forward_to: Option<String>,
        /// The `whsec_…` secret to sign forwarded events with; without it one is made
        /// and printed.
        #[arg(long, requires = "forward_to", env = "HOOKGATE_FORWARD_SECRET")]
        secret: Option<String>,
    },
}

async fn events(
    action: EventsAction,
    config: &std::path::Path,
    admin: Option<&str>,
    token: Option<&str>,
    tls: hookgate::cli::client::TlsArgs,
) -> anyhow::Result<bool> {
    use hookgate::cli::events::{self, Filters, Target};
    let target = Target::resolve(config, admin, token)?.with_tls(tls);
    match action {
        EventsAction::List {
            filters,
            after,
            limit,
            json,
        } => events::list(&target, &filters.filters(), after, limit, json).await?,
        EventsAction::Show { event, id } => events::show(&target, &event, id).await?,
        EventsAction::Replay {
            seq,
            source,
            status,
            since,
        } => {
            let filters = Filters {
                source: source.as_deref(),
                status: status.as_deref(),
                event_type: None,
                since: since.as_deref(),
            };
            events::replay(&target, seq, &filters).await?
        }
        EventsAction::Tail {
            filters,
            after,
            json: _,
            forward_to: Some(url),
            secret,
        } => {
            if filters.status.is_some() {
                anyhow::bail!("--forward-to follows the live stream, which filters by --source and --type only");
            }
            let asked = hookgate::cli::forward::Forward {
                url: &url,
                secret: secret.as_deref(),
                source: filters.source.as_deref(),
                event_type: filters.event_type.as_deref(),
                after,
            };
            hookgate::cli::forward::run(&target, asked).await?
        }
        EventsAction::Tail {
            filters,
            after,
            json,
            forward_to: None,
            secret: _,
        } => events::tail(&target, &filters.filters(), after, json).await?,
    }
    Ok(true)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let given = std::env::var("HOOKGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok();
    let filter = hookgate::telemetry::log_filter(given.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("HOOKGATE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().flatten_event(false).init();
    } else {
        builder.init();
    }
}

/// Turns transparent huge pages off for the process, unless `MIMALLOC_ALLOW_THP` is set:
/// then mimalloc, which reads the same variable, decides. mimalloc asks the kernel for
/// huge pages, and the kernel zeroes each one, 2 MiB, where it is first touched. On the
/// journal's committer, which every append waits for, one such fault took 10-20 ms on
/// the development VM; that was most of hookgate's p99 past the floor's (BENCHMARKS.md,
/// 2026-12-07, eighth session). In 4 KiB pages the same zeroing comes in small steps.
fn without_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    without_huge_pages();
    match run(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command: Ok(false) when it did its work and found something wrong.
fn run(command: Command) -> anyhow::Result<bool> {
    // `serve` runs `server.threads` request threads when it is set; otherwise, as the
    // other commands, as many as `TOKIO_WORKER_THREADS` says, or one per CPU.
    let runtime_of = |threads: Option<usize>| -> anyhow::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = threads {
            builder.worker_threads(threads);
        }
        builder
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    let runtime = || hookgate::config::threads_from_env().and_then(runtime_of);
    match command {
        Command::Serve { config } => Config::load(&config).and_then(|config| {
            runtime_of(config.server.request_threads()?)?.block_on(hookgate::run(config))?;
            Ok(true)
        }),
        Command::CheckConfig { config } => hookgate::cli::check_config(&config),
        Command::Init { out, force } => hookgate::cli::init(&out, force).map(|()| true),
        Command::Events {
            action,
            config,
            admin,
            token,
            tls,
        } => runtime()?.block_on(events(
            action,
            &config,
            admin.as_deref(),
            token.as_deref(),
            tls,
        )),
        Command::Subscriptions { action, admin } => {
            runtime()?.block_on(hookgate::cli::subscriptions::run(action, &admin))
        }
        Command::Deliveries { action, admin } => {
            runtime()?.block_on(hookgate::cli::deliveries::run(action, &admin))
        }
        Command::Health { config, ready, tls } => {
            runtime()?.block_on(hookgate::cli::health(&config, ready, &tls))
        }
        Command::GenCerts { out, client_name } => {
            hookgate::cli::certs::gen_certs(&out, &client_name).map(|written| {
                for path in written {
                    println!("wrote {}", path.display());
                }
                true
            })
        }
        Command::Send {
            source,
            config,
            body,
            content_type,
            event_type,
            id,
            url,
            tls,
        } => runtime()?.block_on(hookgate::cli::send(hookgate::cli::SendArgs {
            config: &config,
            source: &source,
            body: body.as_deref(),
            content_type: content_type.as_deref(),
            event_type: event_type.as_deref(),
            id: id.as_deref(),
            url: url.as_deref(),
            pad_to: None,
            tls,
        })),
    }
}
