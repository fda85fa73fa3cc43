//! Locators say where a value sits in a request: `header:NAME`, `json:/pointer`
//! (RFC 6901, into the normalised payload), `form:FIELD` or `none`.

use std::fmt;

use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Locator {
    Header(http::HeaderName),
    Json(String),
    Form(String),
    None,
    /// The first of these that finds a value: a scheme's default only (Shopify's id is
    /// `X-Shopify-Event-Id`, else `X-Shopify-Webhook-Id`); not written in configs.
    FirstOf(Vec<Locator>),
}

impl TryFrom<String> for Locator {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Locator::parse(&text)
    }
}

impl Locator {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "none" {
            return Ok(Locator::None);
        }
        let (kind, rest) = text.split_once(':').ok_or_else(|| {
            format!("`{text}` is not a locator (header:NAME, json:/pointer, form:FIELD or none)")
        })?;
        match kind {
            "header" => http::HeaderName::from_bytes(rest.as_bytes())
                .map(Locator::Header)
                .map_err(|_| format!("`{rest}` is not a valid header name")),
            "json" if rest.is_empty() || rest.starts_with('/') => Ok(Locator::Json(rest.into())),
            "json" => Err(format!("`{text}`: a JSON pointer starts with `/`")),
            "form" if !rest.is_empty() => Ok(Locator::Form(rest.into())),
            _ => Err(format!(
                "`{text}` is not a locator (header:NAME, json:/pointer, form:FIELD or none)"
            )),
        }
    }

    pub fn header(name: &'static str) -> Self {
        Locator::Header(http::HeaderName::from_static(name))
    }

    pub fn json(pointer: &str) -> Self {
        Locator::Json(pointer.to_string())
    }

    /// The located value as text: strings as they are, numbers and booleans printed;
    /// objects, arrays, null and missing values give nothing.
    pub fn find(&self, headers: &HeaderMap, payload: Option<&Value>) -> Option<String> {
        let value = match self {
            Locator::Header(name) => {
                return headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
            }
            Locator::Json(pointer) => payload?.pointer(pointer)?,
            Locator::Form(field) => payload?.get(field)?,
            Locator::None => return None,
            Locator::FirstOf(choices) => {
                return choices.iter().find_map(|l| l.find(headers, payload))
            }
        };
        match value {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    pub fn reads_payload(&self) -> bool {
        match self {
            Locator::Json(_) | Locator::Form(_) => true,
            Locator::FirstOf(choices) => choices.iter().any(Locator::reads_payload),
            Locator::Header(_) | Locator::None => false,
        }
    }

    /// Where a value is written when there is a choice: a first-of locator's first.
    pub fn primary(&self) -> &Locator {
        match self {
            Locator::FirstOf(choices) => choices.first().unwrap_or(&Locator::None),
            other => other,
        }
    }

    /// The first of `names` present as a header.
    pub fn headers(names: &[&'static str]) -> Self {
        Locator::FirstOf(names.iter().map(|n| Locator::header(n)).collect())
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locator::Header(name) => write!(f, "header:{name}"),
            Locator::Json(pointer) => write!(f, "json:{pointer}"),
            Locator::Form(field) => write!(f, "form:{field}"),
            Locator::None => f.write_str("none"),
            Locator::FirstOf(choices) => {
                let names: Vec<String> = choices.iter().map(|l| l.to_string()).collect();
                f.write_str(&names.join(", else "))
            }
        }
    }
}

/// Reads a timestamp: unix seconds (integer or decimal; values past the year 5000 are
/// taken as milliseconds) or RFC 3339 text. Returns unix seconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Some(if n.unsigned_abs() > 95_617_584_000 {
            n / 1000
        } else {
            n
        });
    }
    if let Ok(f) = text.parse::<f64>() {
        if f.is_finite() && f.abs() < 9.0e15 {
            return Some(f.trunc() as i64);
        }
        return None;
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn locators_parse_and_print_back() {
        for text in [
            "header:x-event-id",
            "json:/data/object/id",
            "form:EventType",
            "none",
        ] {
            assert_eq!(Locator::parse(text).unwrap().to_string(), text);
        }
        assert!(Locator::parse("json:data").is_err());
        assert!(Locator::parse("cookie:x").is_err());
        assert!(Locator::parse("header:bad name").is_err());
    }

    #[test]
    fn locators_find_values() {
        let mut headers = HeaderMap::new();
        headers.insert("x-event-id", "evt_1".parse().unwrap());
        let payload = json!({"data": {"object": {"id": 42}}, "EventType": "call", "o": {}});
        let find = |l: &str| Locator::parse(l).unwrap().find(&headers, Some(&payload));
        assert_eq!(find("header:X-Event-Id").as_deref(), Some("evt_1"));
        assert_eq!(find("json:/data/object/id").as_deref(), Some("42"));
        assert_eq!(find("form:EventType").as_deref(), Some("call"));
        assert_eq!(find("json:/o"), None);
        assert_eq!(find("json:/missing"), None);
        assert_eq!(find("none"), None);
    }

    #[test]
    fn timestamps_in_seconds_millis_and_rfc3339() {
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_timestamp("1700000000123"), Some(1_700_000_000));
        assert_eq!(parse_timestamp("1700000000.5"), Some(1_700_000_000));
        assert_eq!(parse_timestamp("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(
            parse_timestamp("2023-11-14T23:13:20+01:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(
            parse_timestamp("-9223372036854775808"),
            Some(i64::MIN / 1000)
        );
    }
}
