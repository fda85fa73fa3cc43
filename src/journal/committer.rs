//! The one thread that decides what the journal holds. It takes every command queued,
//! applies them in order (appends go to the commit log, and to the indexer, which writes
//! them into the index behind the log), writes the group's log entries at once, and has the
//! flusher sync them before it answers. Deciding dedup and ordering
//! here, on one thread, is what makes "check then write" atomic.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use super::census::{self, Census};
use super::core::{content, fingerprints_path};
use super::deliveries::Subs;
use super::disk::Floor;
use super::fingerprints::{self, Fingerprints};
use super::flusher::{self, AppendResult, Flusher, UpdateReply};
use super::index::{self, Mark, DEDUP_WALKED};
use super::indexer::{self, Overlay, Work};
use super::log::{Reader, Writer};
use super::record::{self, Content, Created, Loc, Status, Stored, Summary};
use super::store;
use super::watchdog::{self, Watch};
use super::{
    seq_from, seq_key, seq_of, Command, JournalError, NewEvent, Outcome, Outlets, ReadError,
    Replayed, Settings, Shared, Trees,
};

/// What became of one publish.
enum Delivery {
    /// The broker confirmed it; `replays` is the event's replay count when it was sent.
    Confirmed {
        replays: u32,
    },
    Failed(String),
}

/// The committer's side of the commit log.
pub(super) struct Log {
    pub writer: Writer,
    pub reader: Arc<Reader>,
    /// How many events refer to each segment; a segment at 0 can go.
    pub live: BTreeMap<u64, u64>,
    /// How many records the opening found that this build cannot read: they may refer
    /// to any segment, so a close leaves no census and the next opening counts again.
    pub unreadable: usize,
}

/// The most events handed to the indexer and not yet written by it: past this, the
/// committer waits for it (their memory, and how far the index may lag, stay bounded).
const MAX_UNINDEXED: usize = 16_384;
/// How long a command other than an append waits for the indexer before it goes on.
const CATCH_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
/// The most commands applied before one flush; bounds the latency of a group.
const MAX_GROUP: usize = 4096;
/// The most event bytes in one group: with `MAX_GROUP`, bounds the log's write buffer
/// (which shrinks back after a large group) and a group's latency.
const MAX_GROUP_BYTES: usize = 16 << 20;
/// How many delivery attempts an event's log keeps.
const MAX_ATTEMPTS_LOGGED: usize = 20;
/// The most records one compaction step removes, so that appends are not held up.
const COMPACT_CHUNK: usize = 2_000;
/// How long one compaction step may hold the committer (and with it every append):
/// a step stops at the first multiple of `COMPACT_CHECK` records past it. With a
/// journal in its steady state, where compaction removes as many events as come in,
/// steps of 2,000 records held appends for 60-100 ms each.
const COMPACT_STEP: std::time::Duration = std::time::Duration::from_millis(4);
const COMPACT_CHECK: usize = 64;

/// Whether a compaction step that has done `done` records of one walk should stop.
fn step_over(done: usize, deadline: std::time::Instant) -> bool {
    done >= COMPACT_CHUNK
        || (done > 0 && done.is_multiple_of(COMPACT_CHECK) && std::time::Instant::now() >= deadline)
}

pub(super) struct Committer {
    db: store::Db,
    pub(super) trees: Trees,
    pub(super) shared: Arc<Shared>,
    pub(super) settings: Arc<Settings>,
    pub(super) log: Log,
    pub(super) last_seq: u64,
    pub(super) outlets: Outlets,
    /// The subscriptions, and what the active ones match.
    pub(super) subs: Subs,
    order_cursor: Vec<u8>,
    /// Where the next compaction step goes on walking the events.
    compact_cursor: u64,
    floor: Floor,
    /// Whether the last check found the disk below the floor.
    disk_low: bool,
    /// Appended events for the indexer, handed over with the group.
    handing: Vec<(Created, Loc)>,
    /// The newest seq handed (or about to be handed) to the indexer.
    handed_seq: u64,
    /// What the indexer has been handed and not yet written, for decisions.
    overlay: Overlay,
    /// The dedup keys of the events in the window, and which ones the index holds: most new
    /// ids are decided without the index. Shared with readers (`Core::remembers`).
    prints: Arc<Mutex<Fingerprints>>,
    /// Whether the indexer fell `MAX_UNINDEXED` behind (said once until it catches up).
    index_behind: bool,
    indexer: Option<(std::sync::mpsc::Sender<Work>, std::thread::JoinHandle<()>)>,
}

pub(super) fn dedup_key(source: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(source.len() + id.len() + 1);
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The dedup key of a replay key (see `Scheme::replay_key`): a NUL after the source's
/// NUL keeps it apart from every id a header can carry.
pub(super) fn replay_dedup_key(source: &str, replay_key: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(source.len() + replay_key.len() + 2);
    key.extend_from_slice(source.as_bytes());
    key.extend_from_slice(&[0, 0]);
    key.extend_from_slice(replay_key.as_bytes());
    key
}

/// A `dedup_expiry` key: first-seen time, then the dedup key, so that a range read
/// finds the oldest first.
pub(super) fn expiry_key(first_seen_ms: u64, dedup: &[u8]) -> Vec<u8> {
    let mut key = first_seen_ms.to_be_bytes().to_vec();
    key.extend_from_slice(dedup);
    key
}

pub(super) fn dedup_value(seq: u64, first_seen_ms: u64) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(&first_seen_ms.to_be_bytes());
    v
}

/// The error for a dedup entry too short to read.
fn damaged_entry() -> JournalError {
    JournalError::Unwritable("a dedup entry in the index is damaged".into())
}

/// A dedup entry's seq and first-seen time; `None` for a value too short to be one
/// (damage is an error, never a panic).
fn split_dedup_value(v: &[u8]) -> Option<(u64, u64)> {
    Some((seq_from(v.get(..8)?)?, seq_from(v.get(8..16)?)?))
}

/// An order entry: the newest timestamp accepted for the key, when it was set, and the
/// seq of the event that set it (entries written before 0.2 have no seq).
pub(super) fn order_value(ts: i64, updated_ms: u64, seq: u64) -> [u8; 24] {
    let mut v = [0; 24];
    v[..8].copy_from_slice(&ts.to_be_bytes());
    v[8..16].copy_from_slice(&updated_ms.to_be_bytes());
    v[16..].copy_from_slice(&seq.to_be_bytes());
    v
}

/// An order entry's timestamp and update time.
fn split_order_value(v: &[u8]) -> Option<(i64, u64)> {
    let ts = i64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    Some((ts, seq_from(v.get(8..16)?)?))
}

/// The seq of the event that set an order entry, when the entry says.
pub(super) fn order_setter(v: &[u8]) -> Option<u64> {
    seq_from(v.get(16..24)?)
}

/// Adds an attempt to an event's log, which keeps the first attempt and the latest ones.
fn log_attempt(log: &mut Vec<record::Attempt>, at_ms: u64, outcome: String) {
    log.push(record::Attempt { at_ms, outcome });
    if log.len() > MAX_ATTEMPTS_LOGGED {
        log.remove(1);
    }
}

/// Answers `reply` with `result` once the flush that covers it is done, or with the
/// flush's error.
fn answer_after_flush<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, JournalError>>,
    result: Result<T, JournalError>,
) -> UpdateReply {
    Box::new(move |failed| {
        let _ = reply.send(match failed {
            Some(e) => Err(e.clone()),
            None => result,
        });
    })
}

impl Committer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        db: store::Db,
        trees: Trees,
        prints: Arc<Mutex<Fingerprints>>,
        shared: Arc<Shared>,
        settings: Arc<Settings>,
        log: Log,
        last_seq: u64,
        outlets: Outlets,
    ) -> Self {
        let subscriptions = super::subscription::all_subscriptions(&trees).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the subscriptions");
            Vec::new()
        });
        Committer {
            floor: Floor::new(&settings.path, settings.min_free),
            db,
            trees,
            shared,
            settings,
            log,
            last_seq,
            outlets,
            subs: Subs::new(subscriptions),
            order_cursor: Vec::new(),
            compact_cursor: 0,
            disk_low: false,
            handing: Vec::new(),
            handed_seq: last_seq,
            overlay: Overlay::default(),
            prints,
            index_behind: false,
            indexer: None,
        }
    }

    /// Applies commands as they come, a group at a time, and answers each group once
    /// its writes are synced.
    pub(super) fn run(mut self, commands: mpsc::Receiver<Command>) {
        let watch = Watch::new(commands);
        let watchdog = watchdog::spawn(&watch);
        let mut flusher = Flusher::new(
            self.db.clone(),
            self.shared.clone(),
            self.settings.stages.clone(),
        );
        {
            let (tx, rx) = std::sync::mpsc::channel();
            let (trees, shared) = (self.trees.clone(), self.shared.clone());
            let handle = std::thread::Builder::new()
                .name("journal-indexer".into())
                .spawn(move || indexer::run(rx, trees, shared))
                .expect("the indexer thread starts");
            self.indexer = Some((tx, handle));
        }
        let mut group = Vec::with_capacity(MAX_GROUP);
        // The group's appends' results, in order; their replies are in `watch`.
        let mut appends: Vec<AppendResult> = Vec::with_capacity(MAX_GROUP);
        let mut updates: Vec<UpdateReply> = Vec::new();
        let mut closing = false;
        let mut index_flush = false;
        while !closing {
            // While a sync runs, what arrives waits for the next one whenever it is
            // written: so take it all as one group once the sync is done (one write, one
            // sync, and no wake-up of this thread per request). With the index off this
            // thread, a group takes a fraction of a sync, so little overlap is lost;
            // measured, waiting for the sync cost nothing at 64 connections and gained
            // 11% at 256 over writing the next group during it, and then running the
            // sync here rather than on a thread of its own saved that thread's two
            // wake-ups per group (BENCHMARKS.md).
            //
            // Each group costs a sync and the wake-ups around it, as much CPU as several
            // events' own work; under load, waiting a little for more to join takes
            // fewer of them (`journal.group_delay`, BENCHMARKS.md). Whatever waits
            // meanwhile stays in the inbox, where the watchdog sees it.
            let delay = self.settings.group_delay;
            if !delay.is_zero() && watch.inbox().waiting() >= super::GROUP_DELAY_QUEUED {
                std::thread::sleep(delay);
            }
            let mut inbox = watch.inbox();
            let Some(first) = inbox.next() else {
                break;
            };
            let began = std::time::Instant::now();
            let mut group_bytes = first.bytes();
            group.push(first);
            while group.len() < MAX_GROUP && group_bytes < MAX_GROUP_BYTES {
                match inbox.try_next() {
                    Some(command) => {
                        group_bytes += command.bytes();
                        group.push(command);
                    }
                    None => break,
                }
            }
            drop(inbox);
            watch.start(&mut group);
            let mut close = None;
            let commands_in_group = group.len();
            for command in group.drain(..) {
                if !matches!(command, Command::Append { .. }) {
                    // Everything but an append reads and writes the index itself.
                    self.catch_up();
                }
                match command {
                    Command::Append {
                        event, earlier_key, ..
                    } => {
                        appends.push(self.append(*event, earlier_key));
                    }
                    Command::Compact { now_ms, reply } => {
                        let result = self.compact(now_ms);
                        updates.push(answer_after_flush(reply, result));
                    }
                    Command::Delivered { seqs, at_ms, reply } => {
                        let result = seqs.iter().try_for_each(|&(seq, replays)| {
                            self.update(seq, at_ms, Delivery::Confirmed { replays })
                        });
                        // The forwarder needs to know these have left the queue, not that
                        // the mark is on disk: a mark lost in a crash only means the event
                        // is published again. So answer now; the next flush covers it.
                        let _ = reply.send(result);
                        updates.push(Box::new(|_| {}));
                    }
                    Command::Attempted {
                        seq,
                        at_ms,
                        outcome,
                        reply,
                    } => {
                        let result = self.update(seq, at_ms, Delivery::Failed(outcome));
                        updates.push(answer_after_flush(reply, result));
                    }
                    Command::Failed {
                        seq,
                        replays,
                        at_ms,
                        reason,
                        reply,
                    } => {
                        let result = self.fail(seq, replays, at_ms, reason);
                        updates.push(answer_after_flush(reply, result));
                    }
                    Command::Replay { seqs, at_ms, reply } => {
                        let result = self.replay(&seqs, at_ms);
                        updates.push(answer_after_flush(reply, result));
                        // A replay that re-queues events lives only in the index.
                        index_flush = true;
                    }
                    Command::Damaged { seq, why, at_ms } => {
                        if let Err(e) = self.mark_damaged(seq, &why, at_ms) {
                            tracing::error!(seq, error = %e, "cannot mark a damaged event");
                        }
                        updates.push(Box::new(|_| {}));
                    }
                    Command::PutSubscription { sub, reply } => {
                        let result = self.put_subscription(*sub);
                        updates.push(answer_after_flush(reply, result));
                        index_flush = true;
                    }
                    Command::DeleteSubscription { num, reply } => {
                        let result = self.delete_subscription(num);
                        updates.push(answer_after_flush(reply, result));
                        index_flush = true;
                    }
                    Command::Outcomes { outcomes, reply } => {
                        let result = self.outcomes(outcomes);
                        // As with the broker's confirms: a lost outcome only means the
                        // delivery is made again.
                        let _ = reply.send(result);
                        updates.push(Box::new(|_| {}));
                    }
                    Command::Lease {
                        num,
                        max,
                        lease_ms,
                        now_ms,
                        reply,
                    } => {
                        let result = self.lease(num, max, lease_ms, now_ms);
                        let _ = reply.send(result);
                        updates.push(Box::new(|_| {}));
                    }
                    Command::Ack {
                        num,
                        seqs,
                        now_ms,
                        reply,
                    } => {
                        let result = self.ack(num, &seqs, now_ms);
                        updates.push(answer_after_flush(reply, result));
                        index_flush = true;
                    }
                    Command::RetryDelivery {
                        seq,
                        num,
                        now_ms,
                        reply,
                    } => {
                        let result = self.retry_delivery(seq, num, now_ms);
                        updates.push(answer_after_flush(reply, result));
                        index_flush = true;
                    }
                    Command::Callback {
                        hash,
                        succeeded,
                        result,
                        now_ms,
                        reply,
                    } => {
                        // Answered after the flush that makes the `.finished` event
                        // durable: the callback is journaled before its 200. Past the
                        // `.finished` depth limit no event is appended and the delivery's
                        // end lives only in the index, so the index is flushed too.
                        let result = self.callback(&hash, succeeded, result, now_ms);
                        index_flush |= result.is_ok();
                        updates.push(answer_after_flush(reply, result));
                    }
                    Command::ExpireCallbacks { now_ms, reply } => {
                        let result = self.expire_callbacks(now_ms);
                        index_flush |= matches!(result, Ok(n) if n > 0);
                        updates.push(answer_after_flush(reply, result));
                    }
                    Command::Close { reply } => close = Some(reply),
                }
            }
            closing = close.is_some();
            let sync = self.write_group(&mut appends, index_flush || closing, closing);
            index_flush = false;
            if let Some(stages) = &self.settings.stages {
                stages.group_seconds.observe(began.elapsed().as_secs_f64());
                stages.group_commands.observe(commands_in_group as f64);
            }
            flusher.flush(&mut appends, &watch, &mut updates, sync);
            watch.end();
            if let Some(close) = close {
                let _ = close.send(());
            }
        }
        if !closing {
            // Every handle is gone without a close: still end with a sync.
            let sync = self.write_group(&mut appends, true, true);
            flusher.flush(&mut appends, &watch, &mut updates, sync);
        }
        drop(watchdog);
        tracing::debug!("journal committer stopped");
    }

    /// Writes the group's log entries, hands its events to the indexer, and says what the
    /// flusher must sync before the group is answered. `last` ends the indexer first and
    /// leaves the census.
    fn write_group(
        &mut self,
        appends: &mut [AppendResult],
        index_flush: bool,
        last: bool,
    ) -> flusher::Sync {
        self.release_emptied();
        if let Err(e) = self.log.writer.write() {
            // The index already holds this group's events; refusing everything from now
            // on (and dropping them from the index at the next open) keeps a retry from
            // being taken for a duplicate.
            self.shared.fail(format!("a commit log write failed: {e}"));
            tracing::error!(error = %e, "commit log write failed; refusing new events until writes work again");
            // Duplicates too: the copy they point at may be in this unwritten group. The
            // flusher, seeing the journal unhealthy, fails the group and never moves the
            // durable mark again.
            let failed = JournalError::Unwritable(format!("commit log write failed: {e}"));
            for result in appends.iter_mut() {
                *result = Err(failed.clone());
            }
        }
        let (segment, offset) = self.log.writer.position();
        let mark = Mark {
            segment,
            offset,
            last_seq: self.last_seq,
        };
        self.send_to_indexer();
        if self.shared.healthy.load(Ordering::Acquire) {
            self.give_indexer(Work::Mark(mark));
        }
        if last {
            // The index is complete before the last flush answers the close.
            if let Some((tx, handle)) = self.indexer.take() {
                drop(tx);
                let _ = handle.join();
            }
            self.leave_census(mark);
        }
        flusher::Sync {
            files: self.log.writer.take_unsynced(),
            mark,
            index: index_flush,
        }
    }

    /// At a clean close, with every event written and indexed up to `mark`: records
    /// what the next opening would otherwise count by walking the whole index.
    fn leave_census(&self, mark: Mark) {
        if !self.shared.healthy.load(Ordering::Acquire) || self.log.unreadable > 0 {
            return;
        }
        if let Err(e) = self.write_census(mark) {
            tracing::warn!(error = %e, "no census left at close; the next opening counts every event");
        }
    }

    fn write_census(&self, mark: Mark) -> Result<(), String> {
        let (_, pending_bytes) =
            super::deliveries::count_pending(&self.trees).map_err(|e| e.to_string())?;
        // A segment at no events stays in `live` while it is the one written; a walk
        // would not find it, and once the log moved on nothing would release it.
        let live = self.log.live.iter().filter(|(_, n)| **n > 0);
        let census = Census {
            covered: mark,
            counts: self.shared.counts.lock().expect("counts lock").clone(),
            live: live.map(|(segment, n)| (*segment, *n)).collect(),
            queued_bytes: self
                .shared
                .backlog_bytes
                .load(Ordering::Acquire)
                .saturating_sub(pending_bytes),
            sub_stats: self
                .shared
                .sub_stats
                .lock()
                .expect("sub stats lock")
                .clone(),
        };
        // The table first: a census in the index says the table saved with its mark
        // is whole.
        self.prints()
            .save(&fingerprints_path(&self.settings.path), mark)
            .map_err(|e| e.to_string())?;
        census::write(&self.trees, &census).map_err(|e| e.to_string())
    }

    fn give_indexer(&mut self, work: Work) {
        if let Some((tx, _)) = &self.indexer {
            if tx.send(work).is_err() {
                self.shared.fail("the indexer thread stopped".into());
            }
        }
    }

    /// Hands the events appended so far to the indexer.
    fn send_to_indexer(&mut self) {
        if !self.handing.is_empty() {
            let events = std::mem::take(&mut self.handing);
            self.give_indexer(Work::Apply(events));
        }
    }

    /// Waits until the index holds every event handed over: the commands that read and
    /// write the index themselves see what the appends before them decided.
    fn catch_up(&mut self) {
        self.send_to_indexer();
        self.wait_for_indexer(self.handed_seq);
    }

    fn wait_for_indexer(&mut self, seq: u64) {
        if let Err(e) = self.shared.index.wait_for(seq, CATCH_UP_LIMIT) {
            // Once the indexer failed, the journal refuses new events until it is opened
            // again (its fault says why), and every command would say so here too.
            if self.shared.healthy.load(Ordering::Acquire) {
                tracing::error!(error = %e, "the index did not catch up with the log");
            }
        }
        self.overlay.prune(self.shared.index.indexed());
    }

    /// Puts an accepted event in the log under the next seq, and hands it to the
    /// indexer: its answer waits for the log's sync, not for the index.
    /// `keys` are the dedup keys it is remembered under (`index::dedup_keys`), as the
    /// append looked them up.
    fn log_and_hand(
        &mut self,
        mut created: Created,
        keys: Vec<Vec<u8>>,
    ) -> Result<(), JournalError> {
        let loc = self.append_to_log(&created)?;
        // A new event's deliveries are exactly those it matched (`index::apply` makes
        // each, the subscriptions being unchanged until the indexer has caught up).
        self.count_new(&created, loc, &created.deliveries);
        // Once the table is full, the indexer writes them into the index.
        created.keys_in_index = !self.hold_keys(created.summary.seq, &keys);
        self.overlay.add(&created, keys);
        // The index needs where the content is, not the content.
        created.content.body = bytes::Bytes::new();
        created.content.normalised = None;
        created.content.headers = Default::default();
        self.handing.push((created, loc));
        if self.overlay.len() > MAX_UNINDEXED {
            if !self.index_behind {
                self.index_behind = true;
                tracing::warn!(
                    events = self.overlay.len(),
                    "the index is this far behind the commit log; new events wait for it"
                );
            }
            self.send_to_indexer();
            let half = self
                .overlay
                .seq_at(MAX_UNINDEXED / 2)
                .unwrap_or(self.handed_seq);
            self.wait_for_indexer(half);
        } else if self.index_behind && self.overlay.len() < MAX_UNINDEXED / 4 {
            self.index_behind = false;
            tracing::info!("the index has caught up with the commit log");
        }
        Ok(())
    }

    /// Puts a new event in the log and the index under the next seq, on this thread (for
    /// commands other than appends, which run once the indexer has caught up).
    pub(super) fn log_and_index(&mut self, created: &Created) -> Result<(), JournalError> {
        debug_assert!(self.handing.is_empty() && self.overlay.len() == 0);
        let loc = self.append_to_log(created)?;
        let made = match index::apply(&self.trees, created, loc) {
            Ok(made) => made,
            Err(e) => {
                // The entry is in the log under a seq the next event would take again:
                // refuse everything from now on (the next open sorts it out from the log).
                self.shared.fail(format!("an index write failed: {e}"));
                tracing::error!(error = %e, "index write failed; refusing new events until writes work again");
                return Err(JournalError::Unwritable(e.to_string()));
            }
        };
        let made: Vec<u64> = made.iter().map(|delivery| delivery.sub).collect();
        self.count_new(created, loc, &made);
        self.shared.index.indexed_to(created.summary.seq);
        if created.remembered {
            let summary = &created.summary;
            let keys = index::dedup_keys(summary, created.replay_key.as_deref());
            if !self.hold_keys(summary.seq, &keys) {
                let value = dedup_value(summary.seq, summary.received_at_ms);
                for key in keys {
                    self.trees
                        .dedup
                        .insert(key, value)
                        .map_err(|e| JournalError::Unwritable(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    /// Holds a new event's dedup keys in memory. Answers `false` once the table is full:
    /// then they go into the index's `dedup` tree (counted as such here), which the caller
    /// sees to.
    fn hold_keys(&self, seq: u64, keys: &[Vec<u8>]) -> bool {
        let max = self.held_cap();
        let mut prints = self.prints();
        let mut held = true;
        for key in keys {
            held &= prints.keep(key, seq, max);
        }
        if !held {
            for key in keys {
                prints.add(key);
            }
        }
        held
    }

    /// The fingerprint table.
    fn prints(&self) -> MutexGuard<'_, Fingerprints> {
        self.prints.lock().expect("fingerprint table lock")
    }

    /// The most dedup keys kept in memory (tests lower it).
    fn held_cap(&self) -> usize {
        #[cfg(test)]
        {
            self.shared.held_cap.load(Ordering::Acquire)
        }
        #[cfg(not(test))]
        {
            fingerprints::MAX_HELD
        }
    }

    /// Writes a new event's log entry.
    fn append_to_log(&mut self, created: &Created) -> Result<Loc, JournalError> {
        self.log
            .writer
            .append_with(created.summary.seq, |buf| {
                record::encode_created(created, buf)
            })
            .map_err(|e| JournalError::Unwritable(format!("commit log: {e}")))
    }

    /// Counts a new event at `loc`, and a delivery of it for each subscription in
    /// `deliveries`: the backlog, the per-source and per-subscription counts, the
    /// segment's references, the last seq.
    fn count_new(&mut self, created: &Created, loc: Loc, deliveries: &[u64]) {
        let summary = &created.summary;
        for &num in deliveries {
            self.shared.queued(summary.size);
            self.stat(num, |s| s.pending += 1);
        }
        *self.log.live.entry(loc.segment).or_default() += 1;
        if summary.status == Status::Queued {
            self.shared.queued(summary.size);
        }
        self.shared.count(&summary.source, |c| c.add(summary));
        self.last_seq = summary.seq;
        self.handed_seq = summary.seq;
    }

    /// An event as stored in the index.
    fn stored(&self, seq: u64) -> Result<Option<Stored>, JournalError> {
        let found = self
            .trees
            .events
            .get(seq_key(seq))
            .map_err(|e| JournalError::Unwritable(e.to_string()))?;
        found
            .map(|bytes| {
                record::decode_stored(&bytes).map_err(|e| JournalError::Unwritable(e.to_string()))
            })
            .transpose()
    }

    /// Journals `event` unless a dedup key of it, or `earlier_key` (its replay key in
    /// the form events from before `mac:` keys hold), is remembered.
    fn append(
        &mut self,
        event: NewEvent,
        earlier_key: Option<Vec<u8>>,
    ) -> Result<Outcome, JournalError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(JournalError::Unwritable("an earlier flush failed".into()));
        }
        self.overlay.prune(self.shared.index.indexed());
        // The id, then what the signature covers where it does not cover the id: a
        // captured body posted again under a new id is a duplicate too.
        // Made once here for the lookups, the fingerprints and the overlay.
        let keys = index::keys_for(&event.source, &event.id, event.replay_key.as_deref());
        for key in &keys {
            if let Some(seq) = self.remembered(key, &event)? {
                return Ok(Outcome::Duplicate(seq));
            }
        }
        if let Some(earlier) = earlier_key {
            if let Some(seq) = self.remembered(&earlier, &event)? {
                return Ok(Outcome::Duplicate(seq));
            }
        }
        let size = event.bytes() as u64;
        self.check_floor(size)?;
        let stale = match &event.order {
            Some((order_key, ts)) => self.is_stale(&event.source, order_key, *ts)?,
            None => false,
        };
        if !stale {
            if self.shared.backlog.load(Ordering::Acquire) >= self.settings.max_backlog {
                return Err(JournalError::BacklogFull {
                    max: self.settings.max_backlog,
                });
            }
            if let Some(max) = self.settings.max_backlog_bytes {
                if self.shared.backlog_bytes.load(Ordering::Acquire) + size > max {
                    return Err(JournalError::BacklogBytesFull { max });
                }
            }
        }
        let seq = self.last_seq + 1;
        let status = if stale { Status::Stale } else { Status::Queued };
        let (order_key, order_ts) = match event.order {
            Some((key, ts)) => (Some(key), Some(ts)),
            None => (None, None),
        };
        let created = Created {
            summary: Summary {
                seq,
                id: event.id,
                source: event.source,
                event_type: event.event_type,
                status,
                received_at_ms: event.received_at_ms,
                attempts: 0,
                size: event.body.len() as u64,
                replay_of: None,
            },
            content: Content {
                event_ts: event.event_ts,
                order_key,
                content_type: event.content_type,
                headers: event.headers,
                client_identity: event.client_identity,
                body: event.body,
                normalised: event.normalised,
            },
            replays: 0,
            order_ts,
            remembered: true,
            replay_key: event.replay_key,
            deliveries: Vec::new(),
            derived: None,
            keys_in_index: false,
        };
        let mut created = created;
        if !stale {
            created.deliveries = self.subs.matching(&created.summary, None);
        }
        self.log_and_hand(created, keys)?;
        Ok(if stale {
            Outcome::Stale(seq)
        } else {
            Outcome::Accepted(seq)
        })
    }

    /// The seq of the event a dedup key points at, while inside the dedup window.
    fn remembered(&self, key: &[u8], event: &NewEvent) -> Result<Option<u64>, JournalError> {
        let window_ms = self.settings.dedup_window.as_millis() as u64;
        let (seq, first_seen) = match self.overlay.dedup(key) {
            // What the indexer has not written yet is newer than anything the index holds.
            Some(value) => split_dedup_value(value).ok_or_else(damaged_entry)?,
            None => match self.key_owner(key)? {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        Ok((first_seen.saturating_add(window_ms) > event.received_at_ms).then_some(seq))
    }

    /// The newest indexed event `key` is a dedup key of, from the index's `dedup` tree and
    /// the table in memory (checked against each candidate's own entry): its seq and
    /// when it was first seen.
    pub(super) fn key_owner(&self, key: &[u8]) -> Result<Option<(u64, u64)>, JournalError> {
        let unwritable = |e: store::Error| JournalError::Unwritable(e.to_string());
        let (in_index, seqs) = self.prints().lookup(key);
        let in_index = match in_index {
            true => match self.trees.dedup.get(key).map_err(unwritable)? {
                Some(found) => Some(split_dedup_value(&found).ok_or_else(damaged_entry)?),
                None => None,
            },
            false => None,
        };
        let in_memory = fingerprints::owner(&self.trees.events, seqs, key).map_err(unwritable)?;
        // Both may know the key (a journal written before the keys left the index, or an
        // event retention removed): the newer event decides.
        Ok(in_index.into_iter().chain(in_memory).max())
    }

    /// Refuses a new event of `size` bytes while free disk space is below the floor.
    fn check_floor(&mut self, size: u64) -> Result<(), JournalError> {
        let low = self.floor.check(size).map(str::to_string);
        if low.is_some() != self.disk_low {
            self.disk_low = low.is_some();
            match &low {
                Some(why) => tracing::warn!(reason = %why, "refusing new events: disk space low"),
                None => {
                    tracing::info!("disk space is back above journal.min_free; taking new events")
                }
            }
            *self.shared.disk_low.lock().expect("disk lock") = low.clone();
        }
        match low {
            Some(why) => Err(JournalError::DiskLow(why)),
            None => Ok(()),
        }
    }

    /// Records a delivery attempt on a queued event. A confirmed one is `delivered` and
    /// leaves the queue, unless the event was replayed after it was published: then it
    /// stays queued and goes out again.
    fn update(&mut self, seq: u64, at_ms: u64, delivery: Delivery) -> Result<(), JournalError> {
        let unwritable = |e: store::Error| JournalError::Unwritable(e.to_string());
        let Some(mut stored) = self.stored(seq)? else {
            return Ok(());
        };
        if stored.summary().status != Status::Queued {
            // A queue entry left by a crash between the record and the queue writes (not
            // counted in the backlog's bytes).
            return self.dequeue(seq, 0);
        }
        let (delivered, outcome) = match delivery {
            Delivery::Confirmed { replays } if replays == stored.replays() => {
                (true, "delivered".to_string())
            }
            Delivery::Confirmed { .. } => {
                self.shared.rewind.fetch_min(seq, Ordering::AcqRel);
                self.shared.rewound.notify_one();
                (
                    false,
                    "delivered; replayed since, so sent again".to_string(),
                )
            }
            Delivery::Failed(outcome) => (false, outcome),
        };
        {
            let summary = stored.summary_mut();
            summary.attempts = summary.attempts.saturating_add(1);
            if delivered {
                summary.status = Status::Delivered;
            }
        }
        log_attempt(stored.attempts_log_mut(), at_ms, outcome);
        if delivered {
            self.shared.count(&stored.summary().source, |c| {
                c.moved(Status::Queued, Status::Delivered)
            });
        }
        // The record first, then the queue: a crash in between leaves a queue entry that
        // the next delivery of it removes (above).
        self.trees
            .events
            .insert(seq_key(seq), stored.encode())
            .map_err(unwritable)?;
        if delivered {
            self.leave_queue(stored.summary(), Status::Queued)?;
        }
        Ok(())
    }

    /// Marks a queued event `failed` and takes it out of the queue, unless it was replayed
    /// after it was published (then it stays queued and goes out again).
    fn fail(
        &mut self,
        seq: u64,
        replays: u32,
        at_ms: u64,
        reason: String,
    ) -> Result<(), JournalError> {
        let Some(mut stored) = self.stored(seq)? else {
            return Ok(());
        };
        if stored.summary().status != Status::Queued {
            // A queue entry a crash left behind (not counted in the backlog's bytes).
            return self.dequeue(seq, 0);
        }
        if replays != stored.replays() {
            return self.update(seq, at_ms, Delivery::Failed(reason));
        }
        {
            let summary = stored.summary_mut();
            summary.attempts = summary.attempts.saturating_add(1);
            summary.status = Status::Failed;
        }
        log_attempt(stored.attempts_log_mut(), at_ms, reason);
        self.shared.count(&stored.summary().source, |c| {
            c.moved(Status::Queued, Status::Failed)
        });
        // The record first, then the queue, as in `update`.
        self.trees
            .events
            .insert(seq_key(seq), stored.encode())
            .map_err(|e| JournalError::Unwritable(e.to_string()))?;
        self.leave_queue(stored.summary(), Status::Queued)
    }

    /// Marks an event whose log entry a read found damaged: it leaves the queue and is
    /// never forwarded; every other event goes on.
    fn mark_damaged(&mut self, seq: u64, why: &str, at_ms: u64) -> Result<(), JournalError> {
        let Some(mut stored) = self.stored(seq)? else {
            return Ok(());
        };
        let before = stored.summary().status;
        if before == Status::Damaged {
            return Ok(());
        }
        tracing::error!(seq, source = %stored.summary().source, damage = %why, "event marked damaged; it will not be forwarded");
        stored.summary_mut().status = Status::Damaged;
        log_attempt(stored.attempts_log_mut(), at_ms, format!("damaged: {why}"));
        self.trees
            .events
            .insert(seq_key(seq), stored.encode())
            .map_err(|e| JournalError::Unwritable(e.to_string()))?;
        self.shared.count(&stored.summary().source, |c| {
            c.moved(before, Status::Damaged)
        });
        self.leave_queue(stored.summary(), before)
    }

    /// An event whose status was `before` left the queue for good.
    fn leave_queue(&self, summary: &Summary, before: Status) -> Result<(), JournalError> {
        if self.trees.keep_queue {
            self.dequeue(summary.seq, summary.size)
        } else {
            if before == Status::Queued {
                self.shared.unqueued(summary.size);
            }
            Ok(())
        }
    }

    /// Takes `seq` (of `size` bytes) out of the queue, if it is there.
    fn dequeue(&self, seq: u64, size: u64) -> Result<(), JournalError> {
        let removed = self
            .trees
            .queued
            .take(seq_key(seq))
            .map_err(|e| JournalError::Unwritable(e.to_string()))?;
        if removed.is_some() {
            self.shared.unqueued(size);
        }
        Ok(())
    }

    /// Queues events to be forwarded again. With a broker, each event goes back into the
    /// queue under its own seq (published again with the same message id). Embedded, a
    /// copy is appended under a new seq, so that consumers whose cursors are past the
    /// original read it again. Seqs the journal no longer has are skipped.
    fn replay(&mut self, seqs: &[u64], at_ms: u64) -> Result<Vec<Replayed>, JournalError> {
        let unwritable = |e: store::Error| JournalError::Unwritable(e.to_string());
        if self.settings.embedded {
            // Copies read their originals from the log, which may still hold some of
            // them only in this group's buffer.
            self.log
                .writer
                .write()
                .map_err(|e| JournalError::Unwritable(format!("commit log: {e}")))?;
        }
        let mut replayed = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let Some(mut stored) = self.stored(seq)? else {
                continue;
            };
            if self.settings.embedded {
                let copy_content = match &stored {
                    Stored::Inline(record) => record.content(),
                    Stored::Indexed(index) => {
                        match content(&self.log.reader, index) {
                            Ok(Some(content)) => content,
                            // Damaged: nothing to send again.
                            Ok(None) | Err(ReadError::Damaged { .. }) => continue,
                            Err(e) => return Err(JournalError::Unwritable(e.to_string())),
                        }
                    }
                };
                let replays = stored.replays().saturating_add(1);
                let original = stored.summary();
                let copy_seq = self.last_seq + 1;
                let created = Created {
                    summary: Summary {
                        seq: copy_seq,
                        status: Status::Queued,
                        received_at_ms: at_ms,
                        attempts: 0,
                        replay_of: Some(original.replay_of.unwrap_or(seq)),
                        ..original.clone()
                    },
                    content: copy_content,
                    replays,
                    order_ts: None,
                    remembered: false,
                    replay_key: None,
                    deliveries: Vec::new(),
                    derived: None,
                    keys_in_index: false,
                };
                self.log_and_index(&created)?;
                replayed.push(Replayed {
                    seq,
                    queued_as: copy_seq,
                });
                continue;
            }
            let before = stored.summary().status;
            *stored.replays_mut() = stored.replays().saturating_add(1);
            stored.summary_mut().status = Status::Queued;
            log_attempt(stored.attempts_log_mut(), at_ms, "replay requested".into());
            // The record first, then the queue, as in `update`.
            self.trees
                .events
                .insert(seq_key(seq), stored.encode())
                .map_err(unwritable)?;
            if before != Status::Queued {
                self.trees
                    .queued
                    .insert(seq_key(seq), [])
                    .map_err(unwritable)?;
                self.shared.queued(stored.summary().size);
                self.shared.count(&stored.summary().source, |c| {
                    c.moved(before, Status::Queued)
                });
            }
            // The forwarder's cursor is past this seq: send it back.
            self.shared.rewind.fetch_min(seq, Ordering::AcqRel);
            self.shared.rewound.notify_one();
            replayed.push(Replayed {
                seq,
                queued_as: seq,
            });
        }
        Ok(replayed)
    }

    /// Whether an event at `ts` is older than the newest accepted for its order key.
    fn is_stale(&self, source: &str, order_key: &str, ts: i64) -> Result<bool, JournalError> {
        let key = dedup_key(source, order_key);
        let newest = match self.overlay.order(&key) {
            Some(newest) => Some(newest),
            None => self
                .trees
                .order
                .get(key)
                .map_err(|e| JournalError::Unwritable(e.to_string()))?
                .and_then(|v| split_order_value(&v))
                .map(|(ts, _)| ts),
        };
        Ok(newest.is_some_and(|newest| ts < newest))
    }

    /// Lets go of the segments whose events were all compacted while each was still the
    /// one written ([`Self::release`] keeps those), now that the log has moved past them.
    fn release_emptied(&mut self) {
        let current = self.log.writer.position().0;
        let emptied: Vec<u64> = (self.log.live.range(..current))
            .filter(|(_, events)| **events == 0)
            .map(|(segment, _)| *segment)
            .collect();
        for segment in emptied {
            self.unreference(segment);
        }
    }

    /// No event refers to `segment` any more: it goes once the index flusher has made
    /// that durable.
    fn unreference(&mut self, segment: u64) {
        self.log.live.remove(&segment);
        self.shared
            .unreferenced
            .lock()
            .expect("unreferenced lock")
            .push(segment);
    }

    /// One event less refers to `segment`; a closed segment nothing refers to goes once
    /// the index flusher has made that durable.
    fn release(&mut self, segment: u64) {
        let Some(count) = self.log.live.get_mut(&segment) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 && segment < self.log.writer.position().0 {
            self.unreference(segment);
        }
    }

    /// Forgets the event's dedup keys, in the index (see [`index::forget`]) and in memory.
    fn forget(&mut self, stored: &Stored) -> Result<(), JournalError> {
        let summary = stored.summary();
        let removed = index::forget(&self.trees, summary, stored.replay_key())
            .map_err(|e| JournalError::Unwritable(e.to_string()))?;
        let mut prints = self.prints();
        for key in &removed {
            prints.remove(key);
        }
        for key in index::dedup_keys(summary, stored.replay_key()) {
            prints.let_go(&key, summary.seq);
        }
        Ok(())
    }

    /// Before an event inside its dedup window leaves the index, the keys held for it in
    /// memory go into the index: its entry can no longer vouch for them.
    fn keep_keys_in_index(&mut self, stored: &Stored) -> Result<(), JournalError> {
        let summary = stored.summary();
        let value = dedup_value(summary.seq, summary.received_at_ms);
        for key in index::dedup_keys(summary, stored.replay_key()) {
            if self.prints().let_go(&key, summary.seq) {
                self.trees
                    .dedup
                    .insert(&key, value)
                    .map_err(|e| JournalError::Unwritable(e.to_string()))?;
                self.prints().add(&key);
            }
        }
        Ok(())
    }

    fn compact(&mut self, now_ms: u64) -> Result<bool, JournalError> {
        let unwritable = |e: store::Error| JournalError::Unwritable(e.to_string());
        let retention_cutoff = now_ms.saturating_sub(self.settings.retention.as_millis() as u64);
        let dedup_cutoff = now_ms.saturating_sub(self.settings.dedup_window.as_millis() as u64);
        let mut more = false;
        let deadline = std::time::Instant::now() + COMPACT_STEP;

        // Ids past the dedup window, found by walking the events in seq order (which is
        // receive order) from where the last walk stopped.
        let walked_from = self
            .trees
            .meta
            .get(DEDUP_WALKED)
            .map_err(unwritable)?
            .map_or(0, |v| seq_of(&v));
        let mut walked = walked_from;
        let mut forgotten = 0;
        for item in self.trees.events.range(seq_key(walked_from + 1)..) {
            let (key, bytes) = item.map_err(unwritable)?;
            let seq = seq_of(&key);
            if let Ok(stored) = record::decode_stored(&bytes) {
                if stored.summary().received_at_ms >= dedup_cutoff {
                    break;
                }
                if step_over(forgotten, deadline) {
                    more = true;
                    break;
                }
                self.forget(&stored)?;
                forgotten += 1;
            }
            walked = seq;
        }
        if walked != walked_from {
            self.trees
                .meta
                .insert(DEDUP_WALKED, seq_key(walked))
                .map_err(unwritable)?;
        }

        // Events past retention, walked a chunk at a time from where the last step
        // stopped: events kept past retention (queued, waiting for a broker) are passed
        // over once a walk, never again and again.
        let mut removed = 0;
        let mut looked = 0;
        let from = std::mem::take(&mut self.compact_cursor);
        for item in self.trees.events.range(seq_key(from)..) {
            let (key, bytes) = item.map_err(unwritable)?;
            let Ok(stored) = record::decode_stored(&bytes) else {
                continue;
            };
            let summary = stored.summary();
            if summary.received_at_ms >= retention_cutoff {
                break;
            }
            looked += 1;
            if looked > COMPACT_CHUNK * 4 || step_over(removed, deadline) {
                self.compact_cursor = summary.seq;
                more = true;
                break;
            }
            let keep = (summary.status == Status::Queued && !self.settings.embedded)
                || self.has_open_deliveries(summary.seq)?;
            if !keep {
                // The walk below can no longer find this event: an id still inside its
                // window keeps an entry of its own, written before the event goes.
                let in_window = summary.seq > walked && summary.received_at_ms >= dedup_cutoff;
                if in_window {
                    self.keep_keys_in_index(&stored)?;
                }
                self.trees.events.remove(&key).map_err(unwritable)?;
                self.drop_deliveries(summary.seq)?;
                self.shared
                    .count(&summary.source, |c| c.removed(summary.status));
                if let Stored::Indexed(index) = &stored {
                    self.release(index.content.segment);
                }
                if self.trees.keep_queue {
                    // Queued events are kept: this is an entry a crash left behind.
                    self.dequeue(summary.seq, 0)?;
                } else {
                    // Embedded, the backlog is the events still `queued` (a journal
                    // written before may still have queue entries: they go too).
                    self.trees.queued.remove(&key).map_err(unwritable)?;
                    if summary.status == Status::Queued {
                        self.shared.unqueued(summary.size);
                    }
                }
                // ... and an expiry entry for each of its keys.
                if summary.seq > walked {
                    if !in_window {
                        self.forget(&stored)?;
                    } else {
                        for dedup in index::dedup_keys(summary, stored.replay_key()) {
                            self.trees
                                .dedup_expiry
                                .insert(expiry_key(summary.received_at_ms, &dedup), [])
                                .map_err(unwritable)?;
                        }
                    }
                }
                removed += 1;
            }
        }

        // Ids whose events were compacted inside their window (and every id of a
        // journal written before the commit log), by first-seen time.
        let expired_from = forgotten;
        for item in self
            .trees
            .dedup_expiry
            .range(..dedup_cutoff.to_be_bytes().to_vec())
        {
            let (expiry_key, _) = item.map_err(unwritable)?;
            if forgotten >= COMPACT_CHUNK || step_over(forgotten - expired_from, deadline) {
                more = true;
                break;
            }
            let (first_seen, key) = expiry_key.split_at(8);
            if let Some(v) = self.trees.dedup.get(key).map_err(unwritable)? {
                // A key seen again after it expired has a newer entry: leave that one.
                if split_dedup_value(&v).map(|(_, seen)| seen) == seq_from(first_seen) {
                    self.trees.dedup.remove(key).map_err(unwritable)?;
                    self.prints().remove(key);
                }
            }
            self.trees
                .dedup_expiry
                .remove(&expiry_key)
                .map_err(unwritable)?;
            forgotten += 1;
        }

        // A key's ordering memory lasts a dedup window past its last update (the event
        // timestamps themselves need not be clock times); walked a chunk at a time.
        let start = std::mem::take(&mut self.order_cursor);
        for (walked, item) in self.trees.order.range(start..).enumerate() {
            let (key, value) = item.map_err(unwritable)?;
            if step_over(walked, deadline) {
                self.order_cursor = key.to_vec();
                more = true;
                break;
            }
            // A value too short to read is dropped like an expired one.
            if split_order_value(&value).is_none_or(|(_, updated)| updated < dedup_cutoff) {
                self.trees.order.remove(&key).map_err(unwritable)?;
            }
        }
        if removed + forgotten > 0 {
            tracing::info!(removed, forgotten, "journal compacted");
        }
        Ok(more)
    }
}
