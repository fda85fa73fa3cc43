//! A webhook receiver on loopback for the subscription tests: a real hyper server on
//! `127.0.0.1:0` that records every request it gets (headers, body, when it came and
//! when it was answered) and answers each one from a script: a status, headers such as
//! `Retry-After`, a delay before answering, and a body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
    pub body: String,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer::status(200)
    }

    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: String::new(),
        }
    }

    /// `200` with a JSON body.
    pub fn json(value: serde_json::Value) -> Answer {
        Answer {
            body: value.to_string(),
            ..Answer::ok()
        }
        .header("content-type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Its place among all requests, from 0.
    pub index: usize,
    /// How many requests with the same `webhook-id` came before it.
    pub nth: usize,
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status it was answered with (set once answered).
    pub answered_with: Option<u16>,
    pub answered_at: Option<Instant>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn id(&self) -> &str {
        self.header("webhook-id").unwrap_or_default()
    }
}

pub type Script = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

#[derive(Default)]
struct Log {
    seen: Vec<Seen>,
    by_id: HashMap<String, usize>,
}

struct State {
    log: Mutex<Log>,
    script: Mutex<Script>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Receiver {
    /// A receiver answering every request with `200`.
    pub async fn ok() -> Receiver {
        Receiver::start(|_| Answer::ok()).await
    }

    pub async fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            log: Mutex::new(Log::default()),
            script: Mutex::new(Arc::new(script)),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            state,
            accept,
        }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers from now on with `script`.
    pub fn script(&self, script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) {
        *self.state.script.lock().unwrap() = Arc::new(script);
    }

    /// Every request so far, in the order they came.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().seen.clone()
    }

    /// The requests that were answered with a 2xx, in the order they came.
    pub fn accepted(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.answered_with.is_some_and(|c| (200..300).contains(&c)))
            .collect()
    }

    /// The most requests the receiver held at once.
    pub fn most_in_flight(&self) -> usize {
        self.state.most_in_flight.load(Ordering::SeqCst)
    }

    /// Waits (up to `within`) until at least `n` requests came; answers them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.requests();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver got {} requests within {within:?}, expected {n}: {:?}",
                seen.len(),
                seen.iter().map(Seen::id).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.most_in_flight.fetch_max(now, Ordering::SeqCst);
    // Counted down even when the client goes away mid-delay and the answer is dropped.
    let _held = Held(&state.in_flight);
    let (seen, script) = {
        let mut guard = state.log.lock().unwrap();
        let log = &mut *guard;
        let id = parts
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let nth = log.by_id.entry(id).or_insert(0);
        let seen = Seen {
            index: log.seen.len(),
            nth: *nth,
            at,
            path: parts.uri.path().to_string(),
            headers: parts.headers,
            body,
            answered_with: None,
            answered_at: None,
        };
        *nth += 1;
        log.seen.push(seen.clone());
        (seen, state.script.lock().unwrap().clone())
    };
    let planned = script(&seen);
    if !planned.delay.is_zero() {
        tokio::time::sleep(planned.delay).await;
    }
    {
        let mut log = state.log.lock().unwrap();
        let entry = &mut log.seen[seen.index];
        entry.answered_with = Some(planned.status);
        entry.answered_at = Some(Instant::now());
    }
    let mut response = Response::new(Full::new(Bytes::from(planned.body)));
    *response.status_mut() = StatusCode::from_u16(planned.status).unwrap();
    for (name, value) in planned.headers {
        response.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
