//! The load tool as CI runs it: a short load through the real binary to the real
//! RabbitMQ, then `verify` against the journal and the queue; five crash cycles (SIGKILL
//! at random moments under load); and scale-out: three replicas behind a load balancer,
//! one killed and restarted under load; deliveries to subscriptions, on a gateway the
//! tool starts and on a running one. All fail on any loss or unexpected answer, never
//! on speed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn loadtest() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hookgate-loadtest"))
}

/// The gateway binary, built beside the load tool by `cargo test --workspace`.
fn hookgate() -> PathBuf {
    let path = loadtest().with_file_name("hookgate");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p hookgate`) first",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test's own exchange and quorum queue, deleted when dropped.
struct Names {
    exchange: String,
    queue: String,
}

impl Names {
    fn new(test: &str) -> Names {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("hookgate-load.{test}.{}.{nanos}", std::process::id());
        Names {
            exchange: format!("{prefix}.x"),
            queue: format!("{prefix}.q"),
        }
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let (exchange, queue) = (self.exchange.clone(), self.queue.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let Ok(connection) =
                    lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await
                else {
                    return;
                };
                if let Ok(channel) = connection.create_channel().await {
                    let _ = channel
                        .queue_delete(&queue, lapin::options::QueueDeleteOptions::default())
                        .await;
                    let _ = channel
                        .exchange_delete(
                            &exchange,
                            lapin::options::ExchangeDeleteOptions::default(),
                        )
                        .await;
                }
                let _ = connection.close(200, "done").await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A gateway config on free ports with a journal in `dir`, forwarding every event to the
/// test's quorum queue, and the load tool's sources.
fn config(dir: &Path, names: &Names) -> PathBuf {
    let sources =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/load.toml")).unwrap();
    let sources = &sources[sources.find("[[sources]]").unwrap()..];
    let text = format!(
        r##"
[server]
listen = "127.0.0.1:{}"

[admin]
listen = "127.0.0.1:{}"

[journal]
path = "{}"

[broker]
url = "{AMQP}"
exchange = "{}"
retry = {{ initial = "100ms", max = "1s" }}

[[broker.queues]]
name = "{}"
bindings = ["#"]
kind = "quorum"

{sources}"##,
        free_port(),
        free_port(),
        dir.join("journal").display(),
        names.exchange,
        names.queue,
    );
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn json_of(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "not JSON: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Runs `verify` of the ids file against the journal (of `config`'s admin API, or of each
/// of `admins`) and `queue`; whether it passed, and its report.
fn verify(config: &Path, ids: &Path, queue: &str, admins: &[String]) -> (bool, serde_json::Value) {
    let output = Command::new(loadtest())
        .args(["verify", "--json", "--amqp", AMQP, "--queue", queue])
        .args(admins.iter().flat_map(|a| ["--admin", a.as_str()]))
        .arg("-c")
        .arg(config)
        .arg("--ids")
        .arg(ids)
        .output()
        .unwrap();
    let checked = json_of(&output);
    eprintln!("verify: {checked}");
    (output.status.success(), checked)
}

/// Waits until the gateway's journal has nothing queued (the broker confirmed it all).
fn wait_until_forwarded(admin: &str) {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    loop {
        let url = format!("{admin}/v1/events?status=queued&limit=1");
        let queued = runtime
            .block_on(hookgate::cli::client::get(&url))
            .ok()
            .map(|reply| reply.json()["events"].as_array().map_or(1, Vec::len));
        if queued == Some(0) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "events still queued after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_short_load_is_all_in_the_journal_and_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("short");
    let config = config(dir.path(), &names);
    let (mut gateway, admin) = start_gateway(&config);

    let ids = dir.path().join("ids.tsv");
    let run = Command::new(loadtest())
        .args(["run", "--duration", "10s", "--connections", "32"])
        .args(["--duplicates", "0.05", "--json", "-c"])
        .arg(&config)
        .arg("--ids")
        .arg(&ids)
        .output()
        .unwrap();
    let report = json_of(&run);
    eprintln!("run: {report}");
    assert!(run.status.success(), "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["unexpected"], 0, "{report}");
    let answers = report["answers"].as_object().unwrap();
    assert!(
        answers.keys().all(|k| k == "accepted" || k == "duplicate"),
        "only accepted and duplicate: {report}"
    );
    assert!(answers["accepted"].as_u64().unwrap() > 500, "{report}");
    assert!(answers["duplicate"].as_u64().unwrap() > 0, "{report}");

    wait_until_forwarded(&admin);
    let (verified, checked) = verify(&config, &ids, &names.queue, &[]);
    let _ = Command::new("kill")
        .args(["-TERM", &gateway.0.id().to_string()])
        .status();
    let status = gateway.0.wait().unwrap();
    assert!(verified, "{checked}");
    assert_eq!(checked["journal"]["lost"], 0);
    assert_eq!(checked["queue"]["lost"], 0);
    assert_eq!(checked["journal"]["unexpected"], 0);
    assert_eq!(checked["queue"]["unexpected"], 0);
    assert_eq!(
        checked["journal"]["found"], checked["journal"]["acked"],
        "every event answered is in the journal, and nothing else"
    );
    assert!(
        status.success(),
        "hookgate exited with {status} after SIGTERM"
    );
}

fn hookgate_answers(admin: &str) -> Option<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let reply = runtime
        .block_on(hookgate::cli::client::get(&format!("{admin}/healthz")))
        .ok()?;
    reply.status.is_success().then_some(())
}

#[test]
fn five_crash_cycles_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("crash");
    let config = config(dir.path(), &names);
    let crash = Command::new(loadtest())
        .arg("crash")
        .arg("--hookgate")
        .arg(hookgate())
        .args([
            "--cycles",
            "5",
            "--json",
            "--amqp",
            AMQP,
            "--queue",
            &names.queue,
        ])
        .args(["--source", "github", "--source", "stripe", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let report = json_of(&crash);
    eprintln!(
        "crash: {report}\n{}",
        String::from_utf8_lossy(&crash.stderr)
    );
    assert!(crash.status.success(), "{report}");
    assert_eq!(report["journal"]["lost"], 0, "{report}");
    assert_eq!(report["queue"]["lost"], 0, "{report}");
    assert_eq!(report["journal"]["unexpected"], 0, "{report}");
    assert!(report["acked"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["recovery_ms"].as_array().unwrap().len(), 6);
}

/// A child process that is killed when dropped, so that a failing test leaves none.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `hookgate serve -c config` and waits until its admin listener answers.
fn start_gateway(config: &Path) -> (Running, String) {
    let loaded = hookgate::config::Config::load(config).unwrap();
    let admin = format!("http://{}", loaded.admin.listen);
    let gateway = Command::new(hookgate())
        .args(["serve", "-c"])
        .arg(config)
        .env("HOOKGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while hookgate_answers(&admin).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "hookgate did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Running(gateway), admin)
}

/// How many events `admin`'s journal holds, by the admin API.
fn journaled(admin: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = runtime
        .block_on(hookgate::cli::client::get(&format!("{admin}/v1/sources")))
        .unwrap();
    reply.json()["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["events"]["total"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn three_replicas_behind_a_balancer_lose_nothing_when_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("scale");
    // Three replicas, each with a journal of its own, forwarding to one quorum queue.
    let configs: Vec<PathBuf> = (0..3)
        .map(|n| {
            let home = dir.path().join(format!("replica{n}"));
            std::fs::create_dir(&home).unwrap();
            config(&home, &names)
        })
        .collect();
    let mut replicas: Vec<(Running, String)> = configs.iter().map(|c| start_gateway(c)).collect();
    let ingest: Vec<String> = configs
        .iter()
        .map(|c| {
            hookgate::config::Config::load(c)
                .unwrap()
                .server
                .listen
                .to_string()
        })
        .collect();
    let balancer_addr = format!("127.0.0.1:{}", free_port());
    let _balancer = Running(
        Command::new(loadtest())
            .args(["balance", "--listen", &balancer_addr])
            .args(ingest.iter().flat_map(|a| ["--backend", a.as_str()]))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(&balancer_addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "no balancer");
        std::thread::sleep(Duration::from_millis(20));
    }

    let ids = dir.path().join("ids.tsv");
    let load = Command::new(loadtest())
        .args(["run", "--duration", "9s", "--connections", "24", "--json"])
        .args(["--target", &balancer_addr, "-c"])
        .arg(&configs[0])
        .arg("--ids")
        .arg(&ids)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Replica 1 dies under load, and comes back on its own journal.
    std::thread::sleep(Duration::from_secs(3));
    replicas[1].0 .0.kill().unwrap();
    replicas[1].0 .0.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    replicas[1] = start_gateway(&configs[1]);
    let run = load.wait_with_output().unwrap();
    let report = json_of(&run);
    eprintln!("run: {report}");
    assert_eq!(report["unexpected"], 0, "{report}");
    assert!(
        report["answers"]["accepted"].as_u64().unwrap() > 500,
        "{report}"
    );

    let admins: Vec<String> = replicas.iter().map(|(_, admin)| admin.clone()).collect();
    for admin in &admins {
        wait_until_forwarded(admin);
        assert!(journaled(admin) > 0, "{admin} took no events");
    }
    let (verified, checked) = verify(&configs[0], &ids, &names.queue, &admins);
    for (mut gateway, _) in replicas {
        let _ = Command::new("kill")
            .args(["-TERM", &gateway.0.id().to_string()])
            .status();
        let _ = gateway.0.wait();
    }
    assert!(verified, "{checked}");
    for place in ["journal", "queue"] {
        assert_eq!(checked[place]["lost"], 0, "{place}: {checked}");
        assert_eq!(checked[place]["unexpected"], 0, "{place}: {checked}");
    }
    // An event journaled by the replica just before it was killed has no answer: it is
    // `recovered`, found without being acknowledged.
    let journal = &checked["journal"];
    assert_eq!(
        journal["found"].as_u64().unwrap(),
        journal["acked"].as_u64().unwrap() + journal["recovered"].as_u64().unwrap(),
        "every answered event is in a journal, and nothing else is: {checked}"
    );
    assert_eq!(
        journal["duplicated"], 0,
        "each event is in one journal: {checked}"
    );
}

/// `deliveries ARGS` for 2 s on a gateway it starts, with 60 s to drain: its JSON
/// report, once it has exited 0.
fn deliveries_started(args: &[&str]) -> serde_json::Value {
    let output = Command::new(loadtest())
        .args(["deliveries", "--hookgate"])
        .arg(hookgate())
        .args(args)
        .args(["--duration", "2s", "--drain", "60s", "--json"])
        .output()
        .unwrap();
    let report = json_of(&output);
    eprintln!("deliveries {args:?}: {report}");
    assert!(output.status.success(), "{report}");
    report
}

/// `deliveries` on a gateway it starts: every accepted event reached each subscription's
/// sink, and the JSON report holds what BENCHMARKS.md quotes.
#[test]
fn deliveries_reach_every_subscription() {
    let report = deliveries_started(&["--subscriptions", "2", "--rate", "200"]);
    let d = &report["deliveries"];
    assert!(d["expected"].as_u64().unwrap() >= 2 * 390, "{report}");
    assert_eq!(d["delivered"], d["expected"], "{report}");
    assert_eq!(d["missing"], 0, "{report}");
    assert_eq!(d["others"], 0, "{report}");
    for key in ["alone", "with_subscriptions"] {
        assert!(
            report["ack_p99_ms"][key].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    assert!(d["latency_ms"]["p99"].as_f64().is_some(), "{report}");
}

/// `deliveries --ordered`: every delivery arrives, in journal order, at a rate where the
/// default of 16 in flight does not keep that order (116 of 2,001 out of order in one
/// run without `--ordered`).
#[test]
fn ordered_deliveries_arrive_in_journal_order() {
    let report = deliveries_started(&["--subscriptions", "1", "--ordered", "--rate", "1000"]);
    let d = &report["deliveries"];
    assert!(d["expected"].as_u64().unwrap() >= 1900, "{report}");
    assert_eq!(d["delivered"], d["expected"], "{report}");
    assert_eq!(d["reordered"], 0, "{report}");
}

/// `deliveries --config` on a running gateway: its subscriptions are made through the
/// admin API, all delivered, and deleted at the end.
#[test]
fn deliveries_on_a_running_gateway_leaves_no_subscription_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n[journal]\npath = \"{}\"\n\n[outbound]\nallow_private = [\"127.0.0.0/8\"]\n\n[[sources]]\nname = \"github\"\nscheme = \"github\"\nsecrets = [\"load-github-secret\"]\n",
            free_port(),
            free_port(),
            dir.path().join("journal").display()
        ),
    )
    .unwrap();
    let (_gateway, admin) = start_gateway(&config);
    let output = Command::new(loadtest())
        .args(["deliveries", "--subscriptions", "2", "--rate", "100"])
        .args(["--duration", "2s", "--drain", "30s", "--json", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let report = json_of(&output);
    eprintln!("deliveries: {report}");
    assert!(output.status.success(), "{report}");
    assert_eq!(report["deliveries"]["missing"], 0, "{report}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let left = runtime
        .block_on(hookgate::cli::client::get(&format!(
            "{admin}/v1/subscriptions"
        )))
        .unwrap()
        .json();
    assert_eq!(left["subscriptions"], serde_json::json!([]), "{left}");
}
