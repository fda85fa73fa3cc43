//! Twitch EventSub: `Twitch-Eventsub-Message-Signature: sha256=<hex>`, HMAC-SHA256 of
//! `{message id}{timestamp}{body}` with no separators; the timestamp is RFC 3339 text and
//! is signed as sent. Handshake: a `webhook_callback_verification` message is answered
//! with its `challenge` as `text/plain`. Revocation notices are ordinary events.

use super::mac::{self, Algorithm};
use super::{header, Check, Defaults, Handshake, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::{parse_timestamp, Locator};

const ID: &str = "twitch-eventsub-message-id";
const TIMESTAMP: &str = "twitch-eventsub-message-timestamp";
pub(crate) const SIGNATURE: &str = "twitch-eventsub-message-signature";
const TYPE: &str = "twitch-eventsub-message-type";

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::header(ID),
        event_type: Locator::json("/subscription/type"),
        signs_timestamp: true,
    }
}

pub fn verify(req: &Check) -> Result<i64, VerifyError> {
    let missing = |h: &'static str| VerifyError::MissingSignature { header: h.into() };
    let value = header(req.headers, SIGNATURE).ok_or(missing(SIGNATURE))?;
    let id = header(req.headers, ID).ok_or(missing(ID))?;
    let ts_text = header(req.headers, TIMESTAMP).ok_or(missing(TIMESTAMP))?;
    let invalid = VerifyError::InvalidSignature {
        header: SIGNATURE.into(),
    };
    let claim = value
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(invalid.clone())?;
    let parts: [&[u8]; 3] = [id.as_bytes(), ts_text.as_bytes(), req.body];
    let keys = req.secrets.iter().map(|s| s.expose());
    if !mac::any_matches(Algorithm::Sha256, keys, &parts, &[claim]) {
        return Err(invalid);
    }
    parse_timestamp(ts_text).ok_or(invalid)
}

pub fn sign(secret: &Secret, out: &mut Outgoing, now: i64) {
    let ts = time::OffsetDateTime::from_unix_timestamp(now)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a unix time formats as RFC 3339");
    let id = out.header(ID).unwrap_or_default().to_string();
    let parts: [&[u8]; 3] = [id.as_bytes(), ts.as_bytes(), &out.body];
    let sig = mac::sign(Algorithm::Sha256, secret.expose(), &parts);
    out.set(TIMESTAMP, &ts);
    out.set(SIGNATURE, &format!("sha256={}", hex::encode(sig)));
    if out.header(TYPE).is_none() {
        out.set(TYPE, "notification");
    }
}

pub fn handshake(req: &Check) -> Option<Handshake> {
    if header(req.headers, TYPE)? != "webhook_callback_verification" {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Challenge {
        challenge: String,
    }
    let c: Challenge = serde_json::from_slice(req.body).ok()?;
    Some(Handshake::Text(c.challenge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    const BODY: &[u8] = br#"{"subscription":{"type":"channel.follow"},"event":{"user_id":"1"}}"#;

    fn signed(secret: &str, body: &[u8]) -> Outgoing {
        let mut out = request(&[(ID, "e0d6ec10-91d1-4cdf-9c0e-1a2b3c4d5e6f")], body);
        sign(&secrets(&[secret])[0], &mut out, 1_700_000_000);
        out
    }

    #[test]
    fn signs_id_timestamp_and_body_without_separators() {
        let out = signed("twitch-secret", BODY);
        assert_eq!(out.header(TIMESTAMP), Some("2023-11-14T22:13:20Z"));
        let expected = mac::sign(
            Algorithm::Sha256,
            b"twitch-secret",
            &[
                b"e0d6ec10-91d1-4cdf-9c0e-1a2b3c4d5e6f2023-11-14T22:13:20Z",
                BODY,
            ],
        );
        assert_eq!(
            out.header(SIGNATURE),
            Some(format!("sha256={}", hex::encode(expected)).as_str())
        );
        assert_eq!(
            verify(&check_with(&out, &secrets(&["old", "twitch-secret"]))),
            Ok(1_700_000_000)
        );
    }

    #[test]
    fn fractional_timestamps_are_signed_as_sent() {
        let mut out = request(
            &[(ID, "m1"), (TIMESTAMP, "2023-11-14T22:13:20.123456789Z")],
            BODY,
        );
        let sig = mac::sign(
            Algorithm::Sha256,
            b"k",
            &[b"m12023-11-14T22:13:20.123456789Z", BODY],
        );
        out.set(SIGNATURE, &format!("sha256={}", hex::encode(sig)));
        assert_eq!(
            verify(&check_with(&out, &secrets(&["k"]))),
            Ok(1_700_000_000)
        );
    }

    #[test]
    fn tampered_wrong_secret_and_missing_fail() {
        let out = signed("twitch-secret", BODY);
        assert!(verify(&check_with(&out, &secrets(&["nope"]))).is_err());
        let mut tampered = request(&[], b"{}");
        tampered.headers = out.headers.clone();
        assert!(verify(&check_with(&tampered, &secrets(&["twitch-secret"]))).is_err());
        let mut no_id = signed("twitch-secret", BODY);
        no_id.headers.remove(ID);
        assert_eq!(
            verify(&check_with(&no_id, &secrets(&["twitch-secret"]))),
            Err(VerifyError::MissingSignature { header: ID.into() })
        );
    }

    #[test]
    fn the_callback_challenge_is_answered_as_text() {
        let body = br#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"type":"channel.follow"}}"#;
        let mut out = request(&[(ID, "m2"), (TYPE, "webhook_callback_verification")], body);
        sign(&secrets(&["k"])[0], &mut out, 1_700_000_000);
        assert_eq!(
            handshake(&check_with(&out, &[])),
            Some(Handshake::Text("pogchamp-kappa-360noscope-vohiyo".into()))
        );
        let notification = signed("k", BODY);
        assert_eq!(handshake(&check_with(&notification, &[])), None);
    }
}
