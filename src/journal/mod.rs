//! The journal: every accepted event, on disk. Two parts:
//!
//! - the commit log ([`log`]): append-only segment files holding each event as it was
//!   accepted. This is what an `accepted` waits for.
//! - the index, in sled ([`index`]): `events` (seq -> summary, status, attempts and where
//!   the content is in the log), `queued` (seq -> ()), `dedup` (source\0id -> seq and
//!   first-seen time), `order` (source\0key -> newest timestamp), `meta` (how far the
//!   log is covered, how far dedup expiry has walked the events) and `dedup_expiry`
//!   (first-seen time ++ key -> (), only for ids whose event was compacted before its
//!   dedup window ended, and in journals written before the commit log).
//!
//! Writes go through one committer thread ([`committer`]) that decides and applies
//! everything queued, writes the group's log entries with one `write`, and hands the
//! answers to a flusher thread ([`flusher`]), which runs one `fdatasync` for all that was
//! handed over (group commit) and only then answers. So an answer of `accepted` or
//! `duplicate` always follows an fsync that covers its event, and because one thread
//! decides, the dedup check and the write are one step: two copies of an event can never
//! both be accepted. Sled is flushed in the background; at open, log entries the index
//! had not durably covered are written into it again. Reads go straight to sled and the
//! log.

mod committer;
mod flusher;
mod index;
mod log;
pub mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use record::{Attempt, Record, Status, Summary};

const QUEUE_DEPTH: usize = 16_384;
/// How many records one listing call may look at before it answers.
const MAX_SCAN: usize = 100_000;

#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub dedup_window: Duration,
    pub retention: Duration,
    pub max_backlog: u64,
    /// Without a broker the journal is the queue: retention drops old events whatever
    /// their status.
    pub embedded: bool,
    /// Where the journal's stage timings go (the metrics), if anywhere.
    pub stages: Option<Stages>,
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
    pub headers: Vec<(String, String)>,
    pub client_identity: Option<String>,
    pub body: Bytes,
    pub normalised: Option<Bytes>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted(u64),
    Duplicate(u64),
    Stale(u64),
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    #[error("the backlog of undelivered events has reached its limit of {max}")]
    BacklogFull { max: u64 },
    #[error("the journal cannot be written: {0}")]
    Unwritable(String),
    #[error("the journal is shutting down")]
    Closed,
}

enum Command {
    Append {
        event: Box<NewEvent>,
        reply: oneshot::Sender<Result<Outcome, JournalError>>,
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
    /// An operator asked for these events to be forwarded again.
    Replay {
        seqs: Vec<u64>,
        at_ms: u64,
        reply: oneshot::Sender<Result<Vec<Replayed>, JournalError>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

#[derive(Clone)]
struct Trees {
    events: sled::Tree,
    queued: sled::Tree,
    dedup: sled::Tree,
    dedup_expiry: sled::Tree,
    order: sled::Tree,
    meta: sled::Tree,
    /// Whether the `queued` tree is kept: only a forwarder reads it. In embedded mode
    /// the backlog is counted from the events' status instead.
    keep_queue: bool,
}

struct Shared {
    backlog: AtomicU64,
    healthy: AtomicBool,
    /// The log position the flusher has synced, for the index's background flush.
    durable: Mutex<Option<index::Mark>>,
    /// Log segments no event refers to any more, to delete once that is durable.
    unreferenced: Mutex<Vec<u64>>,
    /// The lowest seq put back into the queue by a replay since the forwarder last
    /// looked; `u64::MAX` when none.
    rewind: AtomicU64,
    /// Wakes the forwarder when `rewind` is set.
    rewound: tokio::sync::Notify,
    counts: Mutex<BTreeMap<String, SourceCounts>>,
}

impl Shared {
    fn count(&self, source: &str, change: impl FnOnce(&mut SourceCounts)) {
        let mut counts = self.counts.lock().expect("counts lock");
        match counts.get_mut(source) {
            Some(c) => change(c),
            None => change(counts.entry(source.to_string()).or_default()),
        }
    }
}

/// What the journal holds for one source, by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCounts {
    pub queued: u64,
    pub delivered: u64,
    pub stale: u64,
    pub failed: u64,
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
        self.queued + self.delivered + self.stale + self.failed
    }
}

/// One event a replay queued again: its seq, and the seq under which it is queued (the
/// same with a broker; a new copy's in embedded mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    pub seq: u64,
    pub queued_as: u64,
}

/// A handle on the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    trees: Trees,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    last_seq: watch::Receiver<u64>,
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
    index_flusher: Arc<Mutex<Option<JoinHandle<()>>>>,
    stop_index: Arc<index::Stop>,
    reader: Arc<log::Reader>,
    settings: Arc<Settings>,
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub source: Option<String>,
    pub status: Option<Status>,
    pub event_type: Option<String>,
    pub after: u64,
    /// The newest seq to look at (inclusive).
    pub until: Option<u64>,
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

impl Journal {
    pub fn open(settings: Settings) -> Result<Journal, JournalError> {
        let unwritable = |e: sled::Error| JournalError::Unwritable(e.to_string());
        let log_dir = settings.path.join("log");
        std::fs::create_dir_all(&log_dir).map_err(|e| {
            JournalError::Unwritable(format!("cannot create {}: {e}", log_dir.display()))
        })?;
        let db = sled::Config::new()
            .path(db_path(&settings.path))
            // The index is flushed by our own background thread; sled's periodic flush
            // on top of it only competes for the disk.
            .flush_every_ms(None)
            .open()
            .map_err(unwritable)?;
        let trees = Trees {
            events: db.open_tree("events").map_err(unwritable)?,
            queued: db.open_tree("queued").map_err(unwritable)?,
            dedup: db.open_tree("dedup").map_err(unwritable)?,
            dedup_expiry: db.open_tree("dedup_expiry").map_err(unwritable)?,
            order: db.open_tree("order").map_err(unwritable)?,
            meta: db.open_tree("meta").map_err(unwritable)?,
            keep_queue: !settings.embedded,
        };
        let meta = trees.meta.clone();
        let recovered = index::recover(&trees, &meta, &log_dir)?;
        if recovered.replayed > 0 || recovered.dropped > 0 {
            tracing::info!(
                replayed = recovered.replayed,
                dropped = recovered.dropped,
                "index brought up to the commit log"
            );
        }
        let (counts, mut live, unreadable) = count_events(&trees.events)?;
        complete_the_queue(&trees)?;
        let tail = recovered.tail.unwrap_or((recovered.next_segment, 0));
        let writer = log::Writer::open(&log_dir, Some(tail))
            .map_err(|e| JournalError::Unwritable(format!("commit log: {e}")))?;
        let reader = Arc::new(log::Reader::new(&log_dir));
        // Segments before the one being written that no event refers to.
        for segment in log::segments(&log_dir)
            .map_err(|e| JournalError::Unwritable(format!("commit log: {e}")))?
        {
            // A record this build cannot read may refer to any segment: delete none.
            if unreadable == 0 && segment < tail.0 && !live.contains_key(&segment) {
                reader
                    .remove(segment)
                    .map_err(|e| JournalError::Unwritable(format!("commit log: {e}")))?;
            }
        }
        live.entry(tail.0).or_insert(0);
        let last = trees
            .events
            .last()
            .map_err(unwritable)?
            .map(|(k, _)| seq_of(&k))
            .unwrap_or(0);
        // What recovery wrote is durable before anything new is accepted.
        index::cover(
            &meta,
            index::Mark {
                segment: tail.0,
                offset: tail.1,
                last_seq: last,
            },
        )
        .map_err(unwritable)?;
        db.flush().map_err(unwritable)?;
        let shared = Arc::new(Shared {
            backlog: AtomicU64::new(if trees.keep_queue {
                trees.queued.len() as u64
            } else {
                counts.values().map(|c| c.queued).sum()
            }),
            healthy: AtomicBool::new(true),
            durable: Mutex::new(None),
            unreferenced: Mutex::new(Vec::new()),
            rewind: AtomicU64::new(u64::MAX),
            rewound: tokio::sync::Notify::new(),
            counts: Mutex::new(counts),
        });
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (seq_tx, seq_rx) = watch::channel(last);
        let settings = Arc::new(settings);
        let committer = committer::Committer::new(
            db.clone(),
            trees.clone(),
            shared.clone(),
            settings.clone(),
            committer::Log {
                writer,
                reader: reader.clone(),
                live,
            },
            last,
            seq_tx,
        );
        let handle = std::thread::Builder::new()
            .name("journal-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| JournalError::Unwritable(format!("cannot start the committer: {e}")))?;
        let stop_index = Arc::new(index::Stop::default());
        let index_flusher = {
            let (shared, reader, stop) = (shared.clone(), reader.clone(), stop_index.clone());
            std::thread::Builder::new()
                .name("journal-index".into())
                .spawn(move || index::flush_in_background(db, meta, shared, reader, stop))
                .map_err(|e| {
                    JournalError::Unwritable(format!("cannot start the index flusher: {e}"))
                })?
        };
        Ok(Journal {
            trees,
            shared,
            commands: tx,
            last_seq: seq_rx,
            committer: Arc::new(Mutex::new(Some(handle))),
            index_flusher: Arc::new(Mutex::new(Some(index_flusher))),
            stop_index,
            reader,
            settings,
        })
    }

    /// Journals an event; answers once the record (or the one it duplicates) is flushed.
    pub async fn append(&self, event: NewEvent) -> Result<Outcome, JournalError> {
        if !self.is_healthy() {
            return Err(JournalError::Unwritable("an earlier flush failed".into()));
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append {
                event: Box::new(event),
                reply,
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Drops delivered events past retention and dedup entries past the window, a chunk
    /// at a time; returns whether more remains.
    pub async fn compact(&self, now_ms: u64) -> Result<bool, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Compact { now_ms, reply })
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
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
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Delivered { seqs, at_ms, reply })
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Queues events to be forwarded again (see the README's "Replay"); answers once that
    /// is durable. Seqs the journal no longer has are left out of the answer.
    pub async fn replay(&self, seqs: Vec<u64>, at_ms: u64) -> Result<Vec<Replayed>, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Replay { seqs, at_ms, reply })
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Resolves when a replay (or a delivery overtaken by one) puts an event back into
    /// the queue behind the forwarder's cursor.
    pub async fn rewound(&self) {
        self.shared.rewound.notified().await
    }

    /// The lowest seq a replay has put back into the queue since the last call, if any:
    /// the forwarder reads the queue again from there.
    pub fn take_rewind(&self) -> Option<u64> {
        match self.shared.rewind.swap(u64::MAX, Ordering::AcqRel) {
            u64::MAX => None,
            seq => Some(seq),
        }
    }

    /// What the journal holds, per source that has events.
    pub fn counts(&self) -> BTreeMap<String, SourceCounts> {
        self.shared.counts.lock().expect("counts lock").clone()
    }

    /// Notes a failed delivery attempt; the event stays `queued`.
    pub async fn record_attempt(
        &self,
        seq: u64,
        at_ms: u64,
        outcome: String,
    ) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Attempted {
                seq,
                at_ms,
                outcome,
                reply,
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
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
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Failed {
                seq,
                replays,
                at_ms,
                reason,
                reply,
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Undelivered events from `from` on, oldest first, at most `limit`.
    pub fn queued_from(&self, from: u64, limit: usize) -> Result<Vec<Record>, String> {
        let mut found = Vec::new();
        for item in self.trees.queued.range(seq_key(from)..).take(limit) {
            let (key, _) = item.map_err(|e| e.to_string())?;
            if let Some(record) = self.get(seq_of(&key))? {
                found.push(record);
            }
        }
        Ok(found)
    }

    /// Flushes what is left and stops the committer. Later appends answer `Closed`.
    pub async fn close(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).await.is_ok() {
            let _ = answer.await;
        }
        let handle = self.committer.lock().expect("committer lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // The log is synced; one last index flush makes the next open quick.
        self.stop_index.stop();
        let handle = self
            .index_flusher
            .lock()
            .expect("index flusher lock")
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    /// Undelivered (`queued`) events.
    pub fn backlog(&self) -> u64 {
        self.shared.backlog.load(Ordering::Acquire)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The newest sequence number that is durable; changes wake watchers.
    pub fn last_seq(&self) -> watch::Receiver<u64> {
        self.last_seq.clone()
    }

    pub fn get(&self, seq: u64) -> Result<Option<Record>, String> {
        let Some(bytes) = self
            .trees
            .events
            .get(seq_key(seq))
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        match record::decode_stored(&bytes).map_err(|e| e.to_string())? {
            record::Stored::Inline(record) => Ok(Some(record)),
            record::Stored::Indexed(index) => content(&self.reader, &index)
                .map(|content| content.map(|content| Record::from_parts(index, content))),
        }
    }

    /// Summaries after `filter.after`, oldest first, and the cursor to continue from.
    pub fn list(&self, filter: &ListFilter) -> Result<(Vec<Summary>, u64), String> {
        let mut found = Vec::new();
        let mut cursor = filter.after;
        let start = filter.after.saturating_add(1);
        let end = filter.until.unwrap_or(u64::MAX);
        if start > end {
            return Ok((Vec::new(), filter.after));
        }
        for item in self
            .trees
            .events
            .range(seq_key(start)..=seq_key(end))
            .take(MAX_SCAN)
        {
            let (key, bytes) = item.map_err(|e| e.to_string())?;
            cursor = seq_of(&key);
            let summary =
                record::decode_summary(&bytes).map_err(|e| format!("event {cursor}: {e}"))?;
            let wanted = summary.received_at_ms >= filter.received_from_ms
                && filter.source.as_deref().is_none_or(|s| s == summary.source)
                && filter.status.is_none_or(|s| s == summary.status)
                && filter
                    .event_type
                    .as_deref()
                    .is_none_or(|t| Some(t) == summary.event_type.as_deref());
            if wanted {
                found.push(summary);
                if found.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok((found, cursor))
    }

    /// Where the journal keeps an event id for `source`, for tests and tools.
    pub fn remembers(&self, source: &str, id: &str) -> bool {
        self.trees
            .dedup
            .contains_key(committer::dedup_key(source, id))
            .unwrap_or(false)
    }
}

/// The `meta` key present while the `queued` tree holds every queued event.
const QUEUE_COMPLETE: &[u8] = b"queue_complete";

/// With a broker, makes sure the `queued` tree holds every queued event: after embedded
/// mode (which does not keep it), every event still `queued` goes in. Embedded, notes
/// that the tree is no longer kept.
fn complete_the_queue(trees: &Trees) -> Result<(), JournalError> {
    let unwritable = |e: sled::Error| JournalError::Unwritable(e.to_string());
    if !trees.keep_queue {
        trees.meta.remove(QUEUE_COMPLETE).map_err(unwritable)?;
        return Ok(());
    }
    if trees
        .meta
        .contains_key(QUEUE_COMPLETE)
        .map_err(unwritable)?
    {
        return Ok(());
    }
    let mut added = 0u64;
    for item in trees.events.iter() {
        let (key, bytes) = item.map_err(unwritable)?;
        if record::decode_summary(&bytes).is_ok_and(|s| s.status == Status::Queued)
            && trees.queued.insert(key, &[]).map_err(unwritable)?.is_none()
        {
            added += 1;
        }
    }
    trees.meta.insert(QUEUE_COMPLETE, &[]).map_err(unwritable)?;
    if added > 0 {
        tracing::info!(added, "queue rebuilt for the forwarder after embedded mode");
    }
    Ok(())
}

/// An indexed event's content from the log; `None` while its group is still being
/// written.
fn content(reader: &log::Reader, index: &record::Index) -> Result<Option<record::Content>, String> {
    let seq = index.summary.seq;
    match reader.read(index.content) {
        Ok(Some(bytes)) => record::decode_created(&bytes)
            .map(|created| Some(created.content))
            .map_err(|e| format!("event {seq}: {e}")),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("event {seq}: {e}")),
    }
}

/// Events by log segment.
type Live = BTreeMap<u64, u64>;

/// Counts the events of each source by status, and of each log segment; and the
/// records it could not read.
fn count_events(
    events: &sled::Tree,
) -> Result<(BTreeMap<String, SourceCounts>, Live, usize), JournalError> {
    let mut counts: BTreeMap<String, SourceCounts> = BTreeMap::new();
    let mut live = Live::new();
    let mut unreadable = 0;
    for item in events.iter() {
        let (key, bytes) = item.map_err(|e| JournalError::Unwritable(e.to_string()))?;
        match record::decode_stored(&bytes) {
            Ok(stored) => {
                if let record::Stored::Indexed(index) = &stored {
                    *live.entry(index.content.segment).or_default() += 1;
                }
                let s = stored.summary();
                match counts.get_mut(&s.source) {
                    Some(c) => c.add(s),
                    None => counts.entry(s.source.clone()).or_default().add(s),
                }
            }
            Err(e) => {
                unreadable += 1;
                tracing::warn!(seq = seq_of(&key), error = %e, "unreadable record not counted")
            }
        }
    }
    Ok((counts, live, unreadable))
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("sled")
}

#[cfg(test)]
mod tests;
