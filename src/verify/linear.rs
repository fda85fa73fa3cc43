//! Linear: `Linear-Signature: <hex HMAC-SHA256(body)>`, no prefix. The timestamp is the
//! body's `webhookTimestamp` (milliseconds), covered by the signature over the body; it
//! is read once the signature holds and must be within the source's tolerance.

use super::mac::{self, Algorithm};
use super::{header, Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

pub(crate) const HEADER: &str = "linear-signature";

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::header("linear-delivery"),
        // The body's `type` is signed; the `Linear-Event` header (the same value) is not,
        // so it does not choose the routing.
        event_type: Locator::Json("/type".into()),
        signs_timestamp: true,
    }
}

pub fn verify(req: &Check) -> Result<i64, VerifyError> {
    let value = header(req.headers, HEADER).ok_or(VerifyError::MissingSignature {
        header: HEADER.into(),
    })?;
    let invalid = VerifyError::InvalidSignature {
        header: HEADER.into(),
    };
    let claimed = hex::decode(value).map_err(|_| invalid.clone())?;
    let ok = req
        .secrets
        .iter()
        .any(|s| mac::matches(Algorithm::Sha256, s.expose(), &[req.body], &claimed));
    if !ok {
        return Err(invalid);
    }
    #[derive(serde::Deserialize)]
    struct Stamped {
        #[serde(rename = "webhookTimestamp")]
        webhook_timestamp: i64,
    }
    serde_json::from_slice::<Stamped>(req.body)
        .map(|s| s.webhook_timestamp.div_euclid(1000))
        .map_err(|_| invalid)
}

pub fn sign(secret: &Secret, out: &mut Outgoing) {
    let sig = mac::sign(Algorithm::Sha256, secret.expose(), &[&out.body]);
    out.set(HEADER, &hex::encode(sig));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    const BODY: &[u8] = br#"{"action":"create","type":"Issue","webhookTimestamp":1700000000123}"#;

    #[test]
    fn signs_verifies_and_reads_the_millisecond_timestamp() {
        let keys = secrets(&["lin_wh_secret"]);
        let mut out = request(&[], BODY);
        sign(&keys[0], &mut out);
        let expected = hex::encode(mac::sign(Algorithm::Sha256, b"lin_wh_secret", &[BODY]));
        assert_eq!(out.header(HEADER), Some(expected.as_str()));
        assert_eq!(verify(&check_with(&out, &keys)), Ok(1_700_000_000));
        assert_eq!(
            verify(&check_with(&out, &secrets(&["old", "lin_wh_secret"]))),
            Ok(1_700_000_000)
        );
        assert!(verify(&check_with(&out, &secrets(&["other"]))).is_err());
    }

    #[test]
    fn tampered_missing_and_undated_fail() {
        let keys = secrets(&["k"]);
        let mut out = request(&[], BODY);
        sign(&keys[0], &mut out);
        let mut tampered = request(&[], b"{}");
        tampered.headers = out.headers.clone();
        assert!(verify(&check_with(&tampered, &keys)).is_err());
        let mut undated = request(&[], br#"{"action":"create"}"#);
        sign(&keys[0], &mut undated);
        assert!(matches!(
            verify(&check_with(&undated, &keys)),
            Err(VerifyError::InvalidSignature { .. })
        ));
        let missing = request(&[], BODY);
        assert_eq!(
            verify(&check_with(&missing, &keys)),
            Err(VerifyError::MissingSignature {
                header: HEADER.into()
            })
        );
    }
}
