//! Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(body)>`. Shopify's newer
//! "Events" deliveries send the same headers without the `X-` prefix. The id to dedup on
//! is `X-Shopify-Event-Id` (one event may reach several subscriptions, each with its own
//! `X-Shopify-Webhook-Id`). Nothing is signed but the body: no timestamp.

use super::mac::{self, Algorithm};
use super::{header, Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

pub(crate) const HEADER: &str = "x-shopify-hmac-sha256";
pub(crate) const BARE_HEADER: &str = "shopify-hmac-sha256";

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::headers(&[
            "x-shopify-event-id",
            "shopify-event-id",
            "x-shopify-webhook-id",
            "shopify-webhook-id",
        ]),
        event_type: Locator::headers(&["x-shopify-topic", "shopify-topic"]),
        signs_timestamp: false,
    }
}

pub fn verify(req: &Check) -> Result<(), VerifyError> {
    let value = header(req.headers, HEADER)
        .or_else(|| header(req.headers, BARE_HEADER))
        .ok_or(VerifyError::MissingSignature {
            header: HEADER.into(),
        })?;
    let invalid = VerifyError::InvalidSignature {
        header: HEADER.into(),
    };
    let claimed = mac::decode_base64(value).ok_or(invalid.clone())?;
    req.secrets
        .iter()
        .any(|s| mac::matches(Algorithm::Sha256, s.expose(), &[req.body], &claimed))
        .then_some(())
        .ok_or(invalid)
}

pub fn sign(secret: &Secret, out: &mut Outgoing) {
    let sig = mac::sign(Algorithm::Sha256, secret.expose(), &[&out.body]);
    out.set(HEADER, &mac::encode_base64(&sig));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    const VECTOR: &str = "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=";

    #[test]
    fn published_vector_verifies_and_signs() {
        let req = request(&[("X-Shopify-Hmac-Sha256", VECTOR)], br#"{"id":1}"#);
        assert_eq!(verify(&check_with(&req, &secrets(&["hush"]))), Ok(()));
        let bare = request(&[("Shopify-Hmac-Sha256", VECTOR)], br#"{"id":1}"#);
        assert_eq!(
            verify(&check_with(&bare, &secrets(&["old", "hush"]))),
            Ok(())
        );
        let mut out = request(&[], br#"{"id":1}"#);
        sign(&secrets(&["hush"])[0], &mut out);
        assert_eq!(out.header(HEADER), Some(VECTOR));
    }

    #[test]
    fn tampered_wrong_secret_and_missing_fail() {
        let invalid = Err(VerifyError::InvalidSignature {
            header: HEADER.into(),
        });
        let req = request(&[("X-Shopify-Hmac-Sha256", VECTOR)], br#"{"id":2}"#);
        assert_eq!(verify(&check_with(&req, &secrets(&["hush"]))), invalid);
        let req = request(&[("X-Shopify-Hmac-Sha256", VECTOR)], br#"{"id":1}"#);
        assert_eq!(verify(&check_with(&req, &secrets(&["shh"]))), invalid);
        let req = request(&[], br#"{"id":1}"#);
        assert_eq!(
            verify(&check_with(&req, &secrets(&["hush"]))),
            Err(VerifyError::MissingSignature {
                header: HEADER.into()
            })
        );
    }

    #[test]
    fn event_id_is_preferred_over_webhook_id() {
        let req = request(
            &[
                ("X-Shopify-Webhook-Id", "w-1"),
                ("X-Shopify-Event-Id", "e-1"),
            ],
            b"{}",
        );
        assert_eq!(
            defaults().id.find(&req.headers, None).as_deref(),
            Some("e-1")
        );
        let req = request(&[("shopify-webhook-id", "w-2")], b"{}");
        assert_eq!(
            defaults().id.find(&req.headers, None).as_deref(),
            Some("w-2")
        );
    }
}
