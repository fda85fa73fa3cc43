//! The AMQP link (lapin): one connection and one channel in confirm mode, with the
//! exchange and the configured queues declared on every (re)connect. lapin does not
//! recover by itself and a call can hang while the broker shuts down, so every call here
//! is bounded by a timeout. Errors never carry the broker URL (it may hold a password).

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::publisher_confirm::PublisherConfirm;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::watch;

use super::message::Message;
use super::nodes::Node;
use crate::config::QueueKind;

/// The most a single broker call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub bindings: Vec<String>,
    pub kind: QueueKind,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queues: Vec<QueueSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{what} timed out after {secs}s")]
    Timeout { what: &'static str, secs: u64 },
    #[error("{what} failed: {reason}")]
    Broker { what: &'static str, reason: String },
}

async fn bounded<T>(
    what: &'static str,
    call: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => Err(LinkError::Timeout {
            what,
            secs: CALL_TIMEOUT.as_secs(),
        }),
        Ok(Err(e)) => Err(LinkError::Broker {
            what,
            reason: describe(&e),
        }),
        Ok(Ok(value)) => Ok(value),
    }
}

/// lapin's error without anything that could echo the URI, and without the bytes a
/// broker's `FRAME_ERROR - cannot decode <<…>>` quotes (they are the message's own
/// fields, and they end up in logs and in the event's attempts log).
fn describe(e: &lapin::Error) -> String {
    let text = undecorated(e);
    match text.find(" <<") {
        Some(at) => format!("{} <<…>>", &text[..at]),
        None => text,
    }
}

fn undecorated(e: &lapin::Error) -> String {
    match e {
        lapin::Error::IOError(io) => format!("I/O error: {}", io.kind()),
        lapin::Error::ProtocolError(p) => format!("protocol error: {p}"),
        other => {
            let text = other.to_string();
            if text.contains("amqp://") || text.contains("amqps://") {
                "the connection failed".to_string()
            } else {
                text
            }
        }
    }
}

pub struct Link {
    connection: Connection,
    channel: Channel,
    exchange: String,
    /// Why lapin reported the connection or the channel broken, once it has.
    broken: watch::Receiver<Option<String>>,
}

impl Link {
    /// Connects to `node`, enables publisher confirms and declares the topology.
    pub async fn open(node: &Node, topology: &Topology) -> Result<Link, LinkError> {
        let properties = ConnectionProperties::default().with_connection_name("hookgate".into());
        let connection = bounded(
            "connecting to the broker",
            Connection::connect_uri(node.uri(), properties),
        )
        .await?;
        let (report, broken) = watch::channel(None);
        let report = Arc::new(report);
        let on_connection = report.clone();
        connection.on_error(move |e| {
            on_connection.send_replace(Some(format!("the connection broke: {}", describe(&e))));
        });
        let channel = bounded("opening a channel", connection.create_channel()).await?;
        channel.on_error(move |e| {
            report.send_replace(Some(format!("the channel closed: {}", describe(&e))));
        });
        bounded(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        bounded(
            "declaring the exchange",
            channel.exchange_declare(
                &topology.exchange,
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        for queue in &topology.queues {
            let mut arguments = FieldTable::default();
            let kind = match queue.kind {
                QueueKind::Quorum => "quorum",
                QueueKind::Classic => "classic",
            };
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from(kind)),
            );
            let options = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            bounded(
                "declaring a queue",
                channel.queue_declare(&queue.name, options, arguments),
            )
            .await?;
            for binding in &queue.bindings {
                bounded(
                    "binding a queue",
                    channel.queue_bind(
                        &queue.name,
                        &topology.exchange,
                        binding,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
            }
        }
        Ok(Link {
            connection,
            channel,
            exchange: topology.exchange.clone(),
            broken,
        })
    }

    /// Resolves when lapin reports the link broken, even while nothing is being sent.
    pub async fn broken(&self) -> LinkError {
        let mut broken = self.broken.clone();
        let reason = match broken.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the link was dropped".to_string(),
        };
        LinkError::Broker {
            what: "the broker link",
            reason,
        }
    }

    /// Publishes persistently and `mandatory` (an unroutable message comes back); the
    /// returned future resolves when the broker confirms.
    pub async fn publish(&self, message: &Message) -> Result<PublisherConfirm, LinkError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        bounded(
            "publishing",
            self.channel.basic_publish(
                &self.exchange,
                &message.routing_key,
                options,
                &message.body,
                message.properties.clone(),
            ),
        )
        .await
    }

    pub async fn close(self) {
        let _ =
            tokio::time::timeout(CALL_TIMEOUT, self.channel.close(200, "hookgate stopping")).await;
        let _ = tokio::time::timeout(
            CALL_TIMEOUT,
            self.connection.close(200, "hookgate stopping"),
        )
        .await;
    }
}
