//! Twilio: `X-Twilio-Signature: <base64 HMAC-SHA1>` over the URL Twilio called and the
//! form parameters. The URL is the source's `public_url` (exactly as set in Twilio's
//! console) plus the request's query string; it is tried with and without the scheme's
//! default port. Parameters are appended name then value, names sorted, a repeated name's
//! distinct values sorted. JSON bodies: the URL carries `bodySHA256=<hex sha256(body)>`,
//! which must match, and no parameters are signed.
//! `X-Twilio-Webhooks-Signature-Settings: …algorithm=HMAC_SHA256…` switches to SHA-256.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::mac::{self, Algorithm};
use super::{header, Check, Defaults, Outgoing, VerifyError};
use crate::config::Secret;
use crate::locator::Locator;

pub(crate) const SIGNATURE: &str = "x-twilio-signature";
const SETTINGS: &str = "x-twilio-webhooks-signature-settings";

#[derive(Debug)]
pub struct Twilio {
    pub public_url: String,
}

pub fn defaults() -> Defaults {
    Defaults {
        id: Locator::header("i-twilio-idempotency-token"),
        event_type: Locator::Form("EventType".into()),
        signs_timestamp: false,
    }
}

/// The URL with its query string appended.
fn with_query(url: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => {
            let join = if url.contains('?') { '&' } else { '?' };
            format!("{url}{join}{q}")
        }
        _ => url.to_string(),
    }
}

/// The URL without an explicit port, and with the scheme's default port added when it
/// has none: the two forms Twilio's own validators try.
fn port_variants(url: &str) -> [String; 2] {
    let Some((scheme, rest)) = url.split_once("://") else {
        return [url.to_string(), url.to_string()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = split_port(authority);
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else {
        "80"
    };
    let without = format!("{scheme}://{host}{tail}");
    let with = match port {
        Some(_) => url.to_string(),
        None => format!("{scheme}://{host}:{default_port}{tail}"),
    };
    [without, with]
}

/// An authority's host and explicit port, if it has one (`[v6]:port` included).
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let host_end = match authority.strip_prefix('[') {
        Some(rest) => rest.find(']').map(|i| i + 2).unwrap_or(authority.len()),
        None => authority.rfind(':').unwrap_or(authority.len()),
    };
    let (host, rest) = authority.split_at(host_end);
    match rest.strip_prefix(':') {
        Some(port) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            (host, Some(port))
        }
        _ => (authority, None),
    }
}

/// URL, then each parameter name and value in Twilio's order.
fn signed_data(url: &str, params: &BTreeMap<String, Vec<String>>) -> Vec<u8> {
    let mut data = url.as_bytes().to_vec();
    for (name, values) in params {
        let mut values = values.clone();
        values.sort();
        values.dedup();
        for value in values {
            data.extend_from_slice(name.as_bytes());
            data.extend_from_slice(value.as_bytes());
        }
    }
    data
}

fn form_params(body: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        params
            .entry(name.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    params
}

fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

fn algorithm(headers: &http::HeaderMap) -> Algorithm {
    match header(headers, SETTINGS) {
        Some(settings) if settings.contains("algorithm=HMAC_SHA256") => Algorithm::Sha256,
        _ => Algorithm::Sha1,
    }
}

impl Twilio {
    pub fn verify(&self, req: &Check) -> Result<(), VerifyError> {
        let value = header(req.headers, SIGNATURE).ok_or(VerifyError::MissingSignature {
            header: SIGNATURE.into(),
        })?;
        let invalid = VerifyError::InvalidSignature {
            header: SIGNATURE.into(),
        };
        let claimed = mac::decode_base64(value).ok_or(invalid.clone())?;
        let params = match query_value(req.query, "bodySHA256") {
            Some(expected) => {
                let actual = hex::encode(Sha256::digest(req.body));
                if !mac::same_token(actual.as_bytes(), expected.to_ascii_lowercase().as_bytes()) {
                    return Err(invalid);
                }
                BTreeMap::new()
            }
            None => form_params(req.body),
        };
        let algorithm = algorithm(req.headers);
        let url = with_query(&self.public_url, req.query);
        let claims = [claimed];
        let ok = port_variants(&url).iter().any(|candidate| {
            let data = signed_data(candidate, &params);
            let keys = req.secrets.iter().map(|s| s.expose());
            mac::any_matches(algorithm, keys, &[&data], &claims)
        });
        ok.then_some(()).ok_or(invalid)
    }

    /// Signs as Twilio would; a JSON body gets `bodySHA256` in `out.query`.
    pub fn sign(&self, secret: &Secret, out: &mut Outgoing) {
        let json = header(&out.headers, "content-type").is_some_and(|ct| ct.contains("json"));
        let params = if json {
            out.query = Some(format!(
                "bodySHA256={}",
                hex::encode(Sha256::digest(&out.body))
            ));
            BTreeMap::new()
        } else {
            form_params(&out.body)
        };
        let url = with_query(&self.public_url, out.query.as_deref());
        let data = signed_data(&url, &params);
        let sig = mac::sign(algorithm(&out.headers), secret.expose(), &[&data]);
        out.set(SIGNATURE, &mac::encode_base64(&sig));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{check_with, request, secrets};

    const FORM: &str = "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";

    fn twilio() -> Twilio {
        Twilio {
            public_url: "https://mycompany.com/myapp.php".into(),
        }
    }

    fn at(signature: &str, query: &str, body: &[u8]) -> Outgoing {
        let mut out = request(&[(SIGNATURE, signature)], body);
        out.query = Some(query.to_string());
        out
    }

    #[test]
    fn published_form_vector_and_its_port_form() {
        let keys = secrets(&["12345"]);
        let req = at(
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            "foo=1&bar=2",
            FORM.as_bytes(),
        );
        assert_eq!(twilio().verify(&check_with(&req, &keys)), Ok(()));
        let req = at(
            "kvajT1Ptam85bY51eRf/AJRuM3w=",
            "foo=1&bar=2",
            FORM.as_bytes(),
        );
        assert_eq!(
            twilio().verify(&check_with(&req, &keys)),
            Ok(()),
            "signed with :443"
        );
        let with_port = Twilio {
            public_url: "https://mycompany.com:443/myapp.php".into(),
        };
        let req = at(
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            "foo=1&bar=2",
            FORM.as_bytes(),
        );
        assert_eq!(
            with_port.verify(&check_with(&req, &keys)),
            Ok(()),
            "configured with :443"
        );
    }

    #[test]
    fn published_repeated_parameter_vector() {
        let body = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
        let req = at("IK+Dwps556ElfBT0I3Rgjkr1wJU=", "foo=1&bar=2", body);
        assert_eq!(
            twilio().verify(&check_with(&req, &secrets(&["12345"]))),
            Ok(())
        );
    }

    #[test]
    fn published_json_vector_checks_the_body_hash() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let query = "foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let req = at("a9nBmqA0ju/hNViExpshrM61xv4=", query, body);
        assert_eq!(
            twilio().verify(&check_with(&req, &secrets(&["12345"]))),
            Ok(())
        );
        let tampered = at(
            "a9nBmqA0ju/hNViExpshrM61xv4=",
            query,
            br#"{"property": "value", "boolean": false}"#,
        );
        assert!(twilio()
            .verify(&check_with(&tampered, &secrets(&["12345"])))
            .is_err());
    }

    #[test]
    fn wrong_token_rotation_tampering_missing() {
        let req = at(
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            "foo=1&bar=2",
            FORM.as_bytes(),
        );
        assert!(twilio()
            .verify(&check_with(&req, &secrets(&["54321"])))
            .is_err());
        assert_eq!(
            twilio().verify(&check_with(&req, &secrets(&["54321", "12345"]))),
            Ok(())
        );
        let moved = at(
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            "foo=1&bar=3",
            FORM.as_bytes(),
        );
        assert!(twilio()
            .verify(&check_with(&moved, &secrets(&["12345"])))
            .is_err());
        let changed = at(
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            "foo=1&bar=2",
            b"CallSid=CA1",
        );
        assert!(twilio()
            .verify(&check_with(&changed, &secrets(&["12345"])))
            .is_err());
        let mut bare = request(&[], FORM.as_bytes());
        bare.query = Some("foo=1&bar=2".into());
        assert_eq!(
            twilio().verify(&check_with(&bare, &secrets(&["12345"]))),
            Err(VerifyError::MissingSignature {
                header: SIGNATURE.into()
            })
        );
    }

    #[test]
    fn sha256_settings_header_and_signing_round_trips() {
        let keys = secrets(&["12345"]);
        for settings in [None, Some("v=1,algorithm=HMAC_SHA256")] {
            for ct in ["application/x-www-form-urlencoded", "application/json"] {
                let body: &[u8] = if ct.contains("json") {
                    br#"{"a":1}"#
                } else {
                    b"EventType=x&A=1"
                };
                let mut out = request(&[("content-type", ct)], body);
                if let Some(s) = settings {
                    out.set(SETTINGS, s);
                }
                twilio().sign(&keys[0], &mut out);
                assert_eq!(
                    twilio().verify(&check_with(&out, &keys)),
                    Ok(()),
                    "{settings:?} {ct}"
                );
                if let Some(s) = settings {
                    let _ = s;
                    out.headers.remove(SETTINGS);
                    assert!(
                        twilio().verify(&check_with(&out, &keys)).is_err(),
                        "algorithm matters"
                    );
                }
            }
        }
    }

    #[test]
    fn ports_are_added_and_removed() {
        assert_eq!(
            port_variants("https://a.example/x?y=1"),
            [
                "https://a.example/x?y=1".to_string(),
                "https://a.example:443/x?y=1".to_string()
            ]
        );
        assert_eq!(
            port_variants("http://a.example:80/x"),
            [
                "http://a.example/x".to_string(),
                "http://a.example:80/x".to_string()
            ]
        );
        assert_eq!(
            port_variants("https://[::1]/x"),
            [
                "https://[::1]/x".to_string(),
                "https://[::1]:443/x".to_string()
            ]
        );
        assert_eq!(
            port_variants("https://a.example:8443"),
            [
                "https://a.example".to_string(),
                "https://a.example:8443".to_string()
            ]
        );
    }
}
