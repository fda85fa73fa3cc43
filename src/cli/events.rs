//! `hookgate events list | show | replay | tail`: the admin API from a terminal. The
//! admin address and token come from the config file, or from `--admin` and `--token`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use super::client::{self, Reply};
use crate::config::Config;

/// How long one `tail` request waits for new events before asking again.
const TAIL_WAIT: &str = "30s";

/// Where the admin API is and how to authenticate to it.
pub struct Target {
    base: String,
    token: Option<String>,
    /// For an https:// admin API ([admin.tls]).
    tls: client::TlsArgs,
}

impl Target {
    /// `--admin` and `--token` win over the config file; the file is read only when one
    /// of them is missing.
    pub fn resolve(
        config: &Path,
        admin: Option<&str>,
        token: Option<&str>,
    ) -> anyhow::Result<Target> {
        if let (Some(base), Some(token)) = (admin, token) {
            return Ok(Target {
                base: base.trim_end_matches('/').to_string(),
                token: Some(token.to_string()),
                tls: client::TlsArgs::default(),
            });
        }
        let loaded = if admin.is_some() && !config.exists() {
            None
        } else {
            Some(Config::load(config).with_context(|| {
                format!(
                    "reading the admin address and token from {} (or pass --admin and --token)",
                    config.display()
                )
            })?)
        };
        let base = match (admin, &loaded) {
            (Some(base), _) => base.trim_end_matches('/').to_string(),
            (None, Some(config)) => format!(
                "{}://{}",
                if config.admin.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                super::reachable(config.admin.listen)
            ),
            (None, None) => unreachable!("the config is read when --admin is missing"),
        };
        let token = match (token, &loaded) {
            (Some(token), _) => Some(token.to_string()),
            (None, Some(config)) => match &config.admin.token {
                Some(reference) => {
                    let secret = reference
                        .resolve()
                        .map_err(|e| anyhow::anyhow!("admin.token: {e}"))?;
                    Some(
                        String::from_utf8(secret.expose().to_vec())
                            .context("admin.token is not UTF-8")?,
                    )
                }
                None => None,
            },
            (None, None) => None,
        };
        Ok(Target {
            base,
            token,
            tls: client::TlsArgs::default(),
        })
    }

    /// The CA and client certificate for an https:// admin API (`--cacert`, `--cert`,
    /// `--key`).
    pub fn with_tls(self, tls: client::TlsArgs) -> Target {
        Target { tls, ..self }
    }

    async fn call(&self, method: Method, path_and_query: &str) -> anyhow::Result<Value> {
        self.call_with(method, path_and_query, None).await
    }

    /// Calls the admin API, with `body` sent as JSON when given; the answer's JSON (null
    /// for an empty answer such as 204), or the API's own error as an [`ApiError`].
    pub(crate) async fn call_with(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the admin token cannot travel in an HTTP header")?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let body = match body {
            Some(json) => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Bytes::from(serde_json::to_vec(json)?)
            }
            None => Bytes::new(),
        };
        let url = format!("{}{path_and_query}", self.base);
        let reply = client::request_with(method, &url, headers, body, &self.tls).await?;
        answer(reply)
    }
}

/// An answer of the admin API other than success.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// The JSON of a successful answer, or the admin API's own error message.
fn answer(reply: Reply) -> anyhow::Result<Value> {
    let body = reply.json();
    if reply.status.is_success() {
        return Ok(body);
    }
    let text = |name: &str, default: &str| body[name].as_str().unwrap_or(default).to_string();
    Err(ApiError {
        status: reply.status.as_u16(),
        code: text("error", "error"),
        message: text("message", "the admin API refused the call"),
    }
    .into())
}

#[derive(Default)]
pub struct Filters<'a> {
    pub source: Option<&'a str>,
    pub status: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub since: Option<&'a str>,
}

impl Filters<'_> {
    fn query(&self, more: &[(&str, String)]) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("source", self.source),
            ("status", self.status),
            ("type", self.event_type),
            ("since", self.since),
        ] {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        for (name, value) in more {
            query.append_pair(name, value);
        }
        query.finish()
    }
}

/// One line per event: seq, time, source, type, status, attempts, id.
fn line(event: &Value) -> String {
    let text = |name: &str| event[name].as_str().unwrap_or("-").to_string();
    let replay = match event["replay_of"].as_u64() {
        Some(of) => format!(" (replay of {of})"),
        None => String::new(),
    };
    format!(
        "{:>8}  {}  {:<12} {:<28} {:<9} {:>3}  {}{replay}",
        event["seq"].as_u64().unwrap_or(0),
        text("received_at"),
        text("source"),
        text("type"),
        text("status"),
        event["attempts"].as_u64().unwrap_or(0),
        text("id"),
    )
}

fn print_events(page: &Value, as_json: bool) -> usize {
    let events = page["events"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for event in events {
        if as_json {
            println!("{event}");
        } else {
            println!("{}", line(event));
        }
    }
    events.len()
}

pub async fn list(
    target: &Target,
    filters: &Filters<'_>,
    after: u64,
    limit: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let query = filters.query(&[("after", after.to_string()), ("limit", limit.to_string())]);
    let page = target
        .call(Method::GET, &format!("/v1/events?{query}"))
        .await?;
    let shown = print_events(&page, as_json);
    if !as_json {
        let next = page["next_after"].as_u64().unwrap_or(after);
        if shown == limit {
            eprintln!("more may follow: --after {next}");
        } else if shown == 0 {
            eprintln!("no events");
        }
    }
    Ok(())
}

pub async fn show(target: &Target, seq: u64) -> anyhow::Result<()> {
    let event = target
        .call(Method::GET, &format!("/v1/events/{seq}"))
        .await?;
    println!("{}", serde_json::to_string_pretty(&event)?);
    Ok(())
}

/// Replays one event, or with no seq every event the filters match.
pub async fn replay(
    target: &Target,
    seq: Option<u64>,
    filters: &Filters<'_>,
) -> anyhow::Result<()> {
    match seq {
        Some(seq) => {
            let done = target
                .call(Method::POST, &format!("/v1/events/{seq}/replay"))
                .await?;
            match done["queued_as"].as_u64() {
                Some(copy) if copy != seq => println!("event {seq} queued again as {copy}"),
                _ => println!("event {seq} queued again"),
            }
        }
        None => {
            if filters.source.is_none() && filters.status.is_none() && filters.since.is_none() {
                bail!("name an event (SEQ) or what to replay (--source, --status, --since)");
            }
            let query = filters.query(&[]);
            let done = target
                .call(Method::POST, &format!("/v1/replay?{query}"))
                .await?;
            println!(
                "{} events queued again",
                done["replayed"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(())
}

/// Prints events as they arrive, from `after` (default: the newest now) on, until
/// interrupted. A failed call is retried after a pause, so a restart of the gateway does
/// not end the tail.
pub async fn tail(
    target: &Target,
    filters: &Filters<'_>,
    after: Option<u64>,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut cursor = match after {
        Some(after) => after.to_string(),
        None => "latest".to_string(),
    };
    let mut failures = 0u32;
    loop {
        let query = filters.query(&[("after", cursor.clone()), ("wait", TAIL_WAIT.into())]);
        match target
            .call(Method::GET, &format!("/v1/events?{query}"))
            .await
        {
            Ok(page) => {
                failures = 0;
                print_events(&page, as_json);
                if let Some(next) = page["next_after"].as_u64() {
                    cursor = next.to_string();
                }
            }
            Err(e) => {
                // A wrong token or a bad filter: asking again will not help.
                if e.downcast_ref::<ApiError>()
                    .is_some_and(|api| (400..500).contains(&api.status))
                {
                    return Err(e);
                }
                failures = (failures + 1).min(5);
                eprintln!("tail: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            }
        }
    }
}
