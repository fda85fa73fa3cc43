//! The console's security over plain HTTP (no browser needed): the headers every page
//! carries, the session cookie's flags, sign-in and sign-out, session expiry (with a
//! clock the test moves), CSRF tokens and the cross-origin guard on forms, the open
//! console without an admin token, and the API additions the console reads
//! (`before=`, a source's `url`, the broker's state in `/readyz`).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use hookgate::cli::client::{self, Reply};
use hookgate::config::Config;
use hookgate::gateway::Clock;
use hookgate::Running;

const TOKEN: &str = "http-test-token";

/// A clock the test moves forward.
struct Hands(AtomicU64);

impl Clock for Hands {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

async fn start(dir: &Path, token: bool, clock: Arc<Hands>) -> Running {
    let mut text = common::config_text(dir, "", common::GITHUB_SOURCE);
    if token {
        text = text.replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\""),
        );
    }
    let config = Config::parse(&text).unwrap();
    hookgate::start_with_clock(&config, clock).await.unwrap()
}

fn now_clock() -> Arc<Hands> {
    Arc::new(Hands(AtomicU64::new(hookgate::unix_ms(SystemTime::now()))))
}

/// A browser's view of the admin listener: its cookie jar of one cookie.
struct Visitor {
    base: String,
    cookie: Option<String>,
}

impl Visitor {
    fn new(running: &Running) -> Visitor {
        Visitor {
            base: format!("http://{}", running.admin_addr),
            cookie: None,
        }
    }

    fn keep_cookie(&mut self, reply: &Reply) {
        if let Some(set) = reply.headers.get(http::header::SET_COOKIE) {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&str>,
        origin: Option<&str>,
    ) -> Reply {
        let mut headers = HeaderMap::new();
        if let Some(cookie) = &self.cookie {
            headers.insert(http::header::COOKIE, cookie.parse().unwrap());
        }
        if form.is_some() {
            headers.insert(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded".parse().unwrap(),
            );
        }
        if let Some(origin) = origin {
            headers.insert(http::header::ORIGIN, origin.parse().unwrap());
        }
        let body = Bytes::from(form.unwrap_or("").to_string());
        let reply = client::request(method, &format!("{}{path}", self.base), headers, body)
            .await
            .unwrap();
        self.keep_cookie(&reply);
        reply
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.request(Method::GET, path, None, None).await
    }

    async fn post(&mut self, path: &str, form: &str) -> Reply {
        let origin = self.base.clone();
        self.request(Method::POST, path, Some(form), Some(&origin))
            .await
    }

    async fn sign_in(&mut self) {
        let page = self.get("/login").await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = csrf_of(&page);
        let signed = self
            .post(
                "/login",
                &format!("csrf={csrf}&token={TOKEN}&next=%2Fsources"),
            )
            .await;
        assert_eq!(signed.status, StatusCode::SEE_OTHER);
        assert_eq!(location(&signed), "/sources");
    }
}

fn body(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

fn location(reply: &Reply) -> String {
    reply
        .headers
        .get(http::header::LOCATION)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn header(reply: &Reply, name: &str) -> String {
    reply
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The CSRF token in a page's forms.
fn csrf_of(reply: &Reply) -> String {
    let text = body(reply);
    let at = text
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    text[at..at + 64].to_string()
}

#[tokio::test]
async fn pages_carry_a_strict_policy_and_the_cookie_is_http_only_and_strict() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), true, now_clock()).await;
    let mut visitor = Visitor::new(&running);
    let login = visitor.get("/login").await;
    assert_eq!(login.status, StatusCode::OK);
    let csp = header(&login, "content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&login, "x-frame-options"), "DENY");
    assert_eq!(header(&login, "x-content-type-options"), "nosniff");
    assert_eq!(header(&login, "cache-control"), "no-store");
    let cookie = header(&login, "set-cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "no TLS here: {cookie}");
    // No inline script or style in the page itself.
    let page = body(&login);
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );

    for (asset, kind) in [
        ("console.css", "text/css"),
        ("console.js", "text/javascript"),
    ] {
        let reply = visitor.get(&format!("/assets/{asset}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{asset}");
        assert!(header(&reply, "content-type").starts_with(kind));
        assert!(header(&reply, "content-security-policy").contains("default-src 'none'"));
    }
    assert_eq!(
        visitor.get("/assets/other.js").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        visitor.get("/nothing/here").await.status,
        StatusCode::NOT_FOUND
    );
    running.stop().await;
}

#[tokio::test]
async fn sign_in_needs_the_token_and_sign_out_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), true, now_clock()).await;
    let mut visitor = Visitor::new(&running);
    let asked = visitor.get("/subscriptions").await;
    assert_eq!(asked.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&asked), "/login?next=%2Fsubscriptions");

    let page = visitor.get("/login").await;
    let csrf = csrf_of(&page);
    let wrong = visitor
        .post("/login", &format!("csrf={csrf}&token=guess"))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(body(&wrong).contains("not the admin token"));
    // A sign-in form without its token is refused even with the right admin token.
    let forged = visitor
        .post("/login", &format!("csrf=x&token={TOKEN}"))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // Somewhere else's `next` is not followed.
    let signed = visitor
        .post(
            "/login",
            &format!("csrf={csrf}&token={TOKEN}&next=%2F%2Fevil.example%2F"),
        )
        .await;
    assert_eq!(location(&signed), "/");
    let before_sign_in = visitor.cookie.clone();
    assert_eq!(visitor.get("/sources").await.status, StatusCode::OK);

    let csrf = csrf_of(&visitor.get("/sources").await);
    let out = visitor.post("/logout", &format!("csrf={csrf}")).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&out), "/login");
    assert!(header(&out, "set-cookie").contains("Max-Age=0"));
    // The old cookie is worth nothing now.
    visitor.cookie = before_sign_in;
    assert_eq!(visitor.get("/sources").await.status, StatusCode::SEE_OTHER);
    running.stop().await;
}

#[tokio::test]
async fn a_session_expires_after_twelve_hours() {
    let dir = tempfile::tempdir().unwrap();
    let clock = now_clock();
    let running = start(dir.path(), true, clock.clone()).await;
    let mut visitor = Visitor::new(&running);
    visitor.sign_in().await;
    clock.0.fetch_add(11 * 3600 * 1000, Ordering::SeqCst);
    assert_eq!(visitor.get("/").await.status, StatusCode::OK);
    clock.0.fetch_add(3600 * 1000, Ordering::SeqCst);
    let expired = visitor.get("/").await;
    assert_eq!(expired.status, StatusCode::SEE_OTHER);
    assert!(location(&expired).starts_with("/login"));
    running.stop().await;
}

#[tokio::test]
async fn forms_need_the_session_token_and_the_same_origin() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), true, now_clock()).await;
    let mut visitor = Visitor::new(&running);
    visitor.sign_in().await;
    let csrf = csrf_of(&visitor.get("/subscriptions").await);
    let form = "name=x&url=http%3A%2F%2F127.0.0.1%3A9%2F&events=*%3A*&mode=notify&active=on";

    let missing = visitor.post("/subscriptions", form).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    let wrong = visitor
        .post("/subscriptions", &format!("{form}&csrf={}", "0".repeat(64)))
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    // Another site's form: refused by the admin listener's guard before the console.
    let cross = visitor
        .request(
            Method::POST,
            "/subscriptions",
            Some(&format!("{form}&csrf={csrf}")),
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(body(&cross).contains("cross_origin"));
    let listed = client::get(&format!("http://{}/v1/subscriptions", running.admin_addr)).await;
    assert_eq!(listed.unwrap().status, StatusCode::UNAUTHORIZED);

    // The same form from the console's own page goes through (422 here: the target is
    // loopback and `allow_private` is empty; the form comes back with the message).
    let sent = visitor
        .post("/subscriptions", &format!("{form}&csrf={csrf}"))
        .await;
    assert_eq!(sent.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body(&sent).contains("id=\"url-error\""), "{}", body(&sent));
    running.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_the_console_is_open_but_forms_still_need_their_token() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), false, now_clock()).await;
    let mut visitor = Visitor::new(&running);
    let login = visitor.get("/login").await;
    assert_eq!(
        (login.status, location(&login)),
        (StatusCode::SEE_OTHER, "/".into())
    );
    let page = visitor.get("/subscriptions").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(visitor.cookie.is_some(), "a session for the CSRF token");
    assert!(!body(&page).contains("Log out"));
    let csrf = csrf_of(&page);
    let form = "name=puller&url=&events=github%3A*&mode=pull&active=on";
    assert_eq!(
        visitor.post("/subscriptions", form).await.status,
        StatusCode::FORBIDDEN
    );
    let made = visitor
        .post("/subscriptions", &format!("{form}&csrf={csrf}"))
        .await;
    assert_eq!(made.status, StatusCode::SEE_OTHER);
    let listed = body(&visitor.get("/subscriptions").await);
    assert!(
        listed.contains("puller") && listed.contains("whsec_"),
        "{listed}"
    );
    assert!(
        !body(&visitor.get("/subscriptions").await).contains("whsec_"),
        "shown once"
    );

    // Edit: the form holds the subscription; a refusal comes back beside its field.
    let edit = visitor.get("/subscriptions/sub_1/edit").await;
    assert_eq!(edit.status, StatusCode::OK);
    assert!(
        body(&edit).contains("value=\"github:*\""),
        "{}",
        body(&edit)
    );
    let bad = visitor
        .post(
            "/subscriptions/sub_1/edit",
            &format!("csrf={csrf}&name=puller&url=&events=nocolon&mode=pull&active=on"),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(body(&bad).contains("id=\"events-error\""), "{}", body(&bad));
    let saved = visitor
        .post(
            "/subscriptions/sub_1/edit",
            &format!("csrf={csrf}&name=puller&url=&events=github%3Apush&mode=pull"),
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER);
    let shown = common::admin_get(&running, "/v1/subscriptions/sub_1")
        .await
        .json();
    assert_eq!(
        (shown["events"][0].as_str(), shown["active"].as_bool()),
        (Some("github:push"), Some(false))
    );

    // Delete.
    let gone = visitor
        .post("/subscriptions/sub_1/delete", &format!("csrf={csrf}"))
        .await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER);
    assert!(body(&visitor.get("/subscriptions").await).contains("was deleted"));
    assert_eq!(
        common::admin_get(&running, "/v1/subscriptions/sub_1")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    running.stop().await;
}

#[tokio::test]
async fn the_api_pages_back_names_source_urls_and_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), false, now_clock()).await;
    for n in 0..5 {
        let body = common::delivery_body(format!("d{n}"));
        let reply = common::post(
            running.ingest_addr,
            "/hooks/github",
            common::github(&format!("d{n}"), "push", "application/json", &body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let page = |query: &'static str| {
        let running = &running;
        async move {
            let answer = common::admin_get(running, &format!("/v1/events?{query}"))
                .await
                .json();
            let seqs: Vec<u64> = answer["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_u64().unwrap())
                .collect();
            (
                seqs,
                answer["next_before"].as_u64(),
                answer["next_after"].as_u64(),
            )
        }
    };
    assert_eq!(
        page("before=latest&limit=2").await,
        (vec![4, 5], Some(4), Some(5))
    );
    assert_eq!(
        page("before=4&limit=2").await,
        (vec![2, 3], Some(2), Some(3))
    );
    assert_eq!(page("before=2&limit=2").await, (vec![1], Some(1), Some(1)));
    assert_eq!(page("before=1&limit=2").await.0, Vec::<u64>::new());
    assert_eq!(page("after=3").await, (vec![4, 5], None, Some(5)));

    let sources = common::admin_get(&running, "/v1/sources").await.json();
    assert_eq!(
        sources["sources"][0]["url"],
        format!("http://{}/hooks/github", running.ingest_addr)
    );
    let ready = common::admin_get(&running, "/readyz").await.json();
    assert_eq!(
        (ready["status"].as_str(), ready["broker"].as_str()),
        (Some("ready"), Some("none"))
    );
    running.stop().await;
}

/// The status line and headers of an answer whose body does not end (a live stream).
async fn head_of(addr: std::net::SocketAddr, path: &str, cookie: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cookie = cookie
        .map(|c| format!("cookie: {c}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{cookie}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert_eq!(read, 1, "the connection closed before the headers ended");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

#[tokio::test]
async fn every_page_is_hardened_shows_payloads_as_text_and_live_needs_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), true, now_clock()).await;
    let hostile = r#"{"note":"<script>window.pwned = 1</script>"}"#;
    let reply = common::post(
        running.ingest_addr,
        "/hooks/github",
        common::github(
            "hostile-1",
            "<b>bold</b>",
            "application/json",
            hostile.as_bytes(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", body(&reply));
    let mut bearer = HeaderMap::new();
    bearer.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let created = client::request(
        Method::POST,
        &format!("http://{}/v1/subscriptions", running.admin_addr),
        bearer,
        Bytes::from(r#"{"name":"workers","events":["*:*"]}"#),
    )
    .await
    .unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", body(&created));
    let sub = created.json()["id"].as_str().unwrap().to_string();

    // The live stream: nobody's without a session, nor a session not signed in.
    let mut visitor = Visitor::new(&running);
    let head = head_of(running.admin_addr, "/live", None).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    visitor.get("/login").await;
    let unsigned = visitor.cookie.clone().expect("a session cookie");
    let head = head_of(running.admin_addr, "/live", Some(&unsigned)).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    visitor.sign_in().await;
    let signed = visitor.cookie.clone().unwrap();
    let head = head_of(running.admin_addr, "/live", Some(&signed)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");

    // Every page: the policy, no frames, no inline script or style.
    for path in [
        "/".to_string(),
        "/events/1".to_string(),
        "/sources".to_string(),
        "/subscriptions".to_string(),
        format!("/subscriptions/{sub}/edit"),
        format!("/subscriptions/{sub}/logs"),
        "/health".to_string(),
    ] {
        let page = visitor.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", body(&page));
        let csp = header(&page, "content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert_eq!(header(&page, "x-frame-options"), "DENY", "{path}");
        let html = body(&page);
        assert!(
            !html.contains("style=") && !html.contains("<style"),
            "{path} has inline style"
        );
        for (at, _) in html.match_indices("<script") {
            assert!(
                html[at..].starts_with("<script src=\"/assets/console.js"),
                "{path} has an inline script: {}",
                &html[at..(at + 60).min(html.len())]
            );
        }
    }

    // The payload and the type are text, escaped, on the pages the server renders.
    for path in ["/events/1", "/"] {
        let html = body(&visitor.get(path).await);
        let at = html.find("bold").unwrap_or(0);
        assert!(
            html.contains("&#60;b&#62;bold&#60;/b&#62;"),
            "{path}: the type is not escaped: {}",
            &html[at.saturating_sub(40)..(at + 40).min(html.len())]
        );
        assert!(
            !html.contains("<b>bold</b>"),
            "{path}: the type became markup"
        );
    }
    let event = body(&visitor.get("/events/1").await);
    assert!(
        !event.contains("<script>window.pwned"),
        "the payload became markup"
    );
    assert!(
        event.contains("&#60;script&#62;window.pwned = 1&#60;/script&#62;"),
        "{event}"
    );
    running.stop().await;
}

/// The text between `<pre class="payload" id="payload" tabindex="0">` and `</pre>`.
fn payload_of(html: &str) -> &str {
    let start = html
        .find(r#"id="payload" tabindex="0">"#)
        .map(|at| at + 26)
        .expect("a payload");
    let end = start + html[start..].find("</pre>").expect("the payload's end");
    &html[start..end]
}

/// Ingest takes any JSON text, also what serde_json will not parse into a value (a lone
/// surrogate escape, nesting past 128 levels); the event page still shows such an event,
/// with its payload as it was accepted, and indents one it can read.
#[tokio::test]
async fn the_event_page_shows_payloads_a_value_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), true, now_clock()).await;
    let surrogate = r#"{"text": "\ud800 alone"}"#;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let plain = r#"{"a":[1,2]}"#;
    for (id, payload) in [
        ("odd-surrogate", surrogate),
        ("odd-deep", deep.as_str()),
        ("plain", plain),
    ] {
        let reply = common::post(
            running.ingest_addr,
            "/hooks/github",
            common::github(id, "push", "application/json", payload.as_bytes()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", body(&reply));
    }
    let mut visitor = Visitor::new(&running);
    visitor.sign_in().await;

    let page = visitor.get("/events/1").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = body(&page);
    assert!(html.contains("<code>odd-surrogate</code>"), "{html}");
    assert_eq!(
        payload_of(&html),
        r#"{&#34;text&#34;: &#34;\ud800 alone&#34;}"#,
        "the payload is not shown as it was accepted"
    );
    let html = body(&visitor.get("/events/2").await);
    assert!(html.contains("<code>odd-deep</code>"), "{html}");
    assert_eq!(payload_of(&html), deep);
    let html = body(&visitor.get("/events/3").await);
    assert!(html.contains("<code>plain</code>"), "{html}");
    assert_eq!(
        payload_of(&html),
        "{\n  &#34;a&#34;: [\n    1,\n    2\n  ]\n}",
        "a payload a value holds is indented"
    );
    running.stop().await;
}
