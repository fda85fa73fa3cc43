//! The record format of the `events` tree: one version byte, then the record encoded
//! with postcard. The summary fields come first so that listings can decode just them
//! (postcard ignores what follows a struct it has read).
//!
//! Version 2 added `replay_of` to the summary and `replays` to the record; version 1
//! records are still read (as never replayed). A later version adds a variant to
//! [`decode`] the same way.

use serde::{Deserialize, Serialize};

pub const VERSION: u8 = 2;

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
    /// Embedded mode: this event is a replayed copy of that (original) event.
    pub replay_of: Option<u64>,
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
    /// How many times an operator asked for this event to be forwarded again.
    pub replays: u32,
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

/// Version 1, as it was written: no `replay_of`, no `replays`.
mod v1 {
    use serde::Deserialize;

    use super::{Attempt, Status};

    #[derive(Deserialize)]
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

    #[derive(Deserialize)]
    pub struct Record {
        pub summary: Summary,
        pub event_ts: Option<i64>,
        pub order_key: Option<String>,
        pub content_type: String,
        pub headers: Vec<(String, String)>,
        pub client_identity: Option<String>,
        #[serde(with = "serde_bytes")]
        pub body: Vec<u8>,
        #[serde(with = "serde_bytes")]
        pub normalised: Option<Vec<u8>>,
        pub attempts_log: Vec<Attempt>,
    }
}

impl From<v1::Summary> for Summary {
    fn from(s: v1::Summary) -> Self {
        Summary {
            seq: s.seq,
            id: s.id,
            source: s.source,
            event_type: s.event_type,
            status: s.status,
            received_at_ms: s.received_at_ms,
            attempts: s.attempts,
            size: s.size,
            replay_of: None,
        }
    }
}

impl From<v1::Record> for Record {
    fn from(r: v1::Record) -> Self {
        Record {
            summary: r.summary.into(),
            event_ts: r.event_ts,
            order_key: r.order_key,
            content_type: r.content_type,
            headers: r.headers,
            client_identity: r.client_identity,
            body: r.body,
            normalised: r.normalised,
            attempts_log: r.attempts_log,
            replays: 0,
        }
    }
}

/// Decodes the record format of `bytes` as `Current`, or as `V1` and converts it.
fn decode_as<'a, Current, V1>(bytes: &'a [u8]) -> Result<Current, DecodeError>
where
    Current: Deserialize<'a>,
    V1: Deserialize<'a> + Into<Current>,
{
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((1, rest)) => Ok(postcard::from_bytes::<V1>(rest)?.into()),
        Some((&other, _)) => Err(DecodeError::UnknownVersion(other)),
    }
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    decode_as::<Record, v1::Record>(bytes)
}

pub fn decode_summary(bytes: &[u8]) -> Result<Summary, DecodeError> {
    decode_as::<Summary, v1::Summary>(bytes)
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
                replay_of: None,
            },
            event_ts: Some(1_700_000_000),
            order_key: None,
            content_type: "application/json".into(),
            headers: vec![("stripe-signature".into(), "t=1,v1=ab".into())],
            client_identity: None,
            body: b"{}".to_vec(),
            normalised: None,
            attempts_log: vec![],
            replays: 0,
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
    fn version_1_records_are_read_as_never_replayed() {
        // A version 1 record is the version 2 layout without the two new fields.
        let record = sample();
        let mut v1 = vec![1u8];
        let s = &record.summary;
        let fields = (
            (
                s.seq,
                &s.id,
                &s.source,
                &s.event_type,
                s.status,
                s.received_at_ms,
                s.attempts,
                s.size,
            ),
            record.event_ts,
            &record.order_key,
            &record.content_type,
            &record.headers,
            &record.client_identity,
            serde_bytes::Bytes::new(&record.body),
            record.normalised.as_deref().map(serde_bytes::Bytes::new),
            &record.attempts_log,
        );
        postcard::to_io(&fields, &mut v1).unwrap();
        assert_eq!(decode(&v1).unwrap(), record);
        assert_eq!(decode_summary(&v1).unwrap(), record.summary);
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
