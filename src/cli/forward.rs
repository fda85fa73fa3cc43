//! `hookgate events tail --forward-to URL` (SPEC §11): follows the live stream and POSTs
//! each event to an app on the developer's machine, signed as a subscription's delivery
//! is (Standard Webhooks, SPEC §9), printing a line per event with the app's answer —
//! what Stripe CLI's `listen --forward-to` does for Stripe events.
//!
//! - One event at a time, in seq order; an app that is down or answers an error is
//!   reported and the next event follows: nothing is retried (`--after` replays).
//! - A lost connection (the gateway restarting) is taken up again with `Last-Event-ID`,
//!   so no event is skipped or sent twice; a forwarder that falls too far behind is told
//!   where to resume (the stream's overflow) and does so.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::HeaderValue;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::events::{ApiError, Target};
use super::sse::{EventStream, Message};
use crate::deliver::client::{Attempted, OutboundSettings};
use crate::deliver::target::AllowList;
use crate::deliver::{sign, Outbound};

/// How long the app has to answer one event.
const APP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest pause between attempts to reach the gateway again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What `--forward-to` was asked to do.
pub struct Forward<'a> {
    pub url: &'a str,
    /// `whsec_…`; a new one is made (and printed) when absent.
    pub secret: Option<&'a str>,
    pub source: Option<&'a str>,
    pub event_type: Option<&'a str>,
    /// Start after this seq instead of at the newest event.
    pub after: Option<u64>,
}

/// An event as the stream carries it: the summary fields and the payload.
#[derive(Deserialize)]
struct Streamed {
    seq: u64,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: Option<String>,
    payload: Option<Box<RawValue>>,
}

/// Runs until interrupted, or until the gateway refuses the stream (a wrong token or
/// filter: asking again would not help).
pub async fn run(target: &Target, asked: Forward<'_>) -> anyhow::Result<()> {
    crate::deliver::target::parse_url(asked.url)
        .map_err(|e| anyhow::anyhow!("--forward-to {}: {e}", asked.url))?;
    let secret = match asked.secret {
        Some(secret) if sign::valid_secret(secret) => secret.to_string(),
        Some(_) => bail!("--secret must be `whsec_` followed by base64"),
        None => {
            let secret = sign::new_secret();
            println!("Signing secret: {secret} (generated; pass --secret to keep one)");
            secret
        }
    };
    let app = Outbound::new(OutboundSettings {
        // The app is the developer's own, usually on this machine.
        allow: AllowList::parse(&["0.0.0.0/0".into(), "::/0".into()])
            .map_err(anyhow::Error::msg)?,
        timeout: APP_TIMEOUT,
        user_agent: format!("hookgate/{}", env!("CARGO_PKG_VERSION")),
    })?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in [("source", asked.source), ("type", asked.event_type)] {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    let query = query.finish();
    println!("Forwarding events to {} (Ctrl-C to stop)", asked.url);
    let mut cursor = asked.after;
    let mut failures = 0u32;
    loop {
        match follow(target, &query, &mut cursor, &app, asked.url, &secret).await {
            Ok(()) => failures = 0,
            Err(e) => {
                if e.downcast_ref::<ApiError>()
                    .is_some_and(|api| (400..500).contains(&api.status))
                {
                    return Err(e);
                }
                if failures == 0 {
                    eprintln!("stream: {e:#}; reconnecting");
                }
                failures = failures.saturating_add(1);
            }
        }
        let pause = Duration::from_millis(200 * u64::from(failures.min(10))).min(MAX_BACKOFF);
        tokio::time::sleep(pause).await;
    }
}

/// Follows one connection to the stream until it ends; `cursor` is the seq forwarded
/// last (or the stream's start), where the next connection resumes.
async fn follow(
    target: &Target,
    query: &str,
    cursor: &mut Option<u64>,
    app: &Outbound,
    url: &str,
    secret: &str,
) -> anyhow::Result<()> {
    let path = match (*cursor, query.is_empty()) {
        (Some(_), true) => "/v1/stream".to_string(),
        (Some(_), false) => format!("/v1/stream?{query}"),
        (None, true) => "/v1/stream?after=latest".to_string(),
        (None, false) => format!("/v1/stream?{query}&after=latest"),
    };
    let (stream_url, mut headers) = target.locate(&path)?;
    if let Some(seq) = *cursor {
        headers.insert("last-event-id", HeaderValue::from(seq));
    }
    let mut stream = EventStream::open(&stream_url, headers, target.tls()).await?;
    eprintln!(
        "connected to {}; resuming after {}",
        stream_url.split('?').next().unwrap_or(&stream_url),
        cursor.map_or("the newest event".to_string(), |seq| format!("seq {seq}"))
    );
    while let Some(message) = stream.next().await? {
        if message.event.as_deref() == Some("overflow") && message.id.is_none() {
            if let Some(resume_after) = resume_after(&message) {
                eprintln!("fell more than 1000 events behind; resuming after seq {resume_after}");
                *cursor = Some(resume_after);
                return Ok(());
            }
        }
        if message.data.is_empty() {
            // The stream's first message says where it starts.
            if let Some(seq) = message.id.as_deref().and_then(|id| id.parse().ok()) {
                *cursor = Some(seq);
            }
            continue;
        }
        let event: Streamed = serde_json::from_str(&message.data)
            .context("the stream sent an event that is not an event")?;
        forward(app, url, secret, &event).await;
        *cursor = Some(event.seq);
    }
    eprintln!("the stream ended (is the gateway stopping?); reconnecting");
    Ok(())
}

fn resume_after(message: &Message) -> Option<u64> {
    let data: serde_json::Value = serde_json::from_str(&message.data).ok()?;
    data["resume_after"].as_u64()
}

/// POSTs one event to the app and prints what came of it.
async fn forward(app: &Outbound, url: &str, secret: &str, event: &Streamed) {
    let event_type = event.event_type.as_deref().unwrap_or("-");
    let head = format!("{:>8}  {:<12} {:<28}", event.seq, event.source, event_type);
    let Some(payload) = &event.payload else {
        println!(
            "{head} -> not sent: its payload is damaged in the journal  {}",
            event.id
        );
        return;
    };
    let body = Bytes::copy_from_slice(payload.get().as_bytes());
    let timestamp = crate::gateway::unix_seconds(SystemTime::now());
    let signature = match sign::signature(&[secret], &event.id, timestamp, &body) {
        Ok(signature) => signature,
        Err(e) => {
            println!("{head} -> not sent: {e}  {}", event.id);
            return;
        }
    };
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("webhook-id", event.id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
        ("hookgate-source", event.source.clone()),
        ("hookgate-seq", event.seq.to_string()),
    ];
    if let Some(event_type) = &event.event_type {
        headers.push(("hookgate-event-type", event_type.clone()));
    }
    let headers: Vec<(String, String)> = headers
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    let attempted = app.post(url, None, &headers, body).await;
    println!("{head} -> {}  {}", outcome(&attempted), event.id);
}

/// `200 OK (12 ms)`, or the error.
fn outcome(attempted: &Attempted) -> String {
    let ms = attempted.duration.as_millis();
    match (attempted.status, &attempted.error) {
        (Some(code), _) => {
            let reason = http::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            format!("{code} {reason} ({ms} ms)")
        }
        (None, Some(error)) => format!("error: {error} ({ms} ms)"),
        (None, None) => format!("no answer ({ms} ms)"),
    }
}
