//! Poison events against the real RabbitMQ (issue 14): nothing one event contains stops
//! the events behind it. At the door, a type too long to forward is refused and an
//! oversized header set is capped; behind the door, the real `Forwarder` marks an event
//! it cannot deliver `failed` (whether the message is unfit or the event breaks the
//! link again and again) and goes on with the next, in order; a replay sends it again.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lapin::types::AMQPValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use common::rabbit::{amqp_url, header, Collected, Rabbit, BROKER};
use common::*;
use hookgate::config::{QueueKind, Secret};
use hookgate::forward::amqp::{QueueSpec, Topology};
use hookgate::forward::{BrokerStatus, Forwarder, Node, Settings};
use hookgate::journal::{self, Journal, NewEvent, Record, Status};
use hookgate::metrics::Metrics;
use hookgate::sources::Sources;

const WAIT: Duration = Duration::from_secs(30);

/// `[broker]` with the test's exchange and a classic `queue` bound to `binding`.
fn broker(url: &str, rabbit: &Rabbit, queue: &str, binding: &str) -> String {
    format!(
        r#"
[broker]
url = "{url}"
exchange = "{}"
max_in_flight = 64
retry = {{ initial = "100ms", max = "1s" }}

[[broker.queues]]
name = "{queue}"
bindings = ["{binding}"]
kind = "classic"
"#,
        rabbit.exchange()
    )
}

/// A gateway forwarding to the local RabbitMQ, once `/readyz` says it is connected, and
/// a consumer of `queue` (declared by the gateway).
async fn start_forwarding(
    dir: &std::path::Path,
    rabbit: &Rabbit,
    queue: &str,
    sources: &str,
) -> (hookgate::Running, Collected) {
    let url = amqp_url(BROKER);
    let sources = format!("{}{sources}", broker(&url, rabbit, queue, "github.#"));
    let running = start(dir, "", &sources).await;
    let started = Instant::now();
    while admin_get(&running, "/readyz").await.status != 200 {
        assert!(started.elapsed() < WAIT, "the gateway never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = rabbit.collect(queue).await;
    (running, got)
}

fn message_id(d: &lapin::message::Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// The ids that arrived, each at its first arrival (a redelivery after a broken link
/// may repeat one).
fn first_arrivals(got: &Collected) -> Vec<String> {
    let mut seen = Vec::new();
    for d in got.0.lock().unwrap().iter() {
        let id = message_id(d);
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

/// Waits until every id in `ids` has arrived, then asserts they first arrived in that
/// order.
async fn arrived_in_order(got: &Collected, ids: &[String]) {
    got.wait_for(WAIT, "the events behind the poison one", |d| {
        ids.iter().all(|id| d.iter().any(|m| message_id(m) == *id))
    })
    .await;
    let order: Vec<String> = first_arrivals(got)
        .into_iter()
        .filter(|id| ids.contains(id))
        .collect();
    assert_eq!(order, ids, "per-source order is kept");
}

async fn post_ten(addr: SocketAddr, prefix: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = format!("{prefix}-{i}");
        let reply = post(
            addr,
            "/hooks/github",
            github(
                &id,
                "push",
                "application/json",
                format!("{{\"i\":{i}}}").as_bytes(),
            ),
        )
        .await;
        assert_eq!(reply.json()["status"], "accepted", "{id}");
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_too_long_to_forward_is_refused_and_the_events_behind_it_are_delivered() {
    let rabbit = Rabbit::connect("poison-type").await;
    let queue = rabbit.queue("events");
    let dir = tempfile::tempdir().unwrap();
    let (running, got) = start_forwarding(dir.path(), &rabbit, &queue, GITHUB_SOURCE).await;

    let long_type = "t".repeat(300);
    let reply = post(
        running.ingest_addr,
        "/hooks/github",
        github(
            "long-type",
            &long_type,
            "application/json",
            &delivery_body("long-type"),
        ),
    )
    .await;
    assert_eq!(reply.status, 422, "{:?}", reply.json());
    assert_eq!(
        reply.headers.get("content-type").unwrap(),
        "application/json"
    );
    let body = reply.json();
    assert_eq!(body["error"], "field_too_long");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("event type is 300 bytes") && message.contains("at most 200"),
        "{message}"
    );

    let ids = post_ten(running.ingest_addr, "after-type").await;
    arrived_in_order(&got, &ids).await;
    assert!(!first_arrivals(&got).contains(&"long-type".to_string()));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_set_is_capped_and_the_events_behind_it_are_delivered() {
    let rabbit = Rabbit::connect("poison-headers").await;
    let queue = rabbit.queue("events");
    let dir = tempfile::tempdir().unwrap();
    // 80 headers: more than a message carries (64). (A header set larger than
    // RabbitMQ's frame_max cannot arrive any more: requests' headers are held to 16 KiB,
    // see the README's limits; the byte cap is unit-tested in forward/message.rs.)
    let sources = GITHUB_SOURCE.replace("64KiB", "1MiB");
    let (running, got) = start_forwarding(dir.path(), &rabbit, &queue, &sources).await;

    let (mut headers, body) = github(
        "many-headers",
        "push",
        "application/json",
        &delivery_body("many-headers"),
    );
    for i in 0..80 {
        headers.insert(
            http::HeaderName::from_bytes(format!("x-bulk-{i}").as_bytes()).unwrap(),
            "b".repeat(100).parse().unwrap(),
        );
    }
    let reply = post(running.ingest_addr, "/hooks/github", (headers, body)).await;
    assert_eq!(reply.json()["status"], "accepted");
    let ids = post_ten(running.ingest_addr, "after-headers").await;

    let mut all = vec!["many-headers".to_string()];
    all.extend(ids.iter().cloned());
    arrived_in_order(&got, &all).await;
    let (forwarded, bytes, dropped) = {
        let deliveries = got.0.lock().unwrap();
        let big = deliveries
            .iter()
            .find(|d| message_id(d) == "many-headers")
            .unwrap();
        let table = big.properties.headers().as_ref().unwrap().inner();
        let bulk: Vec<usize> = table
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("http_x-bulk-"))
            .map(|(k, v)| match v {
                AMQPValue::LongString(s) => k.as_str().len() + s.as_bytes().len(),
                _ => panic!("a text header"),
            })
            .collect();
        let dropped = header(big, "hookgate_headers_dropped").cloned();
        (bulk.len(), bulk.iter().sum::<usize>(), dropped)
    };
    assert!(forwarded > 0 && forwarded < 80, "{forwarded} forwarded");
    assert!(bytes <= 32 * 1024, "{bytes} bytes of headers forwarded");
    assert_eq!(
        dropped,
        Some(AMQPValue::LongUInt(80 - forwarded as u32)),
        "the message says how many were left out"
    );
    running.stop().await;
}

/// A real journal and a real forwarder to the local RabbitMQ (through `urls`, the
/// nodes of `broker.url`), with a classic queue for source `s`.
struct Outbox {
    journal: Journal,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    got: Collected,
    _dir: tempfile::TempDir,
}

async fn outbox(rabbit: &Rabbit, urls: &[String], events: Vec<NewEvent>) -> (Outbox, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(journal::Settings {
        dedup_window: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        max_backlog: 1000,
        ..journal_settings(&dir.path().join("journal"), false)
    })
    .unwrap();
    let mut seqs = Vec::new();
    for event in events {
        match journal.append(event).await.unwrap() {
            journal::Outcome::Accepted(seq) => seqs.push(seq),
            other => panic!("{other:?}"),
        }
    }
    let queue = rabbit.queue("events");
    let metrics = Arc::new(Metrics::new(["s"], None));
    let nodes: Vec<Node> = urls
        .iter()
        .map(|url| Node::parse(&Secret::new(url.as_str())).unwrap())
        .collect();
    let forwarder = Forwarder {
        journal: journal.clone(),
        settings: Settings {
            nodes: nodes.clone(),
            topology: Topology {
                exchange: rabbit.exchange(),
                queues: vec![QueueSpec {
                    name: queue.clone(),
                    bindings: vec!["s.#".into()],
                    kind: QueueKind::Classic,
                }],
            },
            max_in_flight: 64,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(500),
        },
        // No source configured: the default routing key `{source}.{type}`.
        sources: Sources::default(),
        status: Arc::new(BrokerStatus::new(&nodes)),
        metrics: metrics.clone(),
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(forwarder.run(stopped));
    // Declared as the forwarder declares it (durable, classic), so that the consumer
    // can start whether or not the forwarder has connected yet.
    assert!(rabbit.is_of_kind(&queue, "classic").await);
    let got = rabbit.collect(&queue).await;
    let outbox = Outbox {
        journal,
        metrics,
        stop,
        task,
        got,
        _dir: dir,
    };
    (outbox, seqs)
}

impl Outbox {
    async fn wait_for_status(&self, seq: u64, status: Status) -> Record {
        let started = Instant::now();
        loop {
            let record = self.journal.get(seq).unwrap().unwrap();
            if record.summary.status == status {
                return record;
            }
            assert!(
                started.elapsed() < WAIT,
                "event {seq} is {:?}, not {status:?}: {:?}",
                record.summary.status,
                record.attempts_log
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the journal's backlog is `want`: a message reaches the consumer
    /// before its confirm reaches hookgate, and only the confirm takes it off the backlog.
    async fn wait_for_backlog(&self, want: u64) {
        let started = Instant::now();
        while self.journal.backlog() != want {
            assert!(
                started.elapsed() < WAIT,
                "the backlog is {}, not {want}",
                self.journal.backlog()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn poison_count(&self) -> String {
        let text = self.metrics.render(&self.journal);
        text.lines()
            .find(|l| l.starts_with("hookgate_forward_errors_total") && l.contains("poison"))
            .unwrap_or_default()
            .to_string()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.journal.close().await;
    }
}

fn event(id: &str, event_type: &str, body: &str) -> NewEvent {
    NewEvent {
        source: "s".into(),
        id: id.into(),
        event_type: Some(event_type.into()),
        received_at_ms: hookgate::unix_ms(SystemTime::now()),
        event_ts: None,
        order: None,
        content_type: "application/json".into(),
        headers: vec![("x-kept".into(), "yes".into())].into(),
        client_identity: None,
        body: Bytes::from(body.to_string()),
        normalised: None,
        replay_key: None,
    }
}

/// Three events, the poison one, then ten: the ids of the ten.
fn around(poison: NewEvent) -> (Vec<NewEvent>, Vec<String>) {
    let mut events: Vec<NewEvent> = (0..3)
        .map(|i| event(&format!("before-{i}"), "push", "{}"))
        .collect();
    events.push(poison);
    let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    events.extend(after.iter().map(|id| event(id, "push", "{}")));
    (events, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_fails_an_unfit_event_and_goes_on() {
    let rabbit = Rabbit::connect("poison-unfit").await;
    // Past admission's bounds: as an older build, or another writer, may have journaled.
    let (events, after) = around(event("unfit", &"t".repeat(300), "{}"));
    let (outbox, seqs) = outbox(&rabbit, &[amqp_url(BROKER)], events).await;
    let poison = seqs[3];

    let record = outbox.wait_for_status(poison, Status::Failed).await;
    let reason = &record.attempts_log.last().unwrap().outcome;
    assert!(
        reason.starts_with("poison: its routing key is 302 bytes long and AMQP allows at most 255"),
        "{reason}"
    );
    arrived_in_order(&outbox.got, &after).await;
    assert!(
        outbox.poison_count().ends_with(" 1"),
        "{}",
        outbox.poison_count()
    );
    assert_eq!(outbox.journal.counts()["s"].failed, 1);
    outbox.wait_for_backlog(0).await;

    // A replay queues it again; it is still unfit, so it fails again, and says so.
    let replayed = outbox
        .journal
        .replay(vec![poison], hookgate::unix_ms(SystemTime::now()))
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    let started = Instant::now();
    let record = loop {
        let record = outbox.wait_for_status(poison, Status::Failed).await;
        if record.attempts_log.len() >= 3 {
            break record;
        }
        assert!(started.elapsed() < WAIT, "{:?}", record.attempts_log);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let outcomes: Vec<&str> = record
        .attempts_log
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes[1], "replay requested");
    assert!(outcomes[2].starts_with("poison: "), "{outcomes:?}");
    assert!(!first_arrivals(&outbox.got).contains(&"unfit".to_string()));
    outbox.stop().await;
}

/// A TCP proxy to the broker that, while armed, cuts every connection whose client
/// sends `marker`: what a broker does with a frame it refuses (it closes the
/// connection), for a message hookgate cannot tell is unfit.
struct Tripwire {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
}

impl Tripwire {
    async fn start(marker: &'static [u8]) -> Tripwire {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(true));
        let cuts = Arc::new(AtomicU64::new(0));
        let (armed_, cuts_) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (armed, cuts) = (armed_.clone(), cuts_.clone());
                tokio::spawn(async move {
                    let Ok(broker) = TcpStream::connect(BROKER).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_broker, mut to_broker) = broker.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        // The marker may straddle two reads.
                        let mut window = std::mem::take(&mut tail);
                        window.extend_from_slice(&buf[..n]);
                        if armed.load(Ordering::Acquire)
                            && window.windows(marker.len()).any(|w| w == marker)
                        {
                            cuts.fetch_add(1, Ordering::AcqRel);
                            break;
                        }
                        if to_broker.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        tail = window[window.len().saturating_sub(marker.len())..].to_vec();
                    }
                    back.abort();
                });
            }
        });
        Tripwire { addr, armed, cuts }
    }

    fn url(&self) -> String {
        amqp_url(&self.addr.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_breaks_the_link_three_times_is_failed_and_the_rest_go_on() {
    const MARKER: &[u8] = b"BREAKS-THE-LINK-7f3a";
    let rabbit = Rabbit::connect("poison-link").await;
    let tripwire = Tripwire::start(MARKER).await;
    let body = format!(
        "{{\"marker\":\"{}\"}}",
        std::str::from_utf8(MARKER).unwrap()
    );
    let (events, after) = around(event("breaker", "push", &body));
    let (outbox, seqs) = outbox(&rabbit, &[tripwire.url()], events).await;
    let poison = seqs[3];

    let record = outbox.wait_for_status(poison, Status::Failed).await;
    let reason = &record.attempts_log.last().unwrap().outcome;
    assert!(
        reason.starts_with(
            "poison: the broker link broke right after this event was published, 3 times in a row"
        ),
        "{reason}"
    );
    assert!(tripwire.cuts.load(Ordering::Acquire) >= 3);
    let mut all: Vec<String> = (0..3).map(|i| format!("before-{i}")).collect();
    all.extend(after.iter().cloned());
    arrived_in_order(&outbox.got, &all).await;
    assert!(
        outbox.poison_count().ends_with(" 1"),
        "{}",
        outbox.poison_count()
    );
    for seq in seqs.iter().filter(|s| **s != poison) {
        outbox.wait_for_status(*seq, Status::Delivered).await;
    }

    // The operator fixes the cause, then replays it: it is delivered.
    tripwire.armed.store(false, Ordering::Release);
    outbox
        .journal
        .replay(vec![poison], hookgate::unix_ms(SystemTime::now()))
        .await
        .unwrap();
    outbox.wait_for_status(poison, Status::Delivered).await;
    outbox
        .got
        .wait_for(WAIT, "the replayed event", |d| {
            d.iter().any(|m| message_id(m) == "breaker")
        })
        .await;
    outbox.stop().await;
}

/// With a cluster's nodes listed, one of them down: a failed connect to that node says
/// nothing of the breaks on the others, so the poison event is still found (only a
/// round in which no node answers starts the count again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_does_not_hide_a_poison_event() {
    const MARKER: &[u8] = b"BREAKS-THE-LINK-c41d";
    let rabbit = Rabbit::connect("poison-nodes").await;
    let tripwire = Tripwire::start(MARKER).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let body = format!(
        "{{\"marker\":\"{}\"}}",
        std::str::from_utf8(MARKER).unwrap()
    );
    let (events, after) = around(event("breaker", "push", &body));
    let urls = [tripwire.url(), amqp_url(&dead.to_string())];
    let (outbox, seqs) = outbox(&rabbit, &urls, events).await;
    let poison = seqs[3];

    let record = outbox.wait_for_status(poison, Status::Failed).await;
    let reason = &record.attempts_log.last().unwrap().outcome;
    assert!(
        reason.starts_with("poison: the broker link broke right after this event was published"),
        "{reason}"
    );
    let mut all: Vec<String> = (0..3).map(|i| format!("before-{i}")).collect();
    all.extend(after.iter().cloned());
    arrived_in_order(&outbox.got, &all).await;
    outbox.stop().await;
}
