//! Operating hookgate: metrics, long polls, replay in embedded mode, `/v1/sources`, the
//! connection and body limits, the `events` subcommand, SIGTERM under load, and secrets
//! kept out of logs and admin answers.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use hookgate::cli::client::{self, Reply};

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

async fn metrics_text(admin: SocketAddr) -> String {
    let reply = client::get(&format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    String::from_utf8(reply.body.to_vec()).unwrap()
}

async fn admin_call(admin: SocketAddr, method: Method, path: &str) -> Reply {
    client::request(
        method,
        &format!("http://{admin}{path}"),
        HeaderMap::new(),
        Bytes::new(),
    )
    .await
    .unwrap()
}

fn seqs(page: &serde_json::Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

async fn post_push(addr: SocketAddr, id: &str) -> Reply {
    post(
        addr,
        "/hooks/github",
        github(
            id,
            "push",
            "application/json",
            format!(r#"{{"ref":"main","delivery":"{id}"}}"#).as_bytes(),
        ),
    )
    .await
}

#[tokio::test]
async fn metrics_are_served_and_move() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let before = metrics_text(gw.admin_addr).await;
    for name in [
        "hookgate_requests",
        "hookgate_events",
        "hookgate_verify_failures",
        "hookgate_ack_seconds",
        "hookgate_journal_backlog",
        "hookgate_forward_published",
        "hookgate_forward_errors",
        "hookgate_broker_connected",
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{before}"
        );
    }
    assert_eq!(sample(&before, "hookgate_ack_seconds_count"), Some(0.0));
    assert_eq!(sample(&before, "hookgate_broker_connected"), Some(0.0));

    assert_eq!(
        post_push(gw.ingest_addr, "m-1").await.status,
        StatusCode::OK
    );
    assert_eq!(
        post_push(gw.ingest_addr, "m-1").await.json()["status"],
        "duplicate"
    );
    let (headers, _) = github("m-2", "push", "application/json", &delivery_body("m-2"));
    let forged = post(
        gw.ingest_addr,
        "/hooks/github",
        (headers, Bytes::from_static(b"{\"changed\":1}")),
    )
    .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let stranger = post_push(gw.ingest_addr, "m-3").await;
    assert_eq!(stranger.status, StatusCode::OK);
    let nowhere = post(
        gw.ingest_addr,
        "/hooks/no-such-source-xyz",
        github("m-4", "push", "application/json", &delivery_body("m-4")),
    )
    .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);

    let after = metrics_text(gw.admin_addr).await;
    let value =
        |series: &str| sample(&after, series).unwrap_or_else(|| panic!("{series}:\n{after}"));
    assert_eq!(
        value(r#"hookgate_requests_total{source="github",code="200"}"#),
        3.0
    );
    assert_eq!(
        value(r#"hookgate_requests_total{source="github",code="401"}"#),
        1.0
    );
    assert_eq!(
        value(r#"hookgate_requests_total{source="(unknown)",code="404"}"#),
        1.0
    );
    assert_eq!(
        value(r#"hookgate_events_total{source="github",status="accepted"}"#),
        2.0
    );
    assert_eq!(
        value(r#"hookgate_events_total{source="github",status="duplicate"}"#),
        1.0
    );
    assert_eq!(
        value(r#"hookgate_verify_failures_total{source="github",reason="invalid_signature"}"#),
        1.0
    );
    assert_eq!(value("hookgate_ack_seconds_count"), 5.0);
    assert_eq!(value(r#"hookgate_ack_seconds_bucket{le="+Inf"}"#), 5.0);
    assert_eq!(value("hookgate_journal_backlog"), 2.0);
    // Group commit ran: at least one group and one sync, each timed.
    assert!(value("hookgate_journal_group_seconds_count") >= 1.0);
    assert!(
        value("hookgate_journal_group_commands_sum") >= 3.0,
        "three appends"
    );
    assert!(value("hookgate_journal_sync_seconds_count") >= 1.0);
    assert!(
        !after.contains("no-such-source-xyz"),
        "an unknown path never becomes a label"
    );
    gw.stop().await;
}

#[tokio::test]
async fn long_polls_return_on_a_new_event_and_time_out_empty() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", &format!("{GITHUB_SOURCE}{STRIPE_SOURCE}")).await;
    let admin = gw.admin_addr;

    let started = Instant::now();
    let empty = admin_call(admin, Method::GET, "/v1/events?wait=500ms").await;
    let waited = started.elapsed();
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(seqs(&empty.json()), Vec::<u64>::new());
    assert_eq!(empty.json()["next_after"], 0);
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "an empty wait of 500ms took {waited:?}"
    );

    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let page = admin_call(admin, Method::GET, "/v1/events?after=latest&wait=20s").await;
        (page.json(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the poll waits for an event");
    assert_eq!(
        post_push(gw.ingest_addr, "lp-1").await.status,
        StatusCode::OK
    );
    let (page, waited) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the poll answered when the event arrived")
        .unwrap();
    assert_eq!(seqs(&page), vec![1]);
    assert_eq!(page["events"][0]["id"], "lp-1");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");

    // A filtered poll waits for a matching event; others only move its cursor.
    let poll = tokio::spawn(async move {
        admin_call(
            admin,
            Method::GET,
            "/v1/events?after=1&source=stripe&wait=20s",
        )
        .await
        .json()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        post_push(gw.ingest_addr, "lp-2").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "a github event does not end a stripe poll"
    );
    let charge = br#"{"id":"evt_lp","type":"charge.succeeded"}"#;
    let reply = post(
        gw.ingest_addr,
        "/hooks/stripe",
        stripe(charge, std::time::SystemTime::now()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let page = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the stripe event ended the poll")
        .unwrap();
    assert_eq!(seqs(&page), vec![3]);
    assert_eq!(page["next_after"], 3);

    let too_long = admin_call(admin, Method::GET, "/v1/events?wait=1h").await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
    let nonsense = admin_call(admin, Method::GET, "/v1/events?wait=soon").await;
    assert_eq!(nonsense.status, StatusCode::BAD_REQUEST);

    // A stop does not wait for long polls to run out.
    let poll = tokio::spawn(async move {
        admin_call(admin, Method::GET, "/v1/events?after=latest&wait=60s").await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    gw.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(poll.await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn embedded_replay_appends_a_copy_after_the_readers_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let admin = gw.admin_addr;
    for id in ["e-1", "e-2", "e-3"] {
        assert_eq!(post_push(gw.ingest_addr, id).await.status, StatusCode::OK);
    }
    // A reader has read everything: its cursor is 3.
    let read = admin_call(admin, Method::GET, "/v1/events").await.json();
    assert_eq!(read["next_after"], 3);

    let one = admin_call(admin, Method::POST, "/v1/events/2/replay").await;
    assert_eq!(one.status, StatusCode::ACCEPTED);
    assert_eq!(one.json()["seq"], 2);
    assert_eq!(one.json()["queued_as"], 4);
    let next = admin_call(admin, Method::GET, "/v1/events?after=3")
        .await
        .json();
    assert_eq!(seqs(&next), vec![4]);
    assert_eq!(next["events"][0]["id"], "e-2");
    assert_eq!(next["events"][0]["replay_of"], 2);
    assert_eq!(next["events"][0]["status"], "queued");
    let copy = admin_call(admin, Method::GET, "/v1/events/4").await.json();
    let original = admin_call(admin, Method::GET, "/v1/events/2").await.json();
    assert_eq!(copy["payload"], original["payload"]);
    assert_eq!(copy["headers"], original["headers"]);
    assert!(original.get("replay_of").is_none());

    let missing = admin_call(admin, Method::POST, "/v1/events/99/replay").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "not_found");
    let unnamed = admin_call(admin, Method::POST, "/v1/replay").await;
    assert_eq!(unnamed.status, StatusCode::BAD_REQUEST);
    let future = admin_call(admin, Method::POST, "/v1/replay?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future.json()["replayed"], 0);
    let bad = admin_call(admin, Method::POST, "/v1/replay?since=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let get = admin_call(admin, Method::GET, "/v1/replay?source=github").await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);

    // Bulk: the four events that exist when it starts, not the copies it makes.
    let bulk = admin_call(admin, Method::POST, "/v1/replay?source=github&since=1h").await;
    assert_eq!(bulk.status, StatusCode::OK);
    assert_eq!(bulk.json()["replayed"], 4);
    let copies = admin_call(admin, Method::GET, "/v1/events?after=4")
        .await
        .json();
    assert_eq!(seqs(&copies), vec![5, 6, 7, 8]);
    let of: Vec<u64> = copies["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["replay_of"].as_u64().unwrap())
        .collect();
    assert_eq!(
        of,
        vec![1, 2, 3, 2],
        "a copy of a copy points at the original"
    );

    let sources = admin_call(admin, Method::GET, "/v1/sources").await.json();
    let github = &sources["sources"][0];
    assert_eq!(github["name"], "github");
    assert_eq!(github["scheme"], "github");
    assert_eq!(github["path"], "/hooks/github");
    assert_eq!(github["events"]["queued"], 8);
    assert_eq!(github["events"]["total"], 8);
    assert!(github["last_received_at"].as_str().unwrap().ends_with('Z'));
    assert!(!sources.to_string().contains(GITHUB_SECRET));
    gw.stop().await;

    // The copies and the counts come back after a restart.
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let copy = admin_call(gw.admin_addr, Method::GET, "/v1/events/8")
        .await
        .json();
    assert_eq!(copy["replay_of"], 2);
    let sources = admin_call(gw.admin_addr, Method::GET, "/v1/sources")
        .await
        .json();
    assert_eq!(sources["sources"][0]["events"]["total"], 8);
    gw.stop().await;
}

/// A keep-alive HTTP/1.1 connection that has completed one request.
async fn open_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

fn get_healthz() -> http::Request<Full<Bytes>> {
    http::Request::get("/healthz")
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", GITHUB_SOURCE)
        .replace(
            "header_read_timeout = \"1s\"",
            "header_read_timeout = \"30s\"",
        )
        .replace("[server]\n", "[server]\nmax_connections = 2\n");
    let config = hookgate::config::Config::parse(&text).unwrap();
    let gw = hookgate::start(&config).await.unwrap();
    let addr = gw.ingest_addr;

    let mut first = open_connection(addr).await;
    let mut second = open_connection(addr).await;
    for (sender, _) in [&mut first, &mut second] {
        let request = http::Request::post("/hooks/github")
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = sender.send_request(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        answer.into_body().collect().await.unwrap();
    }
    let metrics = metrics_text(gw.admin_addr).await;
    assert_eq!(
        sample(&metrics, r#"hookgate_connections_open{listener="ingest"}"#),
        Some(2.0)
    );

    // A third connection is taken by the kernel but not served while two are open.
    let (mut third, _) = open_connection(addr).await;
    let waiting = tokio::spawn(async move {
        let answer = third.send_request(get_healthz()).await.unwrap();
        answer.status()
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiting.is_finished(), "the third connection was served");

    let (sender, task) = first;
    drop(sender);
    task.await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "/healthz is not an ingest path"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_body_slower_than_request_timeout_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", GITHUB_SOURCE)
        .replace("request_timeout = \"3s\"", "request_timeout = \"700ms\"");
    let config = hookgate::config::Config::parse(&text).unwrap();
    let gw = hookgate::start(&config).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(gw.ingest_addr)
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /hooks/github HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    let list = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(seqs(&list), Vec::<u64>::new());
    gw.stop().await;
}

/// `hookgate events …` against a running gateway; the token comes from the config file.
fn events_cli(config: &Path, admin: SocketAddr, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .arg("events")
        .args(args)
        .args(["--admin", &format!("http://{admin}"), "-c"])
        .arg(config)
        .env_remove("HOOKGATE_ADMIN_TOKEN")
        .output()
        .expect("hookgate events runs")
}

const ADMIN_TOKEN: &str = "adm-token-7c1f";

fn with_token(dir: &Path, sources: &str) -> String {
    config_text(dir, "", sources).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_subcommand_lists_shows_replays_and_tails() {
    let dir = tempfile::tempdir().unwrap();
    let text = with_token(dir.path(), GITHUB_SOURCE);
    let config_path = dir.path().join("hookgate.toml");
    std::fs::write(&config_path, &text).unwrap();
    let gw = hookgate::start(&hookgate::config::Config::parse(&text).unwrap())
        .await
        .unwrap();
    let admin = gw.admin_addr;
    for id in ["cli-1", "cli-2"] {
        assert_eq!(post_push(gw.ingest_addr, id).await.status, StatusCode::OK);
    }
    let config = config_path.clone();
    let run = move |args: &'static [&'static str]| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || events_cli(&config, admin, args))
    };

    let list = run(&["list"]).await.unwrap();
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two events: {out}");
    let columns: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        columns,
        ["SEQ", "RECEIVED", "SOURCE", "TYPE", "STATUS", "ATTEMPTS", "ID"]
    );
    assert!(lines[1].contains("cli-1") && lines[1].contains("github") && lines[1].contains("push"));
    assert!(lines[2].contains("cli-2"));
    // Each value sits under its column's name.
    for (name, value) in [("SOURCE", "github"), ("ID", "cli-2")] {
        assert_eq!(lines[0].find(name), lines[2].find(value), "{out}");
    }

    let show = run(&["show", "2"]).await.unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).expect("show prints JSON");
    assert_eq!(shown["id"], "cli-2");
    assert_eq!(shown["payload"]["ref"], "main");
    // By the provider's id too.
    let show = run(&["show", "cli-1"]).await.unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).expect("show prints JSON");
    assert_eq!(shown["seq"], 1);
    let missing = run(&["show", "no-such-id"]).await.unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no event has the id `no-such-id`"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // A source filter naming no source is an error, not "no events".
    let typo = run(&["list", "--source", "githb"]).await.unwrap();
    assert!(!typo.status.success());
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(
        said.contains("400 unknown_source") && said.contains("configured: github"),
        "{said}"
    );

    let replay = run(&["replay", "1"]).await.unwrap();
    assert!(replay.status.success());
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout).trim(),
        "event 1 queued again as 3"
    );
    let json = run(&["list", "--json", "--after", "2"]).await.unwrap();
    let copy: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(copy["replay_of"], 1);

    // tail prints events as they arrive after its cursor, one JSON object a line.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args([
            "events",
            "tail",
            "--json",
            "--admin",
            &format!("http://{admin}"),
        ])
        .args(["--token", ADMIN_TOKEN])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = line_tx.send(line.unwrap());
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        post_push(gw.ingest_addr, "cli-3").await.status,
        StatusCode::OK
    );
    let line = tokio::task::spawn_blocking(move || line_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("tail printed the new event");
    let _ = tail.kill();
    let _ = tail.wait();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["id"], "cli-3");
    assert_eq!(event["seq"], 4);

    let all = run(&["replay", "--source", "github"]).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&all.stdout).trim(),
        "4 events queued again"
    );

    let wrong = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["events", "list", "--admin", &format!("http://{admin}")])
        .args(["--token", "not-the-token"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401 unauthorized"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_and_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookgate.toml");
    std::fs::write(&config, config_text(dir.path(), "", GITHUB_SOURCE)).unwrap();
    let (mut child, ingest, _) = spawn_logged(&config, &dir.path().join("log"), &[]);

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..32)
        .map(|sender| {
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for i in 0.. {
                    let id = format!("term-{sender}-{i}");
                    let (headers, body) =
                        github(&id, "push", "application/json", &delivery_body(&id));
                    let url = format!("http://{ingest}/hooks/github");
                    match client::request(Method::POST, &url, headers, body).await {
                        Ok(reply) if reply.status == StatusCode::OK => {
                            assert_eq!(reply.json()["status"], "accepted");
                            acknowledged.lock().unwrap().push(id);
                        }
                        Ok(_) => {}
                        // Once the listener is closed, connections are refused.
                        Err(_) => {
                            refused += 1;
                            if refused > 20 {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_stop = acknowledged.lock().unwrap().len();
    let status = tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        before_stop > 100,
        "only {before_stop} events were sent under load"
    );

    let journal =
        hookgate::journal::Journal::open(journal_settings(&dir.path().join("journal"), true))
            .unwrap();
    assert_none_lost(&journal, "github", &acknowledged);
    let unique: HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(
        journal.backlog(),
        unique.len() as u64,
        "nothing else was journaled"
    );
    journal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_or_an_admin_answer() {
    const GH_SECRET: &str = "gh-SECRET-aaaa1111";
    const STRIPE: &str = "whsec_SECRET-bbbb2222";
    const TOKEN: &str = "tok-SECRET-cccc3333";
    const BROKER_PASSWORD: &str = "pw-SECRET-dddd4444";
    const BODY_MARKER: &str = "BODY-MARKER-eeee5555";
    // GitLab sends its secret itself, in X-Gitlab-Token.
    const GITLAB_TOKEN: &str = "glt-SECRET-ffff6666";
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        "",
        &format!(
            r#"
[[sources]]
name = "github"
scheme = "github"
secrets = ["{GH_SECRET}"]

[[sources]]
name = "stripe"
scheme = "stripe"
secrets = ["env:TEST_STRIPE_SECRET"]

[[sources]]
name = "gitlab"
scheme = "gitlab"
secrets = ["{GITLAB_TOKEN}"]
"#
        ),
    )
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"env:TEST_ADMIN_TOKEN\"",
    )
    // Nothing listens on port 9: the forwarder keeps failing and logging it.
    .replace(
        "[journal]",
        &format!(
            "[broker]\nurl = \"amqp://hookgate:{BROKER_PASSWORD}@127.0.0.1:9/%2f\"\nexchange = \"x\"\nretry = {{ initial = \"50ms\", max = \"100ms\" }}\n\n[journal]"
        ),
    );
    let config = dir.path().join("hookgate.toml");
    std::fs::write(&config, text).unwrap();
    let env = [
        ("TEST_STRIPE_SECRET", STRIPE),
        ("TEST_ADMIN_TOKEN", TOKEN),
        ("HOOKGATE_LOG", "trace"),
    ];

    for log_bodies in [false, true] {
        let log = dir.path().join(format!("log-{log_bodies}"));
        let mut env = env.to_vec();
        if log_bodies {
            env.push(("HOOKGATE_LOG_BODIES", "1"));
        }
        let (mut child, ingest, admin) = spawn_logged(&config, &log, &env);
        let mut answers = String::new();
        let body = format!("{{\"note\":\"{BODY_MARKER}\",\"run\":{log_bodies}}}");
        let mut out = hookgate::verify::Outgoing {
            headers: headers(&[
                ("content-type", "application/json"),
                ("x-github-delivery", &format!("s-{log_bodies}")),
                ("x-github-event", "push"),
            ]),
            body: body.clone().into_bytes(),
            ..Default::default()
        };
        hookgate::verify::Scheme::Github(Default::default()).sign(
            &hookgate::config::Secret::new(GH_SECRET),
            &mut out,
            0,
        );
        let reply = post(
            ingest,
            "/hooks/github",
            (out.headers, Bytes::from(out.body)),
        )
        .await;
        assert_eq!(reply.json()["status"], "accepted");
        // Signed with the wrong secret, and a Stripe event signed with the right one.
        let reply = post(
            ingest,
            "/hooks/github",
            github("s-bad", "push", "application/json", body.as_bytes()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        answers.push_str(&String::from_utf8_lossy(&reply.body));
        let mut signed = hookgate::verify::Outgoing {
            headers: headers(&[("content-type", "application/json")]),
            body: format!(r#"{{"id":"evt_s-{log_bodies}","type":"t"}}"#).into_bytes(),
            ..Default::default()
        };
        let now = hookgate::gateway::unix_seconds(std::time::SystemTime::now());
        hookgate::verify::Scheme::Stripe.sign(
            &hookgate::config::Secret::new(STRIPE),
            &mut signed,
            now,
        );
        let reply = post(
            ingest,
            "/hooks/stripe",
            (signed.headers, Bytes::from(signed.body)),
        )
        .await;
        assert_eq!(reply.json()["status"], "accepted");
        let gitlab = headers(&[
            ("content-type", "application/json"),
            ("x-gitlab-token", GITLAB_TOKEN),
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-event-uuid", &format!("gl-{log_bodies}")),
            // A sender may repeat its secret anywhere; it is not kept there either.
            ("x-debug-echo", &format!("token={GITLAB_TOKEN}")),
        ]);
        let reply = post(ingest, "/hooks/gitlab", (gitlab, Bytes::from_static(b"{}"))).await;
        assert_eq!(reply.json()["status"], "accepted");
        let gitlab_seq = reply.json()["seq"].as_u64().unwrap();

        let auth = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
        let shown = format!("/v1/events/{gitlab_seq}");
        let kept = client::request(
            Method::GET,
            &format!("http://{admin}{shown}"),
            auth.clone(),
            Bytes::new(),
        )
        .await
        .unwrap()
        .json();
        assert_eq!(kept["headers"]["x-gitlab-event"], "Push Hook");
        assert!(kept["headers"].get("x-gitlab-token").is_none(), "{kept}");
        assert!(kept["headers"].get("x-debug-echo").is_none(), "{kept}");
        for (method, path) in [
            (Method::GET, "/healthz"),
            (Method::GET, "/readyz"),
            (Method::GET, "/metrics"),
            (Method::GET, "/v1/events"),
            (Method::GET, "/v1/events/1"),
            (Method::GET, "/v1/events/2"),
            (Method::GET, shown.as_str()),
            (Method::GET, "/v1/sources"),
            (Method::POST, "/v1/events/1/replay"),
            (Method::POST, "/v1/replay?source=stripe"),
        ] {
            let reply = client::request(
                method,
                &format!("http://{admin}{path}"),
                auth.clone(),
                Bytes::new(),
            )
            .await
            .unwrap();
            assert!(
                reply.status.as_u16() < 500 || path == "/readyz",
                "{path}: {}",
                reply.status
            );
            answers.push_str(&String::from_utf8_lossy(&reply.body));
        }
        let refused = client::get(&format!("http://{admin}/v1/sources"))
            .await
            .unwrap();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        answers.push_str(&String::from_utf8_lossy(&refused.body));
        // Let the forwarder fail to connect a few times.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let status = tokio::task::spawn_blocking(move || terminate(&mut child))
            .await
            .unwrap();
        assert!(status.success());

        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains("broker unreachable"),
            "the broker failures were logged"
        );
        assert!(
            logged.lines().count() > 20,
            "trace logging is on:\n{logged}"
        );
        for secret in [GH_SECRET, STRIPE, TOKEN, BROKER_PASSWORD, GITLAB_TOKEN] {
            assert!(!logged.contains(secret), "{secret} is in the log");
            assert!(!answers.contains(secret), "{secret} is in an admin answer");
        }
        assert!(answers.contains("invalid_signature") && answers.contains("\"sources\""));
        assert_eq!(
            logged.contains(BODY_MARKER),
            log_bodies,
            "bodies are logged only with HOOKGATE_LOG_BODIES"
        );
    }
}
