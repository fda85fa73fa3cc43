//! The live stream's one reader of the journal (SPEC §11). A single task, [`feed`],
//! follows the journal's durable seq, reads each new event once, renders it once as a
//! server-sent event, and hands the same bytes to every client through a broadcast
//! channel: a hundred clients cost one journal read per event, not a hundred.
//!
//! A client is a [`Subscription`]. It starts where it asked (`Last-Event-ID`, `after`, or
//! the newest event), and gets every later event exactly once, in seq order:
//!
//! - from the recent-events ring, when its start is still in it;
//! - else from the journal, page by page at its own pace (its own reads), up to the
//!   newest event published when it started, then it joins again (the ring covers what
//!   came meanwhile, or another round of pages does);
//! - then live, from the broadcast channel.
//!
//! Joining takes the lock under which the feed publishes: the ring holds every event in
//! `(floor, published]`, and the channel receiver, made under the same lock, gets every
//! event after `published`. So the seam has neither a gap nor a duplicate (a frame at or
//! before the client's position is skipped).
//!
//! A live client more than [`MAX_BEHIND`] events behind the feed gets
//! [`Item::Overflow`] with the seq to resume after, and its subscription ends: a slow
//! client never holds more than the channel's bounded ring, and never slows the others.
//!
//! [`feed`]: Broadcaster::feed

mod event;
mod subscription;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::journal::{Journal, ListFilter, ReadError};
use crate::listen::stopped;

pub use event::{Event, Filter};
use subscription::State;
pub use subscription::{Item, Subscription};

/// How far behind the feed a live client may fall before it is cut off (SPEC §11).
pub const MAX_BEHIND: usize = 1000;
/// The broadcast channel's ring: more than [`MAX_BEHIND`], so that the lag is noticed
/// by counting before the channel overwrites what the client has not read.
const CHANNEL: usize = 1024;
/// Recent events kept for clients that resume from close behind, by count and by bytes
/// (an event may be up to `max_body` large).
const RING_EVENTS: usize = 1024;
const RING_BYTES: usize = 32 << 20;
/// Events one journal read renders.
const PAGE: usize = 128;
/// How long the feed waits before reading again after a journal error.
const RETRY: Duration = Duration::from_secs(1);

/// The recent events and the feed's position, changed only under the lock.
struct Ring {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// Every published event after `floor` is in `events`.
    floor: u64,
    /// Every event up to here has been published (sent on the channel).
    published: u64,
}

impl Ring {
    /// Moves past every event up to `newest` without publishing them (nobody listens):
    /// the ring starts empty after it.
    fn skip_to(&mut self, newest: u64) {
        if newest > self.published {
            self.events.clear();
            self.bytes = 0;
            self.floor = newest;
            self.published = newest;
        }
    }
}

struct Shared {
    journal: Journal,
    sender: broadcast::Sender<Arc<Event>>,
    ring: Mutex<Ring>,
    /// Subscriptions alive; with none, the feed reads nothing.
    clients: AtomicUsize,
    /// Told when the first client joins: with none, the feed waits for this rather than
    /// waking at every group the journal commits.
    joined: Notify,
    /// Events the feed has read from the journal.
    read: AtomicU64,
    /// Streams open at once.
    slots: Arc<Semaphore>,
}

/// The handle to the live stream: cheap to clone, one per gateway.
#[derive(Clone)]
pub struct Broadcaster {
    shared: Arc<Shared>,
}

impl Broadcaster {
    /// A broadcaster starting at the journal's newest durable event, allowing at most
    /// `max_streams` streams at once. Run [`Broadcaster::feed`] to make it publish.
    pub fn new(journal: Journal, max_streams: usize) -> Broadcaster {
        let newest = *journal.last_seq().borrow();
        let (sender, _) = broadcast::channel(CHANNEL);
        Broadcaster {
            shared: Arc::new(Shared {
                journal,
                sender,
                ring: Mutex::new(Ring {
                    events: VecDeque::new(),
                    bytes: 0,
                    floor: newest,
                    published: newest,
                }),
                clients: AtomicUsize::new(0),
                joined: Notify::new(),
                read: AtomicU64::new(0),
                slots: Arc::new(Semaphore::new(max_streams)),
            }),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.shared
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more stream, or `None` when `max_streams` are open.
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.shared.slots.clone().try_acquire_owned().ok()
    }

    /// The newest seq published to live clients.
    pub fn published(&self) -> u64 {
        self.ring().published
    }

    /// How many events the feed has read from the journal: one per event while anyone
    /// listens, however many do.
    pub fn events_read(&self) -> u64 {
        self.shared.read.load(Ordering::Relaxed)
    }

    /// Follows the journal until `stop`: the only task that reads events for the stream.
    /// While nobody listens it sleeps until a client joins, instead of waking at every
    /// group the journal commits to move past it (a joining client moves the ring past
    /// what came meanwhile, see [`Broadcaster::subscribe`]).
    pub async fn feed(self, mut stop: watch::Receiver<bool>) {
        let journal = self.shared.journal.clone();
        let mut durable = journal.last_seq();
        loop {
            let newest = *durable.borrow_and_update();
            if self.skip_to(newest) {
                tokio::select! {
                    _ = self.shared.joined.notified() => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
            // Published up to here, by this task or by a first client's joining.
            let mut cursor = self.published();
            while cursor < newest && !*stop.borrow() {
                if self.skip_to(newest) {
                    break;
                }
                match read_page(&journal, &Filter::default(), cursor, newest).await {
                    Ok((events, end)) => {
                        let read = events.len() as u64;
                        self.shared.read.fetch_add(read, Ordering::Relaxed);
                        cursor = self.publish(events, end);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, after = cursor, "the live stream cannot read the journal; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY) => {}
                            _ = stopped(&mut stop) => return,
                        }
                    }
                }
            }
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { return },
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// With no client, moves past `newest` without reading; answers whether there was
    /// no client. Under the lock, so that a client joining now sees either this or the
    /// events.
    fn skip_to(&self, newest: u64) -> bool {
        let mut ring = self.ring();
        if self.shared.clients.load(Ordering::Acquire) > 0 {
            return false;
        }
        ring.skip_to(newest);
        true
    }

    /// Puts `events` (read up to `end`) in the ring and on the channel; answers the seq
    /// published up to. Those a first client's joining moved the ring past meanwhile are
    /// not published again.
    fn publish(&self, events: Vec<Arc<Event>>, end: u64) -> u64 {
        let mut ring = self.ring();
        for event in events {
            if event.seq <= ring.published {
                continue;
            }
            ring.bytes += event.text.len();
            ring.events.push_back(event.clone());
            while ring.events.len() > RING_EVENTS || ring.bytes > RING_BYTES {
                let Some(old) = ring.events.pop_front() else {
                    break;
                };
                ring.bytes -= old.text.len();
                ring.floor = old.seq;
            }
            ring.published = event.seq;
            // No receiver is not an error: clients catching up from the journal hold none.
            let _ = self.shared.sender.send(event);
        }
        ring.published = ring.published.max(end);
        ring.published
    }

    /// A client's subscription to the events after `after` (`None`: the newest durable
    /// event now, which the feed may not have published yet) that pass `filter`. A start past the newest durable event (a journal that was
    /// started afresh) is taken as the newest.
    pub fn subscribe(&self, filter: Filter, after: Option<u64>) -> Subscription {
        let durable = *self.shared.journal.last_seq().borrow();
        let mut ring = self.ring();
        let first = self.shared.clients.fetch_add(1, Ordering::AcqRel) == 0;
        if first {
            // The feed has slept since the last client left: what came meanwhile was
            // read by nobody, as the feed itself would have skipped it.
            ring.skip_to(durable);
        }
        let position = after.map_or(durable, |after| after.min(durable));
        let state = join(&ring, &self.shared.sender, position);
        drop(ring);
        if first {
            self.shared.joined.notify_one();
        }
        Subscription::new(self.shared.clone(), filter, position, state)
    }
}

/// Where a client at `position` goes on: the ring's events after it and live, or the
/// journal up to what has been published.
fn join(ring: &Ring, sender: &broadcast::Sender<Arc<Event>>, position: u64) -> State {
    if position < ring.floor {
        return State::Journal {
            until: ring.published,
            page: VecDeque::new(),
            page_end: position,
        };
    }
    let backlog = ring
        .events
        .iter()
        .filter(|e| e.seq > position)
        .cloned()
        .collect();
    State::Live {
        receiver: sender.subscribe(),
        backlog,
    }
}

/// Reads the events in `(after, until]` that pass `filter`, up to a page: the events,
/// and the seq up to which the journal was looked at.
async fn read_page(
    journal: &Journal,
    filter: &Filter,
    after: u64,
    until: u64,
) -> Result<(Vec<Arc<Event>>, u64), String> {
    let journal = journal.clone();
    let listing = ListFilter {
        source: filter.source.clone(),
        event_type: filter.event_type.clone(),
        after,
        until: Some(until),
        limit: PAGE,
        ..ListFilter::default()
    };
    let read = move || {
        let (summaries, end) = journal.list(&listing)?;
        let mut events = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let event = match journal.get(summary.seq) {
                Ok(Some(record)) => Event::render(&record.summary, Some(record.payload())),
                // Compacted since it was listed.
                Ok(None) => continue,
                // Its content is lost; its summary still says what it was.
                Err(ReadError::Damaged { .. }) => Event::render(&summary, None),
                Err(e) => return Err(e.to_string()),
            };
            events.push(Arc::new(event));
        }
        // A range that holds nothing at all is looked at in full.
        let end = if end <= after { until } else { end };
        Ok((events, end))
    };
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| format!("reading the journal failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::journal::{MinFree, NewEvent, Settings};

    fn journal(dir: &std::path::Path) -> Journal {
        Journal::open(Settings {
            path: dir.join("journal"),
            dedup_window: Duration::from_secs(3600),
            retention: Duration::from_secs(3600),
            max_backlog: u64::MAX,
            max_backlog_bytes: None,
            min_free: MinFree::Bytes(0),
            embedded: true,
            stages: None,
            delivery: Default::default(),
            segment_bytes: crate::journal::SEGMENT_BYTES,
            index_cache_bytes: crate::journal::DEFAULT_INDEX_CACHE,
            group_delay: std::time::Duration::ZERO,
        })
        .unwrap()
    }

    async fn append(journal: &Journal, range: std::ops::Range<u64>) {
        for i in range {
            journal
                .append(NewEvent {
                    source: "github".into(),
                    id: format!("e-{i}"),
                    event_type: Some("push".into()),
                    received_at_ms: 1_700_000_000_000,
                    event_ts: None,
                    order: None,
                    content_type: "application/json".into(),
                    headers: Default::default(),
                    client_identity: None,
                    body: Bytes::from(format!("{{\"n\":{i}}}")),
                    normalised: None,
                    replay_key: None,
                })
                .await
                .unwrap();
        }
    }

    async fn take(subscription: &mut Subscription, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(10), subscription.next());
            match next.await.expect("in time").unwrap() {
                Some(Item::Event(event)) => seqs.push(event.seq),
                other => panic!("{other:?}"),
            }
        }
        seqs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_clients_cost_one_read_per_event_and_none_cost_none() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal(dir.path());
        let broadcaster = Broadcaster::new(journal.clone(), 64);
        let (stop, stopped) = watch::channel(false);
        let feed = tokio::spawn(broadcaster.clone().feed(stopped));

        append(&journal, 0..10).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            broadcaster.events_read(),
            0,
            "nobody listens: nothing is read"
        );

        let mut clients: Vec<Subscription> = (0..50)
            .map(|_| broadcaster.subscribe(Filter::default(), None))
            .collect();
        append(&journal, 10..110).await;
        for client in &mut clients {
            assert_eq!(take(client, 100).await, (11..=110).collect::<Vec<_>>());
        }
        assert_eq!(broadcaster.events_read(), 100);

        // A client from before the ring reads its own pages, and the feed reads no more.
        let mut late = broadcaster.subscribe(Filter::default(), Some(0));
        assert_eq!(take(&mut late, 110).await, (1..=110).collect::<Vec<_>>());
        assert_eq!(broadcaster.events_read(), 100);

        stop.send(true).unwrap();
        feed.await.unwrap();
        journal.close().await;
    }
}
