//! The one place where outcomes and errors become HTTP answers (SPEC §6): a JSON body,
//! `{"status":…}` on success and `{"error":code,"message":sentence}` otherwise.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::admit::AdmitError;
use crate::journal::{JournalError, Outcome};
use crate::receive::ReceiveError;
use crate::verify::{Handshake, VerifyError};

pub type Body = Full<Bytes>;

/// Everything that stops a request short of the journal.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("there is no source named `{0}`")]
    UnknownSource(String),
    #[error("nothing is served at this path; providers post to /hooks/SOURCE")]
    NotFound,
    #[error("method {method} is not allowed here; use {allow}")]
    MethodNotAllowed { method: String, allow: String },
    #[error(
        "this source accepts only clients with an allowed certificate, and none was presented"
    )]
    ClientCertificateRequired,
    #[error("the client certificate's names are not allowed for this source")]
    ClientNotAllowed,
    #[error("this source takes no more requests for now; retry in {retry_after}s")]
    RateLimited { retry_after: u32 },
    #[error("too many requests from this address failed verification; retry in {retry_after}s")]
    AddressRateLimited { retry_after: u32 },
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the journal did not answer in time")]
    JournalTimeout,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::UnknownSource(_) | Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::RateLimited { .. } | Rejection::AddressRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Rejection::ClientCertificateRequired | Rejection::ClientNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Rejection::Receive(e) => match e {
                ReceiveError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ReceiveError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ReceiveError::MalformedBody(_) | ReceiveError::BodyFailed => {
                    StatusCode::BAD_REQUEST
                }
                ReceiveError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
                ReceiveError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            },
            Rejection::Verify(_) => StatusCode::UNAUTHORIZED,
            Rejection::Admit(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::Journal(_) | Rejection::JournalTimeout => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Rejection::UnknownSource(_) => "unknown_source",
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed { .. } => "method_not_allowed",
            Rejection::RateLimited { .. } | Rejection::AddressRateLimited { .. } => "rate_limited",
            Rejection::ClientCertificateRequired => "client_certificate_required",
            Rejection::ClientNotAllowed => "client_not_allowed",
            Rejection::Receive(e) => match e {
                ReceiveError::PayloadTooLarge { .. } => "payload_too_large",
                ReceiveError::UnsupportedMediaType(_) => "unsupported_media_type",
                ReceiveError::MalformedBody(_) | ReceiveError::BodyFailed => "malformed_body",
                ReceiveError::BodyTimeout => "request_timeout",
                ReceiveError::Busy => "unavailable",
            },
            Rejection::Verify(e) => e.code(),
            Rejection::Admit(_) => "field_too_long",
            Rejection::Journal(_) | Rejection::JournalTimeout => "unavailable",
        }
    }

    /// How long a provider should wait before retrying a 503, in seconds.
    fn retry_after(&self) -> Option<u32> {
        match self {
            Rejection::RateLimited { retry_after }
            | Rejection::AddressRateLimited { retry_after } => Some(*retry_after),
            Rejection::Journal(
                JournalError::BacklogFull { .. }
                | JournalError::BacklogBytesFull { .. }
                | JournalError::DiskLow(_),
            ) => Some(30),
            Rejection::Journal(_)
            | Rejection::JournalTimeout
            | Rejection::Receive(ReceiveError::Busy) => Some(5),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

pub fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn error_response(status: StatusCode, code: &str, message: String) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorBody {
        error: code,
        message,
    })
    .expect("plain JSON");
    json(status, body)
}

pub fn rejected(rejection: &Rejection) -> Response<Body> {
    let mut response = error_response(rejection.status(), rejection.code(), rejection.to_string());
    if let Rejection::MethodNotAllowed { allow, .. } = rejection {
        if let Ok(v) = HeaderValue::from_str(allow) {
            response.headers_mut().insert(header::ALLOW, v);
        }
    }
    if let Some(seconds) = rejection.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

pub fn handshake(handshake: Handshake) -> Response<Body> {
    match handshake {
        Handshake::Json(body) => json(StatusCode::OK, body),
        Handshake::Text(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
    }
}

/// The answer to a journaled event: `{"status":…,"id":…,"seq":…}`, the bytes serde_json
/// writes for such a struct, written by hand (serde_json's path cost about 570
/// instructions more a request, BENCHMARKS.md).
pub fn outcome(outcome: Outcome, id: &str) -> Response<Body> {
    const STATUS: &[u8] = b"{\"status\":\"";
    const ID: &[u8] = b"\",\"id\":";
    const SEQ: &[u8] = b",\"seq\":";
    let status = outcome.status().as_bytes();
    let mut digits = itoa::Buffer::new();
    let seq = digits.format(outcome.seq()).as_bytes();
    // Exactly its length when the id needs no escape (the quotes are the 2): a `Vec` with
    // room to spare takes a second allocation to become `Bytes`.
    let len = STATUS.len() + status.len() + ID.len() + id.len() + 2 + SEQ.len() + seq.len() + 1;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(STATUS);
    body.extend_from_slice(status);
    body.extend_from_slice(ID);
    push_json_string(&mut body, id);
    body.extend_from_slice(SEQ);
    body.extend_from_slice(seq);
    body.push(b'}');
    // An escaped id made it longer: trimmed, for the same reason.
    body.shrink_to_fit();
    json(StatusCode::OK, body)
}

/// Appends `text` as a JSON string: as it is when nothing in it is escaped (serde_json
/// escapes only `"`, `\` and control characters below 0x20; an id nearly never holds
/// one), otherwise as serde_json writes it.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, text).expect("a string is JSON");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// What the answer was serialized from before it was written by hand.
    #[derive(Serialize)]
    struct SuccessBody<'a> {
        status: &'a str,
        id: &'a str,
        seq: u64,
    }

    /// The hand-written success answer is byte for byte what serde_json writes, for ids
    /// that need escaping and ids that do not.
    #[tokio::test]
    async fn a_success_answer_is_serde_jsons() {
        let mut ids: Vec<String> = [
            "",
            "evt_1",
            "2f7c1b1e-8c6a-4c1f-9d7e-0a1b2c3d4e5f",
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "new\nline",
            "del\u{7f}",
            "é ü 日本 😀",
            "</script>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        ids.extend((0u8..=0x7f).map(|b| format!("a{}b", b as char)));
        let outcomes = [
            Outcome::Accepted(0),
            Outcome::Duplicate(7),
            Outcome::Stale(u64::MAX),
        ];
        for id in &ids {
            for outcome in outcomes {
                let answer = super::outcome(outcome, id);
                assert_eq!(answer.status(), StatusCode::OK);
                let body = answer.into_body().collect().await.unwrap().to_bytes();
                let expected = serde_json::to_vec(&SuccessBody {
                    status: outcome.status(),
                    id,
                    seq: outcome.seq(),
                })
                .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&body),
                    String::from_utf8_lossy(&expected),
                    "{id:?}"
                );
            }
        }
    }
}
