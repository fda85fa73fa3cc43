//! SIGHUP (`systemctl reload`): the config file is read again and what can change while
//! hookgate runs is replaced, so that a provider's secret can be rotated (add the new
//! one, reload; later remove the old one, reload) without a restart.
//!
//! - Replaced: the sources (scheme settings, secrets, limits such as `max_body`,
//!   `rate_limit` and `tolerance`, locators, kept headers, routing keys),
//!   `server.max_body`, `server.request_timeout`, `server.failures_per_address`, and the
//!   config's `[[subscriptions]]` with their secrets. TLS certificate and key files are
//!   read again (the same paths).
//! - Kept until a restart, and named in the log: the listeners and their TLS settings,
//!   the connection limits, `server.threads`, `[admin]`, `[journal]`, `[broker]` and
//!   `[outbound]`.
//! - All or nothing: the new config is loaded, every secret resolved and every
//!   subscription checked before anything is replaced. A config that fails leaves the
//!   running one in place, and the log says why.
//!
//! A request in flight finishes under the source it was routed to. `env:` references
//! are read from hookgate's own environment, which a reload cannot change: rotate
//! through `file:` references (or the file itself) to avoid a restart.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use tokio::sync::{watch, Mutex};

use crate::config::{AdminConfig, BrokerConfig, Config, JournalConfig, OutboundConfig};
use crate::config::{Dur, Size, TlsConfig};
use crate::deliver::Deliverer;
use crate::gateway::{Clock, Gateway, IngestLimits};
use crate::journal::Journal;
use crate::listen::tls::Tls;
use crate::metrics::Metrics;

/// What a reload may not change: the config as it was at start, for these keys.
#[derive(Clone, PartialEq)]
struct Fixed {
    listen: std::net::SocketAddr,
    tls: Option<TlsConfig>,
    max_connections: usize,
    max_inflight_bytes: Size,
    header_read_timeout: Dur,
    drain_timeout: Dur,
    h2_max_concurrent_streams: u32,
    h2_keep_alive_interval: Dur,
    threads: Option<usize>,
    admin: AdminConfig,
    journal: JournalConfig,
    broker: Option<BrokerConfig>,
    outbound: OutboundConfig,
}

impl Fixed {
    fn of(config: &Config) -> Fixed {
        let server = &config.server;
        Fixed {
            listen: server.listen,
            tls: server.tls.clone(),
            max_connections: server.max_connections,
            max_inflight_bytes: server.max_inflight_bytes,
            header_read_timeout: server.header_read_timeout,
            drain_timeout: server.drain_timeout,
            h2_max_concurrent_streams: server.h2_max_concurrent_streams,
            h2_keep_alive_interval: server.h2_keep_alive_interval,
            threads: server.threads,
            admin: config.admin.clone(),
            journal: config.journal.clone(),
            broker: config.broker.clone(),
            outbound: config.outbound.clone(),
        }
    }

    /// The keys (or tables) that differ, in the config's order.
    fn changed(&self, new: &Fixed) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut differ = |key, same: bool| {
            if !same {
                keys.push(key)
            }
        };
        differ("server.listen", self.listen == new.listen);
        differ("[server.tls]", self.tls == new.tls);
        differ(
            "server.max_connections",
            self.max_connections == new.max_connections,
        );
        differ(
            "server.max_inflight_bytes",
            self.max_inflight_bytes == new.max_inflight_bytes,
        );
        differ(
            "server.header_read_timeout",
            self.header_read_timeout == new.header_read_timeout,
        );
        differ(
            "server.drain_timeout",
            self.drain_timeout == new.drain_timeout,
        );
        differ(
            "server.h2_max_concurrent_streams",
            self.h2_max_concurrent_streams == new.h2_max_concurrent_streams,
        );
        differ(
            "server.h2_keep_alive_interval",
            self.h2_keep_alive_interval == new.h2_keep_alive_interval,
        );
        differ("server.threads", self.threads == new.threads);
        differ("[admin]", self.admin == new.admin);
        differ("[journal]", self.journal == new.journal);
        differ("[broker]", self.broker == new.broker);
        differ("[outbound]", self.outbound == new.outbound);
        keys
    }
}

/// What one reload did.
#[derive(Debug, Default, PartialEq)]
pub struct Reloaded {
    /// Sources configured now that were not before, and those gone, by name.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Sources in force after the reload.
    pub sources: usize,
    /// Config-managed subscriptions written and deleted.
    pub subscriptions_put: usize,
    pub subscriptions_deleted: usize,
    /// Changed keys that take effect only after a restart.
    pub need_restart: Vec<&'static str>,
}

/// Everything a reload replaces, and the config the process started with.
pub struct Reloader {
    started: Fixed,
    /// Held while a reload runs, so that two never interleave.
    busy: Mutex<()>,
    /// Where the config was read from; `None` for a config given as text (tests).
    file: Option<std::path::PathBuf>,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) deliverer: Arc<Deliverer>,
    pub(crate) journal: Journal,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The TLS settings of the listeners, whose files are read again.
    pub(crate) tls: Vec<Arc<Tls>>,
}

impl Reloader {
    pub(crate) fn new(
        config: &Config,
        gateway: Arc<Gateway>,
        deliverer: Arc<Deliverer>,
        journal: Journal,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        tls: Vec<Arc<Tls>>,
    ) -> Reloader {
        Reloader {
            started: Fixed::of(config),
            busy: Mutex::new(()),
            file: config.file.clone(),
            gateway,
            deliverer,
            journal,
            metrics,
            clock,
            tls,
        }
    }

    /// Reads the config file again and applies it (see the module's comment).
    pub async fn reload_file(&self) -> anyhow::Result<Reloaded> {
        let Some(file) = self.file.clone() else {
            bail!("the config was not read from a file, so there is none to read again");
        };
        // The file and the secrets it names are read on the blocking pool, off the
        // request threads (with `server.threads = 1`, a slow read would hold them all up).
        let config = tokio::task::spawn_blocking(move || Config::load(&file))
            .await
            .map_err(|e| anyhow!("reading the config ended early: {e}"))??;
        self.apply(&config).await
    }

    /// Applies `config` in place of the running one, or changes nothing and says why.
    pub async fn apply(&self, config: &Config) -> anyhow::Result<Reloaded> {
        let _one_at_a_time = self.busy.lock().await;
        // Everything that can fail without side effects comes first.
        let sources = crate::build_sources(config)?;
        let fixed = Fixed::of(config);
        // The memory budget stays as it started, and a body must fit into it.
        if config.server.max_body.0 > self.started.max_inflight_bytes.0 {
            bail!(
                "server.max_body ({} bytes) is larger than the running server.max_inflight_bytes ({} bytes)",
                config.server.max_body.0,
                self.started.max_inflight_bytes.0
            );
        }
        let current = self.gateway.limits.load_full();
        let limits = IngestLimits::new(&config.server, Some(current.as_ref()))?;
        let now_ms = crate::unix_ms(self.clock.now());
        let plan = crate::deliver::managed::plan(config, &self.journal, now_ms)?;

        let before = self.gateway.sources.snapshot();
        let mut added: Vec<String> = sources
            .keys()
            .filter(|name| !before.contains_key(*name))
            .cloned()
            .collect();
        let mut removed: Vec<String> = before
            .keys()
            .filter(|name| !sources.contains_key(*name))
            .cloned()
            .collect();
        added.sort();
        removed.sort();

        // Secrets before subscriptions: a worker started for a new subscription finds
        // its secret, and one ending for a removed subscription still has its own.
        let mut staged: HashMap<String, Vec<String>> = plan.secrets.clone();
        for (name, secrets) in self.deliverer.config_secrets.load().iter() {
            staged
                .entry(name.clone())
                .or_insert_with(|| secrets.clone());
        }
        self.deliverer.config_secrets.store(Arc::new(staged));
        let (subscriptions_put, subscriptions_deleted) = match plan.apply(&self.journal).await {
            Ok(done) => done,
            // Some subscriptions may be old and some new: the union signs for both.
            Err(e) => {
                return Err(anyhow!(
                    "subscriptions: {e:#} (the sources were left as they were)"
                ))
            }
        };
        self.deliverer
            .config_secrets
            .store(Arc::new(plan.secrets.clone()));

        self.metrics.add_sources(added.iter().map(String::as_str));
        let count = sources.len();
        self.gateway.sources.replace(sources);
        self.gateway.limits.store(Arc::new(limits));
        Ok(Reloaded {
            added,
            removed,
            sources: count,
            subscriptions_put,
            subscriptions_deleted,
            need_restart: self.started.changed(&fixed),
        })
    }

    /// One SIGHUP: the TLS files, then the config file. Every outcome is logged.
    async fn hangup(&self) {
        for tls in &self.tls {
            let tls = tls.clone();
            let read = tokio::task::spawn_blocking(move || tls.reload()).await;
            match read.unwrap_or_else(|e| Err(format!("reading the files ended early: {e}"))) {
                Ok(()) => tracing::info!("TLS certificate and key reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the certificate in use")
                }
            }
        }
        match self.reload_file().await {
            Ok(done) => {
                tracing::info!(
                    sources = done.sources,
                    added = %done.added.join(","),
                    removed = %done.removed.join(","),
                    subscriptions_put = done.subscriptions_put,
                    subscriptions_deleted = done.subscriptions_deleted,
                    "config reloaded"
                );
                if !done.need_restart.is_empty() {
                    tracing::warn!(
                        keys = %done.need_restart.join(", "),
                        "these changes take effect only after a restart; the running values stay"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "config reload failed; the running config stays in place")
            }
        }
    }

    /// Reloads on every SIGHUP until `stop` turns true.
    pub(crate) async fn on_sighup(
        self: Arc<Self>,
        hangups: std::io::Result<tokio::signal::unix::Signal>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut hangups = match hangups {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the config will not be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = crate::listen::stopped(&mut stop) => return,
                _ = hangups.recv() => self.hangup().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_named() {
        let old = Config::parse("[server]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        let same = Config::parse(
            "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body = \"64KiB\"\nrequest_timeout = \"3s\"\n",
        )
        .unwrap();
        assert!(Fixed::of(&old).changed(&Fixed::of(&same)).is_empty());
        let moved = Config::parse(
            "[server]\nlisten = \"127.0.0.1:8081\"\nthreads = 3\n[journal]\npath = \"elsewhere\"\n[outbound]\ntimeout = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(
            Fixed::of(&old).changed(&Fixed::of(&moved)),
            ["server.listen", "server.threads", "[journal]", "[outbound]"]
        );
    }
}
