//! Slack: `X-Slack-Signature: v0=<hex>`, HMAC-SHA256 of
//! `v0:{X-Slack-Request-Timestamp}:{body}` with the app's signing secret. Slack retries
//! after 3 s without an answer (`X-Slack-Retry-Num`), so the event id matters.
//! Handshake: `{"type":"url_verification","challenge":C}` is answered `{"challenge":C}`.

use super::v0::V0;
use super::{Check, Defaults, Handshake, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

pub(crate) const SIGNATURE: &str = "x-slack-signature";
const TIMESTAMP: &str = "x-slack-request-timestamp";

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::json("/event_id"),
        event_type: Locator::FirstOf(vec![Locator::json("/event/type"), Locator::json("/type")]),
        signs_timestamp: true,
    }
}

const SLACK: V0 = V0 {
    signature: SIGNATURE,
    timestamp: TIMESTAMP,
};

pub fn verify(req: &Check) -> Result<i64, VerifyError> {
    SLACK.verify(req)
}

pub fn sign(secret: &Secret, out: &mut Outgoing, now: i64) {
    SLACK.sign(secret, out, now)
}

/// Slack's URL verification: echo the challenge.
pub fn handshake(req: &Check) -> Option<Handshake> {
    #[derive(serde::Deserialize)]
    struct Verification {
        #[serde(rename = "type")]
        kind: String,
        challenge: String,
    }
    let v: Verification = serde_json::from_slice(req.body).ok()?;
    (v.kind == "url_verification").then(|| {
        Handshake::Json(
            serde_json::to_vec(&serde_json::json!({ "challenge": v.challenge }))
                .expect("plain JSON"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const VECTOR: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";

    #[test]
    fn published_vector_verifies_and_signs() {
        let req = request(&[(SIGNATURE, VECTOR), (TIMESTAMP, TS)], BODY.as_bytes());
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET]))),
            Ok(1_531_420_618)
        );
        assert_eq!(
            verify(&check_with(&req, &secrets(&["old", SECRET]))),
            Ok(1_531_420_618)
        );
        let mut out = request(&[], BODY.as_bytes());
        sign(&secrets(&[SECRET])[0], &mut out, 1_531_420_618);
        assert_eq!(out.header(SIGNATURE), Some(VECTOR));
    }

    #[test]
    fn tampered_wrong_secret_moved_timestamp_and_missing_fail() {
        let invalid = Err(VerifyError::InvalidSignature {
            header: SIGNATURE.into(),
        });
        let req = request(&[(SIGNATURE, VECTOR), (TIMESTAMP, TS)], b"token=x");
        assert_eq!(verify(&check_with(&req, &secrets(&[SECRET]))), invalid);
        let req = request(&[(SIGNATURE, VECTOR), (TIMESTAMP, TS)], BODY.as_bytes());
        assert_eq!(verify(&check_with(&req, &secrets(&["nope"]))), invalid);
        let req = request(
            &[(SIGNATURE, VECTOR), (TIMESTAMP, "1531420619")],
            BODY.as_bytes(),
        );
        assert_eq!(verify(&check_with(&req, &secrets(&[SECRET]))), invalid);
        let req = request(&[(SIGNATURE, VECTOR)], BODY.as_bytes());
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET]))),
            Err(VerifyError::MissingSignature {
                header: TIMESTAMP.into()
            })
        );
        let req = request(&[(TIMESTAMP, TS)], BODY.as_bytes());
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET]))),
            Err(VerifyError::MissingSignature {
                header: SIGNATURE.into()
            })
        );
    }

    #[test]
    fn url_verification_is_answered_with_the_challenge() {
        let body = br#"{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        let req = request(&[], body);
        assert_eq!(
            handshake(&check_with(&req, &[])),
            Some(Handshake::Json(
                br#"{"challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}"#.to_vec()
            ))
        );
        let event = request(
            &[],
            br#"{"type":"event_callback","event_id":"Ev1","event":{"type":"message"}}"#,
        );
        assert_eq!(handshake(&check_with(&event, &[])), None);
    }
}
