//! Admission: what the journal needs to know of a verified event, namely its identity
//! (id, type, timestamps), its order key, and which headers are kept with it.
//!
//! What becomes an AMQP short string (255 bytes at most) is bounded here, before anything
//! is journaled, so that no accepted event can be one the broker refuses: long ids and
//! order keys are replaced by their digest (they only need to stay unique), and an event
//! whose type, or the routing key made from it, is too long is refused (422): a digest
//! of a type would route it somewhere nobody bound a queue.

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::journal::{KeptHeaders, NewEvent};
use crate::locator::parse_timestamp;
use crate::receive::Payload;
use crate::source::{routing_key_len, Source};
use crate::verify::{replay, Scheme, Verified};

/// Ids and order keys longer than this are kept as `sha256:<hex>` of their text: they
/// are dedup keys and message ids, and the sender controls their length.
pub const MAX_ID_LEN: usize = 200;
/// The longest event type accepted: it becomes the AMQP `type` and part of the routing
/// key.
pub const MAX_TYPE_LEN: usize = 200;
/// The longest routing key: an AMQP short string.
pub const MAX_ROUTING_KEY_LEN: usize = 255;

/// An event that cannot be forwarded as it is, refused before it is journaled.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("the event type is {len} bytes long; hookgate accepts types of at most {max} bytes")]
    TypeTooLong { len: usize, max: usize },
    #[error(
        "the routing key made from this source's routing_key and the event type is {len} bytes \
         long; AMQP allows at most {max} bytes"
    )]
    RoutingKeyTooLong { len: usize, max: usize },
}

fn bounded(text: String) -> String {
    if text.len() <= MAX_ID_LEN {
        text
    } else {
        content_hash_id(text.as_bytes())
    }
}

/// The id when the source has none: the body's SHA-256, so an identical retry is still
/// recognised.
pub fn content_hash_id(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// Whether a header value carries one of the source's secrets: equal to it, or, for a
/// secret of 8 bytes or more, containing it (`Bearer <secret>` and the like).
fn carries_secret(source: &Source, value: &[u8]) -> bool {
    source.secrets.iter().any(|secret| {
        let secret = secret.expose();
        value == secret || (secret.len() >= 8 && value.windows(secret.len()).any(|w| w == secret))
    })
}

/// Headers kept with the event: those the source's [`HeaderPolicy`] keeps (never a
/// signature, token, credential or transport header), and of those only the ones whose
/// value carries no secret.
///
/// [`HeaderPolicy`]: crate::headers::HeaderPolicy
pub fn kept_headers(source: &Source, headers: &HeaderMap) -> KeptHeaders {
    let mut kept = KeptHeaders::default();
    for (name, value) in headers {
        if !source.headers.keeps_header(name) || carries_secret(source, value.as_bytes()) {
            continue;
        }
        if kept.is_empty() {
            // Room for all of them at the first: one allocation for the text, however
            // many are kept (and none when none is).
            let bytes = headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum();
            kept = KeptHeaders::with_capacity(headers.len(), bytes);
        }
        // Visible ASCII (nearly every value) is checked more cheaply than UTF-8.
        match value.to_str() {
            Ok(text) => kept.push(name.as_str(), text),
            Err(_) => kept.push(name.as_str(), &String::from_utf8_lossy(value.as_bytes())),
        }
    }
    kept
}

/// Builds the journal entry for a verified request and its parsed payload.
pub fn admit(
    source: &Source,
    verified: Verified,
    payload: Payload,
) -> Result<NewEvent, AdmitError> {
    let signed_ts = verified.signed_timestamp();
    let signature = verified.signature().copied();
    let incoming = verified.into_incoming();
    let headers = &incoming.headers;
    let value = Some(&payload.value);
    // GitLab with a `whsec_` secret signs `webhook-id`: that id, not the unsigned
    // `Idempotency-Key`, is the event's.
    let signed_gitlab_id = match (&source.scheme, signed_ts) {
        (Scheme::Gitlab, Some(_)) => headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        _ => None,
    };
    let id = signed_gitlab_id
        .or_else(|| source.id.find(headers, value))
        .map(bounded)
        .unwrap_or_else(|| content_hash_id(&incoming.body));
    let replay_key = source
        .dedup_signed
        .then(|| replay::replay_key(&source.scheme, &incoming, signature.as_ref()))
        .flatten();
    let event_type = source.event_type.find(headers, value);
    check_type(source, event_type.as_deref())?;
    let event_ts = signed_ts.or_else(|| {
        source
            .timestamp
            .as_ref()
            .and_then(|l| l.find(headers, value))
            .and_then(|t| parse_timestamp(&t))
    });
    // An event without an order key or a timestamp cannot be ordered, so it is admitted
    // without being compared.
    let order = source.order.as_ref().and_then(|rule| {
        let key = bounded(rule.key.find(headers, value)?);
        let ts = match &rule.timestamp {
            Some(l) => l.find(headers, value).and_then(|t| parse_timestamp(&t))?,
            None => event_ts?,
        };
        Some((key, ts))
    });
    let received_at_ms = crate::unix_ms(incoming.received_at);
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    Ok(NewEvent {
        source: source.name.clone(),
        id,
        event_type,
        received_at_ms,
        event_ts,
        order,
        content_type,
        headers: kept_headers(source, headers),
        client_identity: None,
        body: incoming.body,
        normalised: payload.converted,
        replay_key,
    })
}

/// Refuses a type that could not be forwarded: too long itself, or making a routing key
/// longer than AMQP allows.
fn check_type(source: &Source, event_type: Option<&str>) -> Result<(), AdmitError> {
    if let Some(kind) = event_type {
        if kind.len() > MAX_TYPE_LEN {
            return Err(AdmitError::TypeTooLong {
                len: kind.len(),
                max: MAX_TYPE_LEN,
            });
        }
    }
    let len = routing_key_len(&source.routing_key, &source.name, event_type);
    if len > MAX_ROUTING_KEY_LEN {
        return Err(AdmitError::RoutingKeyTooLong {
            len,
            max: MAX_ROUTING_KEY_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Secret};
    use crate::verify::Outgoing;

    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// One source per scheme family, each with the header its signature or token
    /// travels in.
    const FAMILIES: &[(&str, &str, &str)] = &[
        ("github", "secrets = [\"gh-secret\"]", "x-hub-signature-256"),
        ("stripe", "secrets = [\"whsec_stripe\"]", "stripe-signature"),
        (
            "standard-webhooks",
            "secrets = [\"WHSEC\"]",
            "webhook-signature",
        ),
        (
            "shopify",
            "secrets = [\"shop-secret\"]",
            "x-shopify-hmac-sha256",
        ),
        ("paddle", "secrets = [\"pdl-secret\"]", "paddle-signature"),
        (
            "pagerduty",
            "secrets = [\"pd-secret\"]",
            "x-pagerduty-signature",
        ),
        ("linear", "secrets = [\"lin-secret\"]", "linear-signature"),
        ("slack", "secrets = [\"slack-secret\"]", "x-slack-signature"),
        ("gitlab", "secrets = [\"gl-token\"]", "x-gitlab-token"),
        ("gitlab", "secrets = [\"WHSEC\"]", "webhook-signature"),
        (
            "twilio",
            "secrets = [\"tw-secret\"]\npublic_url = \"https://example.com/hooks/s\"",
            "x-twilio-signature",
        ),
        (
            "twitch",
            "secrets = [\"twitch-secret\"]",
            "twitch-eventsub-message-signature",
        ),
        ("zoom", "secrets = [\"zoom-secret\"]", "x-zm-signature"),
        (
            "hmac",
            "secrets = [\"h-secret\"]\nsignature_header = \"X-Body-Sig\"",
            "x-body-sig",
        ),
        (
            "token",
            "secrets = [\"tok-secret\"]\ntoken_header = \"X-Hook-Token\"",
            "x-hook-token",
        ),
    ];

    fn source(scheme: &str, extra: &str) -> Source {
        let text = format!(
            "[[sources]]\nname = \"s\"\nscheme = \"{scheme}\"\n{}\n",
            extra.replace("WHSEC", WHSEC)
        );
        let config = Config::parse(&text).unwrap();
        Source::build(&config.sources[0], &config.server).unwrap()
    }

    #[test]
    fn no_scheme_keeps_its_signature_or_token_header() {
        let now = crate::gateway::unix_seconds(std::time::SystemTime::now());
        for (scheme, extra, signature) in FAMILIES {
            let source = source(scheme, extra);
            let mut out = Outgoing {
                body: br#"{"id":"evt_1","type":"t"}"#.to_vec(),
                ..Outgoing::default()
            };
            out.set("content-type", "application/json");
            out.set("user-agent", "provider/1");
            out.set("cookie", "session=abc");
            out.set("authorization", "Basic dXNlcjpwYXNz");
            let secret = Secret::new(source.secrets[0].expose());
            source.scheme.sign(&secret, &mut out, now);
            let sent = out.header(signature).map(str::to_string);
            assert!(sent.is_some(), "{scheme}: signed in {signature}");
            let kept = kept_headers(&source, &out.headers);
            let names: Vec<&str> = kept.iter().map(|(n, _)| n).collect();
            assert!(names.contains(&"user-agent"), "{scheme}: {names:?}");
            for dropped in [*signature, "cookie", "authorization"] {
                assert!(!names.contains(&dropped), "{scheme} kept {dropped}");
            }
            assert!(
                kept.iter().all(|(_, v)| Some(v) != sent.as_deref()),
                "{scheme}: the signature is kept under another name"
            );
        }
    }

    #[test]
    fn a_type_that_cannot_be_forwarded_is_refused() {
        let mut source = source("github", "secrets = [\"gh-secret\"]");
        assert!(check_type(&source, Some(&"t".repeat(MAX_TYPE_LEN))).is_ok());
        assert!(check_type(&source, None).is_ok());
        let e = check_type(&source, Some(&"t".repeat(300))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the event type is 300 bytes long; hookgate accepts types of at most 200 bytes"
        );
        source.routing_key = format!("{}.{{source}}.{{type}}", "r".repeat(100));
        let e = check_type(&source, Some(&"t".repeat(200))).unwrap_err();
        assert!(e.to_string().contains("is 303 bytes long"), "{e}");
    }

    #[test]
    fn long_ids_are_replaced_by_their_hash() {
        let short = "a".repeat(MAX_ID_LEN);
        assert_eq!(bounded(short.clone()), short);
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(bounded(long.clone()), content_hash_id(long.as_bytes()));
    }

    #[test]
    fn content_hash_is_stable_and_prefixed() {
        let id = content_hash_id(b"hello");
        assert_eq!(
            id,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
