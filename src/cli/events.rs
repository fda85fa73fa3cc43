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

    pub(crate) fn tls(&self) -> &client::TlsArgs {
        &self.tls
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
        Ok(self.reply(method, path_and_query, body).await?.json())
    }

    /// As [`Target::call_with`], the answer as it came.
    async fn reply(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let (url, mut headers) = self.locate(path_and_query)?;
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
        let reply = client::request_with(method, &url, headers, body, &self.tls).await?;
        answer(reply)
    }

    /// The URL of `path_and_query` on the admin API, and the headers that authenticate
    /// a request to it.
    pub(crate) fn locate(&self, path_and_query: &str) -> anyhow::Result<(String, HeaderMap)> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the admin token cannot travel in an HTTP header")?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        Ok((format!("{}{path_and_query}", self.base), headers))
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

/// A successful answer, or the admin API's own error message.
fn answer(reply: Reply) -> anyhow::Result<Reply> {
    if reply.status.is_success() {
        return Ok(reply);
    }
    Err(api_error(reply.status, &reply.body))
}

/// The admin API's error in an answer with `status` and `body`.
pub(crate) fn api_error(status: http::StatusCode, body: &[u8]) -> anyhow::Error {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |name: &str, default: &str| body[name].as_str().unwrap_or(default).to_string();
    ApiError {
        status: status.as_u16(),
        code: text("error", "error"),
        message: text("message", "the admin API refused the call"),
    }
    .into()
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

/// The columns of a listing: seq, time, source, type, status, attempts, id.
fn row(cells: [&str; 7]) -> String {
    let [seq, received, source, event_type, status, attempts, id] = cells;
    format!(
        "{seq:>8}  {received:<24}  {source:<12} {event_type:<28} {status:<9} {attempts:>8}  {id}"
    )
}

/// The header row above a listing's lines.
fn header() -> String {
    row([
        "SEQ", "RECEIVED", "SOURCE", "TYPE", "STATUS", "ATTEMPTS", "ID",
    ])
}

/// One line per event, under [`header`].
fn line(event: &Value) -> String {
    let text = |name: &str| event[name].as_str().unwrap_or("-").to_string();
    let replay = match event["replay_of"].as_u64() {
        Some(of) => format!(" (replay of {of})"),
        None => String::new(),
    };
    let seq = event["seq"].as_u64().unwrap_or(0).to_string();
    let attempts = event["attempts"].as_u64().unwrap_or(0).to_string();
    let id = format!("{}{replay}", text("id"));
    row([
        &seq,
        &text("received_at"),
        &text("source"),
        &text("type"),
        &text("status"),
        &attempts,
        &id,
    ])
}

/// `1 event`, `2 events`.
pub fn events(n: u64) -> String {
    if n == 1 {
        "1 event".to_string()
    } else {
        format!("{n} events")
    }
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
    let listed = page["events"].as_array().is_some_and(|e| !e.is_empty());
    if listed && !as_json {
        println!("{}", header());
    }
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

/// Shows one event, named by its seq or (when `by_id`, or when it is not a number) by
/// its id. Several events may carry one id (sources of their own, replayed copies): the
/// first is shown and the others are named.
pub async fn show(target: &Target, event: &str, by_id: bool) -> anyhow::Result<()> {
    let seq = match event.parse::<u64>() {
        Ok(seq) if !by_id => seq,
        _ => {
            let found = find_id(target, event).await?;
            let Some(first) = found.first() else {
                bail!("no event has the id `{event}`");
            };
            if found.len() > 1 {
                let others: Vec<String> = found[1..]
                    .iter()
                    .map(|e| format!("{} ({})", e["seq"], e["source"].as_str().unwrap_or("-")))
                    .collect();
                eprintln!(
                    "{} have the id `{event}`; showing seq {}, also: {}",
                    events(found.len() as u64),
                    first["seq"],
                    others.join(", ")
                );
            }
            first["seq"].as_u64().unwrap_or(0)
        }
    };
    let event = target
        .reply(Method::GET, &format!("/v1/events/{seq}"), None)
        .await?;
    println!("{}", crate::admin::indented(&event.body));
    Ok(())
}

/// Every event with the id `id`, oldest first (at most 100), page by page through the
/// whole journal.
async fn find_id(target: &Target, id: &str) -> anyhow::Result<Vec<Value>> {
    let mut found = Vec::new();
    let mut after = 0;
    loop {
        let query = Filters::default().query(&[
            ("id", id.to_string()),
            ("after", after.to_string()),
            ("limit", "100".to_string()),
        ]);
        let page = target
            .call(Method::GET, &format!("/v1/events?{query}"))
            .await?;
        found.extend(page["events"].as_array().cloned().unwrap_or_default());
        let next = page["next_after"].as_u64().unwrap_or(after);
        if next <= after || found.len() >= 100 {
            return Ok(found);
        }
        after = next;
    }
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
                "{} queued again",
                events(done["replayed"].as_u64().unwrap_or(0))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_or_plural() {
        assert_eq!(events(0), "0 events");
        assert_eq!(events(1), "1 event");
        assert_eq!(events(2), "2 events");
    }

    #[test]
    fn the_header_names_each_column_above_it() {
        let event = serde_json::json!({
            "seq": 12, "received_at": "2026-01-02T03:04:05.678Z", "source": "github",
            "type": "push", "status": "queued", "attempts": 3, "id": "d-1"
        });
        let (header, line) = (header(), line(&event));
        for (name, value) in [
            ("SEQ", "12"),
            ("SOURCE", "github"),
            ("TYPE", "push"),
            ("ID", "d-1"),
        ] {
            assert_eq!(
                header
                    .find(name)
                    .map(|at| at + name.len())
                    .filter(|_| name == "SEQ"),
                line.find(value)
                    .map(|at| at + value.len())
                    .filter(|_| name == "SEQ"),
                "{header}\n{line}"
            );
            if name != "SEQ" {
                assert_eq!(header.find(name), line.find(value), "{header}\n{line}");
            }
        }
    }
}
