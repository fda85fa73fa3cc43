//! The subscriptions API (SPEC §9): subscriptions, their delivery logs, retries, the
//! pull calls of pull subscriptions, and a test send. Subscriptions from the config are
//! shown but not changed here (409).

use std::time::{Duration, SystemTime};

use http::{Method, Response, StatusCode};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{bad_request, internal, not_found, rfc3339, unavailable, Admin};
use crate::answer::{error_response, json, Body};
use crate::deliver::pattern::Patterns;
use crate::deliver::{attempt, sign, target};
use crate::journal::subscription::{delivery_id, parse_delivery_id, parse_sub_id, sub_id, Managed};
use crate::journal::{
    Delivery, DeliveryStatus, JournalError, Mode, Record, SubStats, Subscription,
};

/// The most deliveries one pull leases.
const MAX_PULL: usize = 1000;
/// The longest lease a pull may ask for.
const MAX_LEASE: Duration = Duration::from_secs(12 * 3600);
/// The longest a pull waits for a first delivery.
const MAX_PULL_WAIT: Duration = Duration::from_secs(60);
/// How long an old secret keeps signing after a rotation (like Svix).
const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// The most headers a subscription adds to its requests.
const MAX_HEADERS: usize = 32;

fn conflict(message: String) -> Response<Body> {
    error_response(StatusCode::CONFLICT, "conflict", message)
}

fn ok(status: StatusCode, body: Value) -> Response<Body> {
    json(status, serde_json::to_vec(&body).expect("plain JSON"))
}

fn journal_error(e: JournalError) -> Response<Body> {
    match e {
        JournalError::Conflict(message) => conflict(message),
        e => unavailable(e.to_string()),
    }
}

/// A subscription as the API shows it: never its secrets; its headers by name only.
pub fn view(sub: &Subscription, stats: SubStats) -> Value {
    json!({
        "id": sub.id(),
        "name": sub.name,
        "url": sub.url,
        "events": sub.events,
        "active": sub.active,
        "mode": sub.mode.as_str(),
        "ordered": sub.ordered,
        "max_in_flight": sub.max_in_flight,
        "rate_limit": sub.rate_limit,
        "headers": sub.headers.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
        "managed": sub.managed.as_str(),
        "created_at": rfc3339(sub.created_at_ms),
        "pending": stats.pending,
        "delivered": stats.delivered,
        "failed": stats.failed,
        "awaiting_callback": stats.awaiting_callback,
        "last_success_at": stats.last_success_ms.map(rfc3339),
        "last_failure_at": stats.last_failure_ms.map(rfc3339),
        "disabled_reason": sub.disabled_reason,
    })
}

/// A delivery as the API shows it.
pub fn delivery_view(d: &Delivery, event_id: Option<&str>) -> Value {
    let attempts: Vec<Value> = d
        .log
        .iter()
        .map(|a| {
            let mut attempt = json!({
                "at": rfc3339(a.at_ms),
                "duration_ms": a.duration_ms,
                "response_body": a.response_body,
                "next_attempt_at": a.next_attempt_at_ms.map(rfc3339),
            });
            if let Some(code) = a.status_code {
                attempt["status_code"] = json!(code);
            }
            if let Some(error) = &a.error {
                attempt["error"] = json!(error);
            }
            attempt
        })
        .collect();
    json!({
        "id": d.id(),
        "subscription": sub_id(d.sub),
        "seq": d.seq,
        "event_id": event_id,
        "status": d.status.as_str(),
        "attempt_count": d.attempts,
        "attempts": attempts,
        "next_attempt_at": (d.status == DeliveryStatus::Pending).then(|| rfc3339(d.next_attempt_at_ms)),
        "lease_until": d.lease_until_ms.map(rfc3339),
        "callback_deadline": d.callback_deadline_ms.map(rfc3339),
        "created_at": rfc3339(d.created_at_ms),
    })
}

/// A subscription's fields as a create or change asks for them; the error names the
/// field.
pub fn apply_fields(
    sub: &mut Subscription,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<Option<String>, String> {
    const FIELDS: [&str; 11] = [
        "name",
        "url",
        "events",
        "active",
        "mode",
        "ordered",
        "max_in_flight",
        "rate_limit",
        "headers",
        "secret",
        "ca",
    ];
    if let Some(unknown) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{unknown}`; the fields are {}",
            FIELDS.join(", ")
        ));
    }
    let string = |name: &str, v: &Value| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("`{name}` must be a string"))
    };
    let boolean = |name: &str, v: &Value| {
        v.as_bool()
            .ok_or_else(|| format!("`{name}` must be true or false"))
    };
    if let Some(v) = body.get("name") {
        let name = string("name", v)?;
        valid_name(&name)?;
        sub.name = name;
    } else if creating {
        return Err("`name` is required".into());
    }
    if let Some(v) = body.get("url") {
        sub.url = match v {
            Value::Null => None,
            v => {
                let url = string("url", v)?;
                let parsed: http::Uri = url
                    .parse()
                    .map_err(|_| format!("`url` `{url}` is not a URL"))?;
                if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none()
                {
                    return Err(format!("`url` `{url}` is not an http:// or https:// URL"));
                }
                Some(url)
            }
        };
    }
    if let Some(v) = body.get("events") {
        let events: Vec<String> = v
            .as_array()
            .ok_or("`events` must be a list of SOURCE:TYPE patterns")?
            .iter()
            .map(|e| string("events", e))
            .collect::<Result<_, _>>()?;
        if events.is_empty() {
            return Err(
                "`events` must list at least one SOURCE:TYPE pattern (`*:*` for all)".into(),
            );
        }
        Patterns::parse(&events).map_err(|e| format!("`events`: {e}"))?;
        sub.events = events;
    } else if creating {
        return Err("`events` is required: a list of SOURCE:TYPE patterns (`*:*` for all)".into());
    }
    if let Some(v) = body.get("active") {
        sub.active = boolean("active", v)?;
        if sub.active {
            sub.disabled_reason = None;
            sub.failing_since_ms = None;
        }
    }
    let mode_given = body.get("mode").is_some();
    if let Some(v) = body.get("mode") {
        let text = string("mode", v)?;
        sub.mode = Mode::parse(&text).ok_or_else(|| {
            format!("`mode` `{text}` is not one of notify, finish, callback, pull")
        })?;
    } else if creating && sub.url.is_none() {
        sub.mode = Mode::Pull;
    }
    match (&sub.url, sub.mode) {
        (Some(_), Mode::Pull) if mode_given => {
            return Err("`mode` pull takes no `url`: consumers pull instead".into())
        }
        (Some(_), Mode::Pull) => sub.mode = Mode::Notify,
        (None, Mode::Pull) => {}
        (None, _) => {
            return Err("`url` is required, except for `mode` pull".into());
        }
        _ => {}
    }
    if let Some(v) = body.get("ordered") {
        sub.ordered = boolean("ordered", v)?;
    }
    if let Some(v) = body.get("max_in_flight") {
        sub.max_in_flight =
            v.as_u64()
                .filter(|n| (1..=1024).contains(n))
                .ok_or("`max_in_flight` must be a whole number from 1 to 1024")? as u32;
    }
    if let Some(v) = body.get("rate_limit") {
        sub.rate_limit = match v {
            Value::Null => None,
            v => {
                let text = string("rate_limit", v)?;
                crate::source::parse_rate(&text).map_err(|e| format!("`rate_limit`: {e}"))?;
                Some(text)
            }
        };
    }
    if let Some(v) = body.get("headers") {
        let table = v
            .as_object()
            .ok_or("`headers` must be an object of names and values")?;
        if table.len() > MAX_HEADERS {
            return Err(format!("`headers` may hold at most {MAX_HEADERS} headers"));
        }
        let mut headers = Vec::new();
        for (name, value) in table {
            let value = string(&format!("headers.{name}"), value)?;
            valid_header(name, &value)?;
            headers.push((name.to_ascii_lowercase(), value));
        }
        sub.headers = headers;
    }
    if let Some(v) = body.get("ca") {
        sub.ca = match v {
            Value::Null => None,
            v => {
                let pem = string("ca", v)?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err("`ca` must be PEM text holding one or more certificates".into());
                }
                Some(pem)
            }
        };
    }
    let mut new_secret = None;
    if let Some(v) = body.get("secret") {
        let secret = string("secret", v)?;
        if !secret.starts_with("whsec_") || !sign::valid_secret(&secret) {
            return Err("`secret` must be `whsec_` followed by base64 (as `whsec_` + base64 of 24 random bytes)".into());
        }
        new_secret = Some(secret);
    }
    Ok(new_secret)
}

fn valid_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "`name` `{name}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        ))
    }
}

fn valid_header(name: &str, value: &str) -> Result<(), String> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`headers`: `{name}` is not a header name"))?;
    http::HeaderValue::from_str(value)
        .map_err(|_| format!("`headers.{name}`: the value is not a valid header value"))?;
    if crate::deliver::reserved_header(&name.to_ascii_lowercase()) {
        return Err(format!("`headers`: `{name}` is set by hookgate itself"));
    }
    Ok(())
}

impl Admin {
    /// Routes `/v1/subscriptions…`, `/v1/deliveries…` and `/v1/events/{seq}/deliveries`;
    /// `None` for any other path.
    pub(super) async fn subscriptions_api(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Option<Response<Body>> {
        if let Some(seq) = path
            .strip_prefix("/v1/events/")
            .and_then(|rest| rest.strip_suffix("/deliveries"))
        {
            return Some(match *method {
                Method::GET => self.event_deliveries(seq).await,
                _ => not_allowed(method, path),
            });
        }
        if let Some(rest) = path.strip_prefix("/v1/deliveries/") {
            return Some(match (method, rest.strip_suffix("/retry")) {
                (&Method::POST, Some(id)) => self.retry(id).await,
                _ if rest.ends_with("/retry") => not_allowed(method, path),
                _ => not_found(format!("nothing is served at {path}")),
            });
        }
        if path == "/v1/subscriptions" {
            return Some(match *method {
                Method::GET => self.list_subscriptions(),
                Method::POST => self.create(body).await,
                _ => not_allowed(method, path),
            });
        }
        let rest = path.strip_prefix("/v1/subscriptions/")?;
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(sub) = parse_sub_id(id).and_then(|num| self.journal.subscription(num)) else {
            return Some(not_found(format!("there is no subscription `{id}`")));
        };
        Some(match (method, action) {
            (&Method::GET, "") => ok(StatusCode::OK, view(&sub, self.journal.sub_stats(sub.num))),
            (&Method::PATCH, "") => self.change(sub, body).await,
            (&Method::DELETE, "") => self.delete(sub).await,
            (&Method::POST, "test") => self.test(sub).await,
            (&Method::GET, "deliveries") => self.deliveries(sub, query).await,
            (&Method::GET, "pull") => self.pull(sub, query).await,
            (&Method::POST, "ack") => self.ack(sub, body).await,
            (_, "" | "test" | "deliveries" | "pull" | "ack") => not_allowed(method, path),
            _ => not_found(format!("nothing is served at {path}")),
        })
    }

    fn list_subscriptions(&self) -> Response<Body> {
        let subs = self.journal.subscriptions().borrow().clone();
        let listed: Vec<Value> = subs
            .iter()
            .map(|s| view(s, self.journal.sub_stats(s.num)))
            .collect();
        ok(StatusCode::OK, json!({ "subscriptions": listed }))
    }

    fn body_object(body: &[u8]) -> Result<Map<String, Value>, String> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("the body must be a JSON object".into()),
            Err(e) => Err(format!("the body is not JSON: {e}")),
        }
    }

    /// A name must not be a source's (a `.finished` event's source is its subscription's
    /// name) nor `hookgate` (the operational events' source).
    fn name_free(&self, name: &str) -> Result<(), String> {
        if name == crate::journal::OPERATIONAL_SOURCE || self.sources.contains(name) {
            return Err(format!(
                "`name` `{name}` is the name of a source; subscriptions and sources need different names"
            ));
        }
        Ok(())
    }

    async fn allowed_target(&self, sub: &Subscription) -> Result<(), Response<Body>> {
        let Some(url) = &sub.url else {
            return Ok(());
        };
        match target::check_url(url, &self.deliverer.allow).await {
            Ok(()) => Ok(()),
            Err(e) => Err(error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "target_not_allowed",
                e.to_string(),
            )),
        }
    }

    async fn create(&self, body: &[u8]) -> Response<Body> {
        let fields = match Self::body_object(body) {
            Ok(fields) => fields,
            Err(e) => return bad_request(e),
        };
        let mut sub = Subscription::new_api(self.now_ms());
        let secret = match apply_fields(&mut sub, &fields, true) {
            Ok(secret) => secret.unwrap_or_else(sign::new_secret),
            Err(e) => return bad_request(e),
        };
        if let Err(e) = self.name_free(&sub.name) {
            return bad_request(e);
        }
        if let Err(answer) = self.allowed_target(&sub).await {
            return answer;
        }
        sub.secrets = vec![(secret.clone(), None)];
        match self.journal.put_subscription(sub).await {
            Ok(sub) => {
                tracing::info!(subscription = %sub.id(), name = %sub.name, url = ?sub.url, "subscription created");
                let mut shown = view(&sub, SubStats::default());
                shown["secret"] = json!(secret);
                ok(StatusCode::CREATED, shown)
            }
            Err(e) => journal_error(e),
        }
    }

    async fn change(&self, mut sub: Subscription, body: &[u8]) -> Response<Body> {
        if sub.managed == Managed::Config {
            return conflict(format!(
                "subscription {} comes from the config file; change it there",
                sub.id()
            ));
        }
        let fields = match Self::body_object(body) {
            Ok(fields) => fields,
            Err(e) => return bad_request(e),
        };
        let secret = match apply_fields(&mut sub, &fields, false) {
            Ok(secret) => secret,
            Err(e) => return bad_request(e),
        };
        if fields.contains_key("name") {
            if let Err(e) = self.name_free(&sub.name) {
                return bad_request(e);
            }
        }
        if fields.contains_key("url") {
            if let Err(answer) = self.allowed_target(&sub).await {
                return answer;
            }
        }
        if let Some(secret) = &secret {
            // The old secrets keep signing beside the new one for a day.
            let until = self.now_ms() + ROTATION_OVERLAP.as_millis() as u64;
            let now_ms = self.now_ms();
            let mut secrets = vec![(secret.clone(), None)];
            secrets.extend(
                sub.secrets
                    .iter()
                    .filter(|(old, u)| old != secret && u.is_none_or(|u| u > now_ms))
                    .map(|(old, u)| (old.clone(), Some(u.map_or(until, |u| u.min(until))))),
            );
            sub.secrets = secrets;
        }
        match self.journal.put_subscription(sub).await {
            Ok(sub) => {
                tracing::info!(subscription = %sub.id(), name = %sub.name, "subscription changed");
                let mut shown = view(&sub, self.journal.sub_stats(sub.num));
                if let Some(secret) = secret {
                    shown["secret"] = json!(secret);
                }
                ok(StatusCode::OK, shown)
            }
            Err(e) => journal_error(e),
        }
    }

    async fn delete(&self, sub: Subscription) -> Response<Body> {
        if sub.managed == Managed::Config {
            return conflict(format!(
                "subscription {} comes from the config file; remove it there",
                sub.id()
            ));
        }
        match self.journal.delete_subscription(sub.num).await {
            Ok(_) => {
                let mut response = json(StatusCode::NO_CONTENT, Vec::new());
                response.headers_mut().remove(http::header::CONTENT_TYPE);
                response
            }
            Err(e) => journal_error(e),
        }
    }

    /// Sends a `hookgate.test` event to the subscription now, outside the journal, and
    /// answers with the attempt.
    async fn test(&self, sub: Subscription) -> Response<Body> {
        if sub.url.is_none() {
            return bad_request(format!(
                "subscription {} is a pull subscription: it has no URL to send to",
                sub.id()
            ));
        }
        let now = SystemTime::now();
        let id = format!("test_{}", uuid::Uuid::new_v4().simple());
        let payload = json!({
            "type": "hookgate.test",
            "id": id,
            "subscription": sub.id(),
            "sent_at": rfc3339(crate::unix_ms(now)),
        });
        let attempted = attempt::test(&self.deliverer, &sub, &id, payload.to_string().into()).await;
        let mut answer = json!({
            "event_id": id,
            "duration_ms": attempted.duration.as_millis() as u64,
            "response_body": (!attempted.body.is_empty())
                .then(|| String::from_utf8_lossy(&attempted.body[..attempted.body.len().min(4096)]).into_owned()),
        });
        if let Some(code) = attempted.status {
            answer["status_code"] = json!(code);
        }
        if let Some(error) = attempted.error {
            answer["error"] = json!(error);
        }
        ok(StatusCode::OK, answer)
    }

    async fn deliveries(&self, sub: Subscription, query: &str) -> Response<Body> {
        let mut status = None;
        let mut after = 0;
        let mut limit = super::query::DEFAULT_LIMIT;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "status" => match DeliveryStatus::parse(&value) {
                    Some(s) => status = Some(s),
                    None => return bad_request(format!(
                        "status `{value}` is not one of pending, delivered, failed, awaiting_callback, finished, timed_out"
                    )),
                },
                "after" => match value.parse() {
                    Ok(n) => after = n,
                    Err(_) => return bad_request(format!("after `{value}` is not a sequence number")),
                },
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=super::query::MAX_LIMIT).contains(&n) => limit = n,
                    _ => return bad_request(format!("limit `{value}` is not a number from 1 to {}", super::query::MAX_LIMIT)),
                },
                other => return bad_request(format!("unknown parameter `{other}`; use status, after, limit")),
            }
        }
        let journal = self.journal.clone();
        let num = sub.num;
        // The index reads (each event's id from its summary, too) wait for the disk and
        // for the indexer to catch up: off the request threads.
        let listed = tokio::task::spawn_blocking(move || {
            let (found, next_after) = journal.deliveries_of(num, status, after, limit)?;
            let ids: Vec<Option<String>> = found
                .iter()
                .map(|d| journal.summary(d.seq).map(|s| s.id))
                .collect();
            Ok::<_, String>((found, ids, next_after))
        })
        .await;
        match listed {
            Ok(Ok((found, ids, next_after))) => {
                let views: Vec<Value> = found
                    .iter()
                    .zip(&ids)
                    .map(|(d, id)| delivery_view(d, id.as_deref()))
                    .collect();
                ok(
                    StatusCode::OK,
                    json!({ "deliveries": views, "next_after": next_after }),
                )
            }
            Ok(Err(e)) => internal(format!("cannot read the deliveries: {e}")),
            Err(e) => internal(format!("listing deliveries failed: {e}")),
        }
    }

    async fn event_deliveries(&self, seq: &str) -> Response<Body> {
        let Ok(seq) = seq.parse::<u64>() else {
            return bad_request(format!("`{seq}` is not a sequence number"));
        };
        let journal = self.journal.clone();
        // Index reads, off the request threads as above.
        let read = tokio::task::spawn_blocking(move || {
            let summary = journal.summary(seq)?;
            Some((journal.event_deliveries(seq), summary))
        })
        .await;
        let (found, summary) = match read {
            Ok(Some(read)) => read,
            Ok(None) => return not_found(format!("there is no event {seq}")),
            Err(e) => return internal(format!("reading the deliveries failed: {e}")),
        };
        match found {
            Ok(found) => {
                let views: Vec<Value> = found
                    .iter()
                    .map(|d| delivery_view(d, Some(&summary.id)))
                    .collect();
                ok(StatusCode::OK, json!({ "deliveries": views }))
            }
            Err(e) => internal(format!("cannot read the deliveries: {e}")),
        }
    }

    async fn retry(&self, id: &str) -> Response<Body> {
        let Some((seq, num)) = parse_delivery_id(id) else {
            return not_found(format!("there is no delivery `{id}`"));
        };
        match self.journal.retry_delivery(seq, num, self.now_ms()).await {
            Ok(true) => {
                tracing::info!(delivery = %id, "delivery retry requested");
                ok(
                    StatusCode::ACCEPTED,
                    json!({ "status": "pending", "id": id }),
                )
            }
            Ok(false) => not_found(format!("there is no delivery `{id}`")),
            Err(e) => journal_error(e),
        }
    }

    async fn pull(&self, sub: Subscription, query: &str) -> Response<Body> {
        if sub.mode != Mode::Pull {
            return conflict(format!(
                "subscription {} is delivered by hookgate ({}); only pull subscriptions are pulled",
                sub.id(),
                sub.mode.as_str()
            ));
        }
        let mut max = 10;
        let mut wait = Duration::ZERO;
        let mut lease = Duration::from_secs(30);
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let duration =
                || crate::config::units::parse_duration(&value).map_err(|e| format!("{name}: {e}"));
            match name.as_ref() {
                "max" => match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_PULL).contains(&n) => max = n,
                    _ => {
                        return bad_request(format!(
                            "max `{value}` is not a number from 1 to {MAX_PULL}"
                        ))
                    }
                },
                "wait" => match duration() {
                    Ok(d) => wait = d.min(MAX_PULL_WAIT),
                    Err(e) => return bad_request(e),
                },
                "lease" => match duration() {
                    Ok(d) if !d.is_zero() && d <= MAX_LEASE => lease = d,
                    Ok(_) => {
                        return bad_request(format!(
                            "lease `{value}` must be above 0 and at most 12h"
                        ))
                    }
                    Err(e) => return bad_request(e),
                },
                other => {
                    return bad_request(format!(
                        "unknown parameter `{other}`; use max, wait, lease"
                    ))
                }
            }
        }
        if !sub.active {
            return ok(StatusCode::OK, json!({ "deliveries": [] }));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut durable = self.journal.last_seq();
        let mut stop = self.stop.clone();
        let leased = loop {
            let leased = match self
                .journal
                .lease(sub.num, max, lease.as_millis() as u64, self.now_ms())
                .await
            {
                Ok(leased) => leased,
                Err(e) => return journal_error(e),
            };
            if !leased.is_empty() || tokio::time::Instant::now() >= deadline {
                break leased;
            }
            // New events, or a second: a lease that expired or a retry that came due.
            tokio::select! {
                _ = durable.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1).min(deadline - tokio::time::Instant::now())) => {}
                _ = crate::listen::stopped(&mut stop) => break Vec::new(),
            }
        };
        let journal = self.journal.clone();
        let records = tokio::task::spawn_blocking(move || {
            leased
                .into_iter()
                .map(|d| {
                    let record = journal.get(d.seq);
                    (d, record)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let records = match records {
            Ok(records) => records,
            Err(e) => return internal(format!("reading leased events failed: {e}")),
        };
        let mut shown = Vec::new();
        for (d, record) in &records {
            match record {
                Ok(Some(record)) => match pulled_event(record) {
                    Ok(event) => shown.push(Pulled {
                        id: delivery_id(d.seq, d.sub),
                        seq: d.seq,
                        attempt: d.attempts,
                        lease_until: d.lease_until_ms.map(rfc3339),
                        event,
                    }),
                    Err(e) => {
                        tracing::error!(seq = d.seq, error = %e, "a leased event cannot be shown")
                    }
                },
                // Left to its lease: it fails after the schedule like any other.
                Ok(None) | Err(_) => {
                    tracing::warn!(seq = d.seq, "a leased event cannot be read; it is left out")
                }
            }
        }
        let body = serde_json::to_vec(&PullAnswer { deliveries: shown }).expect("plain JSON");
        json(StatusCode::OK, body)
    }

    async fn ack(&self, sub: Subscription, body: &[u8]) -> Response<Body> {
        let fields = match Self::body_object(body) {
            Ok(fields) => fields,
            Err(e) => return bad_request(e),
        };
        let Some(ids) = fields.get("deliveries").and_then(Value::as_array) else {
            return bad_request("`deliveries` must be a list of delivery ids".into());
        };
        let mut seqs = Vec::with_capacity(ids.len());
        for id in ids {
            match id.as_str().and_then(parse_delivery_id) {
                Some((seq, num)) if num == sub.num => seqs.push(seq),
                _ => {
                    return bad_request(format!(
                        "`deliveries`: {id} is not a delivery id of subscription {}",
                        sub.id()
                    ))
                }
            }
        }
        match self.journal.ack(sub.num, seqs, self.now_ms()).await {
            Ok(acked) => ok(StatusCode::OK, json!({ "acked": acked })),
            Err(e) => journal_error(e),
        }
    }
}

/// What a pull answers.
#[derive(serde::Serialize)]
struct PullAnswer<'a> {
    deliveries: Vec<Pulled<'a>>,
}

/// A leased delivery.
#[derive(serde::Serialize)]
struct Pulled<'a> {
    id: String,
    seq: u64,
    attempt: u32,
    lease_until: Option<String>,
    event: PulledEvent<'a>,
}

/// A leased event: its summary and payload.
#[derive(serde::Serialize)]
struct PulledEvent<'a> {
    #[serde(flatten)]
    summary: super::SummaryView<'a>,
    /// As it was accepted ([`super::raw_payload`]): parsed into a value, some payloads
    /// were refused, and their events leased again until they failed.
    payload: &'a RawValue,
}

fn pulled_event(record: &Record) -> Result<PulledEvent<'_>, String> {
    Ok(PulledEvent {
        summary: (&record.summary).into(),
        payload: super::raw_payload(record)?,
    })
}

fn not_allowed(method: &Method, path: &str) -> Response<Body> {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Subscription {
        Subscription::new_api(0)
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_create_names_the_bad_field() {
        let cases = [
            (
                json!({"url": "http://x/", "events": ["*:*"]}),
                "`name` is required",
            ),
            (
                json!({"name": "a b", "url": "http://x/", "events": ["*:*"]}),
                "`name`",
            ),
            (
                json!({"name": "a", "url": "ftp://x/", "events": ["*:*"]}),
                "`url`",
            ),
            (
                json!({"name": "a", "url": "http://x/", "events": []}),
                "`events`",
            ),
            (
                json!({"name": "a", "url": "http://x/", "events": ["nocolon"]}),
                "`events`",
            ),
            (
                json!({"name": "a", "url": "http://x/", "events": ["*:*"], "mode": "loud"}),
                "`mode`",
            ),
            (
                json!({"name": "a", "url": "http://x/", "events": ["*:*"], "max_in_flight": 0}),
                "`max_in_flight`",
            ),
            (
                json!({"name": "a", "url": "http://x/", "events": ["*:*"], "rate_limit": "fast"}),
                "`rate_limit`",
            ),
            (
                json!({"name": "a", "url": "http://x/", "events": ["*:*"], "headers": {"webhook-id": "x"}}),
                "`headers`",
            ),
            (
                json!({"name": "a", "url": "http://x/", "events": ["*:*"], "secret": "hunter2"}),
                "`secret`",
            ),
            (
                json!({"name": "a", "url": "http://x/", "events": ["*:*"], "colour": "red"}),
                "unknown field `colour`",
            ),
            // Without `url` and without a mode it is a pull subscription; a push mode
            // needs one.
            (
                json!({"name": "a", "events": ["*:*"], "mode": "notify"}),
                "`url` is required",
            ),
            (
                json!({"name": "a", "url": "http://x/", "events": ["*:*"], "mode": "pull"}),
                "`mode` pull",
            ),
        ];
        for (body, expected) in cases {
            let e = match apply_fields(&mut blank(), &fields(body.clone()), true) {
                Err(e) => e,
                Ok(_) => panic!("{body} was taken"),
            };
            assert!(e.contains(expected), "{body}: {e}");
        }
    }

    #[test]
    fn a_pull_subscription_needs_no_url_and_a_secret_is_never_shown() {
        let mut sub = blank();
        apply_fields(
            &mut sub,
            &fields(json!({"name": "w", "events": ["*:*"]})),
            true,
        )
        .unwrap();
        assert_eq!(sub.mode, Mode::Pull);
        sub.secrets = vec![("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0".into(), None)];
        sub.headers = vec![("x-team".into(), "ops-token-value".into())];
        let shown = view(&sub, SubStats::default()).to_string();
        assert!(!shown.contains("whsec_"), "{shown}");
        assert!(!shown.contains("ops-token-value"), "{shown}");
        assert!(shown.contains("x-team"));
    }
}
