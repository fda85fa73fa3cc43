//! The index in fjall and how it follows the commit log: [`apply`] writes what one log
//! entry means to the trees (the committer does it for each append, recovery for each
//! entry the index may have missed); [`flush_in_background`] flushes the index a few times a
//! second and records how far the log is covered; [`recover`] runs at open.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::committer::{
    dedup_key, dedup_value, expiry_key, order_setter, order_value, replay_dedup_key,
};
use super::log::{self, Found, Reader};
use super::record::{self, Created, Index, Loc, Status, Stored, Summary};
use super::store;
use super::{seq_from, seq_key, seq_of, subscription, JournalError, Shared, Trees};

/// The `meta` key under which the index records the log position it covers, as
/// `segment, offset, last seq` (big endian u64s): every log entry before it is in the
/// index, durably.
const COVERED: &[u8] = b"log_covered";
/// The `meta` key holding the last seq whose id the dedup expiry walk has handled.
pub const DEDUP_WALKED: &[u8] = b"dedup_walked";
/// How often the index is flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// A position in the log and the last seq written before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub segment: u64,
    pub offset: u64,
    pub last_seq: u64,
}

impl Mark {
    fn encode(self) -> [u8; 24] {
        let mut out = [0; 24];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.to_be_bytes());
        out[16..].copy_from_slice(&self.last_seq.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Mark> {
        (bytes.len() == 24).then(|| Mark {
            segment: seq_of(&bytes[..8]),
            offset: seq_of(&bytes[8..16]),
            last_seq: seq_of(&bytes[16..]),
        })
    }
}

/// Writes what the log entry `created` at `loc` means: the event's index, its place in
/// the queue, dedup and ordering, and its deliveries. Writing it twice changes nothing.
/// Answers the deliveries it created.
pub fn apply(
    trees: &Trees,
    created: &Created,
    loc: Loc,
) -> Result<Vec<subscription::Delivery>, store::Error> {
    let summary = &created.summary;
    let index = record::IndexOf {
        summary,
        content: loc,
        attempts_log: &[],
        replays: created.replays,
        replay_key: created.replay_key.as_deref(),
    };
    let key = seq_key(summary.seq);
    // The event goes in before the dedup entry that points at it, so that whatever
    // prefix of these writes survives a crash, a dedup entry never points nowhere.
    trees.events.insert(key, record::encode_index_of(&index))?;
    if summary.status == Status::Queued && trees.keep_queue {
        trees.queued.insert(key, [])?;
    }
    apply_rest(trees, created)?;
    subscription::reapply(trees, created)
}

/// [`apply`] for recovery: an event the index already holds keeps its entry, which may
/// be newer than the log's (delivered, attempts); only what is missing is written.
fn reapply(trees: &Trees, created: &Created, loc: Loc) -> Result<(), store::Error> {
    let key = seq_key(created.summary.seq);
    match trees.events.get(key)? {
        None => apply(trees, created, loc).map(drop),
        Some(existing) => {
            let queued = record::decode_summary(&existing)
                .map(|s| s.status == Status::Queued)
                .unwrap_or(false);
            if queued && trees.keep_queue {
                trees.queued.insert(key, [])?;
            }
            apply_rest(trees, created)?;
            subscription::reapply(trees, created).map(drop)
        }
    }
}

/// The ordering and dedup entries of an event.
fn apply_rest(trees: &Trees, created: &Created) -> Result<(), store::Error> {
    let summary = &created.summary;
    if let (Some(order_key), Some(ts), Status::Queued) =
        (&created.content.order_key, created.order_ts, summary.status)
    {
        trees.order.insert(
            dedup_key(&summary.source, order_key),
            order_value(ts, summary.received_at_ms, summary.seq),
        )?;
    }
    // The committer keeps the dedup keys in memory, and the event's own entry (written
    // above) is what they are found again from after a crash; only once that table is
    // full do they go here. Their expiry needs no entry of its own: compaction finds
    // them by walking the events.
    if created.remembered && created.keys_in_index {
        let value = dedup_value(summary.seq, summary.received_at_ms);
        for key in dedup_keys(summary, created.replay_key.as_deref()) {
            trees.dedup.insert(key, value)?;
        }
    }
    Ok(())
}

/// The dedup keys of an event: its id, and its replay key when it has one (a second key
/// where the signature does not cover the id: see `Scheme::replay_key`).
pub fn dedup_keys(summary: &Summary, replay_key: Option<&str>) -> Vec<Vec<u8>> {
    keys_for(&summary.source, &summary.id, replay_key)
}

/// [`dedup_keys`] of an event of `source` with `id`, before it has a summary.
pub fn keys_for(source: &str, id: &str, replay_key: Option<&str>) -> Vec<Vec<u8>> {
    let mut keys = vec![dedup_key(source, id)];
    if let Some(replay_key) = replay_key {
        keys.push(replay_dedup_key(source, replay_key));
    }
    keys
}

/// Forgets an event's dedup keys, each unless its entry belongs to another event (a
/// later delivery with the same id); answers the keys removed, the id's first.
pub fn forget(
    trees: &Trees,
    summary: &Summary,
    replay_key: Option<&str>,
) -> Result<Vec<Vec<u8>>, store::Error> {
    let mut removed = Vec::new();
    for key in dedup_keys(summary, replay_key) {
        let points_here = trees
            .dedup
            .get(&key)?
            .is_some_and(|v| v.get(..8).map(seq_of) == Some(summary.seq));
        if points_here {
            trees.dedup.remove(&key)?;
            removed.push(key);
        }
    }
    Ok(removed)
}

/// What recovery found: where the log continues, and what it did.
pub struct Recovered {
    /// The last segment and where its whole entries end; `None` when there is no log.
    pub tail: Option<(u64, u64)>,
    /// Whether to continue in a new segment after `tail` rather than in it: its end is
    /// damaged, and the damaged bytes are kept for whoever looks into it.
    pub fresh_segment: bool,
    /// The first segment to write when there is no log yet.
    pub next_segment: u64,
    pub replayed: usize,
    pub dropped: usize,
    /// The highest seq the log or the covered mark holds: seqs go on after it even when
    /// compaction has removed every event up to it.
    pub last_seq: u64,
    /// Events whose log entries were found damaged.
    pub damaged: u64,
}

/// Logs damaged stretches of `segment` found between whole entries, and remembers the
/// first as where the next missing seqs went.
fn report_damage(segment: u64, stretches: &mut Vec<(u64, u64)>, spot: &mut Option<Spot>) {
    for (offset, len) in stretches.drain(..) {
        tracing::error!(
            segment,
            offset,
            bytes = len,
            "damaged bytes in the commit log; reading on from the next whole entry"
        );
        spot.get_or_insert(Spot { segment, offset });
    }
}

/// Where recovery found damaged bytes, while the seqs they held are not yet known.
#[derive(Clone, Copy)]
struct Spot {
    segment: u64,
    offset: u64,
}

/// Brings the index up to the log: writes again every entry after the covered mark,
/// cuts off a torn tail of the newest segment, marks the events of damaged entries
/// `damaged` (each costs its own event only), and removes index entries whose log entry
/// never became durable (their appends were never answered).
pub fn recover(trees: &Trees, meta: &store::Tree, dir: &Path) -> Result<Recovered, JournalError> {
    let io = |e: std::io::Error| JournalError::Unwritable(format!("commit log: {e}"));
    let unwritable = |e: store::Error| JournalError::Unwritable(e.to_string());
    let covered = covered(meta).map_err(unwritable)?;
    let mut segments = log::segments(dir).map_err(io)?;
    // A segment created ahead of need and never written: not part of the log. A new one
    // is empty; a retired one taken for reuse still holds what it held before, entries
    // older than the segment before it.
    while let [.., before, last] = segments[..] {
        let path = log::segment_path(dir, last);
        if std::fs::metadata(&path).map_err(io)?.len() == 0 {
            std::fs::remove_file(&path).map_err(io)?;
        } else if let (Some(first), Some(before)) = (
            log::first_seq(dir, last).map_err(io)?,
            log::first_seq(dir, before).map_err(io)?,
        ) {
            if first >= before {
                break;
            }
            log::retire(dir, last, true).map_err(io)?;
        } else {
            break;
        }
        segments.pop();
    }
    let covered_seq = covered.map_or(0, |m| m.last_seq);
    let mut last_seq = covered_seq;
    // Seqs in the log are consecutive: a seq skipped is an entry that is damaged.
    let mut expected = covered.map(|m| m.last_seq + 1);
    let mut tail = None;
    let mut fresh_segment = false;
    let mut replayed = 0;
    let mut damage = Damage::default();
    // Damaged bytes seen since the last whole entry.
    let mut spot: Option<Spot> = None;
    for (i, &segment) in segments.iter().enumerate() {
        let from = match covered {
            Some(m) if segment < m.segment => continue,
            Some(m) if segment == m.segment => m.offset,
            _ => 0,
        };
        let mut from = from;
        let mut scanned = log::scan(dir, segment, from).map_err(io)?;
        if from > scanned.len {
            // The mark claims more than the segment holds: read all of it again, and
            // learn from it which seqs the log really holds.
            from = 0;
            scanned = log::scan(dir, segment, from).map_err(io)?;
            expected = None;
        }
        // Where the last entry of this life of the segment ends, and damaged bytes after
        // it, reported once a later entry shows they are not the segment's end.
        let mut end = from;
        let mut unreported: Vec<(u64, u64)> = Vec::new();
        // Whether the segment's end is an entry older than the log before it: a retired
        // segment taken for reuse, holding its former entries past the new ones.
        let mut former = false;
        for found in scanned.found {
            let entry = match found {
                Found::Damaged { offset, len } => {
                    unreported.push((offset, len));
                    continue;
                }
                Found::Entry(entry) => entry,
            };
            let created = match record::decode_created(&entry.bytes) {
                Ok(created) if entry.seq.is_none_or(|seq| seq == created.summary.seq) => created,
                // Whole, yet not readable as what it says it is: damaged too.
                _ => {
                    unreported.push((entry.loc.offset, entry.loc.len as u64));
                    continue;
                }
            };
            let seq = created.summary.seq;
            if expected.is_some_and(|e| seq < e) {
                former = true;
                break;
            }
            report_damage(segment, &mut unreported, &mut spot);
            end = entry.loc.offset + log::entry_size(entry.loc.len, entry.seq.is_some());
            if let Some(first_missing) = expected.filter(|e| seq > *e) {
                damage.between(first_missing..seq, spot, created.summary.received_at_ms);
            }
            spot = None;
            reapply(trees, &created, entry.loc).map_err(unwritable)?;
            last_seq = last_seq.max(seq);
            expected = Some(expected.map_or(seq + 1, |e| e.max(seq + 1)));
            replayed += 1;
        }
        // What was read is made durable before the index may claim it.
        File::open(log::segment_path(dir, segment))
            .and_then(|f| f.sync_data())
            .map_err(io)?;
        if !former {
            end = scanned.end;
            report_damage(segment, &mut unreported, &mut spot);
        }
        tail = Some((segment, end));
        // The index covered entries past this point: they were answered, so this is
        // damage, not a write a crash interrupted.
        let covered_past = covered
            .is_some_and(|m| m.segment > segment || (m.segment == segment && m.offset > end));
        // Past a reused segment's new entries: what it held before (the first bytes may
        // be the rest of an entry written over, or a write a crash tore, which no answer
        // covered), not damage. Were an answered entry among them, the seq the next
        // segment starts at would show it missing.
        let clean_end = former && !covered_past;
        if end < scanned.len && !clean_end {
            let newest = i + 1 == segments.len();
            if newest && !covered_past {
                // Nothing after the last whole entry of the newest segment was ever
                // answered: each group is answered only after its writes were synced.
                tracing::warn!(
                    segment,
                    offset = end,
                    bytes = scanned.len - end,
                    "cutting a torn write off the end of the commit log (a crash in the middle of a write)"
                );
            } else {
                spot.get_or_insert(Spot {
                    segment,
                    offset: end,
                });
                if newest {
                    tail = Some((segment, scanned.len));
                    fresh_segment = true;
                }
            }
        }
    }
    // Damage at the very end: the events the index knew of past the last whole entry.
    if let Some(first_missing) = expected.filter(|e| *e <= covered_seq) {
        damage.at_end(first_missing..covered_seq + 1, spot);
    }
    let damaged = damage.mark(trees).map_err(unwritable)?;
    // Index entries past the last durable log entry: their appends were never answered,
    // so nothing may remember them (a provider's retry must be accepted).
    let mut dropped = BTreeMap::new();
    for item in trees.events.range(seq_key(last_seq + 1)..) {
        let (key, bytes) = item.map_err(unwritable)?;
        trees.events.remove(&key).map_err(unwritable)?;
        trees.queued.remove(&key).map_err(unwritable)?;
        subscription::remove_all_of(trees, seq_of(&key)).map_err(unwritable)?;
        let Ok(stored) = record::decode_stored(&bytes) else {
            continue;
        };
        let summary = stored.summary();
        let removed = forget(trees, summary, stored.replay_key()).map_err(unwritable)?;
        if removed.contains(&dedup_key(&summary.source, &summary.id)) {
            for dedup in dedup_keys(summary, stored.replay_key()) {
                trees
                    .dedup_expiry
                    .remove(expiry_key(summary.received_at_ms, &dedup))
                    .map_err(unwritable)?;
            }
        }
        dropped.insert(summary.seq, ());
    }
    if !dropped.is_empty() {
        // Ordering entries those events set are not theirs to keep either.
        for item in trees.order.iter() {
            let (key, value) = item.map_err(unwritable)?;
            if order_setter(&value).is_some_and(|seq| dropped.contains_key(&seq)) {
                trees.order.remove(&key).map_err(unwritable)?;
            }
        }
        // Their seqs will be used again: the dedup walk must see them.
        let walked = meta
            .get(DEDUP_WALKED)
            .map_err(unwritable)?
            .and_then(|v| seq_from(&v));
        if walked.is_some_and(|walked| walked > last_seq) {
            meta.insert(DEDUP_WALKED, seq_key(last_seq))
                .map_err(unwritable)?;
        }
    }
    let next_segment = covered.map_or(1, |m| m.segment + 1);
    Ok(Recovered {
        tail,
        fresh_segment,
        next_segment,
        replayed,
        dropped: dropped.len(),
        last_seq,
        damaged,
    })
}

/// The seqs recovery found damaged, and where.
#[derive(Default)]
struct Damage {
    /// Each run of seqs, where its damaged bytes start (if any were seen: a missing
    /// segment shows none), and the receive time of the entry after it.
    runs: Vec<(std::ops::Range<u64>, Option<Spot>, Option<u64>)>,
}

impl Damage {
    /// A run of damaged seqs between two whole entries: each gets a record, whether the
    /// index held it or not.
    fn between(&mut self, seqs: std::ops::Range<u64>, spot: Option<Spot>, received_after_ms: u64) {
        self.runs.push((seqs, spot, Some(received_after_ms)));
    }

    /// A run at the end of the log: only events the index holds are marked (others were
    /// compacted).
    fn at_end(&mut self, seqs: std::ops::Range<u64>, spot: Option<Spot>) {
        self.runs.push((seqs, spot, None));
    }

    /// Marks each damaged event `damaged` in the index: an event the index holds keeps
    /// its summary (and so its dedup entry); one it never held gets a record with its
    /// seq alone, so that the gap is visible. Answers how many.
    fn mark(self, trees: &Trees) -> Result<u64, store::Error> {
        let mut marked = 0;
        for (seqs, spot, received_after_ms) in self.runs {
            let (segment, offset) = spot.map_or((0, 0), |s| (s.segment, s.offset));
            tracing::error!(
                first_seq = seqs.start,
                last_seq = seqs.end - 1,
                segment,
                offset,
                "commit log entries are damaged; those events are marked damaged and every other event is kept"
            );
            for seq in seqs {
                let key = seq_key(seq);
                let index = match trees.events.get(key)?.map(|b| record::decode_stored(&b)) {
                    Some(Ok(Stored::Indexed(mut index))) => {
                        index.summary.status = Status::Damaged;
                        index
                    }
                    // Whole records in the index do not depend on the log.
                    Some(Ok(Stored::Inline(_))) => continue,
                    Some(Err(_)) | None if received_after_ms.is_none() => continue,
                    Some(Err(_)) | None => Index {
                        summary: Summary {
                            seq,
                            id: String::new(),
                            source: String::new(),
                            event_type: None,
                            status: Status::Damaged,
                            received_at_ms: received_after_ms.unwrap_or(0),
                            attempts: 0,
                            size: 0,
                            replay_of: None,
                        },
                        content: Loc {
                            segment,
                            offset,
                            len: 0,
                        },
                        attempts_log: Vec::new(),
                        replays: 0,
                        replay_key: None,
                    },
                };
                trees.events.insert(key, record::encode_index(&index))?;
                trees.queued.remove(key)?;
                marked += 1;
            }
        }
        Ok(marked)
    }
}

/// The log position the index covers, if it records one.
pub fn covered(meta: &store::Tree) -> Result<Option<Mark>, store::Error> {
    Ok(meta.get(COVERED)?.and_then(|v| Mark::decode(&v)))
}

/// Records `mark` as covered; it is durable with the next flush.
pub fn cover(meta: &store::Tree, mark: Mark) -> Result<(), store::Error> {
    meta.insert(COVERED, mark.encode())
}

/// Asks a background thread that sleeps between rounds to stop: the index's flusher
/// (after one last flush), the journal's watchdog.
#[derive(Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    pub fn stop(&self) {
        *self.stopped.lock().expect("stop lock") = true;
        self.wake.notify_all();
    }

    /// Waits up to `timeout`; answers whether a stop was asked for.
    pub(super) fn wait(&self, timeout: Duration) -> bool {
        let stopped = self.stopped.lock().expect("stop lock");
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, timeout, |stopped| !*stopped)
            .expect("stop lock");
        *stopped
    }

    /// Waits, with no time limit, until a stop is asked for or `done` says so (looked at
    /// first, and again at each [`Stop::wake`]); answers whether a stop was asked for.
    pub(super) fn wait_until(&self, mut done: impl FnMut() -> bool) -> bool {
        let mut stopped = self.stopped.lock().expect("stop lock");
        while !*stopped && !done() {
            stopped = self.wake.wait(stopped).expect("stop lock");
        }
        *stopped
    }

    /// Has a thread in [`Stop::wait_until`] look at its condition again.
    pub(super) fn wake(&self) {
        let _stopped = self.stopped.lock().expect("stop lock");
        self.wake.notify_all();
    }
}

/// Flushes the index a few times a second, records the log position that flush covers,
/// and then deletes the log segments no event refers to any more.
pub fn flush_in_background(
    db: store::Db,
    meta: store::Tree,
    shared: Arc<Shared>,
    reader: Arc<Reader>,
    stop: Arc<Stop>,
) {
    super::indexer::lower_priority("journal-index");
    let mut flushed: Option<Mark> = None;
    let mut doomed: BTreeMap<u64, ()> = BTreeMap::new();
    let mut was_low = false;
    loop {
        let stopping = stop.wait(FLUSH_EVERY);
        // Only a mark the log has synced and the indexer has written up to: the index
        // must never claim more than the log holds, nor than it holds itself.
        let synced = *shared.durable.lock().expect("durable lock");
        let durable = match (synced, shared.index.mark()) {
            (Some(synced), Some(indexed)) => Some(
                if (indexed.segment, indexed.offset) < (synced.segment, synced.offset) {
                    indexed
                } else {
                    synced
                },
            ),
            _ => None,
        };
        // Short of space, retired segments give it back instead of waiting to be
        // written over (while new events are refused, nothing else may change here).
        let low = shared.disk_low.lock().expect("disk lock").is_some();
        if low && !was_low {
            if let Err(e) = log::drop_free(reader.dir()) {
                tracing::warn!(error = %e, "cannot delete retired commit log segments");
            }
        }
        was_low = low;
        doomed.extend(
            std::mem::take(&mut *shared.unreferenced.lock().expect("unreferenced lock"))
                .into_iter()
                .map(|s| (s, ())),
        );
        if durable != flushed || !doomed.is_empty() || stopping {
            if let Some(mark) = durable {
                if let Err(e) = cover(&meta, mark) {
                    tracing::error!(error = %e, "cannot record the commit log position");
                }
            }
            match db.flush() {
                Ok(_) => {
                    flushed = durable;
                    // A segment goes once the removals of its events are durable and the
                    // log has moved on past it.
                    let past = durable.map_or(0, |m| m.segment);
                    let ready: Vec<u64> = doomed.range(..past).map(|(s, _)| *s).collect();
                    for segment in ready {
                        doomed.remove(&segment);
                        match reader.retire(segment, !low) {
                            Ok(()) => tracing::debug!(segment, "commit log segment retired"),
                            Err(e) => {
                                tracing::warn!(segment, error = %e, "cannot remove a commit log segment")
                            }
                        }
                    }
                }
                Err(e) => {
                    // Appends do not wait for this flush (the log holds them), so keep
                    // taking them; the next flush tries again.
                    tracing::error!(error = %e, "index flush failed; the commit log still holds every event");
                }
            }
        }
        if stopping {
            return;
        }
    }
}
