//! The sink the `deliveries` benchmark points its subscriptions at: a hyper HTTP/1.1
//! server on loopback that answers every request `204` and notes, per request, which
//! subscription it came for (the path `/sub/{n}`), its `webhook-id` (the event id) and
//! `hookgate-seq`, and when its head arrived. The time is taken before the body is read,
//! so the sink's own body handling does not count against the gateway.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The first arrival of one event for one subscription.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub at: Instant,
    pub seq: Option<u64>,
}

/// What the sink has seen so far.
#[derive(Default)]
pub struct Seen {
    /// The first arrival of each (subscription, event id).
    pub first: HashMap<(usize, String), Arrival>,
    /// Arrivals of a (subscription, event id) already seen: at-least-once repeats.
    pub duplicates: u64,
    /// Requests without a `webhook-id` or outside `/sub/{n}`.
    pub unmatched: u64,
}

#[derive(Default)]
struct State {
    seen: Mutex<Seen>,
    /// `seen.first.len()`, readable without the lock while the benchmark waits.
    unique: AtomicU64,
}

pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl Sink {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn start() -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(Sink {
            addr,
            state,
            server,
        })
    }

    /// The URL subscription `n` delivers to.
    pub fn url(&self, n: usize) -> String {
        format!("http://{}/sub/{n}", self.addr)
    }

    /// How many distinct (subscription, event) pairs have arrived.
    pub fn unique(&self) -> u64 {
        self.state.unique.load(Ordering::Acquire)
    }

    /// Runs `f` on what has arrived, under the lock (keep it short while loaded).
    pub fn with_seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.state.seen.lock().expect("sink lock"))
    }

    /// Forgets everything seen (between runs on one sink).
    pub fn clear(&self) {
        let mut seen = self.state.seen.lock().expect("sink lock");
        *seen = Seen::default();
        self.state.unique.store(0, Ordering::Release);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, state.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    state: Arc<State>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let at = Instant::now();
    let sub = request
        .uri()
        .path()
        .strip_prefix("/sub/")
        .and_then(|n| n.parse::<usize>().ok());
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let id = header("webhook-id");
    let seq = header("hookgate-seq").and_then(|s| s.parse().ok());
    // Read the body to its end, so the connection stays usable for the next request.
    let _ = request.into_body().collect().await;
    {
        let mut seen = state.seen.lock().expect("sink lock");
        match (sub, id) {
            (Some(sub), Some(id)) => match seen.first.entry((sub, id)) {
                std::collections::hash_map::Entry::Occupied(_) => seen.duplicates += 1,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(Arrival { at, seq });
                    state.unique.fetch_add(1, Ordering::AcqRel);
                }
            },
            _ => seen.unmatched += 1,
        }
    }
    let mut response = Response::new(Empty::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sink_answers_204_and_counts_first_arrivals_and_repeats() {
        let sink = Sink::start().await.unwrap();
        let addr = sink.addr;
        let post = |path: &'static str, id: Option<&str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(id) = id {
                headers.insert("webhook-id", id.parse().unwrap());
                headers.insert("hookgate-seq", "7".parse().unwrap());
            }
            async move {
                let url = format!("http://{addr}{path}");
                hookgate::cli::client::request(
                    http::Method::POST,
                    &url,
                    headers,
                    Bytes::from_static(b"{}"),
                )
                .await
            }
        };
        let reply = post("/sub/1", Some("a")).await.unwrap();
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        post("/sub/1", Some("a")).await.unwrap();
        post("/sub/2", Some("a")).await.unwrap();
        post("/elsewhere", Some("b")).await.unwrap();
        post("/sub/1", None).await.unwrap();
        assert_eq!(sink.unique(), 2);
        sink.with_seen(|seen| {
            assert_eq!(seen.duplicates, 1);
            assert_eq!(seen.unmatched, 2);
            assert_eq!(seen.first[&(1, "a".to_string())].seq, Some(7));
        });
        sink.clear();
        assert_eq!(sink.unique(), 0);
    }
}
