//! `hookgate-loadtest post`: signed GitHub pushes over plain HTTP/1.1 or over TLS with a
//! client certificate (mTLS), on keep-alive connections or with a new connection (and so
//! a full handshake) for every request. wrk cannot present a client certificate; this
//! measures plaintext and mTLS with the same client so the two can be compared.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use hookgate::config::Secret;
use hookgate::verify::{Github, Outgoing, Scheme};

pub struct Options {
    pub addr: SocketAddr,
    pub secret: String,
    /// CA, client certificate and key: TLS when given.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    pub connections: usize,
    pub seconds: u64,
    pub new_connection_each: bool,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub fn connector(ca: &PathBuf, cert: &PathBuf, key: &PathBuf) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::fs::read(ca)?.as_slice()) {
        roots.add(c?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice()).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?
        .context("no private key")?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection is a full handshake: no session resumption.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn open(addr: SocketAddr, tls: Option<&TlsConnector>) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let send = match tls {
        None => {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            send
        }
        Some(tls) => {
            let stream = tls
                .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
                .await?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            send
        }
    };
    Ok(send)
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let body = Bytes::from(format!(
        "{{\"ref\":\"refs/heads/main\",\"padding\":\"{}\"}}",
        "x".repeat(1500)
    ));
    let mut signed = Outgoing {
        body: body.to_vec(),
        ..Outgoing::default()
    };
    Scheme::Github(Github::default()).sign(&Secret::new(options.secret.as_bytes()), &mut signed, 0);
    let signature = signed
        .headers
        .get("x-hub-signature-256")
        .context("signed")?
        .clone();
    let tls = match &options.tls {
        Some((ca, cert, key)) => Some(connector(ca, cert, key)?),
        None => None,
    };
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let prefix = format!("{:x}", crate::run::stamp());
    let mut workers = Vec::new();
    for worker in 0..options.connections {
        let (tls, body, signature, prefix) =
            (tls.clone(), body.clone(), signature.clone(), prefix.clone());
        let (addr, each) = (options.addr, options.new_connection_each);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut sender: Option<Sender> = None;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                if sender.is_none() || each {
                    match open(addr, tls.as_ref()).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    }
                }
                n += 1;
                let request = http::Request::post("/hooks/github")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .header("x-github-event", "push")
                    .header("x-github-delivery", format!("{prefix}-{worker}-{n}"))
                    .header("x-hub-signature-256", signature.clone())
                    .body(Full::new(body.clone()))
                    .expect("a valid request");
                let send = sender.as_mut().expect("connected");
                match send.send_request(request).await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.into_body().collect().await;
                        latencies.push(started.elapsed());
                    }
                    _ => {
                        errors += 1;
                        sender = None;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(options.seconds as f64);
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    println!(
        "{:.0} requests/s, p99 {:.2} ms, {} ok, {} errors",
        latencies.len() as f64 / elapsed,
        p99.as_secs_f64() * 1000.0,
        latencies.len(),
        errors
    );
    Ok(())
}
