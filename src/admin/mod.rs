//! The admin listener: `/healthz`, `/readyz`, and the pull API under `/v1/` through
//! which workers read what was accepted (SPEC §7).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::answer::{error_response, json, Body};
use crate::config::Secret;
use crate::journal::{Journal, ListFilter, Record, Status, Summary};
use crate::verify::mac::same_token;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub struct Admin {
    pub journal: Journal,
    /// When set, `/v1/*` needs `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// With a broker configured: whether the forwarder is connected.
    pub broker_connected: Option<Arc<std::sync::atomic::AtomicBool>>,
}

#[derive(Serialize)]
struct SummaryView<'a> {
    seq: u64,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: Option<&'a str>,
    status: &'a str,
    received_at: String,
    attempts: u32,
    size: u64,
}

impl<'a> From<&'a Summary> for SummaryView<'a> {
    fn from(s: &'a Summary) -> Self {
        SummaryView {
            seq: s.seq,
            id: &s.id,
            source: &s.source,
            event_type: s.event_type.as_deref(),
            status: s.status.as_str(),
            received_at: rfc3339(s.received_at_ms),
            attempts: s.attempts,
            size: s.size,
        }
    }
}

#[derive(Serialize)]
struct AttemptView<'a> {
    at: String,
    outcome: &'a str,
}

#[derive(Serialize)]
struct EventView<'a> {
    #[serde(flatten)]
    summary: SummaryView<'a>,
    headers: serde_json::Map<String, serde_json::Value>,
    content_type: &'a str,
    client_identity: Option<&'a str>,
    payload: &'a RawValue,
    attempts_log: Vec<AttemptView<'a>>,
}

pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn bad_request(message: String) -> Response<Body> {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: String) -> Response<Body> {
    error_response(StatusCode::NOT_FOUND, "not_found", message)
}

fn internal(message: String) -> Response<Body> {
    tracing::error!(%message, "admin request failed");
    error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

impl Admin {
    pub async fn handle<B>(self: Arc<Self>, request: Request<B>) -> Response<Body> {
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let method = request.method().clone();
        if path.starts_with("/v1/") && !self.authorised(request.headers()) {
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this call needs the admin token as `Authorization: Bearer <token>`".into(),
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => json(StatusCode::OK, br#"{"status":"alive"}"#.to_vec()),
            (&Method::GET, "/readyz") => self.ready(),
            (&Method::GET, "/v1/events") => self.list(&query).await,
            (&Method::GET, p) if p.starts_with("/v1/events/") => {
                self.show(&p["/v1/events/".len()..]).await
            }
            (_, p)
                if matches!(p, "/healthz" | "/readyz" | "/v1/events")
                    || p.starts_with("/v1/events/") =>
            {
                error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not allowed on {path}"),
                )
            }
            _ => not_found(format!("nothing is served at {path}")),
        }
    }

    fn authorised(&self, headers: &http::HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| same_token(given, token.expose()))
    }

    fn ready(&self) -> Response<Body> {
        let broker_down = self
            .broker_connected
            .as_ref()
            .is_some_and(|c| !c.load(std::sync::atomic::Ordering::Acquire));
        let reason = if !self.journal.is_healthy() {
            "the journal cannot be written"
        } else if broker_down {
            "the broker is unreachable; events are kept in the journal until it returns"
        } else {
            return json(StatusCode::OK, br#"{"status":"ready"}"#.to_vec());
        };
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            reason.into(),
        )
    }

    async fn list(&self, query: &str) -> Response<Body> {
        let mut filter = ListFilter {
            limit: DEFAULT_LIMIT,
            ..ListFilter::default()
        };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "source" => filter.source = Some(value.into_owned()),
                "type" => filter.event_type = Some(value.into_owned()),
                "status" => match Status::parse(&value) {
                    Some(s) => filter.status = Some(s),
                    None => {
                        return bad_request(format!(
                            "status `{value}` is not one of queued, delivered, stale, failed"
                        ))
                    }
                },
                "after" => match value.parse() {
                    Ok(n) => filter.after = n,
                    Err(_) => {
                        return bad_request(format!("after `{value}` is not a sequence number"))
                    }
                },
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => filter.limit = n,
                    _ => {
                        return bad_request(format!("limit must be a number from 1 to {MAX_LIMIT}"))
                    }
                },
                other => return bad_request(format!("unknown parameter `{other}`")),
            }
        }
        let journal = self.journal.clone();
        let listed = tokio::task::spawn_blocking(move || journal.list(&filter)).await;
        match listed {
            Ok(Ok((summaries, next_after))) => {
                let events: Vec<SummaryView> = summaries.iter().map(SummaryView::from).collect();
                let body = serde_json::json!({ "events": events, "next_after": next_after });
                json(
                    StatusCode::OK,
                    serde_json::to_vec(&body).expect("plain JSON"),
                )
            }
            Ok(Err(e)) => internal(format!("cannot read the journal: {e}")),
            Err(e) => internal(format!("listing failed: {e}")),
        }
    }

    async fn show(&self, seq: &str) -> Response<Body> {
        let Ok(seq) = seq.parse::<u64>() else {
            return bad_request(format!("`{seq}` is not a sequence number"));
        };
        let journal = self.journal.clone();
        match tokio::task::spawn_blocking(move || journal.get(seq)).await {
            Ok(Ok(Some(record))) => match event_view(&record) {
                Ok(body) => json(StatusCode::OK, body),
                Err(e) => internal(format!("event {seq} cannot be shown: {e}")),
            },
            Ok(Ok(None)) => not_found(format!("there is no event {seq}")),
            Ok(Err(e)) => internal(format!("cannot read event {seq}: {e}")),
            Err(e) => internal(format!("reading event {seq} failed: {e}")),
        }
    }
}

fn event_view(record: &Record) -> Result<Vec<u8>, String> {
    let payload_text = std::str::from_utf8(record.payload()).map_err(|e| e.to_string())?;
    let payload: &RawValue = serde_json::from_str(payload_text).map_err(|e| e.to_string())?;
    // A header sent more than once shows its values joined, as HTTP allows.
    let mut headers = serde_json::Map::new();
    for (name, value) in &record.headers {
        match headers.get_mut(name) {
            Some(serde_json::Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            _ => {
                headers.insert(name.clone(), serde_json::Value::String(value.clone()));
            }
        }
    }
    let view = EventView {
        summary: SummaryView::from(&record.summary),
        headers,
        content_type: &record.content_type,
        client_identity: record.client_identity.as_deref(),
        payload,
        attempts_log: record
            .attempts_log
            .iter()
            .map(|a| AttemptView {
                at: rfc3339(a.at_ms),
                outcome: &a.outcome,
            })
            .collect(),
    };
    serde_json::to_vec(&view).map_err(|e| e.to_string())
}
