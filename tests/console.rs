//! The web console (SPEC §12) in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), against the real `hookgate` binary on loopback, with a
//! local receiver for subscriptions. Each test saves screenshots under
//! `target/console-screenshots/` (the README's come from there).
//!
//! Without Chromium and chromedriver (Debian: `chromium`, `chromium-driver`) these tests
//! say so and pass; under `CI` they fail instead. The browser-free checks of the
//! console's headers, cookies and CSRF are in `tests/console_http.rs`.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use common::free_port;

const TOKEN: &str = "console-test-token";
/// How long a test waits for something to show on a page.
const PATIENCE: Duration = Duration::from_secs(15);

/// One browser at a time: Chromium is heavy, and the machine may be small.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// chromedriver and its Chromium session; chromedriver ends when this is dropped.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// chromedriver and Chromium, or `None` (a skip, said on stderr) when either is missing
/// outside CI.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let driver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| on_path("chromedriver"));
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .or_else(|| on_path("chromium-browser"))
        .or_else(|| on_path("google-chrome"));
    match (driver, chromium) {
        (Some(driver), Some(chromium)) => Some((driver, chromium)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "the console's browser tests need chromium and chromedriver (Debian: apt-get install chromium chromium-driver); .ci/run installs them"
        ),
        _ => {
            // Straight to stderr: the test harness keeps `eprintln!` of a passing test.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipping the console's browser tests: they need chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

async fn browser() -> Option<Browser> {
    let (driver_path, chromium) = tools()?;
    let port = free_port();
    let mut driver = Command::new(&driver_path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > PATIENCE {
            let _ = driver.kill();
            panic!("chromedriver did not listen on {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                // Root in a container has no user namespace for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session through chromedriver");
    Some(Browser {
        client,
        driver,
        _profile: profile,
    })
}

/// Where this run's screenshots go: `target/console-screenshots/`.
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "screenshots are PNG");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// A gateway (the real binary) with the admin token, a GitHub source and loopback
/// subscriptions allowed, retrying a failed delivery once after 100 ms.
fn gateway(dir: &Path) -> (common::Gateway, PathBuf) {
    let config = dir.join("hookgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[journal]
path = "{}"

[outbound]
allow_private = ["127.0.0.0/8"]
retry = ["100ms"]

[[sources]]
name = "github"
scheme = "github"
secrets = ["{}"]
"#,
            dir.join("journal").display(),
            common::GITHUB_SECRET
        ),
    )
    .unwrap();
    (common::spawn(&config), config)
}

/// `hookgate send` of `body` as a GitHub event of `event_type`; answers its seq.
async fn send(config: &Path, ingest: SocketAddr, event_type: &str, body: &str) -> u64 {
    let file = config.with_file_name(format!("body-{}.json", uuid_like()));
    std::fs::write(&file, body).unwrap();
    let url = format!("http://{ingest}/hooks/github");
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args([
            "send",
            "--source",
            "github",
            "--url",
            &url,
            "--event-type",
            event_type,
        ])
        .arg("--body")
        .arg(&file)
        .arg("-c")
        .arg(config)
        .output()
        .expect("hookgate send runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let answer: serde_json::Value = stdout
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON answer in {stdout}"));
    assert_eq!(answer["status"], "accepted", "{answer}");
    answer["seq"].as_u64().unwrap()
}

fn uuid_like() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

/// A receiver on loopback: `/ok` answers 200, `/fail` 500; it counts each path's
/// requests.
struct Receiver {
    addr: SocketAddr,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

async fn receiver() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (ok, failed) = (ok2.clone(), failed2.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (ok, failed) = (ok.clone(), failed.clone());
                    async move {
                        let answer = if request.uri().path() == "/ok" {
                            ok.fetch_add(1, Ordering::SeqCst);
                            Response::new(Full::new(Bytes::from_static(b"thanks")))
                        } else {
                            failed.fetch_add(1, Ordering::SeqCst);
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                b"the receiver is down",
                            )));
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            r
                        };
                        Ok::<_, Infallible>(answer)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Receiver { addr, ok, failed }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn css(client: &Client, selector: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("no `{selector}` on the page: {e}"))
}

async fn text_of(client: &Client, selector: &str) -> String {
    css(client, selector).await.text().await.unwrap()
}

/// The flash message once it holds `wanted`: after a click the old page, and its old
/// flash, can still be there until the form's answer has loaded.
async fn flash_saying(client: &Client, wanted: &str) -> String {
    text_until(client, None, ".flash", wanted).await
}

async fn path(client: &Client) -> String {
    client.current_url().await.unwrap().path().to_string()
}

/// Reloads `url` until `selector`'s text holds `wanted` (state the server changes in
/// the background, such as a delivery's status).
async fn reload_until(client: &Client, url: &str, selector: &str, wanted: &str) -> String {
    text_until(client, Some(url), selector, wanted).await
}

/// `selector`'s text once it holds `wanted`, looking again (after loading `reload`, if
/// given) until then; a page still loading shows no text.
async fn text_until(client: &Client, reload: Option<&str>, selector: &str, wanted: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(url) = reload {
            client.goto(url).await.unwrap();
        }
        let found = match client.find(Locator::Css(selector)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if found.contains(wanted) {
            return found;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "`{selector}` never showed `{wanted}` ({reload:?}): {found}"
        );
        let pause = if reload.is_some() { 200 } else { 50 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Signs in through the form.
async fn sign_in(client: &Client, admin: SocketAddr) {
    client.goto(&format!("http://{admin}/login")).await.unwrap();
    css(client, "#token").await.send_keys(TOKEN).await.unwrap();
    css(client, "form[action='/login'] button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    css(client, "table#events").await;
    assert_eq!(path(client).await, "/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_see_an_event_arrive_open_it_replay_it_and_sign_out() {
    let _turn = TURN.lock().await;
    let Some(browser) = browser().await else {
        return;
    };
    let client = &browser.client;
    let dir = tempfile::tempdir().unwrap();
    let (gw, config) = gateway(dir.path());
    let admin = gw.admin;

    // Signed out, every page leads to the sign-in form, which refuses a wrong token.
    client
        .goto(&format!("http://{admin}/subscriptions"))
        .await
        .unwrap();
    css(client, "#token").await;
    assert_eq!(path(client).await, "/login");
    screenshot(client, "login").await;
    css(client, "#token")
        .await
        .send_keys("not-the-token")
        .await
        .unwrap();
    css(client, "form[action='/login'] button")
        .await
        .click()
        .await
        .unwrap();
    assert!(text_of(client, "#token-error")
        .await
        .contains("not the admin token"));

    // Signed in, at the page first asked for.
    css(client, "#token").await.send_keys(TOKEN).await.unwrap();
    css(client, "form[action='/login'] button")
        .await
        .click()
        .await
        .unwrap();
    css(client, "#create").await;
    assert_eq!(path(client).await, "/subscriptions");

    // An event sent while the Events page is open appears without a reload.
    for (event_type, body) in [
        ("issues", r#"{"action":"opened","issue":{"number":7}}"#),
        ("pull_request", r#"{"action":"closed","number":8}"#),
    ] {
        send(&config, gw.ingest, event_type, body).await;
    }
    client.goto(&format!("http://{admin}/")).await.unwrap();
    css(client, "table#events[data-connected='true']").await;
    client
        .execute("window.stillTheSamePage = true; return null;", vec![])
        .await
        .unwrap();
    let seq = send(
        &config,
        gw.ingest,
        "push",
        r#"{"ref":"refs/heads/main","hello":"console"}"#,
    )
    .await;
    let row = css(client, &format!("#events tr[data-seq='{seq}']")).await;
    let cells = row.text().await.unwrap();
    assert!(
        cells.contains("github") && cells.contains("push"),
        "{cells}"
    );
    let same = client
        .execute("return window.stillTheSamePage === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, serde_json::json!(true), "the page was not reloaded");
    assert!(text_of(client, "#live-note").await.contains("1 new event"));
    screenshot(client, "events").await;

    // The row opens the event, with its payload formatted.
    css(client, &format!("#events tr[data-seq='{seq}'] a"))
        .await
        .click()
        .await
        .unwrap();
    let payload = text_of(client, "#payload").await;
    assert!(payload.contains(r#""hello": "console""#), "{payload}");
    assert_eq!(path(client).await, format!("/events/{seq}"));

    // Replay queues it again (embedded: as a new event) and says so.
    css(client, "#replay").await.click().await.unwrap();
    let said = text_of(client, ".flash").await;
    assert!(said.contains("queued again"), "{said}");
    screenshot(client, "event").await;

    // A phone-sized window: the table becomes cards.
    client.set_window_size(390, 844).await.unwrap();
    client.goto(&format!("http://{admin}/")).await.unwrap();
    css(client, "#events").await;
    // Each cell on a line of its own under its column's name, and nothing wider than
    // the screen.
    let laid_out = client
        .execute(
            "var td = document.querySelector('#events tbody td');\
             return [getComputedStyle(td).display,\
                     getComputedStyle(td, '::before').content,\
                     document.documentElement.scrollWidth <= window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(laid_out[0], "grid", "{laid_out}");
    assert_eq!(laid_out[1], "\"Seq\"", "{laid_out}");
    assert_eq!(laid_out[2], true, "wider than a phone: {laid_out}");
    screenshot(client, "events-phone").await;
    client.set_window_size(1280, 900).await.unwrap();

    // Log out: back to the form, and the pages are closed again.
    css(client, "form[action='/logout'] button")
        .await
        .click()
        .await
        .unwrap();
    css(client, "#token").await;
    assert_eq!(path(client).await, "/login");
    client.goto(&format!("http://{admin}/")).await.unwrap();
    css(client, "#token").await;
    assert_eq!(path(client).await, "/login");
    browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_from_the_form_to_the_delivery_log() {
    let _turn = TURN.lock().await;
    let Some(browser) = browser().await else {
        return;
    };
    let client = &browser.client;
    let dir = tempfile::tempdir().unwrap();
    let (gw, config) = gateway(dir.path());
    let admin = gw.admin;
    let receiver = receiver().await;
    sign_in(client, admin).await;

    // A bad URL: the API's message beside the URL field, the form as it was filled in.
    client
        .goto(&format!("http://{admin}/subscriptions"))
        .await
        .unwrap();
    let fill = |name: &'static str, url: String| async move {
        let form = css(client, "#create").await;
        for (field, value) in [
            ("#s-name", name.to_string()),
            ("#s-url", url),
            ("#s-events", "github:*".into()),
        ] {
            let input = form.find(Locator::Css(field)).await.unwrap();
            input.clear().await.unwrap();
            input.send_keys(&value).await.unwrap();
        }
        form.find(Locator::Css("button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    };
    fill("local-app", "ftp://127.0.0.1/hooks".into()).await;
    let error = text_of(client, "#url-error").await;
    assert!(
        error.contains("is not an http:// or https:// URL"),
        "{error}"
    );
    assert_eq!(text_of(client, "#url-error code").await, "url");
    let url_field = css(client, "#s-url").await;
    assert_eq!(
        url_field.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );
    assert_eq!(
        url_field.attr("aria-describedby").await.unwrap().as_deref(),
        Some("url-error")
    );
    assert_eq!(
        css(client, "#s-name")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("local-app")
    );
    screenshot(client, "subscription-field-error").await;

    // Fixed, it is created; its secret is shown once.
    fill("local-app", format!("http://{}/ok", receiver.addr)).await;
    let said = text_of(client, ".flash").await;
    assert!(
        said.contains("local-app") && said.contains("whsec_"),
        "{said}"
    );
    fill("failing-app", format!("http://{}/fail", receiver.addr)).await;
    css(client, "#sub-sub_2").await;

    // An event reaches the receiver; the failing endpoint fails twice (retry 100 ms).
    send(&config, gw.ingest, "push", r#"{"ref":"refs/heads/main"}"#).await;
    let ok = receiver.ok.clone();
    until("a delivery to the receiver", || {
        ok.load(Ordering::SeqCst) >= 1
    })
    .await;
    let failed = receiver.failed.clone();
    until("two failed attempts", || failed.load(Ordering::SeqCst) >= 2).await;

    // Sources: the URL to give the provider, and the source's events by status.
    client
        .goto(&format!("http://{admin}/sources"))
        .await
        .unwrap();
    let url = css(client, "#sources input.url").await;
    assert_eq!(
        url.prop("value").await.unwrap().as_deref(),
        Some(format!("http://{}/hooks/github", gw.ingest).as_str())
    );
    let counts = text_of(client, "#sources tbody tr").await;
    assert!(counts.contains("github"), "{counts}");
    screenshot(client, "sources").await;

    // The active toggle.
    client
        .goto(&format!("http://{admin}/subscriptions"))
        .await
        .unwrap();
    css(client, "button[aria-label='Deactivate local-app']")
        .await
        .click()
        .await
        .unwrap();
    flash_saying(client, "is now inactive").await;
    assert_eq!(
        text_of(client, "#sub-sub_1 [data-active]").await,
        "inactive"
    );
    css(client, "button[aria-label='Activate local-app']").await;

    // Send test event: the endpoint's answer is shown.
    css(
        client,
        "button[aria-label='Send a test event to failing-app']",
    )
    .await
    .click()
    .await
    .unwrap();
    flash_saying(client, "answered 500").await;
    screenshot(client, "subscriptions").await;

    // View logs: the delivery to the receiver, with its code and answer.
    css(client, "a[aria-label='View logs of local-app']")
        .await
        .click()
        .await
        .unwrap();
    let row = text_of(client, "#deliveries tbody tr").await;
    assert!(row.contains("delivered") && row.contains("200"), "{row}");
    assert_eq!(path(client).await, "/subscriptions/sub_1/logs");
    screenshot(client, "logs").await;

    // The failed one has a Retry button, which queues it again.
    let failing_log = format!("http://{admin}/subscriptions/sub_2/logs");
    let row = reload_until(client, &failing_log, "#deliveries tbody tr", "failed").await;
    assert!(row.contains("500"), "{row}");
    css(client, "#deliveries button[aria-label^='Retry']")
        .await
        .click()
        .await
        .unwrap();
    flash_saying(client, "attempted again").await;
    assert_eq!(path(client).await, "/subscriptions/sub_2/logs");
    let failed = receiver.failed.clone();
    until("the retried attempt", || failed.load(Ordering::SeqCst) >= 4).await;

    // Health: no broker (embedded), the backlog, the latency.
    client
        .goto(&format!("http://{admin}/health"))
        .await
        .unwrap();
    assert!(text_of(client, "#broker").await.contains("not configured"));
    assert!(text_of(client, "#backlog").await.contains("events"));
    screenshot(client, "health").await;
    browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_holding_script_shows_as_text() {
    let _turn = TURN.lock().await;
    let Some(browser) = browser().await else {
        return;
    };
    let client = &browser.client;
    let dir = tempfile::tempdir().unwrap();
    let (gw, config) = gateway(dir.path());
    let admin = gw.admin;
    sign_in(client, admin).await;
    css(client, "table#events[data-connected='true']").await;

    let hostile =
        r#"{"note":"<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">"}"#;
    let seq = send(&config, gw.ingest, "<b>bold</b>", hostile).await;
    // The live row: the type as text, no element made of it.
    let row = css(client, &format!("#events tr[data-seq='{seq}']")).await;
    assert!(row.text().await.unwrap().contains("<b>bold</b>"));
    assert!(row.find_all(Locator::Css("b")).await.unwrap().is_empty());
    // And the page as the server renders it.
    client.refresh().await.unwrap();
    let row = css(client, &format!("#events tr[data-seq='{seq}']")).await;
    assert!(row.text().await.unwrap().contains("<b>bold</b>"));
    assert!(row.find_all(Locator::Css("b")).await.unwrap().is_empty());

    client
        .goto(&format!("http://{admin}/events/{seq}"))
        .await
        .unwrap();
    let payload = text_of(client, "#payload").await;
    assert!(
        payload.contains("<script>window.pwned = 1</script>"),
        "{payload}"
    );
    assert!(client
        .find_all(Locator::Css("#payload script, #payload img"))
        .await
        .unwrap()
        .is_empty());
    let pwned = client
        .execute("return typeof window.pwned;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::json!("undefined"));
    screenshot(client, "escaped").await;
    browser.client.clone().close().await.unwrap();
}
