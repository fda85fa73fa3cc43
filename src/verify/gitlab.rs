//! GitLab: the classic `X-Gitlab-Token` header equals the secret (compared in constant
//! time); or, with GitLab's newer signing token (`whsec_…`), Standard Webhooks headers,
//! whose `webhook-id` equals `Idempotency-Key` and whose timestamp is then checked.

use super::mac;
use super::standard_webhooks;
use super::{header, Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

/// The header whose value is the secret itself.
pub const TOKEN: &str = "x-gitlab-token";
const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::headers(&[IDEMPOTENCY_KEY, "x-gitlab-event-uuid"]),
        event_type: Locator::header("x-gitlab-event"),
        // Only signed deliveries carry a timestamp; it comes back from `verify` then.
        signs_timestamp: false,
    }
}

/// Returns the signed timestamp for signed deliveries, `None` for token deliveries.
pub fn verify(req: &Check) -> Result<Option<i64>, VerifyError> {
    let signed = ["webhook-signature", "svix-signature"]
        .iter()
        .any(|h| req.headers.contains_key(*h));
    if signed {
        return standard_webhooks::verify(req).map(Some);
    }
    let token =
        req.headers
            .get(TOKEN)
            .map(|v| v.as_bytes())
            .ok_or(VerifyError::MissingSignature {
                header: TOKEN.into(),
            })?;
    req.secrets
        .iter()
        .any(|s| mac::same_token(token, s.expose()))
        .then_some(None)
        .ok_or(VerifyError::InvalidSignature {
            header: TOKEN.into(),
        })
}

pub fn sign(secret: &Secret, out: &mut Outgoing, now: i64) {
    if secret.expose().starts_with(b"whsec_") {
        if let Some(key) = header(&out.headers, IDEMPOTENCY_KEY).map(str::to_string) {
            out.set("webhook-id", &key);
        }
        standard_webhooks::sign(secret, out, now);
    } else {
        out.set(TOKEN, &String::from_utf8_lossy(secret.expose()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    const SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn classic_token_with_rotation() {
        let keys = secrets(&["old-token", "glpat-hook"]);
        let req = request(&[(TOKEN, "glpat-hook")], b"{}");
        assert_eq!(verify(&check_with(&req, &keys)), Ok(None));
        let wrong = request(&[(TOKEN, "glpat-hoo")], b"{}");
        assert_eq!(
            verify(&check_with(&wrong, &keys)),
            Err(VerifyError::InvalidSignature {
                header: TOKEN.into()
            })
        );
        let none = request(&[], b"{}");
        assert_eq!(
            verify(&check_with(&none, &keys)),
            Err(VerifyError::MissingSignature {
                header: TOKEN.into()
            })
        );
    }

    #[test]
    fn signing_token_uses_standard_webhooks_headers() {
        let mut out = request(
            &[(IDEMPOTENCY_KEY, "f3b1c2d4-0000-4000-8000-000000000001")],
            br#"{"object_kind":"push"}"#,
        );
        sign(&secrets(&[SIGNING])[0], &mut out, 1_700_000_000);
        assert_eq!(out.header("webhook-id"), out.header(IDEMPOTENCY_KEY));
        assert_eq!(
            verify(&check_with(&out, &secrets(&["classic", SIGNING]))),
            Ok(Some(1_700_000_000))
        );
        let other = "whsec_".to_string() + &mac::encode_base64(b"another signing key");
        assert!(verify(&check_with(&out, &secrets(&[&other]))).is_err());
        let mut tampered = request(&[], b"{}");
        tampered.headers = out.headers.clone();
        assert!(verify(&check_with(&tampered, &secrets(&[SIGNING]))).is_err());
    }

    #[test]
    fn the_id_is_the_idempotency_key_else_the_event_uuid() {
        let req = request(
            &[("x-gitlab-event-uuid", "u-1"), (IDEMPOTENCY_KEY, "k-1")],
            b"{}",
        );
        assert_eq!(
            defaults().id.find(&req.headers, None).as_deref(),
            Some("k-1")
        );
        let req = request(&[("x-gitlab-event-uuid", "u-1")], b"{}");
        assert_eq!(
            defaults().id.find(&req.headers, None).as_deref(),
            Some("u-1")
        );
    }
}
