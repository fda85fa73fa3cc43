//! The web console (SPEC §12), served by the admin listener at `/`: server-rendered
//! pages over the admin API, one stylesheet and one script of its own, no third-party
//! front-end code. It is a client of the API the CLI uses ([`api`] calls the same
//! router in-process), so it holds no logic of its own: it renders answers, and turns
//! forms into calls.
//!
//! - Sign-in ([`auth`]) is with the admin token into an in-memory session ([`session`]):
//!   an HttpOnly, SameSite=Strict cookie (`Secure` under `[admin.tls]`), 12 hours, sign
//!   out ends it. Without an admin token the API is open, and so is the console: a
//!   visitor gets a session (for the CSRF token) without signing in.
//! - Every form carries the session's CSRF token; a post without it is refused. The
//!   admin listener's guard refuses cross-origin posts before that.
//! - Every answer carries a Content-Security-Policy without inline script or style,
//!   `X-Frame-Options: DENY` and `nosniff` ([`page::harden`]); templates escape all
//!   they show, so a payload holding `<script>` shows as text.
//! - Pages: [`events`] (with live rows from the stream), [`sources`],
//!   [`subscriptions`] (with the delivery log), [`health`]. They work without
//!   JavaScript, except for live rows and copy buttons.

pub mod api;
mod auth;
mod events;
pub mod form;
mod health;
pub mod page;
pub mod session;
mod sources;
mod subscriptions;

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use http_body_util::Either;

use crate::admin::stream::AdminBody;
use crate::admin::Admin;
use crate::answer::Body;
use crate::gateway::Clock;
use crate::listen::CutOff;
use form::Form;
use page::{html, redirect, Chrome, ErrorPage};
use session::{Flash, Sessions, Visit};

pub struct Settings {
    /// Whether the admin listener speaks TLS: cookies are then `Secure`.
    pub secure: bool,
    /// The admin listener's port: it names the cookie, so that two gateways on one host
    /// (cookies ignore ports) do not sign each other's users out.
    pub port: u16,
    pub clock: Arc<dyn Clock>,
}

pub struct Console {
    sessions: Sessions,
    cookie_name: String,
    secure: bool,
    samples: health::Samples,
}

impl Console {
    pub fn new(settings: Settings) -> Console {
        Console {
            sessions: Sessions::new(settings.clock),
            cookie_name: format!("hookgate_session_{}", settings.port),
            secure: settings.secure,
            samples: health::Samples::default(),
        }
    }
}

/// The Events page's live rows: the admin API's stream (`/v1/stream`) for a signed-in
/// session, since a page's script has the session cookie but not the bearer token.
pub const LIVE: &str = "/live";

/// `GET /live?source=&type=&after=`: the stream, for a signed-in session (or anyone
/// when no admin token is set). The admin listener has already applied its guard.
pub fn live<B>(admin: &Arc<Admin>, request: &Request<B>, cut: CutOff) -> Response<AdminBody> {
    let console = &admin.console;
    let visit = session::read_cookie(request.headers(), &console.cookie_name)
        .and_then(|cookie| console.sessions.find(cookie));
    let allowed = admin.token.is_none() || visit.is_some_and(|v| v.signed_in);
    let mut response = if allowed {
        admin.stream_response(
            request.uri().query().unwrap_or(""),
            request.headers().get("last-event-id"),
            cut,
        )
    } else {
        page::plain(StatusCode::UNAUTHORIZED, "sign in to follow new events").map(Either::Left)
    };
    page::harden(response.headers_mut());
    response
}

/// Whether a path is the console's rather than the API's or the probes'.
pub fn serves(path: &str) -> bool {
    !(path.starts_with("/v1/") || matches!(path, "/healthz" | "/readyz" | "/metrics"))
}

/// What one request to a page has to work with.
pub struct Ctx<'a> {
    pub admin: &'a Admin,
    pub visit: Visit,
    /// The request's query string.
    pub query: String,
    /// A post's form (empty for a GET).
    pub form: Form,
}

impl Ctx<'_> {
    /// A page's frame, with the message the previous request left.
    pub fn chrome(&self, title: impl Into<String>, nav: &'static str) -> Chrome {
        let mut chrome = Chrome::new(title, nav, self.visit.csrf.clone());
        chrome.flash = self.admin.console.sessions.take_flash(&self.visit);
        chrome.sign_out = self.admin.token.is_some();
        chrome
    }

    /// Back to `to` after a form, with a message for the page there.
    pub fn done(&self, to: &str, flash: Flash) -> Response<Body> {
        self.admin.console.sessions.flash(&self.visit, flash);
        redirect(to)
    }

    /// A page saying what the API answered, with its status.
    pub fn failed(&self, title: &str, nav: &'static str, answer: &api::Answer) -> Response<Body> {
        let page = ErrorPage {
            chrome: self.chrome(title, nav),
            message: answer.message().into(),
        };
        html(answer.status, &page)
    }

    /// A query parameter, or `""`.
    pub fn param(&self, name: &str) -> String {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    }
}

/// The console's pages, by method and path.
enum Route {
    Events,
    Event(String),
    Replay(String),
    Sources,
    Subscriptions,
    Create,
    Edit(String),
    Change(String),
    Active(String),
    Delete(String),
    Test(String),
    Logs(String),
    Retry(String),
    Health,
}

fn route(method: &Method, path: &str) -> Option<Route> {
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let owned = |s: &str| s.to_string();
    Some(match segments.as_slice() {
        [""] if get => Route::Events,
        ["events", seq] if get => Route::Event(owned(seq)),
        ["events", seq, "replay"] if post => Route::Replay(owned(seq)),
        ["sources"] if get => Route::Sources,
        ["subscriptions"] if get => Route::Subscriptions,
        ["subscriptions"] if post => Route::Create,
        ["subscriptions", id, "edit"] if get => Route::Edit(owned(id)),
        ["subscriptions", id, "edit"] if post => Route::Change(owned(id)),
        ["subscriptions", id, "active"] if post => Route::Active(owned(id)),
        ["subscriptions", id, "delete"] if post => Route::Delete(owned(id)),
        ["subscriptions", id, "test"] if post => Route::Test(owned(id)),
        ["subscriptions", id, "logs"] if get => Route::Logs(owned(id)),
        ["deliveries", id, "retry"] if post => Route::Retry(owned(id)),
        ["health"] if get => Route::Health,
        _ => return None,
    })
}

/// Serves a console request; the admin listener's guard has already let it through.
pub async fn handle<B>(admin: &Arc<Admin>, request: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut response = serve(admin, request).await;
    page::harden(response.headers_mut());
    response
}

async fn serve<B>(admin: &Arc<Admin>, request: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let console = &admin.console;
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("").to_string();
    if let Some(name) = path.strip_prefix("/assets/") {
        if parts.method == Method::GET || parts.method == Method::HEAD {
            if let Some(asset) = page::asset(name) {
                return asset;
            }
        }
        return page::plain(StatusCode::NOT_FOUND, "no such asset");
    }
    let found = session::read_cookie(&parts.headers, &console.cookie_name)
        .and_then(|cookie| console.sessions.find(cookie));
    let form = if parts.method == Method::POST {
        if !form::is_form(&parts.headers) {
            return page::plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "console forms are sent as application/x-www-form-urlencoded",
            );
        }
        match crate::admin::read_body(body, form::MAX_FORM).await {
            Ok(bytes) => Form::parse(&bytes),
            Err(too_large) => return too_large,
        }
    } else {
        Form::default()
    };
    match path {
        "/login" => return auth::login(admin, &parts.method, &query, found, form).await,
        "/logout" if parts.method == Method::POST => return auth::logout(admin, found, &form),
        _ => {}
    }
    let Some(page) = route(&parts.method, path) else {
        let known = route(&Method::GET, path).is_some() || route(&Method::POST, path).is_some();
        return if known {
            page::plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        } else {
            page::plain(StatusCode::NOT_FOUND, "nothing is served at this path")
        };
    };
    // Who is asking: a signed-in session, or, with no admin token, anyone (who gets a
    // session for the CSRF token of their forms).
    let (visit, new_cookie) = match found {
        Some(visit) if visit.signed_in || admin.token.is_none() => (visit, None),
        _ if admin.token.is_none() => {
            let (cookie, visit) = console.sessions.start(true);
            (visit, Some(cookie))
        }
        _ => {
            let back = match parts.uri.path_and_query() {
                Some(pq) if parts.method == Method::GET => pq.as_str(),
                _ => "/",
            };
            let to = format!("/login?{}", api::query(&[("next", back)]));
            return redirect(&to);
        }
    };
    if parts.method == Method::POST && !visit.csrf_matches(form.get("csrf")) {
        let page = ErrorPage {
            chrome: Chrome::new("Form expired", "", visit.csrf.clone()),
            message: "This form's security token is missing or out of date (a form from before a sign-in, or from another site). Go back, reload the page and send it again.".into(),
        };
        return html(StatusCode::FORBIDDEN, &page);
    }
    let ctx = Ctx {
        admin,
        visit,
        query,
        form,
    };
    let mut response = match page {
        Route::Events => events::list(&ctx).await,
        Route::Event(seq) => events::show(&ctx, &seq).await,
        Route::Replay(seq) => events::replay(&ctx, &seq).await,
        Route::Sources => sources::page(&ctx).await,
        Route::Subscriptions => subscriptions::list(&ctx).await,
        Route::Create => subscriptions::create(&ctx).await,
        Route::Edit(id) => subscriptions::edit(&ctx, &id).await,
        Route::Change(id) => subscriptions::change(&ctx, &id).await,
        Route::Active(id) => subscriptions::set_active(&ctx, &id).await,
        Route::Delete(id) => subscriptions::delete(&ctx, &id).await,
        Route::Test(id) => subscriptions::test(&ctx, &id).await,
        Route::Logs(id) => subscriptions::logs(&ctx, &id).await,
        Route::Retry(id) => subscriptions::retry(&ctx, &id).await,
        Route::Health => health::page(&ctx).await,
    };
    if let Some(cookie) = new_cookie {
        set_cookie(
            &mut response,
            &session::cookie(&console.cookie_name, &cookie, console.secure),
        );
    }
    response
}

fn set_cookie(response: &mut Response<Body>, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}
