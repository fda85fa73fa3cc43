//! The TOML configuration (SPEC §3): serde structs with `deny_unknown_fields`, defaults,
//! and one [`Config::load`] that parses and validates, naming the key at fault.

mod broker;
mod outbound;
mod secret;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

pub use broker::BrokerUrls;
pub use outbound::{
    OutboundConfig, SubscriptionConfig, SubscriptionMode, MAX_IN_FLIGHT, MAX_RETRIES, OWN_SOURCE,
};
pub use secret::{Secret, SecretRef};
pub use units::{parse_duration, parse_size, show_duration, Dur, Floor, Size};

use crate::locator::Locator;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub journal: JournalConfig,
    pub broker: Option<BrokerConfig>,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// The file this was read from, when it was: a reload reads it again.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Request body bytes held in memory across every connection and stream; a body
    /// waits for room, and past `request_timeout` gets 503.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: Size,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Dur,
    /// Requests failing verification allowed per client address (`COUNT/s|m|h`, or
    /// `off`); an address over it is refused before its body is read.
    #[serde(default = "default_failures_per_address")]
    pub failures_per_address: String,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` for HTTP/2 connections.
    #[serde(default = "default_h2_max_concurrent_streams")]
    pub h2_max_concurrent_streams: u32,
    /// How often HTTP/2 peers are pinged, and how long they have to answer.
    #[serde(default = "default_h2_keep_alive_interval")]
    pub h2_keep_alive_interval: Dur,
    /// Threads that serve requests (and run the forwarder and the deliverer); absent,
    /// `TOKIO_WORKER_THREADS` if set ([`ServerConfig::request_threads`]), else tokio's
    /// default: one per CPU the process may use (its affinity and cgroup quota). On a
    /// small machine that takes mostly new events, one fewer can do better, since the
    /// journal's committer and indexer threads work on every event (README, Performance).
    pub threads: Option<usize>,
    pub tls: Option<TlsConfig>,
}

/// The most request threads `server.threads` (or `TOKIO_WORKER_THREADS`) may ask for.
const MAX_THREADS: usize = 1024;

/// The variable tokio's runtime reads for its number of threads when it is given none.
const THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

impl ServerConfig {
    /// How many request threads `serve` runs: `server.threads`, else what
    /// `TOKIO_WORKER_THREADS` says ([`threads_from_env`]); `None` for one per CPU.
    pub fn request_threads(&self) -> anyhow::Result<Option<usize>> {
        match self.threads {
            Some(threads) => Ok(Some(threads)),
            None => threads_from_env(),
        }
    }
}

/// The number of threads `TOKIO_WORKER_THREADS` asks for; `None` when it is not set.
/// tokio reads the variable itself when it is not told a number, and panics on a value
/// it cannot use (`0`, `two`); read here, such a value is an error that names it, and
/// hookgate passes tokio the number.
pub fn threads_from_env() -> anyhow::Result<Option<usize>> {
    threads_from(std::env::var_os(THREADS_VAR))
}

fn threads_from(value: Option<std::ffi::OsString>) -> anyhow::Result<Option<usize>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    match value.trim().parse::<usize>() {
        Ok(threads) if (1..=MAX_THREADS).contains(&threads) => Ok(Some(threads)),
        _ => bail!(
            "{THREADS_VAR} must be a number of threads between 1 and {MAX_THREADS}, not {value:?}"
        ),
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    pub token: Option<SecretRef>,
    /// Host names the admin listener answers besides IP addresses and `localhost`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// HTTPS for the admin listener: the same keys as `[server.tls]`.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    #[serde(default = "default_journal_path")]
    pub path: PathBuf,
    #[serde(default = "default_retention")]
    pub retention: Dur,
    #[serde(default = "default_dedup_window")]
    pub dedup_window: Dur,
    #[serde(default = "default_max_backlog")]
    pub max_backlog: u64,
    /// Undelivered events' bytes beyond which new events get 503; absent: no limit.
    #[serde(default)]
    pub max_backlog_bytes: Option<Size>,
    /// Free disk space below which new events get 503; absent: the smaller of 1 GiB and
    /// 5% of the disk.
    #[serde(default)]
    pub min_free: Option<Floor>,
    /// A commit log segment is closed, and the next one started, once it holds this much.
    #[serde(default = "default_segment_size")]
    pub segment_size: Size,
    /// How often compaction looks for events past retention and ids past the window.
    #[serde(default = "default_compact_every")]
    pub compact_every: Dur,
    /// How much of the index's blocks fjall keeps in memory (its block cache).
    #[serde(default = "default_index_cache")]
    pub index_cache: Size,
    /// How long the committer waits, when a sync ends with many events already queued,
    /// for more to join the next group; `0ms`: it does not wait.
    #[serde(default = "default_group_delay")]
    pub group_delay: Dur,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// One address, or a cluster's nodes in the order they are tried.
    pub url: BrokerUrls,
    #[serde(default = "default_exchange")]
    pub exchange: String,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub queues: Vec<QueueConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "default_retry_initial")]
    pub initial: Dur,
    #[serde(default = "default_retry_max")]
    pub max: Dur,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: default_retry_initial(),
            max: default_retry_max(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub name: String,
    #[serde(default)]
    pub bindings: Vec<String>,
    #[serde(default)]
    pub kind: QueueKind,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    #[default]
    Quorum,
    Classic,
}

/// One `[[sources]]` entry as written. Scheme-specific keys are checked against the
/// scheme in [`crate::source::Source::build`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub scheme: String,
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    #[serde(default)]
    pub insecure: bool,
    pub tolerance: Option<Dur>,
    pub methods: Option<Vec<String>>,
    pub max_body: Option<Size>,
    pub public_url: Option<String>,
    pub id: Option<Locator>,
    pub event_type: Option<Locator>,
    pub timestamp: Option<Locator>,
    pub order_key: Option<Locator>,
    pub order_timestamp: Option<Locator>,
    pub routing_key: Option<String>,
    pub allowed_client_names: Option<Vec<String>>,
    pub rate_limit: Option<String>,
    /// Request headers not to keep with the events, besides signatures and secrets.
    pub drop_headers: Option<Vec<String>>,
    /// When set, the only request headers kept with the events.
    pub keep_headers: Option<Vec<String>>,
    // scheme `github`
    pub allow_sha1: Option<bool>,
    // scheme `token`
    pub token_header: Option<String>,
    // scheme `hmac`
    pub signature_header: Option<String>,
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub prefix: Option<String>,
    pub signed: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_body() -> Size {
    Size(1 << 20)
}
fn default_header_read_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_inflight_bytes() -> Size {
    Size(256 << 20)
}
fn default_drain_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_failures_per_address() -> String {
    "10/s".to_string()
}
fn default_h2_max_concurrent_streams() -> u32 {
    100
}
fn default_h2_keep_alive_interval() -> Dur {
    Dur(Duration::from_secs(20))
}
fn default_journal_path() -> PathBuf {
    PathBuf::from("data/journal")
}
fn default_retention() -> Dur {
    Dur(Duration::from_secs(7 * 86_400))
}
fn default_segment_size() -> Size {
    Size(64 * 1024 * 1024)
}
fn default_index_cache() -> Size {
    Size(crate::journal::DEFAULT_INDEX_CACHE)
}
/// The longest `journal.group_delay`: every request waits it under load, well inside any
/// provider's time-out, and past a few syncs' time a group gains nothing more.
const MAX_GROUP_DELAY: Duration = Duration::from_millis(10);
fn default_group_delay() -> Dur {
    Dur(Duration::ZERO)
}
fn default_compact_every() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_dedup_window() -> Dur {
    Dur(Duration::from_secs(72 * 3_600))
}
fn default_max_backlog() -> u64 {
    1_000_000
}
fn default_exchange() -> String {
    "hookgate".to_string()
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_retry_initial() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_retry_max() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_body: default_max_body(),
            header_read_timeout: default_header_read_timeout(),
            request_timeout: default_request_timeout(),
            max_connections: default_max_connections(),
            max_inflight_bytes: default_max_inflight_bytes(),
            drain_timeout: default_drain_timeout(),
            failures_per_address: default_failures_per_address(),
            h2_max_concurrent_streams: default_h2_max_concurrent_streams(),
            h2_keep_alive_interval: default_h2_keep_alive_interval(),
            threads: None,
            tls: None,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            tls: None,
            token: None,
            hosts: Vec::new(),
        }
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: default_journal_path(),
            retention: default_retention(),
            dedup_window: default_dedup_window(),
            max_backlog: default_max_backlog(),
            max_backlog_bytes: None,
            min_free: None,
            segment_size: default_segment_size(),
            compact_every: default_compact_every(),
            group_delay: default_group_delay(),
            index_cache: default_index_cache(),
        }
    }
}

impl Config {
    /// Reads and validates a config file. Relative paths in it (journal, certificates)
    /// stay relative to the working directory, as a user typing them would expect.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config =
            Config::parse(&text).with_context(|| format!("in config file {}", path.display()))?;
        config.file = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; everything but secret resolution is checked.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        // The error's own text quotes the offending line, which may hold a literal secret:
        // say where and what instead.
        let config: Config = toml::from_str(text).map_err(|e| {
            let Some(span) = e.span() else {
                return anyhow::anyhow!("{}", e.message());
            };
            let start = span.start.min(text.len());
            let line = text.as_bytes()[..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(key, _)| key.trim())
                // Only a bare key: on a continuation line this could be part of a value.
                .filter(|key| {
                    !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                })
                .map(|key| format!(", key `{key}`"))
                .unwrap_or_default();
            anyhow::anyhow!("line {line}{key}: {}", e.message())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.server.max_connections == 0 {
            bail!("server.max_connections must be at least 1");
        }
        if self.server.max_body.0 == 0 {
            bail!("server.max_body must be at least 1 byte");
        }
        if self.server.h2_max_concurrent_streams == 0 {
            bail!("server.h2_max_concurrent_streams must be at least 1");
        }
        if self.server.h2_keep_alive_interval.0.is_zero() {
            bail!("server.h2_keep_alive_interval must be above 0");
        }
        if let Some(threads) = self.server.threads {
            if !(1..=MAX_THREADS).contains(&threads) {
                bail!("server.threads must be between 1 and {MAX_THREADS}");
            }
        }
        if self.server.failures_per_address != "off" {
            crate::source::parse_rate(&self.server.failures_per_address)
                .map_err(|e| anyhow::anyhow!("server.failures_per_address: {e}, or off"))?;
        }
        if self.journal.max_backlog == 0 {
            bail!("journal.max_backlog must be at least 1");
        }
        const SEGMENT_SIZES: std::ops::RangeInclusive<u64> = 64 * 1024..=1024 * 1024 * 1024;
        if !SEGMENT_SIZES.contains(&self.journal.segment_size.0) {
            bail!("journal.segment_size must be between 64KiB and 1GiB");
        }
        if self.journal.index_cache.0 < 1024 * 1024 {
            bail!("journal.index_cache must be at least 1MiB");
        }
        if self.journal.compact_every.0 < Duration::from_secs(1) {
            bail!("journal.compact_every must be at least 1s");
        }
        if self.journal.group_delay.0 > MAX_GROUP_DELAY {
            bail!("journal.group_delay must be at most 10ms");
        }
        // A body takes its whole length from the budget: one that could never fit would
        // wait until its request times out, every time.
        if self.server.max_body.0 > self.server.max_inflight_bytes.0 {
            bail!(
                "server.max_body ({} bytes) is larger than server.max_inflight_bytes ({} bytes): such a body could never be read",
                self.server.max_body.0,
                self.server.max_inflight_bytes.0
            );
        }
        if self.server.listen == self.admin.listen && self.server.listen.port() != 0 {
            bail!("server.listen and admin.listen must differ");
        }
        if self.admin.token.is_none() && !self.admin.listen.ip().is_loopback() {
            bail!(
                "admin.listen {} is not a loopback address, so admin.token must be set (the pull API shows every payload)",
                self.admin.listen
            );
        }
        if let Some(broker) = &self.broker {
            if broker.exchange.is_empty() {
                bail!("broker.exchange must not be empty");
            }
            if broker.max_in_flight == 0 {
                bail!("broker.max_in_flight must be at least 1");
            }
            for (i, q) in broker.queues.iter().enumerate() {
                if q.name.is_empty() {
                    bail!("broker.queues[{i}].name must not be empty");
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            if !seen.insert(source.name.as_str()) {
                bail!("sources[{i}].name: `{}` is used twice", source.name);
            }
            if source.name == OWN_SOURCE {
                bail!("sources[{i}].name: `{OWN_SOURCE}` is the gateway's own source of operational events");
            }
            crate::source::Source::check(source, &self.server)
                .map_err(|e| anyhow::anyhow!("sources[{i}] ({}): {e}", source.name))?;
        }
        outbound::validate(
            &self.outbound,
            &self.subscriptions,
            &self.sources,
            &self.server,
        )
    }

    /// Where callback URLs point (SPEC §10), without a trailing `/`:
    /// `outbound.callback_base_url`, else the ingest listener's own address.
    pub fn callback_base_url(&self) -> String {
        self.callback_base_url_at(self.server.listen)
    }

    /// [`Config::callback_base_url`] once the ingest listener is bound at `bound`: with
    /// `server.listen` on port 0 only the bound address says where callbacks reach it.
    pub fn callback_base_url_at(&self, bound: SocketAddr) -> String {
        match &self.outbound.callback_base_url {
            Some(base) => base.trim_end_matches('/').to_string(),
            None => outbound::default_callback_base(bound, self.server.tls.is_some()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_empty_file() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.server.listen, default_listen());
        assert_eq!(config.server.max_body, Size(1 << 20));
        assert_eq!(
            config.journal.dedup_window,
            Dur(Duration::from_secs(72 * 3600))
        );
        assert!(config.broker.is_none());
    }

    #[test]
    fn a_body_limit_beyond_the_memory_budget_is_refused() {
        let err = Config::parse("[server]\nmax_body = \"2MiB\"\nmax_inflight_bytes = \"1MiB\"\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("server.max_inflight_bytes"),
            "{err}"
        );
        assert_eq!(
            Config::parse("").unwrap().server.max_inflight_bytes,
            Size(256 << 20)
        );
    }

    #[test]
    fn an_open_admin_api_must_stay_on_loopback() {
        let err = Config::parse("[admin]\nlisten = \"0.0.0.0:9090\"\n").unwrap_err();
        assert!(err.to_string().contains("admin.token"), "{err}");
        Config::parse("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"env:T\"\n").unwrap();
        Config::parse("[admin]\nlisten = \"[::1]:9090\"\n").unwrap();
    }

    #[test]
    fn segment_size_compaction_interval_and_index_cache_have_bounds() {
        let journal = |keys: &str| Config::parse(&format!("[journal]\n{keys}\n"));
        let config =
            journal("segment_size = \"1MiB\"\ncompact_every = \"2s\"\ngroup_delay = \"500us\"")
                .unwrap();
        assert_eq!(config.journal.segment_size.0, 1 << 20);
        assert_eq!(config.journal.compact_every.0, Duration::from_secs(2));
        assert_eq!(config.journal.group_delay.0, Duration::from_micros(500));
        let default = journal("").unwrap();
        assert_eq!(default.journal.segment_size.0, 64 << 20);
        assert_eq!(default.journal.compact_every.0, Duration::from_secs(60));
        assert_eq!(default.journal.index_cache.0, 64 << 20);
        assert_eq!(default.journal.group_delay.0, Duration::ZERO);
        for (keys, says) in [
            ("segment_size = \"4KiB\"", "journal.segment_size"),
            ("segment_size = \"2GiB\"", "journal.segment_size"),
            ("compact_every = \"100ms\"", "journal.compact_every"),
            ("index_cache = \"64KiB\"", "journal.index_cache"),
            ("group_delay = \"11ms\"", "journal.group_delay"),
        ] {
            let err = journal(keys).unwrap_err().to_string();
            assert!(err.contains(says), "{keys}: {err}");
        }
    }

    #[test]
    fn request_threads_are_between_1_and_1024() {
        let server = |keys: &str| Config::parse(&format!("[server]\n{keys}\n"));
        assert_eq!(server("").unwrap().server.threads, None);
        assert_eq!(server("threads = 3").unwrap().server.threads, Some(3));
        for keys in ["threads = 0", "threads = 1025"] {
            let err = server(keys).unwrap_err().to_string();
            assert!(err.contains("server.threads"), "{keys}: {err}");
        }
    }

    #[test]
    fn tokio_worker_threads_is_read_as_server_threads_is() {
        let var = |value: &str| threads_from(Some(value.into()));
        assert_eq!(threads_from(None).unwrap(), None);
        assert_eq!(var("3").unwrap(), Some(3));
        assert_eq!(var(" 1024\n").unwrap(), Some(1024));
        for value in [
            "0",
            "1025",
            "",
            "two",
            "-1",
            "1.5",
            "99999999999999999999999",
        ] {
            let err = var(value).unwrap_err().to_string();
            assert!(
                err.contains("TOKIO_WORKER_THREADS must be a number of threads between 1 and 1024"),
                "{value:?}: {err}"
            );
        }
        // The key wins; the variable is read only without it.
        let config = Config::parse("[server]\nthreads = 2\n").unwrap();
        assert_eq!(config.server.request_threads().unwrap(), Some(2));
    }

    #[test]
    fn parse_errors_name_the_line_but_never_echo_it() {
        let text = "[[sources]]\nname = \"a\"\nscheme = \"github\"\nsecrets = [\"hunter2-literal\"]\nbogus = 1\n";
        let err = format!("{:#}", Config::parse(text).unwrap_err());
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("bogus"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let continued = "[[sources]]\nname = \"a\"\nscheme = \"github\"\nsecrets = [\n  \"abc=hunter2\",\n  7,\n]\n";
        let err = format!("{:#}", Config::parse(continued).unwrap_err());
        assert!(!err.contains("hunter2") && !err.contains("abc"), "{err}");
    }

    #[test]
    fn header_lists_are_checked() {
        let source = "[[sources]]\nname = \"gh\"\nscheme = \"github\"\nsecrets = [\"s\"]\n";
        Config::parse(&format!(
            "{source}drop_headers = [\"X-Internal\"]\nkeep_headers = [\"X-GitHub-Event\"]\n"
        ))
        .unwrap();
        let err = Config::parse(&format!(
            "{source}keep_headers = [\"X-Hub-Signature-256\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "sources[0] (gh): keep_headers: `X-Hub-Signature-256` carries a signature, a secret \
             or transport information and is never kept"
        );
        let err = Config::parse(&format!("{source}drop_headers = [\"bad name\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("drop_headers: `bad name` is not a header name"),
            "{err}"
        );
    }
}
