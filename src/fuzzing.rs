//! Entry points for fuzzing the parsers and verifiers with arbitrary bytes: the cargo-fuzz
//! targets in `fuzz/` call these, and so does a bounded run in the test suite. Each must
//! return (with any result) for every input: a panic is a bug.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Secret;
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

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(data.len() + 1);
            match rng.below(4) {
                0 if at < data.len() => data[at] = rng.next() as u8,
                1 if at < data.len() => {
                    data.remove(at);
                }
                2 => data.insert(at, b"<>&;=%\"'{}[],:.\xff\x00v1t"[rng.below(20)]),
                _ => {
                    let end = (at + rng.below(16)).min(data.len());
                    let piece = data[at..end].to_vec();
                    data.splice(at..at, piece);
                }
            }
        }
        data
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

    #[test]
    fn verifiers_survive_mutated_inputs() {
        let seed: Vec<u8> = [
            &b"sha256=00ff"[..],
            b"sha1=zz",
            b"t=1700000000,v1=abcd,v0=1",
            b"msg_1",
            b"1614265330",
            b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1a,AAAA",
        ]
        .join(&0xFFu8);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..5_000 {
            let mut data = mutate(&mut rng, &seed);
            data.extend_from_slice(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff{\"webhookTimestamp\":-9223372036854775808}\xffbodySHA256=00");
            verify_any(&data);
        }
    }
}
