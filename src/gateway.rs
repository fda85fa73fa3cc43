//! The ingest pipeline for one request, in the order the SPEC gives it:
//! route -> method -> client certificate -> body within its limit -> verify -> rate
//! limit -> parse -> admit -> journal -> answer.
//!
//! The source's `rate_limit` is taken after verification, so that only the provider's
//! own requests spend it: unsigned floods are limited per client address instead
//! ([`crate::refuse::ByAddress`]). Refusals are logged through
//! [`crate::refuse::RefusalLog`], a few in full and the rest counted.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures_util::future::Either;
use http::{Request, Response};
use tracing::Instrument;

use crate::answer::{self, Body, Rejection};
use crate::journal::{Journal, JournalError};
use crate::listen::tls::ClientIdentity;
use crate::listen::{ClientAddr, Peer};
use crate::metrics::{Metrics, UNKNOWN_SOURCE};
use crate::receive;
use crate::receive::budget::{Budget, Held};
use crate::refuse::{ByAddress, RefusalLog};
use crate::source::Source;
use crate::sources::Sources;
use crate::verify::{self, Incoming, Scheme};

/// Where "now" comes from; tests inject a fixed clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

pub struct Gateway {
    pub sources: Sources,
    pub journal: Journal,
    pub clock: Arc<dyn Clock>,
    /// What a reload may change besides the sources.
    pub limits: ArcSwap<IngestLimits>,
    pub metrics: Arc<Metrics>,
    /// Log each raw body at debug level (`HOOKGATE_LOG_BODIES=1`); off by default.
    pub log_bodies: bool,
    pub refusals: Arc<RefusalLog>,
    /// `server.max_inflight_bytes`: body bytes held across every request.
    pub budget: Budget,
}

/// The ingest limits outside the sources that a reload may change.
pub struct IngestLimits {
    /// `server.request_timeout`.
    pub request_timeout: Duration,
    /// `server.failures_per_address` as written, so that a reload that leaves it alone
    /// keeps the addresses' budgets.
    pub failures_per_address: String,
    /// Its limiter, unless `off`.
    pub by_address: Option<Arc<ByAddress>>,
}

impl IngestLimits {
    /// The limits of `server`; `current` lends its per-address budgets when the rate is
    /// the same.
    pub fn new(
        server: &crate::config::ServerConfig,
        current: Option<&IngestLimits>,
    ) -> anyhow::Result<IngestLimits> {
        let rate = server.failures_per_address.as_str();
        let by_address = match current {
            Some(current) if current.failures_per_address == rate => current.by_address.clone(),
            _ if rate == "off" => None,
            _ => Some(Arc::new(ByAddress::new(
                crate::source::parse_rate(rate)
                    .map_err(|e| anyhow::anyhow!("server.failures_per_address: {e}"))?,
                crate::refuse::address::MAX_TRACKED,
                std::time::Instant::now(),
            ))),
        };
        Ok(IngestLimits {
            request_timeout: server.request_timeout.0,
            failures_per_address: rate.to_string(),
            by_address,
        })
    }
}

impl Gateway {
    /// One request to the ingest listener, from the connection `peer`.
    ///
    /// Not an `async fn`, and with its checks in plain functions: hyper moves each
    /// request's future, and each future moves the ones it awaits into itself, so their
    /// size is copied several times a request. An `async fn` keeps its arguments twice
    /// and every local ever borrowed until the end of its scope, which made this one
    /// 3.7 KB; what is known before the first wait is worked out here instead, and
    /// verification and admission run in [`Gateway::admit`] (BENCHMARKS.md).
    pub fn handle<B>(
        self: Arc<Self>,
        request: Request<B>,
        peer: Peer,
    ) -> impl Future<Output = Response<Body>> + Send + 'static
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if let Some(token) = request.uri().path().strip_prefix("/callbacks/") {
            let token = token.to_string();
            // Rare, and a larger future: boxed, so that it does not size every request's.
            return Either::Left(Box::pin(async move {
                crate::deliver::callback::handle(&self.journal, &token, request).await
            }));
        }
        let started = tokio::time::Instant::now();
        let received_at = self.clock.now();
        // One deadline for the whole request: receiving the body and the journal's answer.
        let deadline = started + self.limits.load().request_timeout;
        // The source is looked up once: its name is the label, and `route` checks it.
        let found = request
            .uri()
            .path()
            .strip_prefix("/hooks/")
            .and_then(|name| self.sources.get(name));
        // Only configured names become a label or a log field; any other path is counted
        // as one unknown source.
        let span = tracing::info_span!(
            "request",
            source = %label(found.as_deref()),
            id = tracing::field::Empty,
            seq = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let Peer { addr, identity, .. } = peer;
        let routed = self.route(&request, found.clone(), identity.as_ref());
        let (parts, body) = request.into_parts();
        Either::Right(
            async move {
                // The steps that wait; each refusal leaves the block with its rejection.
                let ingested = 'ingest: {
                    let source = match routed {
                        Ok(source) => source,
                        Err(rejection) => {
                            discard_small_body(body).await;
                            break 'ingest Err(rejection);
                        }
                    };
                    // A slow sender is cut off after `request_timeout`; so is a stuck
                    // journal below. The body's bytes come out of the shared budget and
                    // go back when this request is answered (`held` lives until then).
                    let declared = parts
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let mut held = Held::none();
                    let read = self
                        .budget
                        .read(declared, body, source.max_body, &mut held, deadline)
                        .await;
                    let body = match read {
                        Ok(body) => body,
                        Err(e) => break 'ingest Err(e.into()),
                    };
                    let (event, id) = match self.admit(&source, parts, body, received_at, identity)
                    {
                        Ok(Admitted::Event(event)) => {
                            let id = event.id.clone();
                            (event, id)
                        }
                        Ok(Admitted::Answer(response)) => break 'ingest Ok(response),
                        Err(rejection) => break 'ingest Err(rejection),
                    };
                    tracing::Span::current().record("id", id.as_str());
                    // The journal keeps the deadline itself (its watchdog), without a
                    // timer here.
                    let appended = self.journal.append_until(event, deadline.into_std()).await;
                    match appended {
                        Ok(outcome) => {
                            let span = tracing::Span::current();
                            span.record("seq", outcome.seq());
                            span.record("outcome", outcome.status());
                            self.metrics.event(&source, outcome);
                            tracing::debug!("event journaled");
                            Ok(answer::outcome(outcome, &id))
                        }
                        Err(JournalError::TimedOut) => Err(Rejection::JournalTimeout),
                        Err(e) => Err(Rejection::Journal(e)),
                    }
                };
                let response = match ingested {
                    Ok(response) => response,
                    Err(rejection) => self.refused(rejection, addr, found.as_deref(), started),
                };
                self.metrics.request(
                    found.as_deref(),
                    response.status().as_u16(),
                    started.elapsed(),
                );
                response
            }
            .instrument(span),
        )
    }

    /// The checks made once the body is in: verify, the source's rate limit, a
    /// handshake, parse, admit. `identity` is the names of the client's certificate.
    fn admit(
        &self,
        source: &Source,
        parts: http::request::Parts,
        body: bytes::Bytes,
        received_at: SystemTime,
        identity: Option<ClientIdentity>,
    ) -> Result<Admitted, Rejection> {
        if self.log_bodies {
            let shown = &body[..body.len().min(64 * 1024)];
            tracing::debug!(target: "hookgate::bodies", size = body.len(), body = %String::from_utf8_lossy(shown), "body received");
        }
        let incoming = Incoming {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
            received_at,
        };
        let now = unix_seconds(received_at);
        let verified = verify::verify(
            &source.scheme,
            &source.secrets,
            source.tolerance,
            incoming,
            now,
        )?;
        // Verified: now the request may spend the source's budget.
        if let Some(limiter) = &source.limiter {
            if let Err(not_until) = limiter.check() {
                use governor::clock::{Clock as _, DefaultClock};
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(Rejection::RateLimited {
                    retry_after: whole_seconds(wait),
                });
            }
        }
        if let Some(handshake) = source.scheme.handshake(&verified, &source.secrets) {
            tracing::info!("handshake answered; nothing journaled");
            return Ok(Admitted::Answer(answer::handshake(handshake)));
        }
        let kind = receive::content_kind(&verified.incoming().headers)?;
        let unwrap_form = matches!(source.scheme, Scheme::Github(_));
        let payload = receive::parse(
            kind,
            &verified.incoming().body,
            unwrap_form,
            source.reads_payload,
        )?;
        let mut event = crate::admit::admit(source, verified, payload)?;
        event.client_identity = identity.map(|identity| identity.describe());
        Ok(Admitted::Event(event))
    }

    /// The answer to a refused request, counted and logged (a few in full, the rest
    /// counted: [`RefusalLog`]).
    fn refused(
        &self,
        rejection: Rejection,
        addr: ClientAddr,
        found: Option<&Source>,
        started: tokio::time::Instant,
    ) -> Response<Body> {
        let source = label(found);
        if let Rejection::Verify(e) = &rejection {
            self.metrics.verify_failure(source, e.code());
        }
        let rejection = self.count_failure(rejection, addr, source);
        tracing::Span::current().record("outcome", rejection.code());
        let ours = matches!(rejection, Rejection::Journal(_) | Rejection::JournalTimeout);
        if self.refusals.admit(source, rejection.code(), ours) {
            if ours {
                tracing::warn!(reason = %rejection, "event not accepted")
            } else {
                tracing::info!(
                    reason = %rejection,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "request rejected"
                )
            }
        }
        answer::rejected(&rejection)
    }

    /// A request that failed verification (or the client certificate check) spends its
    /// address's budget; once that is spent, it is refused as rate limited instead.
    fn count_failure(
        &self,
        rejection: Rejection,
        ClientAddr(client): ClientAddr,
        source: &str,
    ) -> Rejection {
        let failed = matches!(
            rejection,
            Rejection::Verify(_)
                | Rejection::ClientCertificateRequired
                | Rejection::ClientNotAllowed
        );
        let limits = self.limits.load();
        let (Some(limit), true) = (&limits.by_address, failed) else {
            return rejection;
        };
        match limit.failed(client.ip(), std::time::Instant::now()) {
            Ok(()) => rejection,
            Err(wait) => {
                self.metrics.refused_by_address(source);
                Rejection::AddressRateLimited {
                    retry_after: whole_seconds(wait),
                }
            }
        }
    }

    /// The checks made before the body is read: source (`found`, the one the path names),
    /// method and client certificate (`identity`).
    fn route<B>(
        &self,
        request: &Request<B>,
        found: Option<Arc<Source>>,
        identity: Option<&ClientIdentity>,
    ) -> Result<Arc<Source>, Rejection> {
        let name = request
            .uri()
            .path()
            .strip_prefix("/hooks/")
            .ok_or(Rejection::NotFound)?;
        let source =
            found.ok_or_else(|| Rejection::UnknownSource(name.chars().take(64).collect()))?;
        if !source.methods.contains(request.method()) {
            return Err(Rejection::MethodNotAllowed {
                method: request.method().to_string(),
                allow: source
                    .methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if !source.allowed_client_names.is_empty() {
            let names = identity.ok_or(Rejection::ClientCertificateRequired)?;
            if !names
                .names
                .iter()
                .any(|name| source.allowed_client_names.contains(name))
            {
                return Err(Rejection::ClientNotAllowed);
            }
        }
        Ok(source)
    }
}

/// What the checks of a received body come to: an event to journal, or an answer made
/// without one (a scheme's handshake).
enum Admitted {
    Event(crate::journal::NewEvent),
    Answer(Response<Body>),
}

/// A request's source as a label and log field: its name, or one name for every path
/// that is not a configured source.
fn label(found: Option<&Source>) -> &str {
    found.map_or(UNKNOWN_SOURCE, |s| s.name.as_str())
}

/// Reads and drops a small body before an early refusal is answered. An HTTP/2 client
/// still sending it would otherwise see its stream reset instead of the answer, and an
/// HTTP/1.1 connection could not be reused. Anything large or slow is left unread.
async fn discard_small_body<B>(body: B)
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, 64 * 1024);
    let _ = tokio::time::timeout(Duration::from_millis(500), limited.collect()).await;
}

/// A `Retry-After` in whole seconds, at least 1.
fn whole_seconds(wait: Duration) -> u32 {
    wait.as_secs_f64().ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
