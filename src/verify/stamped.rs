//! A header that carries a timestamp and a list of HMAC-SHA256 signatures over
//! `{timestamp}{join}{body}`: Stripe (`t=…,v1=…`) and Paddle (`ts=…;h1=…`) differ only in
//! the punctuation and the names. Any listed signature may match (rotation).

use super::mac::{self, Algorithm};
use super::{header, Check, Outgoing, VerifyError};
use crate::config::Secret;

pub struct Stamped {
    pub header: &'static str,
    /// Between the header's items.
    pub separator: char,
    pub timestamp_key: &'static str,
    pub signature_key: &'static str,
    /// Between the timestamp and the body in what is signed.
    pub join: &'static str,
}

impl Stamped {
    /// Checks the signatures; returns the signed timestamp (unix seconds).
    pub fn verify(&self, req: &Check) -> Result<i64, VerifyError> {
        let value = header(req.headers, self.header).ok_or(VerifyError::MissingSignature {
            header: self.header.into(),
        })?;
        let invalid = VerifyError::InvalidSignature {
            header: self.header.into(),
        };
        let mut timestamp = None;
        let mut claims = Vec::new();
        for item in value.split(self.separator) {
            match item.trim().split_once('=') {
                Some((key, ts)) if key == self.timestamp_key => timestamp = Some(ts),
                Some((key, sig)) if key == self.signature_key => {
                    claims.extend(hex::decode(sig).ok())
                }
                _ => {}
            }
        }
        // What was signed is the timestamp's text as sent.
        let text = timestamp.ok_or(invalid.clone())?;
        let ts: i64 = text.parse().map_err(|_| invalid.clone())?;
        let parts: [&[u8]; 3] = [text.as_bytes(), self.join.as_bytes(), req.body];
        let keys = req.secrets.iter().map(|s| s.expose());
        mac::any_matches(Algorithm::Sha256, keys, &parts, &claims)
            .then_some(ts)
            .ok_or(invalid)
    }

    pub fn sign(&self, secret: &Secret, out: &mut Outgoing, now: i64) {
        let ts = now.to_string();
        let parts: [&[u8]; 3] = [ts.as_bytes(), self.join.as_bytes(), &out.body];
        let sig = mac::sign(Algorithm::Sha256, secret.expose(), &parts);
        let value = format!(
            "{}={ts}{}{}={}",
            self.timestamp_key,
            self.separator,
            self.signature_key,
            hex::encode(sig)
        );
        out.set(self.header, &value);
    }
}
