//! The HTTP client for subscription attempts (SPEC §9): one pooled hyper client shared
//! by every subscription, HTTP/1.1 and HTTP/2 (ALPN over TLS; plain http is HTTP/1.1),
//! rustls with the platform's roots, and one more client per distinct extra CA.
//!
//! An attempt is one `POST` under one deadline that covers DNS, connect, TLS, the
//! response head and the first 4 KiB of its body. Redirects are not followed: a 3xx is
//! a status like any other. The SSRF guard sits in the connector, so every new
//! connection is made to an address [`target::resolve`] has just judged: no second DNS
//! lookup can send it elsewhere.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use super::target::{self, AllowList, TargetError};

/// How much of a response body an attempt keeps (SPEC §9: `response_body`).
pub const BODY_KEPT: usize = 4096;

/// Past [`BODY_KEPT`], body bytes that have already arrived are read and dropped up to
/// this much, so a slightly longer answer still ends and its connection goes back to the
/// pool. Nothing is waited for: a longer or slower body closes the connection instead.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Headers hookgate sets itself; a subscription may not (they frame the message or the
/// connection). The admin API can refuse them up front with this list.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// Distinct extra CAs kept a client each; past this the cache starts over (a CA that
/// subscriptions no longer use must not hold a pool for ever).
const MAX_CA_CLIENTS: usize = 256;

const POOL_IDLE: Duration = Duration::from_secs(60);

/// Idle connections kept per endpoint: enough for a subscription's `max_in_flight`,
/// bounded all the same.
const POOL_IDLE_PER_HOST: usize = 128;

pub struct OutboundSettings {
    /// Private networks subscriptions may reach (`[outbound] allow_private`).
    pub allow: AllowList,
    /// The deadline of one attempt (`[outbound] timeout`).
    pub timeout: Duration,
    pub user_agent: String,
}

/// What one attempt came to: a status, or an error saying why there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempted {
    pub status: Option<u16>,
    /// A short human reason: `dns: …`, `refused: …`, `connect: …`, `tls: …`,
    /// `timeout after 15s`, `http: …`, `bad url: …`, `request: …`.
    pub error: Option<String>,
    pub duration: Duration,
    /// The first [`BODY_KEPT`] bytes of the response body.
    pub body: Vec<u8>,
    /// The answer's `Retry-After` (seconds, or an HTTP date from now), on any status.
    pub retry_after: Option<Duration>,
}

/// The outbound HTTP client. Cheap to clone; all clones share the pools.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

type HttpClient = Client<HttpsConnector<Guarded>, Full<Bytes>>;

struct Inner {
    timeout: Duration,
    user_agent: HeaderValue,
    connector: Guarded,
    provider: Arc<CryptoProvider>,
    roots: RootCertStore,
    platform: HttpClient,
    /// Clients trusting the platform's roots and one extra CA, by the PEM's SHA-256.
    with_ca: Mutex<HashMap<[u8; 32], HttpClient>>,
}

impl Outbound {
    pub fn new(settings: OutboundSettings) -> anyhow::Result<Outbound> {
        let user_agent = HeaderValue::from_str(&settings.user_agent)
            .context("the user agent is not a valid header value")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = platform_roots();
        let connector = Guarded {
            allow: Arc::new(settings.allow),
            connect_timeout: settings.timeout,
        };
        let platform = build_client(&connector, &provider, roots.clone())
            .context("building the TLS client configuration")?;
        Ok(Outbound {
            inner: Arc::new(Inner {
                timeout: settings.timeout,
                user_agent,
                connector,
                provider,
                roots,
                platform,
                with_ca: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// One attempt: `POST url` with `headers` and `body`, trusting `ca_pem` (PEM
    /// certificates) besides the platform's roots when given. Never fails: what went
    /// wrong is in [`Attempted::error`].
    pub async fn post(
        &self,
        url: &str,
        ca_pem: Option<&str>,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Attempted {
        let started = Instant::now();
        let outcome = match self.prepare(url, ca_pem, headers, body) {
            Ok((client, request)) => {
                let timeout = self.inner.timeout;
                tokio::time::timeout(timeout, exchange(client, request))
                    .await
                    .unwrap_or_else(|_| Err(format!("timeout after {}", human(timeout))))
            }
            Err(error) => Err(error),
        };
        let duration = started.elapsed();
        match outcome {
            Ok(answer) => Attempted {
                status: Some(answer.status),
                error: None,
                duration,
                body: answer.body,
                retry_after: answer.retry_after,
            },
            Err(error) => Attempted {
                status: None,
                error: Some(error),
                duration,
                body: Vec::new(),
                retry_after: None,
            },
        }
    }

    fn prepare(
        &self,
        url: &str,
        ca_pem: Option<&str>,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<(HttpClient, Request<Full<Bytes>>), String> {
        let uri = target::parse_url(url).map_err(|e| e.to_string())?;
        let request = self.request(uri, headers, body)?;
        let client = match ca_pem {
            Some(pem) => self.client_with_ca(pem)?,
            None => self.inner.platform.clone(),
        };
        Ok((client, request))
    }

    fn request(
        &self,
        uri: Uri,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, String> {
        let mut request = Request::post(uri)
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let map = request.headers_mut();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("request: `{name}` is not a header name"))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(format!("request: header `{name}` is set by hookgate"));
            }
            // The value may be a credential: the error names the header only.
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("request: the value of `{name}` is not a header value"))?;
            map.append(name, value);
        }
        if !map.contains_key(USER_AGENT) {
            map.insert(USER_AGENT, self.inner.user_agent.clone());
        }
        Ok(request)
    }

    /// The client trusting `pem` too, made once per distinct PEM text.
    fn client_with_ca(&self, pem: &str) -> Result<HttpClient, String> {
        let digest: [u8; 32] = Sha256::digest(pem.as_bytes()).into();
        let mut cache = self
            .inner
            .with_ca
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = cache.get(&digest) {
            return Ok(client.clone());
        }
        let certs = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls: the subscription's CA: {e}"))?;
        let mut roots = self.inner.roots.clone();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err("tls: the subscription's CA holds no usable certificate".into());
        }
        let client = build_client(&self.inner.connector, &self.inner.provider, roots)
            .map_err(|e| format!("tls: {e}"))?;
        if cache.len() >= MAX_CA_CLIENTS {
            cache.clear();
        }
        cache.insert(digest, client.clone());
        Ok(client)
    }
}

/// A response as an attempt keeps it.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

async fn exchange(client: HttpClient, request: Request<Full<Bytes>>) -> Result<Answer, String> {
    let response = client.request(request).await.map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    let body = read_prefix(response.into_body()).await;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// The first [`BODY_KEPT`] bytes. Then whatever has already arrived, up to
/// [`DRAIN_LIMIT`], is dropped without waiting; the body is then dropped, which closes an
/// HTTP/1.1 connection that had more to send (and resets an HTTP/2 stream). A body that
/// breaks off keeps what came: the status has been answered.
async fn read_prefix(mut body: Incoming) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < BODY_KEPT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = BODY_KEPT - kept.len();
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => return kept,
        }
    }
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                drained += frame.data_ref().map_or(0, Bytes::len);
            }
            _ => break,
        }
    }
    kept
}

/// A short reason for a failed request. The connector's own errors (DNS, refusal,
/// TCP) are found in the chain and said as they are; any other failure to connect came
/// from the TLS layer above it.
fn describe(err: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut chain = Vec::<String>::new();
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(own) = cause.downcast_ref::<ConnectError>() {
            return own.to_string();
        }
        let text = cause.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        source = cause.source();
    }
    let detail = if chain.is_empty() {
        err.to_string()
    } else {
        chain.join(": ")
    };
    if err.is_connect() {
        format!("tls: {detail}")
    } else {
        format!("http: {detail}")
    }
}

/// `Retry-After`: delay seconds, or an HTTP date (a date past is no delay).
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `15s`, or `1500ms` when not whole seconds.
fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The platform's roots; webpki's bundled roots when the platform has none (a bare
/// container without a CA bundle).
fn platform_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!(
            errors = native.errors.len(),
            "no platform CA certificates; using the bundled webpki roots"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

fn build_client(
    connector: &Guarded,
    provider: &Arc<CryptoProvider>,
    roots: RootCertStore,
) -> Result<HttpClient, rustls::Error> {
    let tls = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector.clone());
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .build(https))
}

/// The TCP connector under TLS: resolves, judges every address with the allow list,
/// and connects to the judged addresses in turn.
#[derive(Clone)]
struct Guarded {
    allow: Arc<AllowList>,
    connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("connect: {addr}: {reason}")]
    Tcp { addr: SocketAddr, reason: String },
}

impl Guarded {
    async fn connect(self, uri: Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
        let addrs = target::resolve(target::host(&uri), target::port(&uri), &self.allow).await?;
        // Each address gets its share of the deadline, so one that swallows packets
        // leaves time for the next.
        let share = u32::try_from(addrs.len()).unwrap_or(u32::MAX);
        let each = self.connect_timeout / share.max(1);
        let mut failure = None;
        for addr in addrs {
            match tokio::time::timeout(each, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Small writes (headers, then body) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(e)) => {
                    failure = Some(ConnectError::Tcp {
                        addr,
                        reason: e.to_string(),
                    })
                }
                Err(_) => {
                    failure = Some(ConnectError::Tcp {
                        addr,
                        reason: format!("no answer within {}", human(each)),
                    })
                }
            }
        }
        Err(failure.unwrap_or_else(|| {
            ConnectError::Target(TargetError::Dns {
                host: target::host(&uri).to_string(),
                reason: "no addresses".into(),
            })
        }))
    }
}

impl tower_service::Service<Uri> for Guarded {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let parse = |text: &str| parse_retry_after(&HeaderValue::from_str(text).unwrap(), now);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:29:30 GMT"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        for bad in ["", "-5", "+5", "1.5", "soon", "99999999999999999999999"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human(Duration::from_secs(15)), "15s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
        assert_eq!(human(Duration::from_millis(300)), "300ms");
    }

    #[tokio::test]
    async fn bad_urls_and_headers_fail_before_any_connection() {
        let out = Outbound::new(OutboundSettings {
            allow: AllowList::default(),
            timeout: Duration::from_secs(1),
            user_agent: "hookgate/test".into(),
        })
        .unwrap();
        let post = |url: &'static str, headers: Vec<(String, String)>| {
            let out = out.clone();
            async move { out.post(url, None, &headers, Bytes::new()).await }
        };
        let bad = post("ftp://example.com/", vec![]).await;
        assert_eq!(bad.status, None);
        assert!(bad.error.unwrap().starts_with("bad url: "));
        let secret = ("authorization".to_string(), "Bearer s3cr3t\n".to_string());
        let bad = post("https://example.com/", vec![secret]).await;
        let error = bad.error.unwrap();
        assert!(error.starts_with("request: "), "{error}");
        assert!(!error.contains("s3cr3t"));
        let framing = ("Content-Length".to_string(), "1".to_string());
        let bad = post("https://example.com/", vec![framing]).await;
        assert_eq!(
            bad.error.as_deref(),
            Some("request: header `content-length` is set by hookgate")
        );
        let bad = out
            .post("https://example.com/", Some("not a pem"), &[], Bytes::new())
            .await;
        assert!(bad.error.unwrap().starts_with("tls: "));
    }
}
