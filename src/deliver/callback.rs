//! `POST /callbacks/{token}` on the ingest listener (SPEC §10): a task started by a
//! `callback` subscription reports how it ended. The token is single-use and found by
//! its SHA-256 (compared in constant time by the journal); the callback is journaled
//! (its `{type}.finished` event synced) before it is answered `200`.

use std::time::SystemTime;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::attempt::token_hash;
use crate::answer::{error_response, json, Body};
use crate::journal::{CallbackAnswer, Journal};

/// The most a callback's body may hold.
const MAX_CALLBACK_BODY: usize = 256 * 1024;

pub async fn handle<B>(journal: &Journal, token: &str, request: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if request.method() != Method::POST {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} is not allowed on a callback URL; use POST",
                request.method()
            ),
        );
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return response;
    }
    let body = match http_body_util::Limited::new(request.into_body(), MAX_CALLBACK_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("a callback may hold at most {MAX_CALLBACK_BODY} bytes"),
            )
        }
    };
    let (succeeded, result) = match parse(&body) {
        Ok(parsed) => parsed,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, "malformed_body", message),
    };
    let now_ms = crate::unix_ms(SystemTime::now());
    match journal
        .callback(token_hash(token), succeeded, result, now_ms)
        .await
    {
        Ok(CallbackAnswer::Finished { delivery }) => {
            tracing::info!(delivery = %delivery, succeeded, "callback received");
            let body = json!({"status": "finished", "delivery": delivery});
            json(
                StatusCode::OK,
                serde_json::to_vec(&body).expect("plain JSON"),
            )
        }
        Ok(CallbackAnswer::Unknown) => error_response(
            StatusCode::NOT_FOUND,
            "unknown_callback",
            "no task awaits this callback: it was used already, timed out, or never issued".into(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "a callback could not be journaled");
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
            response
        }
    }
}

/// `{"status":"succeeded"|"failed","result":…}`: whether the task succeeded, and its
/// result.
pub fn parse(body: &[u8]) -> Result<(bool, Option<Value>), String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the callback is not JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("the callback must be a JSON object".into());
    };
    let succeeded = match fields.get("status").and_then(Value::as_str) {
        Some("succeeded") => true,
        Some("failed") => false,
        _ => return Err("the callback's `status` must be \"succeeded\" or \"failed\"".into()),
    };
    Ok((succeeded, fields.remove("result")))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_callback_says_how_the_task_ended() {
        assert_eq!(parse(br#"{"status":"succeeded"}"#).unwrap(), (true, None));
        let (ok, result) = parse(br#"{"status":"failed","result":{"code":3}}"#).unwrap();
        assert!(!ok && result.unwrap()["code"] == 3);
        for bad in [&b"nope"[..], b"[]", br#"{"status":"done"}"#, br#"{}"#] {
            assert!(parse(bad).is_err());
        }
    }
}
