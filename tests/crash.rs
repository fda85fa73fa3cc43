//! The promise under a crash: the real binary acknowledges a burst of events, is killed
//! with SIGKILL right after the last answer, and after a restart every acknowledged event
//! is listed and still recognised as a duplicate, under its own id or (a captured body
//! posted again) under a new one.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookgate.toml");
    std::fs::write(&config, config_text(dir.path(), "", GITHUB_SOURCE)).unwrap();

    let mut gw = spawn(&config);
    let addr = gw.ingest;
    let sends: Vec<_> = (0..300)
        .map(|i| {
            tokio::spawn(async move {
                let id = format!("crash-{i}");
                let body = format!("{{\"n\":{i}}}");
                let reply = post(
                    addr,
                    "/hooks/github",
                    github(&id, "push", "application/json", body.as_bytes()),
                )
                .await;
                (id, reply)
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for send in sends {
        let (id, reply) = send.await.unwrap();
        assert_eq!(reply.json()["status"], "accepted", "{id}");
        acknowledged.push(id);
    }
    // No grace: the process dies the moment the last answer is in.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();

    let mut gw = spawn(&config);
    let list = hookgate::cli::client::get(&format!("http://{}/v1/events?limit=1000", gw.admin))
        .await
        .unwrap()
        .json();
    let listed: std::collections::HashSet<String> = list["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !listed.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after SIGKILL: {lost:?}"
    );
    assert_eq!(listed.len(), acknowledged.len());

    for id in acknowledged.iter().step_by(7) {
        let reply = post(
            gw.ingest,
            "/hooks/github",
            github(id, "push", "application/json", &delivery_body(id)),
        )
        .await;
        assert_eq!(reply.json()["status"], "duplicate", "{id} was forgotten");
    }
    // The signature covers the body, not the delivery id: a captured body under a new
    // id is a duplicate too, its replay key found again from the events after the kill.
    for i in (0..300).step_by(11) {
        let reply = post(
            gw.ingest,
            "/hooks/github",
            github(
                &format!("forged-{i}"),
                "push",
                "application/json",
                format!("{{\"n\":{i}}}").as_bytes(),
            ),
        )
        .await;
        assert_eq!(
            reply.json()["status"],
            "duplicate",
            "the body of crash-{i} was taken again under a new id"
        );
    }
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
}

#[test]
fn sigterm_stops_gracefully_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookgate.toml");
    std::fs::write(&config, config_text(dir.path(), "", GITHUB_SOURCE)).unwrap();
    let mut gw = spawn(&config);
    let pid = gw.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "hookgate did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
