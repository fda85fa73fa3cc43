//! `hookgate-loadtest verify`: after a run, is every acknowledged event where it should
//! be? The journal is read through the admin API and, with a broker, a queue is drained.
//! The outcome is counted the way RabbitMQ's Jepsen checker counts a queue:
//!
//! - lost: acknowledged (answered `accepted`, `stale` or `duplicate`) but not found;
//! - duplicated: found more than once (at-least-once delivery allows it in a queue);
//! - unexpected: found with one of the run's id prefixes but never sent;
//! - recovered: sent without an acknowledgement (no answer, a crash), and found anyway.
//!
//! Lost must be 0, and so must unexpected.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method};

use crate::run::Fate;

/// The ids a run sent: (source, id) -> fate.
pub type Sent = HashMap<(String, String), Fate>;
/// What was found: (source, id) -> how many times.
pub type Found = HashMap<(String, String), u64>;

pub fn read_ids(path: &Path) -> anyhow::Result<Sent> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut sent = Sent::new();
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.split('\t');
        let (Some(source), Some(id), Some(fate)) = (fields.next(), fields.next(), fields.next())
        else {
            anyhow::bail!("{}:{}: expected source, id and fate", path.display(), n + 1);
        };
        let fate = match fate {
            "acked" => Fate::Acked,
            "unknown" => Fate::Unknown,
            "refused" => Fate::Refused,
            other => anyhow::bail!("{}:{}: unknown fate `{other}`", path.display(), n + 1),
        };
        sent.insert((source.to_string(), id.to_string()), fate);
    }
    Ok(sent)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub acked: u64,
    pub found: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    pub recovered: u64,
}

impl Counts {
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "acked": self.acked, "found": self.found, "lost": self.lost,
            "duplicated": self.duplicated, "unexpected": self.unexpected,
            "recovered": self.recovered,
        })
    }

    pub fn ok(self) -> bool {
        self.lost == 0 && self.unexpected == 0
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked {}, found {}: lost {}, duplicated {}, unexpected {}, recovered {}",
            self.acked, self.found, self.lost, self.duplicated, self.unexpected, self.recovered
        )
    }
}

/// What a check found in the journal and, with a broker, in the queue.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub journal: Counts,
    pub queue: Option<Counts>,
}

impl Checked {
    /// Nothing lost and nothing unexpected, anywhere that was checked.
    pub fn ok(&self) -> bool {
        self.journal.ok() && self.queue.is_none_or(|q| q.ok())
    }

    /// `journal`, `queue` and `ok`, for a JSON report to add its own fields to.
    pub fn to_json(self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("journal".into(), self.journal.to_json());
        fields.insert(
            "queue".into(),
            self.queue.map_or(serde_json::Value::Null, |q| q.to_json()),
        );
        fields.insert("ok".into(), self.ok().into());
        fields
    }

    pub fn print(&self) {
        println!("journal: {}", self.journal);
        if let Some(queue) = self.queue {
            println!("queue:   {queue}");
        }
    }
}

/// The prefix of a run's id (`{prefix}-{n}`).
fn prefix(id: &str) -> &str {
    id.rsplit_once('-').map_or(id, |(prefix, _)| prefix)
}

pub fn check(sent: &Sent, found: &Found) -> Counts {
    let prefixes: HashSet<&str> = sent.keys().map(|(_, id)| prefix(id)).collect();
    let mut counts = Counts::default();
    for (key, fate) in sent {
        let times = found.get(key).copied().unwrap_or(0);
        match fate {
            Fate::Acked => {
                counts.acked += 1;
                if times == 0 {
                    counts.lost += 1;
                }
            }
            Fate::Unknown | Fate::Refused => {
                if times > 0 {
                    counts.recovered += 1;
                }
            }
        }
    }
    for (key, times) in found {
        if !prefixes.contains(prefix(&key.1)) {
            continue; // another run's event
        }
        counts.found += 1;
        counts.duplicated += times.saturating_sub(1);
        if !sent.contains_key(key) {
            counts.unexpected += 1;
        }
    }
    counts
}

/// Every event of `sources` in the journal, through the admin API (replayed copies left
/// out).
pub async fn journal(
    admin: &str,
    token: Option<&str>,
    sources: &[String],
) -> anyhow::Result<Found> {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    let mut found = Found::new();
    for source in sources {
        let mut after = 0u64;
        loop {
            let url = format!("{admin}/v1/events?source={source}&after={after}&limit=1000");
            let reply =
                hookgate::cli::client::request(Method::GET, &url, headers.clone(), Bytes::new())
                    .await
                    .with_context(|| format!("GET {url}"))?;
            anyhow::ensure!(reply.status.is_success(), "GET {url}: {}", reply.status);
            let page = reply.json();
            let events = page["events"].as_array().cloned().unwrap_or_default();
            for event in &events {
                if event.get("replay_of").is_some() {
                    continue;
                }
                let id = event["id"].as_str().unwrap_or_default().to_string();
                *found.entry((source.clone(), id)).or_default() += 1;
            }
            let next = page["next_after"].as_u64().unwrap_or(after);
            if events.is_empty() && next == after {
                break;
            }
            after = next;
        }
    }
    Ok(found)
}

/// Drains `queue`, acknowledging every message, until nothing arrives for `idle`.
pub async fn queue(url: &str, queue: &str, idle: Duration) -> anyhow::Result<Found> {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .context("cannot connect to the broker")?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(1000, lapin::options::BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue,
            "hookgate-loadtest-verify",
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot consume from {queue}"))?;
    let mut found = Found::new();
    while let Ok(Some(delivery)) = tokio::time::timeout(idle, consumer.next()).await {
        let delivery = delivery?;
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let source = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("hookgate_source").cloned())
            .and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            })
            .unwrap_or_default();
        *found.entry((source, id)).or_default() += 1;
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await?;
    }
    let _ = channel.close(200, "verified").await;
    let _ = connection.close(200, "verified").await;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> (String, String) {
        ("github".to_string(), id.to_string())
    }

    #[test]
    fn counts_follow_the_jepsen_classes() {
        let sent: Sent = [
            (key("r-1"), Fate::Acked),
            (key("r-2"), Fate::Acked),
            (key("r-3"), Fate::Unknown),
            (key("r-4"), Fate::Refused),
        ]
        .into_iter()
        .collect();
        let found: Found = [
            (key("r-1"), 2),
            (key("r-3"), 1),
            (key("r-9"), 1),
            (key("other-1"), 1),
        ]
        .into_iter()
        .collect();
        let counts = check(&sent, &found);
        assert_eq!(
            counts,
            Counts {
                acked: 2,
                found: 3,
                lost: 1,
                duplicated: 1,
                unexpected: 1,
                recovered: 1,
            }
        );
        assert!(!counts.ok());
    }
}
