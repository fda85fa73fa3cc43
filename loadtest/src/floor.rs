//! Two servers that bracket hookgate's ingest, for `loadtest/wrk/compare.sh` and `bench`.
//! Both take GitHub pushes signed with the bench secret, as hookgate's bench config does.
//!
//! - `hmac`, the CPU ceiling: reads each body, checks its `X-Hub-Signature-256`, answers
//!   200 and keeps nothing. Every receiver that verifies must do at least this much per
//!   request before it may answer, so no verifying server can go faster on this CPU.
//! - `floor`, the floor for durable acknowledgements: the same check, then the body goes
//!   to one writer thread. That thread appends every body that queued while it was busy
//!   to one file with one `write`, calls `fdatasync` once for the group, and only then
//!   lets each request of the group have its 200. No index, no dedup, no parsing: this is
//!   the least a server can do and still promise that an answered event is on disk, so
//!   its rate is the most hookgate can hope for on this disk. The gap from `hmac` to
//!   `floor` is the disk's price; the gap from `floor` to hookgate is hookgate's own.

use std::convert::Infallible;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::path::Path;

use bytes::Bytes;
use futures_util::FutureExt;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// hookgate's default `server.max_body`.
const MAX_BODY: usize = 1 << 20;
/// The most requests in one group, and so the queue's capacity: more than any load here
/// keeps in flight (one request per connection).
const MAX_GROUP: usize = 1024;

/// A verified body waiting for its group's sync. The writer sends on `durable` once the
/// body is synced; dropping it unsent means the body may not be on disk.
pub struct Pending {
    body: Bytes,
    durable: oneshot::Sender<()>,
}

/// The `hmac` server: verify, answer, keep nothing.
pub async fn serve_hmac(listener: TcpListener) {
    serve(listener, |request| async {
        match verified(request).await {
            Ok(_) => crate::accepted(),
            Err(refusal) => refusal,
        }
    })
    .await
}

/// The `floor` server: verify, append to `dir/floor.log` (created empty) in groups, and
/// answer each request once its group is synced.
pub async fn serve_floor(listener: TcpListener, dir: &Path) -> io::Result<()> {
    let file = File::create(dir.join("floor.log"))?;
    let (queue, waiting) = mpsc::channel(MAX_GROUP);
    std::thread::Builder::new()
        .name("floor-writer".into())
        .spawn(move || {
            if let Err(e) = write_groups(file, waiting) {
                eprintln!("floor: the writer stopped ({e}); every request is now answered 500");
            }
        })?;
    serve(listener, move |request| keep(request, queue.clone())).await;
    Ok(())
}

/// The writer thread's loop: takes everything queued (at least one body), appends it
/// with one `write`, syncs once, then answers the group. Returns how many groups it wrote
/// once every sender is gone. A failed write or sync ends it, and so every request still
/// waiting or yet to come is answered 500: after a failed `fdatasync` a later one can
/// succeed without the pages that were lost, so nothing after it could be promised.
pub fn write_groups(mut file: File, mut queue: mpsc::Receiver<Pending>) -> io::Result<u64> {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut bytes = Vec::new();
    let mut groups = 0;
    while let Some(first) = queue.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        bytes.clear();
        for pending in &group {
            bytes.extend_from_slice(&pending.body);
        }
        file.write_all(&bytes)?;
        file.sync_data()?;
        groups += 1;
        for pending in group.drain(..) {
            // A request whose client went away has no one to answer.
            let _ = pending.durable.send(());
        }
    }
    Ok(groups)
}

/// One floor request: 200 only once the writer says its body is synced.
async fn keep(request: Request<Incoming>, queue: mpsc::Sender<Pending>) -> Response<Full<Bytes>> {
    let body = match verified(request).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let (durable, synced) = oneshot::channel();
    if queue.send(Pending { body, durable }).await.is_err() || synced.await.is_err() {
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    crate::accepted()
}

/// The body, if its `X-Hub-Signature-256` is the bench secret's HMAC-SHA256 of it;
/// otherwise the answer that refuses it.
async fn verified<B>(request: Request<B>) -> Result<Bytes, Response<Full<Bytes>>>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let claimed = request
        .headers()
        .get("x-hub-signature-256")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("sha256="))
        .and_then(|hex| hex::decode(hex).ok());
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(status(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(_) => return Err(status(StatusCode::BAD_REQUEST)),
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(crate::bench::SECRET.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(&body);
    // verify_slice compares in constant time.
    match claimed {
        Some(claimed) if mac.verify_slice(&claimed).is_ok() => Ok(body),
        _ => Err(status(StatusCode::UNAUTHORIZED)),
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// Plain HTTP/1.1 on `listener`, each request answered by `handle`.
async fn serve<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request).map(Ok::<_, Infallible>));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(body: &'static [u8]) -> (Pending, oneshot::Receiver<()>) {
        let (durable, synced) = oneshot::channel();
        let body = Bytes::from_static(body);
        (Pending { body, durable }, synced)
    }

    #[test]
    fn a_queued_group_is_written_at_once_and_each_is_answered_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor.log");
        let (queue, waiting) = mpsc::channel(MAX_GROUP);
        let mut answers = Vec::new();
        for body in [&b"one,"[..], b"two,", b"three"] {
            let (pending, synced) = pending(body);
            queue.try_send(pending).unwrap();
            answers.push(synced);
        }
        let file = File::create(&path).unwrap();
        let writer = std::thread::spawn(move || write_groups(file, waiting));
        for synced in answers {
            synced.blocking_recv().expect("answered");
            // Answered, so the whole group is in the file already.
            assert_eq!(std::fs::read(&path).unwrap(), b"one,two,three");
        }
        drop(queue);
        assert_eq!(writer.join().unwrap().unwrap(), 1, "one group");
    }

    /// The body and signature `github.lua` sends.
    fn signed_push() -> (Bytes, String) {
        let script = include_str!("../wrk/github.lua");
        let body = script
            .split("[==[")
            .nth(1)
            .unwrap()
            .split("]==]")
            .next()
            .unwrap();
        let signature = script
            .split("\"X-Hub-Signature-256\"] = \"")
            .nth(1)
            .unwrap();
        let signature = signature.split('"').next().unwrap();
        (Bytes::from(body.to_owned()), signature.to_owned())
    }

    fn request(body: Bytes, signature: &str) -> Request<Full<Bytes>> {
        Request::post("/hooks/github")
            .header("x-hub-signature-256", signature)
            .body(Full::new(body))
            .unwrap()
    }

    #[tokio::test]
    async fn the_wrk_push_verifies_and_a_changed_one_does_not() {
        let (body, signature) = signed_push();
        let kept = verified(request(body.clone(), &signature)).await.unwrap();
        assert_eq!(kept, body);

        let mut changed = body.to_vec();
        changed[0] = b' ';
        let refused = verified(request(changed.into(), &signature))
            .await
            .unwrap_err();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let unsigned = verified(request(body, "sha256=zz")).await.unwrap_err();
        assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn nothing_is_answered_when_the_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor.log");
        File::create(&path).unwrap();
        // Opened for reading only, so the write fails.
        let file = File::open(&path).unwrap();
        let (queue, waiting) = mpsc::channel(MAX_GROUP);
        let (first, first_synced) = pending(b"lost");
        queue.try_send(first).unwrap();
        let writer = std::thread::spawn(move || write_groups(file, waiting));
        assert!(writer.join().unwrap().is_err());
        assert!(first_synced.blocking_recv().is_err(), "dropped unanswered");
        let (later, _) = pending(b"later");
        assert!(queue.try_send(later).is_err(), "the writer is gone");
    }
}
