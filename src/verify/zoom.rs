//! Zoom: `x-zm-signature: v0=<hex>`, HMAC-SHA256 of `v0:{x-zm-request-timestamp}:{body}`
//! with the app's secret token. Handshake: `endpoint.url_validation` is answered
//! `{"plainToken":P,"encryptedToken":hex(HMAC-SHA256(secret, P))}` with the secret that
//! signed the request.

use super::mac::{self, Algorithm};
use super::v0::V0;
use super::{Check, Defaults, Handshake, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

pub(crate) const SIGNATURE: &str = "x-zm-signature";

const ZOOM: V0 = V0 {
    signature: SIGNATURE,
    timestamp: "x-zm-request-timestamp",
};

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::None,
        event_type: Locator::json("/event"),
        signs_timestamp: true,
    }
}

pub fn verify(req: &Check) -> Result<i64, VerifyError> {
    ZOOM.verify(req)
}

pub fn sign(secret: &Secret, out: &mut Outgoing, now: i64) {
    ZOOM.sign(secret, out, now)
}

pub fn handshake(req: &Check) -> Option<Handshake> {
    #[derive(serde::Deserialize)]
    struct Validation {
        event: String,
        payload: Plain,
    }
    #[derive(serde::Deserialize)]
    struct Plain {
        #[serde(rename = "plainToken")]
        plain_token: String,
    }
    let v: Validation = serde_json::from_slice(req.body).ok()?;
    if v.event != "endpoint.url_validation" {
        return None;
    }
    let signer = req.secrets.iter().find(|secret| {
        let one = Check {
            secrets: std::slice::from_ref(*secret),
            ..*req
        };
        ZOOM.verify(&one).is_ok()
    })?;
    let token = mac::sign(
        Algorithm::Sha256,
        signer.expose(),
        &[v.payload.plain_token.as_bytes()],
    );
    let answer = serde_json::json!({
        "plainToken": v.payload.plain_token,
        "encryptedToken": hex::encode(token),
    });
    Some(Handshake::Json(
        serde_json::to_vec(&answer).expect("plain JSON"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    #[test]
    fn signs_verifies_with_rotation_and_refuses_tampering() {
        let body = br#"{"event":"meeting.started","payload":{"object":{"id":"1"}}}"#;
        let mut out = request(&[], body);
        sign(&secrets(&["zoom-secret"])[0], &mut out, 1_700_000_000);
        let expected = mac::sign(
            Algorithm::Sha256,
            b"zoom-secret",
            &[b"v0:1700000000:", body],
        );
        assert_eq!(
            out.header("x-zm-signature"),
            Some(format!("v0={}", hex::encode(expected)).as_str())
        );
        assert_eq!(
            verify(&check_with(&out, &secrets(&["old", "zoom-secret"]))),
            Ok(1_700_000_000)
        );
        assert!(verify(&check_with(&out, &secrets(&["other"]))).is_err());
        let mut tampered = request(&[], b"{}");
        tampered.headers = out.headers.clone();
        assert!(verify(&check_with(&tampered, &secrets(&["zoom-secret"]))).is_err());
        let bare = request(&[], body);
        assert_eq!(
            verify(&check_with(&bare, &secrets(&["zoom-secret"]))),
            Err(VerifyError::MissingSignature {
                header: "x-zm-signature".into()
            })
        );
    }

    #[test]
    fn url_validation_uses_the_secret_that_signed() {
        let body = br#"{"event":"endpoint.url_validation","payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"}}"#;
        let mut out = request(&[], body);
        sign(&secrets(&["second"])[0], &mut out, 1_700_000_000);
        let keys = secrets(&["first", "second"]);
        let answer = handshake(&check_with(&out, &keys)).unwrap();
        let expected = hex::encode(mac::sign(
            Algorithm::Sha256,
            b"second",
            &[b"qgg8vlvZRS6UYooatFL8Aw"],
        ));
        assert_eq!(
            answer,
            Handshake::Json(
                format!(
                    r#"{{"plainToken":"qgg8vlvZRS6UYooatFL8Aw","encryptedToken":"{expected}"}}"#
                )
                .into_bytes()
            )
        );
        let event = request(&[], br#"{"event":"meeting.started","payload":{}}"#);
        assert_eq!(handshake(&check_with(&event, &keys)), None);
    }
}
