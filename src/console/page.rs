//! What every console page shares: the frame around it ([`Chrome`]), the answers it
//! becomes (HTML, redirects, error pages) and the headers that keep a browser strict
//! about it, and the two assets.

use std::sync::LazyLock;

use askama::Template;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::session::Flash;
use crate::answer::Body;

/// No script or style but the console's own files; no frames, plugins or foreign form
/// targets. Nothing inline, so an injected `<script>` or `style=` would not run even if
/// escaping failed somewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The assets' URLs carry a hash of their content, so browsers may keep them for good
/// and a new binary's assets are fetched anew.
static CSS_URL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "/assets/console.css?v={:08x}",
        crc32fast::hash(CSS.as_bytes())
    )
});
static JS_URL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "/assets/console.js?v={:08x}",
        crc32fast::hash(JS.as_bytes())
    )
});

/// The frame of a page: its title, where it sits in the navigation, the session's CSRF
/// token for its forms, and a message left by the previous request.
pub struct Chrome {
    pub title: String,
    /// `events`, `sources`, `subscriptions`, `health`, or `""` for no navigation (sign-in).
    pub nav: &'static str,
    pub csrf: String,
    pub flash: Option<Flash>,
    /// Whether a Log out button is shown: only when signing in is needed.
    pub sign_out: bool,
    pub css: &'static str,
    pub js: &'static str,
}

impl Chrome {
    pub fn new(title: impl Into<String>, nav: &'static str, csrf: String) -> Chrome {
        Chrome {
            title: title.into(),
            nav,
            csrf,
            flash: None,
            sign_out: false,
            css: CSS_URL.as_str(),
            js: JS_URL.as_str(),
        }
    }
}

/// A page that says what went wrong, in the frame.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub chrome: Chrome,
    pub message: Message,
}

/// An API's message as the console shows it: what it puts in backticks (field names,
/// values) set as code.
#[derive(Debug, Default)]
pub struct Message {
    /// Each piece, and whether it was in backticks.
    pub parts: Vec<(bool, String)>,
}

impl Message {
    pub fn new(text: &str) -> Message {
        Message {
            parts: text
                .split('`')
                .enumerate()
                .filter(|(_, part)| !part.is_empty())
                .map(|(i, part)| (i % 2 == 1, part.to_string()))
                .collect(),
        }
    }
}

impl From<String> for Message {
    fn from(text: String) -> Message {
        Message::new(&text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Message {
        Message::new(text)
    }
}

fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
}

/// A rendered template as an HTML answer.
pub fn html(status: StatusCode, page: &impl Template) -> Response<Body> {
    match page.render() {
        Ok(text) => {
            let mut response = Response::new(body(text));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "a console page failed to render");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
        }
    }
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(body(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `303 See Other` to a local path: after a form, the browser asks for the page anew,
/// so a reload does not post again.
pub fn redirect(to: &str) -> Response<Body> {
    let mut response = Response::new(body(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    // A path that is not plain ASCII (a decoded `next`) goes home rather than nowhere.
    let location = HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/"));
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The headers every console answer carries.
pub fn harden(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with the latter a browser sends `Origin: null` on
    // a form post, which the admin listener's cross-origin guard refuses.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// `/assets/NAME`: the stylesheet and the script.
pub fn asset(name: &str) -> Option<Response<Body>> {
    let (text, kind) = match name {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(body(text));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backticks_become_code() {
        let m = Message::new("`url` `ftp://x/` is not an http:// URL");
        assert_eq!(
            m.parts,
            vec![
                (true, "url".to_string()),
                (false, " ".to_string()),
                (true, "ftp://x/".to_string()),
                (false, " is not an http:// URL".to_string()),
            ]
        );
        assert_eq!(
            Message::new("plain").parts,
            vec![(false, "plain".to_string())]
        );
    }
}
