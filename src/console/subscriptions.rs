//! The Subscriptions page (table, "Create subscription" form, edit, the active toggle,
//! delete, "Send test event") and a subscription's delivery log ("View logs") with a
//! Retry button on each failed delivery. Every action is one call of the subscriptions
//! API (SPEC §9); a 400 names its field in backticks, and the message is shown next to
//! that field.

use askama::Template;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::api::{self, number, short_time, text, Answer};
use super::events::last_outcome;
use super::form::local_path;
use super::page::{html, Chrome, Message};
use super::session::Flash;
use super::Ctx;
use crate::answer::Body;

/// Deliveries on one page of a log.
const LOG_PAGE: usize = 50;
const MODES: [&str; 4] = ["notify", "finish", "callback", "pull"];

struct SubRow {
    id: String,
    name: String,
    url: String,
    events: String,
    active: bool,
    mode: String,
    from_config: bool,
    last_success: String,
    last_failure: String,
    disabled_reason: String,
    pending: u64,
    failed: u64,
}

fn sub_row(sub: &Value) -> SubRow {
    SubRow {
        id: text(sub, "id"),
        name: text(sub, "name"),
        url: text(sub, "url"),
        events: events_text(sub),
        active: sub["active"].as_bool().unwrap_or(false),
        mode: text(sub, "mode"),
        from_config: sub["managed"] == "config",
        last_success: short_time(&text(sub, "last_success_at")),
        last_failure: short_time(&text(sub, "last_failure_at")),
        disabled_reason: text(sub, "disabled_reason"),
        pending: number(sub, "pending"),
        failed: number(sub, "failed"),
    }
}

fn events_text(sub: &Value) -> String {
    sub["events"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// What the create and edit forms hold.
#[derive(Default)]
struct SubForm {
    name: String,
    url: String,
    events: String,
    active: bool,
    mode: String,
}

/// Messages beside the fields of a form, and one for the form as a whole.
#[derive(Default)]
struct FieldErrors {
    name: Option<Message>,
    url: Option<Message>,
    events: Option<Message>,
    mode: Option<Message>,
    form: Option<Message>,
}

impl FieldErrors {
    /// Puts the API's message beside the field it names: the first word in backticks
    /// (`` `url` … ``), a taken name (409), or a refused target (422).
    fn from_answer(answer: &Answer) -> FieldErrors {
        let message = answer.message();
        let named = message
            .split('`')
            .nth(1)
            .filter(|_| answer.status == StatusCode::BAD_REQUEST);
        let field = match named {
            Some(field) => field,
            None if answer.status == StatusCode::CONFLICT && message.starts_with("the name") => {
                "name"
            }
            None if answer.status == StatusCode::UNPROCESSABLE_ENTITY => "url",
            None => "",
        };
        let mut errors = FieldErrors::default();
        let message = Some(Message::new(&message));
        match field {
            "name" => errors.name = message,
            "url" => errors.url = message,
            "events" => errors.events = message,
            "mode" => errors.mode = message,
            _ => errors.form = message,
        }
        errors
    }
}

impl SubForm {
    fn from_ctx(ctx: &Ctx<'_>) -> SubForm {
        SubForm {
            name: ctx.form.get("name").trim().to_string(),
            url: ctx.form.get("url").trim().to_string(),
            events: ctx.form.get("events").to_string(),
            active: ctx.form.has("active"),
            mode: ctx.form.get("mode").to_string(),
        }
    }

    fn from_sub(sub: &Value) -> SubForm {
        SubForm {
            name: text(sub, "name"),
            url: text(sub, "url"),
            events: events_text(sub),
            active: sub["active"].as_bool().unwrap_or(false),
            mode: text(sub, "mode"),
        }
    }

    /// The API's body: the patterns split at commas and white space; a pull
    /// subscription's empty URL left out (create) or cleared (edit).
    fn body(&self, creating: bool) -> Value {
        let events: Vec<&str> = self
            .events
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        let mut body = json!({
            "name": self.name,
            "events": events,
            "active": self.active,
        });
        if !self.mode.is_empty() {
            body["mode"] = json!(self.mode);
        }
        if !self.url.is_empty() {
            body["url"] = json!(self.url);
        } else if !creating && self.mode == "pull" {
            body["url"] = Value::Null;
        }
        body
    }
}

#[derive(Template)]
#[template(path = "subscriptions.html")]
struct SubscriptionsPage {
    chrome: Chrome,
    rows: Vec<SubRow>,
    form: SubForm,
    errors: FieldErrors,
    modes: [&'static str; 4],
}

#[derive(Template)]
#[template(path = "edit.html")]
struct EditPage {
    chrome: Chrome,
    id: String,
    from_config: bool,
    form: SubForm,
    errors: FieldErrors,
    modes: [&'static str; 4],
}

async fn listing(
    ctx: &Ctx<'_>,
    form: SubForm,
    errors: FieldErrors,
    status: StatusCode,
) -> Response<Body> {
    let answer = api::get(ctx.admin, "/v1/subscriptions").await;
    if !answer.ok() {
        return ctx.failed("Subscriptions", "subscriptions", &answer);
    }
    let page = SubscriptionsPage {
        chrome: ctx.chrome("Subscriptions", "subscriptions"),
        rows: answer.body["subscriptions"]
            .as_array()
            .map(|all| all.iter().map(sub_row).collect())
            .unwrap_or_default(),
        form,
        errors,
        modes: MODES,
    };
    html(status, &page)
}

/// `GET /subscriptions`.
pub async fn list(ctx: &Ctx<'_>) -> Response<Body> {
    let blank = SubForm {
        events: "*:*".into(),
        active: true,
        mode: "notify".into(),
        ..SubForm::default()
    };
    listing(ctx, blank, FieldErrors::default(), StatusCode::OK).await
}

/// `POST /subscriptions`: the create form. A refusal shows the form again, as it was
/// filled in, with the API's message beside its field.
pub async fn create(ctx: &Ctx<'_>) -> Response<Body> {
    let form = SubForm::from_ctx(ctx);
    let answer = api::call(
        ctx.admin,
        Method::POST,
        "/v1/subscriptions",
        Some(form.body(true)),
    )
    .await;
    if !answer.ok() {
        let errors = FieldErrors::from_answer(&answer);
        return listing(ctx, form, errors, answer.status).await;
    }
    let created = &answer.body;
    let flash = Flash::ok(format!(
        "Subscription {} ({}) was created. Its signing secret is shown only now:",
        text(created, "name"),
        text(created, "id")
    ))
    .with_code(text(created, "secret"));
    ctx.done("/subscriptions", flash)
}

/// `GET /subscriptions/{id}/edit`.
pub async fn edit(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let answer = api::get(ctx.admin, &format!("/v1/subscriptions/{id}")).await;
    if !answer.ok() {
        return ctx.failed("Subscription", "subscriptions", &answer);
    }
    let sub = &answer.body;
    let page = EditPage {
        chrome: ctx.chrome(format!("Edit {}", text(sub, "name")), "subscriptions"),
        id: text(sub, "id"),
        from_config: sub["managed"] == "config",
        form: SubForm::from_sub(sub),
        errors: FieldErrors::default(),
        modes: MODES,
    };
    html(StatusCode::OK, &page)
}

/// `POST /subscriptions/{id}/edit`.
pub async fn change(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let form = SubForm::from_ctx(ctx);
    let answer = api::call(
        ctx.admin,
        Method::PATCH,
        &format!("/v1/subscriptions/{id}"),
        Some(form.body(false)),
    )
    .await;
    if answer.ok() {
        return ctx.done(
            "/subscriptions",
            Flash::ok(format!(
                "Subscription {} was saved.",
                text(&answer.body, "name")
            )),
        );
    }
    if answer.status == StatusCode::NOT_FOUND {
        return ctx.failed("Subscription", "subscriptions", &answer);
    }
    let page = EditPage {
        chrome: ctx.chrome(format!("Edit {}", form.name), "subscriptions"),
        id: id.to_string(),
        from_config: answer.status == StatusCode::CONFLICT
            && !answer.message().starts_with("the name"),
        errors: FieldErrors::from_answer(&answer),
        form,
        modes: MODES,
    };
    html(answer.status, &page)
}

/// `POST /subscriptions/{id}/active`: the toggle; the form says which way.
pub async fn set_active(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let active = ctx.form.get("active") == "true";
    let answer = api::call(
        ctx.admin,
        Method::PATCH,
        &format!("/v1/subscriptions/{id}"),
        Some(json!({ "active": active })),
    )
    .await;
    let flash = if answer.ok() {
        Flash::ok(format!(
            "Subscription {} is now {}.",
            text(&answer.body, "name"),
            if active { "active" } else { "inactive" }
        ))
    } else {
        Flash::error(answer.message())
    };
    ctx.done("/subscriptions", flash)
}

/// `POST /subscriptions/{id}/delete`.
pub async fn delete(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let answer = api::call(
        ctx.admin,
        Method::DELETE,
        &format!("/v1/subscriptions/{id}"),
        None,
    )
    .await;
    let flash = if answer.ok() {
        Flash::ok(format!("Subscription {id} was deleted."))
    } else {
        Flash::error(answer.message())
    };
    ctx.done("/subscriptions", flash)
}

/// `POST /subscriptions/{id}/test`: "Send test event", and what the endpoint answered.
pub async fn test(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let answer = api::call(
        ctx.admin,
        Method::POST,
        &format!("/v1/subscriptions/{id}/test"),
        None,
    )
    .await;
    if !answer.ok() {
        return ctx.done("/subscriptions", Flash::error(answer.message()));
    }
    let sent = &answer.body;
    let took = number(sent, "duration_ms");
    let flash = match sent["status_code"].as_u64() {
        Some(code) => {
            let text =
                format!("Test event sent to {id}: the endpoint answered {code} in {took} ms.");
            let flash = if (200..300).contains(&code) {
                Flash::ok(text)
            } else {
                Flash::error(text)
            };
            match sent["response_body"].as_str() {
                Some(body) if !body.is_empty() => flash.with_code(body.to_string()),
                _ => flash,
            }
        }
        None => Flash::error(format!(
            "Test event to {id} failed after {took} ms: {}",
            text(sent, "error")
        )),
    };
    ctx.done("/subscriptions", flash)
}

struct DeliveryRow {
    id: String,
    seq: u64,
    status: String,
    attempts: u64,
    at: String,
    code: String,
    duration_ms: String,
    response: String,
    next_attempt: String,
}

fn delivery_row(d: &Value) -> DeliveryRow {
    let last = d["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or(Value::Null);
    DeliveryRow {
        id: text(d, "id"),
        seq: number(d, "seq"),
        status: text(d, "status"),
        attempts: number(d, "attempt_count"),
        at: short_time(&text(&last, "at")),
        code: last_outcome(d),
        duration_ms: last["duration_ms"]
            .as_u64()
            .map(|ms| ms.to_string())
            .unwrap_or_default(),
        response: text(&last, "response_body"),
        next_attempt: short_time(&text(d, "next_attempt_at")),
    }
}

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    chrome: Chrome,
    sub: SubRow,
    status: String,
    statuses: [&'static str; 6],
    rows: Vec<DeliveryRow>,
    /// This page's own path and query, for the Retry buttons to come back to.
    back: String,
    next: Option<String>,
}

/// `GET /subscriptions/{id}/logs?status=&after=`: the delivery log.
pub async fn logs(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let sub = api::get(ctx.admin, &format!("/v1/subscriptions/{id}")).await;
    if !sub.ok() {
        return ctx.failed("Delivery log", "subscriptions", &sub);
    }
    let (status, after) = (ctx.param("status"), ctx.param("after"));
    let limit = LOG_PAGE.to_string();
    let asked = api::query(&[("status", &status), ("after", &after), ("limit", &limit)]);
    let answer = api::get(
        ctx.admin,
        &format!("/v1/subscriptions/{id}/deliveries?{asked}"),
    )
    .await;
    if !answer.ok() {
        return ctx.failed("Delivery log", "subscriptions", &answer);
    }
    let rows: Vec<DeliveryRow> = answer.body["deliveries"]
        .as_array()
        .map(|all| all.iter().map(delivery_row).collect())
        .unwrap_or_default();
    let next = (rows.len() >= LOG_PAGE).then(|| {
        let cursor = number(&answer.body, "next_after").to_string();
        format!(
            "/subscriptions/{id}/logs?{}",
            api::query(&[("status", &status), ("after", &cursor)])
        )
    });
    let back = match ctx.query.is_empty() {
        true => format!("/subscriptions/{id}/logs"),
        false => format!("/subscriptions/{id}/logs?{}", ctx.query),
    };
    let sub = sub_row(&sub.body);
    let page = LogsPage {
        chrome: ctx.chrome(format!("Delivery log of {}", sub.name), "subscriptions"),
        sub,
        status,
        statuses: [
            "pending",
            "delivered",
            "failed",
            "awaiting_callback",
            "finished",
            "timed_out",
        ],
        rows,
        back,
        next,
    };
    html(StatusCode::OK, &page)
}

/// `POST /deliveries/{id}/retry`: back to the log it was pressed on.
pub async fn retry(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let answer = api::call(
        ctx.admin,
        Method::POST,
        &format!("/v1/deliveries/{id}/retry"),
        None,
    )
    .await;
    let flash = if answer.ok() {
        Flash::ok(format!("Delivery {id} will be attempted again now."))
    } else {
        Flash::error(answer.message())
    };
    ctx.done(local_path(ctx.form.get("back")), flash)
}
