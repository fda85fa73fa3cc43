//! PagerDuty (v3 webhooks): `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>]`, HMAC-SHA256 of
//! the body; one signature per secret the subscription has, any match accepts. No
//! timestamp is signed.

use super::mac::{self, Algorithm};
use super::{header, Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

pub(crate) const HEADER: &str = "x-pagerduty-signature";

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::json("/event/id"),
        event_type: Locator::json("/event/event_type"),
        signs_timestamp: false,
    }
}

pub fn verify(req: &Check) -> Result<(), VerifyError> {
    let value = header(req.headers, HEADER).ok_or(VerifyError::MissingSignature {
        header: HEADER.into(),
    })?;
    let claims: Vec<Vec<u8>> = value
        .split(',')
        .filter_map(|s| s.trim().strip_prefix("v1="))
        .filter_map(|sig| hex::decode(sig).ok())
        .collect();
    let keys = req.secrets.iter().map(|s| s.expose());
    mac::any_matches(Algorithm::Sha256, keys, &[req.body], &claims)
        .then_some(())
        .ok_or(VerifyError::InvalidSignature {
            header: HEADER.into(),
        })
}

pub fn sign(secret: &Secret, out: &mut Outgoing) {
    let sig = mac::sign(Algorithm::Sha256, secret.expose(), &[&out.body]);
    out.set(HEADER, &format!("v1={}", hex::encode(sig)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    #[test]
    fn any_listed_signature_may_match() {
        let body = br#"{"event":{"id":"01ABC","event_type":"incident.triggered"}}"#;
        let expected = hex::encode(mac::sign(Algorithm::Sha256, b"pd-secret", &[body]));
        let value = format!("v1={},v1={expected}", "ab".repeat(32));
        let req = request(&[("X-PagerDuty-Signature", &value)], body);
        assert_eq!(verify(&check_with(&req, &secrets(&["pd-secret"]))), Ok(()));
        assert_eq!(
            verify(&check_with(&req, &secrets(&["x", "pd-secret"]))),
            Ok(())
        );
        assert!(verify(&check_with(&req, &secrets(&["other"]))).is_err());
        let tampered = request(&[("X-PagerDuty-Signature", &value)], b"{}");
        assert!(verify(&check_with(&tampered, &secrets(&["pd-secret"]))).is_err());
        let missing = request(&[], body);
        assert_eq!(
            verify(&check_with(&missing, &secrets(&["pd-secret"]))),
            Err(VerifyError::MissingSignature {
                header: HEADER.into()
            })
        );
        let mut out = request(&[], body);
        sign(&secrets(&["pd-secret"])[0], &mut out);
        assert_eq!(out.header(HEADER), Some(format!("v1={expected}").as_str()));
    }
}
