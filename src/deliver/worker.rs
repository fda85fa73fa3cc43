//! The worker of one push subscription: it reads the subscription's pending deliveries
//! from the journal in journal order, makes each attempt when it is due, within
//! `max_in_flight` and `rate_limit`, and writes what the attempts came to back to the
//! journal. With `ordered`, one delivery is in flight at a time, always the oldest
//! pending one: a failing delivery holds the ones behind it.
//!
//! Its reads of the pending set run on tokio's blocking pool ([`read`]): the worker
//! runs on the request threads, and a scan that waits for the disk (after an open, a
//! first fill reads up to [`MAX_WAITING`] deliveries) would hold up every connection
//! with `server.threads = 1`. Each delivery's own read, of one key, stays here.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{attempt, pushed, Deliverer};
use crate::journal::{Delivery, DeliveryOutcome, DeliveryStatus, Journal, Subscription, Verdict};
use crate::listen::stopped;

/// How many pending deliveries one read of the journal takes.
const READ_BATCH: usize = 256;
/// The most deliveries a worker keeps in memory waiting for their next attempt; the
/// rest wait in the journal until there is room.
const MAX_WAITING: usize = 10_000;
/// How long a stop waits for attempts in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long outcomes the journal could not take wait before their deliveries are read
/// again.
const UNRECORDED_PAUSE: Duration = Duration::from_secs(1);

type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = DeliveryOutcome> + Send>>;

pub(super) struct Worker {
    deliverer: Arc<Deliverer>,
    num: u64,
    /// The next seq to read from the pending set.
    cursor: u64,
    /// The newest durable seq. A delivery is made in the committer step that accepts its
    /// event, before the event's flush; until then the event cannot be read (it would
    /// look gone), and a crash could still lose it. Deliveries past it wait.
    durable: u64,
    /// Deliveries read and not in flight: (due time, seq).
    waiting: BTreeSet<(u64, u64)>,
    /// The seqs waiting or in flight.
    known: HashSet<u64>,
    in_flight: FuturesUnordered<InFlight>,
    /// The rate limit and the text it was made from.
    limiter: Option<(String, governor::DefaultDirectRateLimiter)>,
}

impl Worker {
    pub(super) fn new(deliverer: Arc<Deliverer>, num: u64) -> Worker {
        Worker {
            deliverer,
            num,
            cursor: 0,
            durable: 0,
            waiting: BTreeSet::new(),
            known: HashSet::new(),
            in_flight: FuturesUnordered::new(),
            limiter: None,
        }
    }

    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let journal = self.deliverer.journal.clone();
        let mut durable = journal.last_seq();
        let mut rewinds = journal.delivery_rewinds();
        let mut subs = journal.subscriptions();
        loop {
            self.durable = *durable.borrow_and_update();
            rewinds.borrow_and_update();
            subs.borrow_and_update();
            let Some(sub) = journal.subscription(self.num).filter(pushed) else {
                break;
            };
            if let Some(seq) = journal.take_delivery_rewind(self.num) {
                self.rewind(seq);
            }
            let sub = Arc::new(sub);
            let wake = if sub.active {
                self.fill(&sub).await
            } else {
                Instant::now() + Duration::from_secs(1)
            };
            tokio::select! {
                _ = stopped(&mut stop) => break,
                Some(first) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    let mut done = vec![first];
                    while let Some(Some(more)) = self.in_flight.next().now_or_never() {
                        done.push(more);
                    }
                    self.record(done).await;
                }
                _ = durable.changed() => {}
                _ = rewinds.changed() => {}
                _ = subs.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        // Attempts under way get a moment to finish, so that their outcomes are kept.
        let deadline = Instant::now() + STOP_GRACE;
        let mut done = Vec::new();
        while let Ok(Some(outcome)) = tokio::time::timeout_at(deadline, self.in_flight.next()).await
        {
            done.push(outcome);
        }
        self.record(done).await;
    }

    /// Deliveries at or after `seq` changed behind the cursor: read them again.
    fn rewind(&mut self, seq: u64) {
        self.cursor = self.cursor.min(seq);
        let dropped: Vec<(u64, u64)> = self
            .waiting
            .iter()
            .filter(|(_, s)| *s >= seq)
            .copied()
            .collect();
        for entry in dropped {
            self.waiting.remove(&entry);
            self.known.remove(&entry.1);
        }
    }

    /// Starts the attempts that are due, within the limits; answers when to look again.
    async fn fill(&mut self, sub: &Arc<Subscription>) -> Instant {
        let limit = if sub.ordered {
            1
        } else {
            sub.max_in_flight.max(1) as usize
        };
        self.update_limiter(sub);
        if sub.ordered {
            // Only the head is ever looked at.
            self.waiting.clear();
            self.known.clear();
        }
        let idle = Instant::now() + Duration::from_secs(1);
        while self.in_flight.len() < limit {
            let now_ms = now_ms();
            let next = if sub.ordered {
                match self.head(now_ms).await {
                    Ok(seq) => seq,
                    Err(wake) => return wake.min(idle),
                }
            } else {
                match self.next_due(now_ms).await {
                    Ok(seq) => seq,
                    Err(wake) => return wake.min(idle),
                }
            };
            let Some(seq) = next else {
                return idle;
            };
            if let Some((_, limiter)) = &self.limiter {
                if let Err(not_until) = limiter.check() {
                    use governor::clock::{Clock as _, DefaultClock};
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    self.waiting.insert((now_ms, seq));
                    return Instant::now() + wait;
                }
            }
            // One key's read, left on this thread: a hop to the blocking pool for each
            // delivery cost a fifth of the deliveries a second (BENCHMARKS.md).
            let delivery = match self.deliverer.journal.delivery(seq, self.num) {
                Ok(Some(d)) if d.status == DeliveryStatus::Pending => d,
                Ok(_) => {
                    self.known.remove(&seq);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a delivery; trying again soon");
                    self.waiting.insert((now_ms + 1000, seq));
                    return idle;
                }
            };
            if delivery.next_attempt_at_ms > now_ms {
                self.waiting.insert((delivery.next_attempt_at_ms, seq));
                continue;
            }
            let deliverer = self.deliverer.clone();
            let sub = sub.clone();
            self.in_flight.push(Box::pin(async move {
                attempt::make(&deliverer, &sub, &delivery).await
            }));
        }
        idle
    }

    /// Unordered: the seq of the next due delivery, reading the pending set as needed;
    /// `Ok(None)` when nothing is pending, `Err(when)` when the next one is not due yet.
    async fn next_due(&mut self, now_ms: u64) -> Result<Option<u64>, Instant> {
        loop {
            if let Some(&(due, seq)) = self.waiting.first() {
                if due <= now_ms {
                    self.waiting.pop_first();
                    return Ok(Some(seq));
                }
            }
            if self.waiting.len() >= MAX_WAITING || !self.read_more().await {
                return match self.waiting.first() {
                    Some(&(due, _)) => Err(instant_at(due, now_ms)),
                    None => Ok(None),
                };
            }
        }
    }

    /// Ordered: the oldest pending delivery, if it is due and nothing is in flight.
    async fn head(&mut self, now_ms: u64) -> Result<Option<u64>, Instant> {
        if !self.in_flight.is_empty() {
            return Ok(None);
        }
        let num = self.num;
        match read(&self.deliverer.journal, move |journal| {
            journal.pending_deliveries(num, 0, 1)
        })
        .await
        {
            Ok(head) => match head.first() {
                None => Ok(None),
                // Its event is not durable yet: woken when it is.
                Some(d) if d.seq > self.durable => Ok(None),
                Some(d) if d.next_attempt_at_ms <= now_ms => {
                    self.known.insert(d.seq);
                    Ok(Some(d.seq))
                }
                Some(d) => Err(instant_at(d.next_attempt_at_ms, now_ms)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pending deliveries; trying again soon");
                Err(Instant::now() + Duration::from_secs(1))
            }
        }
    }

    /// Reads the next batch of the pending set into `waiting`, up to the newest durable
    /// event (one whose flush is still running may yet be refused); answers whether there
    /// was any.
    async fn read_more(&mut self) -> bool {
        let durable = self.durable;
        if self.cursor > durable {
            return false;
        }
        let (num, cursor) = (self.num, self.cursor);
        let batch = move |journal: &Journal| journal.pending_deliveries(num, cursor, READ_BATCH);
        let batch: Vec<Delivery> = match read(&self.deliverer.journal, batch).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pending deliveries; trying again soon");
                return false;
            }
        };
        // Only deliveries of durable events; the rest are read again once they are.
        let batch: Vec<_> = batch.into_iter().take_while(|d| d.seq <= durable).collect();
        let Some(last) = batch.last() else {
            self.cursor = durable + 1;
            return false;
        };
        self.cursor = last.seq + 1;
        for d in batch {
            if self.known.insert(d.seq) {
                self.waiting.insert((d.next_attempt_at_ms, d.seq));
            }
        }
        true
    }

    fn update_limiter(&mut self, sub: &Subscription) {
        let wanted = sub.rate_limit.as_deref();
        if self.limiter.as_ref().map(|(text, _)| text.as_str()) == wanted {
            return;
        }
        self.limiter = wanted.and_then(|text| match crate::source::parse_rate(text) {
            Ok(quota) => Some((text.to_string(), governor::RateLimiter::direct(quota))),
            Err(e) => {
                tracing::error!(subscription = %sub.name, error = %e, "the subscription's rate_limit cannot be read; it is not limited");
                None
            }
        });
    }

    /// Writes outcomes to the journal; a delivery to be tried again waits in memory.
    async fn record(&mut self, done: Vec<DeliveryOutcome>) {
        if done.is_empty() {
            return;
        }
        let retries: Vec<(u64, u64)> = done
            .iter()
            .filter_map(|o| match o.verdict {
                Verdict::Retry { at_ms } => Some((at_ms, o.seq)),
                _ => None,
            })
            .collect();
        let seqs: Vec<u64> = done.iter().map(|o| o.seq).collect();
        match self.deliverer.journal.record_outcomes(done).await {
            Ok(()) => {
                for seq in &seqs {
                    self.known.remove(seq);
                }
                for (at_ms, seq) in retries {
                    self.known.insert(seq);
                    self.waiting.insert((at_ms, seq));
                }
            }
            Err(e) => {
                // They are still pending in the journal: made again after a pause.
                tracing::warn!(error = %e, "cannot record delivery outcomes; those deliveries will be made again");
                let again = now_ms() + UNRECORDED_PAUSE.as_millis() as u64;
                for seq in seqs {
                    self.waiting.insert((again, seq));
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    crate::unix_ms(SystemTime::now())
}

/// Runs `read` of the journal on tokio's blocking pool (see the module's note).
async fn read<T: Send + 'static>(
    journal: &Journal,
    read: impl FnOnce(&Journal) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || read(&journal))
        .await
        .map_err(|e| format!("a read of the journal ended early: {e}"))?
}

/// The instant of a wall-clock time in ms.
fn instant_at(at_ms: u64, now_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms))
}
