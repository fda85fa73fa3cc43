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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

use super::SummaryView;
use crate::journal::{Journal, ListFilter, ReadError, Summary};
use crate::listen::stopped;

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

/// One journaled event, rendered once as a server-sent event.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub source: String,
    pub event_type: Option<String>,
    /// `id: SEQ`, `event: TYPE`, `data: {summary + payload}` and the blank line.
    pub text: Bytes,
}

#[derive(Serialize)]
struct StreamView<'a> {
    #[serde(flatten)]
    summary: SummaryView<'a>,
    payload: Option<Box<RawValue>>,
}

impl Event {
    /// `payload` is the normalised JSON; `None` (a damaged event) and anything that is
    /// not JSON show as `null`.
    pub fn render(summary: &Summary, payload: Option<&[u8]>) -> Event {
        let view = StreamView {
            summary: SummaryView::from(summary),
            payload: payload.and_then(one_line),
        };
        let data = serde_json::to_string(&view).expect("plain JSON");
        let name = match summary.event_type.as_deref() {
            None | Some("") => "unknown".to_string(),
            // A line break would end the field and let a payload forge SSE fields.
            Some(t) => t.replace(['\r', '\n'], " "),
        };
        let text = format!("id: {}\nevent: {name}\ndata: {data}\n\n", summary.seq);
        Event {
            seq: summary.seq,
            source: summary.source.clone(),
            event_type: summary.event_type.clone(),
            text: Bytes::from(text),
        }
    }
}

/// The payload as JSON on one line. Valid JSON holds no raw line break inside a string,
/// so dropping every CR and LF removes only insignificant whitespace and keeps the rest
/// byte for byte.
fn one_line(payload: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(payload).ok()?;
    let _: &RawValue = serde_json::from_str(text).ok()?;
    let flat: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    RawValue::from_string(flat.trim().to_string()).ok()
}

/// Which events a client wants: by source and by type, exactly (as `GET /v1/events`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub source: Option<String>,
    pub event_type: Option<String>,
}

impl Filter {
    pub fn matches(&self, event: &Event) -> bool {
        self.source.as_deref().is_none_or(|s| s == event.source)
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| Some(t) == event.event_type.as_deref())
    }
}

/// The recent events and the feed's position, changed only under the lock.
struct Ring {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// Every published event after `floor` is in `events`.
    floor: u64,
    /// Every event up to here has been published (sent on the channel).
    published: u64,
}

struct Shared {
    journal: Journal,
    sender: broadcast::Sender<Arc<Event>>,
    ring: Mutex<Ring>,
    /// Subscriptions alive; with none, the feed reads nothing.
    clients: AtomicUsize,
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
    pub async fn feed(self, mut stop: watch::Receiver<bool>) {
        let journal = self.shared.journal.clone();
        let mut durable = journal.last_seq();
        let mut cursor = self.published();
        loop {
            let newest = *durable.borrow_and_update();
            while cursor < newest && !*stop.borrow() {
                if self.skip_to(newest) {
                    cursor = newest;
                    break;
                }
                match read_page(&journal, &Filter::default(), cursor, newest).await {
                    Ok((events, end)) => {
                        let read = events.len() as u64;
                        self.shared.read.fetch_add(read, Ordering::Relaxed);
                        self.publish(events, end);
                        cursor = end;
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

    /// With no client, moves past `newest` without reading; answers whether it did.
    /// Under the lock, so that a client joining now sees either this or the events.
    fn skip_to(&self, newest: u64) -> bool {
        let mut ring = self.ring();
        if self.shared.clients.load(Ordering::Acquire) > 0 {
            return false;
        }
        ring.events.clear();
        ring.bytes = 0;
        ring.floor = newest;
        ring.published = newest;
        true
    }

    fn publish(&self, events: Vec<Arc<Event>>, end: u64) {
        let mut ring = self.ring();
        for event in events {
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
    }

    /// A client's subscription to the events after `after` (`None`: the newest published
    /// now) that pass `filter`. A start past the newest durable event (a journal that was
    /// started afresh) is taken as the newest.
    pub fn subscribe(&self, filter: Filter, after: Option<u64>) -> Subscription {
        let durable = *self.shared.journal.last_seq().borrow();
        let ring = self.ring();
        self.shared.clients.fetch_add(1, Ordering::AcqRel);
        let position = after.map_or(ring.published, |after| after.min(durable));
        let state = join(&ring, &self.shared.sender, position);
        drop(ring);
        Subscription {
            shared: self.shared.clone(),
            filter,
            position,
            state,
        }
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

enum State {
    /// Joining again after reading from the journal.
    Join,
    /// Reading its own pages from the journal, up to `until`.
    Journal {
        until: u64,
        page: VecDeque<Arc<Event>>,
        page_end: u64,
    },
    /// Taking what the feed publishes, after the ring's `backlog`.
    Live {
        receiver: broadcast::Receiver<Arc<Event>>,
        backlog: VecDeque<Arc<Event>>,
    },
    Done,
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Item {
    Event(Arc<Event>),
    /// The client fell more than [`MAX_BEHIND`] events behind: it should come back for
    /// the events after `resume_after`. The subscription has ended.
    Overflow {
        resume_after: u64,
    },
}

/// One client's place in the stream.
pub struct Subscription {
    shared: Arc<Shared>,
    filter: Filter,
    /// Every event up to here has been yielded or did not pass the filter.
    position: u64,
    state: State,
}

impl Subscription {
    /// The seq this subscription has passed: where a client resumes after.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next event that passes the filter, an overflow, or `None` when the stream has
    /// ended (the gateway is stopping). Cancel-safe: nothing changes until a read is done.
    pub async fn next(&mut self) -> Result<Option<Item>, String> {
        loop {
            match &mut self.state {
                State::Done => return Ok(None),
                State::Join => {
                    let ring = self
                        .shared
                        .ring
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    self.state = join(&ring, &self.shared.sender, self.position);
                }
                State::Journal {
                    until,
                    page,
                    page_end,
                } => {
                    if let Some(event) = page.pop_front() {
                        self.position = event.seq;
                        return Ok(Some(Item::Event(event)));
                    }
                    self.position = self.position.max(*page_end);
                    if self.position >= *until {
                        self.state = State::Join;
                        continue;
                    }
                    let until = *until;
                    let (events, end) =
                        read_page(&self.shared.journal, &self.filter, self.position, until).await?;
                    self.state = State::Journal {
                        until,
                        page: events.into(),
                        page_end: end,
                    };
                }
                State::Live { receiver, backlog } => {
                    if receiver.len() > MAX_BEHIND {
                        return Ok(Some(self.overflow()));
                    }
                    let event = match backlog.pop_front() {
                        Some(event) => event,
                        None => match receiver.recv().await {
                            Ok(event) => event,
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                return Ok(Some(self.overflow()))
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                self.state = State::Done;
                                return Ok(None);
                            }
                        },
                    };
                    if event.seq <= self.position {
                        continue;
                    }
                    self.position = event.seq;
                    if self.filter.matches(&event) {
                        return Ok(Some(Item::Event(event)));
                    }
                }
            }
        }
    }

    fn overflow(&mut self) -> Item {
        self.state = State::Done;
        Item::Overflow {
            resume_after: self.position,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{MinFree, NewEvent, Settings, Status};

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
                    headers: vec![],
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
        let quiet = tokio::time::timeout(Duration::from_secs(5), async {
            while broadcaster.published() < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        quiet.await.expect("the feed moves on");
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

    fn summary(seq: u64, event_type: Option<&str>) -> Summary {
        Summary {
            seq,
            id: format!("evt-{seq}"),
            source: "github".into(),
            event_type: event_type.map(str::to_string),
            status: Status::Queued,
            received_at_ms: 1_700_000_000_000,
            attempts: 0,
            size: 12,
            replay_of: None,
        }
    }

    #[test]
    fn an_event_is_one_frame_with_its_payload_on_one_line() {
        let e = Event::render(
            &summary(7, Some("push")),
            Some(b"{\n  \"a\": \"x y\",\r\n  \"b\": [1, 2]\n}\n"),
        );
        let text = std::str::from_utf8(&e.text).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "id: 7");
        assert_eq!(lines[1], "event: push");
        assert_eq!(&lines[3..], ["", ""]);
        let data: serde_json::Value =
            serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["seq"], 7);
        assert_eq!(data["type"], "push");
        assert_eq!(data["status"], "queued");
        assert_eq!(data["received_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(
            data["payload"],
            serde_json::json!({"a": "x y", "b": [1, 2]})
        );
        assert!(lines[2].contains(r#""payload":{  "a": "x y",  "b": [1, 2]}"#));
    }

    #[test]
    fn a_type_cannot_forge_fields_and_no_type_is_unknown() {
        let forged = Event::render(&summary(1, Some("x\ndata: evil\r")), Some(b"{}"));
        let text = std::str::from_utf8(&forged.text).unwrap();
        assert!(
            text.starts_with("id: 1\nevent: x data: evil \ndata: {"),
            "{text}"
        );
        let untyped = Event::render(&summary(2, None), Some(b"[]"));
        assert!(std::str::from_utf8(&untyped.text)
            .unwrap()
            .contains("\nevent: unknown\n"));
        let damaged = Event::render(&summary(3, Some("push")), None);
        assert!(std::str::from_utf8(&damaged.text)
            .unwrap()
            .contains(r#""payload":null"#));
        let not_json = Event::render(&summary(4, Some("push")), Some(b"{\"a\":"));
        assert!(std::str::from_utf8(&not_json.text)
            .unwrap()
            .contains(r#""payload":null"#));
    }

    #[test]
    fn filters_match_source_and_type_exactly() {
        let push = Event::render(&summary(1, Some("push")), Some(b"{}"));
        let all = Filter::default();
        let github_push = Filter {
            source: Some("github".into()),
            event_type: Some("push".into()),
        };
        let stripe = Filter {
            source: Some("stripe".into()),
            event_type: None,
        };
        let issues = Filter {
            source: None,
            event_type: Some("issues".into()),
        };
        assert!(all.matches(&push) && github_push.matches(&push));
        assert!(!stripe.matches(&push) && !issues.matches(&push));
    }
}
