//! Subscriptions end to end (SPEC §9-10, issue 17): a gateway on real sockets delivers
//! to real HTTP receivers on loopback (`common::receiver`), and every check is one a
//! user can make: the admin API's subscriptions, delivery logs and events, and what the
//! receiver got. Retries are short (`200ms`, `400ms`) so that each test takes seconds.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use common::receiver::{Answer, Receiver, Seen};
use common::*;
use hookgate::cli::client::{self, Reply};
use hookgate::config::Secret;
use hookgate::gateway::unix_seconds;
use hookgate::verify::{Check, Incoming, Scheme};
use hookgate::Running;

/// Lets the tests reach their receivers on loopback; short timeouts and retries.
const OUTBOUND: &str = r#"
[outbound]
allow_private = ["127.0.0.0/8"]
timeout = "500ms"
retry = ["200ms", "400ms"]
"#;

/// A `whsec_` secret for config-managed subscriptions (24 bytes).
const CONFIG_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const SECOND: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A gateway with the GitHub source, `outbound` (an `[outbound]` table) and `subs`
/// (`[[subscriptions]]` tables).
async fn gateway(dir: &std::path::Path, outbound: &str, subs: &str) -> Running {
    start(dir, "", &format!("{GITHUB_SOURCE}\n{outbound}\n{subs}")).await
}

/// One admin API call, with a JSON body if given.
async fn call(admin: SocketAddr, method: Method, path: &str, body: Option<Value>) -> Reply {
    let mut headers = HeaderMap::new();
    let bytes = match body {
        Some(v) => {
            headers.insert(
                http::header::CONTENT_TYPE,
                "application/json".parse().unwrap(),
            );
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    client::request(method, &format!("http://{admin}{path}"), headers, bytes)
        .await
        .expect("admin request completes")
}

async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let reply = call(admin, Method::GET, path, None).await;
    assert_eq!(reply.status, StatusCode::OK, "GET {path}: {:?}", reply.body);
    reply.json()
}

/// `POST /v1/subscriptions`, asserting `201`; the created subscription with its secret.
async fn create(admin: SocketAddr, body: Value) -> Value {
    let reply = call(admin, Method::POST, "/v1/subscriptions", Some(body.clone())).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "create {body}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// A GitHub event of type `event` with this id and body, accepted; its seq.
async fn send(ingest: SocketAddr, id: &str, event: &str, body: &[u8]) -> u64 {
    let reply = post(
        ingest,
        "/hooks/github",
        github(id, event, "application/json", body),
    )
    .await;
    let answer = reply.json();
    assert_eq!(answer["status"], "accepted", "{id}: {answer}");
    answer["seq"].as_u64().unwrap()
}

/// A `push` with a body of its own; its seq.
async fn push(ingest: SocketAddr, id: &str) -> u64 {
    send(ingest, id, "push", &delivery_body(id)).await
}

/// Polls `probe` every 25 ms until it answers `Ok`, for at most `within`; the `Err` it
/// answered last says what was seen instead.
async fn eventually<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// The delivery of event `seq` to subscription `sub`, if there is one.
async fn delivery(admin: SocketAddr, seq: u64, sub: &str) -> Option<Value> {
    let all = get_json(admin, &format!("/v1/events/{seq}/deliveries")).await;
    all["deliveries"]
        .as_array()?
        .iter()
        .find(|d| d["subscription"] == sub)
        .cloned()
}

/// Waits until the delivery of `seq` to `sub` has `status`; answers it.
async fn wait_delivery(
    admin: SocketAddr,
    seq: u64,
    sub: &str,
    status: &str,
    within: Duration,
) -> Value {
    eventually(
        &format!("delivery of seq {seq} to {sub} is {status}"),
        within,
        async || match delivery(admin, seq, sub).await {
            Some(d) if d["status"] == status => Ok(d),
            other => Err(format!("{other:?}")),
        },
    )
    .await
}

/// The events listed for `query` (summaries).
async fn events(admin: SocketAddr, query: &str) -> Vec<Value> {
    get_json(admin, &format!("/v1/events?{query}")).await["events"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits for an event listed for `query`; answers it whole (with its payload).
async fn wait_event(admin: SocketAddr, query: &str, within: Duration) -> Value {
    let summary = eventually(&format!("an event for {query}"), within, async || {
        let found = events(admin, query).await;
        found.first().cloned().ok_or_else(|| "no event".to_string())
    })
    .await;
    get_json(admin, &format!("/v1/events/{}", summary["seq"])).await
}

fn secrets(values: &[&str]) -> Vec<Secret> {
    values.iter().map(|s| Secret::new(s.as_bytes())).collect()
}

/// Whether the gateway's own Standard Webhooks verifier accepts `seen` under `secrets`.
fn signed_by(seen: &Seen, keys: &[&str]) -> bool {
    let keys = secrets(keys);
    Scheme::StandardWebhooks
        .check(&Check {
            headers: &seen.headers,
            body: &seen.body,
            query: None,
            secrets: &keys,
        })
        .is_ok()
}

/// A valid `whsec_` secret made of `fill` (24 bytes).
fn whsec(fill: u8) -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([fill; 24])
    )
}

fn hookgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hookgate"))
}

// ---------------------------------------------------------------------------------------
// 1. Create, deliver, sign
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_subscription_gets_the_payload_signed_with_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::ok().await;

    let created = create(
        gw.admin_addr,
        json!({
            "name": "orders-sync",
            "url": receiver.url("/hooks/in"),
            "events": ["github:push"],
            "headers": {"X-Team": "ops"},
        }),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    let sub = created["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert!(sub.starts_with("sub_"), "{created}");
    assert_eq!(created["managed"], "api");
    assert_eq!(created["active"], true);
    assert_eq!(created["mode"], "notify");
    assert_eq!(created["headers"], json!(["x-team"]));

    // Shown once: never again, by id or in the list.
    for path in [
        format!("/v1/subscriptions/{sub}"),
        "/v1/subscriptions".into(),
    ] {
        let reply = call(gw.admin_addr, Method::GET, &path, None).await;
        let text = String::from_utf8_lossy(&reply.body);
        assert_eq!(reply.status, StatusCode::OK);
        assert!(text.contains("orders-sync"), "{text}");
        assert!(
            !text.contains(&secret),
            "GET {path} shows the secret: {text}"
        );
        assert!(!text.contains("\"secret\""), "GET {path}: {text}");
        assert!(!text.contains("ops\""), "a header value is shown: {text}");
    }

    // An event the subscription does not match gets no delivery at all.
    let other = send(gw.ingest_addr, "evt-issue", "issues", b"{}").await;
    // Odd spacing and non-ASCII: the receiver must get the very bytes that came in.
    let body = "{ \"order\":  17, \"name\": \"Zo\u{eb}\",\n \"tags\": [\"a\" ,\"b\"] }";
    let seq = send(gw.ingest_addr, "evt-1", "push", body.as_bytes()).await;

    let got = receiver.wait_for(1, 5 * SECOND).await;
    let seen = &got[0];
    assert_eq!(&seen.body[..], body.as_bytes(), "payload not byte for byte");
    assert_eq!(seen.path, "/hooks/in");
    assert_eq!(seen.header("webhook-id"), Some("evt-1"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("hookgate-source"), Some("github"));
    assert_eq!(seen.header("hookgate-event-type"), Some("push"));
    assert_eq!(seen.header("hookgate-seq"), Some(seq.to_string().as_str()));
    let num = sub.trim_start_matches("sub_");
    assert_eq!(
        seen.header("hookgate-delivery"),
        Some(format!("dlv_{seq}_{num}").as_str())
    );
    assert_eq!(seen.header("x-team"), Some("ops"));
    let agent = seen.header("user-agent").unwrap_or_default();
    assert!(agent.starts_with("hookgate/"), "user-agent {agent}");
    let ts: i64 = seen.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((unix_seconds(SystemTime::now()) - ts).abs() < 60, "{ts}");

    // The gateway's own verifier, as a source of scheme standard-webhooks runs it.
    let incoming = Incoming {
        method: Method::POST,
        uri: "/hooks/in".parse().unwrap(),
        headers: seen.headers.clone(),
        body: seen.body.clone(),
        received_at: SystemTime::now(),
    };
    let verified = hookgate::verify::verify(
        &Scheme::StandardWebhooks,
        &secrets(&[&secret]),
        Duration::from_secs(300),
        incoming,
        unix_seconds(SystemTime::now()),
    );
    assert!(
        verified.is_ok(),
        "signature does not verify: {:?} ({:?})",
        verified.err(),
        seen.header("webhook-signature")
    );
    assert!(
        !signed_by(seen, &[&whsec(7)]),
        "a wrong secret verifies too: {:?}",
        seen.header("webhook-signature")
    );

    let done = wait_delivery(gw.admin_addr, seq, &sub, "delivered", 5 * SECOND).await;
    assert_eq!(done["event_id"], "evt-1");
    assert_eq!(done["attempt_count"], 1);
    assert_eq!(done["attempts"][0]["status_code"], 200);
    let none = get_json(gw.admin_addr, &format!("/v1/events/{other}/deliveries")).await;
    assert_eq!(
        none["deliveries"],
        json!([]),
        "a non-matching event got one"
    );
    let shown = get_json(gw.admin_addr, &format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(shown["delivered"], 1, "{shown}");
    assert_eq!(shown["pending"], 0, "{shown}");
    assert!(shown["last_success_at"].is_string(), "{shown}");
    assert_eq!(receiver.requests().len(), 1);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2. Fails twice, then succeeds
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failures_then_success_are_three_logged_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|seen| {
        if seen.nth < 2 {
            Answer {
                body: format!("boom {}", seen.nth),
                ..Answer::status(500)
            }
        } else {
            Answer::json(json!({"ok": true}))
        }
    })
    .await;
    let sub = create(
        gw.admin_addr,
        json!({"name": "flaky", "url": receiver.url("/"), "events": ["github:*"]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seq = push(gw.ingest_addr, "flaky-1").await;

    let done = wait_delivery(gw.admin_addr, seq, &sub, "delivered", 5 * SECOND).await;
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(done["attempt_count"], 3, "{done}");
    assert_eq!(attempts.len(), 3, "{done}");
    let codes: Vec<&Value> = attempts.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(500), &json!(200)], "{done}");
    for (i, a) in attempts.iter().enumerate() {
        assert!(a["duration_ms"].is_u64(), "attempt {i}: {a}");
        assert!(a["at"].as_str().unwrap().ends_with('Z'), "{a}");
    }
    assert_eq!(attempts[0]["response_body"], "boom 0");
    assert_eq!(attempts[1]["response_body"], "boom 1");
    assert!(attempts[0]["next_attempt_at"].is_string(), "{done}");
    assert!(attempts[1]["next_attempt_at"].is_string(), "{done}");
    assert!(attempts[2]["next_attempt_at"].is_null(), "{done}");

    // The receiver saw the same webhook-id three times, spaced by the schedule.
    let got = receiver.requests();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|s| s.id() == "flaky-1"));
    // The schedule's 200ms (±10%) counts from each answer.
    for pair in got.windows(2) {
        let gap = pair[1].at - pair[0].answered_at.unwrap();
        assert!(gap >= Duration::from_millis(180), "retried after {gap:?}");
    }

    // The log reads the same through the subscription's delivery list.
    let log = get_json(
        gw.admin_addr,
        &format!("/v1/subscriptions/{sub}/deliveries"),
    )
    .await;
    assert_eq!(log["deliveries"][0]["attempts"], done["attempts"], "{log}");
    let failed_only = get_json(
        gw.admin_addr,
        &format!("/v1/subscriptions/{sub}/deliveries?status=failed"),
    )
    .await;
    assert_eq!(failed_only["deliveries"], json!([]));

    let metrics = call(gw.admin_addr, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let counted = |outcome: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("hookgate_delivery_attempts_total{")
                    && l.contains("subscription=\"flaky\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(counted("status").as_deref(), Some("2"), "{text}");
    assert_eq!(counted("success").as_deref(), Some("1"), "{text}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3. A slow receiver
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_slower_than_the_timeout_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|seen| {
        if seen.nth == 0 {
            Answer::ok().after(Duration::from_secs(3))
        } else {
            Answer::ok()
        }
    })
    .await;
    let sub = create(
        gw.admin_addr,
        json!({"name": "slow", "url": receiver.url("/"), "events": ["github:push"]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seq = push(gw.ingest_addr, "slow-1").await;

    let done = wait_delivery(gw.admin_addr, seq, &sub, "delivered", 5 * SECOND).await;
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{done}");
    let error = attempts[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("timeout") || error.contains("timed out"),
        "the first attempt's error does not say timeout: {done}"
    );
    assert!(attempts[0]["status_code"].is_null(), "{done}");
    let took = attempts[0]["duration_ms"].as_u64().unwrap();
    assert!(
        (400..2500).contains(&took),
        "a 500ms timeout took {took} ms: {done}"
    );
    assert_eq!(attempts[1]["status_code"], 200);
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    // The 200ms wait after the first attempt comes after its timeout, not within it.
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(500 + 180),
        "retried {gap:?} after a timed-out attempt began"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 4. 410 Gone
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription_and_says_so_in_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|_| Answer::status(410)).await;
    let sub = create(
        gw.admin_addr,
        json!({"name": "gone", "url": receiver.url("/"), "events": ["github:push"]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    push(gw.ingest_addr, "gone-1").await;

    let shown = eventually("the subscription is disabled", 5 * SECOND, async || {
        let shown = get_json(gw.admin_addr, &format!("/v1/subscriptions/{sub}")).await;
        if shown["active"] == false {
            Ok(shown)
        } else {
            Err(shown.to_string())
        }
    })
    .await;
    let reason = shown["disabled_reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "no disabled_reason: {shown}");
    assert!(
        reason.contains("410"),
        "the reason does not say 410: {reason}"
    );

    let event = wait_event(
        gw.admin_addr,
        "source=hookgate&type=hookgate.subscription.disabled",
        5 * SECOND,
    )
    .await;
    assert_eq!(event["source"], "hookgate");
    assert!(
        event["payload"].to_string().contains(&sub),
        "the event does not name {sub}: {event}"
    );

    // Disabled: a later event is not sent.
    push(gw.ingest_addr, "gone-2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.requests().len(),
        1,
        "sent to a disabled subscription"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 5. 429 with Retry-After
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|seen| {
        if seen.nth == 0 {
            Answer::status(429).header("retry-after", "2")
        } else {
            Answer::ok()
        }
    })
    .await;
    let sub = create(
        gw.admin_addr,
        json!({"name": "limited", "url": receiver.url("/"), "events": ["github:push"]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seq = push(gw.ingest_addr, "limited-1").await;

    let done = wait_delivery(gw.admin_addr, seq, &sub, "delivered", 6 * SECOND).await;
    assert_eq!(done["attempts"][0]["status_code"], 429, "{done}");
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    // Retry-After counts from the answer: the next attempt comes no sooner than 2 s after.
    let answered = got[0].answered_at.unwrap();
    let waited = got[1].at.duration_since(answered);
    assert!(
        got[1].at >= answered + Duration::from_secs(2),
        "retried {waited:?} after a 429 with Retry-After: 2"
    );
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 6. Ordered
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_keeps_journal_order_under_failures() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|seen| {
        if seen.id() == "ord-0" && seen.nth < 2 {
            Answer::status(500).after(Duration::from_millis(20))
        } else {
            Answer::ok().after(Duration::from_millis(20))
        }
    })
    .await;
    let sub = create(
        gw.admin_addr,
        json!({
            "name": "in-order",
            "url": receiver.url("/"),
            "events": ["github:push"],
            "ordered": true,
            "max_in_flight": 8,
        }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ids: Vec<String> = (0..6).map(|i| format!("ord-{i}")).collect();
    let mut last = 0;
    for id in &ids {
        last = push(gw.ingest_addr, id).await;
    }
    wait_delivery(gw.admin_addr, last, &sub, "delivered", 8 * SECOND).await;

    let got = receiver.requests();
    let order: Vec<&str> = got.iter().map(Seen::id).collect();
    assert_eq!(
        order,
        ["ord-0", "ord-0", "ord-0", "ord-1", "ord-2", "ord-3", "ord-4", "ord-5"],
        "out of journal order"
    );
    // None overtakes: each request comes after every earlier event was accepted.
    let mut accepted: HashSet<&str> = HashSet::new();
    for seen in &got {
        let position = ids.iter().position(|i| i == seen.id()).unwrap();
        for earlier in &ids[..position] {
            assert!(
                accepted.contains(earlier.as_str()),
                "{} was sent before {earlier} was delivered",
                seen.id()
            );
        }
        if seen.answered_with == Some(200) {
            accepted.insert(seen.id());
        }
    }
    assert_eq!(receiver.most_in_flight(), 1, "ordered ran attempts at once");
    gw.stop().await;
}

/// A metric's value for one subscription, from `/metrics`.
async fn sub_metric(admin: SocketAddr, series: &str, name: &str) -> Option<f64> {
    let metrics = call(admin, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let found = text
        .lines()
        .find(|l| {
            l.starts_with(&format!("{series}{{")) && l.contains(&format!("subscription=\"{name}\""))
        })?
        .rsplit(' ')
        .next()?
        .parse()
        .ok();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_per_subscription_and_a_dead_endpoint_delays_no_one() {
    const EVENTS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let outbound = OUTBOUND.replace("retry = ", "disable_after = \"1s\"\nretry = ");
    let gw = gateway(dir.path(), &outbound, "").await;
    // Each request held 300 ms: at most `max_in_flight` of them at once.
    let wide = Receiver::start(|_| Answer::ok().after(Duration::from_millis(300))).await;
    let paced = Receiver::ok().await;
    // Never answers within the 500 ms timeout.
    let dead = Receiver::start(|_| Answer::ok().after(Duration::from_secs(30))).await;
    let mut ids = HashMap::new();
    for (name, receiver, extra) in [
        ("wide", &wide, json!({"max_in_flight": 3})),
        ("paced", &paced, json!({"rate_limit": "5/s"})),
        ("dead", &dead, json!({})),
    ] {
        let mut body = json!({"name": name, "url": receiver.url("/"), "events": ["github:push"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let created = create(gw.admin_addr, body).await;
        ids.insert(name, created["id"].as_str().unwrap().to_string());
    }

    // Ingest answers at once while the dead endpoint times out.
    let mut accepted_at = HashMap::new();
    let mut slowest = Duration::ZERO;
    for i in 0..EVENTS {
        let id = format!("lim-{i}");
        let began = Instant::now();
        push(gw.ingest_addr, &id).await;
        slowest = slowest.max(began.elapsed());
        accepted_at.insert(id, Instant::now());
    }
    assert!(slowest < 2 * SECOND, "an ingest request took {slowest:?}");

    // max_in_flight: three at a time, never more; and none waits on the dead endpoint.
    let got = wide.wait_for(EVENTS, 10 * SECOND).await;
    assert_eq!(wide.most_in_flight(), 3, "max_in_flight = 3");
    for seen in &got {
        let waited = seen.at - accepted_at[seen.id()];
        assert!(
            waited < 3 * SECOND,
            "{} reached the endpoint {waited:?} after it was accepted",
            seen.id()
        );
    }

    // rate_limit = 5/s: a burst of five, then one each 200 ms.
    let got = paced.wait_for(EVENTS, 10 * SECOND).await;
    let span = got[EVENTS - 1].at - got[0].at;
    assert!(
        span >= Duration::from_millis(900),
        "{EVENTS} deliveries in {span:?} at 5/s"
    );

    // The dead one: every attempt failed for disable_after (1 s), so it is disabled with
    // a reason, its deliveries wait, and the metrics say so.
    let dead_sub = &ids["dead"];
    let disabled = eventually(
        "the dead endpoint's subscription is disabled",
        10 * SECOND,
        async || {
            let sub = get_json(gw.admin_addr, &format!("/v1/subscriptions/{dead_sub}")).await;
            match sub["active"].as_bool() {
                Some(false) => Ok(sub),
                _ => Err(sub.to_string()),
            }
        },
    )
    .await;
    let reason = disabled["disabled_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("every attempt failed for 1s"), "{disabled}");
    assert_eq!(
        sub_metric(gw.admin_addr, "hookgate_subscription_disabled", "dead").await,
        Some(1.0)
    );
    assert_eq!(
        sub_metric(gw.admin_addr, "hookgate_subscription_disabled", "wide").await,
        Some(0.0)
    );
    let pending = sub_metric(gw.admin_addr, "hookgate_delivery_pending", "dead")
        .await
        .unwrap();
    assert!(
        pending >= 1.0,
        "the dead endpoint's deliveries wait: {pending}"
    );
    // The wide one's attempts have all ended: none pending, one latency each.
    eventually(
        "the wide subscription's attempts are counted",
        5 * SECOND,
        async || {
            let pending = sub_metric(gw.admin_addr, "hookgate_delivery_pending", "wide").await;
            let timed = sub_metric(
                gw.admin_addr,
                "hookgate_delivery_attempt_seconds_count",
                "wide",
            )
            .await;
            match (pending, timed) {
                (Some(p), Some(t)) if p == 0.0 && t == EVENTS as f64 => Ok(()),
                other => Err(format!("pending and timed attempts: {other:?}")),
            }
        },
    )
    .await;
    assert!(dead
        .wait_for(1, SECOND)
        .await
        .iter()
        .all(|s| s.answered_with.is_none()));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 7. Attempts exhausted, then a manual retry
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_fail_and_a_manual_retry_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|_| Answer::status(503)).await;
    let sub = create(
        gw.admin_addr,
        json!({"name": "down", "url": receiver.url("/"), "events": ["github:push"]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seq = push(gw.ingest_addr, "down-1").await;

    let failed = wait_delivery(gw.admin_addr, seq, &sub, "failed", 5 * SECOND).await;
    assert_eq!(
        failed["attempt_count"], 3,
        "1 + the 2 listed retries: {failed}"
    );
    assert_eq!(receiver.requests().len(), 3);
    let dlv = failed["id"].as_str().unwrap().to_string();
    let event = wait_event(
        gw.admin_addr,
        "source=hookgate&type=hookgate.delivery.failed",
        5 * SECOND,
    )
    .await;
    assert_eq!(event["payload"]["delivery"], dlv.as_str(), "{event}");
    assert_eq!(event["payload"]["subscription"], sub.as_str(), "{event}");
    let shown = get_json(gw.admin_addr, &format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(shown["failed"], 1, "{shown}");
    assert!(shown["last_failure_at"].is_string(), "{shown}");

    receiver.script(|_| Answer::ok());
    let retry = call(
        gw.admin_addr,
        Method::POST,
        &format!("/v1/deliveries/{dlv}/retry"),
        None,
    )
    .await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{:?}", retry.body);
    let done = wait_delivery(gw.admin_addr, seq, &sub, "delivered", 5 * SECOND).await;
    assert_eq!(done["attempts"].as_array().unwrap().len(), 4, "{done}");
    assert_eq!(receiver.requests().len(), 4);
    assert_eq!(receiver.requests()[3].id(), "down-1");
    let missing = call(
        gw.admin_addr,
        Method::POST,
        "/v1/deliveries/dlv_999_9/retry",
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 8. SSRF
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_without_allow_private() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::ok().await;
    let port = receiver.addr.port();
    // No allow_private. The config-managed one points at a name that resolves to
    // loopback: only the check at connect time can stop it.
    let subs = format!(
        r#"
[[subscriptions]]
name = "internal"
url = "http://localhost:{port}/"
events = ["github:push"]
secret = "{CONFIG_SECRET}"
"#
    );
    let outbound = "[outbound]\ntimeout = \"500ms\"\nretry = [\"200ms\"]\n";
    let gw = gateway(dir.path(), outbound, &subs).await;

    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        "http://10.1.2.3/".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let reply = call(
            gw.admin_addr,
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "sneaky", "url": url, "events": ["*:*"]})),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["error"], "target_not_allowed", "{url}");
    }
    let list = get_json(gw.admin_addr, "/v1/subscriptions").await;
    let names: Vec<&Value> = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["name"])
        .collect();
    assert_eq!(names, [&json!("internal")], "{list}");
    let sub = list["subscriptions"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["subscriptions"][0]["managed"], "config");

    let seq = push(gw.ingest_addr, "ssrf-1").await;
    let failed = wait_delivery(gw.admin_addr, seq, &sub, "failed", 5 * SECOND).await;
    let attempts = failed["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{failed}");
    for a in attempts {
        let error = a["error"].as_str().unwrap_or_default();
        assert!(error.contains("refused"), "not refused: {failed}");
        assert!(a["status_code"].is_null(), "{failed}");
    }
    assert_eq!(
        receiver.requests().len(),
        0,
        "a refused target got a request"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 9. Task modes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_mode_appends_a_finished_event_with_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|_| Answer::json(json!({"build": "ok", "n": 7}))).await;
    let sub = create(
        gw.admin_addr,
        json!({"name": "builder", "url": receiver.url("/"), "events": ["github:push"], "mode": "finish"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seq = push(gw.ingest_addr, "fin-1").await;

    let finished = wait_event(gw.admin_addr, "type=push.finished", 5 * SECOND).await;
    assert_eq!(finished["source"], "builder", "{finished}");
    assert_eq!(
        finished["id"],
        format!("fin-1.finished.{sub}"),
        "{finished}"
    );
    let payload = &finished["payload"];
    assert_eq!(payload["status"], "succeeded", "{finished}");
    assert_eq!(
        payload["result"],
        json!({"build": "ok", "n": 7}),
        "{finished}"
    );
    assert_eq!(payload["subscription"], sub.as_str(), "{finished}");
    assert_eq!(payload["triggered_by"]["id"], "fin-1");
    assert_eq!(payload["triggered_by"]["seq"], seq);
    assert_eq!(payload["triggered_by"]["source"], "github");
    assert_eq!(payload["triggered_by"]["type"], "push");
    wait_delivery(gw.admin_addr, seq, &sub, "delivered", 5 * SECOND).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_mode_finishes_when_the_task_reports_back() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|_| Answer::status(202)).await;
    let sub = create(
        gw.admin_addr,
        json!({"name": "pipeline", "url": receiver.url("/"), "events": ["github:push"], "mode": "callback"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seq = push(gw.ingest_addr, "cb-1").await;

    let seen = receiver.wait_for(1, 5 * SECOND).await.remove(0);
    let url = seen
        .header("hookgate-callback-url")
        .expect("a callback-mode request carries hookgate-callback-url")
        .to_string();
    assert!(url.contains("/callbacks/"), "{url}");
    let waiting = wait_delivery(gw.admin_addr, seq, &sub, "awaiting_callback", 5 * SECOND).await;
    assert!(waiting["callback_deadline"].is_string(), "{waiting}");
    let shown = get_json(gw.admin_addr, &format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(shown["awaiting_callback"], 1, "{shown}");

    // The task reports back at the URL it was given, as the receiver's worker would.
    let report = json!({"status": "succeeded", "result": {"ticket": 42}});
    let answer = client::request(
        Method::POST,
        &url,
        headers(&[("content-type", "application/json")]),
        Bytes::from(report.to_string()),
    )
    .await
    .unwrap_or_else(|e| panic!("the callback URL {url} cannot be reached: {e:#}"));
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.json()["status"], "finished");
    assert_eq!(answer.json()["delivery"], waiting["id"]);

    let done = delivery(gw.admin_addr, seq, &sub).await.unwrap();
    assert_eq!(done["status"], "finished", "{done}");
    let finished = wait_event(gw.admin_addr, "type=push.finished", 5 * SECOND).await;
    assert_eq!(finished["source"], "pipeline");
    assert_eq!(finished["payload"]["status"], "succeeded", "{finished}");
    assert_eq!(finished["payload"]["result"], json!({"ticket": 42}));

    // Single use.
    let again = client::request(
        Method::POST,
        &url,
        headers(&[("content-type", "application/json")]),
        Bytes::from(report.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.json()["error"], "unknown_callback");
    let forged = format!("http://{}/callbacks/{}", gw.ingest_addr, "A".repeat(43));
    let forged = client::request(
        Method::POST,
        &forged,
        HeaderMap::new(),
        Bytes::from(report.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(forged.status, StatusCode::NOT_FOUND);
    assert_eq!(events(gw.admin_addr, "type=push.finished").await.len(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_never_comes_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let outbound = format!("{OUTBOUND}callback_timeout = \"1s\"\n");
    let gw = gateway(dir.path(), &outbound, "").await;
    let receiver = Receiver::ok().await;
    let sub = create(
        gw.admin_addr,
        json!({"name": "forgetful", "url": receiver.url("/"), "events": ["github:push"], "mode": "callback"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seq = push(gw.ingest_addr, "cb-late").await;
    let url = receiver.wait_for(1, 5 * SECOND).await[0]
        .header("hookgate-callback-url")
        .unwrap()
        .to_string();

    let done = wait_delivery(gw.admin_addr, seq, &sub, "timed_out", 6 * SECOND).await;
    assert!(done["callback_deadline"].is_string(), "{done}");
    let finished = wait_event(gw.admin_addr, "type=push.finished", 5 * SECOND).await;
    assert_eq!(finished["payload"]["status"], "timed_out", "{finished}");
    assert_eq!(finished["source"], "forgetful");
    let shown = get_json(gw.admin_addr, &format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(shown["awaiting_callback"], 0, "{shown}");

    // Too late: the token is no longer taken.
    let late = client::request(
        Method::POST,
        &url,
        HeaderMap::new(),
        Bytes::from(r#"{"status":"succeeded"}"#),
    )
    .await;
    if let Ok(late) = late {
        assert_eq!(late.status, StatusCode::NOT_FOUND);
    }
    gw.stop().await;
}

/// The journal's events and the deliveries of `subs`, one line each, for a failure's
/// message.
async fn journal_dump(admin: SocketAddr, subs: &[String]) -> String {
    let mut out = String::from("\nevents:\n");
    for e in events(admin, "limit=1000").await {
        out.push_str(&format!(
            "  {} {} {} {} {}\n",
            e["seq"], e["source"], e["type"], e["id"], e["status"]
        ));
    }
    for sub in subs {
        out.push_str(&format!("deliveries of {sub}:\n"));
        let log = get_json(admin, &format!("/v1/subscriptions/{sub}/deliveries")).await;
        for d in log["deliveries"].as_array().unwrap() {
            out.push_str(&format!("  {d}\n"));
        }
        let shown = get_json(admin, &format!("/v1/subscriptions/{sub}")).await;
        out.push_str(&format!("  {shown}\n"));
    }
    out
}

/// The number of events in the journal.
async fn event_count(admin: SocketAddr) -> usize {
    events(admin, "limit=1000").await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_mode_on_every_event_does_not_loop() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|_| Answer::json(json!({"ok": true}))).await;
    create(
        gw.admin_addr,
        json!({"name": "echo", "url": receiver.url("/"), "events": ["*:*"], "mode": "finish"}),
    )
    .await;
    push(gw.ingest_addr, "loop-1").await;
    wait_event(gw.admin_addr, "type=push.finished", 5 * SECOND).await;
    // A couple of seconds later, still the event and its one `.finished`: the
    // subscription never gets what it produced itself.
    let settle = Instant::now() + 2 * SECOND;
    while Instant::now() < settle {
        let count = event_count(gw.admin_addr).await;
        assert!(
            count <= 2,
            "a finish subscription on *:* loops: {count} events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(event_count(gw.admin_addr).await, 2);
    assert_eq!(receiver.requests().len(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_finish_subscriptions_on_every_event_stop_at_depth_four() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::start(|_| Answer::json(json!({"ok": true}))).await;
    let mut subs = Vec::new();
    for name in ["ping", "pong"] {
        let created = create(
            gw.admin_addr,
            json!({"name": name, "url": receiver.url("/"), "events": ["*:*"], "mode": "finish"}),
        )
        .await;
        subs.push(created["id"].as_str().unwrap().to_string());
    }
    push(gw.ingest_addr, "pingpong-1").await;
    // Each finishes what the other produced: two chains of `.finished`, each stopping at
    // depth 4 (SPEC §10): 1 + 2 × 4 events.
    let deepest = "push.finished.finished.finished.finished";
    eventually("the chains reach depth 4", 8 * SECOND, async || {
        let found = events(gw.admin_addr, &format!("type={deepest}")).await;
        if found.len() == 2 {
            Ok(())
        } else {
            Err(format!(
                "{} at depth 4; {}",
                found.len(),
                journal_dump(gw.admin_addr, &subs).await
            ))
        }
    })
    .await;
    let settle = Instant::now() + 2 * SECOND;
    while Instant::now() < settle {
        let count = event_count(gw.admin_addr).await;
        assert!(count <= 9, "the chain did not stop: {count} events");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(event_count(gw.admin_addr).await, 9);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 10. Pull
// ---------------------------------------------------------------------------------------

/// A subscription without a URL, to GitHub pushes: a pull subscription; its id.
async fn pull_subscription(admin: SocketAddr, name: &str) -> String {
    let created = create(admin, json!({"name": name, "events": ["github:push"]})).await;
    assert_eq!(created["mode"], "pull", "{created}");
    assert!(created["url"].is_null(), "{created}");
    created["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_leases_acks_and_hands_back_an_expired_lease() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let sub = pull_subscription(gw.admin_addr, "worker").await;
    let pull = |query: &str| format!("/v1/subscriptions/{sub}/pull?{query}");

    for i in 0..3 {
        push(gw.ingest_addr, &format!("pull-{i}")).await;
    }
    let first = get_json(gw.admin_addr, &pull("max=2&lease=1s")).await;
    let leased = first["deliveries"].as_array().unwrap().clone();
    assert_eq!(leased.len(), 2, "{first}");
    assert_eq!(leased[0]["event"]["id"], "pull-0");
    assert_eq!(leased[1]["event"]["id"], "pull-1");
    assert_eq!(leased[0]["attempt"], 1, "{first}");
    assert_eq!(
        leased[0]["event"]["payload"],
        json!({"delivery": "pull-0"}),
        "{first}"
    );
    assert!(leased[0]["lease_until"].is_string());

    let ack = call(
        gw.admin_addr,
        Method::POST,
        &format!("/v1/subscriptions/{sub}/ack"),
        Some(json!({"deliveries": [leased[0]["id"]]})),
    )
    .await;
    assert_eq!(ack.status, StatusCode::OK);
    assert_eq!(ack.json()["acked"], 1);

    // Within the lease, only the third is free.
    let second = get_json(gw.admin_addr, &pull("max=10&lease=1s")).await;
    let ids: Vec<&Value> = second["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["event"]["id"])
        .collect();
    assert_eq!(ids, [&json!("pull-2")], "{second}");
    call(
        gw.admin_addr,
        Method::POST,
        &format!("/v1/subscriptions/{sub}/ack"),
        Some(json!({"deliveries": [second["deliveries"][0]["id"]]})),
    )
    .await;

    // After its lease, the unacknowledged one comes back with its attempts counted.
    let back = eventually("the expired lease comes back", 4 * SECOND, async || {
        let page = get_json(gw.admin_addr, &pull("max=10&lease=5s")).await;
        match page["deliveries"].as_array().unwrap().as_slice() {
            [] => Err("nothing".into()),
            found => Ok(found.to_vec()),
        }
    })
    .await;
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0]["event"]["id"], "pull-1");
    assert_eq!(back[0]["attempt"], 2, "{back:?}");
    let acked = call(
        gw.admin_addr,
        Method::POST,
        &format!("/v1/subscriptions/{sub}/ack"),
        Some(json!({"deliveries": [back[0]["id"]]})),
    )
    .await;
    assert_eq!(acked.json()["acked"], 1);
    let seq1 = leased[1]["seq"].as_u64().unwrap();
    let d = delivery(gw.admin_addr, seq1, &sub).await.unwrap();
    assert_eq!(d["status"], "delivered", "{d}");

    // A long poll returns when an event arrives, not at the end of its wait.
    let admin = gw.admin_addr;
    let path = pull("max=5&wait=10s");
    let started = Instant::now();
    let waiting = tokio::spawn(async move { get_json(admin, &path).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiting.is_finished(),
        "the long poll returned with nothing"
    );
    push(gw.ingest_addr, "pull-late").await;
    let page = tokio::time::timeout(3 * SECOND, waiting)
        .await
        .expect("the long poll did not return when an event came")
        .unwrap();
    assert!(started.elapsed() < 5 * SECOND);
    assert_eq!(page["deliveries"][0]["event"]["id"], "pull-late", "{page}");

    // A push subscription cannot be pulled.
    let receiver = Receiver::ok().await;
    let pushed = create(
        gw.admin_addr,
        json!({"name": "pushed", "url": receiver.url("/"), "events": ["github:push"]}),
    )
    .await;
    let refused = call(
        gw.admin_addr,
        Method::GET,
        &format!("/v1/subscriptions/{}/pull", pushed["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    gw.stop().await;
}

/// Ingest takes any JSON text. A pull hands each payload on as it came, also one that
/// serde_json would not parse into a value: a lone surrogate escape, or nesting past
/// its 128 levels. Parsed, such an event was left out of every pull until it failed.
#[tokio::test]
async fn a_pull_hands_on_json_text_that_a_value_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let sub = pull_subscription(gw.admin_addr, "worker").await;
    let surrogate = r#"{"text": "\ud800 alone"}"#;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    send(
        gw.ingest_addr,
        "odd-surrogate",
        "push",
        surrogate.as_bytes(),
    )
    .await;
    send(gw.ingest_addr, "odd-deep", "push", deep.as_bytes()).await;
    push(gw.ingest_addr, "plain").await;

    let path = format!("/v1/subscriptions/{sub}/pull?max=10&lease=30s");
    let reply = call(gw.admin_addr, Method::GET, &path, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert!(
        text.contains(&format!(r#""payload":{surrogate}"#)),
        "the lone surrogate's payload is not handed on as it came: {text}"
    );
    assert!(
        text.contains(&format!(r#""payload":{deep}"#)),
        "the deep payload is not handed on as it came: {text}"
    );
    assert!(text.contains(r#""payload":{"delivery":"plain"}"#), "{text}");
    assert_eq!(text.matches(r#""attempt":1"#).count(), 3, "{text}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_while_events_arrive_leases_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let sub = pull_subscription(gw.admin_addr, "busy-worker").await;
    let total = 200;
    let ingest = gw.ingest_addr;
    // Four senders: there is nearly always an event accepted but not yet flushed.
    let senders: Vec<_> = (0..4)
        .map(|k| {
            tokio::spawn(async move {
                for i in (k..total).step_by(4) {
                    push(ingest, &format!("busy-{i}")).await;
                }
            })
        })
        .collect();
    // A worker pulling (and acking) as fast as it can while events come in: each event
    // must come to it once, on its first lease, however early it asks.
    let mut got: Vec<String> = Vec::new();
    let mut last_seq = 0;
    let deadline = Instant::now() + 10 * SECOND;
    while got.len() < total && Instant::now() < deadline {
        let page = get_json(
            gw.admin_addr,
            &format!("/v1/subscriptions/{sub}/pull?max=50&lease=30s&wait=1s"),
        )
        .await;
        let leased = page["deliveries"].as_array().unwrap();
        let mut ids = Vec::new();
        for d in leased {
            assert_eq!(d["attempt"], 1, "leased twice: {d}");
            let seq = d["seq"].as_u64().unwrap();
            assert!(
                seq > last_seq,
                "leased out of journal order: {seq} after {last_seq}"
            );
            last_seq = seq;
            got.push(d["event"]["id"].as_str().unwrap().to_string());
            ids.push(d["id"].clone());
        }
        if !ids.is_empty() {
            let ack = call(
                gw.admin_addr,
                Method::POST,
                &format!("/v1/subscriptions/{sub}/ack"),
                Some(json!({ "deliveries": ids })),
            )
            .await;
            assert_eq!(ack.json()["acked"], ids.len(), "{:?}", ack.body);
        }
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let expected: Vec<String> = (0..total).map(|i| format!("busy-{i}")).collect();
    let missing: Vec<&String> = expected.iter().filter(|id| !got.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {total} events never leased (left out of a pull, back only after the lease): {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(got.len(), total, "an event was leased twice");
    let shown = get_json(gw.admin_addr, &format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(shown["pending"], 0, "{shown}");
    assert_eq!(shown["delivered"], total, "{shown}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 11. SIGKILL mid-delivery
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_event_is_delivered_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(|_| Answer::ok().after(Duration::from_millis(50))).await;
    let subs = format!(
        r#"
[[subscriptions]]
name = "sink"
url = "{}"
events = ["github:*"]
secret = "{CONFIG_SECRET}"
max_in_flight = 8
"#,
        receiver.url("/sink")
    );
    let config = dir.path().join("hookgate.toml");
    std::fs::write(
        &config,
        config_text(
            dir.path(),
            "",
            &format!("{GITHUB_SOURCE}\n{OUTBOUND}\n{subs}"),
        ),
    )
    .unwrap();

    let mut gw = spawn(&config);
    let ingest = gw.ingest;
    let total = 300;
    let sends: Vec<_> = (0..total)
        .map(|i| {
            tokio::spawn(async move {
                let id = format!("kill-{i}");
                let (headers, body) = github(&id, "push", "application/json", &delivery_body(&id));
                let reply = client::request(
                    Method::POST,
                    &format!("http://{ingest}/hooks/github"),
                    headers,
                    body,
                )
                .await;
                let accepted = matches!(&reply, Ok(r) if r.json()["status"] == "accepted");
                (id, accepted)
            })
        })
        .collect();
    // Killed while deliveries are under way (and maybe while events still come in).
    eventually("some deliveries are made", 10 * SECOND, async || {
        let n = receiver.accepted().len();
        if n >= 60 {
            Ok(())
        } else {
            Err(format!("{n} delivered"))
        }
    })
    .await;
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let before_kill = receiver.accepted().len();

    let mut accepted = Vec::new();
    for send in sends {
        let (id, ok) = send.await.unwrap();
        if ok {
            accepted.push(id);
        }
    }
    assert!(
        accepted.len() >= 60,
        "only {} events accepted",
        accepted.len()
    );
    assert!(
        before_kill < accepted.len(),
        "all {} were delivered before the kill: nothing was left to recover",
        accepted.len()
    );

    let gw = spawn(&config);
    let deadline = Instant::now() + 12 * SECOND;
    loop {
        let got: HashSet<String> = receiver
            .accepted()
            .iter()
            .map(|s| s.id().to_string())
            .collect();
        let missing: Vec<&String> = accepted.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            // What the gateway says of the events that never arrived.
            let listed = events(gw.admin, "limit=1000").await;
            let mut said = String::new();
            for id in missing.iter().take(10) {
                let event = listed.iter().find(|e| e["id"] == id.as_str());
                let deliveries = match event {
                    Some(e) => {
                        get_json(gw.admin, &format!("/v1/events/{}/deliveries", e["seq"])).await
                    }
                    None => json!("not in the journal"),
                };
                let requests = receiver
                    .requests()
                    .iter()
                    .filter(|s| s.id() == id.as_str())
                    .map(|s| format!("{:?}", s.answered_with))
                    .collect::<Vec<_>>();
                said.push_str(&format!(
                    "\n  {id}: event {event:?}\n    deliveries {deliveries}\n    requests {requests:?}"
                ));
            }
            panic!(
                "{} of {} accepted events never reached the receiver after the restart:{said}",
                missing.len(),
                accepted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let mut counts: HashMap<String, usize> = HashMap::new();
    for seen in receiver.accepted() {
        *counts.entry(seen.id().to_string()).or_default() += 1;
    }
    let mut duplicated: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    duplicated.sort();
    println!(
        "accepted {} events; {} delivered before SIGKILL; {} delivered more than once: {:?}",
        accepted.len(),
        before_kill,
        duplicated.len(),
        duplicated
    );
    // Each under its event's id, signed.
    for seen in receiver.accepted() {
        assert!(seen.id().starts_with("kill-"), "{}", seen.id());
        assert!(signed_by(&seen, &[CONFIG_SECRET]), "bad signature");
    }
    drop(gw);
}

// ---------------------------------------------------------------------------------------
// 12. Secret rotation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::ok().await;
    let created = create(
        gw.admin_addr,
        json!({"name": "rotating", "url": receiver.url("/"), "events": ["github:push"]}),
    )
    .await;
    let sub = created["id"].as_str().unwrap().to_string();
    let old = created["secret"].as_str().unwrap().to_string();
    push(gw.ingest_addr, "rot-0").await;
    let before = receiver.wait_for(1, 5 * SECOND).await.remove(0);
    let single = before.header("webhook-signature").unwrap();
    assert_eq!(single.split_whitespace().count(), 1, "{single}");
    assert!(signed_by(&before, &[&old]));

    let new = whsec(42);
    let changed = call(
        gw.admin_addr,
        Method::PATCH,
        &format!("/v1/subscriptions/{sub}"),
        Some(json!({"secret": new})),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
    let shown = get_json(gw.admin_addr, &format!("/v1/subscriptions/{sub}")).await;
    assert!(!shown.to_string().contains(&new), "the new secret is shown");

    push(gw.ingest_addr, "rot-1").await;
    let after = receiver.wait_for(2, 5 * SECOND).await.remove(1);
    assert_eq!(after.id(), "rot-1");
    let header = after.header("webhook-signature").unwrap().to_string();
    let parts: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(parts.len(), 2, "two v1 signatures expected: {header}");
    assert!(parts.iter().all(|p| p.starts_with("v1,")), "{header}");
    assert!(
        signed_by(&after, &[&old]),
        "the old secret no longer verifies"
    );
    assert!(signed_by(&after, &[&new]), "the new secret does not verify");
    assert!(!signed_by(&after, &[&whsec(9)]));
    // Each signature is one of the two secrets', one each.
    let mut matched = Vec::new();
    for part in &parts {
        let mut alone = after.clone();
        alone
            .headers
            .insert("webhook-signature", part.parse().unwrap());
        let by_old = signed_by(&alone, &[&old]);
        let by_new = signed_by(&alone, &[&new]);
        assert!(by_old ^ by_new, "{part}: old {by_old}, new {by_new}");
        matched.push(if by_new { "new" } else { "old" });
    }
    matched.sort();
    assert_eq!(matched, ["new", "old"]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

/// Runs the CLI against `admin`; its stdout, asserting success.
async fn cli(admin: SocketAddr, args: &[&str]) -> String {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend([
        "--admin".to_string(),
        format!("http://{admin}"),
        "-c".to_string(),
        "/nonexistent/hookgate.toml".to_string(),
    ]);
    let run = args.clone();
    let out = tokio::task::spawn_blocking(move || hookgate().args(&run).output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hookgate {:?}: {stdout} {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), OUTBOUND, "").await;
    let receiver = Receiver::ok().await;
    let url = receiver.url("/cli");
    let said = cli(
        gw.admin_addr,
        &[
            "subscriptions",
            "create",
            "--name",
            "from-cli",
            "--url",
            &url,
            "--events",
            "github:push",
            "--header",
            "X-Team=ops",
        ],
    )
    .await;
    assert!(said.contains("created subscription sub_"), "{said}");
    let secret = said
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("no secret printed: {said}"))
        .trim()
        .to_string();
    assert!(secret.starts_with("whsec_"));
    let sub = said
        .split_whitespace()
        .find(|w| w.starts_with("sub_"))
        .unwrap()
        .to_string();

    let table = cli(gw.admin_addr, &["subscriptions", "list"]).await;
    assert!(
        table.contains("from-cli") && table.contains(&url),
        "{table}"
    );
    assert!(!table.contains(&secret));
    let lines = cli(gw.admin_addr, &["subscriptions", "list", "--json"]).await;
    let listed: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(listed["name"], "from-cli");
    let one = cli(gw.admin_addr, &["subscriptions", "show", &sub]).await;
    assert!(one.contains("from-cli"), "{one}");

    let tested = cli(gw.admin_addr, &["subscriptions", "test", &sub]).await;
    assert!(tested.contains("200"), "{tested}");
    let test_request = receiver.wait_for(1, 5 * SECOND).await.remove(0);
    assert_eq!(
        test_request.header("hookgate-event-type"),
        Some("hookgate.test")
    );
    assert!(
        signed_by(&test_request, &[&secret]),
        "the test event is not signed"
    );

    let seq = push(gw.ingest_addr, "cli-1").await;
    let done = wait_delivery(gw.admin_addr, seq, &sub, "delivered", 5 * SECOND).await;
    let dlv = done["id"].as_str().unwrap();
    let log = cli(
        gw.admin_addr,
        &["deliveries", "list", "--subscription", &sub],
    )
    .await;
    assert!(log.contains(dlv) && log.contains("delivered"), "{log}");
    let log = cli(
        gw.admin_addr,
        &["deliveries", "list", "--subscription", &sub, "--json"],
    )
    .await;
    let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["event_id"], "cli-1", "{log}");

    cli(gw.admin_addr, &["deliveries", "retry", dlv]).await;
    eventually(
        "the retried delivery is sent again",
        5 * SECOND,
        async || {
            let n = receiver
                .requests()
                .iter()
                .filter(|s| s.id() == "cli-1")
                .count();
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{n} requests"))
            }
        },
    )
    .await;

    cli(gw.admin_addr, &["subscriptions", "delete", &sub]).await;
    let list = get_json(gw.admin_addr, "/v1/subscriptions").await;
    assert_eq!(list["subscriptions"], json!([]));
    gw.stop().await;
}
