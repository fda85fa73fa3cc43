//! The Sources page: each source's scheme, the URL to give its provider (with a copy
//! button), its events by status and when it last received one.

use askama::Template;
use http::{Response, StatusCode};
use serde_json::Value;

use super::api::{self, number, short_time, text};
use super::page::{html, Chrome};
use super::Ctx;
use crate::answer::Body;

struct SourceRow {
    name: String,
    scheme: String,
    configured: bool,
    /// hookgate's own operational events (`hookgate.delivery.failed`, …).
    operational: bool,
    url: String,
    queued: u64,
    delivered: u64,
    stale: u64,
    failed: u64,
    total: u64,
    last_received: String,
}

#[derive(Template)]
#[template(path = "sources.html")]
struct SourcesPage {
    chrome: Chrome,
    rows: Vec<SourceRow>,
}

fn row(source: &Value) -> SourceRow {
    let events = &source["events"];
    SourceRow {
        name: text(source, "name"),
        scheme: text(source, "scheme"),
        configured: source["configured"].as_bool().unwrap_or(false),
        operational: source["name"] == crate::journal::OPERATIONAL_SOURCE,
        url: text(source, "url"),
        queued: number(events, "queued"),
        delivered: number(events, "delivered"),
        stale: number(events, "stale"),
        failed: number(events, "failed"),
        total: number(events, "total"),
        last_received: short_time(&text(source, "last_received_at")),
    }
}

/// `GET /sources`.
pub async fn page(ctx: &Ctx<'_>) -> Response<Body> {
    let answer = api::get(ctx.admin, "/v1/sources").await;
    if !answer.ok() {
        return ctx.failed("Sources", "sources", &answer);
    }
    let page = SourcesPage {
        chrome: ctx.chrome("Sources", "sources"),
        rows: answer.body["sources"]
            .as_array()
            .map(|all| all.iter().map(row).collect())
            .unwrap_or_default(),
    };
    html(StatusCode::OK, &page)
}
