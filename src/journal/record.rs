//! The record format of the `events` tree: one version byte, then the record encoded
//! with postcard. The summary fields come first so that listings can decode just them
//! (postcard ignores what follows a struct it has read).
//!
//! Version 1 is the only one so far; a later version adds a variant to [`decode`] and
//! keeps reading version 1.

use serde::{Deserialize, Serialize};

pub const VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Queued,
    Delivered,
    Stale,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Delivered => "delivered",
            Status::Stale => "stale",
            Status::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Delivered,
            Status::Stale,
            Status::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// The first fields of every record: what a listing shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub seq: u64,
    pub id: String,
    pub source: String,
    pub event_type: Option<String>,
    pub status: Status,
    pub received_at_ms: u64,
    pub attempts: u32,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: u64,
    pub outcome: String,
}

/// A journaled event. `summary` must stay the first field (see the module comment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub summary: Summary,
    /// The event's own timestamp (signed, or located), unix seconds.
    pub event_ts: Option<i64>,
    pub order_key: Option<String>,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub client_identity: Option<String>,
    /// The raw body, exactly as received and verified.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The normalised JSON when it differs from the body (forms, XML).
    #[serde(with = "serde_bytes")]
    pub normalised: Option<Vec<u8>>,
    pub attempts_log: Vec<Attempt>,
}

impl Record {
    /// The JSON payload that is served and forwarded.
    pub fn payload(&self) -> &[u8] {
        self.normalised.as_deref().unwrap_or(&self.body)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record has format version {0}, which this build cannot read")]
    UnknownVersion(u8),
    #[error("record is empty")]
    Empty,
    #[error("record is damaged: {0}")]
    Damaged(#[from] postcard::Error),
}

pub fn encode(record: &Record) -> Vec<u8> {
    let mut out = vec![VERSION];
    postcard::to_io(record, &mut out).expect("writing to a Vec cannot fail");
    out
}

fn body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&VERSION, rest)) => Ok(rest),
        Some((&other, _)) => Err(DecodeError::UnknownVersion(other)),
    }
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    Ok(postcard::from_bytes(body(bytes)?)?)
}

pub fn decode_summary(bytes: &[u8]) -> Result<Summary, DecodeError> {
    Ok(postcard::from_bytes(body(bytes)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Record {
        Record {
            summary: Summary {
                seq: 42,
                id: "evt_1".into(),
                source: "stripe".into(),
                event_type: Some("charge.succeeded".into()),
                status: Status::Queued,
                received_at_ms: 1_700_000_000_123,
                attempts: 0,
                size: 2,
            },
            event_ts: Some(1_700_000_000),
            order_key: None,
            content_type: "application/json".into(),
            headers: vec![("stripe-signature".into(), "t=1,v1=ab".into())],
            client_identity: None,
            body: b"{}".to_vec(),
            normalised: None,
            attempts_log: vec![],
        }
    }

    #[test]
    fn round_trips_and_summary_reads_the_prefix() {
        let record = sample();
        let bytes = encode(&record);
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(decode_summary(&bytes).unwrap(), record.summary);
    }

    #[test]
    fn unknown_versions_and_damage_are_errors() {
        let mut bytes = encode(&sample());
        bytes[0] = 9;
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::UnknownVersion(9))
        ));
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(&[VERSION, 0xff]),
            Err(DecodeError::Damaged(_))
        ));
    }
}
