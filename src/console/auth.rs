//! Signing in with the admin token, and out. The token is compared in constant time (as
//! digests, so that not even its length shows), a wrong one costs a moment, and a
//! successful sign-in gets a new session rather than promoting the old one.

use std::time::Duration;

use askama::Template;
use http::{Method, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::form::{local_path, Form};
use super::page::{html, redirect, Chrome, ErrorPage};
use super::session::{self, Visit};
use super::set_cookie;
use crate::admin::Admin;
use crate::answer::Body;
use crate::verify::mac::same_token;

/// How long a wrong token waits for its answer: guessing stays slow.
const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(300);

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
    next: String,
    error: Option<String>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn expired_form(csrf: String) -> Response<Body> {
    let page = ErrorPage {
        chrome: Chrome::new("Form expired", "", csrf),
        message: "The sign-in form was out of date. Reload the page and sign in again.".into(),
    };
    html(StatusCode::FORBIDDEN, &page)
}

/// `GET /login` shows the form; `POST /login` checks the token.
pub async fn login(
    admin: &Admin,
    method: &Method,
    query: &str,
    found: Option<Visit>,
    form: Form,
) -> Response<Body> {
    let console = &admin.console;
    let Some(token) = &admin.token else {
        // No admin token: nothing to sign in with, and every page is open.
        return redirect("/");
    };
    let asked_next = form_urlencoded::parse(query.as_bytes())
        .find(|(n, _)| n == "next")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| form.get("next").to_string());
    let next = local_path(&asked_next).to_string();
    match *method {
        Method::GET | Method::HEAD => {
            if found.as_ref().is_some_and(|v| v.signed_in) {
                return redirect(&next);
            }
            let (visit, cookie) = match found {
                Some(visit) => (visit, None),
                None => {
                    let (cookie, visit) = console.sessions.start(false);
                    (visit, Some(cookie))
                }
            };
            let page = LoginPage {
                chrome: Chrome::new("Sign in", "", visit.csrf.clone()),
                next,
                error: None,
            };
            let mut response = html(StatusCode::OK, &page);
            if let Some(cookie) = cookie {
                set_cookie(
                    &mut response,
                    &session::cookie(&console.cookie_name, &cookie, console.secure),
                );
            }
            response
        }
        Method::POST => {
            let Some(visit) = found.filter(|v| v.csrf_matches(form.get("csrf"))) else {
                return expired_form(String::new());
            };
            if same_token(
                &digest(form.get("token").as_bytes()),
                &digest(token.expose()),
            ) {
                console.sessions.end(&visit);
                let (cookie, _) = console.sessions.start(true);
                tracing::info!("console sign-in");
                let mut response = redirect(&next);
                set_cookie(
                    &mut response,
                    &session::cookie(&console.cookie_name, &cookie, console.secure),
                );
                response
            } else {
                tokio::time::sleep(WRONG_TOKEN_DELAY).await;
                tracing::warn!("console sign-in refused: wrong admin token");
                let page = LoginPage {
                    chrome: Chrome::new("Sign in", "", visit.csrf.clone()),
                    next,
                    error: Some("That is not the admin token.".into()),
                };
                html(StatusCode::UNAUTHORIZED, &page)
            }
        }
        _ => super::page::plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"),
    }
}

/// `POST /logout`: ends the session and forgets the cookie.
pub fn logout(admin: &Admin, found: Option<Visit>, form: &Form) -> Response<Body> {
    let console = &admin.console;
    if let Some(visit) = found {
        if !visit.csrf_matches(form.get("csrf")) {
            return expired_form(visit.csrf);
        }
        console.sessions.end(&visit);
        tracing::info!("console sign-out");
    }
    let mut response = redirect(if admin.token.is_some() { "/login" } else { "/" });
    set_cookie(
        &mut response,
        &session::removal(&console.cookie_name, console.secure),
    );
    response
}
