//! The admin listener (SPEC §7): `/healthz`, `/readyz`, `/metrics`, and under `/v1/` the
//! API through which operators and workers find, read and replay events. Requests a
//! browser could be tricked into are refused first ([`guard`]). `GET /v1/stream` is the
//! live stream ([`stream`], fed by [`broadcast`]).

pub mod broadcast;
mod guard;
pub mod stream;
mod subscriptions;

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use tokio::sync::watch;

use crate::answer::{error_response, json, Body};
use crate::config::Secret;
use crate::gateway::Clock;
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
    /// The configured sources, as a reload leaves them.
    pub sources: crate::sources::Sources,
    /// Each configured source's URL to give its provider: its `public_url`, else the
    /// ingest listener's address (reachable form) and `/hooks/NAME`.
    pub source_urls: std::collections::HashMap<String, String>,
    /// The web console's sessions and settings.
    pub console: crate::console::Console,
    /// Long polls end early when this turns true, so that a stop is not held up.
    pub stop: watch::Receiver<bool>,
    /// The time of replays and of `since`.
    pub clock: Arc<dyn Clock>,
    /// Subscriptions' sending side: for test sends, secrets and the allowed targets.
    pub deliverer: Arc<crate::deliver::Deliverer>,
    /// The live stream (`GET /v1/stream`); its feed task runs beside the listener.
    pub stream: broadcast::Broadcaster,
}

/// The most a request body to the admin API may hold.
const MAX_ADMIN_BODY: usize = 256 * 1024;

/// A request's whole body, or the `413` to answer when it holds more than `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<bytes::Bytes, Response<Body>>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a request body here may hold at most {limit} bytes"),
        )),
    }
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
    /// Every request to the admin listener: the live stream (and the console's way to
    /// it), whose body is streamed, or one of the calls answered whole by
    /// [`Admin::handle`]. `cut` closes the request's connection.
    pub async fn serve<B>(
        self: Arc<Self>,
        request: Request<B>,
        cut: crate::listen::CutOff,
    ) -> Response<stream::AdminBody>
    where
        B: hyper::body::Body<Data = bytes::Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = request.uri().path();
        let console = path == crate::console::LIVE;
        if path != "/v1/stream" && !console {
            return self.handle(request).await.map(http_body_util::Either::Left);
        }
        if let Some(refused) = self.refuse(&request) {
            return refused.map(http_body_util::Either::Left);
        }
        if request.method() != Method::GET {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {path}", request.method()),
            )
            .map(http_body_util::Either::Left);
        }
        // A stream asked for after an event's answer starts after that event: the
        // newest seq it starts from is read once the index covers every acknowledged
        // event (it follows the log's syncs by a group or two).
        if let Err(refused) = self.readable_seq().await {
            return refused.map(http_body_util::Either::Left);
        }
        if console {
            return crate::console::live(&self, &request, cut);
        }
        let query = request.uri().query().unwrap_or("");
        self.stream_response(query, request.headers().get("last-event-id"), cut)
    }

    /// The answer refusing a request a browser was tricked into, or a `/v1/` call
    /// without the token.
    fn refuse<B>(&self, request: &Request<B>) -> Option<Response<Body>> {
        if let Some(refused) = guard::refuse(request, &self.hosts) {
            return Some(refused);
        }
        if request.uri().path().starts_with("/v1/") && !self.authorised(request.headers()) {
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this call needs the admin token as `Authorization: Bearer <token>`".into(),
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return Some(response);
        }
        None
    }

    pub async fn handle<B>(self: Arc<Self>, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if let Some(refused) = self.refuse(&request) {
            return refused;
        }
        if crate::console::serves(request.uri().path()) {
            return crate::console::handle(&self, request).await;
        }
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let method = request.method().clone();
        let body = if matches!(
            method,
            Method::POST | Method::PATCH | Method::PUT | Method::DELETE
        ) && (path.starts_with("/v1/subscriptions")
            || path.starts_with("/v1/deliveries/"))
        {
            match read_body(request.into_body(), MAX_ADMIN_BODY).await {
                Ok(body) => body,
                Err(too_large) => return too_large,
            }
        } else {
            bytes::Bytes::new()
        };
        self.route(&method, &path, &query, &body).await
    }

    /// The calls behind the token check: what the CLI reaches over HTTP and the console
    /// (signed in by its session) calls in-process, so that both see the same answers.
    pub async fn route(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Response<Body> {
        if let Some(answer) = self.subscriptions_api(method, path, query, body).await {
            return answer;
        }
        let replay_of = path
            .strip_prefix("/v1/events/")
            .and_then(|rest| rest.strip_suffix("/replay"));
        match (method, path, replay_of) {
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
            (&Method::GET, "/readyz", _) => self.ready(query),
            (&Method::GET, "/metrics", _) => self.metrics().await,
            (&Method::GET, "/v1/events", _) => self.list(query).await,
            (&Method::GET, "/v1/sources", _) => self.sources(),
            (&Method::POST, "/v1/replay", _) => self.replay_matching(query).await,
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

    async fn metrics(&self) -> Response<Body> {
        // Rendering reads the journal's disk space (`statvfs`), which a hung filesystem
        // can hold up: on the blocking pool, not a request thread.
        let (metrics, journal) = (self.metrics.clone(), self.journal.clone());
        let text = match tokio::task::spawn_blocking(move || metrics.render(&journal)).await {
            Ok(text) => text,
            Err(e) => return internal(format!("rendering the metrics failed: {e}")),
        };
        let mut response = json(StatusCode::OK, text.into_bytes());
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
                "url": self.source_urls.get(name),
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
            .named()
            .into_iter()
            .map(|(name, scheme)| {
                let c = counts.remove(&name).unwrap_or_default();
                view(&name, Some(&scheme), c)
            })
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
        let last = match self.readable_seq().await {
            Ok(last) => last,
            Err(answer) => return answer,
        };
        let mut filter = match parse_replay(query, last, self.clock.now()) {
            Ok(filter) => filter,
            Err(e) => return bad_request(e),
        };
        if let Some(answer) = filter
            .source
            .as_deref()
            .and_then(|s| self.unknown_source(s))
        {
            return answer;
        }
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
                "replaying {} would take the backlog past max_backlog ({}), and providers would get 503; replay fewer",
                crate::cli::events::events(matched.len() as u64),
                settings.max_backlog
            ));
        }
        let mut replayed = 0u64;
        for chunk in matched.chunks(REPLAY_CHUNK) {
            match self.journal.replay(chunk.to_vec(), self.now_ms()).await {
                Ok(done) => replayed += done.len() as u64,
                Err(e) => {
                    return unavailable(format!(
                        "replay stopped after {}: {e}",
                        crate::cli::events::events(replayed)
                    ))
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
        // Said in both answers, so that a person (the console's Health page) sees the
        // broker's state: `none` (embedded), `unreachable`, or the node in use.
        let broker = match node {
            None => "none".to_string(),
            Some(None) => "unreachable".to_string(),
            Some(Some(node)) => node.to_string(),
        };
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
            let body = serde_json::json!({ "status": "ready", "broker": broker });
            return json(StatusCode::OK, body.to_string().into_bytes());
        };
        let body =
            serde_json::json!({ "error": "unavailable", "message": reason, "broker": broker });
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            body.to_string().into_bytes(),
        )
    }

    async fn list(&self, query: &str) -> Response<Body> {
        // Registered before the first read, so that an event made durable after it wakes
        // the wait below.
        let mut durable = self.journal.last_seq();
        durable.borrow_and_update();
        // Up to every event acknowledged before this call.
        let last = match self.readable_seq().await {
            Ok(last) => last,
            Err(answer) => return answer,
        };
        let ListQuery { mut filter, wait } = match parse_list(query, last) {
            Ok(asked) => asked,
            Err(e) => return bad_request(e),
        };
        if let Some(answer) = filter
            .source
            .as_deref()
            .and_then(|s| self.unknown_source(s))
        {
            return answer;
        }
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
        let body = match filter.before {
            // Paging back: newer events continue after the newest one looked at, older
            // ones before the oldest.
            Some(before) => serde_json::json!({
                "events": events,
                "next_after": filter.until.unwrap_or(0).min(before.saturating_sub(1)),
                "next_before": next_after,
            }),
            None => serde_json::json!({ "events": events, "next_after": next_after }),
        };
        json(
            StatusCode::OK,
            serde_json::to_vec(&body).expect("plain JSON"),
        )
    }

    /// A 400 `unknown_source` for a source filter that can match nothing: no source of
    /// that name is configured or has events, and it is neither the gateway's own
    /// source nor a subscription's (whose derived events carry its name). A typo then
    /// says so instead of listing nothing.
    pub(crate) fn unknown_source(&self, name: &str) -> Option<Response<Body>> {
        let known = self.sources.contains(name)
            || name == crate::journal::OPERATIONAL_SOURCE
            || self.journal.counts().contains_key(name)
            || self
                .journal
                .subscriptions()
                .borrow()
                .iter()
                .any(|s| s.name == name);
        if known {
            return None;
        }
        let mut names: Vec<String> = self.sources.named().into_iter().map(|(n, _)| n).collect();
        names.truncate(20);
        let shown: String = name.chars().take(64).collect();
        Some(error_response(
            StatusCode::BAD_REQUEST,
            "unknown_source",
            format!(
                "no source `{shown}` is configured or has events; configured: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ))
    }

    /// One page of the journal's listing, read off the async threads; on failure, the
    /// answer to give.
    /// [`Journal::readable_seq`], off the runtime's threads (it may wait for the index).
    async fn readable_seq(&self) -> Result<u64, Response<Body>> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.readable_seq())
            .await
            .map_err(|e| internal(format!("cannot read the journal: {e}")))
    }

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
        // may yet be refused. Every event acknowledged before this call is readable.
        let journal = self.journal.clone();
        let read = tokio::task::spawn_blocking(move || {
            if seq > journal.readable_seq() {
                return Ok(None);
            }
            journal.get(seq)
        });
        match read.await {
            Ok(Ok(Some(record))) => match event_view(&record, &self.sources) {
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

/// An event's payload as the JSON text that was accepted, to be embedded as it is: not
/// parsed into a value, which would refuse some text ingest takes (a lone surrogate
/// escape such as `"\ud800"`, nesting past 128 levels).
fn raw_payload(record: &Record) -> Result<&RawValue, String> {
    let text = std::str::from_utf8(record.payload()).map_err(|e| e.to_string())?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// JSON text as a reader of the API shows it: indented where a value can hold it, else
/// as it came (an answer or a payload holding what [`raw_payload`] embeds unparsed).
pub fn indented(json: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(json).into_owned())
}

fn event_view(record: &Record, sources: &crate::sources::Sources) -> Result<Vec<u8>, String> {
    let payload = raw_payload(record)?;
    // A header sent more than once shows its values joined, as HTTP allows.
    let mut headers = serde_json::Map::new();
    let policy = sources.header_policy(&record.summary.source);
    for (name, value) in policy.filter(&record.headers) {
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
