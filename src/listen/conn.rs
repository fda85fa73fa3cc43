//! One accepted connection, from the TLS handshake to its close: HTTP/1.1, or HTTP/2
//! when ALPN chose it, each under the same time limits.
//!
//! - The TLS handshake must finish within `header_read_timeout`.
//! - A connection with no request open is idle. After `header_read_timeout` idle (and
//!   before twice that: it is checked once per `header_read_timeout`, so that requests
//!   themselves wake nothing and set no timer) it is closed: before its first request
//!   (an HTTP/2 client that sends only its preface, or nothing) and between requests (a
//!   kept-alive HTTP/1.1 connection, an HTTP/2 one with no stream open). A request is
//!   open once its head is whole, so the same check cuts off an HTTP/1.1 client still
//!   sending a head: such a connection is dropped, not closed gracefully. (hyper's own
//!   header timer would do it within one `header_read_timeout`, but it sets a timer for
//!   every request: 2.3% of a request's instructions outside SHA-256, BENCHMARKS.md.)
//! - HTTP/2 streams are limited per connection and the peer is pinged, so a dead peer
//!   holding a stream open is noticed.
//! - A close is graceful (HTTP/2 `GOAWAY`), and bounded: a peer that does not let the
//!   connection finish (say, never answers the `GOAWAY`'s ping) is cut off after another
//!   `header_read_timeout`.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use hyper::body::Incoming as HyperBody;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::tls::{self, ClientIdentity};
use super::{stopped, Limits};

/// What an answer's body may be: a whole body (`answer::Body`) or, on the admin
/// listener, one that is streamed (server-sent events).
pub trait AnswerBody:
    hyper::body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> AnswerBody for B where
    B: hyper::body::Body<
            Data = bytes::Bytes,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Send
        + Unpin
        + 'static
{
}

/// Where refused TLS handshakes are logged: the listener's name (the key of their
/// rate limit) and the shared refusal log.
#[derive(Clone)]
pub struct Refused {
    pub listener: &'static str,
    pub log: Arc<crate::refuse::RefusalLog>,
}

impl Refused {
    /// Logs a refused handshake at `info` inside the connection's span (listener and
    /// peer), a few in full per reason and interval, like other refusals.
    fn handshake(&self, reason: &'static str, error: &str) {
        if self
            .log
            .admit(&format!("tls:{}", self.listener), reason, false)
        {
            tracing::info!(reason, error, "TLS handshake refused");
        }
    }
}

/// The client's address (per-address limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// A way to close the connection a request came on at once: for an answer that runs
/// until the client goes (the live stream) and finds that the client has stopped
/// reading, when an orderly end can no longer be written.
#[derive(Clone, Debug, Default)]
pub struct CutOff(Arc<Attention>);

impl CutOff {
    /// Closes the connection, whatever it is doing.
    pub fn cut(&self) {
        self.0.raise(CUT);
    }
}

/// Why a connection must stop, raised from outside the task that drives it (its answer
/// cut it off, the listener stops, it idled), and that task's waker. The task reads one
/// flag each time it wakes, where three signals in a `select!` were each polled on every
/// wake of every request (a lock each: 1,360 instructions a request).
#[derive(Debug, Default)]
struct Attention {
    raised: AtomicU8,
    waker: AtomicWaker,
}

/// What [`Attention`] raises; more than one may be.
const CUT: u8 = 1;
const STOP: u8 = 2;
const IDLE: u8 = 4;

impl Attention {
    fn raise(&self, why: u8) {
        self.raised.fetch_or(why, Ordering::AcqRel);
        self.waker.wake();
    }

    /// What has been raised so far; a raise after this wakes `cx`'s task.
    fn poll(&self, cx: &mut Context<'_>) -> u8 {
        self.waker.register(cx.waker());
        self.raised.load(Ordering::Acquire)
    }
}

/// What a handler is given with each request about the connection it came on. Passed
/// beside the request rather than in its extensions, which allocate a map and a box for
/// each value on every request.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: ClientAddr,
    /// The names of the client's certificate, over TLS when it presented a verified one.
    pub identity: Option<ClientIdentity>,
    pub cut: CutOff,
}

/// Serves one connection until it ends, the listener stops (then it gets
/// `drain_timeout`), or it idles past its limit.
pub async fn serve<H, Fut, B>(
    stream: TcpStream,
    peer: SocketAddr,
    limits: Limits,
    acceptor: Option<(tokio_rustls::TlsAcceptor, Refused)>,
    handler: H,
    stop: watch::Receiver<bool>,
) where
    H: Fn(Request<HyperBody>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: AnswerBody,
{
    let activity = Arc::new(Activity::default());
    let cut = CutOff::default();
    let Some((acceptor, refused)) = acceptor else {
        let service = service(handler, peer, None, activity.clone(), cut.clone());
        let connection = http1().serve_connection(TokioIo::new(stream), service);
        return drive(connection, Idle::Drop, limits, activity, stop, cut).await;
    };
    let stream =
        match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return refused.handshake(tls::refusal(&e), &e.to_string()),
            Err(_) => return refused.handshake("handshake_timeout", "no handshake in time"),
        };
    let (_, session) = stream.get_ref();
    let identity = tls::client_identity(session.peer_certificates());
    let h2 = session.alpn_protocol() == Some(b"h2");
    let service = service(handler, peer, identity, activity.clone(), cut.clone());
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_streams)
            // What a peer may send before hookgate reads it is held in memory: small
            // windows keep a connection's share small (bodies are read as the memory
            // budget allows).
            .initial_stream_window_size(H2_WINDOW)
            .initial_connection_window_size(2 * H2_WINDOW)
            .keep_alive_interval(limits.h2_ping_interval)
            .keep_alive_timeout(limits.h2_ping_interval);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        drive(connection, Idle::Close, limits, activity, stop, cut).await
    } else {
        let connection = http1().serve_connection(TokioIo::new(stream), service);
        drive(connection, Idle::Drop, limits, activity, stop, cut).await
    }
}

/// The HTTP/1.1 read buffer's limit.
const H1_BUFFER: usize = 16 * 1024;
/// The HTTP/2 flow-control window of a stream (the connection's is twice that).
const H2_WINDOW: u32 = 256 * 1024;

/// HTTP/1.1 without hyper's header timer: `drive` cuts off a head that takes too long.
fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .header_read_timeout(None)
        // hyper reads ahead into this buffer; bounding it bounds what a connection whose
        // body waits for the memory budget holds (and the size of a request's headers).
        .max_buf_size(H1_BUFFER)
        .keep_alive(true);
    builder
}

/// Wraps `handler` as a hyper service that hands each request the connection's [`Peer`]
/// (the client's address, identity and [`CutOff`]), and counts the requests open on the
/// connection in `activity`, from the request until its answer's body is sent (a
/// streamed answer keeps its connection busy).
fn service<H, Fut, B>(
    handler: H,
    peer: SocketAddr,
    identity: Option<ClientIdentity>,
    activity: Arc<Activity>,
    cut: CutOff,
) -> impl hyper::service::Service<
    Request<HyperBody>,
    Response = Response<Counted<B>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Counted<B>>, Infallible>> + Send,
> + Clone
where
    H: Fn(Request<HyperBody>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: AnswerBody,
{
    let peer = Peer {
        addr: ClientAddr(peer),
        identity,
        cut,
    };
    // HTTP/2 runs each request in a task of its own: without this, its log lines would
    // lose the connection's span (listener, peer) that HTTP/1.1 requests run in.
    let span = tracing::Span::current();
    service_fn(move |request: Request<HyperBody>| {
        // Dropped when the handler finishes or hyper drops it (a reset stream).
        let busy = Busy::new(activity.clone());
        // The handler's future wrapped, not awaited in an `async` block, which would
        // hold a second copy of it (see `Gateway::handle`).
        span.in_scope(|| handler(request, peer.clone()))
            .instrument(span.clone())
            .map(move |response| {
                Ok::<_, Infallible>(response.map(|body| Counted { body, _busy: busy }))
            })
    })
}

/// An answer's body that keeps its request counted until hyper has sent it (or dropped
/// it).
pub struct Counted<B> {
    body: B,
    _busy: Busy,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// What the requests of one connection do, for telling when it idles: how many are
/// open, and a count of every start and end.
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    changes: AtomicU64,
}

/// One open request, counted while it lives.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Busy {
        activity.open.fetch_add(1, Ordering::Relaxed);
        activity.changes.fetch_add(1, Ordering::Release);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changes.fetch_add(1, Ordering::Release);
    }
}

/// What is done with a connection found idle (no request open for a whole
/// `header_read_timeout`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// HTTP/2: a graceful close (`GOAWAY`), which a peer with no stream open finishes at
    /// once.
    Close,
    /// HTTP/1.1: dropped. With no request open there is nothing to finish, and a client
    /// still sending a head is cut off there and then (a graceful close would wait for
    /// the rest of it).
    Drop,
}

/// Polls `connection` to its end; starts a graceful close when the listener stops or the
/// connection idles past `header_read_timeout` (`idle` says how), and drops it if that
/// close takes too long or a request's answer cuts it off.
async fn drive<C>(
    connection: C,
    idle: Idle,
    limits: Limits,
    activity: Arc<Activity>,
    stop: watch::Receiver<bool>,
    cut: CutOff,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = pin!(connection);
    let attention = cut.0;
    // The stop and the idling are watched from a task of their own, which raises them
    // here: a timer polled beside the connection would poll the connection each time it
    // fired, and let an answer stuck behind a client that reads nothing move on.
    let _watch = AbortOnDrop(tokio::spawn(raise_stop_or_idle(
        activity.clone(),
        limits.header_read_timeout,
        stop,
        attention.clone(),
    )));
    let raised = poll_fn(|cx| match connection.as_mut().poll(cx) {
        Poll::Ready(ended) => Poll::Ready(Err(ended)),
        Poll::Pending => match attention.poll(cx) {
            0 => Poll::Pending,
            raised => Poll::Ready(Ok(raised)),
        },
    })
    .await;
    let grace = match raised {
        Err(ended) => return report(ended),
        Ok(raised) if raised & CUT != 0 => {
            tracing::debug!("connection cut off by its answer");
            return;
        }
        Ok(raised) if raised & STOP != 0 => limits.drain_timeout,
        // Still none open: the watcher's check and this poll ran apart, and a request may
        // have started between them (then it is closed gracefully, below).
        Ok(_) if idle == Idle::Drop && activity.open.load(Ordering::Relaxed) == 0 => {
            tracing::debug!("idle connection dropped");
            return;
        }
        Ok(_) => {
            tracing::debug!("idle connection closed");
            limits.header_read_timeout
        }
    };
    connection.as_mut().graceful_shutdown();
    let mut late = pin!(tokio::time::sleep(grace));
    poll_fn(|cx| {
        if let Poll::Ready(ended) = connection.as_mut().poll(cx) {
            report(ended);
        } else if attention.poll(cx) & CUT != 0 {
            tracing::debug!("connection cut off by its answer");
        } else if late.as_mut().poll(cx).is_ready() {
            tracing::debug!("connection did not close in time; dropped");
        } else {
            return Poll::Pending;
        }
        Poll::Ready(())
    })
    .await;
}

fn report<E: std::fmt::Display>(ended: Result<(), E>) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Raises `STOP` on `attention` when the listener stops, or `IDLE` once no request has
/// been open for `limit`: checked every `limit`, the connection is idle when no request
/// is open and none started or ended since the check before, so after `limit` to twice
/// that of idling.
async fn raise_stop_or_idle(
    activity: Arc<Activity>,
    limit: Duration,
    mut stop: watch::Receiver<bool>,
    attention: Arc<Attention>,
) {
    let idled = async {
        let mut seen = activity.changes.load(Ordering::Acquire);
        loop {
            tokio::time::sleep(limit).await;
            let now = activity.changes.load(Ordering::Acquire);
            if now == seen && activity.open.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = now;
        }
    };
    let why = tokio::select! {
        _ = stopped(&mut stop) => STOP,
        _ = idled => IDLE,
    };
    attention.raise(why);
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
