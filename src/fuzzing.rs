//! Entry points for fuzzing the parsers, verifiers, admin queries and journal decoders
//! with arbitrary bytes: the cargo-fuzz targets in `fuzz/` call these, and so does a
//! bounded run in the test suite. Each must return (with any result) for every input: a
//! panic is a bug.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::admin::query;
use crate::config::Secret;
use crate::journal::{log, record};
use crate::locator::Locator;
use crate::receive::{self, ContentKind};
use crate::verify::mac::Algorithm;
use crate::verify::{Check, Encoding, Generic, Github, Scheme, Template, Token, Twilio};

/// Every header any scheme reads; the fuzzer's bytes fill them.
const HEADERS: &[&str] = &[
    "x-hub-signature-256",
    "x-hub-signature",
    "stripe-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-signature",
    "x-shopify-hmac-sha256",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-gitlab-token",
    "x-twilio-signature",
    "x-twilio-webhooks-signature-settings",
    "paddle-signature",
    "twitch-eventsub-message-id",
    "twitch-eventsub-message-timestamp",
    "twitch-eventsub-message-signature",
    "twitch-eventsub-message-type",
    "x-zm-signature",
    "x-zm-request-timestamp",
    "linear-signature",
    "x-pagerduty-signature",
    "authorization",
    "x-signature",
    "x-timestamp",
];

fn schemes() -> Vec<Scheme> {
    vec![
        Scheme::Github(Github { allow_sha1: true }),
        Scheme::Stripe,
        Scheme::StandardWebhooks,
        Scheme::Shopify,
        Scheme::Paddle,
        Scheme::PagerDuty,
        Scheme::Linear,
        Scheme::Slack,
        Scheme::Gitlab,
        Scheme::Twilio(Twilio {
            public_url: "https://example.test/hooks/twilio".into(),
        }),
        Scheme::Twitch,
        Scheme::Zoom,
        Scheme::Hmac(Generic {
            header: HeaderName::from_static("x-signature"),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Base64,
            prefix: "v1=".into(),
            signed: Template::parse("{timestamp}.{body}").expect("a valid template"),
            timestamp: Some(Locator::header("x-timestamp")),
            id: Locator::None,
            event_type: Locator::None,
            url: String::new(),
        }),
        Scheme::Token(Token {
            header: http::header::AUTHORIZATION,
        }),
    ]
}

/// Splits the input at 0xFF bytes: header values in [`HEADERS`] order, then the body,
/// then the query string.
pub fn verify_any(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0xFF);
    let mut headers = HeaderMap::new();
    for name in HEADERS {
        let Some(value) = parts.next() else { break };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(*name, value);
        }
    }
    let body = parts.next().unwrap_or_default();
    let query = parts.next().and_then(|q| std::str::from_utf8(q).ok());
    let secrets = [
        Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        Secret::new("whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="),
        Secret::new("plain-secret"),
    ];
    let check = Check {
        headers: &headers,
        body,
        query,
        secrets: &secrets,
    };
    for scheme in schemes() {
        let _ = scheme.check(&check);
    }
}

/// The first byte picks the content kind; the rest is the body.
pub fn parse_any(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = match selector % 3 {
        0 => ContentKind::Json,
        1 => ContentKind::Form,
        _ => ContentKind::Xml,
    };
    let body = Bytes::copy_from_slice(body);
    let _ = receive::parse(kind, &body, selector & 4 != 0, selector & 8 != 0);
}

/// The quick JSON check (`receive::json`) against `serde_json` skipping a value, which it
/// stands in for: the same answer for every input, or none when nested past its depth.
/// Returns the quick check's answer.
pub fn json_check(data: &[u8]) -> Option<bool> {
    let serde_accepts = serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    let quick = receive::json::check(data);
    if let Some(quick) = quick {
        assert_eq!(
            quick, serde_accepts,
            "the quick JSON check and serde_json differ"
        );
    }
    quick
}

/// The query string of `GET /v1/events` and of `POST /v1/replay`, and `since` alone; what
/// parses must be within the API's bounds.
pub fn admin_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // A fixed clock: a finding must replay the same way.
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
    let last = 1_000;
    if let Ok(asked) = query::parse_list(&text, last) {
        assert!((1..=query::MAX_LIMIT).contains(&asked.filter.limit));
        assert!(asked.wait <= query::MAX_WAIT);
        assert_eq!(asked.filter.until, Some(last));
    }
    if let Ok(filter) = query::parse_replay(&text, last, now) {
        assert_eq!(filter.until, Some(last));
    }
    let _ = query::parse_since(&text, now);
}

/// Every decoder of what the journal stores (events tree values, summaries, records,
/// commit log entries), and the commit log scanner with the bytes as a segment, from the
/// start and from the offset the first byte names.
pub fn journal_records(data: &[u8]) {
    let _ = record::decode_stored(data);
    let _ = record::decode_summary(data);
    let _ = record::decode(data);
    let _ = record::decode_created(data);
    let offsets = [0, data.first().map_or(0, |&b| u64::from(b))];
    for offset in offsets {
        let Ok(scanned) = log::scan_bytes(data, 7, offset) else {
            continue;
        };
        assert!(scanned.end <= scanned.len && scanned.len == data.len() as u64);
        let mut after = offset.min(scanned.len);
        for found in &scanned.found {
            match found {
                log::Found::Entry(entry) => {
                    assert!(entry.loc.offset >= after && entry.loc.segment == 7);
                    // Past at least its bytes (the header's length depends on the format).
                    after = entry.loc.offset + u64::from(entry.loc.len);
                    let _ = record::decode_created(&entry.bytes);
                }
                log::Found::Damaged { offset, len } => {
                    assert!(*offset >= after && *len > 0);
                    after = offset + len;
                }
            }
        }
        assert!(after <= scanned.end);
    }
}

#[cfg(test)]
mod tests {
    //! A bounded, deterministic run of the fuzz entry points over inputs mutated from
    //! seeds, so CI catches a panic without a fuzzer. `fuzz/` runs the real thing.
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// How inputs are mutated: up to `rounds` edits, each a byte replaced (by any byte, or
    /// one of `replace`), removed, inserted (one of `insert`), or a piece of up to
    /// `piece` bytes repeated.
    struct Mutations {
        rounds: usize,
        replace: Option<&'static [u8]>,
        insert: &'static [u8],
        piece: usize,
    }

    /// Any bytes, with a few that the parsers give meaning to.
    const ANY: Mutations = Mutations {
        rounds: 8,
        replace: None,
        insert: b"<>&;=%\"'{}[],:.\xff\x00v1t",
        piece: 16,
    };

    /// JSON's own bytes, which reach deeper into its grammar than arbitrary ones.
    const JSON: Mutations = Mutations {
        rounds: 4,
        replace: Some(JSON_BYTES),
        insert: JSON_BYTES,
        piece: 24,
    };
    const JSON_BYTES: &[u8] = b"{}[],:\"\\ \t\n0123456789-+.eEtrufalsnu/bx\x00\x1f\x7f";

    fn mutate_by(rng: &mut Rng, seed: &[u8], how: &Mutations) -> Vec<u8> {
        let mut data = seed.to_vec();
        for _ in 0..1 + rng.below(how.rounds) {
            let at = rng.below(data.len() + 1);
            match rng.below(4) {
                0 if at < data.len() => {
                    data[at] = match how.replace {
                        Some(bytes) => bytes[rng.below(bytes.len())],
                        None => rng.next() as u8,
                    }
                }
                1 if at < data.len() => {
                    data.remove(at);
                }
                2 => data.insert(at, how.insert[rng.below(how.insert.len())]),
                _ => {
                    let end = (at + rng.below(how.piece)).min(data.len());
                    let piece = data[at..end].to_vec();
                    data.splice(at..at, piece);
                }
            }
        }
        data
    }

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        mutate_by(rng, seed, &ANY)
    }

    const PARSE_SEEDS: &[&[u8]] = &[
        b"\x00{\"a\":[1,2,{\"b\":null}],\"c\":\"\\u00e9\"}",
        b"\x01a=1&b=x+y%20z&a=2&c=%C3%AB&payload=%7B%7D",
        b"\x05payload=%7B%22a%22%3A1%7D",
        b"\x02<?xml version=\"1.0\"?><r a=\"1\"><x>t&amp;</x><x/><![CDATA[c]]><!-- c --></r>",
        b"\x02<!DOCTYPE r [<!ENTITY e \"x\">]><r>&e;</r>",
    ];

    #[test]
    fn parsers_survive_mutated_inputs() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..30_000 {
            let seed = PARSE_SEEDS[i % PARSE_SEEDS.len()];
            parse_any(&mutate(&mut rng, seed));
        }
    }

    const JSON_SEEDS: &[&[u8]] = &[
        b"{\"a\":[1,-2.5e+3,{\"b\":null}],\"c\":\"\\u00e9\\n\",\"d\":[true,false,{}]}",
        b" [ 0 , -0.0E-0 , \"\\\"\\\\\\/\\b\\f\\r\\t\\uD83D\" , [ ] , { } ] ",
        b"\"0123456789abcdef0123456789abcdef\"",
        b"{\"ref\":\"refs/heads/main\",\"repository\":{\"id\":1296269,\"private\":false,\"topics\":[\"octocat\",\"atom\"]},\"padding\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
    ];

    #[test]
    fn the_quick_json_check_answers_as_serde_json_on_mutated_inputs() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut valid, mut invalid) = (0, 0);
        for i in 0..60_000 {
            let seed = JSON_SEEDS[i % JSON_SEEDS.len()];
            let data = if i % 2 == 0 {
                mutate_by(&mut rng, seed, &JSON)
            } else {
                mutate(&mut rng, seed)
            };
            match json_check(&data) {
                Some(true) => valid += 1,
                _ => invalid += 1,
            }
        }
        // Both answers came up often: the inputs reached both sides of the grammar.
        assert!(
            valid > 3_000 && invalid > 3_000,
            "{valid} valid, {invalid} not"
        );
    }

    /// The rest of the headers (empty), a body and a query, after the mutated ones.
    const VERIFY_TAIL: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff{\"webhookTimestamp\":-9223372036854775808}\xffbodySHA256=00";

    fn verify_seed() -> Vec<u8> {
        [
            &b"sha256=00ff"[..],
            b"sha1=zz",
            b"t=1700000000,v1=abcd,v0=1",
            b"msg_1",
            b"1614265330",
            b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1a,AAAA",
        ]
        .join(&0xFFu8)
    }

    #[test]
    fn verifiers_survive_mutated_inputs() {
        let seed = verify_seed();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..5_000 {
            let mut data = mutate(&mut rng, &seed);
            data.extend_from_slice(VERIFY_TAIL);
            verify_any(&data);
        }
    }

    const QUERY_SEEDS: &[&[u8]] = &[
        b"source=gh&type=push&status=failed&after=7&wait=2s&limit=50",
        b"after=latest&wait=300000ms&limit=1000",
        b"since=2024-02-29T23:59:60.123%2B01:00&status=queued",
        b"since=18446744073709551615d&source=%F0%9F%92%A9",
        b"since=7d&wait=5m&limit=%31",
    ];

    #[test]
    fn admin_queries_survive_mutated_inputs() {
        let mut rng = Rng(0x5851_f42d_4c95_7f2d);
        for i in 0..30_000 {
            admin_query(&mutate(&mut rng, QUERY_SEEDS[i % QUERY_SEEDS.len()]));
        }
    }

    fn created(seq: u64) -> record::Created {
        record::Created {
            summary: record::Summary {
                seq,
                id: "evt_1".into(),
                source: "stripe".into(),
                event_type: Some("charge.succeeded".into()),
                status: record::Status::Queued,
                received_at_ms: 1_700_000_000_123,
                attempts: 1,
                size: 2,
                replay_of: Some(3),
            },
            content: record::Content {
                event_ts: Some(-1),
                order_key: Some("k".into()),
                content_type: "application/json".into(),
                headers: vec![("stripe-signature".into(), "t=1,v1=ab".into())].into(),
                client_identity: None,
                body: bytes::Bytes::from_static(b"{}"),
                normalised: Some(bytes::Bytes::from_static(b"[]")),
            },
            replays: 2,
            order_ts: Some(5),
            remembered: true,
            replay_key: Some("signed:ab".into()),
            deliveries: vec![1, 2],
            derived: None,
            keys_in_index: false,
        }
    }

    /// A segment as the writer lays it out: an entry of each format, then a torn one.
    fn segment() -> Vec<u8> {
        let mut out = Vec::new();
        for seq in [1, 2] {
            let mut body = Vec::new();
            record::encode_created(&created(seq), &mut body);
            let mut header = b"HGLE\x02\0\0\0".to_vec();
            header.extend_from_slice(&seq.to_le_bytes());
            header.extend_from_slice(&(body.len() as u32).to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(&header);
            crc.update(&body);
            header.extend_from_slice(&crc.finalize().to_le_bytes());
            out.extend_from_slice(&header);
            out.extend_from_slice(&body);
        }
        let mut body = Vec::new();
        record::encode_created(&created(3), &mut body);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(b"HGLE\x02\0\0\0\x04");
        out
    }

    #[test]
    fn the_seed_segment_scans_whole() {
        let scanned = log::scan_bytes(&segment(), 7, 0).unwrap();
        let seqs: Vec<_> = scanned
            .found
            .iter()
            .map(|f| match f {
                log::Found::Entry(e) => record::decode_created(&e.bytes).unwrap().summary.seq,
                log::Found::Damaged { .. } => 0,
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(scanned.len - scanned.end, 9, "the torn tail");
    }

    /// A segment, a whole record, an index and a log entry's bytes.
    fn journal_seeds() -> [Vec<u8>; 4] {
        let c = created(9);
        let index = record::Index {
            summary: c.summary.clone(),
            content: record::Loc {
                segment: 1,
                offset: 24,
                len: 100,
            },
            attempts_log: vec![record::Attempt {
                at_ms: 1,
                outcome: "503".into(),
            }],
            replays: 1,
            replay_key: None,
        };
        let whole = record::encode(&record::Record::from_parts(
            index.clone(),
            c.content.clone(),
        ));
        let mut entry = Vec::new();
        record::encode_created(&c, &mut entry);
        [segment(), whole, record::encode_index(&index), entry]
    }

    #[test]
    fn journal_decoders_survive_mutated_inputs() {
        let seeds = journal_seeds();
        let mut rng = Rng(0x1405_7b7e_f767_814f);
        for i in 0..20_000 {
            journal_records(&mutate(&mut rng, &seeds[i % seeds.len()]));
        }
    }

    /// Writes these tests' seeds as a starting corpus for the real fuzzer:
    /// `FUZZ_CORPUS=fuzz/corpus cargo test --lib write_fuzz_corpus -- --ignored`. A valid
    /// commit log entry (magic, CRC) is all but impossible for libFuzzer to build alone.
    #[test]
    #[ignore]
    fn write_fuzz_corpus() {
        let root = std::path::PathBuf::from(std::env::var("FUZZ_CORPUS").expect("FUZZ_CORPUS"));
        let sets: [(&str, Vec<Vec<u8>>); 5] = [
            ("json", JSON_SEEDS.iter().map(|s| s.to_vec()).collect()),
            ("parse", PARSE_SEEDS.iter().map(|s| s.to_vec()).collect()),
            (
                "verify",
                vec![[verify_seed(), VERIFY_TAIL.to_vec()].concat()],
            ),
            (
                "admin_query",
                QUERY_SEEDS.iter().map(|s| s.to_vec()).collect(),
            ),
            ("records", journal_seeds().to_vec()),
        ];
        for (target, seeds) in sets {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
            }
        }
    }
}
