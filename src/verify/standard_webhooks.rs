//! Standard Webhooks (and Svix, its origin): `webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64> [v1,<base64> …]`; HMAC-SHA256 of
//! `{id}.{timestamp}.{body}` keyed with the base64-decoded part of `whsec_<base64>`.
//! `svix-id`/`svix-timestamp`/`svix-signature` are accepted as the same headers.
//! Signature versions other than `v1` are skipped.

use ed25519_dalek::{Signature, VerifyingKey};

use super::mac::{self, Algorithm};
use super::{header, Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

const ID: &str = "webhook-id";
const TIMESTAMP: &str = "webhook-timestamp";
pub(crate) const SIGNATURE: &str = "webhook-signature";
const PUBLIC_KEY_PREFIX: &str = "whpk_";

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::headers(&[ID, "svix-id"]),
        event_type: Locator::json("/type"),
        signs_timestamp: true,
    }
}

/// The HMAC key inside a `whsec_` secret (a bare base64 secret is taken as well).
pub fn key(secret: &Secret) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(secret.expose()).ok()?;
    if text.starts_with(PUBLIC_KEY_PREFIX) {
        return None;
    }
    mac::decode_base64(text.strip_prefix("whsec_").unwrap_or(text))
}

/// The Ed25519 public key inside a `whpk_` secret, for `v1a` signatures.
pub fn public_key(secret: &Secret) -> Option<VerifyingKey> {
    let text = std::str::from_utf8(secret.expose()).ok()?;
    let bytes = mac::decode_base64(text.strip_prefix(PUBLIC_KEY_PREFIX)?)?;
    VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()
}

/// Whether a secret is usable here: a `whsec_` key or a `whpk_` public key.
pub fn usable(secret: &Secret) -> bool {
    key(secret).is_some() || public_key(secret).is_some()
}

/// A Standard Webhooks header, or its `svix-` twin.
fn either<'a>(req: &'a Check, name: &'static str) -> Result<&'a str, VerifyError> {
    let svix = name.replacen("webhook-", "svix-", 1);
    header(req.headers, name)
        .or_else(|| header(req.headers, &svix))
        .ok_or(VerifyError::MissingSignature {
            header: name.into(),
        })
}

pub fn verify(req: &Check) -> Result<i64, VerifyError> {
    let signatures = either(req, SIGNATURE)?;
    let id = either(req, ID)?;
    let timestamp = either(req, TIMESTAMP)?;
    let invalid = VerifyError::InvalidSignature {
        header: SIGNATURE.into(),
    };
    let ts: i64 = timestamp.parse().map_err(|_| invalid.clone())?;
    let mut symmetric = Vec::new();
    let mut asymmetric = Vec::new();
    for item in signatures.split_whitespace().take(mac::MAX_CLAIMS) {
        if let Some(sig) = item.strip_prefix("v1,") {
            symmetric.extend(mac::decode_base64(sig));
        } else if let Some(sig) = item.strip_prefix("v1a,") {
            asymmetric.extend(mac::decode_base64(sig).and_then(|b| Signature::from_slice(&b).ok()));
        }
    }
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", req.body];
    let keys: Vec<Vec<u8>> = req.secrets.iter().filter_map(key).collect();
    let mut ok = mac::any_matches(
        Algorithm::Sha256,
        keys.iter().map(Vec::as_slice),
        &parts,
        &symmetric,
    );
    if !ok && !asymmetric.is_empty() {
        let message = parts.concat();
        ok = req.secrets.iter().filter_map(public_key).any(|public| {
            asymmetric
                .iter()
                .any(|sig| public.verify_strict(&message, sig).is_ok())
        });
    }
    ok.then_some(ts).ok_or(invalid)
}

pub fn sign(secret: &Secret, out: &mut Outgoing, now: i64) {
    let key = key(secret).unwrap_or_default();
    let id = out.header(ID).unwrap_or_default().to_string();
    let ts = now.to_string();
    let sig = mac::sign(
        Algorithm::Sha256,
        &key,
        &[id.as_bytes(), b".", ts.as_bytes(), b".", &out.body],
    );
    out.set(TIMESTAMP, &ts);
    out.set(SIGNATURE, &format!("v1,{}", mac::encode_base64(&sig)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};
    use crate::verify::{verify as verify_request, Incoming, Scheme};
    use std::time::{Duration, SystemTime};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID_VALUE: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_request(prefix: &str, signature: &str, body: &[u8]) -> Outgoing {
        request(
            &[
                (&format!("{prefix}-id"), ID_VALUE),
                (&format!("{prefix}-timestamp"), TS),
                (&format!("{prefix}-signature"), signature),
            ],
            body,
        )
    }

    #[test]
    fn published_vector_verifies_and_signs() {
        let req = vector_request("webhook", VECTOR, BODY);
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET]))),
            Ok(1_614_265_330)
        );
        let mut out = request(&[("webhook-id", ID_VALUE)], BODY);
        sign(&secrets(&[SECRET])[0], &mut out, 1_614_265_330);
        assert_eq!(out.header(SIGNATURE), Some(VECTOR));
    }

    #[test]
    fn v1a_ed25519_signatures_verify_with_a_whpk_public_key() {
        use ed25519_dalek::{Signer, SigningKey};
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let public = format!(
            "whpk_{}",
            mac::encode_base64(signing.verifying_key().as_bytes())
        );
        let message = [ID_VALUE.as_bytes(), b".", TS.as_bytes(), b".", BODY].concat();
        let sig = format!(
            "v1a,{}",
            mac::encode_base64(&signing.sign(&message).to_bytes())
        );
        let req = vector_request("webhook", &format!("v1,AAAA {sig}"), BODY);
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET, &public]))),
            Ok(1_614_265_330)
        );
        assert_eq!(
            verify(&check_with(&req, &secrets(&[&public]))),
            Ok(1_614_265_330)
        );
        let tampered = vector_request("webhook", &sig, br#"{"test": 1}"#);
        assert!(verify(&check_with(&tampered, &secrets(&[&public]))).is_err());
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let other_public = format!(
            "whpk_{}",
            mac::encode_base64(other.verifying_key().as_bytes())
        );
        assert!(verify(&check_with(&req, &secrets(&[&other_public]))).is_err());
        assert!(usable(&secrets(&[&public])[0]));
        assert!(!usable(&secrets(&["whpk_short"])[0]));
    }

    #[test]
    fn the_id_comes_from_webhook_id_or_svix_id() {
        let req = vector_request("svix", VECTOR, BODY);
        assert_eq!(
            defaults().id.find(&req.headers, None).as_deref(),
            Some(ID_VALUE)
        );
        let req = vector_request("webhook", VECTOR, BODY);
        assert_eq!(
            defaults().id.find(&req.headers, None).as_deref(),
            Some(ID_VALUE)
        );
    }

    #[test]
    fn svix_headers_and_signature_lists() {
        let list = format!("v1a,AAAA v1,{} {VECTOR}", mac::encode_base64(&[0u8; 32]));
        let req = vector_request("svix", &list, BODY);
        assert_eq!(
            verify(&check_with(&req, &secrets(&[SECRET]))),
            Ok(1_614_265_330)
        );
    }

    #[test]
    fn tampered_wrong_secret_second_secret_missing() {
        let invalid = Err(VerifyError::InvalidSignature {
            header: SIGNATURE.into(),
        });
        let tampered = vector_request("webhook", VECTOR, br#"{"test": 2432232315}"#);
        assert_eq!(verify(&check_with(&tampered, &secrets(&[SECRET]))), invalid);
        let good = vector_request("webhook", VECTOR, BODY);
        let other = "whsec_".to_string() + &mac::encode_base64(b"another key");
        assert_eq!(verify(&check_with(&good, &secrets(&[&other]))), invalid);
        assert_eq!(
            verify(&check_with(&good, &secrets(&[&other, SECRET]))),
            Ok(1_614_265_330)
        );
        let missing = request(&[("webhook-id", ID_VALUE), ("webhook-timestamp", TS)], BODY);
        assert_eq!(
            verify(&check_with(&missing, &secrets(&[SECRET]))),
            Err(VerifyError::MissingSignature {
                header: SIGNATURE.into()
            })
        );
    }

    #[test]
    fn timestamp_just_inside_and_just_outside_tolerance() {
        let run = |now: i64| {
            let req = vector_request("webhook", VECTOR, BODY);
            let incoming = Incoming {
                method: http::Method::POST,
                uri: "/hooks/sw".parse().unwrap(),
                headers: req.headers,
                body: BODY.into(),
                received_at: SystemTime::now(),
            };
            let tol = Duration::from_secs(60);
            verify_request(
                &Scheme::StandardWebhooks,
                &secrets(&[SECRET]),
                tol,
                incoming,
                now,
            )
        };
        assert!(run(1_614_265_390).is_ok());
        assert!(run(1_614_265_270).is_ok());
        assert_eq!(
            run(1_614_265_391).unwrap_err().code(),
            "timestamp_out_of_tolerance"
        );
        assert_eq!(
            run(1_614_265_269).unwrap_err().code(),
            "timestamp_out_of_tolerance"
        );
    }
}
