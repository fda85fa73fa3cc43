//! Signatures and secrets stay in (issue 15): neither the admin API nor the AMQP message
//! hands out a request's signature, token or credentials, whether the event was journaled
//! now or by an older build that kept them; `drop_headers` drops more. Real gateway, real
//! RabbitMQ.

mod common;

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use common::rabbit::{amqp_url, header_text, Rabbit, BROKER};
use common::*;
use hookgate::journal::{self, Journal, NewEvent};

const WAIT: Duration = Duration::from_secs(30);

/// Never to be shown or forwarded.
const WITHHELD: &[&str] = &[
    "x-hub-signature-256",
    "x-hub-signature",
    "authorization",
    "cookie",
    "x-internal",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signature_or_secret_header_is_shown_or_forwarded() {
    let rabbit = Rabbit::connect("kept-headers").await;
    let queue = rabbit.queue("events");
    let dir = tempfile::tempdir().unwrap();

    // A journal written by a build that kept every header.
    let old = Journal::open(settings(dir.path())).unwrap();
    let headers = [
        ("x-github-event", "push"),
        ("x-hub-signature-256", "sha256=0123abcd"),
        ("x-hub-signature", "sha1=0123abcd"),
        ("authorization", "Basic dXNlcjpwYXNz"),
        ("cookie", "session=abc"),
        ("x-internal", "routing-secret"),
    ];
    old.append(NewEvent {
        source: "github".into(),
        id: "journaled-before".into(),
        event_type: Some("push".into()),
        received_at_ms: hookgate::unix_ms(SystemTime::now()),
        event_ts: None,
        order: None,
        content_type: "application/json".into(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into(),
        client_identity: None,
        body: Bytes::from_static(b"{}"),
        normalised: None,
        replay_key: None,
    })
    .await
    .unwrap();
    old.close().await;
    drop(old);

    let sources = format!(
        r#"
[broker]
url = "{}"
exchange = "{}"
retry = {{ initial = "100ms", max = "1s" }}

[[broker.queues]]
name = "{queue}"
bindings = ["github.#"]
kind = "classic"
{GITHUB_SOURCE}drop_headers = ["X-Internal"]
"#,
        amqp_url(BROKER),
        rabbit.exchange()
    );
    let running = start(dir.path(), "", &sources).await;
    let started = Instant::now();
    while admin_get(&running, "/readyz").await.status != 200 {
        assert!(started.elapsed() < WAIT, "the gateway never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = rabbit.collect(&queue).await;

    // A fresh delivery, signed, with credentials and a header the source drops.
    let (mut request, body) = github(
        "posted-now",
        "push",
        "application/json",
        &delivery_body("posted-now"),
    );
    for (name, value) in &headers[3..] {
        request.insert(*name, value.parse().unwrap());
    }
    assert!(request.contains_key("x-hub-signature-256"));
    let reply = post(running.ingest_addr, "/hooks/github", (request, body)).await;
    assert_eq!(reply.json()["status"], "accepted");
    assert_eq!(reply.json()["seq"], 2);

    for seq in [1, 2] {
        let shown = admin_get(&running, &format!("/v1/events/{seq}"))
            .await
            .json();
        let names: Vec<&String> = shown["headers"].as_object().unwrap().keys().collect();
        assert!(
            names.iter().any(|n| *n == "x-github-event"),
            "event {seq}: {names:?}"
        );
        for name in WITHHELD {
            assert!(!names.iter().any(|n| n == name), "event {seq} shows {name}");
        }
    }

    got.wait_for(WAIT, "both events", |d| d.len() >= 2).await;
    for delivery in got.0.lock().unwrap().iter() {
        let id = delivery.properties.message_id().clone().unwrap();
        assert_eq!(
            header_text(delivery, "http_x-github-event").as_deref(),
            Some("push"),
            "{id}"
        );
        for name in WITHHELD {
            let key = format!("http_{name}");
            assert_eq!(header_text(delivery, &key), None, "{id} carries {key}");
        }
    }
    running.stop().await;

    // What is on disk: the new event was journaled without them; the old journal is not
    // rewritten (it is filtered when read).
    let reopened = Journal::open(settings(dir.path())).unwrap();
    let stored = |seq| -> Vec<String> {
        let record = reopened.get(seq).unwrap().unwrap();
        record.headers.into_iter().map(|(n, _)| n).collect()
    };
    let new = stored(2);
    assert!(new.iter().any(|n| n == "x-github-event"), "{new:?}");
    for name in WITHHELD {
        assert!(!new.iter().any(|n| n == name), "{name} was journaled");
    }
    assert!(stored(1).iter().any(|n| n == "x-hub-signature-256"));
    reopened.close().await;
}

fn settings(dir: &std::path::Path) -> journal::Settings {
    journal::Settings {
        dedup_window: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        max_backlog: 1000,
        ..journal_settings(&dir.join("journal"), false)
    }
}
