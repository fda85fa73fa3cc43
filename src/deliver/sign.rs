//! Standard Webhooks signing of outgoing deliveries (SPEC §9): `webhook-signature` is
//! `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one per secret while a
//! secret is being rotated, keyed with the base64-decoded part of `whsec_<base64>`. The
//! same rule the ingest side verifies (`verify::standard_webhooks`), with the same
//! HMAC and base64 helpers.

use crate::verify::mac::{self, Algorithm};

const PREFIX: &str = "whsec_";

/// Random bytes in a new secret: 192 bits, as the Standard Webhooks libraries make.
const SECRET_BYTES: usize = 24;

/// Why a delivery cannot be signed. Names a secret by its position, never its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("no secret to sign with")]
    NoSecret,
    #[error("secret #{index} is not a `whsec_` secret with a base64 key")]
    BadSecret { index: usize },
}

/// A new subscription secret: `whsec_` and 24 random bytes in base64.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    // The OS random source does not fail on the platforms hookgate runs on; a secret
    // made of anything else would be worse than stopping.
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    format!("{PREFIX}{}", mac::encode_base64(&bytes))
}

/// The HMAC key in a secret: base64 after `whsec_`, or the whole text without it (as
/// the Standard Webhooks libraries accept). Empty keys are not keys.
fn key(secret: &str) -> Option<Vec<u8>> {
    mac::decode_base64(secret.strip_prefix(PREFIX).unwrap_or(secret)).filter(|k| !k.is_empty())
}

/// Whether `secret` can sign deliveries.
pub fn valid_secret(secret: &str) -> bool {
    key(secret).is_some()
}

/// The `webhook-signature` value for one delivery: `v1,<base64>` for each secret,
/// separated by spaces, so a receiver holding either the old or the new secret of a
/// rotation accepts it.
pub fn signature(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SignError> {
    if secrets.is_empty() {
        return Err(SignError::NoSecret);
    }
    let timestamp = timestamp.to_string();
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
    let signed = secrets
        .iter()
        .enumerate()
        .map(|(index, secret)| {
            let key = key(secret).ok_or(SignError::BadSecret { index })?;
            let mac = mac::sign(Algorithm::Sha256, &key, &parts);
            Ok(format!("v1,{}", mac::encode_base64(&mac)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signed.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::verify::{Check, Scheme};

    // The Standard Webhooks reference libraries' test vector (also in PROVIDERS.md).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// What the gateway's own Standard Webhooks verifier says of a signed delivery.
    fn ingest_accepts(secret: &str, signature: &str, body: &[u8]) -> bool {
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", ID.parse().unwrap());
        headers.insert("webhook-timestamp", TS.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        let secrets = [Secret::new(secret.as_bytes())];
        let check = Check {
            headers: &headers,
            body,
            query: None,
            secrets: &secrets,
        };
        Scheme::StandardWebhooks.check(&check) == Ok(Some(TS))
    }

    #[test]
    fn the_published_vector() {
        assert_eq!(signature(&[SECRET], ID, TS, BODY).unwrap(), VECTOR);
        let bare = SECRET.strip_prefix("whsec_").unwrap();
        assert_eq!(signature(&[bare], ID, TS, BODY).unwrap(), VECTOR);
    }

    #[test]
    fn the_ingest_verifier_accepts_what_is_signed() {
        assert!(ingest_accepts(
            SECRET,
            &signature(&[SECRET], ID, TS, BODY).unwrap(),
            BODY
        ));
        let fresh = new_secret();
        let sig = signature(&[&fresh], ID, TS, b"{\"a\":1}").unwrap();
        assert!(ingest_accepts(&fresh, &sig, b"{\"a\":1}"));
        assert!(!ingest_accepts(&fresh, &sig, b"{\"a\":2}"));
        assert!(!ingest_accepts(SECRET, &sig, b"{\"a\":1}"));
    }

    #[test]
    fn one_signature_per_secret_during_a_rotation() {
        let new = new_secret();
        let both = signature(&[SECRET, &new], ID, TS, BODY).unwrap();
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], VECTOR);
        assert!(ingest_accepts(SECRET, &both, BODY));
        assert!(ingest_accepts(&new, &both, BODY));
    }

    #[test]
    fn new_secrets_are_random_and_valid() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"));
        assert!(valid_secret(&a));
        assert_eq!(key(&a).unwrap().len(), SECRET_BYTES);
    }

    #[test]
    fn bad_secrets_are_named_by_position_only() {
        for bad in ["whsec_not base64!", "whsec_", "", "whpk_AAAA"] {
            assert!(!valid_secret(bad), "{bad:?}");
        }
        let err = signature(&[SECRET, "whsec_secret-text!"], ID, TS, BODY).unwrap_err();
        assert_eq!(err, SignError::BadSecret { index: 1 });
        assert!(!err.to_string().contains("secret-text"));
        assert_eq!(signature(&[], ID, TS, BODY), Err(SignError::NoSecret));
    }
}
