//! Shared-token senders: the header (default `Authorization`) carries `Bearer <secret>`
//! or the secret itself, compared in constant time.

use http::HeaderName;

use super::mac;
use super::{Check, Outgoing, VerifyError};
use crate::config::Secret;

#[derive(Debug)]
pub struct Token {
    pub header: HeaderName,
}

impl Token {
    pub fn verify(&self, req: &Check) -> Result<(), VerifyError> {
        let header = || std::borrow::Cow::Owned(self.header.as_str().to_string());
        let value = req
            .headers
            .get(&self.header)
            .map(|v| v.as_bytes())
            .ok_or_else(|| VerifyError::MissingSignature { header: header() })?;
        let bare = value.strip_prefix(b"Bearer ").unwrap_or(value);
        req.secrets
            .iter()
            .any(|s| mac::same_token(bare, s.expose()) || mac::same_token(value, s.expose()))
            .then_some(())
            .ok_or_else(|| VerifyError::InvalidSignature { header: header() })
    }

    pub fn sign(&self, secret: &Secret, out: &mut Outgoing) {
        let value = if self.header == http::header::AUTHORIZATION {
            format!("Bearer {}", String::from_utf8_lossy(secret.expose()))
        } else {
            String::from_utf8_lossy(secret.expose()).into_owned()
        };
        out.set(self.header.as_str(), &value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    fn token() -> Token {
        Token {
            header: http::header::AUTHORIZATION,
        }
    }

    #[test]
    fn bearer_or_bare_secret_with_rotation() {
        let keys = secrets(&["old", "s3cret"]);
        for value in ["Bearer s3cret", "s3cret", "Bearer old"] {
            let req = request(&[("authorization", value)], b"{}");
            assert_eq!(token().verify(&check_with(&req, &keys)), Ok(()), "{value}");
        }
    }

    #[test]
    fn wrong_and_missing_tokens_fail() {
        let keys = secrets(&["s3cret"]);
        let req = request(&[("authorization", "Bearer s3cre")], b"{}");
        assert!(matches!(
            token().verify(&check_with(&req, &keys)),
            Err(VerifyError::InvalidSignature { .. })
        ));
        let req = request(&[], b"{}");
        assert_eq!(
            token().verify(&check_with(&req, &keys)),
            Err(VerifyError::MissingSignature {
                header: "authorization".into()
            })
        );
    }

    #[test]
    fn custom_header_signs_and_verifies() {
        let t = Token {
            header: HeaderName::from_static("x-webhook-token"),
        };
        let keys = secrets(&["abc"]);
        let mut out = request(&[], b"{}");
        t.sign(&keys[0], &mut out);
        assert_eq!(out.header("x-webhook-token"), Some("abc"));
        assert_eq!(t.verify(&check_with(&out, &keys)), Ok(()));
    }
}
