//! Admission: what the journal needs to know of a verified event, namely its identity
//! (id, type, timestamps), its order key, and which headers are kept with it.

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::journal::NewEvent;
use crate::locator::parse_timestamp;
use crate::receive::Payload;
use crate::source::Source;
use crate::verify::Verified;

/// Ids and order keys longer than this are kept as `sha256:<hex>` of their text: they
/// are dedup keys and message ids, and the sender controls their length.
pub const MAX_ID_LEN: usize = 200;

fn bounded(text: String) -> String {
    if text.len() <= MAX_ID_LEN {
        text
    } else {
        content_hash_id(text.as_bytes())
    }
}

/// Hop-by-hop and transport headers, never kept with an event.
const TRANSPORT: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
    "expect",
];

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

/// Headers kept with the event: everything but transport headers, the headers a scheme
/// sends its secret in, and any header whose value carries a secret.
pub fn kept_headers(source: &Source, headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, value)| {
            !TRANSPORT.contains(&name.as_str())
                && !source.secret_headers.contains(name)
                && !carries_secret(source, value.as_bytes())
        })
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Builds the journal entry for a verified request and its parsed payload.
pub fn admit(source: &Source, verified: Verified, payload: Payload) -> NewEvent {
    let signed_ts = verified.signed_timestamp();
    let incoming = verified.into_incoming();
    let headers = &incoming.headers;
    let value = Some(&payload.value);
    let id = source
        .id
        .find(headers, value)
        .map(bounded)
        .unwrap_or_else(|| content_hash_id(&incoming.body));
    let event_type = source.event_type.find(headers, value);
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
    let normalised = (payload.json != incoming.body).then_some(payload.json);
    NewEvent {
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
        normalised,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
