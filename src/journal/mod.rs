//! The journal: every accepted event, on disk. Two parts:
//!
//! - the commit log ([`log`]): append-only segment files holding each event as it was
//!   accepted. This is what an `accepted` waits for.
//! - the index, in fjall ([`index`]): `events` (seq -> summary, status, attempts and where
//!   the content is in the log), `queued` (seq -> ()), `dedup` (source\0id -> seq and
//!   first-seen time), `order` (source\0key -> newest timestamp), `meta` (how far the
//!   log is covered, how far dedup expiry has walked the events, since when GitHub's
//!   replay keys are made from the MAC) and `dedup_expiry`
//!   (first-seen time ++ key -> (), only for ids whose event was compacted before its
//!   dedup window ended, and in journals written before the commit log).
//!
//! Writes go through one committer thread ([`committer`]) that decides everything
//! queued, writes the group's log entries with one `write`, runs one `fdatasync` for the
//! group ([`flusher`]: group commit) and only then answers, and hands the accepted events
//! to an indexer thread ([`indexer`]), which writes them into the index behind the log. So an
//! answer of `accepted` or `duplicate` always follows an fsync that covers its event and
//! never waits for the index, and because one thread decides (from the index plus what the
//! indexer has not written yet), the dedup check and the write are one step: two copies
//! of an event can never both be accepted. Commands other than appends wait for the
//! indexer first and work on the index directly. The index is flushed in the background, never
//! claiming more of the log than the indexer wrote; at open, log entries the index had
//! not durably covered are written into it again. Reads go straight to the index and the log,
//! once the index covers what was acknowledged before them.

mod census;
mod committer;
mod core;
mod deliveries;
mod disk;
mod fingerprints;
mod flusher;
mod index;
mod indexer;
pub(crate) mod log;
pub mod record;
mod store;
pub mod subscription;
mod watchdog;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use tokio::sync::{oneshot, watch};

pub use deliveries::{CallbackAnswer, DeliveryOutcome, SubStats, Verdict, OPERATIONAL_SOURCE};
pub use disk::MinFree;
pub use log::SEGMENT_BYTES;
pub use record::{Attempt, KeptHeaders, Record, Status, Summary};
pub use subscription::{Delivery, DeliveryAttempt, DeliveryStatus, Mode, Subscription};

use self::core::Core;

const QUEUE_DEPTH: usize = 16_384;
/// How many records one listing call may look at before it answers.
const MAX_SCAN: usize = 100_000;

#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub dedup_window: Duration,
    pub retention: Duration,
    pub max_backlog: u64,
    /// Undelivered events' bytes beyond which new events are refused; `None`: no limit.
    pub max_backlog_bytes: Option<u64>,
    /// Free disk space below which new events are refused, so that deliveries,
    /// compaction and the index flush still have room (RabbitMQ's `disk_free_limit`).
    pub min_free: MinFree,
    /// Without a broker the journal is the queue: retention drops old events whatever
    /// their status.
    pub embedded: bool,
    /// Where the journal's stage timings go (the metrics), if anywhere.
    pub stages: Option<Stages>,
    /// How deliveries to subscriptions retry, and when a failing one is disabled.
    pub delivery: DeliveryPolicy,
    /// A commit log segment is closed once it holds this much.
    pub segment_bytes: u64,
    /// How much of the index's blocks fjall may keep in memory (its block cache).
    pub index_cache_bytes: u64,
    /// How long the committer waits for more commands before a group when a sync ends
    /// with [`GROUP_DELAY_QUEUED`] or more already waiting; zero: never.
    pub group_delay: Duration,
}

/// How many commands must be waiting when a group ends for the committer to wait
/// `group_delay` before it takes the next: load that has others already queued behind a
/// sync (PostgreSQL's `commit_siblings`), never a lone request after a quiet spell.
pub const GROUP_DELAY_QUEUED: usize = 8;

/// The index's block cache unless configured: twice fjall's own default, as the events'
/// entries are read back by the forwarder and the pull API soon after they are written.
pub const DEFAULT_INDEX_CACHE: u64 = 64 << 20;

/// What the journal decides about deliveries itself (the workers decide the rest).
#[derive(Clone, Debug)]
pub struct DeliveryPolicy {
    /// The delays between attempts (pull subscriptions: between leases).
    pub retry: Vec<Duration>,
    /// A subscription whose every attempt has failed this long is disabled.
    pub disable_after: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        let secs = [5, 300, 1800, 7200, 18000, 36000, 36000];
        DeliveryPolicy {
            retry: secs.into_iter().map(Duration::from_secs).collect(),
            disable_after: Duration::from_secs(5 * 86400),
        }
    }
}

/// Timings of group commit, for `/metrics`: what one group cost the committer, how many
/// commands it held, and how long its sync took.
#[derive(Clone, Debug)]
pub struct Stages {
    pub group_seconds: prometheus_client::metrics::histogram::Histogram,
    pub group_commands: prometheus_client::metrics::histogram::Histogram,
    pub sync_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Stages {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        Stages {
            // 50 µs to about 1.6 s, doubling.
            group_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            group_commands: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            sync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

/// An event that passed verification and identification, ready to be journaled.
#[derive(Debug)]
pub struct NewEvent {
    pub source: String,
    pub id: String,
    pub event_type: Option<String>,
    pub received_at_ms: u64,
    pub event_ts: Option<i64>,
    /// The order key and the timestamp to order by.
    pub order: Option<(String, i64)>,
    pub content_type: String,
    pub headers: KeptHeaders,
    pub client_identity: Option<String>,
    pub body: Bytes,
    pub normalised: Option<Bytes>,
    /// A second dedup key where the signature does not cover `id` (see
    /// `Scheme::replay_key`).
    pub replay_key: Option<String>,
}

impl NewEvent {
    /// The bytes it brings to the log: the body, and the normalised JSON if any.
    pub fn bytes(&self) -> usize {
        self.body.len() + self.normalised.as_ref().map_or(0, |n| n.len())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted(u64),
    Duplicate(u64),
    Stale(u64),
}

impl Outcome {
    /// Its name, as the answer, the log line and the metrics give it.
    pub fn status(self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::Duplicate(_) => "duplicate",
            Outcome::Stale(_) => "stale",
        }
    }

    /// The seq it carries: the event journaled, or the one it repeats or is older than.
    pub fn seq(self) -> u64 {
        match self {
            Outcome::Accepted(seq) | Outcome::Duplicate(seq) | Outcome::Stale(seq) => seq,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    #[error("the backlog of undelivered events has reached its limit of {max}")]
    BacklogFull { max: u64 },
    #[error("the backlog of undelivered events has reached its limit of {max} bytes")]
    BacklogBytesFull { max: u64 },
    #[error("{0}")]
    DiskLow(String),
    #[error("the journal cannot be written: {0}")]
    Unwritable(String),
    #[error("the journal is shutting down")]
    Closed,
    /// The journal did not answer an append by the deadline it was given.
    #[error("the journal did not answer in time")]
    TimedOut,
    /// Another process holds the index's lock: two gateways on one journal would
    /// each take the other's events for their own.
    #[error("another hookgate is using this journal{}", pid.map(|pid| format!(" (PID {pid})")).unwrap_or_default())]
    InUse { pid: Option<u32> },
    /// A change that contradicts what the journal holds (a name taken, a subscription
    /// gone).
    #[error("{0}")]
    Conflict(String),
}

enum Command {
    Append {
        event: Box<NewEvent>,
        /// The dedup key of its replay key's earlier form, while the journal may hold
        /// that form (`Core::earlier_replay_key`): looked up, never written.
        earlier_key: Option<Vec<u8>>,
        /// With the caller's deadline, past which it is answered `TimedOut` whatever
        /// the committer is doing. Taken out when the committer starts on it
        /// (`Watch::start`) or when the watchdog answers it.
        reply: Option<watchdog::Reply>,
    },
    Compact {
        now_ms: u64,
        reply: oneshot::Sender<Result<bool, JournalError>>,
    },
    /// The broker confirmed these events (seq, and the replay count they were published
    /// with).
    Delivered {
        seqs: Vec<(u64, u32)>,
        at_ms: u64,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// A delivery attempt failed; the event stays queued.
    Attempted {
        seq: u64,
        at_ms: u64,
        outcome: String,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// The event cannot be delivered as it is (a poison event): it leaves the queue as
    /// `failed`, unless it was replayed after it was published (`replays` is its replay
    /// count then).
    Failed {
        seq: u64,
        replays: u32,
        at_ms: u64,
        reason: String,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Creates (`num` 0) or replaces a subscription; answered once it is durable.
    PutSubscription {
        sub: Box<Subscription>,
        reply: oneshot::Sender<Result<Subscription, JournalError>>,
    },
    /// Removes a subscription and drops its open deliveries; answers how many.
    DeleteSubscription {
        num: u64,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// What delivery attempts came to.
    Outcomes {
        outcomes: Vec<DeliveryOutcome>,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Pull: leases up to `max` due deliveries of a subscription.
    Lease {
        num: u64,
        max: usize,
        lease_ms: u64,
        now_ms: u64,
        reply: oneshot::Sender<Result<Vec<Delivery>, JournalError>>,
    },
    /// Pull: completes leased deliveries; answers how many were.
    Ack {
        num: u64,
        seqs: Vec<u64>,
        now_ms: u64,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// Makes a delivery pending again, due now; answers whether there was one.
    RetryDelivery {
        seq: u64,
        num: u64,
        now_ms: u64,
        reply: oneshot::Sender<Result<bool, JournalError>>,
    },
    /// A callback came for the token with this hash.
    Callback {
        hash: [u8; 32],
        succeeded: bool,
        result: Option<serde_json::Value>,
        now_ms: u64,
        reply: oneshot::Sender<Result<CallbackAnswer, JournalError>>,
    },
    /// Ends deliveries whose callback did not come in time; answers how many.
    ExpireCallbacks {
        now_ms: u64,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// An operator asked for these events to be forwarded again.
    Replay {
        seqs: Vec<u64>,
        at_ms: u64,
        reply: oneshot::Sender<Result<Vec<Replayed>, JournalError>>,
    },
    /// A read found this event's log entry damaged.
    Damaged {
        seq: u64,
        why: String,
        at_ms: u64,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl Command {
    /// The event bytes it brings to a group.
    fn bytes(&self) -> usize {
        match self {
            Command::Append { event, .. } => event.bytes(),
            _ => 0,
        }
    }
}

#[derive(Clone)]
struct Trees {
    events: store::Tree,
    queued: store::Tree,
    dedup: store::Tree,
    dedup_expiry: store::Tree,
    order: store::Tree,
    meta: store::Tree,
    subscriptions: store::Tree,
    deliveries: store::Tree,
    pending: store::Tree,
    sub_log: store::Tree,
    callbacks: store::Tree,
    deadlines: store::Tree,
    /// Whether the `queued` tree is kept: only a forwarder reads it. In embedded mode
    /// the backlog is counted from the events' status instead.
    keep_queue: bool,
}

impl Trees {
    fn open(db: &store::Db, keep_queue: bool) -> store::Result<Trees> {
        let [events, queued, dedup, dedup_expiry, order, meta, subscriptions, deliveries, pending, sub_log, callbacks, deadlines] =
            db.open_trees()?;
        Ok(Trees {
            events,
            queued,
            dedup,
            dedup_expiry,
            order,
            meta,
            subscriptions,
            deliveries,
            pending,
            sub_log,
            callbacks,
            deadlines,
            keep_queue,
        })
    }
}

struct Shared {
    backlog: AtomicU64,
    /// The bytes of the events counted in `backlog`.
    backlog_bytes: AtomicU64,
    healthy: AtomicBool,
    /// Why `healthy` turned false.
    fault: Mutex<Option<String>>,
    /// Why new events are refused for want of disk space, while they are.
    disk_low: Mutex<Option<String>>,
    /// The log position the flusher has synced, for the index's background flush.
    durable: Mutex<Option<index::Mark>>,
    /// How far the index follows the log (see [`indexer`]).
    index: indexer::Progress,
    /// Log segments no event refers to any more, to delete once that is durable.
    unreferenced: Mutex<Vec<u64>>,
    /// The lowest seq put back into the queue by a replay since the forwarder last
    /// looked; `u64::MAX` when none.
    rewind: AtomicU64,
    /// Wakes the forwarder when `rewind` is set.
    rewound: tokio::sync::Notify,
    counts: Mutex<BTreeMap<String, SourceCounts>>,
    /// Per subscription: its deliveries by status, and its last success and failure.
    sub_stats: Mutex<std::collections::HashMap<u64, SubStats>>,
    /// Per subscription: the lowest seq a delivery became due again at, behind its
    /// worker's cursor (a retry, a recovery); the worker reads its pending set from there.
    sub_rewinds: Mutex<std::collections::HashMap<u64, u64>>,
    /// The most dedup keys the committer keeps in memory (tests lower it).
    #[cfg(test)]
    held_cap: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Refuses every new event from now on (this opening of the journal is replaced by
    /// a new one once writes work again).
    fn fail(&self, why: String) {
        self.fault.lock().expect("fault lock").get_or_insert(why);
        self.healthy.store(false, Ordering::Release);
    }

    /// An event of `size` bytes joined the backlog.
    fn queued(&self, size: u64) {
        self.backlog.fetch_add(1, Ordering::AcqRel);
        self.backlog_bytes.fetch_add(size, Ordering::AcqRel);
    }

    /// An event of `size` bytes left the backlog.
    fn unqueued(&self, size: u64) {
        self.backlog.fetch_sub(1, Ordering::AcqRel);
        let _ = self
            .backlog_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(size))
            });
    }

    fn count(&self, source: &str, change: impl FnOnce(&mut SourceCounts)) {
        let mut counts = self.counts.lock().expect("counts lock");
        match counts.get_mut(source) {
            Some(c) => change(c),
            None => change(counts.entry(source.to_string()).or_default()),
        }
    }
}

/// What the journal holds for one source, by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceCounts {
    pub queued: u64,
    pub delivered: u64,
    pub stale: u64,
    pub failed: u64,
    pub damaged: u64,
    /// When the newest event of this source was received.
    pub last_received_ms: Option<u64>,
}

impl SourceCounts {
    fn slot(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Queued => &mut self.queued,
            Status::Delivered => &mut self.delivered,
            Status::Stale => &mut self.stale,
            Status::Failed => &mut self.failed,
            Status::Damaged => &mut self.damaged,
        }
    }

    /// Counts an event; a replayed copy is not something the provider sent, so it does
    /// not move `last_received_ms`.
    fn add(&mut self, event: &Summary) {
        *self.slot(event.status) += 1;
        if event.replay_of.is_none() {
            self.last_received_ms = self.last_received_ms.max(Some(event.received_at_ms));
        }
    }

    fn moved(&mut self, from: Status, to: Status) {
        let from = self.slot(from);
        *from = from.saturating_sub(1);
        *self.slot(to) += 1;
    }

    fn removed(&mut self, status: Status) {
        let slot = self.slot(status);
        *slot = slot.saturating_sub(1);
    }

    pub fn total(&self) -> u64 {
        self.queued + self.delivered + self.stale + self.failed + self.damaged
    }
}

/// One event a replay queued again: its seq, and the seq under which it is queued (the
/// same with a broker; a new copy's in embedded mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    pub seq: u64,
    pub queued_as: u64,
}

/// A handle on the journal; cheap to clone. It reaches the journal's current opening
/// ([`core::Core`]). After a write or sync failed, that opening refuses new events for
/// good (a failed sync is never trusted again, and fjall refuses every write after one
/// of its own failed), so [`Journal::heal`] replaces it, once writes work again, with a
/// new opening of the same files: no restart is needed.
#[derive(Clone)]
pub struct Journal {
    slot: Arc<RwLock<Option<Arc<Core>>>>,
    settings: Arc<Settings>,
    outlets: Outlets,
    last_seq: watch::Receiver<u64>,
    closed: Arc<AtomicBool>,
    healing: Arc<tokio::sync::Mutex<Healing>>,
}

/// What the journal tells its readers as it changes; it outlives each opening.
#[derive(Clone)]
struct Outlets {
    /// The newest durable seq.
    published: watch::Sender<u64>,
    /// Every subscription, after each change.
    subscriptions: watch::Sender<Arc<Vec<Subscription>>>,
    /// Bumped when deliveries became due behind their worker's cursor (see
    /// [`Journal::take_delivery_rewind`]).
    rewound: watch::Sender<u64>,
}

/// What healing remembers between tries.
#[derive(Default)]
struct Healing {
    /// The log position to cut back to before the next opening: the last one a sync
    /// covered before the failure.
    cut: Option<(u64, u64)>,
    /// Why the last try failed.
    error: Option<String>,
}

/// The free space a failed journal waits for (or `min_free`, if larger) before it is
/// opened again.
const HEAL_ROOM: u64 = 1 << 20;

const REOPENING: &str = "the journal is being opened again after a write failure";

impl Journal {
    pub fn open(settings: Settings) -> Result<Journal, JournalError> {
        let settings = Arc::new(settings);
        let (published, last_seq) = watch::channel(0);
        let outlets = Outlets {
            published,
            subscriptions: watch::Sender::new(Arc::new(Vec::new())),
            rewound: watch::Sender::new(0),
        };
        let core = Core::open(settings.clone(), outlets.clone(), false)?;
        Ok(Journal {
            slot: Arc::new(RwLock::new(Some(Arc::new(core)))),
            settings,
            outlets,
            last_seq,
            closed: Arc::new(AtomicBool::new(false)),
            healing: Arc::new(tokio::sync::Mutex::new(Healing::default())),
        })
    }

    fn core(&self) -> Result<Arc<Core>, JournalError> {
        self.slot
            .read()
            .expect("journal slot lock")
            .clone()
            .ok_or_else(|| JournalError::Unwritable(REOPENING.into()))
    }

    /// Journals an event; answers once the record (or the one it duplicates) is flushed.
    pub async fn append(&self, event: NewEvent) -> Result<Outcome, JournalError> {
        self.core()?.append(event, None).await
    }

    /// As [`Journal::append`], but past `deadline` answers `TimedOut` instead of waiting
    /// on (within `watchdog::TICK` or two of it): for a journal held up by a disk that
    /// does not answer, without a timer for each event. An event answered so may still
    /// be journaled; its sender's retry then finds it a duplicate.
    pub fn append_until(
        &self,
        event: NewEvent,
        deadline: std::time::Instant,
    ) -> impl std::future::Future<Output = Result<Outcome, JournalError>> + Send + 'static {
        // Every request's future holds this one: made without an `async fn`'s second
        // copy of the event (see `Core::append`).
        match self.core() {
            Ok(core) => Either::Left(core.append(event, Some(deadline))),
            Err(e) => Either::Right(std::future::ready(Err(e))),
        }
    }

    /// Drops delivered events past retention and dedup entries past the window, a chunk
    /// at a time; returns whether more remains.
    pub async fn compact(&self, now_ms: u64) -> Result<bool, JournalError> {
        self.core()?.compact(now_ms).await
    }

    /// Marks events `delivered` once the broker has confirmed them. Answers once they
    /// have left the queue, without waiting for the flush that makes the mark durable.
    /// Each seq comes with the event's replay count when it was published: an event
    /// replayed since stays queued, to be published again.
    pub async fn mark_delivered(
        &self,
        seqs: Vec<(u64, u32)>,
        at_ms: u64,
    ) -> Result<(), JournalError> {
        self.core()?.mark_delivered(seqs, at_ms).await
    }

    /// Queues events to be forwarded again (see the README's "Replay"); answers once that
    /// is durable. Seqs the journal no longer has are left out of the answer.
    pub async fn replay(&self, seqs: Vec<u64>, at_ms: u64) -> Result<Vec<Replayed>, JournalError> {
        self.core()?.replay(seqs, at_ms).await
    }

    /// Resolves when a replay (or a delivery overtaken by one) puts an event back into
    /// the queue behind the forwarder's cursor.
    pub async fn rewound(&self) {
        match self.core() {
            Ok(core) => core.rewound().await,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }

    /// The lowest seq a replay has put back into the queue since the last call, if any:
    /// the forwarder reads the queue again from there.
    pub fn take_rewind(&self) -> Option<u64> {
        self.core().ok().and_then(|core| core.take_rewind())
    }

    /// What the journal holds, per source that has events.
    pub fn counts(&self) -> BTreeMap<String, SourceCounts> {
        self.core().map(|core| core.counts()).unwrap_or_default()
    }

    /// Notes a failed delivery attempt; the event stays `queued`.
    pub async fn record_attempt(
        &self,
        seq: u64,
        at_ms: u64,
        outcome: String,
    ) -> Result<(), JournalError> {
        self.core()?.record_attempt(seq, at_ms, outcome).await
    }

    /// Marks a queued event `failed`: it cannot be delivered as it is, so the forwarder
    /// goes on without it; a replay queues it again. `replays` is the event's replay
    /// count when it was published: an event replayed since stays queued. Answers once
    /// that is durable.
    pub async fn mark_failed(
        &self,
        seq: u64,
        replays: u32,
        at_ms: u64,
        reason: String,
    ) -> Result<(), JournalError> {
        self.core()?.mark_failed(seq, replays, at_ms, reason).await
    }

    /// An event's summary, from the index alone (no log read).
    pub fn summary(&self, seq: u64) -> Option<Summary> {
        self.core().ok()?.summary(seq)
    }

    /// Every subscription, as it changes.
    pub fn subscriptions(&self) -> watch::Receiver<Arc<Vec<Subscription>>> {
        self.outlets.subscriptions.subscribe()
    }

    /// One subscription, by number.
    pub fn subscription(&self, num: u64) -> Option<Subscription> {
        self.outlets
            .subscriptions
            .borrow()
            .iter()
            .find(|s| s.num == num)
            .cloned()
    }

    /// Creates (`num` 0) or replaces a subscription; answers it once that is durable.
    pub async fn put_subscription(&self, sub: Subscription) -> Result<Subscription, JournalError> {
        self.core()?
            .ask(|reply| Command::PutSubscription {
                sub: Box::new(sub),
                reply,
            })
            .await
    }

    /// Removes a subscription and drops its open deliveries; answers how many, once
    /// that is durable.
    pub async fn delete_subscription(&self, num: u64) -> Result<u64, JournalError> {
        self.core()?
            .ask(|reply| Command::DeleteSubscription { num, reply })
            .await
    }

    /// Writes what delivery attempts came to. Answers before the flush: an outcome a
    /// crash loses means only that the delivery is made again.
    pub async fn record_outcomes(
        &self,
        outcomes: Vec<DeliveryOutcome>,
    ) -> Result<(), JournalError> {
        self.core()?
            .ask(|reply| Command::Outcomes { outcomes, reply })
            .await
    }

    /// Pull: leases up to `max` due deliveries of subscription `num` for `lease_ms`.
    pub async fn lease(
        &self,
        num: u64,
        max: usize,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Delivery>, JournalError> {
        self.core()?
            .ask(|reply| Command::Lease {
                num,
                max,
                lease_ms,
                now_ms,
                reply,
            })
            .await
    }

    /// Pull: completes deliveries (by seq) of subscription `num`; answers how many were
    /// pending, once that is durable.
    pub async fn ack(&self, num: u64, seqs: Vec<u64>, now_ms: u64) -> Result<u64, JournalError> {
        self.core()?
            .ask(|reply| Command::Ack {
                num,
                seqs,
                now_ms,
                reply,
            })
            .await
    }

    /// Makes a delivery pending again, due now; answers whether there was one.
    pub async fn retry_delivery(
        &self,
        seq: u64,
        num: u64,
        now_ms: u64,
    ) -> Result<bool, JournalError> {
        self.core()?
            .ask(|reply| Command::RetryDelivery {
                seq,
                num,
                now_ms,
                reply,
            })
            .await
    }

    /// A task's callback (SPEC §10), by the SHA-256 of its token; answered once the
    /// `.finished` event it appends is durable.
    pub async fn callback(
        &self,
        hash: [u8; 32],
        succeeded: bool,
        result: Option<serde_json::Value>,
        now_ms: u64,
    ) -> Result<CallbackAnswer, JournalError> {
        self.core()?
            .ask(|reply| Command::Callback {
                hash,
                succeeded,
                result,
                now_ms,
                reply,
            })
            .await
    }

    /// Ends deliveries whose callback is overdue; answers how many (at most a chunk).
    pub async fn expire_callbacks(&self, now_ms: u64) -> Result<u64, JournalError> {
        self.core()?
            .ask(|reply| Command::ExpireCallbacks { now_ms, reply })
            .await
    }

    /// A subscription's deliveries by status, and its last success and failure.
    pub fn sub_stats(&self, num: u64) -> SubStats {
        self.core().map(|c| c.sub_stats(num)).unwrap_or_default()
    }

    /// Changes when deliveries became due behind their workers' cursors.
    pub fn delivery_rewinds(&self) -> watch::Receiver<u64> {
        self.outlets.rewound.subscribe()
    }

    /// The lowest seq at which subscription `num`'s pending set changed behind its
    /// worker's cursor since the last call (a retry, an enabling, a reopening), if any.
    pub fn take_delivery_rewind(&self, num: u64) -> Option<u64> {
        self.core().ok().and_then(|c| c.take_delivery_rewind(num))
    }

    /// Pending deliveries of subscription `num` from seq `from` on, oldest first, of
    /// durable events only. The committer puts a delivery in the index with its event,
    /// before the group's log entries are written and synced: read earlier, the event's
    /// content is not there yet (the attempt would find it "no longer in the journal"
    /// and fail it for good), and it could be sent before its `200` and then lost in a
    /// crash. [`Journal::last_seq`] moves only after the sync.
    pub fn pending_deliveries(
        &self,
        num: u64,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, String> {
        let durable = *self.last_seq.borrow();
        self.core()
            .map_err(|e| e.to_string())?
            .pending_deliveries(num, from, durable, limit)
    }

    /// One delivery: of event `seq` to subscription `num`.
    pub fn delivery(&self, seq: u64, num: u64) -> Result<Option<Delivery>, String> {
        self.core().map_err(|e| e.to_string())?.delivery(seq, num)
    }

    /// A subscription's delivery log after seq `after`, and the cursor to go on from.
    pub fn deliveries_of(
        &self,
        num: u64,
        status: Option<DeliveryStatus>,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Delivery>, u64), String> {
        self.core()
            .map_err(|e| e.to_string())?
            .deliveries_of(num, status, after, limit)
    }

    /// Every delivery of one event.
    pub fn event_deliveries(&self, seq: u64) -> Result<Vec<Delivery>, String> {
        self.core()
            .map_err(|e| e.to_string())?
            .event_deliveries(seq)
    }

    /// Undelivered events from `from` on, oldest first, at most `limit`. A damaged one
    /// is left out (and marked `damaged`): it costs that event only.
    pub fn queued_from(&self, from: u64, limit: usize) -> Result<Vec<Record>, String> {
        self.core()
            .map_err(|e| e.to_string())?
            .queued_from(from, limit)
    }

    /// Flushes what is left and stops the committer. Later appends answer `Closed`.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // A heal under way finishes first, so that what it opens is closed too.
        let _healing = self.healing.lock().await;
        if let Ok(core) = self.core() {
            core.close().await;
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.core().is_ok_and(|core| core.is_healthy())
    }

    /// Whether the journal can recover by itself from whatever state it is in: false
    /// only when its committer thread has died (a bug), which a liveness probe should
    /// answer with a restart.
    pub fn alive(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        // No opening: one is being made.
        self.core().map_or(true, |core| core.committer_alive())
    }

    /// Why new events are refused now, if they are: for `/readyz`.
    pub fn unready(&self) -> Option<String> {
        let core = match self.core() {
            Ok(core) => core,
            Err(_) => return Some(REOPENING.into()),
        };
        if let Some(fault) = core.fault() {
            let last_try = self
                .healing
                .try_lock()
                .ok()
                .and_then(|h| h.error.clone())
                .map(|e| format!("; the last try to open it again failed: {e}"))
                .unwrap_or_default();
            return Some(format!(
                "the journal cannot be written ({fault}); it is opened again as soon as writes work{last_try}"
            ));
        }
        if let Some(low) = core.disk_low() {
            return Some(low);
        }
        if core.backlog() >= self.settings.max_backlog {
            return Some(format!(
                "the backlog of undelivered events is at max_backlog ({})",
                self.settings.max_backlog
            ));
        }
        match self.settings.max_backlog_bytes {
            Some(max) if core.backlog_bytes() >= max => Some(format!(
                "the backlog of undelivered events is at max_backlog_bytes ({})",
                disk::human(max)
            )),
            _ => None,
        }
    }

    /// After a write or sync failed: once a small write and its sync work again, cuts the
    /// log back to what the last successful sync covered and opens the journal again
    /// (recovery brings the index up to the log, dropping what was never answered).
    /// Answers whether the journal is healthy afterwards. Meant to be called every second
    /// or so; cheap when there is nothing to do.
    pub async fn heal(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let current = self.core().ok();
        if current.as_ref().is_some_and(|core| core.is_healthy()) {
            return true;
        }
        let Ok(mut healing) = self.healing.try_lock() else {
            return false;
        };
        // On a thread of the blocking pool: a disk that failed may hang the test write's
        // sync, and the request threads must go on answering meanwhile.
        let (path, min_free) = (self.settings.path.clone(), self.settings.min_free);
        let tried = tokio::task::spawn_blocking(move || {
            // Retired log segments wait to be written over; a disk short of space needs
            // their room now.
            if let Err(e) = log::drop_free(&path.join("log")) {
                tracing::warn!(error = %e, "cannot delete retired commit log segments");
            }
            let space = disk::space(&path).map_err(|e| e.to_string())?;
            // Room to go on, not just for the test: otherwise the journal would open
            // again only to fail at its next write.
            let room = min_free.bytes(space.total).max(HEAL_ROOM);
            if space.free < room {
                return Err(format!(
                    "{} free, less than the {} it waits for",
                    disk::human(space.free),
                    disk::human(room)
                ));
            }
            disk::probe(&path).map_err(|e| format!("a test write failed: {e}"))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the test write stopped: {e}")));
        if let Err(e) = tried {
            let why = format!("{}: {e}", self.settings.path.display());
            if healing.error.as_deref() != Some(why.as_str()) {
                tracing::warn!(reason = %why, "the journal still cannot be written");
            }
            healing.error = Some(why);
            return false;
        }
        if let Some(core) = current {
            // Take the failed opening out of use and stop its threads.
            let durable = core.durable();
            *self.slot.write().expect("journal slot lock") = None;
            core.close().await;
            healing.cut = durable.map(|m| (m.segment, m.offset)).or(healing.cut);
            // In-flight calls hold it a moment longer; the index's lock goes with the last.
            let mut core = core;
            for _ in 0..50 {
                match Arc::try_unwrap(core) {
                    Ok(core) => {
                        drop(core);
                        break;
                    }
                    Err(still_shared) => core = still_shared,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let settings = self.settings.clone();
        let outlets = self.outlets.clone();
        let cut = healing.cut;
        let opened = tokio::task::spawn_blocking(move || {
            if let Some(cut) = cut {
                log::cut_back(&settings.path.join("log"), cut)
                    .map_err(|e| JournalError::Unwritable(format!("cutting the log back: {e}")))?;
            }
            Core::open(settings, outlets, true)
        })
        .await;
        match opened {
            Ok(Ok(core)) => {
                *self.slot.write().expect("journal slot lock") = Some(Arc::new(core));
                *healing = Healing::default();
                tracing::info!("journal opened again after a write failure; taking new events");
                true
            }
            Ok(Err(e)) => {
                let why = e.to_string();
                if healing.error.as_deref() != Some(why.as_str()) {
                    tracing::warn!(reason = %why, "the journal could not be opened again; trying again soon");
                }
                healing.error = Some(why);
                false
            }
            Err(e) => {
                healing.error = Some(format!("the reopening task failed: {e}"));
                false
            }
        }
    }

    /// Undelivered (`queued`) events.
    pub fn backlog(&self) -> u64 {
        self.core().map(|core| core.backlog()).unwrap_or(0)
    }

    /// Free space on the journal's disk, when it can be read.
    pub fn disk_free(&self) -> Option<u64> {
        disk::space(&self.settings.path)
            .ok()
            .map(|space| space.free)
    }

    /// The bytes of the undelivered events.
    pub fn backlog_bytes(&self) -> u64 {
        self.core().map(|core| core.backlog_bytes()).unwrap_or(0)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The newest sequence number that is durable; changes wake watchers.
    pub fn last_seq(&self) -> watch::Receiver<u64> {
        self.last_seq.clone()
    }

    /// The newest seq a reader may show, once it covers every event acknowledged before
    /// this call: [`Journal::last_seq`] after the index has caught up (briefly; see
    /// `Progress::settle`). For a read that must find what a client was just told about.
    pub fn readable_seq(&self) -> u64 {
        if let Ok(core) = self.core() {
            core.settle();
        }
        *self.last_seq.borrow()
    }

    /// The whole event. Finding its log entry damaged marks it `damaged` (see
    /// [`ReadError::Damaged`]).
    pub fn get(&self, seq: u64) -> Result<Option<Record>, ReadError> {
        self.core()
            .map_err(|e| ReadError::Other {
                seq,
                why: e.to_string(),
            })?
            .get(seq)
    }

    /// Summaries after `filter.after` (or, with `filter.before`, the newest ones below
    /// it), oldest first, and the cursor to continue from.
    pub fn list(&self, filter: &ListFilter) -> Result<(Vec<Summary>, u64), String> {
        self.core().map_err(|e| e.to_string())?.list(filter)
    }

    /// Where the journal keeps an event id for `source`, for tests and tools.
    pub fn remembers(&self, source: &str, id: &str) -> bool {
        self.core().is_ok_and(|core| core.remembers(source, id))
    }
}

/// Why an event could not be read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// Its commit log entry (or index record) is damaged: its content is lost. It costs
    /// this event only; the event is marked `damaged`.
    #[error("event {seq} is damaged: {why}")]
    Damaged { seq: u64, why: String },
    /// Anything else (an I/O error): reading it again may work.
    #[error("event {seq} cannot be read: {why}")]
    Other { seq: u64, why: String },
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub source: Option<String>,
    /// Only events with exactly this id.
    pub id: Option<String>,
    pub status: Option<Status>,
    pub event_type: Option<String>,
    pub after: u64,
    /// The newest seq to look at (inclusive).
    pub until: Option<u64>,
    /// Page back instead: the newest `limit` matches below this seq (still answered
    /// oldest first), and the cursor is where an older page starts.
    pub before: Option<u64>,
    /// Only events received at or after this time (ms since the epoch).
    pub received_from_ms: u64,
    pub limit: usize,
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key.try_into().unwrap_or([0; 8]))
}

/// A big-endian u64 stored in the index; `None` when the value is not 8 bytes (damage
/// is an error, never a panic).
fn seq_from(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod delivery_tests;
#[cfg(test)]
mod tests;
