//! The `v0` signature Slack and Zoom share: `<signature header>: v0=<hex>`, HMAC-SHA256
//! of `v0:{timestamp header}:{body}`. Only the header names differ.

use super::mac::{self, Algorithm};
use super::{header, Check, Outgoing, VerifyError};
use crate::config::Secret;

pub struct V0 {
    pub signature: &'static str,
    pub timestamp: &'static str,
}

impl V0 {
    /// Checks the signature; returns the signed timestamp (unix seconds).
    pub fn verify(&self, req: &Check) -> Result<i64, VerifyError> {
        let value = header(req.headers, self.signature).ok_or(VerifyError::MissingSignature {
            header: self.signature.into(),
        })?;
        let ts_text = header(req.headers, self.timestamp).ok_or(VerifyError::MissingSignature {
            header: self.timestamp.into(),
        })?;
        let invalid = VerifyError::InvalidSignature {
            header: self.signature.into(),
        };
        let ts: i64 = ts_text.parse().map_err(|_| invalid.clone())?;
        let claim = value
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or(invalid.clone())?;
        let parts: [&[u8]; 4] = [b"v0:", ts_text.as_bytes(), b":", req.body];
        let keys = req.secrets.iter().map(|s| s.expose());
        mac::any_matches(Algorithm::Sha256, keys, &parts, &[claim])
            .then_some(ts)
            .ok_or(invalid)
    }

    pub fn sign(&self, secret: &Secret, out: &mut Outgoing, now: i64) {
        let ts = now.to_string();
        let parts: [&[u8]; 4] = [b"v0:", ts.as_bytes(), b":", &out.body];
        let sig = mac::sign(Algorithm::Sha256, secret.expose(), &parts);
        out.set(self.timestamp, &ts);
        out.set(self.signature, &format!("v0={}", hex::encode(sig)));
    }
}
