//! `hookgate events tail --forward-to` (SPEC §11), the real binary, against a gateway on
//! real sockets and a local app that checks each request's signature with the gateway's
//! own Standard Webhooks verifier: every event arrives once, signed, with hookgate's
//! headers, and a restart of the gateway in between loses none.

mod common;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use common::{delivery_body, free_port, github, post};
use hookgate::config::{Config, Secret};
use hookgate::verify::{Check, Scheme};
use hookgate::Running;

const TOKEN: &str = "forward-test-token";
const WAIT: Duration = Duration::from_secs(15);

async fn start_on(dir: &Path, ingest: u16, admin: u16) -> Running {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{ingest}"
drain_timeout = "2s"

[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"

[journal]
path = "{}"
min_free = "0"

{}
"#,
        dir.join("journal").display(),
        common::GITHUB_SOURCE,
    );
    let config = Config::parse(&text).expect("test config is valid");
    hookgate::start(&config).await.expect("gateway starts")
}

/// What the app got: the request's headers and body, and whether the signature held.
struct Received {
    headers: HeaderMap,
    body: Bytes,
    verified: bool,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// The developer's app: checks every request with `secret` (once it is known), and
/// answers 503 for events whose id starts with `down-`.
async fn app(secret: Arc<OnceLock<String>>) -> (SocketAddr, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (tx, secret) = (tx.clone(), secret.clone());
            let service = service_fn(move |request: Request<Incoming>| {
                let (tx, secret) = (tx.clone(), secret.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let secrets = [Secret::new(
                        secret.get().expect("the secret is known").as_bytes(),
                    )];
                    let check = Check {
                        headers: &parts.headers,
                        body: &body,
                        query: None,
                        secrets: &secrets,
                    };
                    let now = hookgate::gateway::unix_seconds(SystemTime::now());
                    let verified = matches!(
                        Scheme::StandardWebhooks.check(&check),
                        Ok(Some(ts)) if (now - ts).abs() < 60
                    );
                    let down = parts
                        .headers
                        .get("webhook-id")
                        .is_some_and(|id| id.as_bytes().starts_with(b"down-"));
                    tx.send(Received {
                        headers: parts.headers,
                        body,
                        verified,
                    })
                    .await
                    .unwrap();
                    let status = if down {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    let answer = Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap();
                    Ok::<_, Infallible>(answer)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, rx)
}

/// A child's output, a line at a time.
fn lines(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(256);
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line that contains `needle`.
async fn line_with(lines: &mut mpsc::Receiver<String>, needle: &str) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.recv().await.expect("the forwarder is running");
            if line.contains(needle) {
                return line;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no line with `{needle}` in time"))
}

async fn received(app: &mut mpsc::Receiver<Received>) -> Received {
    tokio::time::timeout(WAIT, app.recv())
        .await
        .expect("the app gets a request in time")
        .unwrap()
}

fn forwarder(admin: u16, url: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["events", "tail", "--forward-to", url])
        .args(["--admin", &format!("http://127.0.0.1:{admin}")])
        .args(["--token", TOKEN])
        .args(extra)
        .env_remove("HOOKGATE_FORWARD_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hookgate binary starts")
}

/// Ends the forwarder even when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn send(gw: &Running, id: &str, event: &str) -> u64 {
    let r = post(
        gw.ingest_addr,
        "/hooks/github",
        github(id, event, "application/json", &delivery_body(id)),
    )
    .await;
    assert_eq!(r.json()["status"], "accepted");
    r.json()["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_to_signs_every_event_once_across_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ingest, admin) = (free_port(), free_port());
    let gw = start_on(dir.path(), ingest, admin).await;
    let secret = Arc::new(OnceLock::new());
    let (app_addr, mut app) = app(secret.clone()).await;

    let mut child = forwarder(admin, &format!("http://{app_addr}/webhooks"), &[]);
    let mut out = lines(child.stdout.take().unwrap());
    let mut err = lines(child.stderr.take().unwrap());
    let _child = Killed(child);
    let printed = line_with(&mut out, "Signing secret: ").await;
    let generated = printed
        .split_whitespace()
        .find(|word| word.starts_with("whsec_"))
        .expect("the generated secret is printed");
    secret.set(generated.to_string()).unwrap();
    line_with(&mut err, "connected to").await;

    let push = send(&gw, "fw-1", "push").await;
    let down = send(&gw, "down-2", "issues").await;
    let after_down = send(&gw, "fw-3", "push").await;
    for (seq, id, event) in [
        (push, "fw-1", "push"),
        (down, "down-2", "issues"),
        (after_down, "fw-3", "push"),
    ] {
        let got = received(&mut app).await;
        assert!(got.verified, "{id}: the signature holds");
        assert_eq!(got.header("webhook-id"), id);
        assert_eq!(got.header("hookgate-seq"), seq.to_string());
        assert_eq!(got.header("hookgate-source"), "github");
        assert_eq!(got.header("hookgate-event-type"), event);
        assert_eq!(got.header("content-type"), "application/json");
        assert!(got.header("user-agent").starts_with("hookgate/"));
        assert_eq!(
            got.body,
            Bytes::from(delivery_body(id)),
            "the payload as sent"
        );
        let line = line_with(&mut out, id).await;
        let answer = if id.starts_with("down-") {
            "-> 503 Service Unavailable ("
        } else {
            "-> 200 OK ("
        };
        assert!(line.contains(answer), "{line}");
        assert!(line.trim_start().starts_with(&seq.to_string()), "{line}");
    }

    // The gateway restarts; what is sent while the forwarder is away still arrives, once.
    gw.stop().await;
    line_with(&mut err, "the stream ended").await;
    let gw = start_on(dir.path(), ingest, admin).await;
    let later = send(&gw, "fw-4", "push").await;
    let last = send(&gw, "fw-5", "push").await;
    line_with(&mut err, &format!("resuming after seq {after_down}")).await;
    for (seq, id) in [(later, "fw-4"), (last, "fw-5")] {
        let got = received(&mut app).await;
        assert!(got.verified);
        assert_eq!(
            (got.header("hookgate-seq"), got.header("webhook-id")),
            (seq.to_string().as_str(), id)
        );
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), app.recv()).await;
    assert!(extra.is_err(), "nothing is forwarded twice");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_secret_signs_and_bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ingest, admin) = (free_port(), free_port());
    let gw = start_on(dir.path(), ingest, admin).await;
    let given = hookgate::deliver::sign::new_secret();
    let secret = Arc::new(OnceLock::from(given.clone()));
    let (app_addr, mut app) = app(secret).await;
    let url = format!("http://{app_addr}/");

    let mut child = forwarder(admin, &url, &["--secret", &given, "--type", "push"]);
    let mut out = lines(child.stdout.take().unwrap());
    let mut err = lines(child.stderr.take().unwrap());
    let _child = Killed(child);
    line_with(&mut err, "connected to").await;
    send(&gw, "typed-1", "issues").await;
    let push = send(&gw, "typed-2", "push").await;
    let got = received(&mut app).await;
    assert!(got.verified);
    assert_eq!(got.header("hookgate-seq"), push.to_string(), "only pushes");
    let line = line_with(&mut out, "typed-2").await;
    assert!(line.contains("-> 200 OK"), "{line}");

    for (extra, says) in [
        (vec!["--secret", "hunter2"], "--secret must be `whsec_`"),
        (
            vec!["--status", "queued"],
            "filters by --source and --type only",
        ),
    ] {
        let done = forwarder(admin, &url, &extra).wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(
            !done.status.success() && stderr.contains(says),
            "{extra:?}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "a secret is never echoed");
    }
    let wrong_token = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["events", "tail", "--forward-to", &url])
        .args([
            "--admin",
            &format!("http://127.0.0.1:{admin}"),
            "--token",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!wrong_token.status.success());
    assert!(String::from_utf8_lossy(&wrong_token.stderr).contains("401"));
    gw.stop().await;
}
