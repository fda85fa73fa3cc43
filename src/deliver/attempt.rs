//! One delivery attempt (SPEC §9): the event's payload POSTed with Standard Webhooks
//! signing and hookgate's headers, and what the answer means for the delivery.

use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::client::Attempted;
use super::{sign, Deliverer, Schedule};
use crate::journal::{
    Delivery, DeliveryAttempt, DeliveryOutcome, Mode, ReadError, Subscription, Verdict,
};

/// How much of an answer the delivery log keeps.
const KEPT_BODY: usize = 4096;

/// A callback token and the SHA-256 the journal keeps of it (the token itself is only
/// in the request's `hookgate-callback-url`).
struct Callback {
    token: String,
    hash: [u8; 32],
}

impl Callback {
    fn new() -> Result<Callback, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| format!("no randomness for a callback token: {e}"))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Ok(Callback {
            hash: token_hash(&token),
            token,
        })
    }
}

/// The SHA-256 of a callback token: what the journal finds a callback by.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Makes one attempt of `delivery` and judges it.
pub async fn make(
    deliverer: &Deliverer,
    sub: &Subscription,
    delivery: &Delivery,
) -> DeliveryOutcome {
    let started = SystemTime::now();
    let now_ms = crate::unix_ms(started);
    let failed = |error: String| Attempted {
        error: Some(error),
        ..Attempted::default()
    };
    let journal = deliverer.journal.clone();
    let seq = delivery.seq;
    let read = tokio::task::spawn_blocking(move || journal.get(seq)).await;
    let (attempted, callback) = match read {
        Ok(Ok(Some(record))) => {
            let callback = match sub.mode {
                Mode::Callback => match Callback::new() {
                    Ok(callback) => Some(callback),
                    Err(e) => return judged(deliverer, sub, delivery, now_ms, failed(e), None),
                },
                _ => None,
            };
            let body = Bytes::copy_from_slice(record.payload());
            let about = About {
                id: &record.summary.id,
                source: &record.summary.source,
                seq: Some(record.summary.seq),
                event_type: record.summary.event_type.as_deref(),
                delivery: Some(delivery.id()),
            };
            match request(deliverer, sub, about, &body, now_ms, callback.as_ref()) {
                Ok(headers) => {
                    let url = sub.url.as_deref().unwrap_or_default();
                    let attempted = deliverer
                        .outbound
                        .post(url, sub.ca.as_deref(), &headers, body)
                        .await;
                    (attempted, callback)
                }
                Err(e) => (failed(e), None),
            }
        }
        Ok(Ok(None)) => {
            let outcome = gone(delivery, now_ms, "the event is no longer in the journal");
            return outcome;
        }
        Ok(Err(ReadError::Damaged { why, .. })) => {
            return gone(delivery, now_ms, &format!("the event is damaged: {why}"));
        }
        Ok(Err(e)) => (failed(format!("cannot read the event: {e}")), None),
        Err(e) => (failed(format!("reading the event failed: {e}")), None),
    };
    let outcome_label = match (attempted.status, &attempted.error) {
        (Some(code), _) if (200..300).contains(&code) => "success",
        (Some(_), _) => "status",
        _ => "error",
    };
    deliverer
        .metrics
        .delivery_attempt(&sub.name, outcome_label, attempted.duration);
    judged(deliverer, sub, delivery, now_ms, attempted, callback)
}

/// A delivery that cannot be made at all: failed, without an attempt on the wire.
fn gone(delivery: &Delivery, now_ms: u64, why: &str) -> DeliveryOutcome {
    DeliveryOutcome {
        seq: delivery.seq,
        sub: delivery.sub,
        attempt: DeliveryAttempt {
            at_ms: now_ms,
            duration_ms: 0,
            status_code: None,
            error: Some(why.to_string()),
            response_body: None,
            next_attempt_at_ms: None,
        },
        verdict: Verdict::Failed,
    }
}

fn judged(
    deliverer: &Deliverer,
    sub: &Subscription,
    delivery: &Delivery,
    now_ms: u64,
    attempted: Attempted,
    callback: Option<Callback>,
) -> DeliveryOutcome {
    let jitter = jitter();
    // The waits count from the end of the attempt, not its start: a `Retry-After` says
    // how long after its answer, and a wait after a timed-out attempt must not be used
    // up by the timeout. Rounded up, so that the next attempt is never early.
    let ended_ms = crate::unix_ms(SystemTime::now()) + 1;
    let (verdict, next) = judge(
        sub.mode,
        delivery.attempts + 1,
        &attempted,
        ended_ms,
        &deliverer.schedule,
        jitter,
        callback.map(|c| {
            (
                c.hash,
                now_ms + deliverer.callback_timeout.as_millis() as u64,
            )
        }),
    );
    if let Some(error) = &attempted.error {
        tracing::warn!(subscription = %sub.name, delivery = %delivery.id(), error = %error, next_attempt_ms = next.map(|n| n.saturating_sub(ended_ms)), "delivery attempt failed");
    } else if let Some(code) = attempted.status.filter(|c| !(200..300).contains(c)) {
        tracing::warn!(subscription = %sub.name, delivery = %delivery.id(), status = code, next_attempt_ms = next.map(|n| n.saturating_sub(ended_ms)), "delivery attempt answered with an error status");
    }
    let body = &attempted.body[..attempted.body.len().min(KEPT_BODY)];
    DeliveryOutcome {
        seq: delivery.seq,
        sub: delivery.sub,
        attempt: DeliveryAttempt {
            at_ms: now_ms,
            duration_ms: attempted.duration.as_millis() as u64,
            status_code: attempted.status,
            error: attempted.error.clone(),
            response_body: (!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned()),
            next_attempt_at_ms: next,
        },
        verdict,
    }
}

/// What an answer means: a 2xx is done (in callback mode, done once the callback comes
/// by `callback`'s deadline); `410` disables the subscription; anything else is tried
/// again on the schedule (a `429` or `503` no sooner than its `Retry-After`), or fails
/// after the last attempt. `attempt` counts this one. Answers the verdict and when the
/// next attempt is due, if there is one.
pub fn judge(
    mode: Mode,
    attempt: u32,
    attempted: &Attempted,
    now_ms: u64,
    schedule: &Schedule,
    jitter: f64,
    callback: Option<([u8; 32], u64)>,
) -> (Verdict, Option<u64>) {
    match attempted.status {
        Some(code) if (200..300).contains(&code) => {
            let verdict = match (mode, callback) {
                (Mode::Callback, Some((hash, deadline_ms))) => {
                    Verdict::AwaitCallback { hash, deadline_ms }
                }
                (Mode::Finish, _) => Verdict::Delivered {
                    result: serde_json::from_slice(&attempted.body).ok(),
                },
                _ => Verdict::Delivered { result: None },
            };
            (verdict, None)
        }
        Some(410) => (Verdict::Gone, None),
        status => {
            let retry_after = match status {
                Some(429 | 503) => attempted.retry_after,
                _ => None,
            };
            match schedule.next_delay(attempt, retry_after, jitter) {
                Some(delay) => {
                    let at_ms = now_ms + delay.as_millis() as u64;
                    (Verdict::Retry { at_ms }, Some(at_ms))
                }
                None => (Verdict::Failed, None),
            }
        }
    }
}

/// A number in [0, 1) for the schedule's jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

/// What an attempt's request says of its event.
struct About<'a> {
    id: &'a str,
    source: &'a str,
    seq: Option<u64>,
    event_type: Option<&'a str>,
    delivery: Option<String>,
}

/// The request of an attempt: its headers (the payload signed the Standard Webhooks
/// way with every current secret, hookgate's own headers, the subscription's).
fn request(
    deliverer: &Deliverer,
    sub: &Subscription,
    about: About<'_>,
    body: &[u8],
    now_ms: u64,
    callback: Option<&Callback>,
) -> Result<Vec<(String, String)>, String> {
    let timestamp = (now_ms / 1000) as i64;
    let secrets = deliverer.secrets(sub, now_ms);
    if secrets.is_empty() {
        return Err("the subscription has no signing secret".into());
    }
    let keys: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let signature = sign::signature(&keys, about.id, timestamp, body)
        .map_err(|e| format!("cannot sign: {e}"))?;
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("webhook-id".to_string(), about.id.to_string()),
        ("webhook-timestamp".to_string(), timestamp.to_string()),
        ("webhook-signature".to_string(), signature),
        ("hookgate-source".to_string(), about.source.to_string()),
    ];
    if let Some(seq) = about.seq {
        headers.push(("hookgate-seq".to_string(), seq.to_string()));
    }
    if let Some(delivery) = about.delivery {
        headers.push(("hookgate-delivery".to_string(), delivery));
    }
    if let Some(event_type) = about.event_type {
        headers.push(("hookgate-event-type".to_string(), event_type.to_string()));
    }
    if let Some(callback) = callback {
        headers.push((
            "hookgate-callback-url".to_string(),
            format!("{}/callbacks/{}", deliverer.callback_base, callback.token),
        ));
    }
    headers.extend(sub.headers.iter().cloned());
    Ok(headers)
}

/// `POST /v1/subscriptions/{id}/test`: a `hookgate.test` event sent now, outside the
/// journal (no delivery, no retry), signed like every delivery.
pub async fn test(deliverer: &Deliverer, sub: &Subscription, id: &str, body: Bytes) -> Attempted {
    let now_ms = crate::unix_ms(SystemTime::now());
    let about = About {
        id,
        source: crate::journal::OPERATIONAL_SOURCE,
        seq: None,
        event_type: Some("hookgate.test"),
        delivery: None,
    };
    match request(deliverer, sub, about, &body, now_ms, None) {
        Ok(headers) => {
            let url = sub.url.as_deref().unwrap_or_default();
            let attempted = deliverer
                .outbound
                .post(url, sub.ca.as_deref(), &headers, body)
                .await;
            tracing::info!(subscription = %sub.name, status = ?attempted.status, error = ?attempted.error, "test event sent");
            attempted
        }
        Err(e) => Attempted {
            error: Some(e),
            ..Attempted::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn schedule() -> Schedule {
        Schedule::new(vec![Duration::from_secs(1), Duration::from_secs(10)])
    }

    fn answered(status: u16, retry_after: Option<u64>, body: &[u8]) -> Attempted {
        Attempted {
            status: Some(status),
            retry_after: retry_after.map(Duration::from_secs),
            body: body.to_vec(),
            ..Attempted::default()
        }
    }

    #[test]
    fn a_2xx_is_done_and_finish_keeps_a_json_answer() {
        let (v, next) = judge(
            Mode::Notify,
            1,
            &answered(204, None, b""),
            0,
            &schedule(),
            0.5,
            None,
        );
        assert!(matches!(v, Verdict::Delivered { result: None }) && next.is_none());
        let (v, _) = judge(
            Mode::Finish,
            1,
            &answered(200, None, br#"{"ok":1}"#),
            0,
            &schedule(),
            0.5,
            None,
        );
        assert!(matches!(v, Verdict::Delivered { result: Some(r) } if r["ok"] == 1));
        let (v, _) = judge(
            Mode::Finish,
            1,
            &answered(200, None, b"not json"),
            0,
            &schedule(),
            0.5,
            None,
        );
        assert!(matches!(v, Verdict::Delivered { result: None }));
        let (v, _) = judge(
            Mode::Callback,
            1,
            &answered(202, None, b""),
            0,
            &schedule(),
            0.5,
            Some(([7; 32], 99)),
        );
        assert!(matches!(v, Verdict::AwaitCallback { hash, deadline_ms: 99 } if hash == [7; 32]));
    }

    #[test]
    fn failures_follow_the_schedule_and_then_fail() {
        let error = Attempted {
            error: Some("connect: refused".into()),
            ..Attempted::default()
        };
        let (v, next) = judge(Mode::Notify, 1, &error, 1_000, &schedule(), 0.5, None);
        assert!(matches!(v, Verdict::Retry { at_ms } if Some(at_ms) == next));
        let at = next.unwrap();
        assert!((1_900..=2_100).contains(&at), "{at}");
        let (v, _) = judge(
            Mode::Notify,
            2,
            &answered(500, None, b""),
            0,
            &schedule(),
            0.5,
            None,
        );
        assert!(matches!(v, Verdict::Retry { .. }));
        let (v, next) = judge(
            Mode::Notify,
            3,
            &answered(500, None, b""),
            0,
            &schedule(),
            0.5,
            None,
        );
        assert!(matches!(v, Verdict::Failed) && next.is_none());
    }

    #[test]
    fn gone_disables_and_retry_after_is_honoured_for_429_and_503_only() {
        let (v, _) = judge(
            Mode::Notify,
            1,
            &answered(410, None, b""),
            0,
            &schedule(),
            0.5,
            None,
        );
        assert!(matches!(v, Verdict::Gone));
        let (_, next) = judge(
            Mode::Notify,
            1,
            &answered(429, Some(30), b""),
            0,
            &schedule(),
            0.5,
            None,
        );
        assert!(next.unwrap() >= 30_000);
        let (_, next) = judge(
            Mode::Notify,
            1,
            &answered(503, Some(30), b""),
            0,
            &schedule(),
            0.5,
            None,
        );
        assert!(next.unwrap() >= 30_000);
        let (_, next) = judge(
            Mode::Notify,
            1,
            &answered(500, Some(30), b""),
            0,
            &schedule(),
            0.5,
            None,
        );
        assert!(next.unwrap() < 30_000);
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
