//! `hookgate-loadtest bench`: the bare-hyper baseline and hookgate, one after the other
//! under the same load from the same client, in plain HTTP and in mutual TLS, and the
//! ratio of each pair. The baseline's TLS is hookgate's own (the same certificates, the
//! same client-certificate check), so the ratio is the price of verifying, journaling
//! and fsyncing, not of TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub baseline: Report,
    pub hookgate: Report,
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

async fn load(
    config: &Path,
    addr: SocketAddr,
    options: &Options,
    tls: Option<tokio_rustls::TlsConnector>,
    label: &str,
) -> anyhow::Result<Report> {
    let (_, sources) = run::sources(config, &[])?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
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
        let (acceptor, connector) = if mtls {
            let settings = hookgate::config::TlsConfig {
                cert: dir.join("server.pem"),
                key: dir.join("server-key.pem"),
                client_ca: Some(dir.join("ca.pem")),
                client_auth: hookgate::config::ClientAuth::Required,
            };
            let tls = hookgate::listen::tls::Tls::load(&settings).map_err(anyhow::Error::msg)?;
            let connector = crate::https::connector(
                &dir.join("ca.pem"),
                &dir.join("client.pem"),
                &dir.join("client-key.pem"),
            )?;
            (Some(tls.acceptor()), Some(connector))
        } else {
            (None, None)
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_addr = listener.local_addr()?;
        let server = tokio::spawn(serve_baseline(listener, acceptor));
        let baseline = load(&config, base_addr, &options, connector.clone(), "b").await?;
        server.abort();

        let mut child = crate::crash::start(&options.hookgate, &config, None)?;
        let measured = async {
            crate::crash::answering(&format!("http://{admin}"), &mut child).await?;
            load(&config, ingest, &options, connector, "h").await
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        rows.push(Row {
            mode,
            baseline,
            hookgate: measured?,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

pub fn print(rows: &[Row], json: bool) {
    let rate = |r: &Report| r.tally.sent as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let p99 = |r: &Report| r.latency.value_at_quantile(0.99) as f64 / 1000.0;
    if json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                serde_json::json!({
                    "mode": row.mode,
                    "baseline": row.baseline.to_json(),
                    "hookgate": row.hookgate.to_json(),
                    "ratio": rate(&row.hookgate) / rate(&row.baseline).max(1e-9),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!("mode   baseline req/s (p99)     hookgate req/s (p99)     ratio");
    for row in rows {
        println!(
            "{:<6} {:>10.0} ({:>6.2} ms)    {:>10.0} ({:>6.2} ms)    {:.2}x",
            row.mode,
            rate(&row.baseline),
            p99(&row.baseline),
            rate(&row.hookgate),
            p99(&row.hookgate),
            rate(&row.hookgate) / rate(&row.baseline).max(1e-9)
        );
        let refused: u64 = row
            .hookgate
            .tally
            .answers
            .iter()
            .filter(|(kind, _)| kind.as_str() != "accepted")
            .map(|(_, n)| n)
            .sum();
        if refused > 0 || row.hookgate.tally.errors > 0 {
            println!(
                "       hookgate: {refused} answers other than accepted, {} without an answer",
                row.hookgate.tally.errors
            );
        }
    }
}
