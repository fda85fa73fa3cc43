//! hookgate: a webhook gateway.
//!
//! A provider's request walks these stages, each a module:
//!
//! - [`listen`]: accept loop, connection limit, timeouts, graceful drain.
//! - [`gateway`]: the pipeline for one request, in order:
//!   [`receive`] (route, body limit) -> [`verify`] (signature, tolerance; the only
//!   maker of `Verified`) -> [`receive`] (content type -> JSON payload) -> [`admit`]
//!   (id, type, timestamps, order key) -> [`journal`] (dedup, ordering, group-committed
//!   fsync) -> [`answer`] (the one place errors become HTTP).
//! - [`forward`]: with a `[broker]`, the outbox that takes queued events from the
//!   journal to RabbitMQ and marks them delivered once the broker confirms them.
//! - [`admin`]: health, readiness, the pull API over the journal and its live stream.
//! - [`console`]: the web console on the admin listener, a client of [`admin`]'s API.
//! - [`config`] and [`source`]: the TOML file and each source at run time; [`sources`]
//!   holds them as they run now, and [`reload`] replaces them on SIGHUP.
//! - [`cli`]: the subcommands other than `serve`.

pub mod admin;
pub mod admit;
pub mod answer;
pub mod cli;
pub mod config;
pub mod console;
pub mod deliver;
pub mod forward;
pub mod fuzzing;
pub mod gateway;
pub mod headers;
pub mod journal;
pub mod listen;
pub mod locator;
pub mod metrics;
pub mod receive;
pub mod refuse;
pub mod reload;
pub mod source;
pub mod sources;
pub mod telemetry;
pub mod verify;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::{Clock, Gateway, SystemClock};
use crate::journal::Journal;
use crate::source::Source;

/// A gateway that is running: its bound addresses and the means to stop it.
pub struct Running {
    pub ingest_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub journal: Journal,
    /// What SIGHUP calls; tests call it directly.
    pub reloader: Arc<reload::Reloader>,
    /// The live stream's one reader of the journal (its counts, for tests).
    pub stream: admin::broadcast::Broadcaster,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops in order: stop accepting, drain requests in flight (bounded), then flush and
    /// close the journal.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.journal.close().await;
        tracing::info!("stopped");
    }
}

/// Builds every source, resolving secrets; the error names the source and the secret.
pub fn build_sources(config: &Config) -> anyhow::Result<sources::Table> {
    let mut sources = sources::Table::default();
    for cfg in &config.sources {
        let source = Source::build(cfg, &config.server)
            .map_err(|e| anyhow::anyhow!("source `{}`: {e}", cfg.name))?;
        if source.insecure && source.allowed_client_names.is_empty() {
            tracing::warn!(source = %source.name, "source verifies nothing (scheme none, insecure = true)");
        }
        sources.insert(source.name.clone(), Arc::new(source));
    }
    Ok(sources)
}

/// `broker.url`'s nodes, resolved and parsed; the error names the entry at fault.
fn broker_nodes(urls: &config::BrokerUrls) -> anyhow::Result<Vec<forward::Node>> {
    let resolved = urls.resolve().map_err(|e| anyhow::anyhow!("{e}"))?;
    resolved
        .iter()
        .enumerate()
        .map(|(i, url)| {
            forward::Node::parse(url).map_err(|e| anyhow::anyhow!("{}: {e}", urls.key(i)))
        })
        .collect()
}

/// Starts the gateway with the system clock.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

pub async fn start_with_clock(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    // Refused requests and refused TLS handshakes share one rate-limited log.
    let refusals = Arc::new(refuse::RefusalLog::default());
    let load_tls = |table: &str, settings: &Option<config::TlsConfig>| match settings {
        None => Ok(None),
        Some(settings) => listen::tls::Tls::load(settings)
            .map(|tls| Some(Arc::new(tls.log_refusals_to(refusals.clone()))))
            .map_err(|e| anyhow::anyhow!("[{table}]: {e}")),
    };
    let tls = load_tls("server.tls", &config.server.tls)?;
    let admin_tls = load_tls("admin.tls", &config.admin.tls)?;
    let sources = build_sources(config)?;
    let broker_nodes = match &config.broker {
        None => None,
        Some(broker) => Some(broker_nodes(&broker.url)?),
    };
    let broker_status = broker_nodes
        .as_deref()
        .map(|nodes| Arc::new(forward::BrokerStatus::new(nodes)));
    let metrics = Arc::new(metrics::Metrics::new(
        config.sources.iter().map(|s| s.name.as_str()),
        broker_status.clone(),
    ));
    let journal = Journal::open(journal::Settings {
        path: config.journal.path.clone(),
        dedup_window: config.journal.dedup_window.0,
        retention: config.journal.retention.0,
        max_backlog: config.journal.max_backlog,
        max_backlog_bytes: config.journal.max_backlog_bytes.map(|s| s.0),
        min_free: match config.journal.min_free {
            None => journal::MinFree::Default,
            Some(config::Floor::Bytes(bytes)) => journal::MinFree::Bytes(bytes),
            Some(config::Floor::Percent(percent)) => journal::MinFree::Percent(percent),
        },
        embedded: config.broker.is_none(),
        stages: Some(metrics.journal_stages()),
        delivery: journal::DeliveryPolicy {
            retry: config.outbound.retry(),
            disable_after: config.outbound.disable_after(),
        },
        segment_bytes: config.journal.segment_size.0,
        index_cache_bytes: config.journal.index_cache.0,
        group_delay: config.journal.group_delay.0,
    })
    .with_context(|| {
        format!(
            "cannot open the journal at {}",
            config.journal.path.display()
        )
    })?;

    let ingest = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
    let ingest_addr = ingest.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let limits = listen::Limits {
        max_connections: config.server.max_connections,
        header_read_timeout: config.server.header_read_timeout.0,
        drain_timeout: config.server.drain_timeout.0,
        // No more streams on one connection than the memory budget holds bodies.
        h2_max_streams: config.server.h2_max_concurrent_streams.min(
            u32::try_from(config.server.max_inflight_bytes.0 / config.server.max_body.0.max(1))
                .unwrap_or(u32::MAX)
                .max(1),
        ),
        h2_ping_interval: config.server.h2_keep_alive_interval.0,
    };
    let (stop, stopped) = watch::channel(false);

    let log_bodies = matches!(
        std::env::var("HOOKGATE_LOG_BODIES").as_deref(),
        Ok("1" | "true")
    );
    if log_bodies {
        tracing::warn!("HOOKGATE_LOG_BODIES is set: raw bodies are logged at debug level (target hookgate::bodies)");
    }
    let sources = sources::Sources::new(sources);
    let gateway = Arc::new(Gateway {
        sources: sources.clone(),
        journal: journal.clone(),
        clock: clock.clone(),
        limits: arc_swap::ArcSwap::from_pointee(gateway::IngestLimits::new(&config.server, None)?),
        metrics: metrics.clone(),
        log_bodies,
        refusals: refusals.clone(),
        budget: receive::budget::Budget::new(config.server.max_inflight_bytes.0),
    });
    let forwarder = match (&config.broker, broker_nodes, &broker_status) {
        (Some(broker), Some(nodes), Some(status)) => {
            let topology = forward::amqp::Topology {
                exchange: broker.exchange.clone(),
                queues: broker
                    .queues
                    .iter()
                    .map(|q| forward::amqp::QueueSpec {
                        name: q.name.clone(),
                        bindings: q.bindings.clone(),
                        kind: q.kind,
                    })
                    .collect(),
            };
            Some(forward::Forwarder {
                journal: journal.clone(),
                settings: forward::Settings {
                    nodes,
                    topology,
                    max_in_flight: broker.max_in_flight,
                    retry_initial: broker.retry.initial.0,
                    retry_max: broker.retry.max.0,
                },
                sources: sources.clone(),
                status: status.clone(),
                metrics: metrics.clone(),
            })
        }
        _ => None,
    };
    let config_secrets = deliver::managed::sync(config, &journal, unix_ms(clock.now())).await?;
    let deliverer = Arc::new(deliverer(
        config,
        &journal,
        &metrics,
        config_secrets,
        ingest_addr,
    )?);
    let token = match &config.admin.token {
        Some(reference) => Some(
            reference
                .resolve()
                .map_err(|e| anyhow::anyhow!("admin.token: {e}"))?,
        ),
        None => None,
    };
    let broadcaster =
        admin::broadcast::Broadcaster::new(journal.clone(), admin::stream::MAX_STREAMS);
    let admin_state = Arc::new(admin::Admin {
        journal: journal.clone(),
        token,
        hosts: config.admin.hosts.clone(),
        broker: broker_status.clone(),
        metrics: metrics.clone(),
        sources,
        source_urls: {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let base = format!("{scheme}://{}", cli::reachable(ingest_addr));
            config
                .sources
                .iter()
                .map(|s| {
                    let url = s
                        .public_url
                        .clone()
                        .unwrap_or_else(|| format!("{base}/hooks/{}", s.name));
                    (s.name.clone(), url)
                })
                .collect()
        },
        console: console::Console::new(console::Settings {
            secure: admin_tls.is_some(),
            port: admin_addr.port(),
            clock: clock.clone(),
        }),
        stop: stopped.clone(),
        clock: clock.clone(),
        deliverer: deliverer.clone(),
        stream: broadcaster.clone(),
    });
    let reloader = Arc::new(reload::Reloader::new(
        config,
        gateway.clone(),
        deliverer.clone(),
        journal.clone(),
        metrics.clone(),
        clock.clone(),
        tls.iter().chain(&admin_tls).cloned().collect(),
    ));
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(listen::serve(
        "ingest",
        ingest,
        limits,
        tls.clone(),
        move |request, peer| gateway.clone().handle(request, peer),
        stopped.clone(),
        metrics.clone(),
    )));
    let admin_limits = listen::Limits {
        max_connections: 256,
        ..limits
    };
    tasks.push(tokio::spawn(listen::serve(
        "admin",
        admin,
        admin_limits,
        admin_tls.clone(),
        move |request, peer: listen::Peer| admin_state.clone().serve(request, peer.cut),
        stopped.clone(),
        metrics,
    )));
    tasks.push(tokio::spawn(broadcaster.clone().feed(stopped.clone())));
    if let Some(forwarder) = forwarder {
        tasks.push(tokio::spawn(forwarder.run(stopped.clone())));
    }
    tasks.push(tokio::spawn(deliverer.run(stopped.clone())));
    // Always: without a handler, SIGHUP (`systemctl reload`) would end the process.
    // The handler is in place before the listeners are announced: a SIGHUP that came
    // before the task first ran would otherwise end the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tasks.push(tokio::spawn(
        reloader.clone().on_sighup(hangups, stopped.clone()),
    ));
    tasks.push(tokio::spawn(heal_periodically(
        journal.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(summarise_refusals(refusals, stopped.clone())));
    tasks.push(tokio::spawn(compact_periodically(
        journal.clone(),
        clock,
        config.journal.compact_every.0,
        stopped,
    )));
    // The runtime's own count: `server.threads` when `hookgate serve` built it.
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(addr = %ingest_addr, threads, "ingest listening");
    tracing::info!(addr = %admin_addr, "admin listening");
    Ok(Running {
        ingest_addr,
        admin_addr,
        journal,
        reloader,
        stream: broadcaster,
        stop,
        tasks,
    })
}

/// The sending side of subscriptions, from `[outbound]`.
fn deliverer(
    config: &Config,
    journal: &Journal,
    metrics: &Arc<metrics::Metrics>,
    config_secrets: HashMap<String, Vec<String>>,
    ingest_addr: SocketAddr,
) -> anyhow::Result<deliver::Deliverer> {
    let cidrs: Vec<String> = config
        .outbound
        .allow_private
        .iter()
        .map(|net| net.to_string())
        .collect();
    let allow = deliver::target::AllowList::parse(&cidrs)
        .map_err(|e| anyhow::anyhow!("outbound.allow_private: {e}"))?;
    let outbound = deliver::Outbound::new(deliver::client::OutboundSettings {
        allow: allow.clone(),
        timeout: config.outbound.timeout(),
        user_agent: format!("hookgate/{}", env!("CARGO_PKG_VERSION")),
    })?;
    Ok(deliver::Deliverer {
        journal: journal.clone(),
        outbound,
        allow,
        schedule: deliver::Schedule::new(config.outbound.retry()),
        callback_timeout: config.outbound.callback_timeout(),
        callback_base: config.callback_base_url_at(ingest_addr),
        config_secrets: arc_swap::ArcSwap::from_pointee(config_secrets),
        metrics: metrics.clone(),
    })
}

/// Logs how many refusals were left out of the log, once an interval and at the stop.
async fn summarise_refusals(refusals: Arc<refuse::RefusalLog>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(refuse::log::INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = listen::stopped(&mut stop) => break,
            _ = tick.tick() => {}
        }
        refusals.flush();
    }
    refusals.flush();
}

/// Compacts the journal every `every` (`journal.compact_every`), a chunk at a time,
/// until nothing remains.
async fn compact_periodically(
    journal: Journal,
    clock: Arc<dyn Clock>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = listen::stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        loop {
            match journal.compact(unix_ms(clock.now())).await {
                // A pause between steps: compaction shares the committer with appends.
                Ok(true) => tokio::time::sleep(Duration::from_millis(5)).await,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "journal compaction failed");
                    break;
                }
            }
        }
    }
}

/// Once a second, opens the journal again if a write failed and writes work again (see
/// [`Journal::heal`]): a full disk that is freed costs no restart.
async fn heal_periodically(journal: Journal, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = listen::stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        if !journal.is_healthy() {
            journal.heal().await;
        }
    }
}

/// Runs until SIGTERM or SIGINT, then stops gracefully. The signal handlers are in
/// place before anything listens, so a signal during start-up is never fatal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let running = start(&config).await?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received; shutting down");
    running.stop().await;
    Ok(())
}

/// Milliseconds since the epoch for a time.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
