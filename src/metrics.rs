//! Prometheus metrics (SPEC §7), served by the admin listener at `/metrics` in the
//! OpenMetrics text format. Counters are kept in memory from the start of the process;
//! the backlog and the broker's state are read when scraped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::forward::BrokerStatus;
use crate::journal::{Journal, Outcome};
use crate::source::Source;

/// The `source` label of requests to a path that names no configured source, so that
/// random paths cannot create new series. Source names cannot contain parentheses.
pub const UNKNOWN_SOURCE: &str = "(unknown)";

/// The `reason` of `hookgate_forward_errors_total`: the broker returned the message (no
/// queue bound), nacked it, the connection was lost, or could not be made; or an event
/// was found to be poison (it cannot be delivered as it is) and marked failed.
pub const FORWARD_ERRORS: [&str; 5] = ["returned", "nacked", "link", "connect", "poison"];

/// A source's series of the commonest answers, each found in its family on first use and
/// kept with the [`Source`]: finding a series takes a `String` label made, hashed and
/// looked up under the family's lock, and every request counts two. A clone of a series
/// counts into the same one, so a source rebuilt by a reload goes on counting where the
/// one before it left off.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Requests answered 200.
    ok: OnceLock<Counter>,
    accepted: OnceLock<Counter>,
    duplicate: OnceLock<Counter>,
    stale: OnceLock<Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub source: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub source: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub source: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// A `broker.url` node's `host:port`.
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    pub subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub subscription: String,
    /// `success` (2xx), `status` (another HTTP status) or `error` (no answer: connect,
    /// TLS, DNS, timeout, a refused address).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    events: Family<EventLabels, Counter>,
    verify_failures: Family<ReasonLabels, Counter>,
    refused_by_address: Family<SourceLabels, Counter>,
    ack_seconds: Histogram,
    backlog: Gauge,
    /// The journal's state, read when scraped.
    journal: JournalGauges,
    forward_published: Counter,
    forward_errors: Family<ErrorLabels, Counter>,
    broker_connected: Gauge,
    broker_node: Family<NodeLabels, Gauge>,
    replayed: Counter,
    connections: Family<ListenerLabels, Gauge>,
    /// With a broker: the node the forwarder is connected to (read when scraped).
    broker: Option<Arc<BrokerStatus>>,
    /// Group commit timings, filled by the journal.
    stages: crate::journal::Stages,
    deliveries: DeliveryMetrics,
}

/// Subscriptions' deliveries (SPEC §9): attempts and their latency as they happen; the
/// pending and disabled gauges read from the journal when scraped.
struct DeliveryMetrics {
    attempts: Family<AttemptLabels, Counter>,
    attempt_seconds: Family<SubscriptionLabels, Histogram>,
    pending: Family<SubscriptionLabels, Gauge>,
    disabled: Family<SubscriptionLabels, Gauge>,
}

impl DeliveryMetrics {
    fn new(registry: &mut Registry) -> DeliveryMetrics {
        let metrics = DeliveryMetrics {
            attempts: Family::default(),
            // 1 ms to about 33 s, doubling.
            attempt_seconds: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 2.0, 16,
                ))
            }),
            pending: Family::default(),
            disabled: Family::default(),
        };
        registry.register(
            "hookgate_delivery_attempts",
            "Delivery attempts to subscriptions' endpoints by outcome: success (2xx), status (another HTTP status) or error (no answer)",
            metrics.attempts.clone(),
        );
        registry.register(
            "hookgate_delivery_attempt_seconds",
            "Time one delivery attempt took, request to answer",
            metrics.attempt_seconds.clone(),
        );
        registry.register(
            "hookgate_delivery_pending",
            "Deliveries still to be made, per subscription",
            metrics.pending.clone(),
        );
        registry.register(
            "hookgate_subscription_disabled",
            "1 for a subscription that is not active (disabled by hookgate or by an operator)",
            metrics.disabled.clone(),
        );
        metrics
    }

    fn read(&self, journal: &Journal) {
        self.pending.clear();
        self.disabled.clear();
        for sub in journal.subscriptions().borrow().iter() {
            let labels = SubscriptionLabels {
                subscription: sub.name.clone(),
            };
            self.pending
                .get_or_create(&labels)
                .set(journal.sub_stats(sub.num).pending as i64);
            self.disabled
                .get_or_create(&labels)
                .set(i64::from(!sub.active));
        }
    }
}

impl Metrics {
    /// Metrics for these sources. Every series whose labels are known in advance starts
    /// at zero, so that each metric is there from the first scrape and rates and alerts
    /// work without waiting for the first failure.
    pub fn new<'a>(
        sources: impl IntoIterator<Item = &'a str>,
        broker: Option<Arc<BrokerStatus>>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let events = Family::<EventLabels, Counter>::default();
        let verify_failures = Family::<ReasonLabels, Counter>::default();
        let refused_by_address = Family::<SourceLabels, Counter>::default();
        // 250 µs to 16 s, doubling.
        let ack_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 17),
        );
        let backlog = Gauge::default();
        let journal = JournalGauges::default();
        let forward_published = Counter::default();
        let forward_errors = Family::<ErrorLabels, Counter>::default();
        let broker_connected = Gauge::default();
        let broker_node = Family::<NodeLabels, Gauge>::default();
        let replayed = Counter::default();
        let connections = Family::<ListenerLabels, Gauge>::default();
        // The library adds `_total` to counter names.
        registry.register(
            "hookgate_requests",
            "Requests on the ingest listener by source and HTTP status",
            requests.clone(),
        );
        registry.register(
            "hookgate_events",
            "Verified events by source and journal outcome (accepted, duplicate, stale)",
            events.clone(),
        );
        registry.register(
            "hookgate_verify_failures",
            "Requests that failed verification, by source and error code",
            verify_failures.clone(),
        );
        registry.register(
            "hookgate_refused_by_address",
            "Failed requests refused as rate limited because their client address failed too often (server.failures_per_address)",
            refused_by_address.clone(),
        );
        registry.register(
            "hookgate_ack_seconds",
            "Time from the start of an ingest request to its answer",
            ack_seconds.clone(),
        );
        registry.register(
            "hookgate_journal_backlog",
            "Events in the journal not yet delivered (queued)",
            backlog.clone(),
        );
        journal.register(&mut registry);
        registry.register(
            "hookgate_forward_published",
            "Events the broker confirmed",
            forward_published.clone(),
        );
        registry.register(
            "hookgate_forward_errors",
            "Failed deliveries to the broker: returned, nacked, or the link lost",
            forward_errors.clone(),
        );
        registry.register(
            "hookgate_broker_connected",
            "1 while the forwarder is connected to the broker (always 0 without a broker)",
            broker_connected.clone(),
        );
        registry.register(
            "hookgate_broker_node",
            "1 for the broker node (host:port of broker.url) the forwarder is connected to, 0 for the other configured nodes",
            broker_node.clone(),
        );
        registry.register(
            "hookgate_replayed",
            "Events queued again by a replay",
            replayed.clone(),
        );
        registry.register(
            "hookgate_connections_open",
            "Open connections by listener",
            connections.clone(),
        );
        let deliveries = DeliveryMetrics::new(&mut registry);
        let stages = crate::journal::Stages::default();
        registry.register(
            "hookgate_journal_group_seconds",
            "Time the committer spent on one group of journal commands",
            stages.group_seconds.clone(),
        );
        registry.register(
            "hookgate_journal_group_commands",
            "Journal commands (appends, deliveries, ...) in one group",
            stages.group_commands.clone(),
        );
        registry.register(
            "hookgate_journal_sync_seconds",
            "One fdatasync of the commit log (everything a group wrote)",
            stages.sync_seconds.clone(),
        );
        for reason in FORWARD_ERRORS {
            let _ = forward_errors.get_or_create(&ErrorLabels { reason });
        }
        for node in broker.iter().flat_map(|b| b.nodes()) {
            let _ = broker_node.get_or_create(&NodeLabels { node: node.clone() });
        }
        for listener in ["ingest", "admin"] {
            let _ = connections.get_or_create(&ListenerLabels { listener });
        }
        let metrics = Metrics {
            registry,
            requests,
            events,
            verify_failures,
            refused_by_address,
            ack_seconds,
            backlog,
            journal,
            forward_published,
            forward_errors,
            broker_connected,
            broker_node,
            replayed,
            connections,
            broker,
            stages,
            deliveries,
        };
        metrics.add_sources(sources);
        metrics
    }

    /// Starts each series of these sources at zero (at start, and for sources a reload
    /// adds). A series of a source no longer configured stays, with its counts.
    pub fn add_sources<'a>(&self, sources: impl IntoIterator<Item = &'a str>) {
        let (requests, events, refused_by_address, verify_failures) = (
            &self.requests,
            &self.events,
            &self.refused_by_address,
            &self.verify_failures,
        );
        for source in sources {
            let _ = requests.get_or_create(&RequestLabels {
                source: source.to_string(),
                code: 200,
            });
            for status in ["accepted", "duplicate", "stale"] {
                let _ = events.get_or_create(&EventLabels {
                    source: source.to_string(),
                    status,
                });
            }
            let _ = refused_by_address.get_or_create(&SourceLabels {
                source: source.to_string(),
            });
            for reason in crate::verify::VerifyError::CODES {
                let _ = verify_failures.get_or_create(&ReasonLabels {
                    source: source.to_string(),
                    reason,
                });
            }
        }
    }

    /// For the journal to record group commit timings into.
    pub fn journal_stages(&self) -> crate::journal::Stages {
        self.stages.clone()
    }

    /// One answered ingest request: to `source`, or when the path named none to
    /// [`UNKNOWN_SOURCE`].
    pub fn request(&self, source: Option<&Source>, code: u16, elapsed: Duration) {
        let name = source.map_or(UNKNOWN_SOURCE, |s| s.name.as_str());
        let series = || {
            self.requests
                .get_or_create(&RequestLabels {
                    source: name.to_string(),
                    code,
                })
                .clone()
        };
        match source {
            Some(source) if code == 200 => source.counters.ok.get_or_init(series).inc(),
            _ => series().inc(),
        };
        self.ack_seconds.observe(elapsed.as_secs_f64());
    }

    /// An event of `source` journaled with `outcome`.
    pub fn event(&self, source: &Source, outcome: Outcome) {
        let counters = &source.counters;
        let series = match outcome {
            Outcome::Accepted(_) => &counters.accepted,
            Outcome::Duplicate(_) => &counters.duplicate,
            Outcome::Stale(_) => &counters.stale,
        };
        series
            .get_or_init(|| {
                self.events
                    .get_or_create(&EventLabels {
                        source: source.name.clone(),
                        status: outcome.status(),
                    })
                    .clone()
            })
            .inc();
    }

    pub fn verify_failure(&self, source: &str, reason: &'static str) {
        self.verify_failures
            .get_or_create(&ReasonLabels {
                source: source.to_string(),
                reason,
            })
            .inc();
    }

    pub fn refused_by_address(&self, source: &str) {
        self.refused_by_address
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .inc();
    }

    pub fn published(&self, n: u64) {
        self.forward_published.inc_by(n);
    }

    pub fn forward_error(&self, reason: &'static str) {
        self.forward_errors
            .get_or_create(&ErrorLabels { reason })
            .inc();
    }

    pub fn replayed(&self, n: u64) {
        self.replayed.inc_by(n);
    }

    /// Counts an open connection until the guard is dropped.
    pub fn connection(self: &Arc<Self>, listener: &'static str) -> ConnectionGuard {
        self.connections
            .get_or_create(&ListenerLabels { listener })
            .inc();
        ConnectionGuard {
            metrics: self.clone(),
            listener,
        }
    }

    /// The OpenMetrics text of every metric, with the gauges read now.
    /// A delivery attempt to a subscription's endpoint.
    pub fn delivery_attempt(&self, subscription: &str, outcome: &'static str, took: Duration) {
        let subscription = subscription.to_string();
        self.deliveries
            .attempt_seconds
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.clone(),
            })
            .observe(took.as_secs_f64());
        self.deliveries
            .attempts
            .get_or_create(&AttemptLabels {
                subscription,
                outcome,
            })
            .inc();
    }

    pub fn render(&self, journal: &Journal) -> String {
        self.backlog.set(journal.backlog() as i64);
        self.journal.read(journal);
        self.deliveries.read(journal);
        let in_use = self.broker.as_ref().and_then(|b| b.node());
        self.broker_connected.set(i64::from(in_use.is_some()));
        for node in self.broker.iter().flat_map(|b| b.nodes()) {
            self.broker_node
                .get_or_create(&NodeLabels { node: node.clone() })
                .set(i64::from(in_use == Some(node.as_str())));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    listener: &'static str,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .connections
            .get_or_create(&ListenerLabels {
                listener: self.listener,
            })
            .dec();
    }
}

/// Gauges of the journal's state beside the backlog, read when scraped.
#[derive(Default)]
struct JournalGauges {
    backlog_bytes: Gauge,
    damaged: Gauge,
    writable: Gauge,
    disk_free: Gauge,
}

impl JournalGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "hookgate_journal_backlog_bytes",
            "Bytes of the events in the journal not yet delivered",
            self.backlog_bytes.clone(),
        );
        registry.register(
            "hookgate_journal_damaged",
            "Events whose commit log entry was found damaged (their content is lost)",
            self.damaged.clone(),
        );
        registry.register(
            "hookgate_journal_writable",
            "1 while the journal takes new events, 0 while a write failure, low disk space or a full backlog refuses them",
            self.writable.clone(),
        );
        registry.register(
            "hookgate_journal_disk_free_bytes",
            "Free space on the journal's disk",
            self.disk_free.clone(),
        );
    }

    fn read(&self, journal: &Journal) {
        self.backlog_bytes.set(journal.backlog_bytes() as i64);
        let damaged: u64 = journal.counts().values().map(|c| c.damaged).sum();
        self.damaged.set(damaged as i64);
        self.writable.set(i64::from(journal.unready().is_none()));
        if let Some(free) = journal.disk_free() {
            self.disk_free.set(free as i64);
        }
    }
}
