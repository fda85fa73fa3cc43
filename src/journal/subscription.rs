//! What the journal keeps for subscriptions (SPEC §9-10): the subscriptions themselves,
//! and one delivery per (event, subscription) it matched.
//!
//! Trees:
//! - `subscriptions`: number -> [`Subscription`] (numbers are never used twice);
//! - `deliveries`: seq ++ number -> [`Delivery`], so an event's deliveries sit together;
//! - `pending`: number ++ seq -> event size, the deliveries a worker still has to make
//!   (or a pull consumer to lease), in journal order;
//! - `sub_log`: number ++ seq -> status byte, every delivery of a subscription, for its
//!   delivery log;
//! - `callbacks`: SHA-256 of a callback token -> seq ++ number;
//! - `deadlines`: deadline ms ++ seq ++ number -> (), callbacks still awaited.
//!
//! A delivery is created by the step that accepts its event: the commit log entry names
//! the subscriptions the event matched ([`super::record::Created::deliveries`]), so
//! recovery creates any delivery the index lost with it.

use serde::{Deserialize, Serialize};

use super::record::Created;
use super::store;
use super::{seq_key, Trees};

const VERSION: u8 = 1;

/// How a subscription's deliveries end (SPEC §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Notify,
    Finish,
    Callback,
    /// No URL: consumers lease and acknowledge through the admin API.
    Pull,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Notify => "notify",
            Mode::Finish => "finish",
            Mode::Callback => "callback",
            Mode::Pull => "pull",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        [Mode::Notify, Mode::Finish, Mode::Callback, Mode::Pull]
            .into_iter()
            .find(|m| m.as_str() == text)
    }
}

/// Where a subscription was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Managed {
    Config,
    Api,
}

impl Managed {
    pub fn as_str(self) -> &'static str {
        match self {
            Managed::Config => "config",
            Managed::Api => "api",
        }
    }
}

/// A subscription as the journal keeps it. Secrets of config-managed subscriptions stay
/// in the config: theirs are kept empty here. `Debug` shows neither secrets nor header
/// values (a header may carry a credential), so that no log or panic can.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its number: part of its id (`sub_N`) and of its deliveries' keys. 0 in a new one.
    pub num: u64,
    pub name: String,
    pub url: Option<String>,
    pub events: Vec<String>,
    pub active: bool,
    pub mode: Mode,
    pub ordered: bool,
    pub max_in_flight: u32,
    pub rate_limit: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Signing secrets, the newest first, each with the time it stops being used (the
    /// older ones after a rotation).
    pub secrets: Vec<(String, Option<u64>)>,
    /// PEM of extra roots the endpoint's certificate may chain to.
    pub ca: Option<String>,
    pub managed: Managed,
    pub created_at_ms: u64,
    /// Why it was disabled by hookgate (410, failing too long), if it was.
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed.
    pub failing_since_ms: Option<u64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("num", &self.num)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("active", &self.active)
            .field("mode", &self.mode)
            .field("ordered", &self.ordered)
            .field("max_in_flight", &self.max_in_flight)
            .field("rate_limit", &self.rate_limit)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("secrets", &self.secrets.len())
            .field("ca", &self.ca.is_some())
            .field("managed", &self.managed)
            .field("created_at_ms", &self.created_at_ms)
            .field("disabled_reason", &self.disabled_reason)
            .field("failing_since_ms", &self.failing_since_ms)
            .finish()
    }
}

impl Subscription {
    /// A subscription made through the API, with the defaults the SPEC gives, before its
    /// fields are filled in.
    pub fn new_api(created_at_ms: u64) -> Subscription {
        Subscription {
            num: 0,
            name: String::new(),
            url: None,
            events: Vec::new(),
            active: true,
            mode: Mode::Notify,
            ordered: false,
            max_in_flight: 16,
            rate_limit: None,
            headers: Vec::new(),
            secrets: Vec::new(),
            ca: None,
            managed: Managed::Api,
            created_at_ms,
            disabled_reason: None,
            failing_since_ms: None,
        }
    }

    pub fn id(&self) -> String {
        sub_id(self.num)
    }
}

/// A subscription's id as the API shows it.
pub fn sub_id(num: u64) -> String {
    format!("sub_{num}")
}

/// The number of a subscription id.
pub fn parse_sub_id(id: &str) -> Option<u64> {
    id.strip_prefix("sub_")?.parse().ok().filter(|n| *n > 0)
}

/// A delivery's id as the API shows it.
pub fn delivery_id(seq: u64, num: u64) -> String {
    format!("dlv_{seq}_{num}")
}

/// The seq and subscription number of a delivery id.
pub fn parse_delivery_id(id: &str) -> Option<(u64, u64)> {
    let (seq, num) = id.strip_prefix("dlv_")?.split_once('_')?;
    Some((seq.parse().ok()?, num.parse().ok()?))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
    AwaitingCallback,
    Finished,
    TimedOut,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::AwaitingCallback => "awaiting_callback",
            DeliveryStatus::Finished => "finished",
            DeliveryStatus::TimedOut => "timed_out",
        }
    }

    const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
        DeliveryStatus::AwaitingCallback,
        DeliveryStatus::Finished,
        DeliveryStatus::TimedOut,
    ];

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn byte(self) -> u8 {
        self as u8
    }

    pub fn from_byte(b: u8) -> Option<DeliveryStatus> {
        Self::ALL.get(b as usize).copied()
    }

    /// Whether the event must be kept for it (retention waits).
    pub fn open(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Pending | DeliveryStatus::AwaitingCallback
        )
    }
}

/// One attempt of a delivery, as its log shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The first 4 KiB of the answer, as text.
    pub response_body: Option<String>,
    pub next_attempt_at_ms: Option<u64>,
}

/// The delivery of one event to one subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub seq: u64,
    pub sub: u64,
    pub status: DeliveryStatus,
    /// Attempts made (leases, for a pull subscription).
    pub attempts: u32,
    /// The first attempt and the latest ones.
    pub log: Vec<DeliveryAttempt>,
    pub next_attempt_at_ms: u64,
    pub created_at_ms: u64,
    /// The event's size, for the backlog's bytes.
    pub size: u64,
    /// Pull: leased to a consumer until then.
    pub lease_until_ms: Option<u64>,
    /// Callback mode: the callback is awaited until then.
    pub callback_deadline_ms: Option<u64>,
    /// Callback mode: the SHA-256 of the callback token (its `callbacks` key).
    pub callback_hash: Option<[u8; 32]>,
}

impl Delivery {
    pub fn id(&self) -> String {
        delivery_id(self.seq, self.sub)
    }

    pub fn new(seq: u64, sub: u64, size: u64, now_ms: u64) -> Delivery {
        Delivery {
            seq,
            sub,
            status: DeliveryStatus::Pending,
            attempts: 0,
            log: Vec::new(),
            next_attempt_at_ms: now_ms,
            created_at_ms: now_ms,
            size,
            lease_until_ms: None,
            callback_deadline_ms: None,
            callback_hash: None,
        }
    }
}

/// What made a derived event (SPEC §10): the event and subscription it came from, and
/// the outcome it records for that delivery, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Derived {
    pub seq: u64,
    pub sub: u64,
    /// `{type}.finished` events end their delivery: `Finished` or `TimedOut`.
    pub ends: Option<DeliveryStatus>,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    postcard::to_io(value, &mut out).expect("writing to a Vec cannot fail");
    out
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// `seq ++ num`: a `deliveries` key.
pub fn delivery_key(seq: u64, num: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8..].copy_from_slice(&num.to_be_bytes());
    key
}

/// `num ++ seq`: a `pending` and `sub_log` key.
pub fn sub_key(num: u64, seq: u64) -> [u8; 16] {
    delivery_key(num, seq)
}

/// Splits a 16-byte key into its two numbers.
pub fn split_key(key: &[u8]) -> Option<(u64, u64)> {
    let a = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let b = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    Some((a, b))
}

/// Writes a delivery and keeps `pending` and `sub_log` in step with its status.
pub(super) fn put(trees: &Trees, delivery: &Delivery) -> Result<(), store::Error> {
    trees
        .deliveries
        .insert(delivery_key(delivery.seq, delivery.sub), encode(delivery))?;
    let key = sub_key(delivery.sub, delivery.seq);
    trees.sub_log.insert(key, [delivery.status.byte()])?;
    if delivery.status == DeliveryStatus::Pending {
        trees.pending.insert(key, delivery.size.to_be_bytes())?;
    } else {
        trees.pending.remove(key)?;
    }
    Ok(())
}

/// A delivery as stored; `None` when there is none (or it cannot be read).
pub(super) fn get(trees: &Trees, seq: u64, num: u64) -> Result<Option<Delivery>, store::Error> {
    Ok(trees
        .deliveries
        .get(delivery_key(seq, num))?
        .and_then(|bytes| decode(&bytes)))
}

/// Every stored subscription, by number.
pub(super) fn all_subscriptions(trees: &Trees) -> Result<Vec<Subscription>, store::Error> {
    let mut found = Vec::new();
    for item in trees.subscriptions.iter() {
        let (_, bytes) = item?;
        match decode::<Subscription>(&bytes) {
            Some(sub) => found.push(sub),
            None => tracing::error!("a stored subscription cannot be read; it is left out"),
        }
    }
    Ok(found)
}

/// The deliveries a log entry created, and the delivery a derived event ended: written
/// again by recovery where the index lost them. Answers the new pending ones.
pub(super) fn reapply(trees: &Trees, created: &Created) -> Result<Vec<Delivery>, store::Error> {
    let seq = created.summary.seq;
    let mut made = Vec::new();
    for &num in &created.deliveries {
        if trees.deliveries.contains_key(delivery_key(seq, num))?
            || !trees.subscriptions.contains_key(seq_key(num))?
        {
            continue;
        }
        let delivery = Delivery::new(
            seq,
            num,
            created.summary.size,
            created.summary.received_at_ms,
        );
        put(trees, &delivery)?;
        made.push(delivery);
    }
    if let Some(Derived {
        seq: from,
        sub,
        ends: Some(status),
    }) = &created.derived
    {
        if let Some(mut delivery) = get(trees, *from, *sub)? {
            if delivery.status.open() {
                end_callback(trees, &mut delivery)?;
                delivery.status = *status;
                put(trees, &delivery)?;
            }
        }
    }
    Ok(made)
}

/// Removes what awaits a delivery's callback, and its token's hash: the callback URL is
/// of no use from then on.
pub(super) fn end_callback(trees: &Trees, delivery: &mut Delivery) -> Result<(), store::Error> {
    if let Some(deadline) = delivery.callback_deadline_ms {
        trees
            .deadlines
            .remove(deadline_key(deadline, delivery.seq, delivery.sub))?;
    }
    if let Some(hash) = delivery.callback_hash.take() {
        trees.callbacks.remove(hash)?;
    }
    Ok(())
}

/// Every delivery of an event (compacted, or never answered), with what refers to them.
/// Answers the removed ones.
pub(super) fn remove_all_of(trees: &Trees, seq: u64) -> Result<Vec<Delivery>, store::Error> {
    let mut removed = Vec::new();
    let range = delivery_key(seq, 0)..=delivery_key(seq, u64::MAX);
    for item in trees.deliveries.range(range) {
        let (key, bytes) = item?;
        trees.deliveries.remove(&key)?;
        let Some((seq, num)) = split_key(&key) else {
            continue;
        };
        trees.sub_log.remove(sub_key(num, seq))?;
        trees.pending.remove(sub_key(num, seq))?;
        if let Some(mut delivery) = decode::<Delivery>(&bytes) {
            end_callback(trees, &mut delivery)?;
            removed.push(delivery);
        }
    }
    Ok(removed)
}

/// `deadline ++ seq ++ num`: a `deadlines` key.
pub fn deadline_key(deadline_ms: u64, seq: u64, num: u64) -> [u8; 24] {
    let mut key = [0; 24];
    key[..8].copy_from_slice(&deadline_ms.to_be_bytes());
    key[8..].copy_from_slice(&delivery_key(seq, num));
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret_nor_header_value() {
        let mut sub = Subscription::new_api(0);
        sub.secrets = vec![("whsec_c2VjcmV0c2VjcmV0".into(), None)];
        sub.headers = vec![("authorization".into(), "Bearer t0ken".into())];
        let shown = format!("{sub:?}");
        assert!(
            !shown.contains("whsec_") && !shown.contains("t0ken"),
            "{shown}"
        );
        assert!(shown.contains("authorization"));
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_sub_id(&sub_id(7)), Some(7));
        assert_eq!(parse_sub_id("sub_0"), None);
        assert_eq!(parse_sub_id("7"), None);
        assert_eq!(parse_delivery_id(&delivery_id(42, 7)), Some((42, 7)));
        assert_eq!(parse_delivery_id("dlv_x_1"), None);
        for status in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::from_byte(status.byte()), Some(status));
            assert_eq!(DeliveryStatus::parse(status.as_str()), Some(status));
        }
    }

    #[test]
    fn records_round_trip_and_damage_is_none() {
        let d = Delivery::new(3, 4, 100, 1_000);
        let bytes = encode(&d);
        assert_eq!(decode::<Delivery>(&bytes), Some(d));
        assert_eq!(decode::<Delivery>(&bytes[..3]), None);
        assert_eq!(decode::<Delivery>(&[9, 1, 2]), None);
    }
}
