//! The indexer: the second thread of group commit. The committer decides dedup and
//! ordering from the index, its table of dedup keys (`fingerprints`) and what it has
//! handed here and not yet seen applied (its [`Overlay`]), writes the log, and hands each
//! accepted event to this thread, which writes it into the index behind the log while the
//! committer syncs and answers. So the index is off the path of an `accepted`: the answer
//! waits for the log's sync, never for the index.
//!
//! Readers see an event once it is both synced and indexed (the `published` seq is the
//! smaller of the two), and [`Progress::settle`] lets a reader that starts after an
//! answer see what that answer acknowledged. The index's covered mark never passes what
//! this thread applied, so a crash at any point replays the rest from the log at open.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::index::{self, Mark};
use super::record::{Created, Loc, Status};
use super::{committer::dedup_key, Shared, Trees};

/// What the committer hands the indexer.
pub(super) enum Work {
    /// Events written to the log, in seq order, to write into the index.
    Apply(Vec<(Created, Loc)>),
    /// Everything handed over before this lies before `Mark` in the log.
    Mark(Mark),
}

/// How far the index follows the log.
pub(super) struct Progress {
    /// The newest seq written into the index.
    seq: AtomicU64,
    /// The newest seq the flusher synced.
    synced: AtomicU64,
    state: Mutex<State>,
    moved: Condvar,
    /// The seq readers are told of: the newest both synced and indexed.
    published: watch::Sender<u64>,
    /// Tests hold the indexer to see what the journal does while the index lags.
    #[cfg(test)]
    held: Mutex<bool>,
    #[cfg(test)]
    released: Condvar,
}

#[derive(Default)]
struct State {
    /// The newest mark whose events are all in the index.
    mark: Option<Mark>,
    /// Why the index stopped following the log: an index write failed.
    failed: Option<String>,
    /// How many threads wait in [`Progress::wait_for`]: the indexer wakes them only if
    /// there are any (a wake is a system call even when nobody waits).
    waiting: usize,
}

impl Progress {
    /// At open, the index covers the log up to `mark`.
    pub(super) fn new(mark: Mark, published: watch::Sender<u64>) -> Progress {
        Progress {
            seq: AtomicU64::new(mark.last_seq),
            synced: AtomicU64::new(mark.last_seq),
            state: Mutex::new(State {
                mark: Some(mark),
                failed: None,
                waiting: 0,
            }),
            moved: Condvar::new(),
            published,
            #[cfg(test)]
            held: Mutex::new(false),
            #[cfg(test)]
            released: Condvar::new(),
        }
    }

    /// Holds the indexer before its next write (`true`) or lets it go on.
    #[cfg(test)]
    pub(super) fn hold(&self, hold: bool) {
        *self.held.lock().expect("hold lock") = hold;
        self.released.notify_all();
    }

    #[cfg(test)]
    fn wait_while_held(&self) {
        let held = self.held.lock().expect("hold lock");
        let _unused = self
            .released
            .wait_while(held, |held| *held)
            .expect("hold lock");
    }

    /// The newest seq written into the index.
    pub(super) fn indexed(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// The newest mark whose events are all in the index.
    pub(super) fn mark(&self) -> Option<Mark> {
        self.state.lock().expect("index progress lock").mark
    }

    /// Events up to `seq` are in the index. Readers are told before anyone waiting
    /// for the indexer goes on, so that what they answer next is readable.
    pub(super) fn indexed_to(&self, seq: u64) {
        let state = self.state.lock().expect("index progress lock");
        self.seq.fetch_max(seq, Ordering::AcqRel);
        self.publish();
        self.wake(&state);
    }

    fn marked(&self, mark: Mark) {
        let mut state = self.state.lock().expect("index progress lock");
        state.mark = Some(mark);
        self.seq.fetch_max(mark.last_seq, Ordering::AcqRel);
        self.publish();
        self.wake(&state);
    }

    fn fail(&self, why: String) {
        let mut state = self.state.lock().expect("index progress lock");
        state.failed.get_or_insert(why);
        self.wake(&state);
    }

    /// Wakes whoever waits in [`Self::wait_for`]; called under the lock that they
    /// count themselves under, so none is missed.
    fn wake(&self, state: &State) {
        if state.waiting > 0 {
            self.moved.notify_all();
        }
    }

    /// The flusher synced the log up to `seq`.
    pub(super) fn synced(&self, seq: u64) {
        self.synced.fetch_max(seq, Ordering::AcqRel);
        self.publish();
    }

    /// Waits until the index holds every event up to `seq`; `Err` says why it never
    /// will (an index write failed), or that `timeout` passed.
    pub(super) fn wait_for(&self, seq: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("index progress lock");
        loop {
            if self.indexed() >= seq {
                return Ok(());
            }
            if let Some(why) = &state.failed {
                return Err(why.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the index is behind the log (at seq {}, waiting for {seq})",
                    self.indexed()
                ));
            }
            state.waiting += 1;
            state = self
                .moved
                .wait_timeout(state, left)
                .expect("index progress lock")
                .0;
            state.waiting -= 1;
        }
    }

    /// Lets a reader see every event acknowledged before it began: waits (briefly; the
    /// index is a group or two behind at most) until the index covers what was synced.
    pub(super) fn settle(&self) {
        let synced = self.synced.load(Ordering::Acquire);
        // The published seq, not the indexed one: `indexed_to` moves the latter before it
        // publishes, and a reader gated on the published seq must not pass in between
        // (`wait_for` looks under the lock both are moved under).
        if *self.published.borrow() < synced {
            let _ = self.wait_for(synced, SETTLE_LIMIT);
        }
    }

    /// Moves the seq readers see to the newest one both synced and indexed.
    fn publish(&self) {
        self.published.send_if_modified(|last| {
            let now = self.indexed().min(self.synced.load(Ordering::Acquire));
            let newer = now > *last;
            if newer {
                *last = now;
            }
            newer
        });
    }
}

/// The longest a reader waits for the index to catch up before reading anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// How much lower than the rest of hookgate the threads that keep the index run (nice
/// levels, added to the process's own). The index is behind the log by design, and what
/// a provider waits for is the log: where CPU is short, the request path and the
/// committer should have it first. At the same priority, each wake of the indexer (about
/// one per group) competed with them for the CPU; a little lower, it runs in their gaps
/// and takes larger batches at a time. With one of two cores kept busy by another
/// process, `compare.sh` went from 15.6-15.8k to 17.2-18.2k req/s with 4-11% less CPU
/// per event; on a quiet machine it changed nothing measurable (BENCHMARKS.md). Ten
/// levels gave more req/s but a p99 3-4 ms longer (likely the committer's overlay of
/// unindexed keys, which grows as the index lags). The committer's bound on that lag
/// (`MAX_UNINDEXED`) still holds, so an indexer that cannot get the CPU it needs slows
/// intake rather than falling ever further behind.
const INDEX_NICENESS: i32 = 5;

/// Lowers the calling thread's priority by [`INDEX_NICENESS`] (Linux's nice values are
/// per thread). Failing to is not an error: the thread just keeps the process's priority.
pub(super) fn lower_priority(thread: &str) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let tid = Some(rustix::thread::gettid());
        let lowered = getpriority_process(tid)
            .and_then(|now| setpriority_process(tid, (now + INDEX_NICENESS).min(19)));
        if let Err(e) = lowered {
            tracing::debug!(thread, error = %e, "cannot lower the thread's priority");
        }
    }
}

/// Writes what the committer hands over into the index, in order, until the committer
/// hangs up.
pub(super) fn run(work: mpsc::Receiver<Work>, trees: Trees, shared: std::sync::Arc<Shared>) {
    lower_priority("journal-indexer");
    let mut failed = false;
    for item in work {
        match item {
            Work::Apply(events) => {
                if failed {
                    continue;
                }
                let Some((last, _)) = events.last() else {
                    continue;
                };
                let last = last.summary.seq;
                #[cfg(test)]
                shared.index.wait_while_held();
                if let Err(e) = events
                    .iter()
                    .try_for_each(|(created, loc)| index::apply(&trees, created, *loc).map(drop))
                {
                    // The log holds these events and the covered mark stays before them:
                    // the next opening writes them again. Until then nothing new is taken.
                    failed = true;
                    shared.fail(format!("an index write failed: {e}"));
                    tracing::error!(error = %e, "index write failed; refusing new events until writes work again");
                    shared.index.fail(e.to_string());
                    continue;
                }
                shared.index.indexed_to(last);
            }
            Work::Mark(mark) => {
                if !failed {
                    shared.index.marked(mark);
                }
            }
        }
    }
}

/// What the committer accepted and the indexer has not yet written: the dedup and order
/// entries a decision must see before the index has them. Each new event hashes its keys
/// here three times (looked up, added, pruned): with foldhash, seeded at random per map
/// as the fingerprint table is, rather than the standard library's SipHash, which cost
/// a thousand instructions an event here.
#[derive(Default)]
pub(super) struct Overlay {
    dedup: HashMap<Vec<u8>, [u8; 16], foldhash::quality::RandomState>,
    /// Order key -> newest timestamp, and the seq of the event that set it.
    order: HashMap<Vec<u8>, (i64, u64), foldhash::quality::RandomState>,
    /// Each event handed over, oldest first, with the keys it put here.
    handed: VecDeque<Handed>,
}

/// An event handed to the indexer: its seq, dedup keys and order key.
type Handed = (u64, Vec<Vec<u8>>, Option<Vec<u8>>);

impl Overlay {
    /// Records what `created` will write to dedup (its `dedup` keys, none if it is not
    /// remembered) and order once indexed (the same entries as `index::apply`).
    pub(super) fn add(&mut self, created: &Created, dedup: Vec<Vec<u8>>) {
        let summary = &created.summary;
        let value = super::committer::dedup_value(summary.seq, summary.received_at_ms);
        for key in &dedup {
            self.dedup.insert(key.clone(), value);
        }
        let mut order = None;
        if let (Some(order_key), Some(ts), Status::Queued) =
            (&created.content.order_key, created.order_ts, summary.status)
        {
            let key = dedup_key(&summary.source, order_key);
            self.order.insert(key.clone(), (ts, summary.seq));
            order = Some(key);
        }
        self.handed.push_back((summary.seq, dedup, order));
    }

    /// A dedup entry not yet in the index: the seq and first-seen time it will hold.
    pub(super) fn dedup(&self, key: &[u8]) -> Option<&[u8; 16]> {
        self.dedup.get(key)
    }

    /// The newest order timestamp for `key` not yet in the index.
    pub(super) fn order(&self, key: &[u8]) -> Option<i64> {
        self.order.get(key).map(|&(ts, _)| ts)
    }

    /// How many events are handed over and not yet known to be indexed.
    pub(super) fn len(&self) -> usize {
        self.handed.len()
    }

    /// The seq of the `n`th oldest event not yet known to be indexed.
    pub(super) fn seq_at(&self, n: usize) -> Option<u64> {
        self.handed.get(n).map(|(seq, _, _)| *seq)
    }

    /// Drops what the index now holds (every event up to `indexed`): the index answers for
    /// those keys from now on. A key a later event set again stays.
    pub(super) fn prune(&mut self, indexed: u64) {
        while let Some((seq, _, _)) = self.handed.front() {
            if *seq > indexed {
                break;
            }
            let Some((seq, dedup, order)) = self.handed.pop_front() else {
                break;
            };
            // One lookup per key: these run for every event the committer takes.
            for key in dedup {
                if let Entry::Occupied(entry) = self.dedup.entry(key) {
                    if entry.get()[..8] == seq.to_be_bytes() {
                        entry.remove();
                    }
                }
            }
            if let Some(key) = order {
                if let Entry::Occupied(entry) = self.order.entry(key) {
                    if entry.get().1 == seq {
                        entry.remove();
                    }
                }
            }
        }
    }
}
