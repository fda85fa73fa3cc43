//! The real RabbitMQ at 127.0.0.1:5672 for the forwarding tests: names unique to each
//! test (deleted afterwards, even when the test fails), a consumer that collects what
//! arrives, and a TCP proxy in front of the broker that a test can cut and restore.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const BROKER: &str = "127.0.0.1:5672";

pub fn amqp_url(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// A test's own corner of the broker.
pub struct Rabbit {
    pub prefix: String,
    connection: Connection,
    pub channel: Channel,
    queues: Mutex<Vec<String>>,
}

impl Rabbit {
    pub async fn connect(test: &str) -> Rabbit {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("hookgate-test.{test}.{}.{nanos}", std::process::id());
        let connection = Connection::connect(&amqp_url(BROKER), ConnectionProperties::default())
            .await
            .expect(
                "RabbitMQ answers at 127.0.0.1:5672 (run .ci/run or `rabbitmq-server -detached`)",
            );
        let channel = connection.create_channel().await.unwrap();
        Rabbit {
            prefix,
            connection,
            channel,
            queues: Mutex::new(Vec::new()),
        }
    }

    pub fn exchange(&self) -> String {
        format!("{}.x", self.prefix)
    }

    /// A queue name of this test's, deleted at the end.
    pub fn queue(&self, name: &str) -> String {
        let full = format!("{}.{name}", self.prefix);
        self.queues.lock().unwrap().push(full.clone());
        full
    }

    /// Declares a classic queue (from the test's side) bound with `binding`.
    pub async fn bind_queue(&self, name: &str, binding: &str) -> String {
        let queue = self.queue(name);
        self.channel
            .queue_declare(
                &queue,
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                &queue,
                &self.exchange(),
                binding,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        queue
    }

    /// Declares `queue` again as `kind` on a channel of its own; the broker refuses an
    /// inequivalent `x-queue-type`, which tells what the queue really is.
    pub async fn is_of_kind(&self, queue: &str, kind: &str) -> bool {
        let channel = self.connection.create_channel().await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(kind)),
        );
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let same = channel
            .queue_declare(queue, options, arguments)
            .await
            .is_ok();
        let _ = channel.close(200, "done").await;
        same
    }

    /// Consumes `queue` (auto-ack) into a shared list of deliveries.
    pub async fn collect(&self, queue: &str) -> Collected {
        let channel = self.connection.create_channel().await.unwrap();
        let options = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut consumer = channel
            .basic_consume(queue, "", options, FieldTable::default())
            .await
            .unwrap();
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let sink = got.clone();
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                sink.lock().unwrap().push(delivery);
            }
        });
        Collected(got)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        let exchange = self.exchange();
        // Drop cannot await: clean up on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let Ok(connection) =
                    Connection::connect(&amqp_url(BROKER), ConnectionProperties::default()).await
                else {
                    return;
                };
                let Ok(channel) = connection.create_channel().await else {
                    return;
                };
                for queue in queues {
                    let _ = channel
                        .queue_delete(&queue, QueueDeleteOptions::default())
                        .await;
                }
                let _ = channel
                    .exchange_delete(&exchange, ExchangeDeleteOptions::default())
                    .await;
                let _ = connection.close(200, "done").await;
            });
        });
        let _ = cleanup.join();
    }
}

/// What a consumer has received so far.
#[derive(Clone)]
pub struct Collected(pub Arc<Mutex<Vec<Delivery>>>);

impl Collected {
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Waits until `ready` holds for what has arrived, or panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, ready: impl Fn(&[Delivery]) -> bool) {
        let started = Instant::now();
        loop {
            if ready(&self.0.lock().unwrap()) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "waited {limit:?} for {what}; {} messages arrived",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many times each `message_id` arrived.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for delivery in self.0.lock().unwrap().iter() {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default();
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }
}

pub fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

pub fn header_text(delivery: &Delivery, name: &str) -> Option<String> {
    match header(delivery, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A TCP proxy to the broker. `cut` closes every connection through it and refuses new
/// ones until `restore`, as a broker outage or a network partition would.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    pub connections: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let (accept_up, accept_generation, accept_count) =
            (up.clone(), generation.subscribe(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !accept_up.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                accept_count.fetch_add(1, Ordering::AcqRel);
                let mut cut = accept_generation.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut broker) = TcpStream::connect(BROKER).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            generation,
            connections,
        }
    }

    pub fn url(&self) -> String {
        amqp_url(&self.addr.to_string())
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::Release);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::Release);
    }
}
