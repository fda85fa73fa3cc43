//! One opening of the journal ([`Core`]): recovery, the committer and index flusher
//! threads it starts, and the reads that go straight to the index and the log.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::deliveries::SubStats;
use super::record::{self, Record, Status, Summary};
use super::store;
use super::subscription::{Delivery, DeliveryStatus};
use super::{
    census, committer, index, log, seq_from, seq_key, seq_of, subscription, Command, JournalError,
    ListFilter, NewEvent, Outcome, Outlets, ReadError, Replayed, Settings, Shared, SourceCounts,
    Trees, MAX_SCAN, QUEUE_DEPTH,
};

/// One opening of the journal: its index, its threads and its log. [`super::Journal`]
/// replaces it with a new one after a write failure.
pub(super) struct Core {
    trees: Trees,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
    index_flusher: Arc<Mutex<Option<JoinHandle<()>>>>,
    stop_index: Arc<index::Stop>,
    reader: Arc<log::Reader>,
    /// The committer's dedup keys (see `fingerprints::Fingerprints`).
    prints: Arc<Mutex<super::fingerprints::Fingerprints>>,
    /// Whether this opening counted from a census (or walked the index).
    #[cfg_attr(not(test), allow(dead_code))]
    counted_from_census: bool,
    /// Until when (unix ms) events may hold replay keys of the earlier form, so a re-post
    /// is looked up under that form too (`verify::replay::earlier_form`); 0: none do.
    earlier_replay_keys_until_ms: u64,
}

impl Core {
    /// Opens the journal at `settings.path`: recovery brings the index up to the commit
    /// log, then the committer and the index flusher start. `outlets.published` is told
    /// the newest durable seq from then on, `outlets.subscriptions` the subscriptions.
    /// With `fresh`, the log goes on in a new segment (after a failed write, the last
    /// one is not written to again).
    pub fn open(
        settings: Arc<Settings>,
        outlets: Outlets,
        fresh: bool,
    ) -> Result<Core, JournalError> {
        let unwritable = |e: store::Error| JournalError::Unwritable(e.to_string());
        let log_dir = settings.path.join("log");
        std::fs::create_dir_all(&log_dir).map_err(|e| {
            JournalError::Unwritable(format!("cannot create {}: {e}", log_dir.display()))
        })?;
        let db =
            store::Db::open(&settings.path, settings.index_cache_bytes).map_err(|e| match e {
                store::OpenError::InUse { pid } => JournalError::InUse { pid },
                e => JournalError::Unwritable(e.to_string()),
            })?;
        let trees = Trees::open(&db, !settings.embedded).map_err(unwritable)?;
        let meta = trees.meta.clone();
        // Read before recovery moves it: a census is good for this mark only.
        let covered = index::covered(&meta).map_err(unwritable)?;
        let census = census::take(&trees).map_err(unwritable)?;
        let recovered = index::recover(&trees, &meta, &log_dir)?;
        if recovered.replayed > 0 || recovered.dropped > 0 || recovered.damaged > 0 {
            tracing::info!(
                replayed = recovered.replayed,
                dropped = recovered.dropped,
                damaged = recovered.damaged,
                "index brought up to the commit log"
            );
        }
        let began = std::time::Instant::now();
        let untouched = recovered.replayed == 0
            && recovered.dropped == 0
            && recovered.damaged == 0
            && !recovered.fresh_segment;
        // The census and the fingerprints saved with it describe the index as the last
        // close left it: both are used, or neither (deleting the saved fingerprints
        // makes the next opening count everything again).
        let census = census.filter(|census| untouched && covered == Some(census.covered));
        let saved = super::fingerprints::Fingerprints::load_saved(
            &fingerprints_path(&settings.path),
            covered.filter(|_| census.is_some()),
        );
        let census = census.filter(|_| saved.is_some());
        let (counts, mut live, unreadable, backlog_bytes, sub_stats, counted_from_census) =
            match census {
                Some(census) => (
                    census.counts,
                    census.live,
                    0,
                    census.queued_bytes,
                    census.sub_stats,
                    true,
                ),
                None => {
                    let (counts, live, unreadable, bytes) = count_events(&trees.events)?;
                    let stats = super::deliveries::count_stats(&trees)?;
                    (counts, live, unreadable, bytes, stats, false)
                }
            };
        let (pending, pending_bytes) = super::deliveries::count_pending(&trees)?;
        tracing::info!(
            from = if counted_from_census {
                "the census of the last close"
            } else {
                "a walk of every event"
            },
            events = counts.values().map(|c| c.total()).sum::<u64>(),
            elapsed_ms = began.elapsed().as_millis() as u64,
            "journal counted"
        );
        let subscriptions = subscription::all_subscriptions(&trees).map_err(unwritable)?;
        complete_the_queue(&trees)?;
        let tail = recovered.tail.unwrap_or((recovered.next_segment, 0));
        let mut writer = log::Writer::open_sized(&log_dir, Some(tail), settings.segment_bytes)
            .map_err(|e| JournalError::Unwritable(format!("commit log: {e}")))?;
        if recovered.fresh_segment || (fresh && tail.1 > 0) {
            writer
                .start_next()
                .map_err(|e| JournalError::Unwritable(format!("commit log: {e}")))?;
        }
        let tail = writer.position();
        tracing::info!(segment = tail.0, offset = tail.1, "commit log continues");
        let reader = Arc::new(log::Reader::new(&log_dir));
        // Segments before the one being written that no event refers to.
        for segment in log::segments(&log_dir)
            .map_err(|e| JournalError::Unwritable(format!("commit log: {e}")))?
        {
            // A record this build cannot read may refer to any segment: delete none.
            if unreadable == 0 && segment < tail.0 && !live.contains_key(&segment) {
                reader
                    .retire(segment, true)
                    .map_err(|e| JournalError::Unwritable(format!("commit log: {e}")))?;
            }
        }
        live.entry(tail.0).or_insert(0);
        // Never a seq again that an event had, even one compacted since: readers follow
        // seqs, and the log tells a reused segment's former entries by their lower seqs.
        let last = trees
            .events
            .last()
            .map_err(unwritable)?
            .map(|(k, _)| seq_of(&k))
            .unwrap_or(0)
            .max(recovered.last_seq);
        let earlier_replay_keys_until_ms =
            earlier_replay_keys_until(&meta, last, settings.dedup_window).map_err(unwritable)?;
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
            backlog: AtomicU64::new(
                pending
                    + if trees.keep_queue {
                        trees.queued.len().map_err(unwritable)? as u64
                    } else {
                        counts.values().map(|c| c.queued).sum()
                    },
            ),
            backlog_bytes: AtomicU64::new(backlog_bytes + pending_bytes),
            healthy: AtomicBool::new(true),
            fault: Mutex::new(None),
            disk_low: Mutex::new(None),
            durable: Mutex::new(Some(index::Mark {
                segment: tail.0,
                offset: tail.1,
                last_seq: last,
            })),
            index: super::indexer::Progress::new(
                index::Mark {
                    segment: tail.0,
                    offset: tail.1,
                    last_seq: last,
                },
                outlets.published.clone(),
            ),
            unreferenced: Mutex::new(Vec::new()),
            rewind: AtomicU64::new(u64::MAX),
            rewound: tokio::sync::Notify::new(),
            counts: Mutex::new(counts),
            sub_stats: Mutex::new(sub_stats),
            // Whatever a worker knew of its pending set is read again.
            sub_rewinds: Mutex::new(subscriptions.iter().map(|s| (s.num, 0)).collect()),
            #[cfg(test)]
            held_cap: super::fingerprints::MAX_HELD.into(),
        });
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        outlets.published.send_replace(last);
        outlets
            .subscriptions
            .send_replace(Arc::new(subscriptions.clone()));
        outlets.rewound.send_modify(|n| *n += 1);
        let began = std::time::Instant::now();
        // A table that was full is built again: the dedup window may hold fewer ids now.
        let prints = match saved {
            Some(prints) if !prints.is_full() => prints,
            _ => {
                let mut prints =
                    super::fingerprints::Fingerprints::load(&trees.dedup).map_err(unwritable)?;
                // The dedup keys are not in the index: the events inside the dedup window
                // hold them (those the expiry walk has passed are forgotten already).
                let walked = trees
                    .meta
                    .get(index::DEDUP_WALKED)
                    .map_err(unwritable)?
                    .map_or(0, |v| seq_of(&v));
                prints
                    .load_held(&trees, walked + 1, super::fingerprints::MAX_HELD)
                    .map_err(unwritable)?;
                prints
            }
        };
        tracing::debug!(
            in_index = prints.len(),
            held = prints.held_count(),
            elapsed_ms = began.elapsed().as_millis() as u64,
            "dedup fingerprints loaded"
        );
        let prints = Arc::new(Mutex::new(prints));
        let committer = committer::Committer::new(
            db.clone(),
            trees.clone(),
            prints.clone(),
            shared.clone(),
            settings.clone(),
            committer::Log {
                writer,
                reader: reader.clone(),
                live,
                unreadable,
            },
            last,
            outlets,
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
        Ok(Core {
            trees,
            shared,
            commands: tx,
            committer: Arc::new(Mutex::new(Some(handle))),
            index_flusher: Arc::new(Mutex::new(Some(index_flusher))),
            stop_index,
            reader,
            prints,
            counted_from_census,
            earlier_replay_keys_until_ms,
        })
    }

    /// Journals an event; answers once the record (or the one it duplicates) is flushed.
    pub fn append(
        self: Arc<Self>,
        event: NewEvent,
        deadline: Option<std::time::Instant>,
    ) -> impl Future<Output = Result<Outcome, JournalError>> + Send + 'static {
        // What can be done before the first wait is done here, so that the future,
        // which every request's own future holds and moves, holds only the boxed event
        // and the answer's end, not the event itself twice (an `async fn` keeps its
        // arguments and their moved copies side by side).
        let ready = match self.fault() {
            Some(fault) => Err(JournalError::Unwritable(fault)),
            None => {
                // Made here, on the caller's task, rather than on the committer: it
                // hashes the body once more, and the committer is one thread for every
                // request.
                let earlier_key = self.earlier_replay_key(&event);
                let (reply, answer) = oneshot::channel();
                let reply = Some(super::watchdog::Reply::new(reply, deadline));
                Ok((Box::new(event), earlier_key, reply, answer))
            }
        };
        async move {
            let (event, earlier_key, reply, answer) = ready?;
            // `reserve` rather than `send`: its future does not hold the command.
            let permit = self
                .commands
                .reserve()
                .await
                .map_err(|_| JournalError::Closed)?;
            permit.send(Command::Append {
                event,
                earlier_key,
                reply,
            });
            answer.await.map_err(|_| JournalError::Closed)?
        }
    }

    /// The dedup key `event`'s replay key had in its earlier form, while events
    /// journaled before this form may still be inside the dedup window: looked up, never
    /// written.
    fn earlier_replay_key(&self, event: &NewEvent) -> Option<Vec<u8>> {
        if event.received_at_ms >= self.earlier_replay_keys_until_ms {
            return None;
        }
        let earlier =
            crate::verify::replay::earlier_form(event.replay_key.as_deref()?, &event.body)?;
        Some(committer::replay_dedup_key(&event.source, &earlier))
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

    /// See [`super::Journal::mark_failed`].
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

    /// Undelivered events from `from` on, oldest first, at most `limit`. A damaged one
    /// is left out (and marked `damaged`): it costs that event only.
    pub fn queued_from(&self, from: u64, limit: usize) -> Result<Vec<Record>, String> {
        let mut found = Vec::new();
        for item in self.trees.queued.range(seq_key(from)..).take(limit) {
            let (key, _) = item.map_err(|e| e.to_string())?;
            match self.get(seq_of(&key)) {
                Ok(Some(record)) => found.push(record),
                Ok(None) | Err(ReadError::Damaged { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(found)
    }

    /// Sends a command and waits for its answer.
    pub async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> Command,
    ) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Waits (briefly) until the index covers every event acknowledged before now.
    pub fn settle(&self) {
        self.shared.index.settle();
    }

    /// An event's summary, from the index alone.
    pub fn summary(&self, seq: u64) -> Option<Summary> {
        self.shared.index.settle();
        let bytes = self.trees.events.get(seq_key(seq)).ok()??;
        record::decode_summary(&bytes).ok()
    }

    /// Per subscription: its deliveries by status.
    pub fn sub_stats(&self, num: u64) -> SubStats {
        self.shared
            .sub_stats
            .lock()
            .expect("sub stats lock")
            .get(&num)
            .copied()
            .unwrap_or_default()
    }

    /// See [`super::Journal::take_delivery_rewind`].
    pub fn take_delivery_rewind(&self, num: u64) -> Option<u64> {
        self.shared
            .sub_rewinds
            .lock()
            .expect("sub rewinds lock")
            .remove(&num)
    }

    /// The pending deliveries of subscription `num` with seqs from `from` to `upto`,
    /// oldest first.
    pub fn pending_deliveries(
        &self,
        num: u64,
        from: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, String> {
        let mut found = Vec::new();
        if from > upto {
            return Ok(found);
        }
        let range = subscription::sub_key(num, from)..=subscription::sub_key(num, upto);
        for item in self.trees.pending.range(range).keys().take(limit) {
            let key = item.map_err(|e| e.to_string())?;
            let Some((_, seq)) = subscription::split_key(&key) else {
                continue;
            };
            if let Some(d) = subscription::get(&self.trees, seq, num).map_err(|e| e.to_string())? {
                found.push(d);
            }
        }
        Ok(found)
    }

    pub fn delivery(&self, seq: u64, num: u64) -> Result<Option<Delivery>, String> {
        subscription::get(&self.trees, seq, num).map_err(|e| e.to_string())
    }

    /// A subscription's deliveries after seq `after`, oldest first, those with `status`
    /// only if given; and the cursor to continue from.
    pub fn deliveries_of(
        &self,
        num: u64,
        status: Option<DeliveryStatus>,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Delivery>, u64), String> {
        self.shared.index.settle();
        let from = subscription::sub_key(num, after.saturating_add(1));
        let to = subscription::sub_key(num, u64::MAX);
        let mut found = Vec::new();
        let mut cursor = after;
        for (looked, item) in self.trees.sub_log.range(from..=to).enumerate() {
            let (key, value) = item.map_err(|e| e.to_string())?;
            let Some((_, seq)) = subscription::split_key(&key) else {
                continue;
            };
            if found.len() >= limit || looked >= MAX_SCAN {
                break;
            }
            cursor = seq;
            let this = value.first().and_then(|b| DeliveryStatus::from_byte(*b));
            if status.is_some() && this != status {
                continue;
            }
            if let Some(d) = subscription::get(&self.trees, seq, num).map_err(|e| e.to_string())? {
                found.push(d);
            }
        }
        Ok((found, cursor))
    }

    /// Every delivery of one event.
    pub fn event_deliveries(&self, seq: u64) -> Result<Vec<Delivery>, String> {
        self.shared.index.settle();
        let range = subscription::delivery_key(seq, 0)..=subscription::delivery_key(seq, u64::MAX);
        let mut found = Vec::new();
        for item in self.trees.deliveries.range(range) {
            let (_, bytes) = item.map_err(|e| e.to_string())?;
            if let Some(d) = subscription::decode(&bytes) {
                found.push(d);
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

    /// Why the journal cannot be written, once a write or a sync failed.
    pub fn fault(&self) -> Option<String> {
        if self.is_healthy() {
            return None;
        }
        Some(
            self.shared
                .fault
                .lock()
                .expect("fault lock")
                .clone()
                .unwrap_or_else(|| "an earlier write failed".into()),
        )
    }

    /// Why new events are refused before the disk is full, if they are.
    pub fn disk_low(&self) -> Option<String> {
        self.shared.disk_low.lock().expect("disk lock").clone()
    }

    /// The log position the last successful sync covered.
    pub fn durable(&self) -> Option<index::Mark> {
        *self.shared.durable.lock().expect("durable lock")
    }

    /// Whether the committer thread is still running (it ends only on close, or by a
    /// bug).
    pub fn committer_alive(&self) -> bool {
        self.committer
            .lock()
            .expect("committer lock")
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    #[cfg(test)]
    pub fn trees(&self) -> &Trees {
        &self.trees
    }

    #[cfg(test)]
    pub fn counted_from_census(&self) -> bool {
        self.counted_from_census
    }

    /// The census the index holds; an open journal has none.
    #[cfg(test)]
    pub fn census_left(&self) -> Option<census::Census> {
        census::take(&self.trees).expect("the index reads")
    }

    #[cfg(test)]
    pub fn hold_index(&self, hold: bool) {
        self.shared.index.hold(hold);
    }

    /// Keeps at most `max` dedup keys in memory from now on.
    #[cfg(test)]
    pub fn limit_held(&self, max: usize) {
        self.shared.held_cap.store(max, Ordering::Release);
    }

    #[cfg(test)]
    pub fn index_progress(&self) -> (u64, u64) {
        (
            self.shared.index.indexed(),
            self.durable().map_or(0, |m| m.last_seq),
        )
    }

    /// Undelivered events' bytes.
    pub fn backlog_bytes(&self) -> u64 {
        self.shared.backlog_bytes.load(Ordering::Acquire)
    }

    /// Undelivered (`queued`) events.
    pub fn backlog(&self) -> u64 {
        self.shared.backlog.load(Ordering::Acquire)
    }

    /// The whole event. Finding its log entry damaged marks it `damaged` (see
    /// [`ReadError::Damaged`]).
    pub fn get(&self, seq: u64) -> Result<Option<Record>, ReadError> {
        self.shared.index.settle();
        let other = |e: String| ReadError::Other { seq, why: e };
        let Some(bytes) = self
            .trees
            .events
            .get(seq_key(seq))
            .map_err(|e| other(e.to_string()))?
        else {
            return Ok(None);
        };
        let stored = record::decode_stored(&bytes).map_err(|e| ReadError::Damaged {
            seq,
            why: format!("its index record: {e}"),
        })?;
        match stored {
            record::Stored::Inline(record) => Ok(Some(record)),
            record::Stored::Indexed(index) => match content(&self.reader, &index) {
                Ok(content) => Ok(content.map(|content| Record::from_parts(index, content))),
                Err(e) => {
                    if let ReadError::Damaged { why, .. } = &e {
                        if index.summary.status != Status::Damaged {
                            // The committer marks it; if its queue is full, the next
                            // read reports it again.
                            let _ = self.commands.try_send(Command::Damaged {
                                seq,
                                why: why.clone(),
                                at_ms: unix_ms_now(),
                            });
                        }
                    }
                    Err(e)
                }
            },
        }
    }

    /// Summaries after `filter.after`, oldest first, and the cursor to continue from.
    pub fn list(&self, filter: &ListFilter) -> Result<(Vec<Summary>, u64), String> {
        self.shared.index.settle();
        let start = filter.after.saturating_add(1);
        let mut end = filter.until.unwrap_or(u64::MAX);
        if let Some(before) = filter.before {
            end = end.min(before.saturating_sub(1));
        }
        // Newest first when paging back; the cursor is then the oldest seq looked at, or
        // `start` once nothing older is left.
        let newest_first = filter.before.is_some();
        let mut cursor = if newest_first { start } else { filter.after };
        if start > end {
            return Ok((Vec::new(), cursor));
        }
        let range = self.trees.events.range(seq_key(start)..=seq_key(end));
        let items: Box<dyn Iterator<Item = store::Result<(store::Bytes, store::Bytes)>>> =
            if newest_first {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
        let mut found = Vec::new();
        let mut exhausted = true;
        for (scanned, item) in items.enumerate() {
            if scanned == MAX_SCAN {
                exhausted = false;
                break;
            }
            let (key, bytes) = item.map_err(|e| e.to_string())?;
            cursor = seq_of(&key);
            let summary =
                record::decode_summary(&bytes).map_err(|e| format!("event {cursor}: {e}"))?;
            let wanted = summary.received_at_ms >= filter.received_from_ms
                && filter.source.as_deref().is_none_or(|s| s == summary.source)
                && filter.id.as_deref().is_none_or(|id| id == summary.id)
                && filter.status.is_none_or(|s| s == summary.status)
                && filter
                    .event_type
                    .as_deref()
                    .is_none_or(|t| Some(t) == summary.event_type.as_deref());
            if wanted {
                found.push(summary);
                if found.len() >= filter.limit {
                    exhausted = false;
                    break;
                }
            }
        }
        if newest_first {
            found.reverse();
            if exhausted {
                cursor = start;
            }
        }
        Ok((found, cursor))
    }

    /// Where the journal keeps an event id for `source`, for tests and tools.
    pub fn remembers(&self, source: &str, id: &str) -> bool {
        self.shared.index.settle();
        let key = committer::dedup_key(source, id);
        if self.trees.dedup.contains_key(&key).unwrap_or(false) {
            return true;
        }
        let seqs = self
            .prints
            .lock()
            .expect("fingerprint table lock")
            .seqs(&key);
        super::fingerprints::owner(&self.trees.events, seqs, &key)
            .is_ok_and(|found| found.is_some())
    }
}

/// The `meta` key present while the `queued` tree holds every queued event.
const QUEUE_COMPLETE: &[u8] = b"queue_complete";

/// With a broker, makes sure the `queued` tree holds every queued event: after embedded
/// mode (which does not keep it), every event still `queued` goes in. Embedded, notes
/// that the tree is no longer kept.
fn complete_the_queue(trees: &Trees) -> Result<(), JournalError> {
    let unwritable = |e: store::Error| JournalError::Unwritable(e.to_string());
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
            && !trees.queued.contains_key(&key).map_err(unwritable)?
        {
            trees.queued.insert(key, []).map_err(unwritable)?;
            added += 1;
        }
    }
    trees.meta.insert(QUEUE_COMPLETE, []).map_err(unwritable)?;
    if added > 0 {
        tracing::info!(added, "queue rebuilt for the forwarder after embedded mode");
    }
    Ok(())
}

/// An indexed event's content from the log, checked to be the event's own; `None` while
/// its group is still being written.
pub(super) fn content(
    reader: &log::Reader,
    index: &record::Index,
) -> Result<Option<record::Content>, ReadError> {
    let seq = index.summary.seq;
    let damaged = |why: String| ReadError::Damaged { seq, why };
    if index.summary.status == Status::Damaged {
        return Err(damaged(format!(
            "its commit log entry (segment {} offset {}) was found damaged",
            index.content.segment, index.content.offset
        )));
    }
    match reader.read(index.content, seq) {
        Ok(Some(bytes)) => match record::decode_created(&bytes) {
            Ok(created) if created.summary.seq == seq => Ok(Some(created.content)),
            Ok(created) => Err(damaged(format!(
                "the commit log entry at segment {} offset {} holds seq {}",
                index.content.segment, index.content.offset, created.summary.seq
            ))),
            Err(e) => Err(damaged(format!(
                "the commit log entry at segment {} offset {}: {e}",
                index.content.segment, index.content.offset
            ))),
        },
        Ok(None) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(damaged(e.to_string())),
        Err(e) => Err(ReadError::Other {
            seq,
            why: e.to_string(),
        }),
    }
}

/// The `meta` key holding when this journal was first opened by a build that writes
/// GitHub's replay keys from the MAC (`mac:`, see `verify::replay`): unix ms, or 0 when
/// it held no events then.
const MAC_REPLAY_KEYS_SINCE: &[u8] = b"mac_replay_keys_since";

/// Until when a re-post is looked up under the earlier form of its replay key too: the
/// end of the dedup window of the last event that may hold that form. Recorded at the
/// first opening by a build with `mac:` keys; a journal that held no events then has no
/// earlier keys (0). `last_seq` is the newest seq the journal ever gave.
pub(super) fn earlier_replay_keys_until(
    meta: &store::Tree,
    last_seq: u64,
    window: std::time::Duration,
) -> Result<u64, store::Error> {
    let since = match meta.get(MAC_REPLAY_KEYS_SINCE)?.and_then(|v| seq_from(&v)) {
        Some(since) => since,
        None => {
            let since = if last_seq > 0 { unix_ms_now() } else { 0 };
            // Durable with the flush that follows recovery; an opening that crashes
            // before it records a later time, which only widens the window.
            meta.insert(MAC_REPLAY_KEYS_SINCE, since.to_be_bytes())?;
            since
        }
    };
    Ok(match since {
        0 => 0,
        since => since.saturating_add(window.as_millis() as u64),
    })
}

/// Forgets when `mac:` replay keys began, as if the journal had been written by a build
/// before them; the next opening records it again.
#[cfg(test)]
pub(super) fn forget_mac_replay_keys_since(meta: &store::Tree) {
    meta.remove(MAC_REPLAY_KEYS_SINCE).expect("meta written");
}

fn unix_ms_now() -> u64 {
    crate::unix_ms(std::time::SystemTime::now())
}

/// Events by log segment.
pub(super) type Live = BTreeMap<u64, u64>;

/// What [`count_events`] found: counts by source and status, events by log segment,
/// records it could not read, and the bytes of queued events.
pub(super) type Counted = (BTreeMap<String, SourceCounts>, Live, usize, u64);

/// Counts the events of each source by status, and of each log segment; the records it
/// could not read; and the queued events' bytes.
pub(super) fn count_events(events: &store::Tree) -> Result<Counted, JournalError> {
    let mut counts: BTreeMap<String, SourceCounts> = BTreeMap::new();
    let mut live = Live::new();
    let mut unreadable = 0;
    let mut queued_bytes = 0;
    for item in events.iter() {
        let (key, bytes) = item.map_err(|e| JournalError::Unwritable(e.to_string()))?;
        match record::decode_stored(&bytes) {
            Ok(stored) => {
                if let record::Stored::Indexed(index) = &stored {
                    *live.entry(index.content.segment).or_default() += 1;
                }
                let s = stored.summary();
                if s.status == Status::Queued {
                    queued_bytes += s.size;
                }
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
    Ok((counts, live, unreadable, queued_bytes))
}

/// Where a clean close saves the dedup fingerprint table for the next opening.
pub(super) fn fingerprints_path(dir: &Path) -> PathBuf {
    dir.join("fingerprints")
}
