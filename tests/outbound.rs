//! The outbound client (`deliver::client`) against real servers on loopback: an
//! HTTP/1.1 server and an HTTP/2 server over TLS with its own CA. Each server counts the
//! TCP connections it accepts, which shows pooling and dropped connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{stream, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use hookgate::cli::certs::{Authority, Validity};
use hookgate::deliver::client::{Attempted, Outbound, OutboundSettings, BODY_KEPT};
use hookgate::deliver::target::{check_url, AllowList};

type Body = BoxBody<Bytes, Infallible>;

/// A server on 127.0.0.1 and the number of connections it has accepted.
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Server {
    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

/// The test endpoints, by path.
async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let version = format!("{:?}", req.version());
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let (user_agent, team) = (header("user-agent"), header("x-team"));
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let answer = match path.as_str() {
        // What arrived: the protocol, two headers and the body's length.
        "/echo" => Response::new(full(format!(
            "{version} {user_agent} {team} {}",
            body.len()
        ))),
        "/redirect" => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/echo")
            .body(full("moved"))
            .unwrap(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(full("late"))
        }
        // 1 MiB at once, then a body that never ends.
        "/huge" => {
            let chunks = (0..64).map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 16 * 1024]))));
            let endless = stream::iter(chunks).chain(stream::pending());
            Response::new(BodyExt::boxed(StreamBody::new(endless)))
        }
        "/busy" => Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("retry-after", "120")
            .body(full(""))
            .unwrap(),
        "/later" => {
            let at = SystemTime::now() + Duration::from_secs(3600);
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", httpdate::fmt_http_date(at))
                .body(full(""))
                .unwrap()
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full(""))
            .unwrap(),
    };
    Ok(answer)
}

/// A plain HTTP/1.1 server.
async fn http1_server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
    Server { addr, connections }
}

/// An HTTPS server offering h2 and http/1.1 by ALPN, with a certificate for 127.0.0.1
/// from a fresh CA; returns the CA's PEM too.
async fn tls_server() -> (Server, String) {
    let ca = Authority::new("outbound test CA").unwrap();
    let issued = ca.server(&["127.0.0.1"], Validity::days(1)).unwrap();
    let certs = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service_fn(handle))
                    .await;
            });
        }
    });
    (Server { addr, connections }, ca.issued().cert_pem)
}

fn outbound(allow: &[&str], timeout: Duration) -> Outbound {
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    Outbound::new(OutboundSettings {
        allow: AllowList::parse(&allow).unwrap(),
        timeout,
        user_agent: "hookgate/test".into(),
    })
    .unwrap()
}

fn loopback() -> Outbound {
    outbound(&["127.0.0.0/8", "::1/128"], Duration::from_secs(5))
}

async fn post(out: &Outbound, url: &str) -> Attempted {
    out.post(url, None, &[], Bytes::from_static(b"{}")).await
}

fn text(attempt: &Attempted) -> &str {
    std::str::from_utf8(&attempt.body).unwrap()
}

#[tokio::test]
async fn http1_post_carries_headers_and_body_and_reuses_one_connection() {
    let server = http1_server().await;
    let out = loopback();
    let headers = vec![("X-Team".to_string(), "ops".to_string())];
    for _ in 0..3 {
        let attempt = out
            .post(
                &server.url("http", "/echo"),
                None,
                &headers,
                Bytes::from_static(b"{\"a\":1}"),
            )
            .await;
        assert_eq!(attempt.status, Some(200), "{attempt:?}");
        assert_eq!(attempt.error, None);
        assert_eq!(text(&attempt), "HTTP/1.1 hookgate/test ops 7");
        assert_eq!(attempt.retry_after, None);
    }
    assert_eq!(
        server.connections(),
        1,
        "sequential posts share a connection"
    );
}

#[tokio::test]
async fn https_negotiates_h2_with_the_subscriptions_ca_and_reuses_it() {
    let (server, ca_pem) = tls_server().await;
    let out = loopback();
    for _ in 0..3 {
        let attempt = out
            .post(
                &server.url("https", "/echo"),
                Some(&ca_pem),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(attempt.status, Some(200), "{attempt:?}");
        assert_eq!(text(&attempt), "HTTP/2.0 hookgate/test - 0");
    }
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn https_without_the_ca_is_a_tls_error() {
    let (server, _) = tls_server().await;
    let attempt = post(&loopback(), &server.url("https", "/echo")).await;
    assert_eq!(attempt.status, None);
    let error = attempt.error.unwrap();
    assert!(error.starts_with("tls: "), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn a_redirect_is_a_status_not_followed() {
    let server = http1_server().await;
    let attempt = post(&loopback(), &server.url("http", "/redirect")).await;
    assert_eq!(attempt.status, Some(302));
    assert_eq!(text(&attempt), "moved");
}

#[tokio::test]
async fn a_slow_server_hits_the_timeout() {
    let server = http1_server().await;
    let out = outbound(&["127.0.0.0/8"], Duration::from_millis(300));
    let attempt = post(&out, &server.url("http", "/slow")).await;
    assert_eq!(attempt.status, None);
    assert_eq!(attempt.error.as_deref(), Some("timeout after 300ms"));
    assert!(attempt.duration < Duration::from_secs(2), "{attempt:?}");
}

#[tokio::test]
async fn a_huge_body_keeps_4_kib_and_drops_the_connection() {
    let server = http1_server().await;
    let out = loopback();
    let attempt = post(&out, &server.url("http", "/huge")).await;
    assert_eq!(attempt.status, Some(200), "{attempt:?}");
    assert_eq!(attempt.body.len(), BODY_KEPT);
    assert!(attempt.body.iter().all(|&b| b == b'x'));
    assert!(attempt.duration < Duration::from_secs(2), "{attempt:?}");
    // The unread rest went with its connection: the next attempt opens another.
    let next = post(&out, &server.url("http", "/echo")).await;
    assert_eq!(next.status, Some(200));
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn retry_after_in_seconds_and_as_a_date() {
    let server = http1_server().await;
    let out = loopback();
    let busy = post(&out, &server.url("http", "/busy")).await;
    assert_eq!(busy.status, Some(503));
    assert_eq!(busy.retry_after, Some(Duration::from_secs(120)));
    let later = post(&out, &server.url("http", "/later")).await;
    assert_eq!(later.status, Some(429));
    let wait = later.retry_after.unwrap();
    assert!(
        wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600),
        "{wait:?}"
    );
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let server = http1_server().await;
    let url = server.url("http", "/echo");
    let closed = outbound(&[], Duration::from_secs(5));
    let attempt = post(&closed, &url).await;
    assert_eq!(attempt.status, None);
    assert_eq!(
        attempt.error.as_deref(),
        Some("refused: 127.0.0.1 is loopback")
    );
    assert_eq!(server.connections(), 0, "no connection was made");
    assert!(check_url(&url, &AllowList::default()).await.is_err());

    let open = outbound(&["127.0.0.0/8"], Duration::from_secs(5));
    assert_eq!(post(&open, &url).await.status, Some(200));
    let allow = AllowList::parse(&["127.0.0.0/8".into()]).unwrap();
    assert_eq!(check_url(&url, &allow).await, Ok(()));
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused() {
    let server = http1_server().await;
    let url = format!("http://localhost:{}/echo", server.addr.port());
    let attempt = post(&outbound(&[], Duration::from_secs(5)), &url).await;
    let error = attempt.error.unwrap();
    assert!(
        error.starts_with("refused: localhost resolves to "),
        "{error}"
    );
    assert!(error.ends_with("which is loopback"), "{error}");
    let err = check_url(&url, &AllowList::default()).await.unwrap_err();
    assert_eq!(err.to_string(), error);
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn the_metadata_address_is_refused_without_a_packet() {
    let attempt = post(
        &outbound(&[], Duration::from_secs(5)),
        "http://169.254.169.254/latest/meta-data/",
    )
    .await;
    assert_eq!(
        attempt.error.as_deref(),
        Some("refused: 169.254.169.254 is link-local (metadata)")
    );
    // The allow list must name the metadata address itself for it to pass.
    let mapped = post(&loopback(), "http://[::ffff:169.254.169.254]/").await;
    assert_eq!(
        mapped.error.as_deref(),
        Some("refused: ::ffff:169.254.169.254 is link-local (metadata)")
    );
}

#[tokio::test]
async fn connect_and_dns_failures_are_named() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let attempt = post(&loopback(), &format!("http://127.0.0.1:{port}/")).await;
    let error = attempt.error.unwrap();
    assert!(
        error.starts_with(&format!("connect: 127.0.0.1:{port}: ")),
        "{error}"
    );
    let attempt = post(&loopback(), "http://nothing.invalid/").await;
    let error = attempt.error.unwrap();
    assert!(error.starts_with("dns: nothing.invalid: "), "{error}");
}
