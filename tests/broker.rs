//! Forwarding to the real RabbitMQ (SPEC §8): the message contract, declared queues,
//! returns and retries, a broker outage in the middle of ingest, SIGKILL while a backlog
//! is being forwarded, and `max_backlog`. Every test works under names of its own and
//! deletes them at the end.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use lapin::types::AMQPValue;

use common::rabbit::{header, header_text, Proxy, Rabbit};
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// `[broker]` for `url`, with the test's exchange, a short retry, and `queues` appended.
fn broker(url: &str, rabbit: &Rabbit, queues: &str) -> String {
    format!(
        r#"
[broker]
url = "{url}"
exchange = "{}"
max_in_flight = 64
retry = {{ initial = "100ms", max = "1s" }}
{queues}
"#,
        rabbit.exchange()
    )
}

fn quorum_queue(name: &str, binding: &str) -> String {
    format!(
        r#"
[[broker.queues]]
name = "{name}"
bindings = ["{binding}"]
kind = "quorum"
"#
    )
}

async fn admin_json(admin: std::net::SocketAddr, path: &str) -> serde_json::Value {
    hookgate::cli::client::get(&format!("http://{admin}{path}"))
        .await
        .expect("admin answers")
        .json()
}

/// Waits until the admin API lists `count` events with `status`.
async fn wait_for_status(admin: std::net::SocketAddr, status: &str, count: usize) {
    let started = Instant::now();
    loop {
        let page = admin_json(admin, &format!("/v1/events?status={status}&limit=1000")).await;
        let listed = page["events"].as_array().map_or(0, Vec::len);
        if listed >= count {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "waited for {count} events {status}, {listed} are"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts `count` GitHub events with ids `{prefix}-{i}` at once, asserts each was
/// accepted, and adds the ids to `accepted`.
async fn post_accepted(
    addr: std::net::SocketAddr,
    prefix: &str,
    count: usize,
    accepted: &mut HashSet<String>,
) {
    let sends: Vec<_> = (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            tokio::spawn(async move { (post_github(addr, &id, &delivery(&id)).await, id) })
        })
        .collect();
    for send in sends {
        let (reply, id) = send.await.unwrap();
        assert_eq!(reply.json()["status"], "accepted", "{id}");
        accepted.insert(id);
    }
}

/// Waits until every id in `accepted` has arrived at least once.
async fn wait_for_all(got: &common::rabbit::Collected, accepted: &HashSet<String>, what: &str) {
    got.wait_for(WAIT, what, |d| {
        let seen: HashSet<_> = d
            .iter()
            .filter_map(|m| m.properties.message_id().as_ref().map(|id| id.to_string()))
            .collect();
        accepted.iter().all(|id| seen.contains(id))
    })
    .await;
}

/// Waits until the admin API lists no `queued` event.
async fn wait_for_none_queued(admin: std::net::SocketAddr) {
    let started = Instant::now();
    loop {
        let page = admin_json(admin, "/v1/events?status=queued&limit=1").await;
        if page["events"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(started.elapsed() < WAIT, "events are still queued: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(admin: std::net::SocketAddr) -> u16 {
    hookgate::cli::client::get(&format!("http://{admin}/readyz"))
        .await
        .expect("admin answers")
        .status
        .as_u16()
}

async fn wait_for_ready(admin: std::net::SocketAddr, want: u16) {
    let started = Instant::now();
    while readyz(admin).await != want {
        assert!(started.elapsed() < WAIT, "/readyz never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway forwarding to the local RabbitMQ under the test's exchange, with `queues`
/// declared and `sources` configured, once `/readyz` says it is connected.
async fn start_forwarding(
    dir: &Path,
    rabbit: &Rabbit,
    queues: &str,
    sources: &str,
) -> hookgate::Running {
    let url = common::rabbit::amqp_url(common::rabbit::BROKER);
    let running = start(
        dir,
        "",
        &format!("{}{sources}", broker(&url, rabbit, queues)),
    )
    .await;
    wait_for_ready(running.admin_addr, 200).await;
    running
}

/// A JSON body of its own for a delivery id (see `delivery_body`).
fn delivery(id: &str) -> String {
    String::from_utf8(delivery_body(id)).unwrap()
}

async fn post_github(
    addr: std::net::SocketAddr,
    id: &str,
    body: &str,
) -> hookgate::cli::client::Reply {
    post(
        addr,
        "/hooks/github",
        github(id, "push", "application/json", body.as_bytes()),
    )
    .await
}

fn write_config(dir: &Path, sources: &str) -> std::path::PathBuf {
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, config_text(dir, "", sources)).unwrap();
    path
}

/// A test behind a proxy it controls: its own exchange and quorum queue (bound to
/// `github.#`), and the `[broker]` plus GitHub source config that reaches the broker
/// through the proxy.
struct Proxied {
    rabbit: Rabbit,
    queue: String,
    proxy: Proxy,
    dir: tempfile::TempDir,
    sources: String,
}

async fn proxied(test: &str) -> Proxied {
    let rabbit = Rabbit::connect(test).await;
    let queue = rabbit.queue("events");
    let proxy = Proxy::start().await;
    let sources = format!(
        "{}{GITHUB_SOURCE}",
        broker(&proxy.url(), &rabbit, &quorum_queue(&queue, "github.#"))
    );
    Proxied {
        rabbit,
        queue,
        proxy,
        dir: tempfile::tempdir().unwrap(),
        sources,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_the_spec_contract() {
    let rabbit = Rabbit::connect("contract").await;
    let queue = rabbit.queue("all");
    let dir = tempfile::tempdir().unwrap();
    let sources =
        format!("{GITHUB_SOURCE}{STRIPE_SOURCE}routing_key = \"payments.{{source}}.{{type}}\"\n");
    let running = start_forwarding(dir.path(), &rabbit, &quorum_queue(&queue, "#"), &sources).await;
    assert!(
        rabbit.is_of_kind(&queue, "quorum").await,
        "{queue} is a quorum queue"
    );
    assert!(
        !rabbit.is_of_kind(&queue, "classic").await,
        "{queue} is not classic"
    );
    let got = rabbit.collect(&queue).await;

    let push = r#"{"ref":"refs/heads/main", "n": 1}"#;
    let reply = post_github(running.ingest_addr, "gh-1", push).await;
    assert_eq!(reply.json()["status"], "accepted");
    let charge = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
    let reply = post(
        running.ingest_addr,
        "/hooks/stripe",
        stripe(charge, SystemTime::now()),
    )
    .await;
    assert_eq!(reply.json()["status"], "accepted");

    got.wait_for(WAIT, "both messages", |d| d.len() >= 2).await;
    let deliveries = std::mem::take(&mut *got.0.lock().unwrap());
    let by_id = |id: &str| {
        deliveries
            .iter()
            .find(|d| d.properties.message_id().as_ref().map(|m| m.as_str()) == Some(id))
            .unwrap_or_else(|| panic!("{id} arrived"))
    };

    let gh = by_id("gh-1");
    assert_eq!(gh.routing_key.as_str(), "github.push");
    assert_eq!(
        gh.data,
        push.as_bytes(),
        "a JSON body is forwarded byte for byte"
    );
    let p = &gh.properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("push"));
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("hookgate"));
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamp = p.timestamp().expect("a timestamp");
    assert!(
        stamp <= now && now - stamp < 60,
        "timestamp {stamp} is the receive time"
    );
    assert_eq!(
        header_text(gh, "cloudEvents_specversion").as_deref(),
        Some("1.0")
    );
    assert_eq!(header_text(gh, "cloudEvents_id").as_deref(), Some("gh-1"));
    assert_eq!(
        header_text(gh, "cloudEvents_source").as_deref(),
        Some("/hooks/github")
    );
    assert_eq!(header_text(gh, "cloudEvents_type").as_deref(), Some("push"));
    let time = header_text(gh, "cloudEvents_time").expect("cloudEvents_time");
    assert!(
        time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339 UTC: {time}"
    );
    assert_eq!(
        header_text(gh, "hookgate_source").as_deref(),
        Some("github")
    );
    assert_eq!(
        header_text(gh, "hookgate_content_type").as_deref(),
        Some("application/json")
    );
    let seq = match header(gh, "hookgate_seq") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("hookgate_seq is an integer: {other:?}"),
    };
    assert_eq!(
        header_text(gh, "http_x-github-event").as_deref(),
        Some("push")
    );
    assert_eq!(
        header_text(gh, "http_x-github-delivery").as_deref(),
        Some("gh-1")
    );

    let st = by_id("evt_1");
    assert_eq!(st.routing_key.as_str(), "payments.stripe.charge.succeeded");
    assert_eq!(st.data, charge);
    assert_eq!(
        header_text(st, "cloudEvents_type").as_deref(),
        Some("charge.succeeded")
    );
    // Signatures stay in: whoever reads the queue could post the event again as new.
    assert_eq!(header_text(st, "http_stripe-signature"), None);

    wait_for_status(running.admin_addr, "delivered", 2).await;
    let shown = admin_json(running.admin_addr, &format!("/v1/events/{seq}")).await;
    assert_eq!(shown["id"], "gh-1");
    assert_eq!(shown["status"], "delivered");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_event_is_delivered_once_a_queue_is_bound() {
    let rabbit = Rabbit::connect("unroutable").await;
    let dir = tempfile::tempdir().unwrap();
    let running = start_forwarding(dir.path(), &rabbit, "", GITHUB_SOURCE).await;

    let reply = post_github(running.ingest_addr, "lost-1", &delivery("lost-1")).await;
    assert_eq!(reply.json()["status"], "accepted");
    let seq = reply.json()["seq"].as_u64().unwrap();

    // No queue is bound: the broker returns it, and it stays queued with the attempt noted.
    let started = Instant::now();
    let shown = loop {
        let shown = admin_json(running.admin_addr, &format!("/v1/events/{seq}")).await;
        if shown["attempts"].as_u64().unwrap_or(0) >= 2 {
            break shown;
        }
        assert!(started.elapsed() < WAIT, "no attempt recorded: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown["status"], "queued", "{shown}");
    let outcome = shown["attempts_log"][0]["outcome"]
        .as_str()
        .unwrap_or_default();
    assert!(
        outcome.contains("NO_ROUTE") || outcome.contains("312"),
        "{shown}"
    );

    let queue = rabbit.bind_queue("late", "github.#").await;
    let got = rabbit.collect(&queue).await;
    got.wait_for(WAIT, "the returned event", |d| !d.is_empty())
        .await;
    assert_eq!(got.counts().get("lost-1"), Some(&1));
    wait_for_status(running.admin_addr, "delivered", 1).await;
    running.stop().await;
}

/// Replay with a broker: the same event is published again with the same message id,
/// marked with `hookgate_replays`, and ends `delivered` again; bulk replay by status and
/// source counts what it queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_publishes_again_with_the_same_message_id() {
    let rabbit = Rabbit::connect("replay").await;
    let queue = rabbit.queue("all");
    let dir = tempfile::tempdir().unwrap();
    let running = start_forwarding(
        dir.path(),
        &rabbit,
        &quorum_queue(&queue, "#"),
        &format!("{GITHUB_SOURCE}{STRIPE_SOURCE}"),
    )
    .await;
    let got = rabbit.collect(&queue).await;
    for id in ["rp-1", "rp-2", "rp-3"] {
        let reply = post_github(running.ingest_addr, id, &delivery(id)).await;
        assert_eq!(reply.json()["status"], "accepted");
    }
    let charge = br#"{"id":"evt_rp","type":"charge.succeeded"}"#;
    let reply = post(
        running.ingest_addr,
        "/hooks/stripe",
        stripe(charge, SystemTime::now()),
    )
    .await;
    assert_eq!(reply.json()["status"], "accepted");
    got.wait_for(WAIT, "the first deliveries", |d| d.len() >= 4)
        .await;
    wait_for_status(running.admin_addr, "delivered", 4).await;
    assert!(got
        .0
        .lock()
        .unwrap()
        .iter()
        .all(|d| header(d, "hookgate_replays").is_none()));

    let admin = running.admin_addr;
    let replay = |path: String| async move {
        hookgate::cli::client::request(
            http::Method::POST,
            &format!("http://{admin}{path}"),
            http::HeaderMap::new(),
            bytes::Bytes::new(),
        )
        .await
        .unwrap()
    };
    let one = replay("/v1/events/2/replay".into()).await;
    assert_eq!(one.status, http::StatusCode::ACCEPTED);
    assert_eq!(
        one.json()["queued_as"],
        2,
        "with a broker the event keeps its seq"
    );
    got.wait_for(WAIT, "the replayed event", |d| d.len() >= 5)
        .await;
    {
        let deliveries = got.0.lock().unwrap();
        let again = &deliveries[4];
        assert_eq!(
            again.properties.message_id().as_ref().map(|m| m.as_str()),
            Some("rp-2")
        );
        assert_eq!(again.data, delivery("rp-2").as_bytes());
        assert!(matches!(
            header(again, "hookgate_replays"),
            Some(AMQPValue::LongUInt(1))
        ));
    }
    let shown = loop {
        let shown = admin_json(admin, "/v1/events/2").await;
        if shown["status"] == "delivered" && shown["attempts"] == 2 {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let outcomes: Vec<&str> = shown["attempts_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivered", "replay requested", "delivered"]);

    assert_eq!(
        replay("/v1/events/99/replay".into()).await.status,
        http::StatusCode::NOT_FOUND
    );
    let bulk = replay("/v1/replay?source=github&status=delivered".into()).await;
    assert_eq!(bulk.json()["replayed"], 3, "{:?}", bulk.json());
    got.wait_for(WAIT, "the bulk replay", |d| d.len() >= 8)
        .await;
    wait_for_status(admin, "delivered", 4).await;
    let counts = got.counts();
    assert_eq!(counts.get("rp-1"), Some(&2));
    assert_eq!(counts.get("rp-2"), Some(&3));
    assert_eq!(counts.get("rp-3"), Some(&2));
    assert_eq!(
        counts.get("evt_rp"),
        Some(&1),
        "the other source is left alone"
    );
    let metrics = hookgate::cli::client::get(&format!("http://{admin}/metrics"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("hookgate_replayed_total 4"), "{text}");
    assert!(
        text.contains("hookgate_forward_published_total 8"),
        "{text}"
    );
    assert!(text.contains("hookgate_broker_connected 1"), "{text}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_during_ingest_loses_nothing() {
    let Proxied {
        rabbit,
        queue,
        proxy,
        dir,
        sources,
    } = proxied("outage").await;
    let running = start(dir.path(), "", &sources).await;
    wait_for_ready(running.admin_addr, 200).await;
    let got = rabbit.collect(&queue).await;

    const TOTAL: usize = 600;
    let addr = running.ingest_addr;
    let mut accepted = HashSet::new();
    for round in 0..3 {
        // A third with the broker reachable, a third while it is gone, a third after.
        if round == 1 {
            proxy.cut();
            wait_for_ready(running.admin_addr, 503).await;
        }
        if round == 2 {
            proxy.restore();
        }
        post_accepted(addr, &format!("outage-{round}"), TOTAL / 3, &mut accepted).await;
    }
    wait_for_ready(running.admin_addr, 200).await;
    wait_for_all(&got, &accepted, "every accepted event").await;
    wait_for_status(running.admin_addr, "delivered", TOTAL).await;
    assert!(
        proxy.connections.load(std::sync::atomic::Ordering::Acquire) >= 2,
        "it reconnected"
    );
    let counts = got.counts();
    let again = counts.values().filter(|&&n| n > 1).count();
    eprintln!("outage: {TOTAL} accepted, all delivered; {again} delivered more than once");
    running.stop().await;
}

/// The node `/readyz` names, once it names one.
async fn wait_for_node(admin: std::net::SocketAddr, want: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let ready = admin_json(admin, "/readyz").await;
        if ready["broker"] == want {
            return ready;
        }
        assert!(
            started.elapsed() < WAIT,
            "/readyz never named {want}: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `broker.url` as a list: a node that refuses connections, then two proxies to the
/// broker (one through `env:`). The first that answers is used; when its link is lost
/// the others are tried in turn from the next one, wrapping round; `/readyz` and
/// `hookgate_broker_node` name the node in use, and never the credentials. (The three
/// nodes of a real cluster, one of them killed under load: tests/cluster.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_nodes_fails_over_in_turn_and_names_the_node_in_use() {
    let rabbit = Rabbit::connect("nodes").await;
    let queue = rabbit.queue("events");
    let (a, b) = (Proxy::start().await, Proxy::start().await);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = format!("HOOKGATE_TEST_NODE_B_{}", std::process::id());
    std::env::set_var(&env, b.url());
    let urls = format!(
        "[\"{}\", \"{}\", \"env:{env}\"]",
        common::rabbit::amqp_url(&dead.to_string()),
        a.url()
    );
    let sources = format!(
        "{}{GITHUB_SOURCE}",
        broker("URLS", &rabbit, &quorum_queue(&queue, "github.#"))
    )
    .replace("\"URLS\"", &urls);
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), "", &sources).await;
    let admin = running.admin_addr;
    let (dead, a_addr, b_addr) = (dead.to_string(), a.addr.to_string(), b.addr.to_string());

    // The dead node is skipped: the first that answers is a.
    let ready = wait_for_node(admin, &a_addr).await;
    let got = rabbit.collect(&queue).await;
    assert!(!ready.to_string().contains("guest"), "{ready}");
    let metrics = String::from_utf8_lossy(
        &hookgate::cli::client::get(&format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .body,
    )
    .into_owned();
    for (node, value) in [(&dead, 0), (&a_addr, 1), (&b_addr, 0)] {
        let series = format!("hookgate_broker_node{{node=\"{node}\"}} {value}");
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
    assert!(!metrics.contains("guest"));
    let mut accepted = HashSet::new();
    post_accepted(running.ingest_addr, "via-a", 50, &mut accepted).await;

    // The link to a is lost, and a answers again at once: still, the next in turn, b,
    // is tried first (a node that has just failed is tried last).
    a.cut();
    a.restore();
    wait_for_node(admin, &b_addr).await;
    post_accepted(running.ingest_addr, "via-b", 50, &mut accepted).await;
    wait_for_all(&got, &accepted, "every event, through a then b").await;

    // b is lost for good: from the node after it, wrapping round, the dead one is
    // tried, then a.
    b.cut();
    wait_for_node(admin, &a_addr).await;
    post_accepted(running.ingest_addr, "via-a-again", 50, &mut accepted).await;
    wait_for_all(&got, &accepted, "every event, after the second failover").await;
    wait_for_none_queued(admin).await;
    assert!(b.connections.load(std::sync::atomic::Ordering::Acquire) >= 1);
    running.stop().await;
    std::env::remove_var(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_forwarding_a_backlog_loses_nothing() {
    let Proxied {
        rabbit,
        queue,
        proxy,
        dir,
        sources,
    } = proxied("sigkill").await;
    let config = write_config(dir.path(), &sources);
    let mut gw = spawn(&config);
    wait_for_ready(gw.admin, 200).await;
    let got = rabbit.collect(&queue).await;

    // Build a backlog with the broker out of reach.
    proxy.cut();
    wait_for_ready(gw.admin, 503).await;
    const TOTAL: usize = 3000;
    let addr = gw.ingest;
    let mut accepted = HashSet::new();
    for chunk in 0..(TOTAL / 100) {
        post_accepted(addr, &format!("kill-{chunk}"), 100, &mut accepted).await;
    }

    // Let it forward part of the backlog, then kill it mid-stream.
    proxy.restore();
    got.wait_for(WAIT, "the first forwarded messages", |d| d.len() >= 200)
        .await;
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let before_restart = got.len();
    assert!(
        before_restart < TOTAL,
        "the kill came too late to test anything: all {before_restart} had arrived"
    );

    let mut gw = spawn(&config);
    wait_for_all(
        &got,
        &accepted,
        "every acknowledged event after the restart",
    )
    .await;
    wait_for_none_queued(gw.admin).await;
    let counts = got.counts();
    let again: usize = counts.values().map(|n| n - 1).sum();
    assert!(
        counts.keys().all(|id| accepted.contains(id)),
        "nothing unknown arrived"
    );
    eprintln!(
        "sigkill: {TOTAL} acknowledged, {before_restart} arrived before the kill, all arrived after the restart, {again} redeliveries"
    );
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_backlog_new_events_get_503_until_the_broker_drains_it() {
    let Proxied {
        rabbit: _rabbit,
        proxy,
        dir,
        sources,
        ..
    } = proxied("backlog").await;
    proxy.cut();
    let running = start(dir.path(), "max_backlog = 5", &sources).await;
    assert_eq!(
        readyz(running.admin_addr).await,
        503,
        "the broker is out of reach"
    );

    for i in 0..5 {
        let reply = post_github(
            running.ingest_addr,
            &format!("b-{i}"),
            &delivery(&format!("b-{i}")),
        )
        .await;
        assert_eq!(reply.json()["status"], "accepted");
    }
    let refused = post_github(running.ingest_addr, "b-5", &delivery("b-5")).await;
    assert_eq!(refused.status.as_u16(), 503);
    assert_eq!(refused.json()["error"], "unavailable");
    assert!(refused.headers.contains_key("retry-after"));
    let again = post_github(running.ingest_addr, "b-0", &delivery("b-0")).await;
    assert_eq!(
        again.json()["status"],
        "duplicate",
        "a duplicate is still recognised"
    );

    proxy.restore();
    wait_for_status(running.admin_addr, "delivered", 5).await;
    let retried = post_github(running.ingest_addr, "b-5", &delivery("b-5")).await;
    assert_eq!(
        retried.json()["status"],
        "accepted",
        "the provider's retry gets in"
    );
    running.stop().await;
}

/// `examples/worker.rs`, as built by `cargo test` (which builds the examples too).
fn example_worker() -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_hookgate"))
        .parent()
        .unwrap()
        .join("examples")
        .join("worker");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` (it builds the examples) or `cargo build --examples`",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_worker_does_each_event_once() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let rabbit = Rabbit::connect("worker").await;
    let queue = rabbit.queue("worker");
    let dir = tempfile::tempdir().unwrap();
    let url = common::rabbit::amqp_url(common::rabbit::BROKER);
    let running = start_forwarding(dir.path(), &rabbit, "", GITHUB_SOURCE).await;

    let mut worker = Command::new(example_worker())
        .args([
            "--url",
            &url,
            "--exchange",
            &rabbit.exchange(),
            "--queue",
            &queue,
        ])
        .args(["--binding", "github.#"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example worker starts");
    let mut stderr = BufReader::new(worker.stderr.take().unwrap()).lines();
    let ready = stderr
        .next()
        .expect("the worker says it is consuming")
        .unwrap();
    assert!(ready.contains("consuming"), "{ready}");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = worker.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    for id in ["w-1", "w-2", "w-3"] {
        let body = format!(r#"{{"a":1,"b":"{id}"}}"#);
        let reply = post_github(running.ingest_addr, id, &body).await;
        assert_eq!(reply.json()["status"], "accepted");
    }
    wait_for_status(running.admin_addr, "delivered", 3).await;
    // A redelivery, as after a crash between publish and confirm: same message_id.
    let again = lapin::BasicProperties::default().with_message_id("w-2".into());
    rabbit
        .channel
        .basic_publish(
            &rabbit.exchange(),
            "github.push",
            lapin::options::BasicPublishOptions::default(),
            br#"{"a":1,"b":2}"#,
            again,
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let mut outcomes = Vec::new();
    while outcomes.len() < 4 {
        let line = lines_rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("the worker reported only {outcomes:?}"));
        let entry: serde_json::Value =
            serde_json::from_str(&line).expect("one JSON line per event");
        outcomes.push((
            entry["id"].as_str().unwrap().to_string(),
            entry["outcome"].as_str().unwrap().to_string(),
        ));
    }
    let handled: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| o == "handled")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(handled.len(), 3, "{outcomes:?}");
    assert!(
        ["w-1", "w-2", "w-3"].iter().all(|id| handled.contains(id)),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[3],
        ("w-2".to_string(), "already handled".to_string())
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    running.stop().await;
}
