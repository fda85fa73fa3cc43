//! The record format of the `events` tree: one version byte, then the record encoded
//! with postcard. The summary fields come first so that listings can decode just them
//! (postcard ignores what follows a struct it has read).
//!
//! Version 2 added `replay_of` to the summary and `replays` to the record; version 1
//! records are still read (as never replayed). Version 3 keeps only the [`Index`] in
//! the index: the summary, the delivery attempts, and where the [`Content`] is in the commit
//! log. Journals written by earlier versions keep their records whole ([`Stored::Inline`]).
//! A later version adds a variant to [`decode_stored`] the same way.

use serde::{Deserialize, Serialize};

/// The version of a whole record kept in the index (written only to update an old journal's
/// records).
pub const VERSION: u8 = 2;
/// The version of an [`Index`]. Version 4 added `replay_key`; version 3 indexes are read
/// as having none.
pub const INDEX_VERSION: u8 = 4;
const INDEX_VERSION_3: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Queued,
    Delivered,
    Stale,
    Failed,
    /// Its commit log entry is damaged (a flipped bit, a bad sector): its content is
    /// lost, and it is never forwarded. Always the last variant: postcard stores the
    /// index.
    Damaged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Delivered => "delivered",
            Status::Stale => "stale",
            Status::Failed => "failed",
            Status::Damaged => "damaged",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Delivered,
            Status::Stale,
            Status::Failed,
            Status::Damaged,
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

/// Where an entry is in the commit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loc {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// An event's kept headers, each name with its value, in the order they came: their
/// text in one string and where each name and value ends, two allocations where a list of
/// string pairs takes one per name and value (a GitHub event keeps three headers: seven).
/// A request's task makes them and the committer's thread frees them, and each block freed
/// on another thread costs the maker more when it takes it back (BENCHMARKS.md). Written
/// to the log exactly as a `Vec<(String, String)>` is, so entries read the same either way.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeptHeaders {
    text: String,
    /// Where each name ends in `text`, and then where its value does.
    ends: Vec<usize>,
}

impl KeptHeaders {
    /// Room for `pairs` headers of `bytes` bytes in all.
    pub fn with_capacity(pairs: usize, bytes: usize) -> KeptHeaders {
        KeptHeaders {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(pairs * 2),
        }
    }

    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        self.ends.push(self.text.len());
        self.text.push_str(value);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each name and its value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.chunks_exact(2).map(move |ends| {
            // Every end was recorded after a whole `&str` was pushed: a char boundary.
            let name = self.text.get(start..ends[0]).unwrap_or_default();
            let value = self.text.get(ends[0]..ends[1]).unwrap_or_default();
            start = ends[1];
            (name, value)
        })
    }

    /// The pairs as owned strings, as a [`Record`] holds them.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    pub fn from_pairs(pairs: &[(String, String)]) -> KeptHeaders {
        let bytes = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        let mut kept = KeptHeaders::with_capacity(pairs.len(), bytes);
        for (name, value) in pairs {
            kept.push(name, value);
        }
        kept
    }
}

impl From<Vec<(String, String)>> for KeptHeaders {
    fn from(pairs: Vec<(String, String)>) -> KeptHeaders {
        KeptHeaders::from_pairs(&pairs)
    }
}

impl std::fmt::Debug for KeptHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for KeptHeaders {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for pair in self.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for KeptHeaders {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<(String, String)>::deserialize(deserializer).map(KeptHeaders::from)
    }
}

/// What never changes once an event is journaled; kept in the commit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub event_ts: Option<i64>,
    pub order_key: Option<String>,
    pub content_type: String,
    pub headers: KeptHeaders,
    pub client_identity: Option<String>,
    /// `Bytes` (written as postcard bytes, like `serde_bytes`), so that the body the
    /// request was read into goes into the log write without a copy of its own.
    pub body: bytes::Bytes,
    pub normalised: Option<bytes::Bytes>,
}

/// A commit log entry: everything an append wrote, so that the index can be written
/// again from it after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub summary: Summary,
    pub content: Content,
    pub replays: u32,
    /// The order timestamp recorded for `content.order_key`, when the event was accepted
    /// with one.
    pub order_ts: Option<i64>,
    /// Whether the event's id went into dedup (not for replayed copies).
    pub remembered: bool,
    /// What identifies the signed content where the signature does not cover the id
    /// (see `Scheme::replay_key`): a second dedup key. Entries written before it have
    /// none (see [`decode_created`]).
    pub replay_key: Option<String>,
    /// The subscriptions (their numbers) the event matched: each got a delivery in the
    /// step that accepted it. Entries written before subscriptions have none.
    pub deliveries: Vec<u64>,
    /// For an event hookgate made itself (`{type}.finished`, operational events): what
    /// it came from.
    pub derived: Option<super::subscription::Derived>,
    /// Whether the indexer writes its dedup keys into the index's `dedup` tree: the committer
    /// keeps them in memory until its table is full (see `fingerprints::Fingerprints`). Not
    /// in the log: recovery leaves them to the table, which reads them from the events.
    #[serde(skip)]
    pub keys_in_index: bool,
}

/// A [`Created`] as entries before subscriptions hold it.
#[derive(Deserialize)]
struct CreatedV2 {
    summary: Summary,
    content: Content,
    replays: u32,
    order_ts: Option<i64>,
    remembered: bool,
    replay_key: Option<String>,
}

/// A [`Created`] as entries before `replay_key` hold it.
#[derive(Deserialize)]
struct CreatedV1 {
    summary: Summary,
    content: Content,
    replays: u32,
    order_ts: Option<i64>,
    remembered: bool,
}

/// The events tree's value from version 3 on: what changes, and where the rest is.
/// `summary` must stay the first field (see the module comment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub summary: Summary,
    pub content: Loc,
    pub attempts_log: Vec<Attempt>,
    pub replays: u32,
    /// The event's second dedup key, if it has one.
    pub replay_key: Option<String>,
}

/// An [`Index`] of version 3.
#[derive(Deserialize)]
struct IndexV3 {
    summary: Summary,
    content: Loc,
    attempts_log: Vec<Attempt>,
    replays: u32,
}

/// An events tree value as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Written by a version before the commit log: the whole record.
    Inline(Record),
    Indexed(Index),
}

impl Stored {
    pub fn summary(&self) -> &Summary {
        match self {
            Stored::Inline(r) => &r.summary,
            Stored::Indexed(i) => &i.summary,
        }
    }

    pub fn summary_mut(&mut self) -> &mut Summary {
        match self {
            Stored::Inline(r) => &mut r.summary,
            Stored::Indexed(i) => &mut i.summary,
        }
    }

    pub fn attempts_log_mut(&mut self) -> &mut Vec<Attempt> {
        match self {
            Stored::Inline(r) => &mut r.attempts_log,
            Stored::Indexed(i) => &mut i.attempts_log,
        }
    }

    pub fn replays(&self) -> u32 {
        match self {
            Stored::Inline(r) => r.replays,
            Stored::Indexed(i) => i.replays,
        }
    }

    /// The event's second dedup key (see [`Created::replay_key`]).
    pub fn replay_key(&self) -> Option<&str> {
        match self {
            Stored::Inline(_) => None,
            Stored::Indexed(i) => i.replay_key.as_deref(),
        }
    }

    pub fn replays_mut(&mut self) -> &mut u32 {
        match self {
            Stored::Inline(r) => &mut r.replays,
            Stored::Indexed(i) => &mut i.replays,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Stored::Inline(r) => encode(r),
            Stored::Indexed(i) => encode_index(i),
        }
    }
}

impl Record {
    pub fn from_parts(index: Index, content: Content) -> Record {
        Record {
            summary: index.summary,
            event_ts: content.event_ts,
            order_key: content.order_key,
            content_type: content.content_type,
            headers: content.headers.to_pairs(),
            client_identity: content.client_identity,
            body: content.body.into(),
            normalised: content.normalised.map(Vec::from),
            attempts_log: index.attempts_log,
            replays: index.replays,
        }
    }

    /// The record's content, for a replayed copy.
    pub fn content(&self) -> Content {
        Content {
            event_ts: self.event_ts,
            order_key: self.order_key.clone(),
            content_type: self.content_type.clone(),
            headers: KeptHeaders::from_pairs(&self.headers),
            client_identity: self.client_identity.clone(),
            body: self.body.clone().into(),
            normalised: self.normalised.clone().map(bytes::Bytes::from),
        }
    }

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
    let mut out = Vec::with_capacity(
        256 + record.body.len() + record.normalised.as_ref().map_or(0, Vec::len),
    );
    out.push(VERSION);
    postcard::to_io(record, &mut out).expect("writing to a Vec cannot fail");
    out
}

pub fn encode_index(index: &Index) -> Vec<u8> {
    encode_index_of(&IndexOf {
        summary: &index.summary,
        content: index.content,
        attempts_log: &index.attempts_log,
        replays: index.replays,
        replay_key: index.replay_key.as_deref(),
    })
}

/// An [`Index`] made of borrowed parts, encoded to the same bytes: the indexer writes
/// each new event's entry from its [`Created`] without copying its strings first.
#[derive(Serialize)]
pub struct IndexOf<'a> {
    pub summary: &'a Summary,
    pub content: Loc,
    pub attempts_log: &'a [Attempt],
    pub replays: u32,
    pub replay_key: Option<&'a str>,
}

pub fn encode_index_of(index: &IndexOf<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(INDEX_VERSION);
    postcard::to_io(index, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Appends a commit log entry's bytes to `out` (no version byte: the log's format is
/// the log's).
pub fn encode_created(created: &Created, out: &mut Vec<u8>) {
    let content = &created.content;
    out.reserve(512 + content.body.len() + content.normalised.as_ref().map_or(0, |n| n.len()));
    postcard::to_io(created, out).expect("writing to a Vec cannot fail");
}

/// A log entry's [`Created`]; an entry written before `replay_key`, or before
/// subscriptions, is read as having none (its bytes end where those fields would start).
pub fn decode_created(bytes: &[u8]) -> Result<Created, DecodeError> {
    let ended = |e: &postcard::Error| matches!(e, postcard::Error::DeserializeUnexpectedEnd);
    match postcard::from_bytes::<Created>(bytes) {
        Ok(created) => return Ok(created),
        Err(e) if !ended(&e) => return Err(e.into()),
        Err(_) => {}
    }
    let (old, replay_key) = match postcard::from_bytes::<CreatedV2>(bytes) {
        Ok(v2) => (
            CreatedV1 {
                summary: v2.summary,
                content: v2.content,
                replays: v2.replays,
                order_ts: v2.order_ts,
                remembered: v2.remembered,
            },
            v2.replay_key,
        ),
        Err(e) if !ended(&e) => return Err(e.into()),
        Err(_) => (postcard::from_bytes::<CreatedV1>(bytes)?, None),
    };
    Ok(Created {
        summary: old.summary,
        content: old.content,
        replays: old.replays,
        order_ts: old.order_ts,
        remembered: old.remembered,
        replay_key,
        deliveries: Vec::new(),
        derived: None,
        keys_in_index: false,
    })
}

/// Reads an events tree value of any version.
pub fn decode_stored(bytes: &[u8]) -> Result<Stored, DecodeError> {
    match bytes.split_first() {
        Some((&INDEX_VERSION, rest)) => Ok(Stored::Indexed(postcard::from_bytes(rest)?)),
        Some((&INDEX_VERSION_3, rest)) => {
            let old: IndexV3 = postcard::from_bytes(rest)?;
            Ok(Stored::Indexed(Index {
                summary: old.summary,
                content: old.content,
                attempts_log: old.attempts_log,
                replays: old.replays,
                replay_key: None,
            }))
        }
        _ => decode(bytes).map(Stored::Inline),
    }
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
    match bytes.split_first() {
        // An index starts with the same summary as a version 2 record.
        Some((&INDEX_VERSION | &INDEX_VERSION_3, rest)) => Ok(postcard::from_bytes(rest)?),
        _ => decode_as::<Summary, v1::Summary>(bytes),
    }
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
    fn kept_headers_are_written_and_read_as_a_list_of_pairs() {
        let pairs: Vec<(String, String)> = [
            ("content-type", "application/json"),
            ("x-empty", ""),
            ("", "no name"),
            ("x-accented", "café ☕"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let kept = KeptHeaders::from_pairs(&pairs);
        assert_eq!(kept.len(), 4);
        assert_eq!(kept.to_pairs(), pairs);
        let seen: Vec<(&str, &str)> = kept.iter().collect();
        assert_eq!(seen[1], ("x-empty", ""));
        assert_eq!(seen[3], ("x-accented", "café ☕"));
        // The same bytes as the list, so that entries written by either read with either.
        let as_list = postcard::to_stdvec(&pairs).unwrap();
        assert_eq!(postcard::to_stdvec(&kept).unwrap(), as_list);
        assert_eq!(postcard::from_bytes::<KeptHeaders>(&as_list).unwrap(), kept);
        let none = KeptHeaders::default();
        assert!(none.is_empty() && none.iter().next().is_none());
        let empty_list: Vec<(String, String)> = Vec::new();
        assert_eq!(
            postcard::to_stdvec(&none).unwrap(),
            postcard::to_stdvec(&empty_list).unwrap()
        );
        assert_eq!(format!("{kept:?}"), format!("{seen:?}"));
    }

    #[test]
    fn an_index_written_from_borrowed_parts_reads_back_whole() {
        let record = sample();
        for (attempts_log, replays, replay_key) in [
            (vec![], 0, None),
            (
                vec![Attempt {
                    at_ms: 7,
                    outcome: "refused: 503".into(),
                }],
                2,
                Some("signed:cd".to_string()),
            ),
        ] {
            let content = Loc {
                segment: 3,
                offset: 16,
                len: 120,
            };
            let bytes = encode_index_of(&IndexOf {
                summary: &record.summary,
                content,
                attempts_log: &attempts_log,
                replays,
                replay_key: replay_key.as_deref(),
            });
            let whole = Index {
                summary: record.summary.clone(),
                content,
                attempts_log,
                replays,
                replay_key,
            };
            assert_eq!(decode_stored(&bytes).unwrap(), Stored::Indexed(whole));
        }
    }

    #[test]
    fn an_index_and_its_content_make_the_record() {
        let record = sample();
        let index = Index {
            summary: record.summary.clone(),
            content: Loc {
                segment: 1,
                offset: 8,
                len: 99,
            },
            attempts_log: vec![],
            replays: 0,
            replay_key: Some("signed:ab".into()),
        };
        let bytes = encode_index(&index);
        assert_eq!(decode_summary(&bytes).unwrap(), record.summary);
        assert_eq!(
            decode_stored(&bytes).unwrap(),
            Stored::Indexed(index.clone())
        );
        assert_eq!(
            decode_stored(&encode(&record)).unwrap(),
            Stored::Inline(record.clone())
        );
        let created = Created {
            summary: record.summary.clone(),
            content: record.content(),
            replays: 0,
            order_ts: None,
            remembered: true,
            replay_key: None,
            deliveries: Vec::new(),
            derived: None,
            keys_in_index: false,
        };
        let mut bytes = Vec::new();
        encode_created(&created, &mut bytes);
        let back = decode_created(&bytes).unwrap();
        assert_eq!(back, created);
        assert_eq!(Record::from_parts(index, back.content), record);
    }

    #[test]
    fn indexes_and_log_entries_written_before_the_replay_key_are_read_without_one() {
        let record = sample();
        let loc = Loc {
            segment: 1,
            offset: 8,
            len: 99,
        };
        let mut v3 = vec![3u8];
        postcard::to_io(
            &(&record.summary, loc, Vec::<Attempt>::new(), 2u32),
            &mut v3,
        )
        .unwrap();
        let Stored::Indexed(index) = decode_stored(&v3).unwrap() else {
            panic!("an index")
        };
        assert_eq!((index.replays, index.replay_key), (2, None));
        assert_eq!(decode_summary(&v3).unwrap(), record.summary);

        let mut old = Vec::new();
        let fields = (&record.summary, record.content(), 0u32, None::<i64>, true);
        postcard::to_io(&fields, &mut old).unwrap();
        let created = decode_created(&old).unwrap();
        assert_eq!(created.replay_key, None);
        assert_eq!(created.content, record.content());
        assert!(created.remembered);
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
