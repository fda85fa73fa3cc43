//! HMAC over several byte slices, and constant-time checks of a claimed signature.

use hmac::{Hmac, Mac};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "sha1" => Ok(Algorithm::Sha1),
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            _ => Err(format!(
                "algorithm `{text}` is not one of sha1, sha256, sha512"
            )),
        }
    }
}

/// The HMAC of `parts` joined, under `key`.
pub fn sign(algorithm: Algorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
    }
}

/// Whether `claimed` is the HMAC of `parts` under `key`, compared in constant time.
pub fn matches(algorithm: Algorithm, key: &[u8], parts: &[&[u8]], claimed: &[u8]) -> bool {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]], claimed: &[u8]) -> bool {
        let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac.verify_slice(claimed).is_ok()
    }
    match algorithm {
        Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts, claimed),
        Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts, claimed),
        Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts, claimed),
    }
}

/// At most this many signatures of one request are looked at: providers send one per
/// active secret, and each extra claim must not cost an attacker nothing.
pub const MAX_CLAIMS: usize = 16;

/// Whether any `claims` (at most [`MAX_CLAIMS`]) is the HMAC of `parts` under any of
/// `keys`. Each key's MAC is computed once; claims are compared in constant time.
pub fn any_matches<'k>(
    algorithm: Algorithm,
    keys: impl IntoIterator<Item = &'k [u8]>,
    parts: &[&[u8]],
    claims: &[Vec<u8>],
) -> bool {
    let claims = &claims[..claims.len().min(MAX_CLAIMS)];
    if claims.is_empty() {
        return false;
    }
    keys.into_iter().any(|key| {
        let expected = sign(algorithm, key, parts);
        claims.iter().any(|claim| same_token(claim, &expected))
    })
}

/// Constant-time equality for shared tokens (length may differ, which is not secret).
pub fn same_token(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

pub fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
