//! Subscriptions (SPEC §9-10): the second way out of the journal, beside the broker's
//! outbox ([`crate::forward`]), with the same shape: a durable pending set in the
//! journal, a worker that takes from it within its limits, an attempt, and an outcome
//! written back in one committer step.
//!
//! - Every accepted event that matches a subscription gets a delivery in the committer
//!   step that accepts it (see `journal::deliveries`).
//! - [`Deliverer::run`] keeps one [`worker`] per push subscription: it takes the
//!   subscription's pending deliveries in journal order within `max_in_flight` (one at a
//!   time when `ordered`) and `rate_limit`, makes each [`attempt`] with the shared
//!   [`client`], and writes what it came to back to the journal. A slow or dead endpoint
//!   holds up only its own worker.
//! - Pull subscriptions have no worker: consumers lease and acknowledge through the
//!   admin API.
//! - Once a second, deliveries whose callback did not come in time are ended.

pub mod attempt;
pub mod callback;
pub mod client;
pub mod managed;
pub mod pattern;
pub mod schedule;
pub mod sign;
pub mod target;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::journal::{Journal, Mode, Subscription};
use crate::listen::stopped;
use crate::metrics::Metrics;

pub use self::client::Outbound;
pub use self::schedule::Schedule;

/// How often overdue callbacks are looked for.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

pub struct Deliverer {
    pub journal: Journal,
    pub outbound: Outbound,
    /// `[outbound] allow_private`: checked again when a subscription is created.
    pub allow: target::AllowList,
    pub schedule: Schedule,
    pub callback_timeout: Duration,
    /// Where callbacks reach the ingest listener, without a trailing `/`.
    pub callback_base: String,
    /// The signing secrets of config-managed subscriptions, by name (theirs stay out of
    /// the journal); a reload replaces them.
    pub config_secrets: ArcSwap<HashMap<String, Vec<String>>>,
    pub metrics: Arc<Metrics>,
}

/// Headers hookgate sets on every attempt, which a subscription's `headers` may not
/// replace (from the config or the API alike): the Standard Webhooks signature, what
/// describes the body, and transport; and every `webhook-*` and `hookgate-*` name.
const RESERVED_HEADERS: &[&str] = &[
    "user-agent",
    "content-type",
    "content-length",
    "content-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Whether a subscription may not set the header `lower` (a lowercase name).
pub fn reserved_header(lower: &str) -> bool {
    lower.starts_with("webhook-")
        || lower.starts_with("hookgate-")
        || RESERVED_HEADERS.contains(&lower)
}

/// Whether hookgate itself sends a subscription's deliveries.
fn pushed(sub: &Subscription) -> bool {
    sub.url.is_some() && sub.mode != Mode::Pull
}

impl Deliverer {
    /// Runs until `stop` turns true: a worker per push subscription, started and ended
    /// as subscriptions come and go.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut subscriptions = self.journal.subscriptions();
        let mut workers: HashMap<u64, JoinHandle<()>> = HashMap::new();
        let expirer = tokio::spawn(self.clone().expire_callbacks(stop.clone()));
        loop {
            let current: Vec<u64> = subscriptions
                .borrow_and_update()
                .iter()
                .filter(|s| pushed(s))
                .map(|s| s.num)
                .collect();
            workers.retain(|_, handle| !handle.is_finished());
            for num in current {
                workers.entry(num).or_insert_with(|| {
                    tokio::spawn(worker::Worker::new(self.clone(), num).run(stop.clone()))
                });
            }
            tokio::select! {
                _ = stopped(&mut stop) => break,
                changed = subscriptions.changed() => if changed.is_err() { break },
            }
        }
        for (_, handle) in workers {
            let _ = handle.await;
        }
        let _ = expirer.await;
    }

    /// The secrets a subscription signs with now: a config-managed one's from the
    /// config; an API one's current secret and, for a day after a rotation, the old one.
    pub(crate) fn secrets(&self, sub: &Subscription, now_ms: u64) -> Vec<String> {
        if sub.managed == crate::journal::subscription::Managed::Config {
            // The journal keeps none of these (see `managed`).
            let config = self.config_secrets.load();
            return config.get(&sub.name).cloned().unwrap_or_default();
        }
        sub.secrets
            .iter()
            .filter(|(_, until)| until.is_none_or(|until| until > now_ms))
            .map(|(secret, _)| secret.clone())
            .collect()
    }

    async fn expire_callbacks(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(EXPIRE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = tick.tick() => {}
            }
            loop {
                match self
                    .journal
                    .expire_callbacks(crate::unix_ms(SystemTime::now()))
                    .await
                {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot end overdue callbacks now");
                        break;
                    }
                }
            }
        }
    }
}
