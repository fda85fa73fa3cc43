//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`, HMAC-SHA256 of `{t}.{body}`
//! keyed with the whole `whsec_…` string as UTF-8. Other schemes (`v0`) are ignored.

use super::stamped::Stamped;
use super::{Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

pub(crate) const HEADER: &str = "stripe-signature";

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::json("/id"),
        event_type: Locator::json("/type"),
        signs_timestamp: true,
    }
}

const STRIPE: Stamped = Stamped {
    header: HEADER,
    separator: ',',
    timestamp_key: "t",
    signature_key: "v1",
    join: ".",
};

pub fn verify(req: &Check) -> Result<i64, VerifyError> {
    STRIPE.verify(req)
}

pub fn sign(secret: &Secret, out: &mut Outgoing, now: i64) {
    STRIPE.sign(secret, out, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::mac;
    use crate::verify::testing::{check_with, request, secrets};
    use crate::verify::{verify as verify_request, Incoming, Scheme};
    use std::time::{Duration, SystemTime};

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;
    const VECTOR: &str =
        "t=1700000000,v1=d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990";

    #[test]
    fn published_vector_verifies_and_signs() {
        let req = request(&[("Stripe-Signature", VECTOR)], BODY);
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET]))),
            Ok(1_700_000_000)
        );
        let mut out = request(&[], BODY);
        sign(&secrets(&[SECRET])[0], &mut out, 1_700_000_000);
        assert_eq!(out.header(HEADER), Some(VECTOR));
    }

    #[test]
    fn any_v1_may_match_and_v0_is_ignored() {
        let value = format!(
            "t=1700000000,v0=abcd,v1={},{}",
            "00".repeat(32),
            &VECTOR[13..]
        );
        let req = request(&[("Stripe-Signature", &value)], BODY);
        assert_eq!(
            verify(&check_with(&req, &secrets(&["other", SECRET]))),
            Ok(1_700_000_000)
        );
    }

    #[test]
    fn only_the_first_sixteen_signatures_are_looked_at() {
        let junk = format!("v1={}", "00".repeat(32));
        let mut value = "t=1700000000".to_string();
        for _ in 0..mac::MAX_CLAIMS {
            value = format!("{value},{junk}");
        }
        let late = format!("{value},{}", &VECTOR[13..]);
        let req = request(&[("Stripe-Signature", &late)], BODY);
        assert!(verify(&check_with(&req, &secrets(&[SECRET]))).is_err());
        let in_time = format!("t=1700000000,{},{junk}", &VECTOR[13..]);
        let req = request(&[("Stripe-Signature", &in_time)], BODY);
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET]))),
            Ok(1_700_000_000)
        );
    }

    #[test]
    fn tampered_wrong_secret_missing_and_malformed_fail() {
        let invalid = Err(VerifyError::InvalidSignature {
            header: HEADER.into(),
        });
        let tampered = request(&[("Stripe-Signature", VECTOR)], b"{}");
        assert_eq!(verify(&check_with(&tampered, &secrets(&[SECRET]))), invalid);
        let good = request(&[("Stripe-Signature", VECTOR)], BODY);
        assert_eq!(
            verify(&check_with(&good, &secrets(&["whsec_other"]))),
            invalid
        );
        let no_t = request(&[("Stripe-Signature", &VECTOR[13..])], BODY);
        assert_eq!(verify(&check_with(&no_t, &secrets(&[SECRET]))), invalid);
        let none = request(&[], BODY);
        assert_eq!(
            verify(&check_with(&none, &secrets(&[SECRET]))),
            Err(VerifyError::MissingSignature {
                header: HEADER.into()
            })
        );
    }

    #[test]
    fn timestamp_just_inside_and_just_outside_tolerance() {
        let run = |now: i64| {
            let req = request(&[("Stripe-Signature", VECTOR)], BODY);
            let incoming = Incoming {
                method: http::Method::POST,
                uri: "/hooks/stripe".parse().unwrap(),
                headers: req.headers,
                body: BODY.into(),
                received_at: SystemTime::now(),
            };
            verify_request(
                &Scheme::Stripe,
                &secrets(&[SECRET]),
                Duration::from_secs(300),
                incoming,
                now,
            )
            .map(|v| v.signed_timestamp())
        };
        assert_eq!(run(1_700_000_300).unwrap(), Some(1_700_000_000));
        assert_eq!(run(1_699_999_700).unwrap(), Some(1_700_000_000));
        assert_eq!(
            run(1_700_000_301).unwrap_err().code(),
            "timestamp_out_of_tolerance"
        );
        assert_eq!(
            run(1_699_999_699).unwrap_err().code(),
            "timestamp_out_of_tolerance"
        );
    }
}
