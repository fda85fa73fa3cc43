//! `hookgate-loadtest bench`: the bare-hyper baseline, the floor and hookgate, one after
//! the other under the same load from the same client, in plain HTTP and in mutual TLS,
//! and hookgate's ratio to each. The floor (see [`crate::floor`]) runs in plain HTTP only:
//! it stands for the disk, which TLS does not change. The baseline's TLS is hookgate's own
//! (the same certificates, the same client-certificate check), so the ratio is the price
//! of verifying, journaling and fsyncing, not of TLS.
//!
//! Every server is a process of its own (the baseline and the floor are this binary's
//! `baseline` and `floor`), so each one's CPU per request is measured alike: its user and
//! system time from `/proc/PID/stat` across the load, over the requests sent. The load
//! client's own CPU is in none of them.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::run::{self, Plan, Report};

pub struct Options {
    pub hookgate: PathBuf,
    pub connections: usize,
    pub duration: Duration,
    pub size: usize,
    pub plain: bool,
    pub mtls: bool,
}

pub struct Row {
    pub mode: &'static str,
    /// In the order they ran: `bare`, `floor` (plain only), `hookgate`.
    pub servers: Vec<Measured>,
}

pub struct Measured {
    pub server: &'static str,
    pub report: Report,
    /// The server process's CPU time over the load, per request sent, in microseconds.
    pub cpu_per_request: f64,
}

pub(crate) const SECRET: &str = "bench-github-secret";

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A gateway config in `dir` with one GitHub source, plain or with required mTLS.
fn config(dir: &Path, mtls: bool) -> anyhow::Result<(PathBuf, SocketAddr, SocketAddr)> {
    let ingest: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let tls = if mtls {
        format!(
            "[server.tls]\ncert = \"{0}/server.pem\"\nkey = \"{0}/server-key.pem\"\nclient_ca = \"{0}/ca.pem\"\nclient_auth = \"required\"\n",
            dir.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "[server]\nlisten = \"{ingest}\"\n{tls}\n[admin]\nlisten = \"{admin}\"\n\n[journal]\npath = \"{}\"\nmax_backlog = 100000000\n\n[[sources]]\nname = \"github\"\nscheme = \"github\"\nsecrets = [\"{SECRET}\"]\n",
        dir.join(if mtls { "journal-mtls" } else { "journal" }).display()
    );
    let path = dir.join(if mtls { "mtls.toml" } else { "plain.toml" });
    std::fs::write(&path, text)?;
    Ok((path, ingest, admin))
}

/// hookgate's TLS with a required client certificate, from `dir`'s server.pem,
/// server-key.pem and ca.pem.
pub fn acceptor(dir: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let settings = hookgate::config::TlsConfig {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        client_ca: Some(dir.join("ca.pem")),
        client_auth: hookgate::config::ClientAuth::Required,
    };
    let tls = hookgate::listen::tls::Tls::load(&settings).map_err(anyhow::Error::msg)?;
    Ok(tls.acceptor())
}

/// The baseline server on `listener`, with hookgate's TLS when `tls` is set.
pub async fn serve_baseline(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(crate::answer))
                        .await;
                }
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service_fn(crate::answer))
                            .await;
                    }
                }
            }
        });
    }
}

/// A server process, stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this binary with `args` (a `baseline` or `floor` command) and waits until
/// `addr` takes connections.
async fn start_own(args: Vec<OsString>, addr: SocketAddr) -> anyhow::Result<Server> {
    let mut server = Server(
        std::process::Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let began = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = server.0.try_wait()? {
            anyhow::bail!("the server on {addr} exited while starting: {status}");
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(10),
            "nothing listened on {addr} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(server)
}

async fn load(
    config: &Path,
    addr: SocketAddr,
    options: &Options,
    tls: Option<tokio_rustls::TlsConnector>,
    label: &str,
) -> anyhow::Result<Report> {
    let (_, sources) = run::sources(config, &[])?;
    let stamp = run::stamp();
    let plan = Plan {
        addr: addr.to_string(),
        sources,
        connections: options.connections,
        rate: None,
        duration: Some(options.duration),
        count: None,
        duplicates: 0.0,
        size: options.size,
        prefix: format!("bench{label}{stamp}"),
        tls,
    };
    Ok(run::run(plan, Default::default()).await)
}

/// Loads `addr`, served by `server`, and takes the server's CPU time across the load.
async fn measure(
    name: &'static str,
    server: &Server,
    config: &Path,
    addr: SocketAddr,
    options: &Options,
    tls: Option<tokio_rustls::TlsConnector>,
) -> anyhow::Result<Measured> {
    let before = crate::cpu::ticks(server.0.id())?;
    let report = load(config, addr, options, tls, name).await?;
    let used = crate::cpu::ticks(server.0.id())? - before;
    Ok(Measured {
        server: name,
        cpu_per_request: crate::cpu::micros(used) / report.tally.sent.max(1) as f64,
        report,
    })
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub async fn run(options: Options) -> anyhow::Result<Vec<Row>> {
    let dir = std::env::temp_dir().join(format!("hookgate-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    hookgate::cli::certs::gen_certs(&dir, "bench.client")?;
    let mut rows = Vec::new();
    for (mode, mtls) in [("plain", false), ("mTLS", true)] {
        if (mtls && !options.mtls) || (!mtls && !options.plain) {
            continue;
        }
        let (config, ingest, admin) = config(&dir, mtls)?;
        let connector = if mtls {
            Some(crate::https::connector(
                &dir.join("ca.pem"),
                &dir.join("client.pem"),
                &dir.join("client-key.pem"),
            )?)
        } else {
            None
        };
        let mut servers = Vec::new();

        let addr = local(free_port()?);
        let mut args: Vec<OsString> = vec![
            "baseline".into(),
            "--listen".into(),
            addr.to_string().into(),
        ];
        if mtls {
            args.extend(["--mtls".into(), dir.clone().into()]);
        }
        let bare = start_own(args, addr).await?;
        servers.push(measure("bare", &bare, &config, addr, &options, connector.clone()).await?);
        drop(bare);

        if !mtls {
            // Beside the journal, on the same filesystem.
            let floor_dir = dir.join("floor");
            std::fs::create_dir_all(&floor_dir)?;
            let addr = local(free_port()?);
            let args = vec![
                "floor".into(),
                "--listen".into(),
                addr.to_string().into(),
                "--dir".into(),
                floor_dir.clone().into(),
            ];
            let floor = start_own(args, addr).await?;
            servers.push(measure("floor", &floor, &config, addr, &options, None).await?);
            drop(floor);
            std::fs::remove_dir_all(&floor_dir)?;
        }

        let mut gate = Server(crate::crash::start(&options.hookgate, &config, None)?);
        crate::crash::answering(&format!("http://{admin}"), &mut gate.0).await?;
        servers.push(measure("hookgate", &gate, &config, ingest, &options, connector).await?);
        drop(gate);
        rows.push(Row { mode, servers });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

fn rate(r: &Report) -> f64 {
    r.tally.sent as f64 / r.elapsed.as_secs_f64().max(1e-9)
}

impl Row {
    fn server(&self, name: &str) -> Option<&Measured> {
        self.servers.iter().find(|m| m.server == name)
    }

    /// hookgate's rate over each other server's: `("hookgate/bare", 0.49)`, ….
    fn ratios(&self) -> Vec<(String, f64)> {
        let Some(gate) = self.server("hookgate") else {
            return Vec::new();
        };
        self.servers
            .iter()
            .filter(|m| m.server != "hookgate")
            .map(|m| {
                let ratio = rate(&gate.report) / rate(&m.report).max(1e-9);
                (format!("hookgate/{}", m.server), ratio)
            })
            .collect()
    }
}

pub fn print(rows: &[Row], json: bool) {
    let ms = |r: &Report, q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
    if json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                let servers: serde_json::Map<String, serde_json::Value> = row
                    .servers
                    .iter()
                    .map(|m| {
                        let mut report = m.report.to_json();
                        report["cpu_us_per_request"] = m.cpu_per_request.into();
                        (m.server.to_string(), report)
                    })
                    .collect();
                let ratios: serde_json::Map<String, serde_json::Value> = row
                    .ratios()
                    .into_iter()
                    .map(|(name, ratio)| (name, ratio.into()))
                    .collect();
                serde_json::json!({ "mode": row.mode, "servers": servers, "ratios": ratios })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!("mode   server         req/s       p99     p99.9   CPU/request");
    for row in rows {
        for m in &row.servers {
            println!(
                "{:<6} {:<9} {:>10.0} {:>6.2} ms {:>6.2} ms {:>8.1} µs",
                row.mode,
                m.server,
                rate(&m.report),
                ms(&m.report, 0.99),
                ms(&m.report, 0.999),
                m.cpu_per_request,
            );
            let refused = m.report.tally.not_accepted();
            if refused > 0 || m.report.tally.errors > 0 {
                println!(
                    "       {refused} answers other than accepted, {} without an answer",
                    m.report.tally.errors
                );
            }
        }
        let ratios: Vec<String> = row
            .ratios()
            .iter()
            .map(|(name, ratio)| format!("{name} {ratio:.2}x"))
            .collect();
        println!("       {}", ratios.join(", "));
    }
    println!(
        "CPU/request: each server process's user+system time (/proc/PID/stat) over its load, \
         divided by the requests sent; the load client is not counted."
    );
}
