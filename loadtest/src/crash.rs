//! `hookgate-loadtest crash`: cycles of load, SIGKILL of the gateway at a random moment,
//! and restart; then every event acknowledged in any cycle must be in the journal (and,
//! with a broker, in the queue). Reports what was lost (must be 0) and how long each
//! restart took until the gateway answered again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::run::{self, Fate, Plan, Rng};
use crate::verify::{self, Sent};

pub struct Options {
    pub hookgate: PathBuf,
    pub config: PathBuf,
    pub sources: Vec<String>,
    pub cycles: u32,
    pub connections: usize,
    /// The kill comes between these many milliseconds into each cycle's load.
    pub kill_after_ms: (u64, u64),
    pub size: usize,
    pub amqp: Option<(String, String)>,
    pub token: Option<String>,
}

pub struct Outcome {
    pub checked: verify::Checked,
    /// From each start to the first answer of `/healthz`.
    pub recoveries: Vec<Duration>,
}

/// Starts `hookgate serve`, its log (at warn) appended to `log`, or dropped.
pub fn start(hookgate: &Path, config: &Path, log: Option<&Path>) -> anyhow::Result<Child> {
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => Stdio::null(),
    };
    Command::new(hookgate)
        .args(["serve", "-c"])
        .arg(config)
        .env("HOOKGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {}", hookgate.display()))
}

/// Waits until `/healthz` answers; how long that took.
pub async fn answering(admin: &str, child: &mut Child) -> anyhow::Result<Duration> {
    let began = Instant::now();
    loop {
        if let Ok(reply) = hookgate::cli::client::get(&format!("{admin}/healthz")).await {
            if reply.status.is_success() {
                return Ok(began.elapsed());
            }
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("hookgate exited while starting: {status}");
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(60),
            "hookgate did not answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run(options: Options) -> anyhow::Result<Outcome> {
    let (config, sources) = run::sources(&options.config, &options.sources)?;
    let ingest = hookgate::cli::reachable(config.server.listen).to_string();
    let admin = format!("http://{}", hookgate::cli::reachable(config.admin.listen));
    let log = std::env::temp_dir().join(format!("hookgate-crash-{}.log", std::process::id()));
    let mut rng = Rng::seeded();
    let mut sent = Sent::new();
    let mut recoveries = Vec::new();
    let stamp = run::stamp();
    for cycle in 0..options.cycles {
        let mut child = start(&options.hookgate, &options.config, Some(&log))?;
        recoveries.push(answering(&admin, &mut child).await?);
        let stop = Arc::new(AtomicBool::new(false));
        let plan = Plan {
            addr: ingest.clone(),
            sources: sources.clone(),
            connections: options.connections,
            rate: None,
            duration: None,
            count: None,
            duplicates: 0.0,
            size: options.size,
            prefix: format!("crash{stamp}c{cycle}"),
            tls: None,
        };
        let load = tokio::spawn(run::run(plan, stop.clone()));
        let (low, high) = options.kill_after_ms;
        let wait = low + rng.next() % (high.saturating_sub(low) + 1);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().context("cannot SIGKILL hookgate")?;
        child.wait()?;
        // Requests that were on the wire get no answer: they are `unknown`, not acked.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::Release);
        let report = load.await.context("the load task failed")?;
        let acked = report
            .tally
            .ids
            .iter()
            .filter(|(_, _, f)| *f == Fate::Acked)
            .count();
        eprintln!(
            "cycle {}: killed after {wait} ms; {} sent, {acked} acknowledged; restart answered in {:.0} ms",
            cycle + 1,
            report.tally.sent,
            recoveries.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
        for (source, id, fate) in report.tally.ids {
            sent.insert((source, id), fate);
        }
    }
    let mut child = start(&options.hookgate, &options.config, Some(&log))?;
    recoveries.push(answering(&admin, &mut child).await?);
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let found = verify::journal(&admin, options.token.as_deref(), &names).await;
    let queue = match (&options.amqp, &found) {
        (Some((url, queue)), Ok(_)) => {
            // Give the forwarder time to drain what the cycles left queued.
            let drained = drain_wait(&admin, options.token.as_deref()).await;
            match drained {
                Ok(()) => Some(verify::queue(url, queue, Duration::from_secs(3)).await),
                Err(e) => Some(Err(e)),
            }
        }
        _ => None,
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let found = found?;
    let journal = verify::check(&sent, &found);
    let queue = match queue {
        Some(found) => Some(verify::check(&sent, &found?)),
        None => None,
    };
    let checked = verify::Checked { journal, queue };
    if checked.ok() {
        let _ = std::fs::remove_file(&log);
    } else {
        eprintln!("hookgate's log: {}", log.display());
    }
    Ok(Outcome {
        checked,
        recoveries,
    })
}

/// Waits until nothing is queued in the journal.
pub async fn drain_wait(admin: &str, token: Option<&str>) -> anyhow::Result<()> {
    let began = Instant::now();
    loop {
        let mut headers = http::HeaderMap::new();
        if let Some(token) = token {
            headers.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {token}"))?,
            );
        }
        let reply = hookgate::cli::client::request(
            http::Method::GET,
            &format!("{admin}/v1/events?status=queued&limit=1"),
            headers,
            bytes::Bytes::new(),
        )
        .await?;
        if reply.json()["events"]
            .as_array()
            .is_some_and(|events| events.is_empty())
        {
            return Ok(());
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(120),
            "events were still queued after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
