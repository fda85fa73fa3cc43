//! Floods against the ingest listener, over real sockets: unsigned requests must not
//! spend a provider's `rate_limit`, failures are limited per client address, and idle
//! kept-alive connections are closed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use hookgate::cli::client::{self, Reply};

const LIMITED_GITHUB: &str = r#"
[[sources]]
name = "github"
scheme = "github"
secrets = ["gh-test-secret"]
rate_limit = "5/s"
"#;

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or_else(|| panic!("no {series} in the metrics"))
}

async fn unsigned(addr: SocketAddr, i: usize) -> Reply {
    let headers = headers(&[
        ("content-type", "application/json"),
        ("x-github-delivery", &format!("forged-{i}")),
        ("x-github-event", "push"),
    ]);
    client::request(
        Method::POST,
        &format!("http://{addr}/hooks/github"),
        headers,
        Bytes::from_static(b"{\"forged\":true}"),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_floods_spend_their_address_budget_not_the_providers() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", LIMITED_GITHUB)
        .replace("[server]\n", "[server]\nfailures_per_address = \"10/m\"\n");
    let config = hookgate::config::Config::parse(&text).unwrap();
    let gw = hookgate::start(&config).await.unwrap();

    // 40 unsigned requests, as fast as one client sends them.
    let mut codes = Vec::new();
    for i in 0..40 {
        let reply = unsigned(gw.ingest_addr, i).await;
        codes.push((
            reply.status,
            reply.json()["error"].as_str().unwrap().to_string(),
        ));
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(reply.headers.contains_key("retry-after"), "{reply:?}");
        }
    }
    let refused = |status: StatusCode| codes.iter().filter(|(s, _)| *s == status).count();
    // The address's 10 failures are answered as such, the rest as rate limited.
    assert_eq!(refused(StatusCode::UNAUTHORIZED), 10, "{codes:?}");
    assert_eq!(refused(StatusCode::TOO_MANY_REQUESTS), 30, "{codes:?}");
    assert!(codes[10..].iter().all(|(_, code)| code == "rate_limited"));

    // The provider's signed delivery, from the same address, is still accepted: the
    // source's 5/s was not spent by the flood, and the address's budget only refuses
    // failures.
    let signed = post(
        gw.ingest_addr,
        "/hooks/github",
        github("real-1", "push", "application/json", b"{\"ref\":\"main\"}"),
    )
    .await;
    assert_eq!(signed.status, StatusCode::OK, "{signed:?}");
    assert_eq!(signed.json()["status"], "accepted");

    let metrics = client::get(&format!("http://{}/metrics", gw.admin_addr))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(
        sample(
            &text,
            r#"hookgate_refused_by_address_total{source="github"}"#
        ),
        30.0
    );
    // Every failure is still counted as one.
    assert_eq!(
        sample(
            &text,
            r#"hookgate_verify_failures_total{source="github",reason="missing_signature"}"#
        ),
        40.0
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_rate_limit_still_holds_for_signed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", LIMITED_GITHUB).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let reply = post(
            gw.ingest_addr,
            "/hooks/github",
            github(
                &format!("d-{i}"),
                "push",
                "application/json",
                &delivery_body(format!("d-{i}")),
            ),
        )
        .await;
        statuses.push(reply.status);
    }
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        limited >= 1,
        "8 signed requests at once exceed 5/s: {statuses:?}"
    );
    gw.stop().await;
}

/// Sends one request on `stream` and reads its whole answer (the tests' bodies are short
/// and their answers carry a content-length).
async fn exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_or_half_a_head_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // header_read_timeout is 1s in the tests' config.
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    for sent in [&b""[..], b"POST /hooks/github HTTP/1.1\r\nhost: x\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(gw.ingest_addr)
            .await
            .unwrap();
        stream.write_all(sent).await.unwrap();
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "sent {} bytes: still open", sent.len());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
            "sent {} bytes: closed after {waited:?}",
            sent.len()
        );
    }
    gw.stop().await;
}

/// Sends `head` a byte every 200 ms until the server closes the connection; answers
/// how long that took (a trickle moves the connection along; it must not keep it open).
async fn trickle(stream: &mut tokio::net::TcpStream, head: &[u8]) -> Duration {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    for byte in head.iter().cycle() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => panic!("answered a head never finished: {:?}", &buf[..n]),
        }
        assert!(started.elapsed() < Duration::from_secs(6), "still open");
    }
    started.elapsed()
}

/// A client that sends its head a byte at a time is cut off like one that sends
/// nothing: on a new connection, and on a kept-alive one after an answered request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_a_byte_at_a_time_is_cut_off_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // header_read_timeout is 1s in the tests' config.
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let head = b"POST /hooks/github HTTP/1.1\r\nhost: x\r\nx-padding: ";
    for kept_alive in [false, true] {
        let mut stream = tokio::net::TcpStream::connect(gw.ingest_addr)
            .await
            .unwrap();
        if kept_alive {
            let answer = exchange(
                &mut stream,
                b"GET /hooks/nowhere HTTP/1.1\r\nhost: x\r\n\r\n",
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        }
        let waited = trickle(&mut stream, head).await;
        // A new connection is checked first a second after it opened, and dropped then
        // (a graceful close would wait another second for the head to end); a kept-alive
        // one at the first check a whole second after its answer.
        let most = Duration::from_millis(if kept_alive { 2600 } else { 1700 });
        assert!(
            waited >= Duration::from_millis(500) && waited < most,
            "kept alive {kept_alive}: closed after {waited:?}"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // header_read_timeout is 1s in the tests' config.
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let mut stream = tokio::net::TcpStream::connect(gw.ingest_addr)
        .await
        .unwrap();
    // Two requests on one connection, each well within the limit: kept alive.
    for _ in 0..2 {
        let answer = exchange(
            &mut stream,
            b"GET /hooks/nowhere HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Then nothing: the connection is closed about a second later.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the idle connection was not closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    gw.stop().await;
}
