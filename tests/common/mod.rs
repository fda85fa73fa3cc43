//! Helpers for the end-to-end tests: a gateway on real sockets (port 0) over a real
//! sled journal in a temporary directory, and signed requests built with the schemes'
//! own signing code.
#![allow(dead_code)]

pub mod cluster;
pub mod rabbit;
pub mod receiver;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method};

use hookgate::cli::client::{self, Reply};
use hookgate::config::{Config, Secret};
use hookgate::gateway::{unix_seconds, Clock};
use hookgate::verify::{Github, Outgoing, Scheme};
use hookgate::Running;

pub const GITHUB_SECRET: &str = "gh-test-secret";
pub const STRIPE_SECRET: &str = "whsec_stripe_test";

/// A config listening on free loopback ports, with a journal under `dir`, and `sources`
/// (TOML `[[sources]]` tables) appended. `journal` adds keys to `[journal]`.
pub fn config_text(dir: &Path, journal: &str, sources: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body = "64KiB"
header_read_timeout = "1s"
request_timeout = "3s"
drain_timeout = "3s"

[admin]
listen = "127.0.0.1:0"

[journal]
path = "{}"
{journal}

{sources}
"#,
        dir.join("journal").display()
    )
}

pub const GITHUB_SOURCE: &str = r#"
[[sources]]
name = "github"
scheme = "github"
secrets = ["gh-test-secret"]
"#;

pub const STRIPE_SOURCE: &str = r#"
[[sources]]
name = "stripe"
scheme = "stripe"
secrets = ["whsec_stripe_test"]
tolerance = "5m"
"#;

pub struct FixedClock(pub SystemTime);

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

pub async fn start(dir: &Path, journal: &str, sources: &str) -> Running {
    let config = Config::parse(&config_text(dir, journal, sources)).expect("test config is valid");
    hookgate::start(&config).await.expect("gateway starts")
}

pub async fn start_at(dir: &Path, sources: &str, now: SystemTime) -> Running {
    let config = Config::parse(&config_text(dir, "", sources)).expect("test config is valid");
    hookgate::start_with_clock(&config, Arc::new(FixedClock(now)))
        .await
        .expect("gateway starts")
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    map
}

/// A body of its own for each delivery id, as a provider's bodies are: hookgate takes the
/// same signed bytes under a new unsigned id for a re-post of one event.
pub fn delivery_body(id: impl AsRef<str>) -> Vec<u8> {
    serde_json::json!({ "delivery": id.as_ref() })
        .to_string()
        .into_bytes()
}

/// A GitHub delivery as GitHub signs it.
pub fn github(id: &str, event: &str, content_type: &str, body: &[u8]) -> (HeaderMap, Bytes) {
    let mut out = Outgoing {
        headers: headers(&[
            ("content-type", content_type),
            ("x-github-delivery", id),
            ("x-github-event", event),
        ]),
        body: body.to_vec(),
        ..Outgoing::default()
    };
    Scheme::Github(Github::default()).sign(&Secret::new(GITHUB_SECRET), &mut out, 0);
    (out.headers, Bytes::from(out.body))
}

/// A Stripe event signed at `at`.
pub fn stripe(body: &[u8], at: SystemTime) -> (HeaderMap, Bytes) {
    let mut out = Outgoing {
        headers: headers(&[("content-type", "application/json")]),
        body: body.to_vec(),
        ..Outgoing::default()
    };
    Scheme::Stripe.sign(&Secret::new(STRIPE_SECRET), &mut out, unix_seconds(at));
    (out.headers, Bytes::from(out.body))
}

pub async fn post(addr: std::net::SocketAddr, path: &str, request: (HeaderMap, Bytes)) -> Reply {
    client::request(
        Method::POST,
        &format!("http://{addr}{path}"),
        request.0,
        request.1,
    )
    .await
    .expect("request completes")
}

pub async fn admin_get(running: &Running, path: &str) -> Reply {
    client::get(&format!("http://{}{path}", running.admin_addr))
        .await
        .expect("admin request completes")
}

pub struct Gateway {
    pub child: Child,
    pub ingest: SocketAddr,
    pub admin: SocketAddr,
}

/// A test that fails must not leave its gateway running.
impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `hookgate serve` and reads the bound addresses from its JSON log lines.
pub fn spawn(config: &Path) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["serve", "-c"])
        .arg(config)
        .env("HOOKGATE_LOG_FORMAT", "json")
        .env("HOOKGATE_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the hookgate binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut ingest, mut admin) = (None, None);
    while ingest.is_none() || admin.is_none() {
        let line = lines
            .next()
            .expect("hookgate logged its addresses")
            .unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        let addr = entry["fields"]["addr"].as_str().map(|a| a.parse().unwrap());
        match entry["fields"]["message"].as_str() {
            Some("ingest listening") => ingest = addr,
            Some("admin listening") => admin = addr,
            _ => {}
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Gateway {
        child,
        ingest: ingest.unwrap(),
        admin: admin.unwrap(),
    }
}

/// Runs `hookgate send` for `source` against `url` and asserts the gateway accepted it.
pub fn send_accepted(config: &Path, source: &str, url: &str, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["send", "--source", source, "--url", url])
        .args(extra)
        .arg("-c")
        .arg(config)
        .output()
        .expect("hookgate send runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{source}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"status\":\"accepted\""),
        "{source}: {stdout}"
    );
}

/// `hookgate serve` with its log (JSON, at the default level unless `env` sets one)
/// written to `log`, and its addresses read from it. The caller waits for the child.
#[allow(clippy::zombie_processes)]
pub fn spawn_logged(
    config: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> (Child, SocketAddr, SocketAddr) {
    let file = std::fs::File::create(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["serve", "-c"])
        .arg(config)
        .env_remove("HOOKGATE_LOG")
        .env_remove("RUST_LOG")
        .env_remove("HOOKGATE_LOG_BODIES")
        .env_remove("TOKIO_WORKER_THREADS")
        .env_remove("MIMALLOC_ALLOW_THP")
        .env("HOOKGATE_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stderr(file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let addr = |message: &str| {
            logged(log, message)
                .iter()
                .find_map(|entry| entry["fields"]["addr"].as_str()?.parse().ok())
        };
        if let (Some(ingest), Some(admin)) = (addr("ingest listening"), addr("admin listening")) {
            return (child, ingest, admin);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("hookgate did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of the JSON log `log` whose message is `message`.
pub fn logged(log: &Path, message: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["fields"]["message"] == message)
        .collect()
}

/// Journal settings for opening a test's journal directly (after its gateway stopped,
/// or to drive the library): no disk floor, no backlog limit.
pub fn journal_settings(path: &Path, embedded: bool) -> hookgate::journal::Settings {
    hookgate::journal::Settings {
        path: path.to_path_buf(),
        dedup_window: Duration::from_secs(72 * 3600),
        retention: Duration::from_secs(7 * 24 * 3600),
        max_backlog: u64::MAX,
        max_backlog_bytes: None,
        min_free: hookgate::journal::MinFree::Bytes(0),
        embedded,
        stages: None,
        delivery: Default::default(),
        segment_bytes: hookgate::journal::SEGMENT_BYTES,
        index_cache_bytes: hookgate::journal::DEFAULT_INDEX_CACHE,
        group_delay: std::time::Duration::ZERO,
    }
}

/// Sends SIGTERM and waits (at most 30 s) for the process to end.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that the journal remembers every id in `acknowledged` for `source`.
pub fn assert_none_lost<'a>(
    journal: &hookgate::journal::Journal,
    source: &str,
    acknowledged: impl IntoIterator<Item = &'a String>,
) {
    let acknowledged: Vec<&String> = acknowledged.into_iter().collect();
    let lost: Vec<&&String> = acknowledged
        .iter()
        .filter(|id| !journal.remembers(source, id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(20)]
    );
}

/// A loopback port free now (the kernel may hand it out again once it is dropped), and
/// one this test process has not been given before: two configs written one after the
/// other could otherwise name the same port, and the second process to bind it fail
/// while the first answers in its place.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
