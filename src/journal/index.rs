//! The index in sled and how it follows the commit log: [`apply`] writes what one log
//! entry means to the trees (the committer does it for each append, recovery for each
//! entry the index may have missed); [`flush_in_background`] flushes sled a few times a
//! second and records how far the log is covered; [`recover`] runs at open.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::committer::{dedup_key, dedup_value, expiry_key, order_value};
use super::log::{self, Reader};
use super::record::{self, Created, Index, Loc, Status, Stored, Summary};
use super::{seq_key, seq_of, JournalError, Shared, Trees};

/// The `meta` key under which the index records the log position it covers, as
/// `segment, offset, last seq` (big endian u64s): every log entry before it is in the
/// index, durably.
const COVERED: &[u8] = b"log_covered";
/// The `meta` key holding the last seq whose id the dedup expiry walk has handled.
pub const DEDUP_WALKED: &[u8] = b"dedup_walked";
/// How often the index is flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// A position in the log and the last seq written before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Writes what the log entry `created` at `loc` means: the event's index, and its place
/// in the queue, dedup and ordering. Writing it twice changes nothing.
pub fn apply(trees: &Trees, created: &Created, loc: Loc) -> Result<(), sled::Error> {
    let summary = &created.summary;
    let index = Index {
        summary: summary.clone(),
        content: loc,
        attempts_log: Vec::new(),
        replays: created.replays,
    };
    let key = seq_key(summary.seq);
    // The event goes in before the dedup entry that points at it, so that whatever
    // prefix of these writes survives a crash, a dedup entry never points nowhere.
    trees.events.insert(key, record::encode_index(&index))?;
    if summary.status == Status::Queued && trees.keep_queue {
        trees.queued.insert(key, &[])?;
    }
    apply_rest(trees, created)
}

/// [`apply`] for recovery: an event the index already holds keeps its entry, which may
/// be newer than the log's (delivered, attempts); only what is missing is written.
fn reapply(trees: &Trees, created: &Created, loc: Loc) -> Result<(), sled::Error> {
    let key = seq_key(created.summary.seq);
    match trees.events.get(key)? {
        None => apply(trees, created, loc),
        Some(existing) => {
            let queued = record::decode_summary(&existing)
                .map(|s| s.status == Status::Queued)
                .unwrap_or(false);
            if queued && trees.keep_queue {
                trees.queued.insert(key, &[])?;
            }
            apply_rest(trees, created)
        }
    }
}

/// The ordering and dedup entries of an event.
fn apply_rest(trees: &Trees, created: &Created) -> Result<(), sled::Error> {
    let summary = &created.summary;
    if let (Some(order_key), Some(ts), Status::Queued) =
        (&created.content.order_key, created.order_ts, summary.status)
    {
        trees.order.insert(
            dedup_key(&summary.source, order_key),
            &order_value(ts, summary.received_at_ms),
        )?;
    }
    // Its expiry needs no entry of its own: compaction finds it by walking the events.
    if created.remembered {
        let dedup = dedup_key(&summary.source, &summary.id);
        trees
            .dedup
            .insert(&dedup, &dedup_value(summary.seq, summary.received_at_ms))?;
    }
    Ok(())
}

/// Forgets an event's id, unless the id's entry belongs to another event (a later
/// delivery with the same id); answers whether it did.
pub fn forget(trees: &Trees, summary: &Summary) -> Result<bool, sled::Error> {
    let key = dedup_key(&summary.source, &summary.id);
    let points_here = trees
        .dedup
        .get(&key)?
        .is_some_and(|v| seq_of(&v[..8]) == summary.seq);
    if points_here {
        trees.dedup.remove(&key)?;
    }
    Ok(points_here)
}

/// What recovery found: where the log continues, and what it did.
pub struct Recovered {
    /// The last segment and where its whole entries end; `None` when there is no log.
    pub tail: Option<(u64, u64)>,
    /// The first segment to write when there is no log yet.
    pub next_segment: u64,
    pub replayed: usize,
    pub dropped: usize,
}

/// Brings the index up to the log: writes again every entry after the covered mark,
/// cuts off a torn entry at the end of the last segment, and removes index entries whose
/// log entry never became durable (their appends were never answered).
pub fn recover(trees: &Trees, meta: &sled::Tree, dir: &Path) -> Result<Recovered, JournalError> {
    let io = |e: std::io::Error| JournalError::Unwritable(format!("commit log: {e}"));
    let unwritable = |e: sled::Error| JournalError::Unwritable(e.to_string());
    let covered = meta
        .get(COVERED)
        .map_err(unwritable)?
        .and_then(|v| Mark::decode(&v));
    let mut segments = log::segments(dir).map_err(io)?;
    // A segment created ahead of need and never written: not part of the log.
    while let Some(&last) = segments.last() {
        let path = log::segment_path(dir, last);
        if segments.len() > 1 && std::fs::metadata(&path).map_err(io)?.len() == 0 {
            std::fs::remove_file(&path).map_err(io)?;
            segments.pop();
        } else {
            break;
        }
    }
    let mut last_seq = covered.map_or(0, |m| m.last_seq);
    // Seqs in the log are consecutive; the first one missing ends the log.
    let mut expected = covered.map(|m| m.last_seq + 1);
    let mut tail = None;
    let mut replayed = 0;
    // Where the log's whole, consecutive entries end, when something else follows.
    let mut cut = None;
    'segments: for &segment in &segments {
        let from = match covered {
            Some(m) if segment < m.segment => continue,
            Some(m) if segment == m.segment => m.offset,
            _ => 0,
        };
        let mut scanned = log::scan(dir, segment, from).map_err(io)?;
        if from > scanned.len {
            // The mark claims more than the segment holds: read all of it again.
            scanned = log::scan(dir, segment, 0).map_err(io)?;
        }
        for (loc, bytes) in &scanned.entries {
            let created = match record::decode_created(bytes) {
                Ok(created) => created,
                Err(_) => {
                    cut = Some((segment, loc.offset));
                    break 'segments;
                }
            };
            let seq = created.summary.seq;
            if expected.is_some_and(|e| seq > e) {
                cut = Some((segment, loc.offset));
                break 'segments;
            }
            reapply(trees, &created, *loc).map_err(unwritable)?;
            last_seq = last_seq.max(seq);
            expected = Some(expected.map_or(seq + 1, |e| e.max(seq + 1)));
            replayed += 1;
        }
        // What was read is made durable before the index may claim it.
        File::open(log::segment_path(dir, segment))
            .and_then(|f| f.sync_data())
            .map_err(io)?;
        if scanned.end < scanned.len {
            cut = Some((segment, scanned.end));
            break;
        }
        tail = Some((segment, scanned.end));
    }
    if let Some((segment, offset)) = cut {
        // Nothing after the first torn, damaged or missing entry was ever answered:
        // each group is answered only after every segment it wrote was synced.
        let later: Vec<u64> = segments.iter().copied().filter(|s| *s > segment).collect();
        tracing::warn!(
            segment,
            offset,
            later_segments = later.len(),
            "cutting the commit log after its last whole entry (a write interrupted by a crash)"
        );
        for later in later {
            std::fs::remove_file(log::segment_path(dir, later)).map_err(io)?;
        }
        tail = Some((segment, offset));
    }
    // Index entries past the last durable log entry: their appends were never answered,
    // so nothing may remember them (a provider's retry must be accepted).
    let mut dropped = 0;
    for item in trees.events.range(seq_key(last_seq + 1)..) {
        let (key, bytes) = item.map_err(unwritable)?;
        let Ok(Stored::Indexed(index)) = record::decode_stored(&bytes) else {
            continue;
        };
        let summary = &index.summary;
        trees.events.remove(&key).map_err(unwritable)?;
        trees.queued.remove(&key).map_err(unwritable)?;
        if forget(trees, summary).map_err(unwritable)? {
            let dedup = dedup_key(&summary.source, &summary.id);
            trees
                .dedup_expiry
                .remove(expiry_key(summary.received_at_ms, &dedup))
                .map_err(unwritable)?;
        }
        dropped += 1;
    }
    if dropped > 0 {
        // Their seqs will be used again: the dedup walk must see them.
        let walked = meta
            .get(DEDUP_WALKED)
            .map_err(unwritable)?
            .map_or(0, |v| seq_of(&v));
        if walked > last_seq {
            meta.insert(DEDUP_WALKED, &seq_key(last_seq))
                .map_err(unwritable)?;
        }
    }
    let next_segment = covered.map_or(1, |m| m.segment + 1);
    Ok(Recovered {
        tail,
        next_segment,
        replayed,
        dropped,
    })
}

/// Records `mark` as covered; it is durable with the next flush.
pub fn cover(meta: &sled::Tree, mark: Mark) -> Result<(), sled::Error> {
    meta.insert(COVERED, &mark.encode()).map(drop)
}

/// Asks the background flusher to stop after one last flush.
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
    fn wait(&self, timeout: Duration) -> bool {
        let stopped = self.stopped.lock().expect("stop lock");
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, timeout, |stopped| !*stopped)
            .expect("stop lock");
        *stopped
    }
}

/// Flushes the index a few times a second, records the log position that flush covers,
/// and then deletes the log segments no event refers to any more.
pub fn flush_in_background(
    db: sled::Db,
    meta: sled::Tree,
    shared: Arc<Shared>,
    reader: Arc<Reader>,
    stop: Arc<Stop>,
) {
    let mut flushed: Option<Mark> = None;
    let mut doomed: BTreeMap<u64, ()> = BTreeMap::new();
    loop {
        let stopping = stop.wait(FLUSH_EVERY);
        // Only a mark the log has synced: the index must never claim more than the log
        // holds.
        let durable = *shared.durable.lock().expect("durable lock");
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
                        match reader.remove(segment) {
                            Ok(()) => tracing::debug!(segment, "commit log segment removed"),
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
