//! The admin listener (SPEC §7): `/healthz`, `/readyz`, `/metrics`, and under `/v1/` the
//! API through which operators and workers find, read and replay events. Requests a
//! browser could be tricked into are refused first ([`guard`]).

mod guard;
mod subscriptions;

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use tokio::sync::watch;

use crate::answer::{error_response, json, Body};
use crate::config::Secret;
use crate::gateway::Clock;
use crate::headers::HeaderPolicies;
use crate::journal::{Journal, ListFilter, ReadError, Record, SourceCounts, Summary};
use crate::metrics::Metrics;
use crate::verify::mac::same_token;

pub mod query;

use query::{parse_list, parse_replay, ListQuery, REPLAY_CHUNK};

pub struct Admin {
    pub journal: Journal,
    /// When set, `/v1/*` needs `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// `admin.hosts`: Host names answered besides addresses and `localhost`.
    pub hosts: Vec<String>,
    /// With a broker configured: the node the forwarder is connected to, if any.
    pub broker: Option<Arc<crate::forward::BrokerStatus>>,
    pub metrics: Arc<Metrics>,
    /// The configured sources: name and scheme, sorted by name.
    pub sources: Vec<(String, String)>,
    /// Long polls end early when this turns true, so that a stop is not held up.
    pub stop: watch::Receiver<bool>,
    /// The time of replays and of `since`.
    pub clock: Arc<dyn Clock>,
    /// Which kept headers of each source's events are shown.
    pub headers: HeaderPolicies,
    /// Subscriptions' sending side: for test sends, secrets and the allowed targets.
    pub deliverer: Arc<crate::deliver::Deliverer>,
}

/// The most a request body to the admin API may hold.
const MAX_ADMIN_BODY: usize = 256 * 1024;

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
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_of: Option<u64>,
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
            replay_of: s.replay_of,
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

/// An RFC 3339 UTC time with milliseconds, always the same width.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn bad_request(message: String) -> Response<Body> {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: String) -> Response<Body> {
    error_response(StatusCode::NOT_FOUND, "not_found", message)
}

fn unavailable(message: String) -> Response<Body> {
    tracing::warn!(%message, "admin request failed");
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("5"),
    );
    response
}

fn internal(message: String) -> Response<Body> {
    tracing::error!(%message, "admin request failed");
    error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

impl Admin {
    pub async fn handle<B>(self: Arc<Self>, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if let Some(refused) = guard::refuse(&request, &self.hosts) {
            return refused;
        }
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
        let (parts, body) = request.into_parts();
        drop(parts);
        if matches!(
            method,
            Method::POST | Method::PATCH | Method::PUT | Method::DELETE
        ) && (path.starts_with("/v1/subscriptions") || path.starts_with("/v1/deliveries/"))
        {
            use http_body_util::BodyExt;
            let body = match http_body_util::Limited::new(body, MAX_ADMIN_BODY)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("an admin request body may hold at most {MAX_ADMIN_BODY} bytes"),
                    )
                }
            };
            if let Some(answer) = self.subscriptions_api(&method, &path, &query, &body).await {
                return answer;
            }
        } else if let Some(answer) = self.subscriptions_api(&method, &path, &query, &[]).await {
            return answer;
        }
        let replay_of = path
            .strip_prefix("/v1/events/")
            .and_then(|rest| rest.strip_suffix("/replay"));
        match (&method, path.as_str(), replay_of) {
            // Fails only when the process cannot recover by itself: what a liveness
            // probe should answer with a restart. A full disk or a broker outage is
            // `/readyz`'s business.
            (&Method::GET, "/healthz", _) if self.journal.alive() => {
                json(StatusCode::OK, br#"{"status":"alive"}"#.to_vec())
            }
            (&Method::GET, "/healthz", _) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "dead",
                "the journal's committer thread has stopped; restart hookgate".into(),
            ),
            (&Method::GET, "/readyz", _) => self.ready(&query),
            (&Method::GET, "/metrics", _) => self.metrics(),
            (&Method::GET, "/v1/events", _) => self.list(&query).await,
            (&Method::GET, "/v1/sources", _) => self.sources(),
            (&Method::POST, "/v1/replay", _) => self.replay_matching(&query).await,
            (&Method::POST, _, Some(seq)) => self.replay_one(seq).await,
            (&Method::GET, p, None) if p.starts_with("/v1/events/") => {
                self.show(&p["/v1/events/".len()..]).await
            }
            (_, p, _)
                if matches!(
                    p,
                    "/healthz"
                        | "/readyz"
                        | "/metrics"
                        | "/v1/events"
                        | "/v1/sources"
                        | "/v1/replay"
                ) || p.starts_with("/v1/events/") =>
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

    fn now_ms(&self) -> u64 {
        crate::unix_ms(self.clock.now())
    }

    fn metrics(&self) -> Response<Body> {
        let mut response = json(
            StatusCode::OK,
            self.metrics.render(&self.journal).into_bytes(),
        );
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        response
    }

    /// The configured sources with what the journal holds for each; sources that are no
    /// longer configured but still have events are listed too. Never a secret.
    fn sources(&self) -> Response<Body> {
        let mut counts = self.journal.counts();
        let view = |name: &str, scheme: Option<&str>, c: SourceCounts| {
            serde_json::json!({
                "name": name,
                "configured": scheme.is_some(),
                "scheme": scheme,
                "path": scheme.map(|_| format!("/hooks/{name}")),
                "events": {
                    "queued": c.queued,
                    "delivered": c.delivered,
                    "stale": c.stale,
                    "failed": c.failed,
                    "damaged": c.damaged,
                    "total": c.total(),
                },
                "last_received_at": c.last_received_ms.map(rfc3339),
            })
        };
        let mut listed: Vec<serde_json::Value> = self
            .sources
            .iter()
            .map(|(name, scheme)| view(name, Some(scheme), counts.remove(name).unwrap_or_default()))
            .collect();
        listed.extend(counts.into_iter().map(|(name, c)| view(&name, None, c)));
        let body = serde_json::json!({ "sources": listed });
        json(
            StatusCode::OK,
            serde_json::to_vec(&body).expect("plain JSON"),
        )
    }

    /// `POST /v1/events/{seq}/replay`.
    async fn replay_one(&self, seq: &str) -> Response<Body> {
        let Ok(seq) = seq.parse::<u64>() else {
            return bad_request(format!("`{seq}` is not a sequence number"));
        };
        match self.journal.replay(vec![seq], self.now_ms()).await {
            Ok(replayed) => match replayed.first() {
                Some(r) => {
                    self.metrics.replayed(1);
                    tracing::info!(seq, queued_as = r.queued_as, "event replayed");
                    let body = serde_json::json!({"status": "queued", "seq": seq, "queued_as": r.queued_as});
                    json(
                        StatusCode::ACCEPTED,
                        serde_json::to_vec(&body).expect("plain JSON"),
                    )
                }
                None => not_found(format!("there is no event {seq}")),
            },
            Err(e) => unavailable(format!("cannot replay event {seq}: {e}")),
        }
    }

    /// `POST /v1/replay?source=&status=&since=`: every matching event that exists now.
    async fn replay_matching(&self, query: &str) -> Response<Body> {
        let last = *self.journal.last_seq().borrow();
        let mut filter = match parse_replay(query, last, self.clock.now()) {
            Ok(filter) => filter,
            Err(e) => return bad_request(e),
        };
        // Every match first (a seq is 8 bytes), so that an embedded replay that would
        // fill the backlog can be refused before it starts.
        let until = filter.until.unwrap_or(0);
        let mut matched = Vec::new();
        loop {
            let (found, cursor) = match self.page(&filter).await {
                Ok(page) => page,
                Err(answer) => return answer,
            };
            matched.extend(found.iter().map(|s| s.seq));
            if cursor >= until || cursor == filter.after {
                break;
            }
            filter.after = cursor;
        }
        let settings = self.journal.settings();
        if settings.embedded && self.journal.backlog() + matched.len() as u64 > settings.max_backlog
        {
            return unavailable(format!(
                "replaying {} events would take the backlog past max_backlog ({}), and providers would get 503; replay fewer",
                matched.len(),
                settings.max_backlog
            ));
        }
        let mut replayed = 0u64;
        for chunk in matched.chunks(REPLAY_CHUNK) {
            match self.journal.replay(chunk.to_vec(), self.now_ms()).await {
                Ok(done) => replayed += done.len() as u64,
                Err(e) => {
                    return unavailable(format!("replay stopped after {replayed} events: {e}"))
                }
            }
        }
        self.metrics.replayed(replayed);
        tracing::info!(replayed, query, "bulk replay");
        json(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({ "replayed": replayed })).expect("plain JSON"),
        )
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

    /// `/readyz`: whether new events are taken and, unless `scope=ingest` is asked
    /// for, whether the broker is connected; when it is, which node (`host:port`).
    fn ready(&self, query: &str) -> Response<Body> {
        let ingest_only = form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == "scope" && value == "ingest");
        let node = self.broker.as_ref().map(|b| b.node());
        let reason = if let Some(why) = self.journal.unready() {
            why
        } else if !ingest_only && node == Some(None) {
            let nodes = self.broker.as_ref().map_or(0, |b| b.nodes().len());
            if nodes > 1 {
                format!("no broker node answers (of {nodes}); events are kept in the journal until one does")
            } else {
                "the broker is unreachable; events are kept in the journal until it returns".into()
            }
        } else {
            let mut ready = serde_json::json!({ "status": "ready" });
            if let Some(Some(node)) = node {
                ready["broker"] = node.into();
            }
            return json(StatusCode::OK, ready.to_string().into_bytes());
        };
        error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
    }

    async fn list(&self, query: &str) -> Response<Body> {
        // Registered before the first read, so that an event made durable after it wakes
        // the wait below.
        let mut durable = self.journal.last_seq();
        let last = *durable.borrow_and_update();
        let ListQuery { mut filter, wait } = match parse_list(query, last) {
            Ok(asked) => asked,
            Err(e) => return bad_request(e),
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut stop = self.stop.clone();
        let (summaries, next_after) = loop {
            let (found, cursor) = match self.page(&filter).await {
                Ok(page) => page,
                Err(answer) => return answer,
            };
            if !found.is_empty() || tokio::time::Instant::now() >= deadline || *stop.borrow() {
                break (found, cursor);
            }
            // Nothing yet: wait for the next durable event, then look from where this
            // look ended.
            filter.after = cursor;
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { break (found, cursor) },
                _ = tokio::time::sleep_until(deadline) => {}
                _ = crate::listen::stopped(&mut stop) => break (found, cursor),
            }
            filter.until = Some(*durable.borrow_and_update());
        };
        let events: Vec<SummaryView> = summaries.iter().map(SummaryView::from).collect();
        let body = serde_json::json!({ "events": events, "next_after": next_after });
        json(
            StatusCode::OK,
            serde_json::to_vec(&body).expect("plain JSON"),
        )
    }

    /// One page of the journal's listing, read off the async threads; on failure, the
    /// answer to give.
    async fn page(&self, filter: &ListFilter) -> Result<(Vec<Summary>, u64), Response<Body>> {
        let journal = self.journal.clone();
        let page = filter.clone();
        match tokio::task::spawn_blocking(move || journal.list(&page)).await {
            Ok(Ok(listed)) => Ok(listed),
            Ok(Err(e)) => Err(internal(format!("cannot read the journal: {e}"))),
            Err(e) => Err(internal(format!("listing failed: {e}"))),
        }
    }

    async fn show(&self, seq: &str) -> Response<Body> {
        let Ok(seq) = seq.parse::<u64>() else {
            return bad_request(format!("`{seq}` is not a sequence number"));
        };
        // Like the listing, only what is durable: an event whose flush is still running
        // may yet be refused.
        if seq > *self.journal.last_seq().borrow() {
            return not_found(format!("there is no event {seq}"));
        }
        let journal = self.journal.clone();
        match tokio::task::spawn_blocking(move || journal.get(seq)).await {
            Ok(Ok(Some(record))) => match event_view(&record, &self.headers) {
                Ok(body) => json(StatusCode::OK, body),
                Err(e) => internal(format!("event {seq} cannot be shown: {e}")),
            },
            Ok(Ok(None)) => not_found(format!("there is no event {seq}")),
            // It costs this event only: the listing and every other event still answer.
            Ok(Err(e @ ReadError::Damaged { .. })) => {
                error_response(StatusCode::GONE, "event_damaged", e.to_string())
            }
            Ok(Err(e)) => internal(format!("cannot read event {seq}: {e}")),
            Err(e) => internal(format!("reading event {seq} failed: {e}")),
        }
    }
}

fn event_view(record: &Record, policies: &HeaderPolicies) -> Result<Vec<u8>, String> {
    let payload_text = std::str::from_utf8(record.payload()).map_err(|e| e.to_string())?;
    let payload: &RawValue = serde_json::from_str(payload_text).map_err(|e| e.to_string())?;
    // A header sent more than once shows its values joined, as HTTP allows.
    let mut headers = serde_json::Map::new();
    for (name, value) in policies.of(&record.summary.source).filter(&record.headers) {
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
