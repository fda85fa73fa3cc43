//! `GET /v1/stream?source=&type=&after=SEQ` (SPEC §11): the journal's events as
//! server-sent events, live. The events come from the one
//! [`Broadcaster`](super::broadcast::Broadcaster); this file is the HTTP side: the query,
//! the answer, and a small task per client that writes its subscription's frames, a
//! comment every 15 s, and the final overflow, into a body bounded to a few frames.
//!
//! - The first frame is `retry:` and `id:` with the seq the stream starts after, so a
//!   client that asked for the newest events (`after=latest`, or nothing) and loses the
//!   connection before an event comes resumes from exactly there.
//! - `Last-Event-ID` (what a browser's `EventSource` sends when it reconnects) wins over
//!   `after`.
//! - An overflow has no `id:`, so a browser's last event id stays that of the last event
//!   it got, which is the seq in `resume_after`.
//! - A stopping gateway ends every stream (after a comment saying so), so the admin
//!   listener's drain does not wait on them.
//! - A client that has taken nothing for [`STALLED`] while more than
//!   [`MAX_BEHIND`](super::broadcast::MAX_BEHIND) events behind has stopped reading: its
//!   connection is cut off (no overflow event can reach it; its `Last-Event-ID` still
//!   names the last event it got), which frees its place among the streams.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Either;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::broadcast::{Filter, Item, Subscription, MAX_BEHIND};
use super::{bad_request, Admin};
use crate::answer::{error_response, Body};
use crate::listen::{stopped, CutOff};

/// The body of an admin answer: whole, or a live stream.
pub type AdminBody = Either<Body, SseBody>;

/// How often an idle stream gets a comment line, so that proxies and clients see it is
/// alive (SPEC §11).
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a browser waits before reconnecting, in milliseconds.
const RETRY_MS: u64 = 2000;
/// Frames waiting for one client's connection, beyond what hyper buffers.
const CLIENT_FRAMES: usize = 16;
/// Streams open at once; the admin listener takes 256 connections, and the API must stay
/// reachable while the streams are open.
pub const MAX_STREAMS: usize = 192;
/// How long a client far behind may take nothing before it counts as gone: long enough
/// for a client on a slow link to take one large event.
pub const STALLED: Duration = Duration::from_secs(30);

/// What a client asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamQuery {
    pub filter: Filter,
    /// `None`: the newest event now.
    pub after: Option<u64>,
}

/// `source=&type=&after=` (a seq or `latest`), with `Last-Event-ID` winning over
/// `after`; the error is the 400's message.
pub fn parse(query: &str, last_event_id: Option<&[u8]>) -> Result<StreamQuery, String> {
    let mut asked = StreamQuery {
        filter: Filter::default(),
        after: None,
    };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "source" => asked.filter.source = Some(value.into_owned()),
            "type" => asked.filter.event_type = Some(value.into_owned()),
            "after" if value == "latest" => asked.after = None,
            "after" => {
                asked.after =
                    Some(value.parse().map_err(|_| {
                        format!("after `{value}` is not a sequence number or `latest`")
                    })?)
            }
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    if let Some(id) = last_event_id {
        let text = std::str::from_utf8(id).unwrap_or("").trim();
        asked.after = Some(
            text.parse()
                .map_err(|_| "Last-Event-ID is not a sequence number".to_string())?,
        );
    }
    Ok(asked)
}

impl Admin {
    /// `GET /v1/stream`, once the caller is authorised (the admin token, or a console
    /// session): a `text/event-stream` answer that runs until the client goes, falls too
    /// far behind, or the gateway stops.
    pub fn stream_response(
        &self,
        query: &str,
        last_event_id: Option<&HeaderValue>,
        cut: CutOff,
    ) -> Response<AdminBody> {
        let asked = match parse(query, last_event_id.map(HeaderValue::as_bytes)) {
            Ok(asked) => asked,
            Err(e) => return bad_request(e).map(Either::Left),
        };
        // A misspelt source would otherwise wait for ever for events that cannot come.
        if let Some(refused) = asked
            .filter
            .source
            .as_deref()
            .and_then(|s| self.unknown_source(s))
        {
            return refused.map(Either::Left);
        }
        let Some(slot) = self.stream.slot() else {
            let mut refused = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!("{MAX_STREAMS} streams are open; retry later"),
            );
            refused
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return refused.map(Either::Left);
        };
        let subscription = self.stream.subscribe(asked.filter, asked.after);
        let (frames, body) = mpsc::channel(CLIENT_FRAMES);
        tokio::spawn(pump(subscription, frames, self.stop.clone(), slot, cut));
        let mut response = Response::new(Either::Right(SseBody { frames: body }));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Proxies such as nginx would otherwise hold events back to fill a buffer.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

/// Writes one client's frames until it goes, overflows, stops reading, or the gateway
/// stops. Holds the client's `slot` while it runs.
async fn pump(
    mut subscription: Subscription,
    frames: mpsc::Sender<Bytes>,
    mut stop: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
    cut: CutOff,
) {
    let _slot = slot;
    let start = format!("retry: {RETRY_MS}\nid: {}\n\n", subscription.position());
    if !send(&frames, Bytes::from(start), &mut stop).await {
        return;
    }
    let first = tokio::time::Instant::now() + HEARTBEAT;
    let mut heartbeat = tokio::time::interval_at(first, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            _ = stopped(&mut stop) => {
                let _ = frames.try_send(Bytes::from_static(b": the gateway is stopping\n\n"));
                return;
            }
            _ = frames.closed() => return,
            _ = heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
            next = subscription.next() => match next {
                Ok(Some(Item::Event(event))) => event.text.clone(),
                Ok(Some(Item::Overflow { resume_after })) => {
                    tracing::info!(resume_after, "a live stream fell too far behind; closed with an overflow");
                    let text = format!(
                        "event: overflow\ndata: {{\"resume_after\":{resume_after}}}\n\n"
                    );
                    send(&frames, Bytes::from(text), &mut stop).await;
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "a live stream cannot read the journal; closed");
                    return;
                }
            },
        };
        if !send_or_cut(&frames, frame, &mut stop, &subscription, &cut).await {
            return;
        }
    }
}

/// As [`send`], and false too once the client has taken nothing for [`STALLED`] while
/// more than [`MAX_BEHIND`] events behind: then its connection is cut off.
async fn send_or_cut(
    frames: &mpsc::Sender<Bytes>,
    frame: Bytes,
    stop: &mut watch::Receiver<bool>,
    subscription: &Subscription,
    cut: &CutOff,
) -> bool {
    // Most frames find room at once: no timer for them.
    let frame = match frames.try_send(frame) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(frame)) => frame,
    };
    let first = tokio::time::Instant::now() + STALLED;
    let mut check = tokio::time::interval_at(first, Duration::from_secs(1));
    let sent = frames.send(frame);
    tokio::pin!(sent);
    loop {
        tokio::select! {
            sent = &mut sent => return sent.is_ok(),
            _ = stopped(stop) => return false,
            _ = check.tick() => {
                let behind = subscription.behind();
                if behind > MAX_BEHIND as u64 {
                    tracing::info!(behind, "a live stream's client stopped reading; its connection is closed");
                    cut.cut();
                    return false;
                }
            }
        }
    }
}

/// Queues `frame` for the client, waiting for room; false when the client is gone or
/// the gateway stops first.
async fn send(
    frames: &mpsc::Sender<Bytes>,
    frame: Bytes,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        sent = frames.send(frame) => sent.is_ok(),
        _ = stopped(stop) => false,
    }
}

/// A stream's body: the frames its task queues, until the task ends.
pub struct SseBody {
    frames: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.frames
            .poll_recv(cx)
            .map(|frame| frame.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_and_last_event_id() {
        let q = parse("source=github&type=push&after=7", None).unwrap();
        assert_eq!(q.filter.source.as_deref(), Some("github"));
        assert_eq!(q.filter.event_type.as_deref(), Some("push"));
        assert_eq!(q.after, Some(7));
        assert_eq!(parse("", None).unwrap().after, None);
        assert_eq!(parse("after=latest", None).unwrap().after, None);
        assert_eq!(parse("after=3", Some(b"12")).unwrap().after, Some(12));
        assert_eq!(parse("after=latest", Some(b" 5 ")).unwrap().after, Some(5));
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for (query, id, message) in [
            (
                "after=x",
                None,
                "after `x` is not a sequence number or `latest`",
            ),
            ("status=queued", None, "unknown parameter `status`"),
            (
                "",
                Some(&b"abc"[..]),
                "Last-Event-ID is not a sequence number",
            ),
        ] {
            assert_eq!(parse(query, id).unwrap_err(), message, "{query}");
        }
    }
}
