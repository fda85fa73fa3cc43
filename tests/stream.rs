//! The live stream (`GET /v1/stream`, SPEC §11) against a gateway on real sockets:
//! what an event looks like, resuming with `Last-Event-ID`, the overflow of a client that
//! stops reading, a hundred clients at once, filters, a stop, the heartbeat; and
//! `hookgate events tail --forward-to` (the real binary) delivering to a local app that
//! checks the signature with the gateway's own Standard Webhooks verifier, across a
//! restart of the gateway.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{delivery_body, github, post, stripe};
use hookgate::cli::client;
use hookgate::cli::sse::{EventStream, Message, Parser};
use hookgate::config::Config;
use hookgate::journal::{Journal, NewEvent, Outcome};
use hookgate::Running;

const TOKEN: &str = "stream-test-token";
const WAIT: Duration = Duration::from_secs(10);

fn config_text(dir: &Path, ingest: &str, admin: &str) -> String {
    format!(
        r#"
[server]
listen = "{ingest}"
drain_timeout = "3s"

[admin]
listen = "{admin}"
token = "{TOKEN}"

[journal]
path = "{}"
# The machines tests run on may be short of disk; these tests write a few MiB.
min_free = "0"

{}
{}
"#,
        dir.join("journal").display(),
        common::GITHUB_SOURCE,
        common::STRIPE_SOURCE,
    )
}

async fn start_on(dir: &Path, ingest: &str, admin: &str) -> Running {
    let config = Config::parse(&config_text(dir, ingest, admin)).expect("test config is valid");
    hookgate::start(&config).await.expect("gateway starts")
}

async fn start(dir: &Path) -> Running {
    start_on(dir, "127.0.0.1:0", "127.0.0.1:0").await
}

fn auth() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
    );
    headers
}

async fn open(gw: &Running, query: &str, last_event_id: Option<u64>) -> EventStream {
    let mut headers = auth();
    if let Some(id) = last_event_id {
        headers.insert("last-event-id", HeaderValue::from(id));
    }
    let url = format!("http://{}/v1/stream{query}", gw.admin_addr);
    tokio::time::timeout(WAIT, EventStream::open(&url, headers, &Default::default()))
        .await
        .expect("the stream answers in time")
        .expect("the stream opens")
}

/// The stream's first message: `id:` with where it starts.
async fn start_of(stream: &mut EventStream) -> u64 {
    let first = next_message(stream).await.expect("a first message");
    assert!(first.data.is_empty(), "{first:?}");
    first.id.unwrap().parse().unwrap()
}

async fn next_message(stream: &mut EventStream) -> Option<Message> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a message in time")
        .expect("the stream reads")
}

/// The next event: its seq, its SSE event name and its data.
async fn next_event(stream: &mut EventStream) -> (u64, String, Value) {
    let message = next_message(stream).await.expect("an event, not the end");
    let seq = message.id.as_deref().expect("an id").parse().unwrap();
    let data = serde_json::from_str(&message.data).expect("data is JSON");
    (seq, message.event.unwrap_or_default(), data)
}

async fn seqs(stream: &mut EventStream, n: usize) -> Vec<u64> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(next_event(stream).await.0);
    }
    got
}

/// Appends straight to the journal (much faster than signed requests, for volume).
async fn append(journal: &Journal, id: &str, event_type: &str, payload: String) -> u64 {
    let outcome = journal
        .append(NewEvent {
            source: "github".into(),
            id: id.into(),
            event_type: Some(event_type.into()),
            received_at_ms: hookgate::unix_ms(SystemTime::now()),
            event_ts: None,
            order: None,
            content_type: "application/json".into(),
            headers: Default::default(),
            client_identity: None,
            body: Bytes::from(payload),
            normalised: None,
            replay_key: None,
        })
        .await
        .expect("journaled");
    match outcome {
        Outcome::Accepted(seq) => seq,
        other => panic!("{id}: {other:?}"),
    }
}

/// Appends `ids` concurrently, a few at a time (so the journal groups their fsyncs).
async fn append_many(journal: &Journal, ids: std::ops::Range<usize>, padding: usize) {
    use futures_util::StreamExt as _;
    futures_util::stream::iter(ids)
        .map(|i| {
            let payload = json!({"n": i, "pad": "x".repeat(padding)}).to_string();
            let journal = journal.clone();
            async move { append(&journal, &format!("bulk-{i}"), "push", payload).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

async fn send_github(gw: &Running, id: &str, event: &str) -> u64 {
    let r = post(
        gw.ingest_addr,
        "/hooks/github",
        github(id, event, "application/json", &delivery_body(id)),
    )
    .await;
    assert_eq!(r.json()["status"], "accepted", "{:?}", r.body);
    r.json()["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_its_summary_and_payload_as_get_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let before = send_github(&gw, "old-1", "push").await;
    let mut stream = open(&gw, "", None).await;
    assert_eq!(
        start_of(&mut stream).await,
        before,
        "it starts at the newest"
    );

    let seq = send_github(&gw, "live-1", "issues").await;
    let (got, name, data) = next_event(&mut stream).await;
    assert_eq!((got, name.as_str()), (seq, "issues"));
    let mut shown = client::request(
        http::Method::GET,
        &format!("http://{}/v1/events/{seq}", gw.admin_addr),
        auth(),
        Bytes::new(),
    )
    .await
    .unwrap()
    .json();
    let shown = shown.as_object_mut().unwrap();
    for field in ["headers", "content_type", "client_identity", "attempts_log"] {
        shown.remove(field);
    }
    assert_eq!(&data, &Value::Object(shown.clone()));
    assert_eq!(data["payload"], json!({"delivery": "live-1"}));
    assert_eq!(data["source"], "github");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_needs_the_token_and_a_good_query() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let url = |q: &str| format!("http://{}/v1/stream{q}", gw.admin_addr);
    let no_token = client::request(http::Method::GET, &url(""), HeaderMap::new(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    for (query, id) in [
        ("?after=soon", None),
        ("?status=queued", None),
        ("", Some("x")),
    ] {
        let mut headers = auth();
        if let Some(id) = id {
            headers.insert("last-event-id", HeaderValue::from_static(id));
        }
        let r = client::request(http::Method::GET, &url(query), headers, Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query} {id:?}");
        assert_eq!(r.json()["error"], "bad_request");
    }
    // A misspelt source is named, rather than followed for ever.
    let r = client::request(
        http::Method::GET,
        &url("?source=githb"),
        auth(),
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "unknown_source", "{:?}", r.body);
    let r = client::request(http::Method::POST, &url(""), auth(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_last_event_id_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    append_many(&gw.journal, 0..50, 0).await;

    // From the journal (no client was listening while those were written).
    let mut first = open(&gw, "?after=0", None).await;
    assert_eq!(start_of(&mut first).await, 0);
    assert_eq!(seqs(&mut first, 20).await, (1..=20).collect::<Vec<_>>());
    drop(first);

    // A witness keeps the feed reading, so what follows is also in its ring.
    let mut witness = open(&gw, "", None).await;
    start_of(&mut witness).await;
    append_many(&gw.journal, 50..80, 0).await;
    assert_eq!(seqs(&mut witness, 30).await, (51..=80).collect::<Vec<_>>());

    // The header wins over `after`; events 21..=80 come from the journal and the ring.
    let mut resumed = open(&gw, "?after=latest", Some(20)).await;
    assert_eq!(start_of(&mut resumed).await, 20);
    assert_eq!(seqs(&mut resumed, 60).await, (21..=80).collect::<Vec<_>>());
    drop(resumed);

    // From far behind while events keep coming: the seam between the journal, the ring
    // and the live channel neither skips nor repeats one.
    let witness = tokio::spawn(async move { seqs(&mut witness, 1420).await });
    let journal = gw.journal.clone();
    let writer = tokio::spawn(async move { append_many(&journal, 80..1500, 64).await });
    let mut racing = open(&gw, "", Some(10)).await;
    assert_eq!(start_of(&mut racing).await, 10);
    assert_eq!(
        seqs(&mut racing, 1490).await,
        (11..=1500).collect::<Vec<_>>()
    );
    writer.await.unwrap();
    assert_eq!(witness.await.unwrap(), (81..=1500).collect::<Vec<_>>());
    gw.stop().await;
}

/// A raw HTTP/1.1 client with a small receive buffer, to stop reading for a while.
struct RawClient {
    socket: tokio::net::TcpStream,
    raw: Vec<u8>,
}

impl RawClient {
    async fn open(addr: SocketAddr, path: &str, last_event_id: Option<u64>) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut socket = socket.connect(addr).await.unwrap();
        let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n{resume}\r\n"
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawClient {
            socket,
            raw: Vec::new(),
        };
        // The answer's head means the client has joined the stream.
        while !client.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(client.read().await > 0, "the head comes");
        }
        let head = String::from_utf8_lossy(&client.raw).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        client
    }

    async fn read(&mut self) -> usize {
        self.read_within(WAIT).await
    }

    async fn read_within(&mut self, wait: Duration) -> usize {
        let mut buf = [0u8; 64 * 1024];
        let Ok(read) = tokio::time::timeout(wait, self.socket.read(&mut buf)).await else {
            let tail = &self.raw[self.raw.len().saturating_sub(300)..];
            panic!(
                "no bytes within {wait:?} after {} bytes, ending {:?}",
                self.raw.len(),
                String::from_utf8_lossy(tail)
            );
        };
        let n = read.unwrap();
        self.raw.extend_from_slice(&buf[..n]);
        n
    }

    /// Reads to the end of the answer; its messages.
    async fn messages(mut self) -> Vec<Message> {
        while self.read().await > 0 && !self.raw.ends_with(b"\r\n0\r\n\r\n") {}
        Parser::default().feed(&self.body()).unwrap()
    }

    /// The body read so far: its whole chunks (a connection cut off may end inside one).
    fn body(&self) -> Vec<u8> {
        let start = self.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        dechunk(&self.raw[start..])
    }
}

/// The body of a chunked HTTP/1.1 answer, up to its last chunk or the last whole chunk
/// read.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
        if size == 0 || raw.len() < line + 2 + size + 2 {
            break;
        }
        body.extend_from_slice(&raw[line + 2..line + 2 + size]);
        raw = &raw[line + 2 + size + 2..];
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_an_overflow_and_resumes_from_it() {
    const TOTAL: u64 = 4000;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let stalled = RawClient::open(gw.admin_addr, "/v1/stream?after=latest", None).await;
    let mut witness = open(&gw, "", None).await;
    start_of(&mut witness).await;
    let witness = tokio::spawn(async move { seqs(&mut witness, TOTAL as usize).await });

    // 4,000 events of 4 KiB while `stalled` reads nothing: more than the socket buffers
    // (several MiB on loopback), hyper's buffer and the client's few frames hold, by
    // more than 1,000 events.
    append_many(&gw.journal, 0..TOTAL as usize, 4096).await;
    assert_eq!(witness.await.unwrap(), (1..=TOTAL).collect::<Vec<_>>());

    let messages = stalled.messages().await;
    let (overflow, events) = messages.split_last().unwrap();
    assert_eq!(overflow.event.as_deref(), Some("overflow"));
    assert_eq!(
        overflow.id, None,
        "the overflow leaves the last event id alone"
    );
    let resume_after = serde_json::from_str::<Value>(&overflow.data).unwrap()["resume_after"]
        .as_u64()
        .unwrap();
    let got: Vec<u64> = events
        .iter()
        .filter(|m| !m.data.is_empty())
        .map(|m| m.id.as_deref().unwrap().parse().unwrap())
        .collect();
    // It was cut off for being more than 1,000 behind, not for anything else.
    assert!(resume_after + 1000 < TOTAL, "resume after {resume_after}");
    assert_eq!(got, (1..=resume_after).collect::<Vec<_>>());

    // Resuming after it brings the rest, once.
    let mut resumed = open(&gw, "", Some(resume_after)).await;
    assert_eq!(start_of(&mut resumed).await, resume_after);
    let rest = seqs(&mut resumed, (TOTAL - resume_after) as usize).await;
    assert_eq!(rest, (resume_after + 1..=TOTAL).collect::<Vec<_>>());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_again_is_cut_off_and_loses_nothing() {
    const TOTAL: u64 = 4000;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let mut stalled = RawClient::open(gw.admin_addr, "/v1/stream?after=latest", None).await;
    let mut witness = open(&gw, "", None).await;
    start_of(&mut witness).await;
    let witness = tokio::spawn(async move { seqs(&mut witness, TOTAL as usize).await });
    append_many(&gw.journal, 0..TOTAL as usize, 4096).await;
    assert_eq!(witness.await.unwrap(), (1..=TOTAL).collect::<Vec<_>>());

    // Nothing read for longer than the gateway waits for a client far behind.
    tokio::time::sleep(hookgate::admin::stream::STALLED + Duration::from_secs(3)).await;
    while stalled.read().await > 0 {}
    assert!(
        !stalled.raw.ends_with(b"\r\n0\r\n\r\n"),
        "the answer ended in order: the client was not cut off"
    );
    let body = stalled.body();
    let whole = &body[..body.windows(2).rposition(|w| w == b"\n\n").unwrap() + 2];
    let got: Vec<u64> = Parser::default()
        .feed(whole)
        .unwrap()
        .iter()
        .filter(|m| !m.data.is_empty())
        .map(|m| m.id.as_deref().unwrap().parse().unwrap())
        .collect();
    let last = *got.last().expect("some events before the cut");
    assert_eq!(got, (1..=last).collect::<Vec<_>>());
    assert!(last + 1000 < TOTAL, "cut off at {last}");

    // Its Last-Event-ID brings the rest, once; and its place is free again.
    let mut resumed = open(&gw, "", Some(last)).await;
    assert_eq!(start_of(&mut resumed).await, last);
    let rest = seqs(&mut resumed, (TOTAL - last) as usize).await;
    assert_eq!(rest, (last + 1..=TOTAL).collect::<Vec<_>>());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_each_get_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        let mut stream = open(&gw, "", None).await;
        start_of(&mut stream).await;
        clients.push(stream);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut stream| tokio::spawn(async move { seqs(&mut stream, 200).await }))
        .collect();
    let read_before = gw.stream.events_read();
    append_many(&gw.journal, 0..200, 256).await;
    for reader in readers {
        assert_eq!(reader.await.unwrap(), (1..=200).collect::<Vec<_>>());
    }
    // A hundred clients, one journal read per event.
    assert_eq!(gw.stream.events_read() - read_before, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_source_and_type_live_and_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let mut pushes = open(&gw, "?source=github&type=push", None).await;
    let mut stripe_only = open(&gw, "?source=stripe", None).await;
    start_of(&mut pushes).await;
    start_of(&mut stripe_only).await;

    let push1 = send_github(&gw, "f-1", "push").await;
    send_github(&gw, "f-2", "issues").await;
    let body = json!({"id": "evt_f3", "type": "invoice.paid"}).to_string();
    let r = post(
        gw.ingest_addr,
        "/hooks/stripe",
        stripe(body.as_bytes(), SystemTime::now()),
    )
    .await;
    let invoice = r.json()["seq"].as_u64().unwrap();
    let push2 = send_github(&gw, "f-4", "push").await;

    assert_eq!(seqs(&mut pushes, 2).await, vec![push1, push2]);
    let (seq, name, data) = next_event(&mut stripe_only).await;
    assert_eq!((seq, name.as_str()), (invoice, "invoice.paid"));
    assert_eq!(data["payload"]["id"], "evt_f3");

    // The same filter, read back from the journal.
    let mut again = open(&gw, "?type=push&after=0", None).await;
    start_of(&mut again).await;
    assert_eq!(seqs(&mut again, 2).await, vec![push1, push2]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_every_stream_without_waiting_for_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = open(&gw, "", None).await;
        start_of(&mut stream).await;
        streams.push(stream);
    }
    let stalled = RawClient::open(gw.admin_addr, "/v1/stream", None).await;
    let started = Instant::now();
    gw.stop().await;
    // drain_timeout is 3 s: a stop that waited on the streams would take that long.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for mut stream in streams {
        assert_eq!(next_message(&mut stream).await, None, "the stream ended");
    }
    stalled.messages().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_gets_a_comment_every_15_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path()).await;
    let mut raw = RawClient::open(gw.admin_addr, "/v1/stream", None).await;
    let started = Instant::now();
    while !raw.raw.windows(12).any(|w| w == b": keep-alive") {
        assert!(raw.read_within(Duration::from_secs(20)).await > 0);
    }
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_secs(14) && waited < Duration::from_secs(19),
        "{waited:?}"
    );
    gw.stop().await;
}
