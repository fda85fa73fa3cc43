//! The one thread that writes the journal. It takes every command queued, applies them
//! in order, flushes sled once for the group, and only then answers. Deciding dedup and
//! ordering here, on one thread, is what makes "check then write" atomic.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::flusher::{self, AppendReply, FlushQueue, UpdateReply};
use super::record::{self, Record, Status, Summary};
use super::{
    seq_key, seq_of, Command, JournalError, NewEvent, Outcome, Replayed, Settings, Shared, Trees,
};

/// The most commands applied before one flush; bounds the latency of a group.
const MAX_GROUP: usize = 4096;
/// How many delivery attempts an event's log keeps.
const MAX_ATTEMPTS_LOGGED: usize = 20;
/// The most records one compaction step removes, so that appends are not held up.
const COMPACT_CHUNK: usize = 5_000;

pub(super) struct Committer {
    db: sled::Db,
    trees: Trees,
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    last_seq: u64,
    published: watch::Sender<u64>,
    order_cursor: Vec<u8>,
}

pub(super) fn dedup_key(source: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(source.len() + id.len() + 1);
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

fn dedup_value(seq: u64, first_seen_ms: u64) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(&first_seen_ms.to_be_bytes());
    v
}

fn split_dedup_value(v: &[u8]) -> (u64, u64) {
    (seq_of(&v[..8]), seq_of(&v[8..16]))
}

/// An order entry: the newest timestamp accepted for the key, and when it was set.
fn order_value(ts: i64, updated_ms: u64) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&ts.to_be_bytes());
    v[8..].copy_from_slice(&updated_ms.to_be_bytes());
    v
}

fn split_order_value(v: &[u8]) -> (i64, u64) {
    let ts = i64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]));
    (ts, seq_of(&v[8..16]))
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
    pub(super) fn new(
        db: sled::Db,
        trees: Trees,
        shared: Arc<Shared>,
        settings: Arc<Settings>,
        last_seq: u64,
        published: watch::Sender<u64>,
    ) -> Self {
        Committer {
            db,
            trees,
            shared,
            settings,
            last_seq,
            published,
            order_cursor: Vec::new(),
        }
    }

    /// Applies commands as they come and hands their answers to the flusher thread.
    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let queue = Arc::new(FlushQueue::default());
        let flusher = {
            let (queue, db, shared) = (queue.clone(), self.db.clone(), self.shared.clone());
            let published = self.published.clone();
            std::thread::Builder::new()
                .name("journal-flusher".into())
                .spawn(move || flusher::run(queue, db, shared, published))
                .expect("the flusher thread starts")
        };
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut appends: Vec<AppendReply> = Vec::with_capacity(MAX_GROUP);
        let mut updates: Vec<UpdateReply> = Vec::new();
        let mut closing = false;
        while !closing {
            let Some(first) = commands.blocking_recv() else {
                break;
            };
            group.push(first);
            while group.len() < MAX_GROUP {
                match commands.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            let mut close = None;
            for command in group.drain(..) {
                match command {
                    Command::Append { event, reply } => {
                        let result = self.append(*event);
                        appends.push((reply, result));
                    }
                    Command::Compact { now_ms, reply } => {
                        let result = self.compact(now_ms);
                        updates.push(answer_after_flush(reply, result));
                    }
                    Command::Delivered { seqs, at_ms, reply } => {
                        let result = seqs
                            .iter()
                            .try_for_each(|&seq| self.update(seq, at_ms, None));
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
                        let result = self.update(seq, at_ms, Some(outcome));
                        updates.push(answer_after_flush(reply, result));
                    }
                    Command::Replay { seqs, at_ms, reply } => {
                        let result = self.replay(&seqs, at_ms);
                        updates.push(answer_after_flush(reply, result));
                    }
                    Command::Close { reply } => close = Some(reply),
                }
            }
            closing = close.is_some();
            // Every write above is complete, so the flusher's next flush covers them.
            queue.hand_over(&mut appends, &mut updates, self.last_seq, close);
        }
        if !closing {
            // Every handle is gone without a close: still end with a flush.
            let (last, _) = oneshot::channel();
            queue.hand_over(&mut appends, &mut updates, self.last_seq, Some(last));
        }
        let _ = flusher.join();
        tracing::debug!("journal committer stopped");
    }

    fn append(&mut self, event: NewEvent) -> Result<Outcome, JournalError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(JournalError::Unwritable("an earlier flush failed".into()));
        }
        let unwritable = |e: sled::Error| JournalError::Unwritable(e.to_string());
        let key = dedup_key(&event.source, &event.id);
        let window_ms = self.settings.dedup_window.as_millis() as u64;
        if let Some(found) = self.trees.dedup.get(&key).map_err(unwritable)? {
            let (seq, first_seen) = split_dedup_value(&found);
            if first_seen.saturating_add(window_ms) > event.received_at_ms {
                return Ok(Outcome::Duplicate(seq));
            }
        }
        let stale = match &event.order {
            Some((order_key, ts)) => self.is_stale(&event.source, order_key, *ts)?,
            None => false,
        };
        if !stale && self.shared.backlog.load(Ordering::Acquire) >= self.settings.max_backlog {
            return Err(JournalError::BacklogFull {
                max: self.settings.max_backlog,
            });
        }
        let seq = self.last_seq + 1;
        let status = if stale { Status::Stale } else { Status::Queued };
        let record = Record {
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
            event_ts: event.event_ts,
            order_key: event.order.as_ref().map(|(k, _)| k.clone()),
            content_type: event.content_type,
            headers: event.headers,
            client_identity: event.client_identity,
            body: event.body.to_vec(),
            normalised: event.normalised.map(|b| b.to_vec()),
            attempts_log: Vec::new(),
            replays: 0,
        };
        // The record goes in before the dedup entry that points at it, so that whatever
        // prefix of these writes survives a crash, a dedup entry never points nowhere.
        self.trees
            .events
            .insert(seq_key(seq), record::encode(&record))
            .map_err(unwritable)?;
        if !stale {
            self.trees
                .queued
                .insert(seq_key(seq), &[])
                .map_err(unwritable)?;
            self.shared.backlog.fetch_add(1, Ordering::AcqRel);
        }
        if let Some((order_key, ts)) = &event.order {
            if !stale {
                self.trees
                    .order
                    .insert(
                        dedup_key(&record.summary.source, order_key),
                        &order_value(*ts, event.received_at_ms),
                    )
                    .map_err(unwritable)?;
            }
        }
        self.trees
            .dedup
            .insert(&key, &dedup_value(seq, event.received_at_ms))
            .map_err(unwritable)?;
        let mut expiry = event.received_at_ms.to_be_bytes().to_vec();
        expiry.extend_from_slice(&key);
        self.trees
            .dedup_expiry
            .insert(expiry, &[])
            .map_err(unwritable)?;
        self.last_seq = seq;
        self.shared.count(&record.summary.source, |c| {
            c.add(status, record.summary.received_at_ms)
        });
        Ok(if stale {
            Outcome::Stale(seq)
        } else {
            Outcome::Accepted(seq)
        })
    }

    /// Records a delivery attempt on a queued event: `None` means the broker confirmed
    /// it (now `delivered`, out of the queue), `Some(outcome)` a failure (still queued).
    fn update(
        &mut self,
        seq: u64,
        at_ms: u64,
        failure: Option<String>,
    ) -> Result<(), JournalError> {
        let unwritable = |e: sled::Error| JournalError::Unwritable(e.to_string());
        let Some(bytes) = self.trees.events.get(seq_key(seq)).map_err(unwritable)? else {
            return Ok(());
        };
        let mut record =
            record::decode(&bytes).map_err(|e| JournalError::Unwritable(e.to_string()))?;
        if record.summary.status != Status::Queued {
            return Ok(());
        }
        record.summary.attempts = record.summary.attempts.saturating_add(1);
        let delivered = failure.is_none();
        record.attempts_log.push(record::Attempt {
            at_ms,
            outcome: failure.unwrap_or_else(|| "delivered".into()),
        });
        // The log keeps the first attempt and the latest ones.
        if record.attempts_log.len() > MAX_ATTEMPTS_LOGGED {
            record.attempts_log.remove(1);
        }
        if delivered {
            record.summary.status = Status::Delivered;
            self.shared.count(&record.summary.source, |c| {
                c.moved(Status::Queued, Status::Delivered)
            });
        }
        self.trees
            .events
            .insert(seq_key(seq), record::encode(&record))
            .map_err(unwritable)?;
        if delivered
            && self
                .trees
                .queued
                .remove(seq_key(seq))
                .map_err(unwritable)?
                .is_some()
        {
            self.shared.backlog.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Queues events to be forwarded again. With a broker, each event goes back into the
    /// queue under its own seq (published again with the same message id). Embedded, a
    /// copy is appended under a new seq, so that consumers whose cursors are past the
    /// original read it again. Seqs the journal no longer has are skipped.
    fn replay(&mut self, seqs: &[u64], at_ms: u64) -> Result<Vec<Replayed>, JournalError> {
        let unwritable = |e: sled::Error| JournalError::Unwritable(e.to_string());
        let mut replayed = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let Some(bytes) = self.trees.events.get(seq_key(seq)).map_err(unwritable)? else {
                continue;
            };
            let mut record =
                record::decode(&bytes).map_err(|e| JournalError::Unwritable(e.to_string()))?;
            let before = record.summary.status;
            record.replays = record.replays.saturating_add(1);
            if self.settings.embedded {
                let copy_seq = self.last_seq + 1;
                record.summary.replay_of = Some(record.summary.replay_of.unwrap_or(seq));
                record.summary.seq = copy_seq;
                record.summary.status = Status::Queued;
                record.summary.received_at_ms = at_ms;
                record.summary.attempts = 0;
                record.attempts_log.clear();
                self.trees
                    .events
                    .insert(seq_key(copy_seq), record::encode(&record))
                    .map_err(unwritable)?;
                self.trees
                    .queued
                    .insert(seq_key(copy_seq), &[])
                    .map_err(unwritable)?;
                self.shared.backlog.fetch_add(1, Ordering::AcqRel);
                self.shared
                    .count(&record.summary.source, |c| c.add(Status::Queued, at_ms));
                self.last_seq = copy_seq;
                replayed.push(Replayed {
                    seq,
                    queued_as: copy_seq,
                });
                continue;
            }
            if before != Status::Queued {
                record.summary.status = Status::Queued;
                self.trees
                    .queued
                    .insert(seq_key(seq), &[])
                    .map_err(unwritable)?;
                self.shared.backlog.fetch_add(1, Ordering::AcqRel);
                self.shared
                    .count(&record.summary.source, |c| c.moved(before, Status::Queued));
            }
            record.attempts_log.push(record::Attempt {
                at_ms,
                outcome: "replay requested".into(),
            });
            if record.attempts_log.len() > MAX_ATTEMPTS_LOGGED {
                record.attempts_log.remove(1);
            }
            self.trees
                .events
                .insert(seq_key(seq), record::encode(&record))
                .map_err(unwritable)?;
            // The forwarder's cursor is past this seq: send it back.
            self.shared.rewind.fetch_min(seq, Ordering::AcqRel);
            replayed.push(Replayed {
                seq,
                queued_as: seq,
            });
        }
        Ok(replayed)
    }

    /// Whether an event at `ts` is older than the newest accepted for its order key.
    fn is_stale(&self, source: &str, order_key: &str, ts: i64) -> Result<bool, JournalError> {
        let newest = self
            .trees
            .order
            .get(dedup_key(source, order_key))
            .map_err(|e| JournalError::Unwritable(e.to_string()))?
            .map(|v| split_order_value(&v).0);
        Ok(newest.is_some_and(|newest| ts < newest))
    }

    fn compact(&mut self, now_ms: u64) -> Result<bool, JournalError> {
        let unwritable = |e: sled::Error| JournalError::Unwritable(e.to_string());
        let retention_cutoff = now_ms.saturating_sub(self.settings.retention.as_millis() as u64);
        let dedup_cutoff = now_ms.saturating_sub(self.settings.dedup_window.as_millis() as u64);
        let mut more = false;

        let mut removed = 0;
        let mut looked = 0;
        for item in self.trees.events.iter() {
            let (key, bytes) = item.map_err(unwritable)?;
            let summary = match record::decode_summary(&bytes) {
                Ok(s) => s,
                Err(_) => continue,
            };
            if summary.received_at_ms >= retention_cutoff {
                break;
            }
            looked += 1;
            if looked > COMPACT_CHUNK * 4 || removed >= COMPACT_CHUNK {
                more = true;
                break;
            }
            let keep = summary.status == Status::Queued && !self.settings.embedded;
            if !keep {
                self.trees.events.remove(&key).map_err(unwritable)?;
                self.shared
                    .count(&summary.source, |c| c.removed(summary.status));
                if self
                    .trees
                    .queued
                    .remove(&key)
                    .map_err(unwritable)?
                    .is_some()
                {
                    self.shared.backlog.fetch_sub(1, Ordering::AcqRel);
                }
                removed += 1;
            }
        }

        let mut forgotten = 0;
        for item in self
            .trees
            .dedup_expiry
            .range(..dedup_cutoff.to_be_bytes().to_vec())
        {
            let (expiry_key, _) = item.map_err(unwritable)?;
            if forgotten >= COMPACT_CHUNK {
                more = true;
                break;
            }
            let (first_seen, key) = expiry_key.split_at(8);
            if let Some(v) = self.trees.dedup.get(key).map_err(unwritable)? {
                // A key seen again after it expired has a newer entry: leave that one.
                if split_dedup_value(&v).1 == seq_of(first_seen) {
                    self.trees.dedup.remove(key).map_err(unwritable)?;
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
            if walked >= COMPACT_CHUNK {
                self.order_cursor = key.to_vec();
                more = true;
                break;
            }
            if split_order_value(&value).1 < dedup_cutoff {
                self.trees.order.remove(&key).map_err(unwritable)?;
            }
        }
        if removed + forgotten > 0 {
            tracing::info!(removed, forgotten, "journal compacted");
        }
        Ok(more)
    }
}
