//! What reaches RabbitMQ for one journaled event (SPEC §8): the routing key from the
//! source's template, AMQP properties, the CloudEvents AMQP binding's `cloudEvents_*`
//! headers, hookgate's own headers, the kept provider headers as `http_<name>`, and the
//! normalised JSON payload as the body.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::admin::rfc3339;
use crate::journal::Record;
use crate::source::routing_key;

pub struct Message {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Builds the message for `record`; `template` is its source's `routing_key`.
pub fn build(record: &Record, template: &str) -> Message {
    let summary = &record.summary;
    let event_type = summary.event_type.as_deref();
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
    put("hookgate_content_type", text(&record.content_type));
    if record.replays > 0 {
        // Sent again on an operator's request: workers may want to tell it apart from
        // a redelivery.
        put("hookgate_replays", AMQPValue::LongUInt(record.replays));
    }
    for (name, value) in &record.headers {
        // AMQP short strings hold 255 bytes; a longer header name is not forwarded.
        let key = format!("http_{}", name.to_ascii_lowercase());
        if key.len() <= 255 {
            put(&key, text(value));
        }
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
    Message {
        routing_key: routing_key(template, &summary.source, event_type),
        properties,
        body: record.payload().to_vec(),
    }
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
            headers: vec![("Stripe-Signature".into(), "t=1,v1=ab".into())],
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
        let m = build(&record(), "{source}.{type}");
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
        assert_eq!(
            header(&m, "http_stripe-signature"),
            Some(&text("t=1,v1=ab"))
        );
    }

    #[test]
    fn no_type_routes_as_unknown() {
        let mut r = record();
        r.summary.event_type = None;
        let m = build(&r, "events.{source}.{type}");
        assert_eq!(m.routing_key, "events.stripe.unknown");
        assert_eq!(m.properties.kind(), &None);
        assert_eq!(header(&m, "cloudEvents_type"), Some(&text("unknown")));
    }
}
