//! `hookgate-loadtest baseline`: a bare hyper server that reads each body and answers
//! 200, the ceiling hookgate is measured against. `hookgate-loadtest queue-watch`: times
//! how long a RabbitMQ queue takes to reach a depth, which measures forwarding.

mod https;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "hookgate-loadtest")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A bare hyper server: reads the body, answers 200 with a small JSON body.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
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
    Ok(Response::new(Full::new(Bytes::from_static(
        br#"{"status":"accepted"}"#,
    ))))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
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
            .await
        }
        Command::QueueWatch {
            url,
            queue,
            until,
            timeout,
            delete,
        } => queue_watch(&url, &queue, until, timeout, delete).await,
        Command::Baseline { listen } => {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("baseline listening on {}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(answer))
                        .await;
                });
            }
        }
    }
}
