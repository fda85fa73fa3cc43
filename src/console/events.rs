//! The Events page (newest first, filters, live rows from the stream), one event's page
//! (summary, headers, payload, broker attempts, deliveries) and its Replay button.

use askama::Template;
use http::{Method, Response, StatusCode};
use serde_json::value::RawValue;
use serde_json::Value;

use super::api::{self, number, short_time, text};
use super::page::{html, Chrome, Message};
use super::session::Flash;
use super::Ctx;
use crate::answer::Body;

/// Events on one page.
const PAGE: usize = 50;

pub struct EventRow {
    pub seq: u64,
    pub received_at: String,
    pub received: String,
    pub source: String,
    pub event_type: String,
    pub status: String,
    pub attempts: u64,
}

impl EventRow {
    fn of(summary: &Value) -> EventRow {
        let received_at = text(summary, "received_at");
        EventRow {
            seq: number(summary, "seq"),
            received: short_time(&received_at),
            received_at,
            source: text(summary, "source"),
            event_type: text(summary, "type"),
            status: text(summary, "status"),
            attempts: number(summary, "attempts"),
        }
    }
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    chrome: Chrome,
    sources: Vec<String>,
    source: String,
    event_type: String,
    status: String,
    statuses: [&'static str; 4],
    rows: Vec<EventRow>,
    /// The stream's URL for new rows: only on the newest page.
    live: Option<String>,
    older: Option<String>,
    newer: Option<String>,
    error: Option<Message>,
}

/// `GET /`: the newest events (or, with `before`, older ones), filtered.
pub async fn list(ctx: &Ctx<'_>) -> Response<Body> {
    let (source, event_type, status, before) = (
        ctx.param("source"),
        ctx.param("type"),
        ctx.param("status"),
        ctx.param("before"),
    );
    let limit = PAGE.to_string();
    let asked = api::query(&[
        ("source", &source),
        ("type", &event_type),
        ("status", &status),
        ("before", if before.is_empty() { "latest" } else { &before }),
        ("limit", &limit),
    ]);
    let answer = api::get(ctx.admin, &format!("/v1/events?{asked}")).await;
    let sources_answer = api::get(ctx.admin, "/v1/sources").await;
    let sources = sources_answer.body["sources"]
        .as_array()
        .map(|all| all.iter().map(|s| text(s, "name")).collect())
        .unwrap_or_default();
    let mut page = EventsPage {
        chrome: ctx.chrome("Events", "events"),
        sources,
        statuses: ["queued", "delivered", "stale", "failed"],
        rows: Vec::new(),
        live: None,
        older: None,
        newer: None,
        error: None,
        source,
        event_type,
        status,
    };
    if !answer.ok() {
        page.error = Some(answer.message().into());
        return html(answer.status, &page);
    }
    page.rows = answer.body["events"]
        .as_array()
        .map(|events| events.iter().rev().map(EventRow::of).collect())
        .unwrap_or_default();
    let filters = [
        ("source", page.source.as_str()),
        ("type", page.event_type.as_str()),
        ("status", page.status.as_str()),
    ];
    let next_before = number(&answer.body, "next_before");
    if next_before > 1 && !page.rows.is_empty() {
        let mut pairs = filters.to_vec();
        let cursor = next_before.to_string();
        pairs.push(("before", &cursor));
        page.older = Some(format!("/?{}", api::query(&pairs)));
    }
    if before.is_empty() {
        // The stream has no status filter; the script compares the status itself.
        let after = number(&answer.body, "next_after").to_string();
        page.live = Some(format!(
            "/live?{}",
            api::query(&[
                ("source", &page.source),
                ("type", &page.event_type),
                ("after", &after),
            ])
        ));
    } else {
        page.newer = Some(format!("/?{}", api::query(&filters)));
    }
    html(StatusCode::OK, &page)
}

struct Attempt {
    at: String,
    outcome: String,
}

struct DeliveryRow {
    id: String,
    subscription: String,
    status: String,
    attempts: u64,
    last: String,
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    chrome: Chrome,
    event: EventRow,
    id: String,
    size: u64,
    content_type: String,
    client_identity: String,
    replay_of: Option<u64>,
    headers: Vec<(String, String)>,
    payload: String,
    attempts: Vec<Attempt>,
    deliveries: Vec<DeliveryRow>,
}

/// An event answer's payload as the page shows it ([`crate::admin::indented`]).
fn payload_text(answer: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        payload: &'a RawValue,
    }
    let Ok(event) = serde_json::from_slice::<Event>(answer) else {
        return String::new();
    };
    crate::admin::indented(event.payload.get().as_bytes())
}

/// What the last attempt of a delivery got: a status code or an error.
pub fn last_outcome(delivery: &Value) -> String {
    let Some(last) = delivery["attempts"].as_array().and_then(|a| a.last()) else {
        return String::new();
    };
    match last["status_code"].as_u64() {
        Some(code) => code.to_string(),
        None => text(last, "error"),
    }
}

/// `GET /events/{seq}`.
pub async fn show(ctx: &Ctx<'_>, seq: &str) -> Response<Body> {
    let answer = api::get(ctx.admin, &format!("/v1/events/{seq}")).await;
    if !answer.ok() {
        return ctx.failed(&format!("Event {seq}"), "events", &answer);
    }
    let event = &answer.body;
    let deliveries = api::get(ctx.admin, &format!("/v1/events/{seq}/deliveries")).await;
    let headers = event["headers"]
        .as_object()
        .map(|all| {
            all.iter()
                .map(|(name, value)| (name.clone(), value.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let page = EventPage {
        chrome: ctx.chrome(format!("Event {}", number(event, "seq")), "events"),
        event: EventRow::of(event),
        id: text(event, "id"),
        size: number(event, "size"),
        content_type: text(event, "content_type"),
        client_identity: text(event, "client_identity"),
        replay_of: event["replay_of"].as_u64(),
        headers,
        payload: payload_text(&answer.raw),
        attempts: event["attempts_log"]
            .as_array()
            .map(|log| {
                log.iter()
                    .map(|a| Attempt {
                        at: short_time(&text(a, "at")),
                        outcome: text(a, "outcome"),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        deliveries: deliveries.body["deliveries"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|d| DeliveryRow {
                        id: text(d, "id"),
                        subscription: text(d, "subscription"),
                        status: text(d, "status"),
                        attempts: number(d, "attempt_count"),
                        last: last_outcome(d),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    html(StatusCode::OK, &page)
}

/// `POST /events/{seq}/replay`.
pub async fn replay(ctx: &Ctx<'_>, seq: &str) -> Response<Body> {
    let answer = api::call(
        ctx.admin,
        Method::POST,
        &format!("/v1/events/{seq}/replay"),
        None,
    )
    .await;
    let back = format!("/events/{seq}");
    if !answer.ok() {
        return ctx.done(&back, Flash::error(answer.message()));
    }
    let flash = match answer.body["queued_as"].as_u64() {
        Some(new) if new.to_string() != seq => {
            Flash::ok(format!("Event {seq} was queued again as event {new}."))
                .with_link(format!("/events/{new}"), format!("Open event {new}"))
        }
        _ => Flash::ok(format!("Event {seq} was queued again.")),
    };
    ctx.done(&back, flash)
}
