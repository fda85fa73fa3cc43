//! Scale-out on a real RabbitMQ cluster: three hookgate replicas (the real binary)
//! behind `hookgate-loadtest balance`, each listing the three nodes of a local cluster
//! (tests/common/cluster.rs) in `broker.url`, forwarding to one quorum queue. Under
//! load, one node is lost and brought back:
//!
//! 1. the node that holds the queue's leader: it hangs (SIGSTOP) for 2 s and is then
//!    killed (SIGKILL), then started again;
//! 2. a node a replica is connected to (not the leader), with `rabbitmqctl stop_app`,
//!    then `start_app`.
//!
//! In both, ingest answers nothing but 2xx (two nodes are up throughout), the replica
//! on the lost node goes on with another one, and `hookgate-loadtest verify` finds every
//! acknowledged event in a journal and in the queue (duplicates are counted and
//! allowed: a publish unconfirmed when the link broke is published again). The figures
//! (events, lost, duplicated, time to fail over) are printed, for docs/scaling.md.
//!
//! The cluster is started once for both cases: three nodes take 10-20 s to start and
//! join. Needs `rabbitmq-server` installed (not running: the machine's own broker on
//! 5672 is not used) and the load tool built beside hookgate (`cargo test --workspace`,
//! or `cargo build -p hookgate-loadtest` first).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::cluster::Cluster;
use common::free_port;

const REPLICAS: usize = 3;
/// Open-loop load through the balancer, in requests per second, and for how long.
const RATE: u32 = 400;
const LOAD: Duration = Duration::from_secs(20);
/// When the node is lost, and how long it stays away.
const LOSS_AT: Duration = Duration::from_secs(5);
const AWAY: Duration = Duration::from_secs(6);
/// How often each replica's metrics are read.
const SAMPLE: Duration = Duration::from_millis(100);

fn hookgate() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hookgate"))
}

/// The load tool, built beside hookgate by `cargo test --workspace`.
fn loadtest() -> PathBuf {
    let path = hookgate().with_file_name("hookgate-loadtest");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p hookgate-loadtest`) first",
        path.display()
    );
    path
}

/// A child process that is killed when dropped, so that a failing test leaves none.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

struct Replica {
    process: Process,
    admin: String,
    ingest: String,
    log: PathBuf,
}

/// Replica `k`'s config in `dir`: the cluster's nodes from node `k` on, each through a
/// `file:` reference (as a mounted secret would be), so that the replicas start on
/// different nodes; the test's exchange and quorum queue; the load tool's sources.
fn replica_config(dir: &Path, cluster: &Cluster, k: usize, exchange: &str, queue: &str) -> PathBuf {
    let nodes = cluster.members.len();
    let urls: Vec<String> = (0..nodes)
        .map(|j| {
            let member = &cluster.members[(k + j) % nodes];
            let file = dir.join(format!("node{}.url", (k + j) % nodes));
            std::fs::write(&file, member.url()).unwrap();
            format!("\"file:{}\"", file.display())
        })
        .collect();
    let sources =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/loadtest/load.toml"))
            .unwrap();
    let sources = &sources[sources.find("[[sources]]").unwrap()..];
    let text = format!(
        r##"
[server]
listen = "127.0.0.1:{}"
# The load tool keeps idle connections for reuse: closed by the gateway after the
# default 5 s, one could be reused at the moment it closes, and the request go unanswered.
header_read_timeout = "60s"

[admin]
listen = "127.0.0.1:{}"

[journal]
path = "{}"

[broker]
url = [{}]
exchange = "{exchange}"

[[broker.queues]]
name = "{queue}"
bindings = ["#"]
kind = "quorum"

{sources}"##,
        free_port(),
        free_port(),
        dir.join("journal").display(),
        urls.join(", "),
    );
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn get(url: &str) -> Option<hookgate::cli::client::Reply> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(hookgate::cli::client::get(url)).ok()
}

fn start_replica(config: &Path) -> Replica {
    let loaded = hookgate::config::Config::load(config).unwrap();
    let admin = format!("http://{}", loaded.admin.listen);
    let log = config.with_file_name("hookgate.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut process = Process(
        Command::new(hookgate())
            .args(["serve", "-c"])
            .arg(config)
            .env("HOOKGATE_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    // Ready: the journal is open and the forwarder is connected to a node. A replica that
    // exited (say, its port was taken) is said so, with its log.
    loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!(
                "replica {admin} exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if get(&format!("{admin}/readyz")).is_some_and(|r| r.status.is_success()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "replica {admin} did not become ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Replica {
        process,
        admin,
        ingest: loaded.server.listen.to_string(),
        log,
    }
}

/// One reading of a replica's `/metrics`.
#[derive(Clone, Debug, Default)]
struct Reading {
    /// `hookgate_forward_published_total`: events the broker confirmed.
    published: u64,
    /// The node `hookgate_broker_node` marks 1.
    node: Option<String>,
    /// `hookgate_forward_errors_total{reason="nacked"}`: publishes the broker refused
    /// (a quorum queue without a leader nacks them).
    nacked: u64,
    /// `hookgate_journal_backlog`: events waiting for the broker.
    backlog: u64,
}

fn read_metrics(admin: &str) -> Option<Reading> {
    let reply = get(&format!("{admin}/metrics"))?;
    let text = String::from_utf8_lossy(&reply.body);
    let mut reading = Reading::default();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("hookgate_forward_published_total ") {
            reading.published = n.trim().parse().ok()?;
        }
        if let Some(n) = line.strip_prefix("hookgate_journal_backlog ") {
            reading.backlog = n.trim().parse().ok()?;
        }
        if let Some(n) = line.strip_prefix("hookgate_forward_errors_total{reason=\"nacked\"} ") {
            reading.nacked = n.trim().parse().ok()?;
        }
        if let Some(rest) = line.strip_prefix("hookgate_broker_node{node=\"") {
            if let Some((node, value)) = rest.split_once("\"} ") {
                if value.trim() == "1" {
                    reading.node = Some(node.to_string());
                }
            }
        }
    }
    Some(reading)
}

/// Every replica's metrics, read every [`SAMPLE`] on a thread of its own.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Duration, Vec<Option<Reading>>)>>,
}

impl Monitor {
    fn start(admins: Vec<String>, epoch: Instant) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Acquire) {
                let at = epoch.elapsed();
                samples.push((at, admins.iter().map(|a| read_metrics(a)).collect()));
                std::thread::sleep(SAMPLE.saturating_sub(epoch.elapsed() - at));
            }
            samples
        });
        Monitor { stop, thread }
    }

    fn finish(self) -> Vec<(Duration, Vec<Option<Reading>>)> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    /// The node that holds the quorum queue's leader.
    Leader,
    /// A node a replica is connected to, other than the leader's.
    Connected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// SIGSTOP, then SIGKILL after [`HANG`]: a machine that stops answering and then
    /// dies, as a crashed host looks to its peers. A bare SIGKILL on this machine closes
    /// the node's sockets at once, so its clients learn of it at once; a hang first lets
    /// publishes pile up unconfirmed in its sockets, which is what tells a forwarder
    /// that waits for confirms from one that does not.
    HangThenKill,
    StopApp,
}

/// How long a node hangs before it is killed.
const HANG: Duration = Duration::from_secs(2);

/// What one case measured.
struct Figures {
    case: String,
    requests: u64,
    acked: u64,
    lost: u64,
    duplicated: u64,
    /// Publishes the broker nacked, all replicas together (each is published again).
    nacked: u64,
    /// Per replica that was connected to the lost node: from its last reading on that
    /// node to its first on another ([`SAMPLE`] apart at least).
    reconnect_ms: Vec<u64>,
    /// After the loss, the longest time a replica had events waiting and none was
    /// confirmed, with when (from the start of the load) it began and ended.
    pause: Pause,
}

impl Figures {
    /// A row of docs/scaling.md's table.
    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} ms | {} ms (replica {}, {:.1}-{:.1} s) |",
            self.case,
            self.requests,
            self.acked,
            self.lost,
            self.duplicated,
            self.nacked,
            self.reconnect_ms
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.pause.ms(),
            self.pause.replica,
            self.pause.start.as_secs_f64(),
            self.pause.end.as_secs_f64(),
        )
    }
}

/// The longest time a replica had events waiting and none was confirmed.
#[derive(Debug, Default)]
struct Pause {
    replica: usize,
    start: Duration,
    end: Duration,
}

impl Pause {
    fn ms(&self) -> u64 {
        (self.end - self.start).as_millis() as u64
    }
}

/// The longest pause in confirms from `from` to `to` (a replica with nothing to send
/// is not paused); and, per replica on `lost` at `from`, how long it took to be seen on
/// another node.
fn measure(
    samples: &[(Duration, Vec<Option<Reading>>)],
    from: Duration,
    to: Duration,
    lost: &str,
) -> (Pause, Vec<u64>) {
    let replicas = samples.first().map_or(0, |(_, r)| r.len());
    let mut longest = Pause::default();
    let mut reconnects = Vec::new();
    for r in 0..replicas {
        let series: Vec<(Duration, &Reading)> = samples
            .iter()
            .filter_map(|(at, readings)| readings[r].as_ref().map(|reading| (*at, reading)))
            .collect();
        // From the reading before the first one with events waiting and no confirm
        // since, to the next confirm.
        let mut waiting_since: Option<Duration> = None;
        for pair in series.windows(2) {
            let ((was, before), (at, now)) = (pair[0], pair[1]);
            if at <= from || was > to {
                continue;
            }
            if now.published > before.published {
                if let Some(start) = waiting_since.take() {
                    if at - start > longest.end - longest.start {
                        longest = Pause {
                            replica: r,
                            start,
                            end: at,
                        };
                    }
                }
            } else if now.backlog > 0 {
                waiting_since.get_or_insert(was.max(from));
            } else {
                waiting_since = None;
            }
        }
        let was_on_lost = series
            .iter()
            .rev()
            .find(|(at, _)| *at <= from)
            .is_some_and(|(_, reading)| reading.node.as_deref() == Some(lost));
        if was_on_lost {
            // From the last reading on the lost node to the first on another one.
            let moved = series
                .iter()
                .find(|(at, reading)| {
                    *at > from && reading.node.as_deref().is_some_and(|n| n != lost)
                })
                .unwrap_or_else(|| panic!("replica {r} never left {lost}"))
                .0;
            let last_on = series
                .iter()
                .filter(|(at, reading)| *at < moved && reading.node.as_deref() == Some(lost))
                .map(|(at, _)| *at)
                .max()
                .unwrap_or(from);
            reconnects.push((moved - last_on).as_millis() as u64);
        }
    }
    (longest, reconnects)
}

fn json_of(output: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "not JSON: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Waits until a replica's journal has nothing queued (the broker confirmed it all).
fn wait_until_forwarded(replica: &Replica) {
    let started = Instant::now();
    loop {
        let url = format!("{}/v1/events?status=queued&limit=1", replica.admin);
        let queued = get(&url).map(|reply| reply.json()["events"].as_array().map_or(1, Vec::len));
        if queued == Some(0) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} still has events queued after 120 s:\n{}",
            replica.admin,
            std::fs::read_to_string(&replica.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One case: three replicas on a fresh exchange and quorum queue, load through the
/// balancer, `victim` lost by `loss` at [`LOSS_AT`] and back after [`AWAY`]; then every
/// check.
fn case(cluster: &mut Cluster, victim: Victim, loss: Loss) -> Figures {
    let name = format!("{victim:?}-{loss:?}").to_lowercase();
    let dir = tempfile::tempdir().unwrap();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let exchange = format!("hookgate-cluster.{name}.{nanos}.x");
    let queue = format!("hookgate-cluster.{name}.{nanos}.q");
    let configs: Vec<PathBuf> = (0..REPLICAS)
        .map(|k| {
            let home = dir.path().join(format!("replica{k}"));
            std::fs::create_dir(&home).unwrap();
            replica_config(&home, cluster, k, &exchange, &queue)
        })
        .collect();
    let mut replicas: Vec<Replica> = configs.iter().map(|c| start_replica(c)).collect();
    let balancer_addr = format!("127.0.0.1:{}", free_port());
    let _balancer = Process(
        Command::new(loadtest())
            .args(["balance", "--listen", &balancer_addr])
            .args(
                replicas
                    .iter()
                    .flat_map(|r| ["--backend", r.ingest.as_str()]),
            )
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(&balancer_addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "no balancer");
        std::thread::sleep(Duration::from_millis(20));
    }
    let leader = cluster.leader(&queue).expect("the queue has a leader");

    let epoch = Instant::now();
    let monitor = Monitor::start(replicas.iter().map(|r| r.admin.clone()).collect(), epoch);
    let ids = dir.path().join("ids.tsv");
    let load = Command::new(loadtest())
        .args(["run", "--json", "--connections", "64"])
        .args(["--rate", &RATE.to_string()])
        .args(["--duration", &format!("{}s", LOAD.as_secs())])
        .args(["--target", &balancer_addr, "-c"])
        .arg(&configs[0])
        .arg("--ids")
        .arg(&ids)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    std::thread::sleep(LOSS_AT.saturating_sub(epoch.elapsed()));
    let connected: Vec<Option<usize>> = replicas
        .iter()
        .map(|r| {
            let ready = get(&format!("{}/readyz", r.admin)).map(|reply| reply.json());
            ready.and_then(|j| j["broker"].as_str().and_then(|a| cluster.by_addr(a)))
        })
        .collect();
    let lost = match victim {
        Victim::Leader => leader,
        Victim::Connected => connected
            .iter()
            .flatten()
            .copied()
            .find(|&n| n != leader)
            .expect("a replica is connected to a node other than the leader's"),
    };
    let lost_addr = cluster.members[lost].addr();
    eprintln!(
        "{name}: leader on node {leader}, replicas on nodes {connected:?}; losing node {lost} ({lost_addr})"
    );
    let lost_at = epoch.elapsed();
    match loss {
        Loss::HangThenKill => {
            cluster.freeze(lost);
            std::thread::sleep(HANG);
            cluster.kill(lost);
        }
        Loss::StopApp => cluster.stop_app(lost),
    }
    std::thread::sleep(AWAY.saturating_sub(epoch.elapsed() - lost_at));
    let back_from = epoch.elapsed();
    match loss {
        Loss::HangThenKill => cluster.restart(lost),
        Loss::StopApp => cluster.start_app(lost),
    }
    eprintln!(
        "{name}: node {lost} lost at {:.1} s, back at {:.1} s (its start took {:.1} s)",
        lost_at.as_secs_f64(),
        epoch.elapsed().as_secs_f64(),
        (epoch.elapsed() - back_from).as_secs_f64()
    );

    let run = load.wait_with_output().unwrap();
    let report = json_of(&run);
    eprintln!("{name}: run: {report}");
    assert!(run.status.success(), "{report}");
    for replica in &replicas {
        wait_until_forwarded(replica);
    }
    let samples = monitor.finish();

    let admins: Vec<String> = replicas.iter().map(|r| r.admin.clone()).collect();
    let verify = Command::new(loadtest())
        .args([
            "verify",
            "--json",
            "--amqp",
            &cluster.members[(lost + 1) % 3].url(),
        ])
        .args(["--queue", &queue])
        .args(admins.iter().flat_map(|a| ["--admin", a.as_str()]))
        .arg("-c")
        .arg(&configs[0])
        .arg("--ids")
        .arg(&ids)
        .output()
        .unwrap();
    let checked = json_of(&verify);
    eprintln!("{name}: verify: {checked}");
    let mut logs = String::new();
    for replica in &mut replicas {
        replica.process.terminate();
        let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
        assert!(!log.contains("guest"), "credentials in the log:\n{log}");
        // Its log names the node it connected to, by address.
        assert!(
            log.lines().any(|l| l.contains("broker connected")
                && cluster.members.iter().any(|m| l.contains(&m.addr()))),
            "no `broker connected` line names a node:\n{log}"
        );
        for line in log.lines().filter(|l| l.contains("broker")) {
            logs.push_str(line);
            logs.push('\n');
        }
    }
    eprintln!("{name}: broker log lines:\n{logs}");

    // Every acknowledged event is in a journal and in the queue.
    assert!(verify.status.success(), "{checked}");
    for place in ["journal", "queue"] {
        assert_eq!(checked[place]["lost"], 0, "{place}: {checked}");
        assert_eq!(checked[place]["unexpected"], 0, "{place}: {checked}");
    }
    // Two nodes were up throughout: every request was answered, and with a 2xx.
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["unexpected"], 0, "{report}");
    let answers = report["answers"].as_object().unwrap();
    assert!(
        answers
            .keys()
            .all(|k| matches!(k.as_str(), "accepted" | "duplicate" | "stale")),
        "only 2xx answers: {report}"
    );
    assert!(
        answers["accepted"].as_u64().unwrap() > u64::from(RATE) * LOAD.as_secs() / 2,
        "{report}"
    );
    let (pause, reconnect_ms) = measure(&samples, lost_at, Duration::MAX, &lost_addr);
    assert!(
        !reconnect_ms.is_empty(),
        "a replica was connected to node {lost}, and went on with another"
    );
    let figures = Figures {
        case: name,
        requests: report["requests"].as_u64().unwrap(),
        acked: checked["queue"]["acked"].as_u64().unwrap(),
        lost: checked["queue"]["lost"].as_u64().unwrap(),
        duplicated: checked["queue"]["duplicated"].as_u64().unwrap(),
        nacked: (0..REPLICAS)
            .filter_map(|r| {
                samples
                    .iter()
                    .rev()
                    .find_map(|(_, readings)| readings[r].as_ref())
            })
            .map(|reading| reading.nacked)
            .sum(),
        reconnect_ms,
        pause,
    };
    eprintln!("{}", figures.row());
    figures
}

#[test]
fn three_replicas_on_a_three_node_cluster_lose_nothing_when_a_node_is_lost() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    let leader = case(&mut cluster, Victim::Leader, Loss::HangThenKill);
    let connected = case(&mut cluster, Victim::Connected, Loss::StopApp);
    eprintln!(
        "cluster: both cases in {:.0} s\n\
         | case | requests | acknowledged | lost | duplicated | nacked | reconnect | longest pause in confirms |\n{}\n{}",
        started.elapsed().as_secs_f64(),
        leader.row(),
        connected.row()
    );
}
