//! `hookgate-loadtest run`: signed requests for any source of a gateway config, each
//! signed with the source's scheme and secret, with unique ids and an optional fraction
//! of deliberate duplicates. Closed loop (N connections, each sending as soon as its
//! last answer came) or open loop (a fixed rate; latency counts from when a request was
//! due, so a slow server cannot hide its queue: no coordinated omission).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use hookgate::cli::{build_request, SendArgs};
use hookgate::config::Config;
use hookgate::source::Source;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub struct Plan {
    /// `host:port` of the ingest listener.
    pub addr: String,
    pub sources: Vec<Arc<Source>>,
    pub connections: usize,
    /// Requests per second (open loop); `None` is closed loop.
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    /// The fraction of requests that repeat an id already accepted.
    pub duplicates: f64,
    /// Body size to pad generated events to.
    pub size: usize,
    /// Every id starts with it, so that verify can tell this run's events from others.
    pub prefix: String,
    /// TLS (with a client certificate) when set.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// The sources named `names` in `config` (all of them when `names` is empty).
pub fn sources(config: &Path, names: &[String]) -> anyhow::Result<(Config, Vec<Arc<Source>>)> {
    let loaded = Config::load(config)?;
    let mut found = Vec::new();
    for cfg in &loaded.sources {
        if names.is_empty() || names.contains(&cfg.name) {
            let source = Source::build(cfg, &loaded.server)
                .map_err(|e| anyhow::anyhow!("source `{}`: {e}", cfg.name))?;
            found.push(Arc::new(source));
        }
    }
    for name in names {
        anyhow::ensure!(
            found.iter().any(|s| &s.name == name),
            "no source named `{name}` in {}",
            config.display()
        );
    }
    anyhow::ensure!(!found.is_empty(), "{} has no sources", config.display());
    Ok((loaded, found))
}

/// What one request was, and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Answered `accepted` (or `stale`): the gateway promised to keep it.
    Acked,
    /// No answer (a connection cut, a crash) or an error: it may or may not be kept.
    Unknown,
    /// Refused with an answer (4xx, 503): it must not be kept.
    Refused,
}

#[derive(Default)]
pub struct Tally {
    pub sent: u64,
    /// Answers by kind: `accepted`, `duplicate`, `stale`, `HTTP 503 unavailable`, ….
    pub answers: BTreeMap<String, u64>,
    /// Requests that got no answer (connection errors).
    pub errors: u64,
    /// Answers that contradict the request: a fresh id answered `duplicate`, or a repeat
    /// of an accepted id answered `accepted`.
    pub unexpected: u64,
    /// Every fresh id sent, with its source and fate.
    pub ids: Vec<(String, String, Fate)>,
    /// When each fresh id's `accepted` answer was read, for latencies that start at the
    /// acknowledgement (the `deliveries` benchmark).
    pub accepted_at: Vec<(String, Instant)>,
    /// When each fresh id's request was sent (a gateway that received it had it no
    /// earlier), for `powercut`'s rule of what a short retention may have removed.
    pub sent_at: Vec<(String, Instant)>,
}

impl Tally {
    /// Answers other than `accepted`.
    pub fn not_accepted(&self) -> u64 {
        self.answers
            .iter()
            .filter(|(kind, _)| kind.as_str() != "accepted")
            .map(|(_, n)| n)
            .sum()
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        for (kind, n) in other.answers {
            *self.answers.entry(kind).or_default() += n;
        }
        self.errors += other.errors;
        self.unexpected += other.unexpected;
        self.ids.extend(other.ids);
        self.accepted_at.extend(other.accepted_at);
        self.sent_at.extend(other.sent_at);
    }
}

pub struct Report {
    pub tally: Tally,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        serde_json::json!({
            "requests": self.tally.sent,
            "seconds": self.elapsed.as_secs_f64(),
            "rate": self.tally.sent as f64 / self.elapsed.as_secs_f64().max(1e-9),
            "answers": self.tally.answers,
            "errors": self.tally.errors,
            "unexpected": self.tally.unexpected,
            "latency_ms": {
                "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99.9": ms(0.999),
                "max": self.latency.max() as f64 / 1000.0,
            },
        })
    }

    pub fn print(&self) {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{} requests in {:.2}s: {:.0} req/s",
            self.tally.sent,
            self.elapsed.as_secs_f64(),
            self.tally.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
        );
        for (kind, n) in &self.tally.answers {
            println!("  {kind}: {n}");
        }
        println!(
            "  no answer: {}; unexpected answers: {}",
            self.tally.errors, self.tally.unexpected
        );
        println!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            self.latency.max() as f64 / 1000.0
        );
    }

    /// Writes one line per fresh id: `source<TAB>id<TAB>acked|unknown|refused`.
    pub fn write_ids(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        );
        for (source, id, fate) in &self.tally.ids {
            let fate = match fate {
                Fate::Acked => "acked",
                Fate::Unknown => "unknown",
                Fate::Refused => "refused",
            };
            writeln!(out, "{source}\t{id}\t{fate}")?;
        }
        out.flush()?;
        Ok(())
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// A small, fast generator for the duplicate draw and the kill moments.
pub struct Rng(u64);

/// Nanoseconds since the Unix epoch: a stamp that makes ids (and names) unique across
/// runs against the same journal or broker.
pub fn stamp() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn seeded() -> Rng {
        Rng::new(stamp() as u64 ^ u64::from(std::process::id()))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One signed request for `source` with event id `id`.
fn signed(source: &Source, id: &str, size: usize) -> anyhow::Result<(String, HeaderMap, Bytes)> {
    let args = SendArgs {
        config: Path::new(""),
        source: &source.name,
        body: None,
        content_type: None,
        event_type: Some("load.test"),
        id: Some(id),
        url: None,
        pad_to: Some(size),
        tls: Default::default(),
    };
    let out = build_request(source, &args, SystemTime::now())?;
    let path = match &out.query {
        Some(query) => format!("{}?{query}", source.path()),
        None => source.path(),
    };
    Ok((path, out.headers, Bytes::from(out.body)))
}

async fn connect(addr: &str, tls: Option<&tokio_rustls::TlsConnector>) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(match tls {
        None => {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            send
        }
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
            let stream = tls.connect(name, tcp).await?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            send
        }
    })
}

/// Sends one request; the answer's kind (`accepted`, `HTTP 401 invalid_signature`, …)
/// or `None` when no answer came.
async fn send(
    sender: &mut Option<Sender>,
    plan: &Plan,
    (path, headers, body): (String, HeaderMap, Bytes),
) -> Option<String> {
    let addr = plan.addr.as_str();
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(addr, plan.tls.as_ref()).await.ok();
    }
    let conn = sender.as_mut()?;
    if conn.ready().await.is_err() {
        *sender = None;
        return None;
    }
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(http::header::HOST, addr)
        .body(Full::new(body))
        .expect("a valid request");
    request.headers_mut().extend(headers);
    let answer = match conn.send_request(request).await {
        Ok(answer) => answer,
        Err(_) => {
            *sender = None;
            return None;
        }
    };
    let status = answer.status();
    let body = match answer.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            *sender = None;
            return None;
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Some(if status.is_success() {
        json["status"]
            .as_str()
            .unwrap_or("200 without a status")
            .to_string()
    } else {
        format!(
            "HTTP {} {}",
            status.as_u16(),
            json["error"].as_str().unwrap_or("")
        )
    })
}

/// Sends one signed request for `source` with event id `id` on a new connection to
/// `addr`; the answer's kind, or `None` when no answer came.
pub async fn answer_once(addr: &str, source: &Source, id: &str, size: usize) -> Option<String> {
    let plan = Plan {
        addr: addr.to_string(),
        sources: Vec::new(),
        connections: 1,
        rate: None,
        duration: None,
        count: None,
        duplicates: 0.0,
        size,
        prefix: String::new(),
        tls: None,
    };
    let request = signed(source, id, size).ok()?;
    send(&mut None, &plan, request).await
}

/// Shared by the workers of one run.
struct Shared {
    plan: Plan,
    next: AtomicU64,
    started: Instant,
    /// Ids accepted so far, by source index, for deliberate duplicates.
    accepted: Mutex<Vec<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Shared {
    /// The next request number, or `None` when the run is over.
    fn take(&self) -> Option<u64> {
        if self.stop.load(Ordering::Acquire) {
            return None;
        }
        if self
            .plan
            .duration
            .is_some_and(|d| self.started.elapsed() >= d)
        {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::AcqRel);
        match self.plan.count {
            Some(count) if n >= count => None,
            _ => Some(n),
        }
    }

    /// Request `n`: its source, id, and whether it repeats an accepted id.
    fn pick(&self, n: u64, rng: &mut Rng) -> (usize, String, bool) {
        let which = (n % self.plan.sources.len() as u64) as usize;
        if self.plan.duplicates > 0.0 && rng.unit() < self.plan.duplicates {
            let accepted = self.accepted.lock().expect("accepted lock");
            let seen = &accepted[which];
            if !seen.is_empty() {
                let id = seen[(rng.next() % seen.len() as u64) as usize].clone();
                return (which, id, true);
            }
        }
        (which, format!("{}-{n}", self.plan.prefix), false)
    }

    /// Sends request `n` on `sender` and notes what came of it.
    async fn one(&self, n: u64, sender: &mut Option<Sender>, rng: &mut Rng, tally: &mut Tally) {
        let (which, id, repeat) = self.pick(n, rng);
        let source = &self.plan.sources[which];
        let request = match signed(source, &id, self.plan.size) {
            Ok(request) => request,
            Err(e) => {
                eprintln!("cannot build a request for {}: {e:#}", source.name);
                self.stop.store(true, Ordering::Release);
                return;
            }
        };
        tally.sent += 1;
        if !repeat {
            tally.sent_at.push((id.clone(), Instant::now()));
        }
        let answer = send(sender, &self.plan, request).await;
        if !repeat && answer.as_deref() == Some("accepted") {
            tally.accepted_at.push((id.clone(), Instant::now()));
        }
        let fate = match answer.as_deref() {
            None => {
                tally.errors += 1;
                Fate::Unknown
            }
            Some(kind) => {
                *tally.answers.entry(kind.to_string()).or_default() += 1;
                match kind {
                    "accepted" | "stale" => {
                        if repeat {
                            tally.unexpected += 1;
                        }
                        Fate::Acked
                    }
                    "duplicate" => {
                        if !repeat {
                            tally.unexpected += 1;
                        }
                        Fate::Acked
                    }
                    _ if kind.starts_with("HTTP 5") => Fate::Unknown,
                    _ => Fate::Refused,
                }
            }
        };
        if !repeat {
            if fate == Fate::Acked {
                self.accepted.lock().expect("accepted lock")[which].push(id.clone());
            }
            tally.ids.push((source.name.clone(), id, fate));
        }
    }
}

/// Runs `plan` until its duration or count is reached, or `stop` is set.
pub async fn run(plan: Plan, stop: Arc<AtomicBool>) -> Report {
    let sources = plan.sources.len();
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        started: Instant::now(),
        accepted: Mutex::new(vec![Vec::new(); sources]),
        stop,
        plan,
    });
    let (tally, latency) = match shared.plan.rate {
        None => closed_loop(shared.clone()).await,
        Some(rate) => open_loop(shared.clone(), rate).await,
    };
    Report {
        tally,
        elapsed: shared.started.elapsed(),
        latency,
    }
}

async fn closed_loop(shared: Arc<Shared>) -> (Tally, Histogram<u64>) {
    let workers: Vec<_> = (0..shared.plan.connections)
        .map(|w| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(Rng::seeded().next() ^ (w as u64 + 1));
                let mut tally = Tally::default();
                let mut latency = histogram();
                let mut sender = None;
                while let Some(n) = shared.take() {
                    let began = Instant::now();
                    shared.one(n, &mut sender, &mut rng, &mut tally).await;
                    if sender.is_none() {
                        // No connection (a gateway that is down): do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    } else {
                        let _ = latency.record(began.elapsed().as_micros().max(1) as u64);
                    }
                }
                (tally, latency)
            })
        })
        .collect();
    let mut tally = Tally::default();
    let mut latency = histogram();
    for worker in workers {
        if let Ok((t, l)) = worker.await {
            tally.merge(t);
            let _ = latency.add(&l);
        }
    }
    (tally, latency)
}

async fn open_loop(shared: Arc<Shared>, rate: f64) -> (Tally, Histogram<u64>) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    // Idle connections; at most `connections` are open at once.
    let pool: Arc<Mutex<Vec<Sender>>> = Arc::new(Mutex::new(Vec::new()));
    let permits = Arc::new(tokio::sync::Semaphore::new(shared.plan.connections));
    let results: Arc<Mutex<(Tally, Histogram<u64>)>> =
        Arc::new(Mutex::new((Tally::default(), histogram())));
    let mut tasks = Vec::new();
    let start = tokio::time::Instant::now();
    while let Some(n) = shared.take() {
        let due = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        let (shared, pool, permits, results) = (
            shared.clone(),
            pool.clone(),
            permits.clone(),
            results.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.expect("never closed");
            let mut sender = pool.lock().expect("pool lock").pop();
            let mut rng = Rng::new(Rng::seeded().next() ^ n);
            let mut tally = Tally::default();
            shared.one(n, &mut sender, &mut rng, &mut tally).await;
            // From when it was due, not from when a connection was free.
            let waited = due.elapsed().as_micros().max(1) as u64;
            if let Some(sender) = sender {
                pool.lock().expect("pool lock").push(sender);
            }
            let mut results = results.lock().expect("results lock");
            results.0.merge(tally);
            let _ = results.1.record(waited);
        }));
        tasks.retain(|t| !t.is_finished());
    }
    for task in tasks {
        let _ = task.await;
    }
    let results = std::mem::replace(
        &mut *results.lock().expect("results lock"),
        (Tally::default(), histogram()),
    );
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_spreads_over_the_unit_interval() {
        let mut rng = Rng::new(42);
        let draws: Vec<f64> = (0..10_000).map(|_| rng.unit()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below = draws.iter().filter(|d| **d < 0.1).count();
        assert!((800..1200).contains(&below), "{below} of 10000 below 0.1");
    }
}
