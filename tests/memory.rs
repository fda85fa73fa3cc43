//! The memory budget against the real binary: 600 connections each sending all but the
//! last byte of a 1 MiB body, then holding it. hookgate keeps at most
//! `server.max_inflight_bytes` of them in memory (the rest wait in the kernel's socket
//! buffers), and a normal request on a new connection is still answered (once the
//! holders' `request_timeout` is up, if not at once).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HOLDERS: usize = 600;
const BODY: usize = 1 << 20;

fn config(dir: &Path, budget: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body = "1MiB"
request_timeout = "8s"
max_inflight_bytes = "{budget}"

[admin]
listen = "127.0.0.1:0"

[journal]
path = "{}"

{GITHUB_SOURCE}
"#,
        dir.join("journal").display()
    );
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Opens a connection, sends headers for a 1 MiB body and all of it but the last byte,
/// and holds it until `hold` ends; answers how much it managed to send.
async fn hold_a_body(addr: std::net::SocketAddr, n: usize, hold: Duration) -> usize {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return 0;
    };
    let head = format!(
        "POST /hooks/github HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\nx-github-delivery: hold-{n}\r\nx-github-event: push\r\ncontent-length: {BODY}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    let until = Instant::now() + hold;
    while sent < BODY - 1 {
        let take = chunk.len().min(BODY - 1 - sent);
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.write_all(&chunk[..take])).await {
            Ok(Ok(())) => sent += take,
            _ => return sent,
        }
    }
    tokio::time::sleep_until(until.into()).await;
    sent
}

async fn run(budget: &str) -> (u64, reqwest_like::Answer) {
    let dir = tempfile::tempdir().unwrap();
    let gateway = spawn(&config(dir.path(), budget));
    let hold = Duration::from_secs(6);
    let holders: Vec<_> = (0..HOLDERS)
        .map(|n| tokio::spawn(hold_a_body(gateway.ingest, n, hold)))
        .collect();
    // Let them send what they can, then a normal request on a connection of its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let reply = post(
        gateway.ingest,
        "/hooks/github",
        github(
            "normal",
            "push",
            "application/json",
            &delivery_body("normal"),
        ),
    )
    .await;
    let answer = reqwest_like::Answer {
        status: reply.status.as_u16(),
        status_text: reply.json()["status"].as_str().unwrap_or("").to_string(),
        took: started.elapsed(),
    };
    let rss = peak_rss_mib(gateway.child.id());
    eprintln!("peak RSS while the bodies are held: {rss} MiB");
    for holder in holders {
        holder.await.unwrap();
    }
    let rss = rss.max(peak_rss_mib(gateway.child.id()));
    (rss, answer)
}

/// What the normal request got.
mod reqwest_like {
    #[derive(Debug)]
    pub struct Answer {
        pub status: u16,
        pub status_text: String,
        pub took: std::time::Duration,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_held_bodies_stay_within_the_budget_and_a_normal_request_is_answered() {
    // 192 MiB rather than the default 256: the debug build this runs idles at 65 MiB
    // (sled's buffers, the binary), and 600 connections cost about 50 MiB beside the
    // bodies, so the default peaks at 370-400 MiB here: too near the line to check.
    let (rss, answer) = run("192MiB").await;
    eprintln!("peak RSS {rss} MiB; the normal request: {answer:?}");
    assert!(
        rss < 400,
        "peak RSS {rss} MiB with 600 bodies of 1 MiB held"
    );
    assert_eq!(
        (answer.status, answer.status_text.as_str()),
        (200, "accepted"),
        "the normal request is accepted once the holders' time is up, if not at once"
    );
    assert!(answer.took < Duration::from_secs(10), "{answer:?}");
}

/// The same load with a budget larger than what the holders send: what the budget saves.
/// Run with `cargo test --test memory -- --ignored` to see the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a comparison, not a check: it takes the process past 600 MiB"]
async fn without_a_real_budget_the_same_load_takes_far_more_memory() {
    let (rss, answer) = run("4GiB").await;
    eprintln!("peak RSS {rss} MiB without a binding budget; the normal request: {answer:?}");
    assert!(rss > 400, "peak RSS {rss} MiB");
}
