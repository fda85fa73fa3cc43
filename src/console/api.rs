//! The console's way into the admin API: an in-process call to the same router the CLI
//! reaches over HTTP ([`Admin::route`]), answered as status and JSON. The console signs
//! the caller in with its session instead of the bearer token; everything else (what is
//! valid, what is allowed, what an error says) is the API's.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::admin::Admin;

/// An API answer: its status, its JSON body (`Null` for none) and that body as sent.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub raw: bytes::Bytes,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The error's sentence (`{"message":…}`), for showing as it is.
    pub fn message(&self) -> String {
        match self.body["message"].as_str() {
            Some(message) => message.to_string(),
            None => format!("the admin API answered {}", self.status),
        }
    }
}

/// Calls `method path?query` with an optional JSON body.
pub async fn call(admin: &Admin, method: Method, target: &str, body: Option<Value>) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let response = admin.route(&method, path, query, &body).await;
    let status = response.status();
    let bytes = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    Answer {
        status,
        body: parse(&bytes),
        raw: bytes,
    }
}

/// An answer's JSON as a value. The API embeds a payload as it was accepted, and ingest
/// takes JSON text that a value refuses (a lone surrogate escape, nesting past 128
/// levels): then the answer's other fields are still read, each on its own, and what a
/// value cannot hold is left out (the event page shows that payload from `raw`).
fn parse(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    if let Ok(value) = serde_json::from_slice(bytes) {
        return value;
    }
    let Ok(fields) = serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(bytes) else {
        return Value::Null;
    };
    let readable = fields
        .into_iter()
        .filter_map(|(name, raw)| Some((name, serde_json::from_str(raw.get()).ok()?)));
    Value::Object(readable.collect())
}

pub async fn get(admin: &Admin, target: &str) -> Answer {
    call(admin, Method::GET, target, None).await
}

/// A query string of the pairs whose value is not empty, each encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut encoded = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if !value.is_empty() {
            encoded.append_pair(name, value);
        }
    }
    encoded.finish()
}

/// A string field of a JSON object, or `""`.
pub fn text(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A number field of a JSON object, or 0.
pub fn number(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or(0)
}

/// An RFC 3339 time as the console shows it: `2026-01-31 23:59:59` (UTC), or `""`.
pub fn short_time(rfc3339: &str) -> String {
    match rfc3339.get(..19) {
        Some(head) => head.replacen('T', " ", 1),
        None => rfc3339.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_leave_out_empty_values_and_encode_the_rest() {
        assert_eq!(
            query(&[("source", "git hub"), ("type", ""), ("status", "a&b")]),
            "source=git+hub&status=a%26b"
        );
        assert_eq!(
            short_time("2026-01-31T23:59:59.123Z"),
            "2026-01-31 23:59:59"
        );
        assert_eq!(short_time(""), "");
    }
}
