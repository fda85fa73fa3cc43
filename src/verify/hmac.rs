//! The generic HMAC scheme for custom senders: which header carries the signature, the
//! algorithm, hex or base64, an optional prefix, and a template of what is signed
//! (`{body}`, `{timestamp}`, `{id}`, `{url}`, `{header:NAME}`).

use http::HeaderName;

use super::mac::{self, Algorithm};
use super::{Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::{parse_timestamp, Locator};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "hex" => Ok(Encoding::Hex),
            "base64" => Ok(Encoding::Base64),
            _ => Err(format!("encoding `{text}` is not one of hex, base64")),
        }
    }

    fn decode(self, text: &str) -> Option<Vec<u8>> {
        match self {
            Encoding::Hex => hex::decode(text.trim()).ok(),
            Encoding::Base64 => mac::decode_base64(text),
        }
    }

    fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => mac::encode_base64(bytes),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Body,
    Timestamp,
    Id,
    Url,
    Header(HeaderName),
}

/// A parsed `signed` template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{text}` has a `{{` that is never closed"))?
                + open;
            let name = &rest[open + 1..close];
            pieces.push(match name {
                "body" => Piece::Body,
                "timestamp" => Piece::Timestamp,
                "id" => Piece::Id,
                "url" => Piece::Url,
                _ => match name.strip_prefix("header:") {
                    Some(h) => Piece::Header(
                        HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| format!("`{h}` in `{text}` is not a header name"))?,
                    ),
                    None => {
                        return Err(format!(
                            "`{{{name}}}` in `{text}` is not one of {{body}} {{timestamp}} {{id}} {{url}} {{header:NAME}}"
                        ))
                    }
                },
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    fn uses(&self, piece: &Piece) -> bool {
        self.0.contains(piece)
    }
}

#[derive(Debug)]
pub struct Generic {
    pub header: HeaderName,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    pub prefix: String,
    pub signed: Template,
    /// The signed timestamp: a header, or a field of the (signed) JSON body.
    pub timestamp: Option<Locator>,
    pub id: Locator,
    pub event_type: Locator,
    /// What `{url}` stands for: the source's `public_url`.
    pub url: String,
}

impl Generic {
    /// Whether the id that `id` locates is part of what is signed: `{id}` in the
    /// template, the header it names, or a field of the body with `{body}` signed.
    pub fn signs_id(&self, id: &Locator) -> bool {
        match id {
            Locator::Header(name) => {
                self.signed.uses(&Piece::Header(name.clone()))
                    || (self.signed.uses(&Piece::Id) && self.id == *id)
            }
            Locator::Json(_) | Locator::Form(_) | Locator::None => self.signed.uses(&Piece::Body),
            Locator::FirstOf(all) => all.iter().all(|l| self.signs_id(l)),
        }
    }

    /// Checks that the template can be filled from what the source locates.
    pub fn validate(&self) -> Result<(), String> {
        if self.signed.uses(&Piece::Timestamp)
            && !matches!(self.timestamp, Some(Locator::Header(_)))
        {
            return Err(
                "`signed` uses {timestamp}, so `timestamp` must be a header: locator".into(),
            );
        }
        if self.signed.uses(&Piece::Id) && !matches!(self.id, Locator::Header(_)) {
            return Err("`signed` uses {id}, so `id` must be a header: locator".into());
        }
        match &self.timestamp {
            Some(Locator::Header(name))
                if !self.signed.uses(&Piece::Timestamp) && !self.signed.uses(&Piece::Header(name.clone())) =>
            {
                Err("`timestamp` names a header that `signed` does not include, so it could be forged; add {timestamp} to `signed`".into())
            }
            Some(Locator::Form(_)) => Err("`timestamp` may be a header: or json: locator".into()),
            Some(Locator::Json(_)) if !self.signed.uses(&Piece::Body) => {
                Err("a json: `timestamp` is signed only when `signed` includes {body}".into())
            }
            _ => Ok(()),
        }
    }

    pub fn defaults(&self) -> Defaults {
        Defaults {
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            signs_timestamp: self.timestamp.is_some(),
        }
    }

    fn header_name(&self) -> std::borrow::Cow<'static, str> {
        self.header.as_str().to_string().into()
    }

    /// The bytes the template stands for, from a request's headers and body.
    fn render(&self, headers: &http::HeaderMap, body: &[u8]) -> Vec<u8> {
        let text = |name: &HeaderName| headers.get(name).map(|v| v.as_bytes()).unwrap_or_default();
        let mut out = Vec::with_capacity(body.len() + 64);
        for piece in &self.signed.0 {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Body => out.extend_from_slice(body),
                Piece::Url => out.extend_from_slice(self.url.as_bytes()),
                Piece::Header(name) => out.extend_from_slice(text(name)),
                Piece::Timestamp | Piece::Id => {
                    let locator = match piece {
                        Piece::Timestamp => self.timestamp.as_ref(),
                        _ => Some(&self.id),
                    };
                    if let Some(Locator::Header(name)) = locator {
                        out.extend_from_slice(text(name));
                    }
                }
            }
        }
        out
    }

    pub fn verify(&self, req: &Check) -> Result<Option<i64>, VerifyError> {
        let value = req
            .headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::MissingSignature {
                header: self.header_name(),
            })?;
        let invalid = VerifyError::InvalidSignature {
            header: self.header_name(),
        };
        let claimed = value
            .trim()
            .strip_prefix(self.prefix.as_str())
            .and_then(|sig| self.encoding.decode(sig))
            .ok_or(invalid.clone())?;
        let signed = self.render(req.headers, req.body);
        let ok = req
            .secrets
            .iter()
            .any(|s| mac::matches(self.algorithm, s.expose(), &[&signed], &claimed));
        if !ok {
            return Err(invalid);
        }
        // The signature holds; the timestamp it covers must be readable.
        match &self.timestamp {
            None => Ok(None),
            Some(locator) => {
                let payload = match locator {
                    Locator::Json(_) => serde_json::from_slice(req.body).ok(),
                    _ => None,
                };
                let found = locator.find(req.headers, payload.as_ref());
                found
                    .as_deref()
                    .and_then(parse_timestamp)
                    .map(Some)
                    .ok_or(invalid)
            }
        }
    }

    pub fn sign(&self, secret: &Secret, out: &mut Outgoing, now: i64) {
        if let Some(Locator::Header(name)) = &self.timestamp {
            if !out.headers.contains_key(name) {
                out.set(name.as_str(), &now.to_string());
            }
        }
        let signed = self.render(&out.headers, &out.body);
        let sig = mac::sign(self.algorithm, secret.expose(), &[&signed]);
        out.set(
            self.header.as_str(),
            &format!("{}{}", self.prefix, self.encoding.encode(&sig)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    fn billing() -> Generic {
        Generic {
            header: HeaderName::from_static("x-signature"),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: "sha256=".into(),
            signed: Template::parse("{timestamp}.{body}").unwrap(),
            timestamp: Some(Locator::header("x-timestamp")),
            id: Locator::header("x-event-id"),
            event_type: Locator::json("/event"),
            url: String::new(),
        }
    }

    #[test]
    fn templates_parse_and_reject_unknown_placeholders() {
        assert!(Template::parse("{timestamp}.{body}").is_ok());
        assert!(Template::parse("v0:{header:X-Ts}:{body}").is_ok());
        assert!(Template::parse("{bodyy}").unwrap_err().contains("{bodyy}"));
        assert!(Template::parse("{body").is_err());
    }

    #[test]
    fn signs_what_it_verifies_and_matches_a_hand_computed_mac() {
        let keys = secrets(&["k"]);
        let mut out = request(&[("x-event-id", "e1")], br#"{"event":"paid"}"#);
        billing().sign(&keys[0], &mut out, 1_700_000_000);
        let expected = mac::sign(
            Algorithm::Sha256,
            b"k",
            &[b"1700000000.{\"event\":\"paid\"}"],
        );
        assert_eq!(
            out.header("x-signature").unwrap(),
            format!("sha256={}", hex::encode(expected))
        );
        assert_eq!(
            billing().verify(&check_with(&out, &keys)),
            Ok(Some(1_700_000_000))
        );
    }

    #[test]
    fn tampered_wrong_secret_rotation_missing() {
        let keys = secrets(&["k"]);
        let mut out = request(&[], b"{}");
        billing().sign(&keys[0], &mut out, 1_700_000_000);
        let invalid = Err(VerifyError::InvalidSignature {
            header: "x-signature".into(),
        });
        assert_eq!(
            billing().verify(&check_with(&out, &secrets(&["j"]))),
            invalid
        );
        assert_eq!(
            billing().verify(&check_with(&out, &secrets(&["j", "k"]))),
            Ok(Some(1_700_000_000))
        );
        let mut tampered = request(&[], b"{ }");
        tampered.headers = out.headers.clone();
        assert_eq!(billing().verify(&check_with(&tampered, &keys)), invalid);
        let mut moved = request(&[], b"{}");
        moved.headers = out.headers.clone();
        moved.set("x-timestamp", "1700000001");
        assert_eq!(billing().verify(&check_with(&moved, &keys)), invalid);
        let bare = request(&[], b"{}");
        assert_eq!(
            billing().verify(&check_with(&bare, &keys)),
            Err(VerifyError::MissingSignature {
                header: "x-signature".into()
            })
        );
    }

    #[test]
    fn base64_sha512_and_sha1() {
        for algorithm in [Algorithm::Sha1, Algorithm::Sha512] {
            let g = Generic {
                algorithm,
                encoding: Encoding::Base64,
                prefix: String::new(),
                signed: Template::parse("{body}").unwrap(),
                timestamp: None,
                ..billing()
            };
            let keys = secrets(&["k"]);
            let mut out = request(&[], b"payload");
            g.sign(&keys[0], &mut out, 0);
            assert_eq!(g.verify(&check_with(&out, &keys)), Ok(None));
        }
    }

    #[test]
    fn timestamp_just_inside_and_just_outside_tolerance() {
        use crate::verify::{verify, Incoming, Scheme};
        use std::time::{Duration, SystemTime};
        let keys = secrets(&["k"]);
        let scheme = Scheme::Hmac(billing());
        let run = |now: i64| {
            let mut out = request(&[], b"{}");
            scheme.sign(&keys[0], &mut out, 1_700_000_000);
            let incoming = Incoming {
                method: http::Method::POST,
                uri: "/hooks/billing".parse().unwrap(),
                headers: out.headers,
                body: out.body.into(),
                received_at: SystemTime::now(),
            };
            verify(&scheme, &keys, Duration::from_secs(120), incoming, now)
        };
        assert!(run(1_700_000_120).is_ok());
        assert!(run(1_699_999_880).is_ok());
        assert_eq!(
            run(1_700_000_121).unwrap_err().code(),
            "timestamp_out_of_tolerance"
        );
        assert_eq!(
            run(1_699_999_879).unwrap_err().code(),
            "timestamp_out_of_tolerance"
        );
    }

    #[test]
    fn a_json_timestamp_is_read_from_the_signed_body() {
        let g = Generic {
            signed: Template::parse("{body}").unwrap(),
            timestamp: Some(Locator::json("/sent_at")),
            ..billing()
        };
        let keys = secrets(&["k"]);
        let mut out = request(&[], br#"{"sent_at":1700000000}"#);
        g.sign(&keys[0], &mut out, 0);
        assert_eq!(g.verify(&check_with(&out, &keys)), Ok(Some(1_700_000_000)));
        let mut undated = request(&[], br#"{"other":1}"#);
        g.sign(&keys[0], &mut undated, 0);
        assert!(matches!(
            g.verify(&check_with(&undated, &keys)),
            Err(VerifyError::InvalidSignature { .. })
        ));
    }

    #[test]
    fn template_needs_header_locators_for_its_placeholders() {
        let g = Generic {
            timestamp: Some(Locator::json("/ts")),
            ..billing()
        };
        assert!(g.validate().unwrap_err().contains("timestamp"));
        let g = Generic {
            signed: Template::parse("{id}.{body}").unwrap(),
            id: Locator::json("/id"),
            ..billing()
        };
        assert!(g.validate().unwrap_err().contains("id"));
        assert!(billing().validate().is_ok());
        let unsigned_header = Generic {
            signed: Template::parse("{body}").unwrap(),
            ..billing()
        };
        assert!(unsigned_header.validate().unwrap_err().contains("forged"));
        let as_header_piece = Generic {
            signed: Template::parse("{header:x-timestamp}.{body}").unwrap(),
            ..billing()
        };
        assert!(as_header_piece.validate().is_ok());
    }
}
