//! The outbox: every queued event leaves the journal for the broker, in journal order,
//! and is marked `delivered` only once the broker has confirmed it (SPEC §8).
//!
//! Publishes are pipelined up to `max_in_flight` unconfirmed messages. A nack or a
//! return (no queue bound) keeps the event `queued` and holds back its source, whose
//! events are published again, in order, after a backoff; other sources go on. A lost
//! connection is rebuilt with backoff and everything unconfirmed is published again
//! (same `message_id`): delivery is at least once. The broker never slows ingest: events
//! wait in the journal until `max_backlog`.
//!
//! `broker.url` may list a cluster's nodes ([`nodes`]): the forwarder connects to the
//! first that answers and, when its link is lost, tries the others in turn, starting
//! with the one after the node it lost; a round in which none answers is followed by the
//! backoff. The exchange and queues are declared again on the node it reaches.
//!
//! An event that cannot be delivered as it is (a poison event) costs only itself: one
//! that cannot be put into an AMQP message at all, or that breaks the link again and
//! again ([`poison`]), is marked `failed` and the forwarder goes on with the next.

pub mod amqp;
pub mod message;
pub mod nodes;
pub mod poison;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::publisher_confirm::Confirmation;
use tokio::sync::watch;
use tokio::time::Instant;

use self::amqp::{Link, LinkError, Topology};
use self::nodes::Rotation;
pub use self::nodes::{BrokerStatus, Node};
use self::poison::Suspicion;
use crate::journal::{Journal, Record};
use crate::listen::stopped;
use crate::metrics::Metrics;
use crate::sources::Sources;

/// How long an unconfirmed publish may wait for its confirm before the link is presumed
/// broken.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop waits for confirms of what is in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct Settings {
    /// `broker.url`'s nodes, in the order they are tried; at least one.
    pub nodes: Vec<Node>,
    pub topology: Topology,
    pub max_in_flight: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

pub struct Forwarder {
    pub journal: Journal,
    pub settings: Settings,
    /// Each source's routing-key template and kept headers, as configured now.
    pub sources: Sources,
    /// The node in use, read by `/readyz` and `/metrics`.
    pub status: Arc<BrokerStatus>,
    pub metrics: Arc<Metrics>,
}

/// The state of one connection's publishing.
struct Pipeline {
    /// Where the next read of the queue starts.
    cursor: u64,
    /// Publishes waiting for their confirm.
    in_flight: FuturesUnordered<Pending>,
    /// The seqs of those publishes, with their source and replay count.
    in_flight_seqs: HashMap<u64, (String, u32)>,
    /// Sources held back after a nack or return: until when, and the first seq to resend.
    held: HashMap<String, (Instant, u64)>,
}

enum Ended {
    Stopped,
    Lost {
        error: LinkError,
        /// The oldest publish unconfirmed when the link broke: seq, source, replays.
        oldest: Option<(u64, String, u32)>,
    },
}

/// A publish's outcome: its seq, source, the event's replay count when it was
/// published, and what the broker said.
type Confirmed = (u64, String, u32, Result<Confirmation, LinkError>);
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Confirmed> + Send>>;

impl Forwarder {
    /// Runs until `stop` turns true: connect, pump, and reconnect with backoff.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let nodes = &self.settings.nodes;
        let mut rotation = Rotation::new(nodes.len());
        let mut backoff = self.settings.retry_initial;
        // Per source: the backoff after its latest failure, kept across reconnects.
        let mut backoffs = HashMap::new();
        let mut suspicion = Suspicion::default();
        loop {
            if *stop.borrow() {
                return;
            }
            // One round: each node in turn until one answers and its link is lost.
            let mut answered = false;
            for index in rotation.round() {
                let node = &nodes[index];
                let opened = tokio::select! {
                    _ = stopped(&mut stop) => return,
                    opened = Link::open(node, &self.settings.topology) => opened,
                };
                let link = match opened {
                    Ok(link) => link,
                    Err(e) => {
                        self.metrics.forward_error("connect");
                        tracing::warn!(node = %node.name(), error = %e, "broker unreachable");
                        continue;
                    }
                };
                answered = true;
                self.status.set(Some(index));
                tracing::info!(node = %node.name(), exchange = %self.settings.topology.exchange, "broker connected");
                backoff = self.settings.retry_initial;
                let ended = self
                    .pump(&link, &mut stop, &mut backoffs, &mut suspicion)
                    .await;
                self.status.set(None);
                match ended {
                    Ended::Stopped => {
                        link.close().await;
                        return;
                    }
                    Ended::Lost { error, oldest } => {
                        self.metrics.forward_error("link");
                        tracing::warn!(node = %node.name(), error = %error, "broker link lost; reconnecting");
                        self.suspect(&mut suspicion, &error, oldest).await;
                        rotation.lost(index);
                    }
                }
                break;
            }
            if !answered {
                // The broker is down or out of reach: that explains the breaks so far.
                // One node refusing, while another answers, explains nothing.
                suspicion.connect_failed();
            }
            tracing::debug!(
                retry_in_ms = backoff.as_millis() as u64,
                "broker: next round of connects after the backoff"
            );
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.settings.retry_max);
        }
    }

    async fn pump(
        &self,
        link: &Link,
        stop: &mut watch::Receiver<bool>,
        backoffs: &mut HashMap<String, Duration>,
        suspicion: &mut Suspicion,
    ) -> Ended {
        let mut pipe = Pipeline {
            cursor: 0,
            in_flight: FuturesUnordered::new(),
            in_flight_seqs: HashMap::new(),
            held: HashMap::new(),
        };
        let mut durable = self.journal.last_seq();
        loop {
            let now = Instant::now();
            let mut rewind = pipe.cursor;
            pipe.held.retain(|_, (until, first_seq)| {
                let keep = *until > now;
                if !keep {
                    rewind = rewind.min(*first_seq);
                }
                keep
            });
            // A replay put events back into the queue behind the cursor.
            if let Some(replayed) = self.journal.take_rewind() {
                rewind = rewind.min(replayed);
            }
            pipe.cursor = rewind;
            let up_to = *durable.borrow_and_update();
            if let Err(e) = self.fill(link, &mut pipe, up_to, suspicion).await {
                return lost(&pipe, e);
            }
            if pipe.in_flight.is_empty() {
                let next_release = pipe.held.values().map(|(until, _)| *until).min();
                let wake = next_release.unwrap_or(now + Duration::from_secs(1));
                tokio::select! {
                    _ = stopped(stop) => return Ended::Stopped,
                    e = link.broken() => return lost(&pipe, e),
                    _ = durable.changed() => {}
                    _ = self.journal.rewound() => {}
                    _ = tokio::time::sleep_until(wake) => {}
                }
                continue;
            }
            let first = tokio::select! {
                _ = stopped(stop) => {
                    self.settle(&mut pipe, backoffs, suspicion).await;
                    return Ended::Stopped;
                }
                e = link.broken() => {
                    // Confirms that arrived before the break still count.
                    let mut ready = Vec::new();
                    while let Some(Some(more)) =
                        futures_util::FutureExt::now_or_never(pipe.in_flight.next())
                    {
                        ready.push(more);
                    }
                    let _ = self.record(ready, &mut pipe, backoffs, suspicion).await;
                    return lost(&pipe, e);
                }
                first = pipe.in_flight.next() => first,
            };
            let mut done: Vec<Confirmed> = first.into_iter().collect();
            while let Some(Some(more)) =
                futures_util::FutureExt::now_or_never(pipe.in_flight.next())
            {
                done.push(more);
            }
            if let Err(e) = self.record(done, &mut pipe, backoffs, suspicion).await {
                return lost(&pipe, e);
            }
        }
    }

    /// Publishes durable queued events from the cursor on, up to seq `up_to`, until the
    /// pipeline is full or nothing is left to send. While an event is suspected of
    /// breaking the link, one publish at a time.
    async fn fill(
        &self,
        link: &Link,
        pipe: &mut Pipeline,
        up_to: u64,
        suspicion: &mut Suspicion,
    ) -> Result<(), LinkError> {
        let max_in_flight = if suspicion.cautious() {
            1
        } else {
            self.settings.max_in_flight
        };
        while pipe.in_flight.len() < max_in_flight && pipe.cursor <= up_to {
            let journal = self.journal.clone();
            let from = pipe.cursor;
            let want = (max_in_flight - pipe.in_flight.len()).max(64);
            let batch = tokio::task::spawn_blocking(move || journal.queued_from(from, want)).await;
            let batch = match batch {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the journal's queue");
                    return Ok(());
                }
                Err(_) => return Ok(()),
            };
            if batch.is_empty() {
                pipe.cursor = up_to + 1;
                return Ok(());
            }
            // What this batch publishes: (seq, source, replays, message).
            let mut ready = Vec::new();
            let mut full = false;
            for record in batch {
                let seq = record.summary.seq;
                if seq > up_to || pipe.in_flight.len() + ready.len() >= max_in_flight {
                    full = true;
                    break;
                }
                pipe.cursor = seq + 1;
                if pipe.in_flight_seqs.contains_key(&seq) {
                    continue;
                }
                if let Some((_, first_seq)) = pipe.held.get_mut(&record.summary.source) {
                    // Read again from here when the hold ends (a replay may have put
                    // an older event back behind the one that failed).
                    *first_seq = (*first_seq).min(seq);
                    continue;
                }
                let message = match self.message(&record) {
                    Ok(message) => message,
                    Err(unfit) => {
                        // It would break the link on every attempt: it is this event's
                        // failure, not the broker's.
                        let reason = format!("poison: {unfit}; not sent until replayed");
                        self.fail(seq, &record.summary.source, record.replays, reason)
                            .await;
                        suspicion.passed(seq);
                        continue;
                    }
                };
                ready.push((seq, record.summary.source, record.replays, message));
            }
            // Each publish queues its frames for lapin's I/O thread when first polled,
            // in journal order, then waits until they are written. Waiting for each
            // before queuing the next would wake that thread, and wait for it, once per
            // event: so queue the whole batch, then wait.
            let mut publishes = Vec::with_capacity(ready.len());
            for (seq, source, replays, message) in &ready {
                // Noted before the publish: if the publish itself fails, it is the
                // oldest unconfirmed one the break is counted against.
                pipe.in_flight_seqs.insert(*seq, (source.clone(), *replays));
                let mut publish = Box::pin(link.publish(message));
                let first = futures_util::poll!(publish.as_mut());
                publishes.push((*seq, source.clone(), *replays, first, publish));
            }
            for (seq, source, replays, first, publish) in publishes {
                let confirm = match first {
                    std::task::Poll::Ready(sent) => sent,
                    std::task::Poll::Pending => publish.await,
                }?;
                pipe.in_flight.push(Box::pin(async move {
                    let result = match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                        Ok(Ok(confirmation)) => Ok(confirmation),
                        Ok(Err(e)) => Err(LinkError::Broker {
                            what: "waiting for a confirm",
                            reason: e.to_string(),
                        }),
                        Err(_) => Err(LinkError::Timeout {
                            what: "waiting for a confirm",
                            secs: CONFIRM_TIMEOUT.as_secs(),
                        }),
                    };
                    (seq, source, replays, result)
                }));
            }
            if full {
                return Ok(());
            }
        }
        Ok(())
    }

    fn message(&self, record: &Record) -> Result<message::Message, message::Unfit> {
        let source = &record.summary.source;
        message::build(
            record,
            &self.sources.routing_key(source),
            &self.sources.header_policy(source),
        )
    }

    /// Writes the outcomes of confirmed publishes to the journal. A failure holds its
    /// source back for a backoff that doubles while the source keeps failing.
    async fn record(
        &self,
        done: Vec<Confirmed>,
        pipe: &mut Pipeline,
        backoffs: &mut HashMap<String, Duration>,
        suspicion: &mut Suspicion,
    ) -> Result<(), LinkError> {
        let now_ms = crate::unix_ms(SystemTime::now());
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let mut lost = None;
        for (seq, source, replays, result) in done {
            if result.is_ok() {
                // The broker answered for it; an unconfirmed one stays listed, as the
                // oldest of those is what a broken link is counted against.
                pipe.in_flight_seqs.remove(&seq);
                suspicion.answered(seq);
            }
            let failure = match result {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                    backoffs.remove(&source);
                    delivered.push((seq, replays));
                    continue;
                }
                Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => {
                    self.metrics.forward_error("returned");
                    format!(
                        "returned by the broker: {} {}",
                        returned.reply_code, returned.reply_text
                    )
                }
                Ok(Confirmation::Nack(None)) => {
                    self.metrics.forward_error("nacked");
                    "nacked by the broker".to_string()
                }
                Err(e) => {
                    // Unconfirmed: it is sent again on the next connection.
                    lost.get_or_insert(e);
                    continue;
                }
            };
            failed.push((seq, source, failure));
        }
        for (seq, source, failure) in failed {
            let backoff = match backoffs.get(&source) {
                Some(previous) if pipe.held.contains_key(&source) => *previous,
                Some(previous) => (*previous * 2).min(self.settings.retry_max),
                None => self.settings.retry_initial,
            };
            backoffs.insert(source.clone(), backoff);
            let until = Instant::now() + backoff;
            let entry = pipe.held.entry(source.clone()).or_insert((until, seq));
            entry.1 = entry.1.min(seq);
            tracing::warn!(seq, source = %source, outcome = %failure, retry_in_ms = backoff.as_millis() as u64, "not delivered; will retry");
            if let Err(e) = self.journal.record_attempt(seq, now_ms, failure).await {
                tracing::error!(error = %e, "cannot record a delivery attempt");
            }
        }
        if !delivered.is_empty() {
            self.metrics.published(delivered.len() as u64);
            if let Err(e) = self.journal.mark_delivered(delivered, now_ms).await {
                tracing::error!(error = %e, "cannot mark events delivered");
            }
        }
        match lost {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// On stop: wait a little for the confirms of what is in flight, and record them.
    async fn settle(
        &self,
        pipe: &mut Pipeline,
        backoffs: &mut HashMap<String, Duration>,
        suspicion: &mut Suspicion,
    ) {
        let deadline = Instant::now() + STOP_GRACE;
        let mut done = Vec::new();
        while let Ok(Some(next)) = tokio::time::timeout_at(deadline, pipe.in_flight.next()).await {
            done.push(next);
        }
        let _ = self.record(done, pipe, backoffs, suspicion).await;
    }
}

/// The link is lost: with the oldest publish still unconfirmed, if any.
fn lost(pipe: &Pipeline, error: LinkError) -> Ended {
    let oldest = pipe
        .in_flight_seqs
        .iter()
        .min_by_key(|(seq, _)| **seq)
        .map(|(seq, (source, replays))| (*seq, source.clone(), *replays));
    Ended::Lost { error, oldest }
}
