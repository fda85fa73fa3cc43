//! SIGHUP against the real binary: a provider's secret is rotated without a restart
//! (add the new one, later drop the old), limits and subscriptions follow the file, a
//! change of listener is reported and waits for a restart, and a config that fails to
//! load leaves the running one in place.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use common::*;
use hookgate::config::Secret;
use hookgate::verify::{Github, Outgoing, Scheme};

/// A GitHub delivery signed with `secret`, with a body of `size` bytes or more.
fn signed(secret: &str, id: &str, size: usize) -> (http::HeaderMap, Bytes) {
    let body = serde_json::json!({ "delivery": id, "pad": "x".repeat(size) }).to_string();
    let mut out = Outgoing {
        headers: headers(&[
            ("content-type", "application/json"),
            ("x-github-delivery", id),
            ("x-github-event", "push"),
        ]),
        body: body.into_bytes(),
        ..Outgoing::default()
    };
    Scheme::Github(Github::default()).sign(&Secret::new(secret), &mut out, 0);
    (out.headers, Bytes::from(out.body))
}

/// The config under test: the github source reads each of `secrets` from a file in
/// `dir`; `extra` goes at the end (sources, subscriptions).
fn config(dir: &Path, listen: &str, max_body: &str, secrets: &[&str], extra: &str) -> String {
    let refs: Vec<String> = secrets
        .iter()
        .map(|name| format!("\"file:{}\"", dir.join(name).display()))
        .collect();
    format!(
        r#"
[server]
listen = "{listen}"
max_body = "{max_body}"

[admin]
listen = "127.0.0.1:0"

[journal]
path = "{}"

[[sources]]
name = "github"
scheme = "github"
secrets = [{}]
{extra}
"#,
        dir.join("journal").display(),
        refs.join(", ")
    )
}

fn hup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends SIGHUP and waits for the `n`th reload outcome (either kind) in the log.
fn reload(pid: u32, log: &Path, n: usize) {
    hup(pid);
    let started = Instant::now();
    loop {
        let done = common::logged(log, "config reloaded").len()
            + common::logged(
                log,
                "config reload failed; the running config stays in place",
            )
            .len();
        if done >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reload outcome logged:\n{}",
            std::fs::read_to_string(log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn status(ingest: std::net::SocketAddr, secret: &str, id: &str, size: usize) -> StatusCode {
    post(ingest, "/hooks/github", signed(secret, id, size))
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_secrets_and_applies_the_file_or_keeps_the_running_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("old"), "old-secret\n").unwrap();
    std::fs::write(d.join("new"), "new-secret\n").unwrap();
    let path = d.join("hookgate.toml");
    let log = d.join("log");
    std::fs::write(&path, config(d, "127.0.0.1:0", "64KiB", &["old"], "")).unwrap();
    let (mut child, ingest, admin) = spawn_logged(&path, &log, &[]);
    let pid = child.id();
    let mut n = 0;
    let mut reloaded = |path: &Path, text: String| {
        std::fs::write(path, text).unwrap();
        n += 1;
        reload(pid, &log, n);
    };

    assert_eq!(
        status(ingest, "old-secret", "r-1", 10).await,
        StatusCode::OK
    );
    assert_eq!(
        status(ingest, "new-secret", "r-2", 10).await,
        StatusCode::UNAUTHORIZED
    );

    // Rotation, step 1: the new secret beside the old one. Both are accepted.
    reloaded(
        &path,
        config(d, "127.0.0.1:0", "64KiB", &["new", "old"], ""),
    );
    assert_eq!(
        status(ingest, "new-secret", "r-3", 10).await,
        StatusCode::OK
    );
    assert_eq!(
        status(ingest, "old-secret", "r-4", 10).await,
        StatusCode::OK
    );

    // Step 2: the old one goes. A lower body limit, a new source and a subscription
    // from the config come with it.
    let extra = r#"
[[sources]]
name = "relay"
scheme = "token"
secrets = ["relay-token"]

[[subscriptions]]
name = "pull-all"
events = ["*:*"]
"#;
    reloaded(&path, config(d, "127.0.0.1:0", "2KiB", &["new"], extra));
    assert_eq!(
        status(ingest, "new-secret", "r-5", 10).await,
        StatusCode::OK
    );
    assert_eq!(
        status(ingest, "old-secret", "r-6", 10).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(ingest, "new-secret", "r-7", 4096).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let relay = post(
        ingest,
        "/hooks/relay",
        (
            headers(&[
                ("content-type", "application/json"),
                ("authorization", "Bearer relay-token"),
            ]),
            Bytes::from_static(b"{\"n\":1}"),
        ),
    )
    .await;
    assert_eq!(relay.status, StatusCode::OK, "{:?}", relay.json());
    let subs = hookgate::cli::client::get(&format!("http://{admin}/v1/subscriptions"))
        .await
        .unwrap()
        .json();
    let names: Vec<&str> = subs["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pull-all"], "{subs}");
    let sources = hookgate::cli::client::get(&format!("http://{admin}/v1/sources"))
        .await
        .unwrap()
        .json();
    assert_eq!(sources["sources"][1]["name"], "relay", "{sources}");
    assert_eq!(sources["sources"][1]["configured"], true, "{sources}");
    let done = common::logged(&log, "config reloaded");
    assert_eq!(done[1]["fields"]["added"], "relay", "{:?}", done[1]);

    // A new listener address and a new journal path are reported and wait for a
    // restart; the rest applies, and events still go to the journal in use.
    let journal = d.join("journal").display().to_string();
    let moved = d.join("elsewhere").display().to_string();
    reloaded(
        &path,
        config(d, "127.0.0.1:1", "2KiB", &["new"], "").replace(&journal, &moved),
    );
    let waiting = common::logged(
        &log,
        "these changes take effect only after a restart; the running values stay",
    );
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["fields"]["keys"], "server.listen, [journal]");
    assert!(
        !d.join("elsewhere").exists(),
        "a journal was opened at the new path"
    );
    assert_eq!(
        status(ingest, "new-secret", "r-8", 10).await,
        StatusCode::OK
    );
    let subs = hookgate::cli::client::get(&format!("http://{admin}/v1/subscriptions"))
        .await
        .unwrap()
        .json();
    assert_eq!(subs["subscriptions"], serde_json::json!([]), "{subs}");

    // Configs that fail to load change nothing, and the log says why: a secret that
    // cannot be read, then a typo.
    reloaded(&path, config(d, "127.0.0.1:0", "64KiB", &["missing"], ""));
    reloaded(
        &path,
        config(d, "127.0.0.1:0", "64KiB", &["new"], "").replace("max_body", "max_bdy"),
    );
    let failed = common::logged(
        &log,
        "config reload failed; the running config stays in place",
    );
    assert_eq!(failed.len(), 2, "{failed:?}");
    let why = failed[0]["fields"]["error"].as_str().unwrap();
    assert!(
        why.contains("source `github`") && why.contains("missing"),
        "{why}"
    );
    let why = failed[1]["fields"]["error"].as_str().unwrap();
    assert!(why.contains("max_bdy"), "{why}");
    assert_eq!(
        status(ingest, "new-secret", "r-9", 10).await,
        StatusCode::OK
    );
    assert_eq!(
        status(ingest, "new-secret", "r-10", 4096).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "the 2 KiB limit of the last good config is still in force"
    );

    // Each reload built the source anew: its requests and events were counted on in
    // the same series (r-1, 3, 4, 5, 8 and 9 accepted; r-2 and 6 refused).
    let metrics = hookgate::cli::client::get(&format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .body;
    let metrics = String::from_utf8_lossy(&metrics);
    for (series, count) in [
        (
            r#"hookgate_requests_total{source="github",code="200"}"#,
            6.0,
        ),
        (
            r#"hookgate_events_total{source="github",status="accepted"}"#,
            6.0,
        ),
        (
            r#"hookgate_requests_total{source="github",code="401"}"#,
            2.0,
        ),
        (
            r#"hookgate_events_total{source="relay",status="accepted"}"#,
            1.0,
        ),
    ] {
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse::<f64>().ok());
        assert_eq!(value, Some(count), "{series}:\n{metrics}");
    }

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in ["old-secret", "new-secret", "relay-token"] {
        assert!(!text.contains(secret), "{secret} is in the log");
    }
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert!(terminate(&mut child).success());
}
