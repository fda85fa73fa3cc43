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

/// Decodes hex digits (either case) into `out`, which holds half as many bytes: `None`
/// for any other byte, or another length. Every GitHub request's signature is decoded
/// here; the hex crate's decoder matches each digit against its ranges (about twelve
/// instructions a digit), this looks it up in a table. What it decodes is the claim, not
/// a secret, so its time may depend on it.
pub fn decode_hex(text: &str, out: &mut [u8]) -> Option<()> {
    /// Each byte's value as a hex digit, or 0xff.
    const VALUES: [u8; 256] = {
        let mut values = [0xff; 256];
        let mut digit = 0;
        while digit < 16 {
            let lower = b"0123456789abcdef"[digit];
            values[lower as usize] = digit as u8;
            values[lower.to_ascii_uppercase() as usize] = digit as u8;
            digit += 1;
        }
        values
    };
    if text.len() != out.len() * 2 {
        return None;
    }
    let mut invalid = 0;
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let (high, low) = (VALUES[pair[0] as usize], VALUES[pair[1] as usize]);
        invalid |= high | low;
        *byte = high << 4 | low;
    }
    // A digit's value is below 16; 0xff (no digit) is not.
    (invalid < 16).then_some(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_decoded_as_the_hex_crate_decodes_it() {
        // Every pair of bytes that is text, as one byte's two digits.
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                let pair = [first, second];
                let Ok(text) = std::str::from_utf8(&pair) else {
                    continue;
                };
                let mut ours = [0; 1];
                let decoded = decode_hex(text, &mut ours).map(|()| ours.to_vec());
                assert_eq!(decoded, hex::decode(text).ok(), "{pair:?}");
            }
        }
        let mut out = [0; 2];
        assert_eq!(decode_hex("A0fF", &mut out), Some(()));
        assert_eq!(out, [0xa0, 0xff]);
        for wrong_length in ["", "abc", "ab", "abcdef"] {
            assert_eq!(decode_hex(wrong_length, &mut out), None, "{wrong_length}");
        }
        assert_eq!(decode_hex("0g00", &mut out), None);
    }
}
