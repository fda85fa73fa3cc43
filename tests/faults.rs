//! Faults on a real disk: the journal on a small loop-mounted ext4 volume, filled under
//! load (for real, and down to the `min_free` floor) and freed again, or frozen, against
//! the real binary. Needs root to mount; outside CI a machine that cannot mount skips
//! with a message, in CI (`CI` set) that is a failure.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hookgate::journal::Journal;

/// A small ext4 volume on a loop device, mounted under a temporary directory;
/// unmounted and removed when dropped.
struct Volume {
    _dir: tempfile::TempDir,
    image: PathBuf,
    mount: PathBuf,
}

impl Volume {
    fn new(megabytes: u64) -> Option<Volume> {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("volume.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let made = std::fs::File::create(&image)
            .and_then(|f| f.set_len(megabytes << 20))
            .is_ok()
            && run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()])
            && run(
                "mount",
                &[
                    "-o",
                    "loop",
                    image.to_str().unwrap(),
                    mount.to_str().unwrap(),
                ],
            );
        if !made {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a loop-device ext4 volume (CI runs as root and must)"
            );
            eprintln!("skipped: cannot mount a loop-device ext4 volume here (needs root)");
            return None;
        }
        Some(Volume {
            _dir: dir,
            image,
            mount,
        })
    }

    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.mount)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }

    /// Fills the volume with a file until `leave` bytes are free.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.mount.join("filler");
        let size = self.free().saturating_sub(leave);
        let file = std::fs::File::create(&filler).unwrap();
        // Real blocks, not a hole.
        assert!(run(
            "fallocate",
            &["-l", &size.to_string(), filler.to_str().unwrap()]
        ));
        drop(file);
        filler
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// The volume's filesystem frozen (`fsfreeze`, as a snapshot tool freezes it, or as a
/// disk that stops answering leaves it): every write to it waits. Thawed when dropped.
struct Frozen<'a>(&'a Path);

impl<'a> Frozen<'a> {
    fn new(mount: &'a Path) -> Frozen<'a> {
        assert!(
            run("fsfreeze", &["-f", mount.to_str().unwrap()]),
            "fsfreeze -f (util-linux) works where the volume mounted"
        );
        Frozen(mount)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = run("fsfreeze", &["-u", self.0.to_str().unwrap()]);
    }
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The test's config: `server_keys` and `journal_keys` go into those sections.
fn config(dir: &Path, journal: &Path, server_keys: &str, journal_keys: &str) -> PathBuf {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body = "64KiB"
{server_keys}

[admin]
listen = "127.0.0.1:0"

[journal]
path = "{}"
{journal_keys}

{GITHUB_SOURCE}
"#,
        journal.display()
    );
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What the load saw: the ids answered 200, and how many 503s.
#[derive(Default)]
struct Seen {
    acknowledged: BTreeSet<String>,
    refused: u64,
    refusals: Vec<String>,
}

/// Posts signed GitHub deliveries of about 16 KiB from `workers` tasks until `until`
/// says stop; records what was acknowledged.
async fn load(
    ingest: std::net::SocketAddr,
    prefix: &str,
    workers: usize,
    seen: Arc<Mutex<Seen>>,
    until: impl Fn(&Seen) -> bool + Send + Sync + 'static,
) {
    let until = Arc::new(until);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (seen, until, prefix) = (seen.clone(), until.clone(), prefix.to_string());
            tokio::spawn(async move {
                let pad = "x".repeat(16 * 1024);
                for n in 0.. {
                    if until(&seen.lock().unwrap()) {
                        return;
                    }
                    let id = format!("{prefix}-{w}-{n}");
                    let body = format!(r#"{{"id":"{id}","pad":"{pad}"}}"#);
                    let reply = post(
                        ingest,
                        "/hooks/github",
                        github(&id, "push", "application/json", body.as_bytes()),
                    )
                    .await;
                    let mut seen = seen.lock().unwrap();
                    match reply.status.as_u16() {
                        200 => {
                            seen.acknowledged.insert(id);
                        }
                        503 => {
                            assert!(
                                reply.headers.contains_key("retry-after"),
                                "a 503 says when to retry"
                            );
                            seen.refused += 1;
                            if seen.refusals.len() < 5 {
                                seen.refusals
                                    .push(reply.json()["message"].as_str().unwrap_or("").into());
                            }
                        }
                        other => panic!("unexpected {other}: {:?}", reply.body),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Posts one new delivery every 250 ms until one is accepted; answers how long it took.
async fn until_accepted(ingest: std::net::SocketAddr, prefix: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    for n in 0.. {
        let id = format!("{prefix}-{n}");
        let reply = post(
            ingest,
            "/hooks/github",
            github(&id, "push", "application/json", br#"{"after":"freed"}"#),
        )
        .await;
        if reply.status == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "ingest did not come back within {limit:?}: {:?}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    unreachable!()
}

/// Opens the journal after the gateway stopped and checks that every acknowledged id is
/// in it, readable.
fn nothing_acknowledged_is_lost(journal: &Path, acknowledged: &BTreeSet<String>) {
    let journal = Journal::open(journal_settings(journal, true)).unwrap();
    assert_none_lost(&journal, "github", acknowledged);
    let mut after = 0;
    let mut read = 0;
    loop {
        let (page, next) = journal
            .list(&hookgate::journal::ListFilter {
                after,
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        for summary in &page {
            journal.get(summary.seq).unwrap().expect("readable");
            read += 1;
        }
        if page.is_empty() {
            break;
        }
        after = next;
    }
    assert!(read >= acknowledged.len());
}

fn stop(mut gateway: Gateway) {
    let status = terminate(&mut gateway.child);
    assert!(status.success(), "hookgate stopped cleanly: {status}");
}

#[tokio::test]
async fn a_full_disk_refuses_events_and_ingest_comes_back_once_space_is_freed() {
    let Some(volume) = Volume::new(64) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let journal = volume.mount.join("journal");
    // No floor: the writes themselves fail.
    let gateway = spawn(&config(dir.path(), &journal, "", r#"min_free = "0""#));
    let admin = gateway.admin;
    let filler = volume.fill(3 << 20);

    let seen = Arc::new(Mutex::new(Seen::default()));
    load(gateway.ingest, "full", 8, seen.clone(), |s| {
        s.refused >= 200
    })
    .await;
    {
        let seen = seen.lock().unwrap();
        assert!(
            !seen.acknowledged.is_empty(),
            "some went in before it filled"
        );
        eprintln!(
            "{} acknowledged, {} refused; first refusals: {:?}",
            seen.acknowledged.len(),
            seen.refused,
            seen.refusals
        );
    }
    let ready = hookgate::cli::client::get(&format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status, 503);
    let why = ready.json()["message"].as_str().unwrap_or("").to_string();
    assert!(why.contains("cannot be written"), "{why}");
    let alive = hookgate::cli::client::get(&format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(alive.status, 200, "a full disk is no reason to restart");

    std::fs::remove_file(&filler).unwrap();
    let took = until_accepted(gateway.ingest, "freed", Duration::from_secs(15)).await;
    eprintln!("ingest back {took:?} after the space was freed");
    let ready = hookgate::cli::client::get(&format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    // And it goes on taking events.
    load(gateway.ingest, "after", 4, seen.clone(), |s| {
        s.acknowledged
            .iter()
            .filter(|id| id.starts_with("after"))
            .count()
            >= 100
    })
    .await;

    stop(gateway);
    let acknowledged = seen.lock().unwrap().acknowledged.clone();
    nothing_acknowledged_is_lost(&journal, &acknowledged);
}

#[tokio::test]
async fn below_min_free_new_events_are_refused_before_the_disk_is_full() {
    let Some(volume) = Volume::new(64) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let journal = volume.mount.join("journal");
    let gateway = spawn(&config(dir.path(), &journal, "", r#"min_free = "8MiB""#));
    let admin = gateway.admin;
    let filler = volume.fill(12 << 20);

    let seen = Arc::new(Mutex::new(Seen::default()));
    load(gateway.ingest, "floor", 4, seen.clone(), |s| {
        s.refused >= 20
    })
    .await;
    {
        let seen = seen.lock().unwrap();
        assert!(!seen.acknowledged.is_empty());
        assert!(
            seen.refusals.iter().all(|m| m.contains("journal.min_free")),
            "{:?}",
            seen.refusals
        );
    }
    assert!(
        volume.free() > 4 << 20,
        "refused while there was still room: {} bytes free",
        volume.free()
    );
    let ready = hookgate::cli::client::get(&format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains("journal.min_free"),
        "{:?}",
        ready.body
    );
    let (status, _) = admin_status(admin, "/readyz?scope=ingest").await;
    assert_eq!(status, 503, "not ready for ingest either");
    let metrics = hookgate::cli::client::get(&format!("http://{admin}/metrics"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("hookgate_journal_writable 0"), "{text}");
    assert!(text.contains("hookgate_journal_disk_free_bytes"));

    std::fs::remove_file(&filler).unwrap();
    until_accepted(gateway.ingest, "freed", Duration::from_secs(15)).await;
    stop(gateway);
    let acknowledged = seen.lock().unwrap().acknowledged.clone();
    nothing_acknowledged_is_lost(&journal, &acknowledged);
}

/// A journal whose disk stops answering gets each waiting request answered 503
/// `unavailable` once its own `request_timeout` is up, not left waiting; once the disk
/// answers again, events are taken again, and the one refused is there for its retry.
#[tokio::test]
async fn a_disk_that_stops_answering_gets_503_at_the_request_timeout() {
    let Some(volume) = Volume::new(64) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let journal = volume.mount.join("journal");
    let gateway = spawn(&config(
        dir.path(),
        &journal,
        r#"request_timeout = "1s""#,
        "",
    ));
    // A body of its own for each: GitHub's replay defence takes a known body for a
    // duplicate whatever its delivery id.
    let event = |id: &str| github(id, "push", "application/json", &delivery_body(id));
    let before = post(gateway.ingest, "/hooks/github", event("before-the-freeze")).await;
    assert_eq!(before.status, 200, "{:?}", before.body);
    // Then idle long enough for the journal's watchdog to sleep: the frozen request's
    // group must wake it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Two requests while the disk is frozen: the first reaches the journal's writer and
    // waits there; the second, sent 400 ms later, waits queued behind it. Each is
    // answered at its own deadline, not the first one's, and not past it.
    let (refused, queued) = {
        let _frozen = Frozen::new(&volume.mount);
        let timed = |id: &'static str, after: Duration| async move {
            tokio::time::sleep(after).await;
            let started = Instant::now();
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                post(gateway.ingest, "/hooks/github", event(id)),
            )
            .await
            .expect("an answer within 5 s, with a request_timeout of 1 s");
            (reply, started.elapsed())
        };
        tokio::join!(
            timed("while-frozen", Duration::ZERO),
            timed("queued-behind-it", Duration::from_millis(400))
        )
    };
    for (reply, took) in [&refused, &queued] {
        eprintln!("answered {} after {took:?}: {:?}", reply.status, reply.body);
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert_eq!(reply.json()["error"], "unavailable", "{:?}", reply.body);
        assert!(
            *took >= Duration::from_millis(950) && *took < Duration::from_millis(2500),
            "answered after {took:?}, with a request_timeout of 1 s"
        );
        assert!(reply.headers.contains_key("retry-after"));
    }

    let took = until_accepted(gateway.ingest, "thawed", Duration::from_secs(15)).await;
    eprintln!("ingest back {took:?} after the thaw");
    let retried = post(gateway.ingest, "/hooks/github", event("while-frozen")).await;
    assert_eq!(retried.status, 200, "{:?}", retried.body);
    let status = retried.json()["status"].as_str().unwrap_or("").to_string();
    assert!(
        status == "accepted" || status == "duplicate",
        "the retry of the refused event: {status}"
    );
    stop(gateway);
}

/// Flips one byte of `marker` in the journal's commit log; answers the segment file.
fn flip_in_log(journal: &Path, marker: &str) -> PathBuf {
    for entry in std::fs::read_dir(journal.join("log")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
        {
            bytes[at + marker.len() / 2] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            return path;
        }
    }
    panic!("{marker} is not in the log");
}

async fn admin_status(admin: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let reply = hookgate::cli::client::get(&format!("http://{admin}{path}"))
        .await
        .unwrap();
    (reply.status.as_u16(), reply.json())
}

#[tokio::test]
async fn a_flipped_byte_in_the_log_costs_that_event_only() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let config = config(dir.path(), &journal, "", "");
    let mut gateway = spawn(&config);
    let body = |n: u32| format!(r#"{{"n":{n},"marker":"event-{n:03}-payload-marker"}}"#);
    let posts = (1..=100u32).map(|n| {
        let ingest = gateway.ingest;
        let body = body(n);
        async move {
            let reply = post(
                ingest,
                "/hooks/github",
                github(
                    &format!("d{n}"),
                    "push",
                    "application/json",
                    body.as_bytes(),
                ),
            )
            .await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            (n, reply.json()["seq"].as_u64().unwrap())
        }
    });
    let seqs: Vec<(u32, u64)> = futures_util::future::join_all(posts).await;
    // Killed right after the last answer: the index has likely not flushed it all.
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    flip_in_log(&journal, "event-030-payload-marker");

    let gateway = spawn(&config);
    let (status, page) = admin_status(gateway.admin, "/v1/events?limit=1000").await;
    assert_eq!(status, 200);
    assert_eq!(page["events"].as_array().unwrap().len(), 100, "{page}");
    let damaged_seq = seqs.iter().find(|(n, _)| *n == 30).unwrap().1;
    for &(n, seq) in &seqs {
        let (status, event) = admin_status(gateway.admin, &format!("/v1/events/{seq}")).await;
        if n == 30 {
            assert_eq!(status, 410, "{event}");
            assert_eq!(event["error"], "event_damaged");
            assert!(event["message"].as_str().unwrap().contains("segment"));
        } else {
            assert_eq!(status, 200, "event {n}: {event}");
            assert_eq!(event["payload"]["n"], n);
        }
    }
    // Every other event is still recognised.
    for n in (1..=100u32).filter(|n| *n != 30) {
        let reply = post(
            gateway.ingest,
            "/hooks/github",
            github(
                &format!("d{n}"),
                "push",
                "application/json",
                body(n).as_bytes(),
            ),
        )
        .await;
        assert_eq!(reply.json()["status"], "duplicate", "event {n}");
    }
    let (_, listed) = admin_status(gateway.admin, "/v1/events?status=damaged").await;
    let damaged: Vec<u64> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(damaged, [damaged_seq]);
    let (_, metrics) = (
        0,
        hookgate::cli::client::get(&format!("http://{}/metrics", gateway.admin))
            .await
            .unwrap(),
    );
    assert!(String::from_utf8_lossy(&metrics.body).contains("hookgate_journal_damaged 1"));
    stop(gateway);
}
