//! Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=…]`, HMAC-SHA256 of
//! `{ts}:{body}`. During a secret rotation Paddle sends several `h1` values: any one may
//! match (one official SDK keeps only the last, a bug not to repeat).

use super::stamped::Stamped;
use super::{Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

pub(crate) const HEADER: &str = "paddle-signature";

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::json("/event_id"),
        event_type: Locator::json("/event_type"),
        signs_timestamp: true,
    }
}

const PADDLE: Stamped = Stamped {
    header: HEADER,
    separator: ';',
    timestamp_key: "ts",
    signature_key: "h1",
    join: ":",
};

pub fn verify(req: &Check) -> Result<i64, VerifyError> {
    PADDLE.verify(req)
}

pub fn sign(secret: &Secret, out: &mut Outgoing, now: i64) {
    PADDLE.sign(secret, out, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    const SECRET: &str = "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_WvRO0eL4Bj9rgYYIBZY6wZhG4EHy9jzh";
    const VECTOR: &str =
        "ts=1696195954;h1=dummy;h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02";

    #[test]
    fn published_vector_any_h1_may_match() {
        let req = request(&[("Paddle-Signature", VECTOR)], b"hello-world");
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET]))),
            Ok(1_696_195_954)
        );
        let mut out = request(&[], b"hello-world");
        sign(&secrets(&[SECRET])[0], &mut out, 1_696_195_954);
        assert!(VECTOR.ends_with(out.header(HEADER).unwrap().split(";h1=").nth(1).unwrap()));
    }

    #[test]
    fn tampered_wrong_secret_rotated_missing() {
        let invalid = Err(VerifyError::InvalidSignature {
            header: HEADER.into(),
        });
        let req = request(&[("Paddle-Signature", VECTOR)], b"hello-world!");
        assert_eq!(verify(&check_with(&req, &secrets(&[SECRET]))), invalid);
        let req = request(&[("Paddle-Signature", VECTOR)], b"hello-world");
        assert_eq!(
            verify(&check_with(&req, &secrets(&["pdl_ntf_other"]))),
            invalid
        );
        assert_eq!(
            verify(&check_with(&req, &secrets(&["pdl_ntf_other", SECRET]))),
            Ok(1_696_195_954)
        );
        let req = request(&[("Paddle-Signature", "h1=abcd")], b"hello-world");
        assert_eq!(verify(&check_with(&req, &secrets(&[SECRET]))), invalid);
        let req = request(&[], b"hello-world");
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET]))),
            Err(VerifyError::MissingSignature {
                header: HEADER.into()
            })
        );
    }
}
