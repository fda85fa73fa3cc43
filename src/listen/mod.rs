//! The accept loop shared by the ingest and admin listeners: a connection limit (new
//! connections wait in the kernel's backlog while it is reached) and a graceful stop that
//! lets requests in flight finish within a deadline. Each connection is served in its own
//! task by [`conn`], under the time limits it describes (TLS handshake, idle and header
//! timeouts, HTTP/2 streams and pings).

pub mod conn;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming as HyperBody;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::metrics::Metrics;

pub use conn::{ClientAddr, CutOff, Peer};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// For the TLS handshake, each request's headers, and idle connections.
    pub header_read_timeout: Duration,
    pub drain_timeout: Duration,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` of an HTTP/2 connection.
    pub h2_max_streams: u32,
    /// How often an HTTP/2 peer is pinged, and how long it has to answer.
    pub h2_ping_interval: Duration,
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Serves `handler` on `listener` until `stop` turns true, then drains. Each request
/// comes with its connection's [`Peer`]: the client's address, with `tls` its
/// [`tls::ClientIdentity`] when it presented a certificate, and the connection's
/// [`CutOff`].
pub async fn serve<H, Fut, B>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    tls: Option<Arc<tls::Tls>>,
    handler: H,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) where
    H: Fn(Request<HyperBody>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: conn::AnswerBody,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = tls.as_ref().map(|tls| {
            let refused = conn::Refused {
                listener: name,
                log: tls.refusals(),
            };
            (tls.acceptor(), refused)
        });
        let open = metrics.connection(name);
        let span = tracing::info_span!("conn", listener = name, %peer);
        let served = conn::serve(
            stream,
            peer,
            limits,
            acceptor,
            handler.clone(),
            stop.clone(),
        );
        tokio::spawn(
            async move {
                served.await;
                drop(open);
                drop(permit);
            }
            .instrument(span),
        );
    }
    drop(listener);
    // Every connection holds a permit until it ends; each closes itself gracefully on the
    // stop and is dropped after `drain_timeout`, so this wait is bounded too.
    let open = limits.max_connections - permits.available_permits();
    tracing::info!(
        listener = name,
        open,
        "stopped accepting; draining connections"
    );
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drained = permits.acquire_many(all);
    if tokio::time::timeout(limits.drain_timeout + Duration::from_secs(1), drained)
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain deadline passed; closing the remaining connections"
        );
    }
}
