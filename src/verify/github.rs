//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>`. The legacy SHA-1
//! header `X-Hub-Signature: sha1=<hex>` counts only with `allow_sha1 = true`, and only
//! when the SHA-256 header is absent. GitHub signs no timestamp.

use super::mac::{self, Algorithm};
use super::{header, Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

pub(crate) const SHA256_HEADER: &str = "x-hub-signature-256";
pub(crate) const SHA1_HEADER: &str = "x-hub-signature";

#[derive(Debug, Default)]
pub struct Github {
    pub allow_sha1: bool,
}

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::header("x-github-delivery"),
        event_type: Locator::header("x-github-event"),
        signs_timestamp: false,
    }
}

impl Github {
    /// Checks the signature. Answers the SHA-256 MAC that verified when nothing else could
    /// verify the same body (`allow_sha1` off): then it names the body under its secret as
    /// surely as the body's own hash does, and a replay key can be made from it for the
    /// cost of hashing 32 bytes (see `replay::replay_key`).
    pub fn verify(&self, req: &Check) -> Result<Option<[u8; 32]>, VerifyError> {
        let (header_name, algorithm, value) = match header(req.headers, SHA256_HEADER) {
            Some(v) => (SHA256_HEADER, Algorithm::Sha256, v.strip_prefix("sha256=")),
            None => match header(req.headers, SHA1_HEADER) {
                Some(v) if self.allow_sha1 => {
                    (SHA1_HEADER, Algorithm::Sha1, v.strip_prefix("sha1="))
                }
                _ => {
                    return Err(VerifyError::MissingSignature {
                        header: SHA256_HEADER.into(),
                    })
                }
            },
        };
        let invalid = VerifyError::InvalidSignature {
            header: header_name.into(),
        };
        // Decoded in place: a MAC is at most 32 bytes, and a longer claim matches none.
        let mut decoded = [0; 32];
        let claimed = value
            .and_then(|hex| {
                let claimed = decoded.get_mut(..hex.len() / 2)?;
                mac::decode_hex(hex, claimed)?;
                Some(claimed)
            })
            .ok_or(invalid.clone())?;
        if !req
            .secrets
            .iter()
            .any(|s| mac::matches(algorithm, s.expose(), &[req.body], claimed))
        {
            return Err(invalid);
        }
        // A SHA-256 MAC is 32 bytes, and only a claim of its full length matches. With
        // the SHA-1 header allowed, a capture holding both verifies again with the
        // SHA-256 one removed: then only the body names the event.
        Ok(match (algorithm, self.allow_sha1) {
            (Algorithm::Sha256, false) => Some(decoded),
            _ => None,
        })
    }

    pub fn sign(&self, secret: &Secret, out: &mut Outgoing) {
        let sig = mac::sign(Algorithm::Sha256, secret.expose(), &[&out.body]);
        out.set(SHA256_HEADER, &format!("sha256={}", hex::encode(sig)));
        if self.allow_sha1 {
            let sig = mac::sign(Algorithm::Sha1, secret.expose(), &[&out.body]);
            out.set(SHA1_HEADER, &format!("sha1={}", hex::encode(sig)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    const SECRET: &str = "It's a Secret to Everybody";
    const VECTOR: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    const VECTOR_SHA1: &str = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";

    /// The MAC of [`VECTOR`], as `verify` answers it.
    fn vector_mac() -> Option<[u8; 32]> {
        let mut mac = [0; 32];
        hex::decode_to_slice(VECTOR.strip_prefix("sha256=").unwrap(), &mut mac).unwrap();
        Some(mac)
    }

    #[test]
    fn published_vector_verifies_and_signs() {
        let req = request(&[("X-Hub-Signature-256", VECTOR)], b"Hello, World!");
        let keys = secrets(&[SECRET]);
        assert_eq!(
            Github::default().verify(&check_with(&req, &keys)),
            Ok(vector_mac())
        );

        let mut out = request(&[], b"Hello, World!");
        Github::default().sign(&keys[0], &mut out);
        assert_eq!(out.header("x-hub-signature-256"), Some(VECTOR));
    }

    #[test]
    fn tampered_body_and_wrong_secret_fail() {
        let invalid = Err(VerifyError::InvalidSignature {
            header: SHA256_HEADER.into(),
        });
        let req = request(&[("X-Hub-Signature-256", VECTOR)], b"Hello, World?");
        assert_eq!(
            Github::default().verify(&check_with(&req, &secrets(&[SECRET]))),
            invalid
        );
        let req = request(&[("X-Hub-Signature-256", VECTOR)], b"Hello, World!");
        assert_eq!(
            Github::default().verify(&check_with(&req, &secrets(&["nope"]))),
            invalid
        );
        let req = request(&[("X-Hub-Signature-256", "sha256=zz")], b"Hello, World!");
        assert_eq!(
            Github::default().verify(&check_with(&req, &secrets(&[SECRET]))),
            invalid
        );
    }

    #[test]
    fn a_claim_of_another_length_or_case_is_read_as_before() {
        let keys = secrets(&[SECRET]);
        let verify = |signature: &str| {
            let req = request(&[("X-Hub-Signature-256", signature)], b"Hello, World!");
            Github::default().verify(&check_with(&req, &keys))
        };
        let hex = VECTOR.strip_prefix("sha256=").unwrap();
        // The same MAC whatever the case of its digits: a replay key made from it
        // cannot be changed by rewriting the header.
        assert_eq!(
            verify(&format!("sha256={}", hex.to_uppercase())),
            Ok(vector_mac())
        );
        for wrong in [
            String::new(),
            hex[..63].to_string(),
            hex[..62].to_string(),
            format!("{hex}00"),
            format!("{hex}{hex}"),
            format!("{hex}{hex}{hex}"),
        ] {
            assert_eq!(
                verify(&format!("sha256={wrong}")),
                Err(VerifyError::InvalidSignature {
                    header: SHA256_HEADER.into()
                }),
                "{wrong}"
            );
        }
    }

    #[test]
    fn second_of_two_secrets_matches() {
        let req = request(&[("X-Hub-Signature-256", VECTOR)], b"Hello, World!");
        let keys = secrets(&["new-secret", SECRET]);
        assert_eq!(
            Github::default().verify(&check_with(&req, &keys)),
            Ok(vector_mac())
        );
    }

    #[test]
    fn missing_header_is_missing_signature() {
        let req = request(&[], b"Hello, World!");
        assert_eq!(
            Github::default().verify(&check_with(&req, &secrets(&[SECRET]))),
            Err(VerifyError::MissingSignature {
                header: SHA256_HEADER.into()
            })
        );
    }

    #[test]
    fn sha1_only_when_allowed() {
        let req = request(&[("X-Hub-Signature", VECTOR_SHA1)], b"Hello, World!");
        let keys = secrets(&[SECRET]);
        assert!(matches!(
            Github { allow_sha1: false }.verify(&check_with(&req, &keys)),
            Err(VerifyError::MissingSignature { .. })
        ));
        assert_eq!(
            Github { allow_sha1: true }.verify(&check_with(&req, &keys)),
            Ok(None)
        );
        // Where a SHA-1 claim may stand in, the SHA-256 MAC is not the only one that
        // verifies the body, so none is answered (the replay key hashes the body).
        let both = request(
            &[
                ("X-Hub-Signature-256", VECTOR),
                ("X-Hub-Signature", VECTOR_SHA1),
            ],
            b"Hello, World!",
        );
        assert_eq!(
            Github { allow_sha1: true }.verify(&check_with(&both, &keys)),
            Ok(None)
        );
        assert_eq!(
            Github { allow_sha1: false }.verify(&check_with(&both, &keys)),
            Ok(vector_mac())
        );
    }
}
