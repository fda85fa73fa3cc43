//! A small HTTP/1.1 client over one connection, for `hookgate send`, `events` and the
//! tests.

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
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

/// Sends one request on a new connection and reads the whole answer.
pub async fn request(
    method: Method,
    url: &str,
    headers: HeaderMap,
    body: Bytes,
) -> anyhow::Result<Reply> {
    let response = open(method, url, headers, body).await?;
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
    let uri: Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("`{url}`: only http:// URLs are supported by this client");
    }
    let host = uri.host().context("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let address = format!(
        "{}:{port}",
        host.trim_start_matches('[').trim_end_matches(']')
    );
    let stream = TcpStream::connect(&address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
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
    Ok(sender.send_request(builder.body(Full::new(body))?).await?)
}

pub async fn get(url: &str) -> anyhow::Result<Reply> {
    request(Method::GET, url, HeaderMap::new(), Bytes::new()).await
}
