//! Receiving: reading the body within its limit, and turning it into the normalised JSON
//! payload by content type (SPEC §6). JSON is kept byte for byte; forms and XML become
//! JSON; GitHub's form delivery unwraps its `payload` field.

pub mod budget;
mod form;
pub mod json;
mod xml;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiveError {
    #[error("the body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("content type `{0}` is not accepted; send JSON, a form or XML")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MalformedBody(String),
    #[error("the body did not arrive in time")]
    BodyTimeout,
    #[error("the connection failed while reading the body")]
    BodyFailed,
    #[error("the gateway holds as many request bodies as server.max_inflight_bytes allows; retry shortly")]
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentKind {
    Json,
    Form,
    Xml,
}

/// The media type and its kind, from a `Content-Type` header. Nothing is copied unless
/// the type is refused (the error quotes the header).
pub fn content_kind(headers: &HeaderMap) -> Result<ContentKind, ReceiveError> {
    let raw = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let unsupported = || ReceiveError::UnsupportedMediaType(String::from_utf8_lossy(raw).into());
    let mut parts = raw.split(|&b| b == b';');
    let media = parts.next().unwrap_or_default().trim_ascii();
    for param in parts {
        if let Some(eq) = param.iter().position(|&b| b == b'=') {
            let (name, value) = (&param[..eq], &param[eq + 1..]);
            let value = trim_quotes(value.trim_ascii());
            if name.trim_ascii().eq_ignore_ascii_case(b"charset")
                && ![&b"utf-8"[..], b"utf8", b"us-ascii"]
                    .iter()
                    .any(|ok| value.eq_ignore_ascii_case(ok))
            {
                return Err(unsupported());
            }
        }
    }
    let is = |name: &str| media.eq_ignore_ascii_case(name.as_bytes());
    let application = media.len() > b"application/".len()
        && media[..b"application/".len()].eq_ignore_ascii_case(b"application/");
    let ends = |suffix: &str| {
        media.len() >= suffix.len()
            && media[media.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    if is("application/json") || (application && ends("+json")) {
        Ok(ContentKind::Json)
    } else if is("application/x-www-form-urlencoded") {
        Ok(ContentKind::Form)
    } else if is("application/xml") || is("text/xml") || (application && ends("+xml")) {
        Ok(ContentKind::Xml)
    } else {
        Err(unsupported())
    }
}

/// `value` without the double quotes at either end (any number, as `str::trim_matches`).
fn trim_quotes(mut value: &[u8]) -> &[u8] {
    while let Some(rest) = value.strip_prefix(b"\"") {
        value = rest;
    }
    while let Some(rest) = value.strip_suffix(b"\"") {
        value = rest;
    }
    value
}

/// A body read as the normalised payload.
#[derive(Debug)]
pub struct Payload {
    pub value: Value,
    /// The JSON text to keep and forward when it is not the body: a form's or XML
    /// body's conversion, GitHub's form payload. `None` for a JSON body, which is kept
    /// byte for byte (so that nobody compares a body with itself to find that out).
    pub converted: Option<Bytes>,
}

/// Parses a body of `kind`. `unwrap_form_payload` is GitHub's form delivery: the JSON
/// in the `payload` field is the payload. With `want_value` false a JSON body is only
/// validated (its value is `null`), which is cheaper when nothing is looked up in it.
pub fn parse(
    kind: ContentKind,
    body: &Bytes,
    unwrap_form_payload: bool,
    want_value: bool,
) -> Result<Payload, ReceiveError> {
    let malformed = ReceiveError::MalformedBody;
    let invalid = |e: serde_json::Error| malformed(format!("the body is not valid JSON: {e}"));
    match kind {
        ContentKind::Json if !want_value => {
            // Neither check reads strings as UTF-8, so check the whole body first.
            let text = std::str::from_utf8(body)
                .map_err(|_| malformed("the body is not valid UTF-8".to_string()))?;
            if json::check(body) != Some(true) {
                // Refused, or nested too deep for the quick check: serde_json decides,
                // and words the error with its line and column.
                serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(invalid)?;
            }
            Ok(Payload {
                value: Value::Null,
                converted: None,
            })
        }
        ContentKind::Json => {
            let value = serde_json::from_slice(body).map_err(invalid)?;
            Ok(Payload {
                value,
                converted: None,
            })
        }
        ContentKind::Form => {
            let value = form::to_json(body).map_err(malformed)?;
            if unwrap_form_payload {
                if let Some(Value::String(inner)) = value.get("payload") {
                    let inner_value = serde_json::from_str(inner).map_err(|e| {
                        malformed(format!("the form's payload field is not valid JSON: {e}"))
                    })?;
                    return Ok(Payload {
                        value: inner_value,
                        converted: Some(Bytes::from(inner.clone())),
                    });
                }
            }
            Ok(normalised(value))
        }
        ContentKind::Xml => xml::to_json(body).map(normalised).map_err(malformed),
    }
}

/// Adds a value under its name; a name seen again turns into an array of its values in
/// order (forms' repeated fields, XML's repeated children).
fn add_repeated(fields: &mut serde_json::Map<String, Value>, name: String, value: Value) {
    match fields.get_mut(&name) {
        None => {
            fields.insert(name, value);
        }
        Some(Value::Array(values)) => values.push(value),
        Some(first) => {
            let first_value = first.take();
            *first = Value::Array(vec![first_value, value]);
        }
    }
}

fn normalised(value: Value) -> Payload {
    let json = Bytes::from(serde_json::to_vec(&value).expect("a JSON value always serialises"));
    Payload {
        value,
        converted: Some(json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    #[test]
    fn content_types_and_charsets() {
        assert_eq!(
            content_kind(&headers("application/json")),
            Ok(ContentKind::Json)
        );
        assert_eq!(
            content_kind(&headers("Application/JSON; charset=UTF-8")),
            Ok(ContentKind::Json)
        );
        assert_eq!(
            content_kind(&headers("application/cloudevents+json")),
            Ok(ContentKind::Json)
        );
        assert_eq!(
            content_kind(&headers("application/x-www-form-urlencoded; charset=utf-8")),
            Ok(ContentKind::Form)
        );
        assert_eq!(
            content_kind(&headers("text/xml; charset=\"utf-8\"")),
            Ok(ContentKind::Xml)
        );
        assert!(content_kind(&headers("text/plain")).is_err());
        assert!(content_kind(&headers("application/json; charset=iso-8859-1")).is_err());
        assert!(content_kind(&HeaderMap::new()).is_err());
        assert_eq!(
            content_kind(&headers("APPLICATION/VND.API+XML ; Charset=\"\"US-ASCII\"")),
            Ok(ContentKind::Xml)
        );
        assert_eq!(
            content_kind(&headers("application/json;foo=bar;charset=utf8")),
            Ok(ContentKind::Json)
        );
        assert!(content_kind(&headers("application/+json")).is_ok());
        assert!(content_kind(&headers("application/")).is_err());
        assert!(content_kind(&headers("text/json")).is_err());
        assert!(content_kind(&headers("application/jsonx")).is_err());
        assert_eq!(
            content_kind(&headers("text/plain; charset=utf-8")),
            Err(ReceiveError::UnsupportedMediaType(
                "text/plain; charset=utf-8".into()
            ))
        );
    }

    #[test]
    fn json_is_kept_byte_for_byte() {
        let body = Bytes::from_static(b"{ \"b\": 1,  \"a\": [2] }");
        let p = parse(ContentKind::Json, &body, false, true).unwrap();
        assert_eq!(p.converted, None);
        assert_eq!(p.value, json!({"b": 1, "a": [2]}));
        assert!(parse(ContentKind::Json, &Bytes::from_static(b"{"), false, false).is_err());
        let bad_utf8 = Bytes::from_static(b"{\"a\":\"\xff\"}");
        let not_utf8 = ReceiveError::MalformedBody("the body is not valid UTF-8".into());
        assert_eq!(
            parse(ContentKind::Json, &bad_utf8, false, false).unwrap_err(),
            not_utf8
        );
        assert!(parse(ContentKind::Json, &bad_utf8, false, true).is_err());
        // Neither UTF-8 nor JSON: refused for its UTF-8.
        for neither in [&b"{\xff}"[..], b"[\"\xc3\"", b"\"\x80\"x"] {
            let neither = Bytes::copy_from_slice(neither);
            assert_eq!(
                parse(ContentKind::Json, &neither, false, false).unwrap_err(),
                not_utf8
            );
        }
        // UTF-8 past ASCII in a string is kept as it is.
        let accented = Bytes::from_static("{\"a\":\"é\"}".as_bytes());
        assert!(parse(ContentKind::Json, &accented, false, false).is_ok());
    }

    #[test]
    fn github_form_delivery_unwraps_payload() {
        let body = Bytes::from_static(b"payload=%7B%22action%22%3A%22opened%22%7D");
        let p = parse(ContentKind::Form, &body, true, false).unwrap();
        assert_eq!(p.value, json!({"action": "opened"}));
        assert_eq!(p.converted.as_deref(), Some(&br#"{"action":"opened"}"#[..]));
        let kept = parse(ContentKind::Form, &body, false, false).unwrap();
        assert_eq!(kept.value, json!({"payload": "{\"action\":\"opened\"}"}));
    }
}
