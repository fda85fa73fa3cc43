//! End to end over real sockets: every answer of SPEC §6 that this build gives, bodies of
//! every content type read back through the pull API, and dedup under concurrency.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_error(reply: &hookgate::cli::client::Reply, status: StatusCode, code: &str) {
    assert_eq!(
        reply.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.headers["content-type"], "application/json");
    let body = reply.json();
    assert_eq!(body["error"], code, "body: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
}

#[tokio::test]
async fn accepted_then_duplicate_then_listed() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let body = br#"{"action":"opened","number":1}"#;
    let mut request = github("d-1", "pull_request", "application/json", body);
    request.0.append("x-trace", "a".parse().unwrap());
    request.0.append("x-trace", "b".parse().unwrap());
    let first = post(gw.ingest_addr, "/hooks/github", request).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(
        first.json(),
        json!({"status": "accepted", "id": "d-1", "seq": 1})
    );

    let again = post(
        gw.ingest_addr,
        "/hooks/github",
        github("d-1", "pull_request", "application/json", body),
    )
    .await;
    assert_eq!(
        again.json(),
        json!({"status": "duplicate", "id": "d-1", "seq": 1})
    );

    let list = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(list["events"].as_array().unwrap().len(), 1);
    let event = &list["events"][0];
    assert_eq!(event["id"], "d-1");
    assert_eq!(event["source"], "github");
    assert_eq!(event["type"], "pull_request");
    assert_eq!(event["status"], "queued");
    assert_eq!(event["size"], body.len());
    assert_eq!(list["next_after"], 1);

    let full = admin_get(&gw, "/v1/events/1").await.json();
    assert_eq!(full["payload"], json!({"action": "opened", "number": 1}));
    assert_eq!(full["headers"]["x-github-event"], "pull_request");
    assert_eq!(
        full["headers"]["x-trace"], "a, b",
        "a repeated header keeps every value"
    );
    assert_eq!(full["content_type"], "application/json");
    gw.stop().await;
}

#[tokio::test]
async fn verification_failures_are_401_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", &format!("{GITHUB_SOURCE}{STRIPE_SOURCE}")).await;

    let (mut h, b) = github("d-2", "push", "application/json", &delivery_body("d-2"));
    h.remove("x-hub-signature-256");
    assert_error(
        &post(gw.ingest_addr, "/hooks/github", (h, b)).await,
        StatusCode::UNAUTHORIZED,
        "missing_signature",
    );

    let (h, _) = github("d-2", "push", "application/json", &delivery_body("d-2"));
    let tampered = (h, Bytes::from_static(b"{ }"));
    assert_error(
        &post(gw.ingest_addr, "/hooks/github", tampered).await,
        StatusCode::UNAUTHORIZED,
        "invalid_signature",
    );

    let old = SystemTime::now() - Duration::from_secs(600);
    let reply = post(
        gw.ingest_addr,
        "/hooks/stripe",
        stripe(br#"{"id":"evt_old","type":"x"}"#, old),
    )
    .await;
    assert_error(
        &reply,
        StatusCode::UNAUTHORIZED,
        "timestamp_out_of_tolerance",
    );

    let list = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(list["events"], json!([]), "nothing unverified is journaled");
    gw.stop().await;
}

#[tokio::test]
async fn stripe_tolerance_edges_with_an_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let gw = start_at(dir.path(), STRIPE_SOURCE, now).await;
    let inside = post(
        gw.ingest_addr,
        "/hooks/stripe",
        stripe(
            br#"{"id":"evt_in","type":"a"}"#,
            now - Duration::from_secs(300),
        ),
    )
    .await;
    assert_eq!(inside.json()["status"], "accepted");
    let ahead = post(
        gw.ingest_addr,
        "/hooks/stripe",
        stripe(
            br#"{"id":"evt_ahead","type":"a"}"#,
            now + Duration::from_secs(300),
        ),
    )
    .await;
    assert_eq!(ahead.json()["status"], "accepted");
    let outside = post(
        gw.ingest_addr,
        "/hooks/stripe",
        stripe(
            br#"{"id":"evt_out","type":"a"}"#,
            now - Duration::from_secs(301),
        ),
    )
    .await;
    assert_error(
        &outside,
        StatusCode::UNAUTHORIZED,
        "timestamp_out_of_tolerance",
    );
    let future = post(
        gw.ingest_addr,
        "/hooks/stripe",
        stripe(
            br#"{"id":"evt_fut","type":"a"}"#,
            now + Duration::from_secs(301),
        ),
    )
    .await;
    assert_error(
        &future,
        StatusCode::UNAUTHORIZED,
        "timestamp_out_of_tolerance",
    );
    gw.stop().await;
}

#[tokio::test]
async fn routing_method_type_and_body_errors() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let addr = gw.ingest_addr;

    let reply = post(
        addr,
        "/hooks/nope",
        github("d", "e", "application/json", &delivery_body("d")),
    )
    .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "unknown_source");

    let (h, b) = github("d", "e", "application/json", &delivery_body("d"));
    let reply =
        hookgate::cli::client::request(Method::PUT, &format!("http://{addr}/hooks/github"), h, b)
            .await
            .unwrap();
    assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(reply.headers["allow"], "POST");

    let reply = post(
        addr,
        "/hooks/github",
        github("d", "e", "text/plain", b"hello"),
    )
    .await;
    assert_error(
        &reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    let reply = post(
        addr,
        "/hooks/github",
        github("d", "e", "application/json", b"{\"unclosed\":"),
    )
    .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "malformed_body");

    let big = vec![b'x'; 64 * 1024 + 1];
    let reply = post(
        addr,
        "/hooks/github",
        github("d", "e", "application/json", &big),
    )
    .await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let list = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(list["events"], json!([]));
    gw.stop().await;
}

/// A chunked body has no Content-Length: the limit must still hold while streaming.
#[tokio::test]
async fn streamed_body_over_the_limit_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let mut stream = tokio::net::TcpStream::connect(gw.ingest_addr)
        .await
        .unwrap();
    let head = "POST /hooks/github HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 16 * 1024];
    let mut answer = Vec::new();
    for _ in 0..8 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "answer: {text}");
    assert!(text.contains("payload_too_large"), "answer: {text}");
    gw.stop().await;
}

#[tokio::test]
async fn backlog_limit_gives_503_with_retry_after_and_duplicates_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "max_backlog = 2", GITHUB_SOURCE).await;
    for id in ["b-1", "b-2"] {
        let r = post(
            gw.ingest_addr,
            "/hooks/github",
            github(id, "push", "application/json", &delivery_body(id)),
        )
        .await;
        assert_eq!(r.json()["status"], "accepted");
    }
    let full = post(
        gw.ingest_addr,
        "/hooks/github",
        github("b-3", "push", "application/json", &delivery_body("b-3")),
    )
    .await;
    assert_error(&full, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(full.headers.contains_key("retry-after"));
    let dup = post(
        gw.ingest_addr,
        "/hooks/github",
        github("b-1", "push", "application/json", &delivery_body("b-1")),
    )
    .await;
    assert_eq!(dup.json()["status"], "duplicate");
    gw.stop().await;
}

#[tokio::test]
async fn github_form_delivery_xml_and_forms_read_back_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        "{GITHUB_SOURCE}{}",
        r#"
[[sources]]
name = "legacy"
scheme = "token"
secrets = ["tok"]
id = "json:/order/@id"
event_type = "json:/order/kind"

[[sources]]
name = "forms"
scheme = "token"
secrets = ["tok"]
id = "form:EventSid"
event_type = "form:EventType"
"#
    );
    let gw = start(dir.path(), "", &sources).await;

    let inner = r#"{"zen":"Keep it logically awesome.","hook_id":7}"#;
    let form_body = format!("payload={}", percent(inner));
    let reply = post(
        gw.ingest_addr,
        "/hooks/github",
        github(
            "f-1",
            "ping",
            "application/x-www-form-urlencoded",
            form_body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(reply.json()["status"], "accepted");
    let seq = reply.json()["seq"].as_u64().unwrap();
    let event = admin_get(&gw, &format!("/v1/events/{seq}")).await.json();
    assert_eq!(
        event["payload"],
        json!({"zen": "Keep it logically awesome.", "hook_id": 7})
    );
    assert_eq!(event["content_type"], "application/x-www-form-urlencoded");

    let xml = r#"<?xml version="1.0"?><order id="o-9"><kind>paid</kind><line sku="a">1</line><line sku="b">2</line></order>"#;
    let token = |ct: &str| headers(&[("content-type", ct), ("authorization", "Bearer tok")]);
    let reply = post(
        gw.ingest_addr,
        "/hooks/legacy",
        (token("application/xml"), Bytes::from(xml)),
    )
    .await;
    assert_eq!(reply.json()["id"], "o-9");
    let seq = reply.json()["seq"].as_u64().unwrap();
    let event = admin_get(&gw, &format!("/v1/events/{seq}")).await.json();
    assert_eq!(event["type"], "paid");
    assert_eq!(
        event["payload"],
        json!({"order": {"@id": "o-9", "kind": "paid", "line": [{"@sku": "a", "#text": "1"}, {"@sku": "b", "#text": "2"}]}})
    );
    assert!(
        event["headers"].get("authorization").is_none(),
        "the token header is never kept"
    );

    let form = "EventSid=EV1&EventType=call.ended&To=%2B15551234&Tag=a&Tag=b+c";
    let reply = post(
        gw.ingest_addr,
        "/hooks/forms",
        (
            token("application/x-www-form-urlencoded"),
            Bytes::from(form),
        ),
    )
    .await;
    assert_eq!(reply.json()["id"], "EV1");
    let seq = reply.json()["seq"].as_u64().unwrap();
    let event = admin_get(&gw, &format!("/v1/events/{seq}")).await.json();
    assert_eq!(event["type"], "call.ended");
    assert_eq!(
        event["payload"],
        json!({"EventSid": "EV1", "EventType": "call.ended", "To": "+15551234", "Tag": ["a", "b c"]})
    );

    let bomb = r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><l>&b;</l>"#;
    let reply = post(
        gw.ingest_addr,
        "/hooks/legacy",
        (token("text/xml"), Bytes::from(bomb)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "malformed_body");
    gw.stop().await;
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn no_id_means_content_hash_and_older_events_are_stale() {
    let dir = tempfile::tempdir().unwrap();
    let sources = r#"
[[sources]]
name = "plain"
scheme = "token"
secrets = ["tok"]
order_key = "json:/object"
order_timestamp = "json:/at"
"#;
    let gw = start(dir.path(), "", sources).await;
    let send = |body: &'static str| {
        let h = headers(&[
            ("content-type", "application/json"),
            ("authorization", "tok"),
        ]);
        post(gw.ingest_addr, "/hooks/plain", (h, Bytes::from(body)))
    };
    let newer = send(r#"{"object":"cus_1","at":200}"#).await.json();
    assert_eq!(newer["status"], "accepted");
    assert!(newer["id"].as_str().unwrap().starts_with("sha256:"));
    let retry = send(r#"{"object":"cus_1","at":200}"#).await.json();
    assert_eq!(retry["status"], "duplicate");
    assert_eq!(retry["seq"], newer["seq"]);
    let older = send(r#"{"object":"cus_1","at":100}"#).await.json();
    assert_eq!(older["status"], "stale");
    let other_key = send(r#"{"object":"cus_2","at":100}"#).await.json();
    assert_eq!(other_key["status"], "accepted");
    let stale = admin_get(&gw, "/v1/events?status=stale").await.json();
    assert_eq!(stale["events"].as_array().unwrap().len(), 1);
    assert_eq!(stale["events"][0]["seq"], older["seq"]);
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_copies_of_one_event_give_exactly_one_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let addr = gw.ingest_addr;
    let copies: Vec<_> = (0..64)
        .map(|_| {
            tokio::spawn(post(
                addr,
                "/hooks/github",
                github("same-id", "push", "application/json", b"{\"n\":1}"),
            ))
        })
        .collect();
    let mut accepted = 0;
    let mut seqs = std::collections::HashSet::new();
    for copy in copies {
        let body = copy.await.unwrap().json();
        match body["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("duplicate") => {}
            other => panic!("unexpected answer {other:?}: {body}"),
        }
        seqs.insert(body["seq"].as_u64().unwrap());
    }
    assert_eq!(accepted, 1);
    assert_eq!(seqs.len(), 1, "every copy names the one journaled seq");
    let list = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(list["events"].as_array().unwrap().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn slow_headers_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let mut stream = tokio::net::TcpStream::connect(gw.ingest_addr)
        .await
        .unwrap();
    stream
        .write_all(b"POST /hooks/github HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn over_the_rate_limit_is_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let sources = r#"
[[sources]]
name = "github"
scheme = "github"
secrets = ["gh-test-secret"]
rate_limit = "3/m"
"#;
    let gw = start(dir.path(), "", sources).await;
    for i in 0..3 {
        let r = post(
            gw.ingest_addr,
            "/hooks/github",
            github(
                &format!("r-{i}"),
                "push",
                "application/json",
                &delivery_body(format!("r-{i}")),
            ),
        )
        .await;
        assert_eq!(r.json()["status"], "accepted");
    }
    let limited = post(
        gw.ingest_addr,
        "/hooks/github",
        github("r-3", "push", "application/json", &delivery_body("r-3")),
    )
    .await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=20).contains(&wait),
        "one token returns every 20 s; told to wait {wait}s"
    );
    let list = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(list["events"].as_array().unwrap().len(), 3);
    gw.stop().await;
}

/// A captured GitHub request, re-posted under a new delivery id with its headers
/// rewritten in ways that still verify: the signature's digits in capitals, a SHA-1
/// signature added, and (where `allow_sha1` is on) the SHA-256 one taken away.
fn rewritten(
    captured: &(http::HeaderMap, Bytes),
    id: &str,
    change: impl FnOnce(&mut http::HeaderMap),
) -> (http::HeaderMap, Bytes) {
    let mut headers = captured.0.clone();
    headers.insert("x-github-delivery", id.parse().unwrap());
    change(&mut headers);
    (headers, captured.1.clone())
}

/// Checks that `reply` calls its request a duplicate of the first event.
fn assert_duplicate_of_the_first(reply: &hookgate::cli::client::Reply) {
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "duplicate", "{:?}", reply.json());
    assert_eq!(reply.json()["seq"], 1);
}

/// The `X-Hub-Signature` (SHA-1) GitHub sends beside the SHA-256 one, for `body`.
fn sha1_signature(body: &[u8]) -> http::HeaderValue {
    use hookgate::verify::{Github, Outgoing, Scheme};
    let mut out = Outgoing {
        body: body.to_vec(),
        ..Outgoing::default()
    };
    Scheme::Github(Github { allow_sha1: true }).sign(
        &hookgate::config::Secret::new(GITHUB_SECRET),
        &mut out,
        0,
    );
    out.headers["x-hub-signature"].clone()
}

#[tokio::test]
async fn a_re_posted_github_capture_is_a_duplicate_however_its_headers_are_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let body = br#"{"ref":"refs/heads/main","after":"0badc0de"}"#;
    let captured = github("original", "push", "application/json", body);
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let first = post(gw.ingest_addr, "/hooks/github", captured.clone()).await;
    assert_eq!(first.json()["status"], "accepted");
    let upper = rewritten(&captured, "forged-upper", |h| {
        let value = h["x-hub-signature-256"].to_str().unwrap().to_uppercase();
        let value = value.replacen("SHA256=", "sha256=", 1);
        h.insert("x-hub-signature-256", value.parse().unwrap());
    });
    let with_sha1 = rewritten(&captured, "forged-sha1", |h| {
        h.insert("x-hub-signature", sha1_signature(body));
    });
    for forged in [upper, with_sha1] {
        assert_duplicate_of_the_first(&post(gw.ingest_addr, "/hooks/github", forged).await);
    }
    gw.stop().await;

    // The secret rotated: a new one first, the captured request's still accepted.
    let rotated = r#"
[[sources]]
name = "github"
scheme = "github"
secrets = ["gh-next-secret", "gh-test-secret"]
"#;
    let gw = start(dir.path(), "", rotated).await;
    let replayed = post(
        gw.ingest_addr,
        "/hooks/github",
        rewritten(&captured, "forged-after-rotation", |_| {}),
    )
    .await;
    assert_duplicate_of_the_first(&replayed);
    gw.stop().await;

    // With SHA-1 allowed, a capture holding both signatures verifies again without the
    // SHA-256 one: still the same event.
    let dir = tempfile::tempdir().unwrap();
    let allow_sha1 = r#"
[[sources]]
name = "github"
scheme = "github"
secrets = ["gh-test-secret"]
allow_sha1 = true
"#;
    let gw = start(dir.path(), "", allow_sha1).await;
    let both = rewritten(&captured, "original", |h| {
        h.insert("x-hub-signature", sha1_signature(body));
    });
    let first = post(gw.ingest_addr, "/hooks/github", both.clone()).await;
    assert_eq!(first.json()["status"], "accepted");
    let stripped = rewritten(&both, "forged-sha1-only", |h| {
        h.remove("x-hub-signature-256");
    });
    assert_duplicate_of_the_first(&post(gw.ingest_addr, "/hooks/github", stripped).await);
    gw.stop().await;
}

#[tokio::test]
async fn a_captured_github_body_posted_again_under_a_new_delivery_id_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let body = br#"{"ref":"refs/heads/main","after":"abc123"}"#;
    let first = post(
        gw.ingest_addr,
        "/hooks/github",
        github("original", "push", "application/json", body),
    )
    .await;
    assert_eq!(first.json()["status"], "accepted");
    // The signature covers the body only: the delivery id and the event name are the
    // attacker's to choose, and neither makes it a new event.
    for (n, event) in ["push", "release", "deployment"].iter().enumerate() {
        let replayed = post(
            gw.ingest_addr,
            "/hooks/github",
            github(&format!("forged-{n}"), event, "application/json", body),
        )
        .await;
        assert_eq!(replayed.status, StatusCode::OK);
        assert_eq!(
            replayed.json(),
            json!({"status": "duplicate", "id": format!("forged-{n}"), "seq": 1}),
            "it names the event it duplicates"
        );
    }
    // A different body is a different event.
    let other = post(
        gw.ingest_addr,
        "/hooks/github",
        github("next", "push", "application/json", br#"{"after":"def456"}"#),
    )
    .await;
    assert_eq!(other.json()["status"], "accepted");
    gw.stop().await;

    // Remembered across a restart too (the key is in the commit log and the index).
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let replayed = post(
        gw.ingest_addr,
        "/hooks/github",
        github("forged-after-restart", "push", "application/json", body),
    )
    .await;
    assert_eq!(replayed.json()["status"], "duplicate");
    let list = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(list["events"].as_array().unwrap().len(), 2);
    gw.stop().await;
}
