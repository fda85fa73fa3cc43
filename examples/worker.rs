//! A worker for the events hookgate forwards: it consumes a quorum queue with manual
//! acknowledgements and a bounded prefetch, and does each event's work once even though
//! delivery is at least once (a redelivery has the same `message_id`).
//!
//! Run hookgate with a `[broker]`, then:
//!
//! ```text
//! cargo run --example worker -- [--url URL] [--exchange hookgate] [--queue github-events] [--binding 'github.#']
//! ```
//!
//! It prints one JSON line per event it handles. The set of ids already handled is kept
//! in memory here; a real worker records the id in the same transaction as the work's
//! effect (for example a table with the id as its primary key), so that a crash between
//! the work and the ack cannot make it do the work twice.

use std::collections::HashSet;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

/// How many unacknowledged messages the broker may hand this worker at once.
const PREFETCH: u16 = 32;

struct Options {
    url: String,
    exchange: String,
    queue: String,
    binding: String,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        url: std::env::var("HOOKGATE_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        exchange: "hookgate".into(),
        queue: "github-events".into(),
        binding: "github.#".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => options.url = value,
            "--exchange" => options.exchange = value,
            "--queue" => options.queue = value,
            "--binding" => options.binding = value,
            other => anyhow::bail!(
                "unknown option {other}; see the comment at the top of examples/worker.rs"
            ),
        }
    }
    Ok(options)
}

/// The work itself. Here: read the event type and report it.
fn handle(routing_key: &str, body: &[u8]) -> anyhow::Result<String> {
    let payload: serde_json::Value =
        serde_json::from_slice(body).context("the body is not JSON")?;
    Ok(format!(
        "{routing_key} with {} top-level fields",
        payload.as_object().map_or(0, |o| o.len())
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let connection = Connection::connect(&options.url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;

    // Declaring what already exists with the same settings is harmless, so the worker
    // can start before or after hookgate.
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            &options.exchange,
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(&options.queue, queue_options, quorum)
        .await?;
    channel
        .queue_bind(
            &options.queue,
            &options.exchange,
            &options.binding,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;

    let mut consumer = channel
        .basic_consume(
            &options.queue,
            "worker",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!("worker: consuming {} (prefetch {PREFETCH})", options.queue);

    let mut handled: HashSet<String> = HashSet::new();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.context("the consumer stopped")?;
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        let Some(id) = id else {
            // Not from hookgate: nothing to be idempotent on. Drop it rather than loop.
            delivery.nack(BasicNackOptions::default()).await?;
            continue;
        };
        if handled.contains(&id) {
            println!(
                r#"{{"id":{},"outcome":"already handled"}}"#,
                serde_json::json!(id)
            );
            delivery.ack(BasicAckOptions::default()).await?;
            continue;
        }
        match handle(delivery.routing_key.as_str(), &delivery.data) {
            Ok(summary) => {
                println!(
                    r#"{{"id":{},"outcome":"handled","summary":{}}}"#,
                    serde_json::json!(id),
                    serde_json::json!(summary)
                );
                handled.insert(id);
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(e) => {
                // Put it back for another try; a quorum queue counts the redeliveries
                // (x-delivery-limit can send a poison message to a dead-letter queue).
                eprintln!("worker: {id}: {e:#}");
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                delivery.nack(requeue).await?;
            }
        }
    }
    Ok(())
}
