//! `hookgate-loadtest deliveries`: what subscriptions cost and how fast they deliver.
//! Signed events go to the gateway at a fixed rate (open loop, as `run --rate`), and N
//! subscriptions matching every event POST them to a local [`sink`]. Two phases in one
//! run, each from a fresh journal:
//!
//! 1. ingest alone, with no subscription: the acknowledgement latency without deliveries;
//! 2. the same ingest with N subscriptions: the acknowledgement latency again, every
//!    delivery's latency from the event's `200` to its arrival at the sink (matched by
//!    `webhook-id`, the event id), deliveries/s, and whether all `accepted × N` arrived
//!    within the drain timeout.
//!
//! By default it starts the gateway binary with a generated config (as `bench` does);
//! with `--config` it uses a running gateway instead, creating its subscriptions through
//! the admin API and deleting them afterwards.

mod report;
mod sink;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use hookgate::source::Source;

use crate::run::{self, Plan, Report};
pub use report::{print, Deliveries};
use sink::Sink;

pub struct Options {
    /// The gateway binary to start.
    pub hookgate: PathBuf,
    /// A running gateway's config: use it instead of starting one.
    pub attach: Option<PathBuf>,
    /// With `attach`: the source to send for (default: the config's first).
    pub source: Option<String>,
    /// With `attach`: the admin API's bearer token.
    pub token: Option<String>,
    pub subscriptions: usize,
    /// Each subscription's `max_in_flight` (default: the gateway's).
    pub max_in_flight: Option<usize>,
    /// Each subscription `ordered`: one delivery in flight, in journal order.
    pub ordered: bool,
    /// Events per second.
    pub rate: f64,
    pub duration: Duration,
    /// The most ingest connections open at once.
    pub connections: usize,
    pub size: usize,
    /// How long deliveries may take to arrive once ingest has ended.
    pub drain: Duration,
}

pub struct Outcome {
    pub subscriptions: usize,
    pub rate: f64,
    /// Ingest with no subscription.
    pub baseline: Report,
    /// Ingest with the subscriptions.
    pub loaded: Report,
    pub deliveries: Deliveries,
}

impl Outcome {
    /// Every accepted event reached every subscription, and no answer contradicted its
    /// request.
    pub fn ok(&self) -> bool {
        self.deliveries.missing() == 0
            && self.baseline.tally.unexpected == 0
            && self.loaded.tally.unexpected == 0
    }
}

const SECRET: &str = "bench-github-secret";

pub async fn run(options: Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        options.subscriptions > 0,
        "--subscriptions must be at least 1"
    );
    anyhow::ensure!(options.rate > 0.0, "--rate must be above 0");
    anyhow::ensure!(options.connections > 0, "--connections must be at least 1");
    let sink = Sink::start().await?;
    match &options.attach {
        None => started(&options, &sink).await,
        Some(config) => attached(&options, config, &sink).await,
    }
}

/// Both phases on gateways this command starts, each with a fresh journal.
async fn started(options: &Options, sink: &Sink) -> anyhow::Result<Outcome> {
    let dir = std::env::temp_dir().join(format!("hookgate-deliveries-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("hookgate.log");
    let phase = |n: usize| {
        let (config, ingest, admin) = config(&dir, n, sink, options)?;
        let child = crate::crash::start(&options.hookgate, &config, Some(&log))?;
        anyhow::Ok((config, ingest, admin, child))
    };

    let (config, ingest, admin, mut child) = phase(0)?;
    let baseline = async {
        crate::crash::answering(&admin, &mut child).await?;
        let (_, sources) = run::sources(&config, &[])?;
        Ok::<_, anyhow::Error>(ingest_at(&ingest, sources, options, "a").await)
    }
    .await;
    stop(&mut child);
    let baseline = baseline?;

    let (config, ingest, admin, mut child) = phase(options.subscriptions)?;
    let loaded = async {
        crate::crash::answering(&admin, &mut child).await?;
        let (_, sources) = run::sources(&config, &[])?;
        Ok::<_, anyhow::Error>(deliver(&ingest, sources, options, sink).await)
    }
    .await;
    stop(&mut child);
    let (loaded, deliveries) = loaded?;
    let outcome = Outcome {
        subscriptions: options.subscriptions,
        rate: options.rate,
        baseline,
        loaded,
        deliveries,
    };
    if outcome.ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("the gateway's log is kept in {}", log.display());
    }
    Ok(outcome)
}

fn stop(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Both phases on the running gateway of `config`: the subscriptions are made through
/// the admin API after the baseline and deleted at the end, whatever happened.
async fn attached(options: &Options, config: &Path, sink: &Sink) -> anyhow::Result<Outcome> {
    let names: Vec<String> = options.source.iter().cloned().collect();
    let (loaded_config, mut sources) = run::sources(config, &names)?;
    sources.truncate(1);
    let source = sources[0].name.clone();
    let ingest = hookgate::cli::reachable(loaded_config.server.listen).to_string();
    let admin = format!(
        "http://{}",
        hookgate::cli::reachable(loaded_config.admin.listen)
    );
    let api = Api {
        base: admin,
        token: options.token.clone(),
    };
    let baseline = ingest_at(&ingest, sources.clone(), options, "a").await;
    let mut made = Vec::new();
    let mut result = Ok(());
    for n in 1..=options.subscriptions {
        match api.create(n, &source, sink, options).await {
            Ok(id) => made.push(id),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let measured = match result {
        Ok(()) => Ok(deliver(&ingest, sources, options, sink).await),
        Err(e) => Err(e),
    };
    for id in made {
        if let Err(e) = api.delete(&id).await {
            eprintln!("cannot delete subscription {id}: {e:#}");
        }
    }
    let (loaded, deliveries) = measured?;
    Ok(Outcome {
        subscriptions: options.subscriptions,
        rate: options.rate,
        baseline,
        loaded,
        deliveries,
    })
}

/// Ingest at the set rate, then wait for the deliveries; what both came to.
async fn deliver(
    ingest: &str,
    sources: Vec<Arc<Source>>,
    options: &Options,
    sink: &Sink,
) -> (Report, Deliveries) {
    sink.clear();
    let began = Instant::now();
    let report = ingest_at(ingest, sources, options, "d").await;
    let ended = Instant::now();
    let expected = report.tally.accepted_at.len() as u64 * options.subscriptions as u64;
    let deadline = ended + options.drain;
    loop {
        // The count is cheap; the exact check (every accepted id at every subscription)
        // only once it can succeed, as unrelated events may arrive too.
        if sink.unique() >= expected
            && sink.with_seen(|seen| {
                report::missing(seen, &report.tally.accepted_at, options.subscriptions) == 0
            })
        {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deliveries = sink.with_seen(|seen| {
        Deliveries::tally(
            seen,
            &report.tally.accepted_at,
            options.subscriptions,
            began,
            ended,
        )
    });
    (report, deliveries)
}

/// Open-loop ingest at `options.rate` for `options.duration`, unique ids.
async fn ingest_at(
    addr: &str,
    sources: Vec<Arc<Source>>,
    options: &Options,
    label: &str,
) -> Report {
    let stamp = run::stamp();
    let plan = Plan {
        addr: addr.to_string(),
        sources,
        connections: options.connections,
        rate: Some(options.rate),
        duration: Some(options.duration),
        count: None,
        duplicates: 0.0,
        size: options.size,
        prefix: format!("dlv{label}{stamp}"),
        tls: None,
    };
    run::run(plan, Default::default()).await
}

/// A gateway config in `dir` with one GitHub source and `n` subscriptions to the sink,
/// each matching every event; its path and the ingest and admin addresses.
fn config(
    dir: &Path,
    n: usize,
    sink: &Sink,
    options: &Options,
) -> anyhow::Result<(PathBuf, String, String)> {
    let ingest = format!("127.0.0.1:{}", crate::bench::free_port()?);
    let admin = format!("127.0.0.1:{}", crate::bench::free_port()?);
    let mut text = format!(
        "[server]\nlisten = \"{ingest}\"\n\n[admin]\nlisten = \"{admin}\"\n\n[journal]\npath = \"{}\"\nmax_backlog = 100000000\n\n[[sources]]\nname = \"github\"\nscheme = \"github\"\nsecrets = [\"{SECRET}\"]\n\n[outbound]\nallow_private = [\"127.0.0.0/8\"]\n",
        dir.join(format!("journal-{n}")).display()
    );
    for i in 1..=n {
        text.push_str(&format!(
            "\n[[subscriptions]]\nname = \"sink-{i}\"\nurl = \"{}\"\nevents = [\"*:*\"]\nsecret = \"{}\"\n",
            sink.url(i),
            hookgate::deliver::sign::new_secret()
        ));
        if let Some(m) = options.max_in_flight {
            text.push_str(&format!("max_in_flight = {m}\n"));
        }
        if options.ordered {
            text.push_str("ordered = true\n");
        }
    }
    let path = dir.join(format!("deliveries-{n}.toml"));
    std::fs::write(&path, text)?;
    Ok((path, ingest, format!("http://{admin}")))
}

/// The admin API of a running gateway, for the subscriptions of an attached run.
struct Api {
    base: String,
    token: Option<String>,
}

impl Api {
    fn headers(&self) -> anyhow::Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(token) = &self.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the admin token is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        Ok(headers)
    }

    /// Creates subscription `n` to the sink for every event of `source`; its id.
    async fn create(
        &self,
        n: usize,
        source: &str,
        sink: &Sink,
        options: &Options,
    ) -> anyhow::Result<String> {
        let mut body = serde_json::json!({
            "name": format!("loadtest-sink-{}-{n}", std::process::id()),
            "url": sink.url(n),
            "events": [format!("{source}:*")],
        });
        if let Some(m) = options.max_in_flight {
            body["max_in_flight"] = m.into();
        }
        if options.ordered {
            body["ordered"] = true.into();
        }
        let reply = hookgate::cli::client::request(
            Method::POST,
            &format!("{}/v1/subscriptions", self.base),
            self.headers()?,
            Bytes::from(body.to_string()),
        )
        .await?;
        let json = reply.json();
        anyhow::ensure!(
            reply.status == http::StatusCode::CREATED,
            "creating a subscription answered {}: {} (the gateway's [outbound] allow_private must include 127.0.0.0/8)",
            reply.status,
            json["message"].as_str().unwrap_or("")
        );
        json["id"]
            .as_str()
            .map(str::to_string)
            .context("the created subscription has no id")
    }

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let reply = hookgate::cli::client::request(
            Method::DELETE,
            &format!("{}/v1/subscriptions/{id}", self.base),
            self.headers()?,
            Bytes::new(),
        )
        .await?;
        anyhow::ensure!(reply.status.is_success(), "answered {}", reply.status);
        Ok(())
    }
}
