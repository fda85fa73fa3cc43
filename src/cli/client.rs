//! A small HTTP/1.1 client over one connection, for `hookgate send`, the admin commands
//! (`events`, including its live stream) and the tests: `http://`, or `https://` with an
//! optional CA file and client certificate (mTLS).
//!
//! A server may answer before it has read the whole body (a 413 for a body over its
//! limit) and close the connection; writing the rest then fails with a broken pipe while
//! its answer is already on the way. The connection's writes therefore never fail: after
//! the first error the rest of the request is dropped, and the answer is read as usual.
//! Only when no answer comes is the write error reported.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// TLS settings for `https://` URLs, as curl's `--cacert`, `--cert` and `--key`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// A PEM file of CA certificates to trust for https:// URLs (default: the system's).
    #[arg(long, value_name = "FILE", global = true)]
    pub cacert: Option<PathBuf>,
    /// A PEM client certificate to present (mTLS); needs --key.
    #[arg(long, value_name = "FILE", requires = "key", global = true)]
    pub cert: Option<PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert", global = true)]
    pub key: Option<PathBuf>,
}

impl TlsArgs {
    /// Whether any option was given.
    pub fn given(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some()
    }

    fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.cacert {
            Some(path) => {
                for cert in certs(path)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("{}: not a CA certificate", path.display()))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let pem =
                    std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
                // Never quote the file: it is a private key.
                let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
                    .ok()
                    .flatten()
                    .with_context(|| format!("{}: holds no PEM private key", key.display()))?;
                builder
                    .with_client_auth_cert(certs(cert)?, key_der)
                    .with_context(|| format!("{} and its key do not fit", cert.display()))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{}: holds no certificate", path.display());
    }
    Ok(certs)
}

/// Sends one request on a new connection and reads the whole answer.
pub async fn request(
    method: Method,
    url: &str,
    headers: HeaderMap,
    body: Bytes,
) -> anyhow::Result<Reply> {
    request_with(method, url, headers, body, &TlsArgs::default()).await
}

/// [`request`], with TLS settings for an `https://` URL.
pub async fn request_with(
    method: Method,
    url: &str,
    headers: HeaderMap,
    body: Bytes,
    tls: &TlsArgs,
) -> anyhow::Result<Reply> {
    let response = open_with(method, url, headers, body, tls).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Sends one request on a new connection and answers as soon as the answer's head has
/// come; its body is read as it arrives (a live stream).
pub async fn open(
    method: Method,
    url: &str,
    headers: HeaderMap,
    body: Bytes,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    open_with(method, url, headers, body, &TlsArgs::default()).await
}

/// [`open`], with TLS settings for an `https://` URL.
pub async fn open_with(
    method: Method,
    url: &str,
    headers: HeaderMap,
    body: Bytes,
    tls: &TlsArgs,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("`{url}`: only http:// and https:// URLs are supported"),
    };
    if tls.given() && !https {
        bail!("`{url}`: --cacert, --cert and --key are for https:// URLs");
    }
    let host = uri.host().context("the URL has no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let address = format!("{bare}:{port}");
    let stream = TcpStream::connect(&address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let failed = Arc::new(Mutex::new(None));
    let stream = Lenient {
        inner: stream,
        failed: failed.clone(),
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut builder = Request::builder().method(method).uri(path);
    if !headers.contains_key(http::header::HOST) {
        builder = builder.header(
            http::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(host),
        );
    }
    for (name, value) in &headers {
        builder = builder.header(name, value);
    }
    let request = builder.body(Full::new(body))?;
    let sent = if https {
        let name = ServerName::try_from(bare.to_string())
            .with_context(|| format!("`{bare}` is not a host name"))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.client_config()?));
        let stream = connector
            .connect(name, stream)
            .await
            .with_context(|| format!("TLS handshake with {address}"))?;
        send(stream, request).await
    } else {
        send(stream, request).await
    };
    sent.map_err(|e| match failed.lock().expect("write error lock").take() {
        // No answer came: the write error is what went wrong first.
        Some(write) => anyhow::anyhow!("{write} (and no answer came: {e:#})"),
        None => e,
    })
}

async fn send<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

pub async fn get(url: &str) -> anyhow::Result<Reply> {
    request(Method::GET, url, HeaderMap::new(), Bytes::new()).await
}

/// A connection whose writes never fail: after the first error (kept in `failed`) what
/// is written is dropped, so that an answer the server sent before it stopped reading is
/// still read.
struct Lenient<S> {
    inner: S,
    failed: Arc<Mutex<Option<io::Error>>>,
}

impl<S> Lenient<S> {
    fn broken(&self) -> bool {
        self.failed.lock().expect("write error lock").is_some()
    }

    /// Turns a write error into success, keeping the first.
    fn absorb(&self, result: io::Result<()>) -> io::Result<()> {
        if let Err(e) = result {
            let mut failed = self.failed.lock().expect("write error lock");
            failed.get_or_insert(e);
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lenient<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Lenient<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.broken() {
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => {
                let _ = self.absorb(Err(e));
                Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.broken() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(self.absorb(result)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.broken() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Ready(result) => Poll::Ready(self.absorb(result)),
            Poll::Pending => Poll::Pending,
        }
    }
}
