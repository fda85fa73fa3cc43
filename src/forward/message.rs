//! What reaches RabbitMQ for one journaled event (SPEC §8): the routing key from the
//! source's template, AMQP properties, the CloudEvents AMQP binding's `cloudEvents_*`
//! headers, hookgate's own headers, the kept provider headers as `http_<name>`, and the
//! normalised JSON payload as the body.
//!
//! A message the broker would refuse never leaves: AMQP short strings (routing key,
//! message id, type, header names) hold 255 bytes, and the header frame must fit the
//! broker's `frame_max` (128 KiB by default). Provider headers are capped by count and
//! bytes (the rest are left out and counted in `hookgate_headers_dropped`); an event
//! whose own fields do not fit is [`Unfit`], and the forwarder marks it failed.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::admin::rfc3339;
use crate::headers::HeaderPolicy;
use crate::journal::Record;
use crate::source::routing_key;

/// The most provider headers one message carries.
pub const MAX_HEADERS: usize = 64;
/// The most bytes (names and values) of provider headers one message carries: well
/// under RabbitMQ's default `frame_max` of 128 KiB, with room for everything else.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// The longest AMQP short string.
const SHORT: usize = 255;
/// The longest `hookgate_content_type` forwarded; a longer one is left out.
const MAX_CONTENT_TYPE: usize = 1024;

/// Why an event cannot be put into an AMQP message.
#[derive(Debug, thiserror::Error)]
#[error("its {field} is {len} bytes long and AMQP allows at most {SHORT}")]
pub struct Unfit {
    field: &'static str,
    len: usize,
}

fn short(field: &'static str, value: &str) -> Result<(), Unfit> {
    if value.len() > SHORT {
        Err(Unfit {
            field,
            len: value.len(),
        })
    } else {
        Ok(())
    }
}

pub struct Message {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Builds the message for `record`; `template` is its source's `routing_key`, and
/// `policy` says which of its kept headers may be forwarded.
pub fn build(record: &Record, template: &str, policy: &HeaderPolicy) -> Result<Message, Unfit> {
    let summary = &record.summary;
    let event_type = summary.event_type.as_deref();
    let routing_key = routing_key(template, &summary.source, event_type);
    short("routing key", &routing_key)?;
    short("event id", &summary.id)?;
    short("event type", event_type.unwrap_or_default())?;
    let mut headers = FieldTable::default();
    let mut put = |name: &str, value: AMQPValue| headers.insert(ShortString::from(name), value);
    put("cloudEvents_specversion", text("1.0"));
    put("cloudEvents_id", text(&summary.id));
    put(
        "cloudEvents_source",
        text(&format!("/hooks/{}", summary.source)),
    );
    put("cloudEvents_type", text(event_type.unwrap_or("unknown")));
    put("cloudEvents_time", text(&rfc3339(summary.received_at_ms)));
    put("hookgate_seq", AMQPValue::LongLongInt(summary.seq as i64));
    put("hookgate_source", text(&summary.source));
    let mut dropped = 0u32;
    if record.content_type.len() <= MAX_CONTENT_TYPE {
        put("hookgate_content_type", text(&record.content_type));
    } else {
        dropped += 1;
    }
    if record.replays > 0 {
        // Sent again on an operator's request: workers may want to tell it apart from
        // a redelivery.
        put("hookgate_replays", AMQPValue::LongUInt(record.replays));
    }
    let (mut count, mut bytes) = (0, 0);
    for (name, value) in policy.filter(&record.headers) {
        let key = format!("http_{}", name.to_ascii_lowercase());
        let size = key.len() + value.len();
        // A header that does not fit is left out; a smaller one after it may still fit.
        if key.len() > SHORT || count >= MAX_HEADERS || bytes + size > MAX_HEADER_BYTES {
            dropped += 1;
            continue;
        }
        count += 1;
        bytes += size;
        put(&key, text(value));
    }
    if dropped > 0 {
        put("hookgate_headers_dropped", AMQPValue::LongUInt(dropped));
    }
    let mut properties = BasicProperties::default()
        .with_message_id(ShortString::from(summary.id.clone()))
        .with_content_type(ShortString::from("application/json"))
        .with_timestamp(summary.received_at_ms / 1000)
        .with_app_id(ShortString::from("hookgate"))
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(kind) = event_type {
        properties = properties.with_type(ShortString::from(kind.to_string()));
    }
    Ok(Message {
        routing_key,
        properties,
        body: record.payload().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Status, Summary};

    fn record() -> Record {
        Record {
            summary: Summary {
                seq: 7,
                id: "evt_1".into(),
                source: "stripe".into(),
                event_type: Some("charge.succeeded".into()),
                status: Status::Queued,
                received_at_ms: 1_700_000_000_250,
                attempts: 0,
                size: 2,
                replay_of: None,
            },
            event_ts: None,
            order_key: None,
            content_type: "application/json; charset=utf-8".into(),
            headers: vec![
                ("Stripe-Signature".into(), "t=1,v1=ab".into()),
                ("User-Agent".into(), "Stripe/1.0".into()),
            ],
            client_identity: None,
            body: b"{}".to_vec(),
            normalised: None,
            attempts_log: vec![],
            replays: 0,
        }
    }

    fn header<'a>(m: &'a Message, name: &str) -> Option<&'a AMQPValue> {
        m.properties.headers().as_ref()?.inner().get(name)
    }

    #[test]
    fn properties_headers_and_routing_key() {
        let m = build(&record(), "{source}.{type}", &HeaderPolicy::default()).unwrap();
        assert_eq!(m.routing_key, "stripe.charge.succeeded");
        assert_eq!(m.body, b"{}");
        let p = &m.properties;
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("evt_1"));
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some("charge.succeeded")
        );
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.timestamp(), &Some(1_700_000_000));
        assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("hookgate"));
        assert_eq!(
            header(&m, "cloudEvents_source"),
            Some(&text("/hooks/stripe"))
        );
        assert_eq!(
            header(&m, "cloudEvents_time"),
            Some(&text("2023-11-14T22:13:20.250Z"))
        );
        assert_eq!(header(&m, "hookgate_seq"), Some(&AMQPValue::LongLongInt(7)));
        assert_eq!(header(&m, "http_user-agent"), Some(&text("Stripe/1.0")));
        // Journaled before signatures were dropped at admission: left out when read.
        assert_eq!(header(&m, "http_stripe-signature"), None);
        assert_eq!(header(&m, "hookgate_headers_dropped"), None);
    }

    #[test]
    fn headers_are_capped_by_count_and_bytes() {
        let mut r = record();
        r.headers = (0..100)
            .map(|i| (format!("x-many-{i}"), "v".repeat(10)))
            .collect();
        let m = build(&r, "{source}.{type}", &HeaderPolicy::default()).unwrap();
        let forwarded = |m: &Message| {
            m.properties
                .headers()
                .as_ref()
                .unwrap()
                .inner()
                .keys()
                .filter(|k| k.as_str().starts_with("http_"))
                .count()
        };
        assert_eq!(forwarded(&m), MAX_HEADERS);
        assert_eq!(
            header(&m, "hookgate_headers_dropped"),
            Some(&AMQPValue::LongUInt(36))
        );

        r.headers = (0..10)
            .map(|i| (format!("x-big-{i}"), "v".repeat(10 * 1024)))
            .chain([("x-small".to_string(), "s".to_string())])
            .collect();
        let m = build(&r, "{source}.{type}", &HeaderPolicy::default()).unwrap();
        assert_eq!(
            forwarded(&m),
            4,
            "3 of 10 KiB fit in 32 KiB, and the small one after"
        );
        assert_eq!(header(&m, "http_x-small"), Some(&text("s")));
        assert_eq!(
            header(&m, "hookgate_headers_dropped"),
            Some(&AMQPValue::LongUInt(7))
        );
    }

    #[test]
    fn fields_longer_than_a_short_string_make_the_event_unfit() {
        let policy = HeaderPolicy::default();
        let mut r = record();
        r.summary.event_type = Some("t".repeat(300));
        let e = build(&r, "{source}.{type}", &policy).err().unwrap();
        assert_eq!(
            e.to_string(),
            "its routing key is 307 bytes long and AMQP allows at most 255"
        );
        let e = build(&r, "fixed", &policy).err().unwrap();
        assert!(
            e.to_string().starts_with("its event type is 300 bytes"),
            "{e}"
        );
        let mut r = record();
        r.summary.id = "i".repeat(256);
        assert!(build(&r, "{source}.{type}", &policy).is_err());
    }

    #[test]
    fn no_type_routes_as_unknown() {
        let mut r = record();
        r.summary.event_type = None;
        let m = build(&r, "events.{source}.{type}", &HeaderPolicy::default()).unwrap();
        assert_eq!(m.routing_key, "events.stripe.unknown");
        assert_eq!(m.properties.kind(), &None);
        assert_eq!(header(&m, "cloudEvents_type"), Some(&text("unknown")));
    }
}
