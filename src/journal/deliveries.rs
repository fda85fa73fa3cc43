//! The committer's side of subscriptions (SPEC §9-10): subscriptions are created,
//! changed and removed here; each accepted event gets a delivery per subscription it
//! matches in the step that accepts it; and what attempts came to (a worker's, or a
//! pull consumer's lease and ack, or a callback) is written back here, one step each.
//! The events hookgate makes itself (`{type}.finished`, operational events) are
//! appended here too, as log entries like any other: durable with the same sync.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::committer::{dedup_key, Committer};
use super::record::{Content, Created, Status, Summary};
use super::store;
use super::subscription::{
    self as sub, sub_id, Delivery, DeliveryAttempt, DeliveryStatus, Derived, Mode, Subscription,
};
use super::{seq_key, seq_of, JournalError, Trees};
use crate::deliver::pattern::Patterns;

/// How many attempts a delivery's log keeps: the first and the latest.
const MAX_LOGGED: usize = 12;
/// How long a chain of `.finished` events may grow (SPEC §10).
const MAX_FINISHED_DEPTH: usize = 4;
/// The most pending entries one lease looks at.
const MAX_LEASE_SCAN: usize = 10_000;
/// The most callbacks one expiry step ends.
const EXPIRE_CHUNK: usize = 1_000;
/// The source of hookgate's operational events.
pub const OPERATIONAL_SOURCE: &str = "hookgate";
/// The `meta` key of the next subscription number.
const NEXT_SUB: &[u8] = b"next_subscription";

/// A subscription's deliveries by status, and when it last succeeded and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubStats {
    pub pending: u64,
    /// Delivered, or finished.
    pub delivered: u64,
    /// Failed, or timed out.
    pub failed: u64,
    pub awaiting_callback: u64,
    pub last_success_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
}

impl SubStats {
    fn slot(&mut self, status: DeliveryStatus) -> &mut u64 {
        match status {
            DeliveryStatus::Pending => &mut self.pending,
            DeliveryStatus::Delivered | DeliveryStatus::Finished => &mut self.delivered,
            DeliveryStatus::Failed | DeliveryStatus::TimedOut => &mut self.failed,
            DeliveryStatus::AwaitingCallback => &mut self.awaiting_callback,
        }
    }

    fn moved(&mut self, from: DeliveryStatus, to: DeliveryStatus) {
        let from = self.slot(from);
        *from = from.saturating_sub(1);
        *self.slot(to) += 1;
    }
}

/// What one attempt came to, as its worker judged it.
#[derive(Clone, Debug)]
pub struct DeliveryOutcome {
    pub seq: u64,
    pub sub: u64,
    pub attempt: DeliveryAttempt,
    pub verdict: Verdict,
}

#[derive(Clone, Debug)]
pub enum Verdict {
    /// A 2xx: done. In `finish` mode `result` is the answer's JSON, for `{type}.finished`.
    Delivered { result: Option<Value> },
    /// A 2xx in `callback` mode: done once the callback with this token hash comes.
    AwaitCallback { hash: [u8; 32], deadline_ms: u64 },
    /// Failed; made again at `at_ms`.
    Retry { at_ms: u64 },
    /// Failed for the last time, or cannot be made (the event is damaged or gone).
    Failed,
    /// `410 Gone`: the subscription is disabled; the delivery waits until it is enabled.
    Gone,
}

/// What became of a callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallbackAnswer {
    /// It ended this delivery (its id).
    Finished { delivery: String },
    /// No delivery awaits this token (never issued, used already, or timed out).
    Unknown,
}

/// The subscriptions as the committer holds them: all, and the patterns of the active
/// ones, which each accepted event is matched against.
pub(super) struct Subs {
    all: BTreeMap<u64, Subscription>,
    active: Vec<(u64, Patterns)>,
}

impl Subs {
    pub(super) fn new(list: Vec<Subscription>) -> Subs {
        let mut subs = Subs {
            all: list.into_iter().map(|s| (s.num, s)).collect(),
            active: Vec::new(),
        };
        subs.rebuild();
        subs
    }

    fn rebuild(&mut self) {
        self.active = self
            .all
            .values()
            .filter(|s| s.active)
            .filter_map(|s| match Patterns::parse(&s.events) {
                Ok(patterns) => Some((s.num, patterns)),
                Err(e) => {
                    tracing::error!(subscription = %s.id(), error = %e, "a subscription's event patterns cannot be read; it receives nothing");
                    None
                }
            })
            .collect();
    }

    /// The subscriptions an event goes to: the active ones that match it, except the one
    /// that made it (a subscription never receives what it produced itself).
    pub(super) fn matching(&self, summary: &Summary, derived: Option<&Derived>) -> Vec<u64> {
        if self.active.is_empty() {
            return Vec::new();
        }
        let made_by = derived.map(|d| d.sub);
        self.active
            .iter()
            .filter(|(num, patterns)| {
                Some(*num) != made_by
                    && patterns.matches(&summary.source, summary.event_type.as_deref())
            })
            .map(|(num, _)| *num)
            .collect()
    }

    fn set(&mut self, sub: Subscription) {
        self.all.insert(sub.num, sub);
        self.rebuild();
    }

    fn remove(&mut self, num: u64) -> Option<Subscription> {
        let removed = self.all.remove(&num);
        self.rebuild();
        removed
    }

    fn get(&self, num: u64) -> Option<&Subscription> {
        self.all.get(&num)
    }

    fn list(&self) -> Arc<Vec<Subscription>> {
        Arc::new(self.all.values().cloned().collect())
    }
}

/// Counts deliveries at open: per subscription by status, and when each last
/// succeeded and failed (a walk of every delivery record, which a census spares).
pub(super) fn count_stats(trees: &Trees) -> Result<HashMap<u64, SubStats>, JournalError> {
    let mut stats: HashMap<u64, SubStats> = HashMap::new();
    for item in trees.deliveries.iter() {
        let (_, bytes) = item.map_err(unwritable)?;
        let Some(delivery) = sub::decode::<Delivery>(&bytes) else {
            continue;
        };
        let s = stats.entry(delivery.sub).or_default();
        *s.slot(delivery.status) += 1;
        for attempt in &delivery.log {
            let at = Some(attempt.at_ms);
            if attempt.status_code.is_some_and(|c| (200..300).contains(&c)) {
                s.last_success_ms = s.last_success_ms.max(at);
            } else if attempt.error.is_some() || attempt.status_code.is_some() {
                s.last_failure_ms = s.last_failure_ms.max(at);
            }
        }
    }
    Ok(stats)
}

/// The pending deliveries, and their events' bytes, for the backlog.
pub(super) fn count_pending(trees: &Trees) -> Result<(u64, u64), JournalError> {
    let (mut pending, mut bytes) = (0, 0);
    for item in trees.pending.iter() {
        let (_, size) = item.map_err(unwritable)?;
        pending += 1;
        bytes += size
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or(0);
    }
    Ok((pending, bytes))
}

fn unwritable(e: store::Error) -> JournalError {
    JournalError::Unwritable(e.to_string())
}

/// Adds an attempt to a delivery's log, which keeps the first and the latest ones.
fn log_attempt(delivery: &mut Delivery, attempt: DeliveryAttempt) {
    delivery.log.push(attempt);
    if delivery.log.len() > MAX_LOGGED {
        delivery.log.remove(1);
    }
}

/// What a callback (or its absence) came to, for a delivery's log: no HTTP attempt.
fn callback_note(
    at_ms: u64,
    error: Option<String>,
    response_body: Option<String>,
) -> DeliveryAttempt {
    DeliveryAttempt {
        at_ms,
        duration_ms: 0,
        status_code: None,
        error,
        response_body,
        next_attempt_at_ms: None,
    }
}

/// How many `.finished` an event type ends with.
fn finished_depth(event_type: &str) -> usize {
    let mut depth = 0;
    let mut rest = event_type;
    while let Some(shorter) = rest.strip_suffix(".finished") {
        depth += 1;
        rest = shorter;
    }
    depth
}

impl Committer {
    pub(super) fn stat(&self, num: u64, change: impl FnOnce(&mut SubStats)) {
        change(
            self.shared
                .sub_stats
                .lock()
                .expect("sub stats lock")
                .entry(num)
                .or_default(),
        );
    }

    /// Tells `num`'s worker to read its pending set again from `seq`.
    fn rewind_sub(&self, num: u64, seq: u64) {
        self.shared
            .sub_rewinds
            .lock()
            .expect("sub rewinds lock")
            .entry(num)
            .and_modify(|s| *s = (*s).min(seq))
            .or_insert(seq);
        self.outlets.rewound.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn store_subscription(&mut self, sub: Subscription) -> Result<(), JournalError> {
        self.trees
            .subscriptions
            .insert(seq_key(sub.num), sub::encode(&sub))
            .map_err(unwritable)?;
        self.subs.set(sub);
        self.outlets.subscriptions.send_replace(self.subs.list());
        Ok(())
    }

    /// Creates a subscription (`num` 0: it gets the next number) or replaces one.
    pub(super) fn put_subscription(
        &mut self,
        mut new: Subscription,
    ) -> Result<Subscription, JournalError> {
        if let Some(other) = self
            .subs
            .all
            .values()
            .find(|s| s.name == new.name && s.num != new.num)
        {
            return Err(JournalError::Conflict(format!(
                "the name `{}` is taken by subscription {}",
                new.name,
                other.id()
            )));
        }
        if new.num == 0 {
            let stored = self
                .trees
                .meta
                .get(NEXT_SUB)
                .map_err(unwritable)?
                .map_or(1, |v| seq_of(&v));
            let after_existing = self.subs.all.keys().next_back().map_or(1, |n| n + 1);
            new.num = stored.max(after_existing);
            self.trees
                .meta
                .insert(NEXT_SUB, seq_key(new.num + 1))
                .map_err(unwritable)?;
        } else if self.subs.get(new.num).is_none() {
            return Err(JournalError::Conflict(format!(
                "there is no subscription {}",
                new.id()
            )));
        }
        let num = new.num;
        self.store_subscription(new.clone())?;
        // Enabled again, or changed: its worker looks at all it has pending.
        self.rewind_sub(num, 0);
        Ok(new)
    }

    /// Removes a subscription; its open deliveries are dropped (and logged). Answers how
    /// many were.
    pub(super) fn delete_subscription(&mut self, num: u64) -> Result<u64, JournalError> {
        let Some(gone) = self.subs.remove(num) else {
            return Ok(0);
        };
        self.trees
            .subscriptions
            .remove(seq_key(num))
            .map_err(unwritable)?;
        let mut dropped = 0;
        let range = sub::sub_key(num, 0)..=sub::sub_key(num, u64::MAX);
        for item in self.trees.sub_log.range(range) {
            let (key, _) = item.map_err(unwritable)?;
            let Some((_, seq)) = sub::split_key(&key) else {
                continue;
            };
            if let Some(mut delivery) = sub::get(&self.trees, seq, num).map_err(unwritable)? {
                if delivery.status.open() {
                    dropped += 1;
                }
                if delivery.status == DeliveryStatus::Pending {
                    self.shared.unqueued(delivery.size);
                }
                sub::end_callback(&self.trees, &mut delivery).map_err(unwritable)?;
            }
            self.trees
                .deliveries
                .remove(sub::delivery_key(seq, num))
                .map_err(unwritable)?;
            self.trees.pending.remove(&key).map_err(unwritable)?;
            self.trees.sub_log.remove(&key).map_err(unwritable)?;
        }
        self.shared
            .sub_stats
            .lock()
            .expect("sub stats lock")
            .remove(&num);
        self.outlets.subscriptions.send_replace(self.subs.list());
        if dropped > 0 {
            tracing::warn!(subscription = %gone.id(), name = %gone.name, dropped, "subscription deleted; its open deliveries were dropped");
        } else {
            tracing::info!(subscription = %gone.id(), name = %gone.name, "subscription deleted");
        }
        Ok(dropped)
    }

    /// Writes what attempts came to.
    pub(super) fn outcomes(&mut self, outcomes: Vec<DeliveryOutcome>) -> Result<(), JournalError> {
        for outcome in outcomes {
            self.outcome(outcome)?;
        }
        Ok(())
    }

    fn outcome(&mut self, outcome: DeliveryOutcome) -> Result<(), JournalError> {
        let DeliveryOutcome {
            seq,
            sub: num,
            attempt,
            verdict,
        } = outcome;
        let Some(mut delivery) = sub::get(&self.trees, seq, num).map_err(unwritable)? else {
            return Ok(());
        };
        if delivery.status != DeliveryStatus::Pending {
            // Retried, acknowledged or dropped meanwhile.
            return Ok(());
        }
        let at_ms = attempt.at_ms;
        delivery.attempts = delivery.attempts.saturating_add(1);
        log_attempt(&mut delivery, attempt);
        let mut finished = None;
        match verdict {
            Verdict::Delivered { result } => {
                self.close_delivery(&mut delivery, DeliveryStatus::Delivered);
                self.succeeded(num, at_ms)?;
                if self.subs.get(num).is_some_and(|s| s.mode == Mode::Finish) {
                    // Recovery reads the delivery's end from the `.finished` entry too.
                    finished = Some(("succeeded", result, Some(DeliveryStatus::Delivered)));
                }
            }
            Verdict::AwaitCallback { hash, deadline_ms } => {
                self.close_delivery(&mut delivery, DeliveryStatus::AwaitingCallback);
                delivery.callback_hash = Some(hash);
                delivery.callback_deadline_ms = Some(deadline_ms);
                self.trees
                    .callbacks
                    .insert(hash, sub::delivery_key(seq, num))
                    .map_err(unwritable)?;
                self.trees
                    .deadlines
                    .insert(sub::deadline_key(deadline_ms, seq, num), [])
                    .map_err(unwritable)?;
                self.succeeded(num, at_ms)?;
            }
            Verdict::Retry { at_ms: next } => {
                delivery.next_attempt_at_ms = next;
                self.failed(num, at_ms)?;
            }
            Verdict::Failed => {
                self.close_delivery(&mut delivery, DeliveryStatus::Failed);
                self.failed(num, at_ms)?;
            }
            Verdict::Gone => {
                delivery.next_attempt_at_ms = at_ms;
                self.failed(num, at_ms)?;
                self.disable(num, "the endpoint answered 410 Gone".into(), at_ms)?;
            }
        }
        sub::put(&self.trees, &delivery).map_err(unwritable)?;
        if delivery.status == DeliveryStatus::Failed {
            self.delivery_failed(&delivery, at_ms)?;
        }
        if let Some((status, result, ends)) = finished {
            self.finished(seq, num, status, result, ends, at_ms)?;
        }
        Ok(())
    }

    /// A pending delivery leaves the pending set as `to`.
    fn close_delivery(&self, delivery: &mut Delivery, to: DeliveryStatus) {
        let from = delivery.status;
        if from == DeliveryStatus::Pending && to != DeliveryStatus::Pending {
            self.shared.unqueued(delivery.size);
        } else if from != DeliveryStatus::Pending && to == DeliveryStatus::Pending {
            self.shared.queued(delivery.size);
        }
        delivery.status = to;
        delivery.lease_until_ms = None;
        self.stat(delivery.sub, |s| s.moved(from, to));
    }

    /// An attempt of `num` succeeded: it is not failing any more.
    fn succeeded(&mut self, num: u64, at_ms: u64) -> Result<(), JournalError> {
        self.stat(num, |s| {
            s.last_success_ms = s.last_success_ms.max(Some(at_ms))
        });
        match self.subs.get(num) {
            Some(s) if s.failing_since_ms.is_some() => {
                let mut s = s.clone();
                s.failing_since_ms = None;
                self.store_subscription(s)
            }
            _ => Ok(()),
        }
    }

    /// An attempt of `num` failed: one failing for `disable_after` is disabled.
    fn failed(&mut self, num: u64, at_ms: u64) -> Result<(), JournalError> {
        self.stat(num, |s| {
            s.last_failure_ms = s.last_failure_ms.max(Some(at_ms))
        });
        let Some(s) = self.subs.get(num) else {
            return Ok(());
        };
        let Some(since) = s.failing_since_ms else {
            let mut s = s.clone();
            s.failing_since_ms = Some(at_ms);
            return self.store_subscription(s);
        };
        let limit = self.settings.delivery.disable_after;
        if s.active && at_ms.saturating_sub(since) >= limit.as_millis() as u64 {
            let why = format!(
                "every attempt failed for {}",
                crate::config::show_duration(limit)
            );
            return self.disable(num, why, at_ms);
        }
        Ok(())
    }

    /// Disables a subscription (410, or failing too long) and says so in an
    /// operational event.
    fn disable(&mut self, num: u64, reason: String, at_ms: u64) -> Result<(), JournalError> {
        let Some(s) = self.subs.get(num) else {
            return Ok(());
        };
        if !s.active {
            return Ok(());
        }
        let mut s = s.clone();
        s.active = false;
        s.disabled_reason = Some(reason.clone());
        tracing::warn!(subscription = %s.id(), name = %s.name, reason = %reason, "subscription disabled");
        let payload = json!({
            "subscription": s.id(),
            "name": s.name,
            "url": s.url,
            "reason": reason,
        });
        let id = format!("subscription.disabled.{}.{at_ms}", s.id());
        self.store_subscription(s)?;
        self.derive(
            OPERATIONAL_SOURCE,
            id,
            "hookgate.subscription.disabled".into(),
            payload,
            Derived {
                seq: 0,
                sub: num,
                ends: None,
            },
            at_ms,
        )
        .map(drop)
    }

    /// A delivery failed for good: says so in an operational event, unless what failed
    /// was itself an operational event (two failing subscriptions would otherwise tell
    /// each other of their failures forever).
    fn delivery_failed(&mut self, delivery: &Delivery, at_ms: u64) -> Result<(), JournalError> {
        let last = delivery.log.last();
        tracing::warn!(delivery = %delivery.id(), seq = delivery.seq, attempts = delivery.attempts, "delivery failed; no attempts left");
        let about_ours = self
            .summary_of(delivery.seq)?
            .is_some_and(|s| s.source == OPERATIONAL_SOURCE);
        if about_ours {
            return Ok(());
        }
        let payload = json!({
            "delivery": delivery.id(),
            "subscription": sub_id(delivery.sub),
            "seq": delivery.seq,
            "attempts": delivery.attempts,
            "last_status_code": last.and_then(|a| a.status_code),
            "last_error": last.and_then(|a| a.error.clone()),
        });
        self.derive(
            OPERATIONAL_SOURCE,
            format!("delivery.failed.{}.{}", delivery.id(), delivery.attempts),
            "hookgate.delivery.failed".into(),
            payload,
            Derived {
                seq: delivery.seq,
                sub: delivery.sub,
                ends: None,
            },
            at_ms,
        )
        .map(drop)
    }

    /// Appends `{type}.finished` for the delivery of `seq` to `num`.
    fn finished(
        &mut self,
        seq: u64,
        num: u64,
        status: &str,
        result: Option<Value>,
        ends: Option<DeliveryStatus>,
        at_ms: u64,
    ) -> Result<(), JournalError> {
        let Some(s) = self.subs.get(num) else {
            return Ok(());
        };
        let name = s.name.clone();
        let Some(summary) = self.summary_of(seq)? else {
            return Ok(());
        };
        let event_type = summary.event_type.as_deref().unwrap_or("unknown");
        if finished_depth(event_type) >= MAX_FINISHED_DEPTH {
            tracing::info!(seq, subscription = %sub_id(num), "a chain of .finished events stops at depth 4");
            return Ok(());
        }
        let payload = json!({
            "triggered_by": {
                "seq": summary.seq,
                "id": summary.id,
                "source": summary.source,
                "type": summary.event_type,
            },
            "subscription": sub_id(num),
            "status": status,
            "result": result.unwrap_or(Value::Null),
        });
        self.derive(
            &name,
            format!("{}.finished.{}", summary.id, sub_id(num)),
            format!("{event_type}.finished"),
            payload,
            Derived {
                seq,
                sub: num,
                ends,
            },
            at_ms,
        )
        .map(drop)
    }

    fn summary_of(&self, seq: u64) -> Result<Option<Summary>, JournalError> {
        Ok(self
            .trees
            .events
            .get(seq_key(seq))
            .map_err(unwritable)?
            .and_then(|bytes| super::record::decode_summary(&bytes).ok()))
    }

    /// Appends an event hookgate made itself, unless its id is already remembered (it was
    /// made before a crash that lost the outcome that made it). Answers its seq.
    fn derive(
        &mut self,
        source: &str,
        id: String,
        event_type: String,
        payload: Value,
        derived: Derived,
        at_ms: u64,
    ) -> Result<Option<u64>, JournalError> {
        let key = dedup_key(source, &id);
        if self.key_owner(&key)?.is_some() {
            return Ok(None);
        }
        let body = bytes::Bytes::from(payload.to_string());
        let seq = self.last_seq + 1;
        let summary = Summary {
            seq,
            id,
            source: source.to_string(),
            event_type: Some(event_type),
            status: Status::Queued,
            received_at_ms: at_ms,
            attempts: 0,
            size: body.len() as u64,
            replay_of: None,
        };
        let deliveries = self.subs.matching(&summary, Some(&derived));
        let created = Created {
            summary,
            content: Content {
                event_ts: Some((at_ms / 1000) as i64),
                order_key: None,
                content_type: "application/json".into(),
                headers: Default::default(),
                client_identity: None,
                body,
                normalised: None,
            },
            replays: 0,
            order_ts: None,
            remembered: true,
            replay_key: None,
            deliveries,
            derived: Some(derived),
            keys_in_index: false,
        };
        self.log_and_index(&created)?;
        Ok(Some(seq))
    }

    /// Pull: leases up to `max` due deliveries of `num`, oldest first. A lease that
    /// expired counts as a failed attempt and is due again at once (a visibility
    /// timeout, as SPEC §9 says: it returns to pending when it expires); after as many
    /// expiries as the schedule has attempts the delivery is `failed`.
    pub(super) fn lease(
        &mut self,
        num: u64,
        max: usize,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Delivery>, JournalError> {
        let mut leased = Vec::new();
        // Only events whose flush is done: one still being synced may yet be refused.
        let durable = *self.outlets.published.borrow();
        let range = sub::sub_key(num, 0)..=sub::sub_key(num, durable);
        let keys: Vec<_> = self
            .trees
            .pending
            .range(range)
            .keys()
            .take(MAX_LEASE_SCAN)
            .collect::<Result<_, _>>()
            .map_err(unwritable)?;
        for key in keys {
            if leased.len() >= max {
                break;
            }
            let Some((_, seq)) = sub::split_key(&key) else {
                continue;
            };
            let Some(mut delivery) = sub::get(&self.trees, seq, num).map_err(unwritable)? else {
                continue;
            };
            match delivery.lease_until_ms {
                Some(until) if until > now_ms => continue,
                Some(until) => {
                    // The consumer took it and never acknowledged it: due again now,
                    // unless the schedule has no attempt left.
                    let retries_left = (delivery.attempts.saturating_sub(1) as usize)
                        < self.settings.delivery.retry.len();
                    let next = retries_left.then_some(until);
                    log_attempt(
                        &mut delivery,
                        DeliveryAttempt {
                            at_ms: until,
                            duration_ms: 0,
                            status_code: None,
                            error: Some("lease expired without an ack".into()),
                            response_body: None,
                            next_attempt_at_ms: next,
                        },
                    );
                    delivery.lease_until_ms = None;
                    self.failed(num, until)?;
                    match next {
                        Some(next) => delivery.next_attempt_at_ms = next,
                        None => {
                            self.close_delivery(&mut delivery, DeliveryStatus::Failed);
                            sub::put(&self.trees, &delivery).map_err(unwritable)?;
                            self.delivery_failed(&delivery, now_ms)?;
                            continue;
                        }
                    }
                }
                None => {}
            }
            if delivery.next_attempt_at_ms <= now_ms {
                delivery.attempts = delivery.attempts.saturating_add(1);
                delivery.lease_until_ms = Some(now_ms + lease_ms);
                leased.push(delivery.clone());
            }
            sub::put(&self.trees, &delivery).map_err(unwritable)?;
        }
        Ok(leased)
    }

    /// Pull: completes deliveries of `num`; answers how many were pending.
    pub(super) fn ack(&mut self, num: u64, seqs: &[u64], now_ms: u64) -> Result<u64, JournalError> {
        let mut acked = 0;
        for &seq in seqs {
            let Some(mut delivery) = sub::get(&self.trees, seq, num).map_err(unwritable)? else {
                continue;
            };
            if delivery.status != DeliveryStatus::Pending {
                continue;
            }
            let leased_at = delivery
                .lease_until_ms
                .map(|_| delivery.log.last().map_or(now_ms, |a| a.at_ms));
            log_attempt(
                &mut delivery,
                DeliveryAttempt {
                    at_ms: now_ms,
                    duration_ms: leased_at.map_or(0, |at| now_ms.saturating_sub(at)),
                    status_code: None,
                    error: None,
                    response_body: None,
                    next_attempt_at_ms: None,
                },
            );
            self.close_delivery(&mut delivery, DeliveryStatus::Delivered);
            sub::put(&self.trees, &delivery).map_err(unwritable)?;
            self.succeeded(num, now_ms)?;
            acked += 1;
        }
        Ok(acked)
    }

    /// Makes a delivery pending again, due now (whatever its status).
    pub(super) fn retry_delivery(
        &mut self,
        seq: u64,
        num: u64,
        now_ms: u64,
    ) -> Result<bool, JournalError> {
        let Some(mut delivery) = sub::get(&self.trees, seq, num).map_err(unwritable)? else {
            return Ok(false);
        };
        sub::end_callback(&self.trees, &mut delivery).map_err(unwritable)?;
        delivery.callback_deadline_ms = None;
        self.close_delivery(&mut delivery, DeliveryStatus::Pending);
        delivery.next_attempt_at_ms = now_ms;
        sub::put(&self.trees, &delivery).map_err(unwritable)?;
        self.rewind_sub(num, seq);
        Ok(true)
    }

    /// A callback: ends the delivery awaiting it and appends `{type}.finished`.
    pub(super) fn callback(
        &mut self,
        hash: &[u8; 32],
        succeeded: bool,
        result: Option<Value>,
        now_ms: u64,
    ) -> Result<CallbackAnswer, JournalError> {
        let Some(target) = self.trees.callbacks.get(hash).map_err(unwritable)? else {
            return Ok(CallbackAnswer::Unknown);
        };
        let Some((seq, num)) = sub::split_key(&target) else {
            return Ok(CallbackAnswer::Unknown);
        };
        let Some(delivery) = sub::get(&self.trees, seq, num).map_err(unwritable)? else {
            return Ok(CallbackAnswer::Unknown);
        };
        let same = delivery
            .callback_hash
            .is_some_and(|stored| bool::from(stored.ct_eq(hash)));
        if !same || delivery.status != DeliveryStatus::AwaitingCallback {
            return Ok(CallbackAnswer::Unknown);
        }
        let status = if succeeded { "succeeded" } else { "failed" };
        let said = callback_note(
            now_ms,
            (!succeeded).then(|| "the task reported failure".to_string()),
            Some(format!("callback: {status}")),
        );
        let id = delivery.id();
        self.end_awaiting(delivery, DeliveryStatus::Finished, said, status, result)?;
        Ok(CallbackAnswer::Finished { delivery: id })
    }

    /// Ends deliveries whose callback did not come by their deadline.
    pub(super) fn expire_callbacks(&mut self, now_ms: u64) -> Result<u64, JournalError> {
        let due: Vec<_> = self
            .trees
            .deadlines
            .range(..sub::deadline_key(now_ms, u64::MAX, u64::MAX))
            .keys()
            .take(EXPIRE_CHUNK)
            .collect::<Result<_, _>>()
            .map_err(unwritable)?;
        let mut expired = 0;
        for key in due {
            self.trees.deadlines.remove(&key).map_err(unwritable)?;
            let Some((seq, num)) = key.get(8..).and_then(sub::split_key) else {
                continue;
            };
            let Some(delivery) = sub::get(&self.trees, seq, num).map_err(unwritable)? else {
                continue;
            };
            if delivery.status != DeliveryStatus::AwaitingCallback {
                continue;
            }
            self.failed(num, now_ms)?;
            tracing::warn!(delivery = %delivery.id(), "callback timed out");
            let said = callback_note(now_ms, Some("no callback came in time".into()), None);
            self.end_awaiting(delivery, DeliveryStatus::TimedOut, said, "timed_out", None)?;
            expired += 1;
        }
        Ok(expired)
    }

    /// Ends a delivery that awaited its callback as `to` (finished or timed out), with
    /// `said` in its log, and appends `{type}.finished` with `status` and `result`.
    fn end_awaiting(
        &mut self,
        mut delivery: Delivery,
        to: DeliveryStatus,
        said: DeliveryAttempt,
        status: &str,
        result: Option<Value>,
    ) -> Result<(), JournalError> {
        sub::end_callback(&self.trees, &mut delivery).map_err(unwritable)?;
        let at_ms = said.at_ms;
        log_attempt(&mut delivery, said);
        self.close_delivery(&mut delivery, to);
        sub::put(&self.trees, &delivery).map_err(unwritable)?;
        let (seq, num) = (delivery.seq, delivery.sub);
        self.finished(seq, num, status, result, Some(to), at_ms)
    }

    /// Whether an event still has a delivery open (retention keeps it).
    pub(super) fn has_open_deliveries(&self, seq: u64) -> Result<bool, JournalError> {
        let range = sub::delivery_key(seq, 0)..=sub::delivery_key(seq, u64::MAX);
        for item in self.trees.deliveries.range(range) {
            let (_, bytes) = item.map_err(unwritable)?;
            if sub::decode::<Delivery>(&bytes).is_some_and(|d| d.status.open()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes a compacted event's deliveries.
    pub(super) fn drop_deliveries(&mut self, seq: u64) -> Result<(), JournalError> {
        for delivery in sub::remove_all_of(&self.trees, seq).map_err(unwritable)? {
            if delivery.status == DeliveryStatus::Pending {
                self.shared.unqueued(delivery.size);
            }
            self.stat(delivery.sub, |s| {
                let slot = s.slot(delivery.status);
                *slot = slot.saturating_sub(1);
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::finished_depth;

    #[test]
    fn finished_depth_counts_the_suffixes() {
        assert_eq!(finished_depth("push"), 0);
        assert_eq!(finished_depth("push.finished"), 1);
        assert_eq!(
            finished_depth("push.finished.finished.finished.finished"),
            4
        );
        assert_eq!(finished_depth("finished"), 0);
    }
}
