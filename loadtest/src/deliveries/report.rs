//! What a `deliveries` run came to: each accepted event matched with its arrival at
//! the sink for every subscription, and how that is printed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::sink::Seen;
use super::Outcome;
use crate::run::Report;

pub struct Deliveries {
    pub subscriptions: usize,
    /// `accepted × subscriptions`.
    pub expected: u64,
    /// Accepted events that arrived for a subscription (first arrivals only).
    pub delivered: u64,
    /// Repeat arrivals of an event for a subscription (at least once allows them).
    pub duplicates: u64,
    /// Requests the sink could not match (no `webhook-id`, or another path).
    pub unmatched: u64,
    /// First arrivals of events this run did not see accepted: those without an answer,
    /// or, on an attached gateway, other traffic.
    pub others: u64,
    /// A few of the missing and of the others, to look up in the gateway's delivery log.
    pub some_missing: Vec<String>,
    pub some_others: Vec<String>,
    /// Microseconds from an event's `200` to its arrival.
    pub latency: Histogram<u64>,
    /// Deliveries that arrived before the load generator had read their event's `200`
    /// (counted in `latency` as 1 µs): the gateway sends the answer and wakes the
    /// workers on the same flush.
    pub before_ack: u64,
    /// From the start of ingest to its last answer.
    pub ingest: Duration,
    /// From the start of ingest to the last arrival.
    pub span: Duration,
    /// From the end of ingest to the last arrival (zero when none came after it).
    pub drain: Duration,
    /// Deliveries that arrived after ingest ended: the backlog at that moment.
    pub after_end: u64,
    /// Arrivals with a lower `hookgate-seq` than one that arrived before them for the
    /// same subscription (unordered subscriptions run `max_in_flight` attempts at once).
    pub reordered: u64,
}

/// How many (accepted event, subscription) pairs have not arrived.
pub fn missing(seen: &Seen, accepted: &[(String, Instant)], subscriptions: usize) -> u64 {
    let mut missing = 0;
    for (id, _) in accepted {
        for sub in 1..=subscriptions {
            if !seen.first.contains_key(&(sub, id.clone())) {
                missing += 1;
            }
        }
    }
    missing
}

/// How many missing and other deliveries a report names.
const EXAMPLES: usize = 5;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

impl Deliveries {
    /// Matches each accepted event (`id`, when its `200` was read) with its arrivals.
    pub fn tally(
        seen: &Seen,
        accepted: &[(String, Instant)],
        subscriptions: usize,
        began: Instant,
        ended: Instant,
    ) -> Deliveries {
        let mut latency = histogram();
        let (mut delivered, mut before_ack, mut after_end) = (0, 0, 0);
        let mut last = began;
        // Arrivals (time, seq) of subscription n at index n - 1.
        let mut by_sub: Vec<Vec<(Instant, u64)>> = vec![Vec::new(); subscriptions];
        for (id, acked) in accepted {
            for (index, arrivals) in by_sub.iter_mut().enumerate() {
                let sub = index + 1;
                let Some(arrival) = seen.first.get(&(sub, id.clone())) else {
                    continue;
                };
                delivered += 1;
                let micros = match arrival.at.checked_duration_since(*acked) {
                    Some(after) => after.as_micros().max(1) as u64,
                    None => {
                        before_ack += 1;
                        1
                    }
                };
                let _ = latency.record(micros);
                last = last.max(arrival.at);
                if arrival.at > ended {
                    after_end += 1;
                }
                if let Some(seq) = arrival.seq {
                    arrivals.push((arrival.at, seq));
                }
            }
        }
        let ids: HashSet<&str> = accepted.iter().map(|(id, _)| id.as_str()).collect();
        let other_keys: Vec<&(usize, String)> = seen
            .first
            .keys()
            .filter(|(sub, id)| *sub > subscriptions || !ids.contains(id.as_str()))
            .collect();
        let mut some_others: Vec<String> = other_keys
            .iter()
            .map(|(sub, id)| format!("{id} at subscription {sub}"))
            .collect();
        some_others.sort();
        some_others.truncate(EXAMPLES);
        let some_missing = accepted
            .iter()
            .flat_map(|(id, _)| (1..=subscriptions).map(move |sub| (sub, id)))
            .filter(|(sub, id)| !seen.first.contains_key(&(*sub, (*id).clone())))
            .take(EXAMPLES)
            .map(|(sub, id)| format!("{id} at subscription {sub}"))
            .collect();
        let mut reordered = 0;
        for arrivals in &mut by_sub {
            arrivals.sort_unstable();
            let mut highest = 0;
            for &(_, seq) in arrivals.iter() {
                if seq < highest {
                    reordered += 1;
                }
                highest = highest.max(seq);
            }
        }
        Deliveries {
            reordered,
            subscriptions,
            expected: accepted.len() as u64 * subscriptions as u64,
            delivered,
            duplicates: seen.duplicates,
            unmatched: seen.unmatched,
            others: other_keys.len() as u64,
            some_missing,
            some_others,
            latency,
            before_ack,
            ingest: ended - began,
            span: last - began,
            drain: last.saturating_duration_since(ended),
            after_end,
        }
    }

    pub fn missing(&self) -> u64 {
        self.expected - self.delivered
    }

    /// Deliveries per second, from the start of ingest to the last arrival.
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.span.as_secs_f64().max(1e-9)
    }

    /// Delivery throughput over ingest throughput × subscriptions: 1 when every
    /// subscription keeps up, below when deliveries trail behind (or are missing).
    pub fn ratio(&self, ingest_rate: f64) -> f64 {
        self.rate() / (ingest_rate * self.subscriptions as f64).max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Accepted events per second over the whole ingest.
fn accepted_rate(report: &Report) -> f64 {
    report.tally.accepted_at.len() as f64 / report.elapsed.as_secs_f64().max(1e-9)
}

fn ack_ms(report: &Report, q: f64) -> f64 {
    report.latency.value_at_quantile(q) as f64 / 1000.0
}

pub fn print(outcome: &Outcome, json: bool) {
    let d = &outcome.deliveries;
    let ingest_rate = accepted_rate(&outcome.loaded);
    if json {
        let value = serde_json::json!({
            "subscriptions": outcome.subscriptions,
            "rate": outcome.rate,
            "ingest_alone": outcome.baseline.to_json(),
            "ingest_with_subscriptions": outcome.loaded.to_json(),
            "accepted_per_second": {
                "alone": accepted_rate(&outcome.baseline),
                "with_subscriptions": ingest_rate,
            },
            "ack_p99_ms": {
                "alone": ack_ms(&outcome.baseline, 0.99),
                "with_subscriptions": ack_ms(&outcome.loaded, 0.99),
            },
            "deliveries": {
                "expected": d.expected,
                "delivered": d.delivered,
                "missing": d.missing(),
                "duplicates": d.duplicates,
                "unmatched": d.unmatched,
                "others": d.others,
                "per_second": d.rate(),
                "ratio": d.ratio(ingest_rate),
                "arrived_before_ack": d.before_ack,
                "after_ingest_ended": d.after_end,
                "reordered": d.reordered,
                "some_missing": d.some_missing,
                "some_others": d.some_others,
                "drain_seconds": d.drain.as_secs_f64(),
                "latency_ms": {
                    "p50": d.ms(0.5), "p90": d.ms(0.9), "p99": d.ms(0.99),
                    "p99.9": d.ms(0.999), "max": d.latency.max() as f64 / 1000.0,
                },
            },
            "ok": outcome.ok(),
        });
        println!("{value}");
        return;
    }
    println!(
        "deliveries to {} subscriptions on a local sink; ingest at {} events/s for {:.1} s",
        outcome.subscriptions,
        outcome.rate,
        d.ingest.as_secs_f64()
    );
    println!("                          accepted   events/s   ack p50     ack p99     ack max");
    for (label, report) in [
        ("ingest alone".to_string(), &outcome.baseline),
        (
            format!("with {} subscriptions", outcome.subscriptions),
            &outcome.loaded,
        ),
    ] {
        println!(
            "{label:<24} {:>10} {:>10.1} {:>7.2} ms {:>8.2} ms {:>8.2} ms",
            report.tally.accepted_at.len(),
            accepted_rate(report),
            ack_ms(report, 0.5),
            ack_ms(report, 0.99),
            report.latency.max() as f64 / 1000.0
        );
        let other = report.tally.not_accepted();
        if other > 0 || report.tally.errors > 0 {
            println!(
                "  {other} answers other than accepted {:?}, {} without an answer",
                report.tally.answers, report.tally.errors
            );
        }
    }
    println!(
        "deliveries: {} of {} arrived ({} missing), {:.1}/s, {:.3} of ingest x {}; {} duplicates, {} out of journal order",
        d.delivered,
        d.expected,
        d.missing(),
        d.rate(),
        d.ratio(ingest_rate),
        d.subscriptions,
        d.duplicates,
        d.reordered
    );
    if d.unmatched > 0 || d.others > 0 {
        println!(
            "  also {} unmatched requests and {} arrivals of events not acknowledged in this run",
            d.unmatched, d.others
        );
    }
    for (what, some) in [("missing", &d.some_missing), ("other", &d.some_others)] {
        if !some.is_empty() {
            println!("  {what}, for instance: {}", some.join(", "));
        }
    }
    println!(
        "  {} arrived after ingest ended, the last {:.3} s after it",
        d.after_end,
        d.drain.as_secs_f64()
    );
    println!(
        "accept -> delivery ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} arrived before their 200 was read)",
        d.ms(0.5),
        d.ms(0.9),
        d.ms(0.99),
        d.ms(0.999),
        d.latency.max() as f64 / 1000.0,
        d.before_ack
    );
}

#[cfg(test)]
mod tests {
    use super::super::sink::Arrival;
    use super::*;

    #[test]
    fn arrivals_are_matched_per_subscription_and_timed_from_the_ack() {
        let began = Instant::now();
        let acked = began + Duration::from_millis(10);
        let ended = began + Duration::from_millis(100);
        let accepted = vec![("a".to_string(), acked), ("b".to_string(), acked)];
        let mut seen = Seen::default();
        let at = |ms, seq| Arrival {
            at: began + Duration::from_millis(ms),
            seq: Some(seq),
        };
        seen.first.insert((1, "a".into()), at(15, 2));
        seen.first.insert((2, "a".into()), at(5, 2)); // before its 200 was read
        seen.first.insert((1, "b".into()), at(130, 1)); // after ingest ended, and after a
        seen.first.insert((1, "z".into()), at(20, 9)); // not from this run
        assert_eq!(missing(&seen, &accepted, 2), 1);
        let d = Deliveries::tally(&seen, &accepted, 2, began, ended);
        assert_eq!((d.expected, d.delivered, d.missing()), (4, 3, 1));
        assert_eq!((d.before_ack, d.after_end, d.others), (1, 1, 1));
        assert_eq!(d.reordered, 1);
        assert_eq!(d.some_missing, ["b at subscription 2"]);
        assert_eq!(d.some_others, ["z at subscription 1"]);
        assert_eq!(d.drain, Duration::from_millis(30));
        assert_eq!(d.span, Duration::from_millis(130));
        assert!((d.latency.max() as i64 - 120_000).abs() < 200);
        // 3 deliveries in 0.13 s against 2 events in 0.1 s x 2 subscriptions.
        let ratio = d.ratio(20.0);
        assert!((ratio - (3.0 / 0.13) / 40.0).abs() < 1e-9, "{ratio}");
    }
}
