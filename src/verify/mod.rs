//! Verification: the only stage that can turn an [`Incoming`] request into a
//! [`Verified`] one. Signatures are checked over the raw body bytes, in constant time,
//! against every configured secret (rotation); a signed timestamp must lie within the
//! source's `tolerance` of now, in either direction.
//!
//! The schemes are a closed set, so they are an enum; each variant's rules live in a
//! file of their own, with a `sign` twin that `hookgate send` and the tests use.

mod github;
pub mod gitlab;
mod hmac;
mod linear;
pub mod mac;
mod paddle;
mod pagerduty;
pub mod replay;
mod shopify;
mod slack;
mod stamped;
mod standard_webhooks;
mod stripe;
mod token;
mod twilio;
mod twitch;
mod v0;
mod zoom;

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::config::Secret;
use crate::locator::Locator;

pub use self::hmac::{Encoding, Generic, Template};
pub use github::Github;
pub use token::Token;
pub use twilio::Twilio;

/// A request as it arrived, not yet trusted. Its `Debug` shows header names only, as a
/// header may carry a secret.
pub struct Incoming {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub received_at: SystemTime,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A request whose signature held. Only [`verify`] makes one, so nothing unverified can
/// reach the journal.
#[derive(Debug)]
pub struct Verified {
    incoming: Incoming,
    signed_timestamp: Option<i64>,
    /// The MAC that verified, where the scheme answers it (see [`Github::verify`]).
    signature: Option<[u8; 32]>,
}

impl Verified {
    pub fn incoming(&self) -> &Incoming {
        &self.incoming
    }

    pub fn signed_timestamp(&self) -> Option<i64> {
        self.signed_timestamp
    }

    /// The MAC that verified the request, where it alone could (see [`Github::verify`]).
    pub fn signature(&self) -> Option<&[u8; 32]> {
        self.signature.as_ref()
    }

    pub fn into_incoming(self) -> Incoming {
        self.incoming
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the request has no {header} header")]
    MissingSignature { header: Cow<'static, str> },
    #[error("the {header} header does not match the body under any configured secret")]
    InvalidSignature { header: Cow<'static, str> },
    /// `skew` is now minus the signed time: positive for an old timestamp.
    #[error("the signed timestamp is {}, outside the tolerance of {tolerance} s", age(*skew))]
    TimestampOutOfTolerance { skew: i64, tolerance: u64 },
}

impl VerifyError {
    /// Every value [`VerifyError::code`] can give.
    pub const CODES: [&'static str; 3] = [
        "missing_signature",
        "invalid_signature",
        "timestamp_out_of_tolerance",
    ];

    /// The short reason used in answers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingSignature { .. } => "missing_signature",
            VerifyError::InvalidSignature { .. } => "invalid_signature",
            VerifyError::TimestampOutOfTolerance { .. } => "timestamp_out_of_tolerance",
        }
    }
}

/// What a scheme needs to check one request.
pub struct Check<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The request's query string, for schemes that sign the URL (Twilio).
    pub query: Option<&'a str>,
    pub secrets: &'a [Secret],
}

/// The answer to a provider's handshake: sent instead of journaling, and only once the
/// handshake's own signature has held.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// `200` with this JSON body.
    Json(Vec<u8>),
    /// `200` with this text as `text/plain`.
    Text(String),
}

/// A request being built by `hookgate send` (or a test) for a scheme to sign.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// A query string the scheme needs on the URL (Twilio's `bodySHA256`).
    pub query: Option<String>,
}

impl Outgoing {
    pub fn set(&mut self, name: &str, value: &str) {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("scheme header names are valid");
        let value = HeaderValue::from_str(value).expect("signatures are header-safe text");
        self.headers.insert(name, value);
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Where a scheme finds the event's id, type and signed timestamp when the source does
/// not say otherwise.
pub struct Defaults {
    pub id: Locator,
    pub event_type: Locator,
    /// Whether the scheme signs a timestamp of its own (then `timestamp` is not set).
    pub signs_timestamp: bool,
}

#[derive(Debug)]
pub enum Scheme {
    Github(Github),
    Stripe,
    StandardWebhooks,
    Shopify,
    Paddle,
    PagerDuty,
    Linear,
    Slack,
    Gitlab,
    Twilio(Twilio),
    Twitch,
    Zoom,
    Hmac(Generic),
    Token(Token),
    None,
}

/// Every header a built-in scheme sends its signature or token in. None is ever kept
/// with an event: whoever could read one could post the body again as a new event.
pub const SIGNATURE_HEADERS: &[&str] = &[
    github::SHA256_HEADER,
    github::SHA1_HEADER,
    stripe::HEADER,
    standard_webhooks::SIGNATURE,
    "svix-signature",
    shopify::HEADER,
    shopify::BARE_HEADER,
    paddle::HEADER,
    pagerduty::HEADER,
    linear::HEADER,
    slack::SIGNATURE,
    gitlab::TOKEN,
    twilio::SIGNATURE,
    twitch::SIGNATURE,
    zoom::SIGNATURE,
];

pub const SCHEME_NAMES: &[&str] = &[
    "github",
    "stripe",
    "standard-webhooks",
    "shopify",
    "paddle",
    "pagerduty",
    "linear",
    "slack",
    "gitlab",
    "twilio",
    "twitch",
    "zoom",
    "hmac",
    "token",
    "none",
];

impl Scheme {
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Github(_) => "github",
            Scheme::Stripe => "stripe",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Shopify => "shopify",
            Scheme::Paddle => "paddle",
            Scheme::PagerDuty => "pagerduty",
            Scheme::Linear => "linear",
            Scheme::Slack => "slack",
            Scheme::Gitlab => "gitlab",
            Scheme::Twilio(_) => "twilio",
            Scheme::Twitch => "twitch",
            Scheme::Zoom => "zoom",
            Scheme::Hmac(_) => "hmac",
            Scheme::Token(_) => "token",
            Scheme::None => "none",
        }
    }

    pub fn defaults(&self) -> Defaults {
        match self {
            Scheme::Github(_) => github::defaults(),
            Scheme::Stripe => stripe::defaults(),
            Scheme::StandardWebhooks => standard_webhooks::defaults(),
            Scheme::Shopify => shopify::defaults(),
            Scheme::Paddle => paddle::defaults(),
            Scheme::PagerDuty => pagerduty::defaults(),
            Scheme::Linear => linear::defaults(),
            Scheme::Slack => slack::defaults(),
            Scheme::Gitlab => gitlab::defaults(),
            Scheme::Twilio(_) => twilio::defaults(),
            Scheme::Twitch => twitch::defaults(),
            Scheme::Zoom => zoom::defaults(),
            Scheme::Hmac(generic) => generic.defaults(),
            Scheme::Token(_) | Scheme::None => Defaults {
                id: Locator::None,
                event_type: Locator::None,
                signs_timestamp: false,
            },
        }
    }

    /// Checks the signature; returns the signed timestamp (unix seconds) if the scheme
    /// has one. Tolerance is applied by [`verify`].
    pub fn check(&self, req: &Check) -> Result<Option<i64>, VerifyError> {
        match self {
            Scheme::Github(github) => github.verify(req).map(|_| None),
            Scheme::Stripe => stripe::verify(req).map(Some),
            Scheme::StandardWebhooks => standard_webhooks::verify(req).map(Some),
            Scheme::Shopify => shopify::verify(req).map(|()| None),
            Scheme::Paddle => paddle::verify(req).map(Some),
            Scheme::PagerDuty => pagerduty::verify(req).map(|()| None),
            Scheme::Linear => linear::verify(req).map(Some),
            Scheme::Slack => slack::verify(req).map(Some),
            Scheme::Gitlab => gitlab::verify(req),
            Scheme::Twilio(twilio) => twilio.verify(req).map(|()| None),
            Scheme::Twitch => twitch::verify(req).map(Some),
            Scheme::Zoom => zoom::verify(req).map(Some),
            Scheme::Hmac(generic) => generic.verify(req),
            Scheme::Token(token) => token.verify(req).map(|()| None),
            Scheme::None => Ok(None),
        }
    }

    /// Signs `out` as the provider would, with `secret`, at `now` (unix seconds).
    pub fn sign(&self, secret: &Secret, out: &mut Outgoing, now: i64) {
        match self {
            Scheme::Github(github) => github.sign(secret, out),
            Scheme::Stripe => stripe::sign(secret, out, now),
            Scheme::StandardWebhooks => standard_webhooks::sign(secret, out, now),
            Scheme::Shopify => shopify::sign(secret, out),
            Scheme::Paddle => paddle::sign(secret, out, now),
            Scheme::PagerDuty => pagerduty::sign(secret, out),
            Scheme::Linear => linear::sign(secret, out),
            Scheme::Slack => slack::sign(secret, out, now),
            Scheme::Gitlab => gitlab::sign(secret, out, now),
            Scheme::Twilio(twilio) => twilio.sign(secret, out),
            Scheme::Twitch => twitch::sign(secret, out, now),
            Scheme::Zoom => zoom::sign(secret, out, now),
            Scheme::Hmac(generic) => generic.sign(secret, out, now),
            Scheme::Token(token) => token.sign(secret, out),
            Scheme::None => {}
        }
    }

    /// A provider's handshake, answered instead of journaling: asked only after the
    /// request's signature (and timestamp) have held.
    pub fn handshake(&self, verified: &Verified, secrets: &[Secret]) -> Option<Handshake> {
        let incoming = verified.incoming();
        let req = Check {
            headers: &incoming.headers,
            body: &incoming.body,
            query: incoming.uri.query(),
            secrets,
        };
        match self {
            Scheme::Slack => slack::handshake(&req),
            Scheme::Twitch => twitch::handshake(&req),
            Scheme::Zoom => zoom::handshake(&req),
            _ => None,
        }
    }

    /// Whether a resolved secret has the form this scheme needs; the message never
    /// shows the value.
    pub fn check_secret(&self, secret: &Secret) -> Result<(), String> {
        match self {
            Scheme::StandardWebhooks if !standard_webhooks::usable(secret) => Err(
                "is neither a `whsec_` secret with a base64 key nor a `whpk_` Ed25519 public key"
                    .into(),
            ),
            Scheme::Token(_) => HeaderValue::from_bytes(secret.expose())
                .map(|_| ())
                .map_err(|_| "cannot be sent in a header (it has control characters)".to_string()),
            _ => Ok(()),
        }
    }
}

/// How far a signed time is from now, in words: `3600 s old`, `3600 s in the future`.
fn age(skew: i64) -> String {
    if skew >= 0 {
        format!("{skew} s old")
    } else {
        format!("{} s in the future", skew.unsigned_abs())
    }
}

/// Verifies `incoming` for a source: signature first, then the timestamp tolerance.
pub fn verify(
    scheme: &Scheme,
    secrets: &[Secret],
    tolerance: Duration,
    incoming: Incoming,
    now: i64,
) -> Result<Verified, VerifyError> {
    let check = Check {
        headers: &incoming.headers,
        body: &incoming.body,
        query: incoming.uri.query(),
        secrets,
    };
    let (signed_timestamp, signature) = match scheme {
        Scheme::Github(github) => (None, github.verify(&check)?),
        _ => (scheme.check(&check)?, None),
    };
    if let Some(ts) = signed_timestamp {
        within_tolerance(ts, now, tolerance)?;
    }
    Ok(Verified {
        incoming,
        signed_timestamp,
        signature,
    })
}

pub fn within_tolerance(ts: i64, now: i64, tolerance: Duration) -> Result<(), VerifyError> {
    let skew = now.saturating_sub(ts);
    let tolerance = tolerance.as_secs();
    if skew.unsigned_abs() > tolerance {
        return Err(VerifyError::TimestampOutOfTolerance { skew, tolerance });
    }
    Ok(())
}

/// The first value of a header as text, if present and printable.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the schemes' unit tests.
    use super::*;

    pub fn secrets(values: &[&str]) -> Vec<Secret> {
        values.iter().map(|v| Secret::new(v.as_bytes())).collect()
    }

    pub fn check_with<'a>(out: &'a Outgoing, secrets: &'a [Secret]) -> Check<'a> {
        Check {
            headers: &out.headers,
            body: &out.body,
            query: out.query.as_deref(),
            secrets,
        }
    }

    pub fn request(headers: &[(&str, &str)], body: &[u8]) -> Outgoing {
        let mut out = Outgoing {
            body: body.to_vec(),
            ..Outgoing::default()
        };
        for (name, value) in headers {
            out.set(name, value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scheme that signs a timestamp: signed `offset` seconds from now, checked
    /// with a 300 s tolerance through `verify`.
    #[test]
    fn every_signed_timestamp_is_held_to_the_tolerance_both_ways() {
        const NOW: i64 = 1_700_000_000;
        let sw = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let cases: Vec<(Scheme, &str)> = vec![
            (Scheme::Stripe, "whsec_x"),
            (Scheme::StandardWebhooks, sw),
            (Scheme::Paddle, "pdl_ntf_x"),
            (Scheme::Slack, "slack"),
            (Scheme::Twitch, "twitch"),
            (Scheme::Zoom, "zoom"),
            (Scheme::Linear, "linear"),
            (Scheme::Gitlab, sw),
        ];
        for (scheme, secret) in cases {
            for (offset, ok) in [(-300, true), (300, true), (-301, false), (301, false)] {
                let at = NOW + offset;
                let body = format!(r#"{{"webhookTimestamp":{}}}"#, at * 1000);
                let mut out = Outgoing {
                    body: body.into_bytes(),
                    ..Outgoing::default()
                };
                out.set("webhook-id", "msg_1");
                out.set("idempotency-key", "msg_1");
                out.set("twitch-eventsub-message-id", "m_1");
                let secret = Secret::new(secret);
                scheme.sign(&secret, &mut out, at);
                let incoming = Incoming {
                    method: Method::POST,
                    uri: Uri::from_static("/hooks/x"),
                    headers: out.headers,
                    body: out.body.into(),
                    received_at: SystemTime::now(),
                };
                let result = verify(&scheme, &[secret], Duration::from_secs(300), incoming, NOW);
                match (ok, result) {
                    (true, Ok(v)) => {
                        assert_eq!(v.signed_timestamp(), Some(at), "{}", scheme.name())
                    }
                    (false, Err(e)) => {
                        assert_eq!(e.code(), "timestamp_out_of_tolerance", "{}", scheme.name())
                    }
                    (ok, other) => panic!(
                        "{} at {offset:+}s: expected ok={ok}, got {other:?}",
                        scheme.name()
                    ),
                }
            }
        }
    }

    #[test]
    fn tolerance_is_applied_both_ways_and_inclusive() {
        let tol = Duration::from_secs(300);
        assert!(within_tolerance(1_000, 1_300, tol).is_ok());
        assert!(within_tolerance(1_600, 1_300, tol).is_ok());
        assert_eq!(
            within_tolerance(999, 1_300, tol),
            Err(VerifyError::TimestampOutOfTolerance {
                skew: 301,
                tolerance: 300
            })
        );
        assert_eq!(
            within_tolerance(1_601, 1_300, tol),
            Err(VerifyError::TimestampOutOfTolerance {
                skew: -301,
                tolerance: 300
            })
        );
    }

    #[test]
    fn an_out_of_tolerance_timestamp_says_old_or_future() {
        let old = within_tolerance(1_300 - 3_600, 1_300, Duration::from_secs(300)).unwrap_err();
        assert_eq!(
            old.to_string(),
            "the signed timestamp is 3600 s old, outside the tolerance of 300 s"
        );
        let ahead = within_tolerance(1_300 + 3_600, 1_300, Duration::from_secs(300)).unwrap_err();
        assert_eq!(
            ahead.to_string(),
            "the signed timestamp is 3600 s in the future, outside the tolerance of 300 s"
        );
    }
}
