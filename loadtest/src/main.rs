//! `hookgate-loadtest`: load, measurement and loss checks for hookgate.
//!
//! - `run`: signed requests for any source of a gateway config ([`run`]).
//! - `verify`: every acknowledged event is in the journal and the queue ([`verify`]).
//! - `crash`: SIGKILL at random moments under load, restart, verify ([`crash`]).
//! - `powercut`: QEMU guests killed with SIGKILL under load, a real power cut; then
//!   verify ([`powercut`]).
//! - `bench`: the baseline, the floor and hookgate under the same load, plain and mTLS,
//!   with each server's CPU per request ([`bench`]).
//! - `deliveries`: ingest at a fixed rate with N subscriptions to a local sink:
//!   deliveries/s, accept-to-delivery latency, and the acknowledgement latency with and
//!   without subscriptions ([`deliveries`]).
//! - `baseline`: a bare hyper server that reads each body and answers 200, the ceiling
//!   hookgate is measured against.
//! - `hmac` and `floor`: the baseline plus GitHub's signature check, and that plus an
//!   append and one `fdatasync` per group before the 200 ([`floor`]).
//! - `post`: GitHub pushes over plain HTTP or mTLS ([`https`]).
//! - `queue-watch`: how long a RabbitMQ queue takes to reach a depth.
//! - `balance`: a round-robin TCP load balancer for several replicas ([`balance`]).

mod balance;
mod bench;
mod cpu;
mod crash;
mod deliveries;
mod floor;
mod https;
mod powercut;
mod run;
mod verify;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "hookgate-loadtest")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where `verify` and `crash` look, and how they report.
#[derive(clap::Args)]
struct Check {
    /// The admin token, if the gateway has one.
    #[arg(long, env = "HOOKGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Also drain this broker's --queue and check it.
    #[arg(long, requires = "queue")]
    amqp: Option<String>,
    #[arg(long, requires = "amqp")]
    queue: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Send signed requests to a running gateway and print rates, answers and latency.
    Run {
        /// The gateway's config: where it listens, and each source's scheme and secret.
        #[arg(short, long, default_value = "loadtest/load.toml")]
        config: PathBuf,
        /// Sources to send for, in turn (default: every source in the config).
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Closed loop: this many connections, each sending as soon as it is answered.
        /// Open loop: at most this many connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Open loop at this many requests per second.
        #[arg(long)]
        rate: Option<f64>,
        /// How long to run (default 10s unless --count is given).
        #[arg(long)]
        duration: Option<String>,
        /// How many requests to send.
        #[arg(long)]
        count: Option<u64>,
        /// The fraction of requests that repeat an id already accepted (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Pad generated bodies to this many bytes.
        #[arg(long, default_value_t = 1600)]
        size: usize,
        /// Write every id sent, with its fate, here (for `verify`).
        #[arg(long)]
        ids: Option<PathBuf>,
        /// Send to this `host:port` (a load balancer, say) instead of the config's
        /// server.listen.
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check that every acknowledged id of a run is in the journal and, with --amqp and
    /// --queue, in that queue (which it drains). Exits 1 on anything lost or unexpected.
    Verify {
        #[arg(short, long, default_value = "loadtest/load.toml")]
        config: PathBuf,
        /// The ids file `run --ids` wrote.
        #[arg(long)]
        ids: PathBuf,
        /// Read the journals of these admin APIs (`http://host:port`, one per replica)
        /// instead of the config's admin.listen; an event may be in any of them.
        #[arg(long = "admin")]
        admins: Vec<String>,
        #[command(flatten)]
        check: Check,
    },
    /// Cycles of load, SIGKILL at a random moment, and restart; then verify.
    Crash {
        /// The hookgate binary to run.
        #[arg(long, default_value = "target/release/hookgate")]
        hookgate: PathBuf,
        #[arg(short, long, default_value = "loadtest/load.toml")]
        config: PathBuf,
        #[arg(long = "source")]
        sources: Vec<String>,
        #[arg(long, default_value_t = 5)]
        cycles: u32,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The earliest and latest moment of each kill, in ms after the load starts.
        #[arg(long, num_args = 2, default_values_t = [200, 1500])]
        kill_after_ms: Vec<u64>,
        #[arg(long, default_value_t = 1600)]
        size: usize,
        #[command(flatten)]
        check: Check,
    },
    /// Power cuts: a QEMU guest runs hookgate with its journal on an ext4 virtio disk;
    /// under load it is killed with SIGKILL and booted again on the same disk; every
    /// event acknowledged before the cut must be in the journal and still a duplicate.
    Powercut {
        /// The hookgate binary to put in the guest (the debug build will do).
        #[arg(long, default_value = "target/debug/hookgate")]
        hookgate: PathBuf,
        #[arg(long, default_value_t = 10)]
        cycles: u32,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// RabbitMQ on the host (127.0.0.1:5672) as the broker; its queue is checked too.
        #[arg(long)]
        broker: bool,
        /// Aim the cuts at these moments, in turn (default: all of them).
        #[arg(long = "moment", value_enum)]
        moments: Vec<powercut::Moment>,
        /// Software emulation even where /dev/kvm exists.
        #[arg(long)]
        tcg: bool,
        #[arg(long)]
        json: bool,
    },
    /// The baseline, the floor (plain HTTP only) and hookgate (a fresh journal, fsync
    /// before every 200), each its own process, under the same closed-loop load, in plain
    /// HTTP and in mutual TLS; prints req/s, p99, p99.9, each server's CPU per request
    /// and hookgate's ratios to the baseline and the floor.
    Bench {
        /// The hookgate binary to run.
        #[arg(long, default_value = "target/release/hookgate")]
        hookgate: PathBuf,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value = "10s")]
        duration: String,
        #[arg(long, default_value_t = 1600)]
        size: usize,
        /// Only plain HTTP.
        #[arg(long, conflicts_with = "mtls_only")]
        plain_only: bool,
        /// Only mutual TLS.
        #[arg(long)]
        mtls_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// Ingest at a fixed rate with N subscriptions (every event) to a local sink, after
    /// the same ingest with none; prints ingest and delivery rates, the acknowledgement
    /// p99 with and without subscriptions, the latency from each event's 200 to its
    /// arrival, and whether every delivery arrived. Exits 1 on any missing.
    Deliveries {
        /// The hookgate binary to start (each phase with a fresh journal).
        #[arg(long, default_value = "target/release/hookgate")]
        hookgate: PathBuf,
        /// Use the running gateway of this config instead: subscriptions are made through
        /// its admin API (its `[outbound] allow_private` must include 127.0.0.0/8) and
        /// deleted afterwards.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// With --config: the source to send for (default: the first).
        #[arg(long, requires = "config")]
        source: Option<String>,
        /// With --config: the admin token, if the gateway has one.
        #[arg(long, env = "HOOKGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, default_value_t = 4)]
        subscriptions: usize,
        /// Each subscription's max_in_flight (default: the gateway's).
        #[arg(long)]
        max_in_flight: Option<usize>,
        /// Ordered subscriptions: one delivery in flight each, in journal order.
        #[arg(long)]
        ordered: bool,
        /// Events per second (open loop).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value = "10s")]
        duration: String,
        /// At most this many ingest connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 1600)]
        size: usize,
        /// How long deliveries may take to arrive after ingest ends.
        #[arg(long, default_value = "30s")]
        drain: String,
        #[arg(long)]
        json: bool,
    },
    /// A bare hyper server: reads the body, answers 200 with a small JSON body.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Mutual TLS as hookgate sets it up, from this directory's server.pem,
        /// server-key.pem and ca.pem (as `hookgate gen-certs` writes them); a client
        /// certificate is required.
        #[arg(long, value_name = "DIR")]
        mtls: Option<PathBuf>,
    },
    /// The CPU ceiling: reads the body, checks GitHub's X-Hub-Signature-256 with the
    /// bench secret (401 if wrong), answers 200, keeps nothing.
    Hmac {
        #[arg(long, default_value = "127.0.0.1:8083")]
        listen: SocketAddr,
    },
    /// The floor for durable acknowledgements: the hmac server's check, then one writer
    /// thread appends each group of waiting bodies to DIR/floor.log with one write and one
    /// fdatasync, and only then are the group's requests answered 200.
    Floor {
        #[arg(long, default_value = "127.0.0.1:8084")]
        listen: SocketAddr,
        /// Where floor.log is created (empty); put it on the journal's filesystem.
        #[arg(long)]
        dir: PathBuf,
    },
    /// A round-robin TCP load balancer: each connection goes to the next --backend that
    /// accepts it (for trying several replicas on one machine).
    Balance {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
    },
    /// Posts signed GitHub pushes over HTTP/1.1, plain or mTLS, and prints requests/s.
    Post {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        #[arg(long, default_value = "bench-github-secret")]
        secret: String,
        /// TLS with a client certificate: CA, certificate and key files (PEM).
        #[arg(long, num_args = 3, value_names = ["CA", "CERT", "KEY"])]
        mtls: Option<Vec<std::path::PathBuf>>,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// A new connection (and so a full handshake) for every request.
        #[arg(long)]
        new_connection_each: bool,
    },
    /// Polls a queue's depth until it reaches `--until`, then prints how long that took
    /// from this command's start and the rate, from the first message to the last.
    QueueWatch {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        #[arg(long)]
        queue: String,
        #[arg(long)]
        until: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Delete the queue once it has been reached.
        #[arg(long)]
        delete: bool,
    },
}

/// The queue's depth, by a passive declare (which never creates or changes it).
async fn depth(channel: &lapin::Channel, queue: &str) -> anyhow::Result<u32> {
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue, options, lapin::types::FieldTable::default())
        .await?;
    Ok(declared.message_count())
}

async fn queue_watch(
    url: &str,
    queue: &str,
    until: u32,
    timeout: u64,
    delete: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let mut channel = connection.create_channel().await?;
    let mut first: Option<(std::time::Instant, u32)> = None;
    loop {
        let now = match depth(&channel, queue).await {
            Ok(now) => now,
            Err(_) => {
                // Not declared yet: the broker closed the channel; open another.
                channel = connection.create_channel().await?;
                0
            }
        };
        if now > 0 && first.is_none() {
            first = Some((std::time::Instant::now(), now));
        }
        if now >= until {
            let total = started.elapsed().as_secs_f64();
            let (t0, d0) = first.unwrap_or((started, 0));
            let span = t0.elapsed().as_secs_f64().max(1e-3);
            println!(
                "queue {queue}: {now} messages after {total:.2}s; {:.0} messages/s from the first to the last",
                f64::from(now - d0) / span
            );
            if delete {
                channel
                    .queue_delete(queue, lapin::options::QueueDeleteOptions::default())
                    .await?;
            }
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed().as_secs() < timeout,
            "queue {queue} reached only {now} of {until} in {timeout}s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    Ok(accepted())
}

/// The 200 every stand-in server gives: the status a hookgate client counts as accepted.
fn accepted() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(br#"{"status":"accepted"}"#)))
}

fn exit(ok: bool) -> std::process::ExitCode {
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match Cli::parse().command {
        Command::Run {
            config,
            sources,
            connections,
            rate,
            duration,
            count,
            duplicates,
            size,
            ids,
            target,
            json,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&duplicates),
                "--duplicates is a fraction from 0 to 1"
            );
            anyhow::ensure!(connections > 0, "--connections must be at least 1");
            let (loaded, sources) = run::sources(&config, &sources)?;
            let duration = match (duration, count) {
                (Some(text), _) => Some(
                    hookgate::config::units::parse_duration(&text)
                        .map_err(|e| anyhow::anyhow!("--duration: {e}"))?,
                ),
                (None, Some(_)) => None,
                (None, None) => Some(std::time::Duration::from_secs(10)),
            };
            let stamp = run::stamp();
            let plan = run::Plan {
                addr: target
                    .unwrap_or_else(|| hookgate::cli::reachable(loaded.server.listen).to_string()),
                sources,
                connections,
                rate,
                duration,
                count,
                duplicates,
                size,
                prefix: format!("load{stamp}"),
                tls: None,
            };
            let report = run::run(plan, Default::default()).await;
            if let Some(path) = ids {
                report.write_ids(&path)?;
            }
            if json {
                println!("{}", report.to_json());
            } else {
                report.print();
            }
            Ok(exit(report.tally.unexpected == 0))
        }
        Command::Verify {
            config,
            ids,
            admins,
            check:
                Check {
                    token,
                    amqp,
                    queue,
                    json,
                },
        } => {
            let admins = if admins.is_empty() {
                let loaded = hookgate::config::Config::load(&config)?;
                vec![format!(
                    "http://{}",
                    hookgate::cli::reachable(loaded.admin.listen)
                )]
            } else {
                admins
            };
            let sent = verify::read_ids(&ids)?;
            let mut sources: Vec<String> = sent.keys().map(|(s, _)| s.clone()).collect();
            sources.sort();
            sources.dedup();
            let mut found = verify::Found::new();
            for admin in &admins {
                for (key, n) in verify::journal(admin, token.as_deref(), &sources).await? {
                    *found.entry(key).or_default() += n;
                }
            }
            let journal = verify::check(&sent, &found);
            let queue = match (amqp, queue) {
                (Some(url), Some(queue)) => Some(verify::check(
                    &sent,
                    &verify::queue(&url, &queue, std::time::Duration::from_secs(3)).await?,
                )),
                _ => None,
            };
            let checked = verify::Checked { journal, queue };
            if json {
                println!("{}", serde_json::Value::Object(checked.to_json()));
            } else {
                checked.print();
            }
            Ok(exit(checked.ok()))
        }
        Command::Crash {
            hookgate,
            config,
            sources,
            cycles,
            connections,
            kill_after_ms,
            size,
            check:
                Check {
                    token,
                    amqp,
                    queue,
                    json,
                },
        } => {
            let outcome = crash::run(crash::Options {
                hookgate,
                config,
                sources,
                cycles,
                connections,
                kill_after_ms: (kill_after_ms[0], kill_after_ms[1].max(kill_after_ms[0])),
                size,
                amqp: amqp.zip(queue),
                token,
            })
            .await?;
            let ms: Vec<f64> = outcome
                .recoveries
                .iter()
                .map(|d| (d.as_secs_f64() * 1000.0).round())
                .collect();
            let checked = outcome.checked;
            if json {
                let mut fields = checked.to_json();
                fields.insert("cycles".into(), cycles.into());
                fields.insert("acked".into(), checked.journal.acked.into());
                fields.insert("recovery_ms".into(), ms.into());
                println!("{}", serde_json::Value::Object(fields));
            } else {
                println!(
                    "{cycles} crash cycles, {} events acknowledged",
                    checked.journal.acked
                );
                checked.print();
                println!("restart until answering, ms: {ms:?}");
            }
            Ok(exit(checked.ok()))
        }
        Command::Powercut {
            hookgate,
            cycles,
            connections,
            broker,
            moments,
            tcg,
            json,
        } => {
            let outcome = powercut::run(powercut::Options {
                hookgate,
                cycles,
                connections,
                broker,
                moments,
                tcg,
            })
            .await?;
            if json {
                println!("{}", outcome.to_json());
            } else {
                outcome.print();
            }
            Ok(exit(outcome.ok()))
        }
        Command::Post {
            addr,
            secret,
            mtls,
            connections,
            seconds,
            new_connection_each,
        } => {
            https::run(https::Options {
                addr,
                secret,
                tls: mtls.map(|files| (files[0].clone(), files[1].clone(), files[2].clone())),
                connections,
                seconds,
                new_connection_each,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::QueueWatch {
            url,
            queue,
            until,
            timeout,
            delete,
        } => {
            queue_watch(&url, &queue, until, timeout, delete).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            hookgate,
            connections,
            duration,
            size,
            plain_only,
            mtls_only,
            json,
        } => {
            let duration = hookgate::config::units::parse_duration(&duration)
                .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
            let rows = bench::run(bench::Options {
                hookgate,
                connections,
                duration,
                size,
                plain: !mtls_only,
                mtls: !plain_only,
            })
            .await?;
            bench::print(&rows, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliveries {
            hookgate,
            config,
            source,
            token,
            subscriptions,
            max_in_flight,
            ordered,
            rate,
            duration,
            connections,
            size,
            drain,
            json,
        } => {
            let parse = |flag: &str, text: &str| {
                hookgate::config::units::parse_duration(text)
                    .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
            };
            let outcome = deliveries::run(deliveries::Options {
                hookgate,
                attach: config,
                source,
                token,
                subscriptions,
                max_in_flight,
                ordered,
                rate,
                duration: parse("duration", &duration)?,
                connections,
                size,
                drain: parse("drain", &drain)?,
            })
            .await?;
            deliveries::print(&outcome, json);
            Ok(exit(outcome.ok()))
        }
        Command::Balance { listen, backends } => {
            let listener = TcpListener::bind(listen).await?;
            eprintln!(
                "balancing {} over {}",
                listener.local_addr()?,
                backends.join(", ")
            );
            balance::serve(listener, backends).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Baseline { listen, mtls } => {
            let tls = mtls.as_deref().map(bench::acceptor).transpose()?;
            let listener = TcpListener::bind(listen).await?;
            eprintln!("baseline listening on {}", listener.local_addr()?);
            bench::serve_baseline(listener, tls).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hmac { listen } => {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("hmac listening on {}", listener.local_addr()?);
            floor::serve_hmac(listener).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Floor { listen, dir } => {
            let listener = TcpListener::bind(listen).await?;
            eprintln!(
                "floor listening on {}, writing {}",
                listener.local_addr()?,
                dir.join("floor.log").display()
            );
            floor::serve_floor(listener, &dir).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
