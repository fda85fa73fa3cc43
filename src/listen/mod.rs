//! The accept loop shared by the ingest and admin listeners: a connection limit (new
//! connections wait in the kernel's backlog while it is reached), a header-read timeout
//! for slow clients, and a graceful stop that lets requests in flight finish within a
//! deadline. With TLS, the handshake runs in the connection's own task under the
//! header-read timeout, and HTTP/2 is served when ALPN chose it.

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming as HyperBody;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::answer::Body;
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub drain_timeout: Duration,
}

/// Wraps `handler` as a hyper service that hands each request the connection's identity.
fn service<H, Fut>(
    handler: H,
    identity: Option<tls::ClientIdentity>,
) -> impl hyper::service::Service<
    Request<HyperBody>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
where
    H: Fn(Request<HyperBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    service_fn(move |mut request: Request<HyperBody>| {
        let handler = handler.clone();
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
        async move { Ok::<_, Infallible>(handler(request).await) }
    })
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Serves `handler` on `listener` until `stop` turns true, then drains. With `tls`, each
/// request carries the client's [`tls::ClientIdentity`] as an extension when it
/// presented a certificate.
pub async fn serve<H, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    tls: Option<Arc<tls::Tls>>,
    handler: H,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) where
    H: Fn(Request<HyperBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
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
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        let open = metrics.connection(name);
        let span = tracing::info_span!("conn", listener = name, %peer);
        let connection = async move {
            let ended = match acceptor {
                None => {
                    let service = service(handler, None);
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                            .await;
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let (_, session) = stream.get_ref();
                    let identity = tls::client_identity(session.peer_certificates());
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    let service = service(handler, identity);
                    if h2 {
                        let mut http2 =
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                        http2.timer(TokioTimer::new());
                        watcher
                            .watch(http2.serve_connection(TokioIo::new(stream), service))
                            .await
                    } else {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        };
        tokio::spawn(connection.instrument(span));
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        listener = name,
        open,
        "stopped accepting; draining connections"
    );
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain deadline passed; closing the remaining connections"
        );
    }
}
