//! The log under attack, from the real binary at its default log level: the starter
//! config forwarding to a real RabbitMQ where no queue is bound (so every publish comes
//! back, and is retried), and a flood of requests with bad signatures. The log must hold
//! no payload and stay short; the metrics still count every refusal.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::rabbit::{amqp_url, Rabbit, BROKER};

const MARKER: &str = "PAYLOAD-MARKER-7f3a9c";
/// Bad requests in the flood: 100k, over a few pipelined connections.
const FLOOD: usize = 100_000;
const CONNECTIONS: usize = 4;

/// Starts `hookgate serve` with nothing but the log format set, its stderr in `log`.
fn spawn(config: &Path, log: &Path) -> (Child, std::net::SocketAddr, std::net::SocketAddr) {
    common::spawn_logged(config, log, &[])
}

/// Writes `count` copies of `request` on one connection without waiting, and reads the
/// answers; answers how many were refused (401 or 429).
async fn pipeline(addr: std::net::SocketAddr, request: Vec<u8>, count: usize) -> usize {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let batch: Vec<u8> = request.repeat(250);
        for _ in 0..count / 250 {
            writer.write_all(&batch).await.unwrap();
        }
        writer
    });
    let mut refused = 0;
    let mut seen = 0;
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while seen < count {
        let n = tokio::time::timeout(Duration::from_secs(30), reader.read(&mut buf))
            .await
            .expect("answers keep coming")
            .unwrap();
        assert!(n > 0, "closed after {seen} answers");
        tail.extend_from_slice(&buf[..n]);
        // Count status lines; keep a short tail in case one is split across reads.
        let mut at = 0;
        while let Some(found) = find(&tail[at..], b"HTTP/1.1 ") {
            let start = at + found;
            if tail.len() < start + 12 {
                break;
            }
            seen += 1;
            if matches!(&tail[start + 9..start + 12], b"401" | b"429") {
                refused += 1;
            }
            at = start + 12;
        }
        // Keep what may be the start of a status line cut off by this read.
        let keep_from = at.max(tail.len().saturating_sub(11));
        tail.drain(..keep_from);
    }
    drop(writing.await.unwrap());
    refused
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    let reply = hookgate::cli::client::get(&format!("http://{admin}/metrics"))
        .await
        .unwrap();
    String::from_utf8_lossy(&reply.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unbound_routing_key_and_a_flood_leave_no_payload_and_a_short_log() {
    let rabbit = Rabbit::connect("logs").await;
    let dir = tempfile::tempdir().unwrap();
    // The starter config as `init` writes it, on free ports, forwarding to an exchange
    // with no queue bound, retrying often.
    let config = hookgate::cli::STARTER
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
        .replace("data/journal", &dir.path().join("j").display().to_string())
        .replace(
            "[journal]",
            &format!(
                "[broker]\nurl = \"{}\"\nexchange = \"{}\"\nretry = {{ initial = \"50ms\", max = \"200ms\" }}\n\n[journal]",
                amqp_url(BROKER),
                rabbit.exchange()
            ),
        );
    let path = dir.path().join("hookgate.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.path().join("hookgate.log");
    let (mut child, ingest, admin) = spawn(&path, &log);

    // One real event: its routing key github.push has no queue, so it comes back.
    let body = format!("{{\"note\":\"{MARKER}\"}}");
    let mut event = hookgate::verify::Outgoing {
        headers: common::headers(&[
            ("content-type", "application/json"),
            ("x-github-delivery", "log-1"),
            ("x-github-event", "push"),
        ]),
        body: body.clone().into_bytes(),
        ..Default::default()
    };
    hookgate::verify::Scheme::Github(Default::default()).sign(
        &hookgate::config::Secret::new("dev-github-secret"),
        &mut event,
        0,
    );
    let reply = common::post(ingest, "/hooks/github", (event.headers, event.body.into())).await;
    assert_eq!(reply.json()["status"], "accepted", "{reply:?}");

    // The flood: the same body, a wrong signature.
    let request = format!(
        "POST /hooks/github HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-github-event: push\r\nx-github-delivery: forged\r\nx-hub-signature-256: sha256={}\r\ncontent-length: {}\r\n\r\n{body}",
        "0".repeat(64),
        body.len()
    )
    .into_bytes();
    let started = Instant::now();
    let floods: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(pipeline(ingest, request.clone(), FLOOD / CONNECTIONS)))
        .collect();
    let mut refused = 0;
    for flood in floods {
        refused += flood.await.unwrap();
    }
    assert_eq!(refused, FLOOD);
    eprintln!("{FLOOD} bad requests answered in {:?}", started.elapsed());

    // Every refusal is counted, and the event came back from the broker more than once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = metrics(admin).await;
        if metric(&text, r#"hookgate_forward_errors_total{reason="returned"}"#) >= 3.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the event never came back:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let counted = metric(
        &text,
        r#"hookgate_requests_total{source="github",code="401"}"#,
    ) + metric(
        &text,
        r#"hookgate_requests_total{source="github",code="429"}"#,
    );
    assert_eq!(counted, FLOOD as f64);

    assert!(common::terminate(&mut child).success());

    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .map(|line| serde_json::from_str(line).expect("log lines are JSON"))
        .collect();
    // As text, or as lapin prints a body: a list of byte values.
    let as_bytes: Vec<String> = MARKER.bytes().map(|b| b.to_string()).collect();
    for shown in [MARKER.to_string(), as_bytes.join(", ")] {
        assert!(
            !logged.contains(&shown),
            "a payload reached the log:\n{logged}"
        );
    }
    assert!(
        lines.len() <= 300,
        "{} log lines for {FLOOD} bad requests",
        lines.len()
    );
    // The index's store says nothing at the default level (at `info`, fjall and
    // lsm-tree print two lines per tree at each opening).
    let from_the_store: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            let target = l["target"].as_str().unwrap_or("");
            target.starts_with("fjall") || target.starts_with("lsm_tree")
        })
        .collect();
    assert!(
        from_the_store.is_empty(),
        "the index's store logged: {from_the_store:?}"
    );
    // Refusals not logged one by one are still accounted for, in summary lines.
    let message =
        |line: &serde_json::Value| line["fields"]["message"].as_str().unwrap_or("").to_string();
    let in_full = lines
        .iter()
        .filter(|l| message(l) == "request rejected")
        .count();
    let left_out: u64 = lines
        .iter()
        .filter(|l| message(l).starts_with("more requests refused"))
        .map(|l| l["fields"]["left_out"].as_u64().unwrap())
        .sum();
    assert_eq!(in_full as u64 + left_out, FLOOD as u64, "{logged}");
}
