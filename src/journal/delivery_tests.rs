//! Subscriptions' deliveries as journal state, on a real fjall index and commit log:
//! created with the event, rebuilt from the log after a crash, kept by retention while
//! open, counted in the backlog, and ended by outcomes, leases, acks and callbacks.

use std::path::Path;
use std::time::Duration;

use super::subscription::{self as sub, Managed};
use super::*;

const NOW: u64 = 1_700_000_000_000;

fn settings(dir: &Path) -> Settings {
    Settings {
        path: dir.join("journal"),
        dedup_window: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        max_backlog: 1_000,
        max_backlog_bytes: None,
        min_free: MinFree::Bytes(0),
        embedded: true,
        stages: None,
        delivery: DeliveryPolicy {
            retry: vec![Duration::from_secs(1)],
            disable_after: Duration::from_secs(3600),
        },
        segment_bytes: SEGMENT_BYTES,
        index_cache_bytes: DEFAULT_INDEX_CACHE,
        group_delay: std::time::Duration::ZERO,
    }
}

fn event(source: &str, id: &str, event_type: &str) -> NewEvent {
    NewEvent {
        source: source.into(),
        id: id.into(),
        event_type: Some(event_type.into()),
        received_at_ms: NOW,
        event_ts: None,
        order: None,
        content_type: "application/json".into(),
        headers: Default::default(),
        client_identity: None,
        body: Bytes::from_static(b"{\"n\":1}"),
        normalised: None,
        replay_key: None,
    }
}

fn subscription(name: &str, events: &[&str], mode: Mode) -> Subscription {
    Subscription {
        num: 0,
        name: name.into(),
        url: (mode != Mode::Pull).then(|| "http://127.0.0.1:9/".into()),
        events: events.iter().map(|e| e.to_string()).collect(),
        active: true,
        mode,
        ordered: false,
        max_in_flight: 4,
        rate_limit: None,
        headers: vec![],
        secrets: vec![],
        ca: None,
        managed: Managed::Api,
        created_at_ms: NOW,
        disabled_reason: None,
        failing_since_ms: None,
    }
}

/// Appends `e` and waits, as a delivery worker does, until readers are told of it (the
/// answer waits for the log's sync; the index follows a moment later).
async fn accepted(journal: &Journal, e: NewEvent) -> u64 {
    let seq = match journal.append(e).await.unwrap() {
        Outcome::Accepted(seq) => seq,
        other => panic!("{other:?}"),
    };
    journal.last_seq().wait_for(|s| *s >= seq).await.unwrap();
    seq
}

fn attempt(at_ms: u64, status: u16) -> DeliveryAttempt {
    DeliveryAttempt {
        at_ms,
        duration_ms: 3,
        status_code: Some(status),
        error: None,
        response_body: None,
        next_attempt_at_ms: None,
    }
}

/// Waits until what the last commands wrote is durable: readers (the workers, the
/// admin API) see deliveries and events only up to the durable seq.
async fn settled(journal: &Journal) {
    // Compaction at time 0 removes nothing, and is answered after the flush.
    journal.compact(0).await.unwrap();
}

/// Answers every pending delivery of subscriptions 1 and 2 alike, round after round,
/// until none is left (or `rounds` have passed).
async fn answer_all(journal: &Journal, status: u16, verdict: Verdict, rounds: usize) {
    for _ in 0..rounds {
        let mut outcomes = Vec::new();
        for num in [1, 2] {
            for d in journal.pending_deliveries(num, 0, 100).unwrap() {
                outcomes.push(DeliveryOutcome {
                    seq: d.seq,
                    sub: num,
                    attempt: attempt(NOW, status),
                    verdict: verdict.clone(),
                });
            }
        }
        if outcomes.is_empty() {
            return;
        }
        journal.record_outcomes(outcomes).await.unwrap();
        settled(journal).await;
    }
}

fn statuses(journal: &Journal, seq: u64) -> Vec<(u64, DeliveryStatus)> {
    journal
        .event_deliveries(seq)
        .unwrap()
        .iter()
        .map(|d| (d.sub, d.status))
        .collect()
}

#[tokio::test]
async fn an_event_gets_a_delivery_per_matching_active_subscription_in_the_step_that_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let all = journal
        .put_subscription(subscription("all", &["*:*"], Mode::Notify))
        .await
        .unwrap();
    let pushes = journal
        .put_subscription(subscription("pushes", &["github:push"], Mode::Notify))
        .await
        .unwrap();
    let mut idle = subscription("idle", &["*:*"], Mode::Notify);
    idle.active = false;
    journal.put_subscription(idle).await.unwrap();
    assert_eq!((all.num, pushes.num), (1, 2));
    let taken = journal
        .put_subscription(subscription("all", &["*:*"], Mode::Notify))
        .await;
    assert!(matches!(taken, Err(JournalError::Conflict(_))), "{taken:?}");

    let before = journal.backlog();
    let push = accepted(&journal, event("github", "p1", "push")).await;
    let issue = accepted(&journal, event("github", "i1", "issues")).await;
    assert_eq!(
        statuses(&journal, push),
        vec![(1, DeliveryStatus::Pending), (2, DeliveryStatus::Pending)]
    );
    assert_eq!(
        statuses(&journal, issue),
        vec![(1, DeliveryStatus::Pending)]
    );
    // A duplicate brings nothing new.
    assert!(matches!(
        journal.append(event("github", "p1", "push")).await,
        Ok(Outcome::Duplicate(_))
    ));
    assert_eq!(statuses(&journal, push).len(), 2);
    // Two events and three deliveries joined the backlog.
    assert_eq!(journal.backlog(), before + 5);
    assert_eq!(journal.sub_stats(1).pending, 2);
    let pending: Vec<u64> = journal
        .pending_deliveries(1, 0, 10)
        .unwrap()
        .iter()
        .map(|d| d.seq)
        .collect();
    assert_eq!(pending, vec![push, issue]);
    journal.close().await;
}

#[tokio::test]
async fn deliveries_the_index_lost_are_rebuilt_from_the_commit_log() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    journal
        .put_subscription(subscription("all", &["*:*"], Mode::Notify))
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for id in ["a", "b", "c"] {
        seqs.push(accepted(&journal, event("s", id, "t")).await);
    }
    journal.close().await;
    drop(journal);
    // As if the index had lost every delivery and its cover mark (its flush lagging the
    // log's when the power went).
    {
        let db = store::Db::open(&dir.path().join("journal"), DEFAULT_INDEX_CACHE).unwrap();
        for tree in ["deliveries", "pending", "sub_log"] {
            db.open_tree(tree).unwrap().clear().unwrap();
        }
        db.open_tree("meta")
            .unwrap()
            .remove(b"log_covered")
            .unwrap();
        db.flush().unwrap();
    }
    let journal = Journal::open(settings(dir.path())).unwrap();
    for seq in &seqs {
        assert_eq!(
            statuses(&journal, *seq),
            vec![(1, DeliveryStatus::Pending)],
            "seq {seq}"
        );
    }
    assert_eq!(journal.sub_stats(1).pending, 3);
    journal.close().await;
}

#[tokio::test]
async fn outcomes_end_deliveries_and_finish_mode_appends_a_finished_event_its_subscription_never_gets(
) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let finisher = journal
        .put_subscription(subscription("finisher", &["*:*"], Mode::Finish))
        .await
        .unwrap();
    let seq = accepted(&journal, event("github", "e1", "push")).await;
    let backlog = journal.backlog();
    // A failure keeps it pending, due later.
    journal
        .record_outcomes(vec![DeliveryOutcome {
            seq,
            sub: finisher.num,
            attempt: attempt(NOW, 500),
            verdict: Verdict::Retry { at_ms: NOW + 1_000 },
        }])
        .await
        .unwrap();
    let d = journal.delivery(seq, finisher.num).unwrap().unwrap();
    assert_eq!(
        (d.status, d.attempts, d.next_attempt_at_ms),
        (DeliveryStatus::Pending, 1, NOW + 1_000)
    );
    journal
        .record_outcomes(vec![DeliveryOutcome {
            seq,
            sub: finisher.num,
            attempt: attempt(NOW + 1_000, 200),
            verdict: Verdict::Delivered {
                result: Some(serde_json::json!({"build": 7})),
            },
        }])
        .await
        .unwrap();
    let d = journal.delivery(seq, finisher.num).unwrap().unwrap();
    assert_eq!(
        (d.status, d.attempts, d.log.len()),
        (DeliveryStatus::Delivered, 2, 2)
    );
    assert_eq!(
        journal.backlog(),
        backlog,
        "the delivery left, its .finished event came"
    );
    // The `.finished` event: from the subscription, about the event, with the result.
    settled(&journal).await;
    let finished = journal.get(seq + 1).unwrap().unwrap();
    assert_eq!(finished.summary.source, "finisher");
    assert_eq!(
        finished.summary.event_type.as_deref(),
        Some("push.finished")
    );
    assert_eq!(finished.summary.id, "e1.finished.sub_1");
    let payload: serde_json::Value = serde_json::from_slice(finished.payload()).unwrap();
    assert_eq!(payload["triggered_by"]["seq"], seq);
    assert_eq!(payload["status"], "succeeded");
    assert_eq!(payload["result"]["build"], 7);
    // Its own subscription matches `*:*` but never receives what it produced.
    assert!(statuses(&journal, seq + 1).is_empty());
    journal.close().await;
}

#[tokio::test]
async fn a_finished_chain_between_two_subscriptions_stops_at_depth_four() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    for name in ["a", "b"] {
        journal
            .put_subscription(subscription(name, &["*:*"], Mode::Finish))
            .await
            .unwrap();
    }
    accepted(&journal, event("s", "e", "t")).await;
    // Answer every pending delivery with success until nothing is pending.
    answer_all(&journal, 200, Verdict::Delivered { result: None }, 20).await;
    let (events, _) = journal
        .list(&ListFilter {
            limit: 1000,
            ..ListFilter::default()
        })
        .unwrap();
    let deepest = events
        .iter()
        .filter_map(|e| e.event_type.as_deref())
        .map(|t| t.matches(".finished").count())
        .max();
    assert_eq!(deepest, Some(4), "{events:?}");
    assert!(events.len() < 40, "{} events", events.len());
    journal.close().await;
}

#[tokio::test]
async fn retention_keeps_an_event_while_a_delivery_of_it_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let s = journal
        .put_subscription(subscription("only-a", &["s:a"], Mode::Notify))
        .await
        .unwrap();
    let a = accepted(&journal, event("s", "a1", "a")).await;
    let b = accepted(&journal, event("s", "b1", "b")).await;
    let later = NOW + 2 * 3_600_000;
    while journal.compact(later).await.unwrap() {}
    assert!(journal.get(a).unwrap().is_some(), "pending delivery: kept");
    assert!(journal.get(b).unwrap().is_none(), "no delivery: compacted");
    journal
        .record_outcomes(vec![DeliveryOutcome {
            seq: a,
            sub: s.num,
            attempt: attempt(later, 204),
            verdict: Verdict::Delivered { result: None },
        }])
        .await
        .unwrap();
    while journal.compact(later).await.unwrap() {}
    assert!(journal.get(a).unwrap().is_none(), "delivered: compacted");
    assert!(
        journal.event_deliveries(a).unwrap().is_empty(),
        "with its delivery"
    );
    assert_eq!(journal.sub_stats(s.num).delivered, 0);
    journal.close().await;
}

#[tokio::test]
async fn deleting_a_subscription_drops_its_open_deliveries_and_their_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let s = journal
        .put_subscription(subscription("all", &["*:*"], Mode::Notify))
        .await
        .unwrap();
    let before = journal.backlog();
    for id in ["a", "b"] {
        accepted(&journal, event("s", id, "t")).await;
    }
    assert_eq!(journal.backlog(), before + 4);
    assert_eq!(journal.delete_subscription(s.num).await.unwrap(), 2);
    assert_eq!(journal.backlog(), before + 2);
    assert!(journal.subscription(s.num).is_none());
    assert!(journal.pending_deliveries(s.num, 0, 10).unwrap().is_empty());
    journal.close().await;
    drop(journal);
    // And it stays gone.
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert!(journal.subscriptions().borrow().is_empty());
    journal.close().await;
}

#[tokio::test]
async fn a_pull_lease_comes_back_after_it_expires_and_fails_after_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let s = journal
        .put_subscription(subscription("workers", &["*:*"], Mode::Pull))
        .await
        .unwrap();
    let one = accepted(&journal, event("s", "a", "t")).await;
    let two = accepted(&journal, event("s", "b", "t")).await;
    let leased = journal.lease(s.num, 10, 1_000, NOW).await.unwrap();
    assert_eq!(
        leased.iter().map(|d| d.seq).collect::<Vec<_>>(),
        vec![one, two]
    );
    // Leased: nothing more to lease now.
    assert!(journal
        .lease(s.num, 10, 1_000, NOW + 500)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(journal.ack(s.num, vec![one], NOW + 600).await.unwrap(), 1);
    assert_eq!(
        journal.delivery(one, s.num).unwrap().unwrap().status,
        DeliveryStatus::Delivered
    );
    // The unacknowledged one comes back as soon as its lease has expired.
    assert!(journal
        .lease(s.num, 10, 1_000, NOW + 999)
        .await
        .unwrap()
        .is_empty());
    let again = journal.lease(s.num, 10, 1_000, NOW + 1_000).await.unwrap();
    assert_eq!((again[0].seq, again[0].attempts), (two, 2));
    assert_eq!(again[0].lease_until_ms, Some(NOW + 2_000));
    // The schedule has one retry: the second expired lease fails it.
    assert!(journal
        .lease(s.num, 10, 1_000, NOW + 60_000)
        .await
        .unwrap()
        .is_empty());
    let failed = journal.delivery(two, s.num).unwrap().unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    let (ops, _) = journal
        .list(&ListFilter {
            source: Some(OPERATIONAL_SOURCE.into()),
            limit: 10,
            ..ListFilter::default()
        })
        .unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(
        ops[0].event_type.as_deref(),
        Some("hookgate.delivery.failed")
    );
    // An operator's retry makes it pending again.
    assert!(journal
        .retry_delivery(two, s.num, NOW + 61_000)
        .await
        .unwrap());
    assert_eq!(
        journal
            .lease(s.num, 10, 1_000, NOW + 61_000)
            .await
            .unwrap()
            .len(),
        1
    );
    journal.close().await;
}

#[tokio::test]
async fn a_callback_token_ends_its_delivery_once_and_an_overdue_one_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let s = journal
        .put_subscription(subscription("tasks", &["*:*"], Mode::Callback))
        .await
        .unwrap();
    let one = accepted(&journal, event("s", "a", "deploy")).await;
    let two = accepted(&journal, event("s", "b", "deploy")).await;
    let await_callback = |seq, hash| DeliveryOutcome {
        seq,
        sub: s.num,
        attempt: attempt(NOW, 202),
        verdict: Verdict::AwaitCallback {
            hash,
            deadline_ms: NOW + 10_000,
        },
    };
    journal
        .record_outcomes(vec![
            await_callback(one, [1; 32]),
            await_callback(two, [2; 32]),
        ])
        .await
        .unwrap();
    assert_eq!(journal.sub_stats(s.num).awaiting_callback, 2);
    assert_eq!(
        journal
            .callback([9; 32], true, None, NOW + 1)
            .await
            .unwrap(),
        CallbackAnswer::Unknown
    );
    let answer = journal
        .callback(
            [1; 32],
            true,
            Some(serde_json::json!({"url": "x"})),
            NOW + 2,
        )
        .await
        .unwrap();
    assert_eq!(
        answer,
        CallbackAnswer::Finished {
            delivery: sub::delivery_id(one, s.num)
        }
    );
    // Single use.
    assert_eq!(
        journal
            .callback([1; 32], true, None, NOW + 3)
            .await
            .unwrap(),
        CallbackAnswer::Unknown
    );
    assert_eq!(
        journal.delivery(one, s.num).unwrap().unwrap().status,
        DeliveryStatus::Finished
    );
    // The other one times out.
    assert_eq!(journal.expire_callbacks(NOW + 5_000).await.unwrap(), 0);
    assert_eq!(journal.expire_callbacks(NOW + 10_001).await.unwrap(), 1);
    assert_eq!(
        journal.delivery(two, s.num).unwrap().unwrap().status,
        DeliveryStatus::TimedOut
    );
    assert_eq!(
        journal
            .callback([2; 32], true, None, NOW + 10_002)
            .await
            .unwrap(),
        CallbackAnswer::Unknown
    );
    let (events, _) = journal
        .list(&ListFilter {
            source: Some("tasks".into()),
            limit: 10,
            ..ListFilter::default()
        })
        .unwrap();
    let finished: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::from_slice(journal.get(e.seq).unwrap().unwrap().payload()).unwrap())
        .collect();
    assert_eq!(finished.len(), 2);
    assert_eq!(
        (
            finished[0]["status"].as_str(),
            finished[0]["result"]["url"].as_str()
        ),
        (Some("succeeded"), Some("x"))
    );
    assert_eq!(finished[1]["status"], "timed_out");
    journal.close().await;
}

#[tokio::test]
async fn gone_disables_the_subscription_and_says_so_in_an_operational_event() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let s = journal
        .put_subscription(subscription("old", &["s:*"], Mode::Notify))
        .await
        .unwrap();
    let seq = accepted(&journal, event("s", "a", "t")).await;
    journal
        .record_outcomes(vec![DeliveryOutcome {
            seq,
            sub: s.num,
            attempt: attempt(NOW, 410),
            verdict: Verdict::Gone,
        }])
        .await
        .unwrap();
    let now = journal.subscription(s.num).unwrap();
    assert!(!now.active);
    assert!(now.disabled_reason.unwrap().contains("410"));
    // The delivery waits for the subscription to be enabled again.
    assert_eq!(
        journal.delivery(seq, s.num).unwrap().unwrap().status,
        DeliveryStatus::Pending
    );
    let (ops, _) = journal
        .list(&ListFilter {
            source: Some(OPERATIONAL_SOURCE.into()),
            limit: 10,
            ..ListFilter::default()
        })
        .unwrap();
    assert_eq!(
        ops[0].event_type.as_deref(),
        Some("hookgate.subscription.disabled")
    );
    // A disabled subscription gets no new deliveries.
    let next = accepted(&journal, event("s", "b", "t")).await;
    assert!(statuses(&journal, next).is_empty());
    journal.close().await;
}

#[tokio::test]
async fn two_failing_subscriptions_do_not_tell_each_other_of_their_failures_forever() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    for name in ["a", "b"] {
        journal
            .put_subscription(subscription(name, &["*:*"], Mode::Notify))
            .await
            .unwrap();
    }
    accepted(&journal, event("s", "e", "t")).await;
    // Fail every pending delivery at once, round after round.
    answer_all(&journal, 500, Verdict::Failed, 10).await;
    let (ops, _) = journal
        .list(&ListFilter {
            source: Some(OPERATIONAL_SOURCE.into()),
            limit: 100,
            ..ListFilter::default()
        })
        .unwrap();
    // One failure event each for the original event; each went to the other
    // subscription only, and failing there made no more.
    assert_eq!(ops.len(), 2, "{ops:?}");
    for op in &ops {
        assert_eq!(journal.event_deliveries(op.seq).unwrap().len(), 1);
    }
    journal.close().await;
}

/// What an opening counted of the deliveries: per subscription, and the backlog.
fn delivery_tally(journal: &Journal) -> (SubStats, SubStats, u64, u64) {
    (
        journal.sub_stats(1),
        journal.sub_stats(2),
        journal.backlog(),
        journal.backlog_bytes(),
    )
}

#[tokio::test]
async fn the_census_of_a_clean_close_counts_deliveries_as_a_walk_would() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    for (name, events) in [("all", "*:*"), ("pushes", "github:push")] {
        journal
            .put_subscription(subscription(name, &[events], Mode::Notify))
            .await
            .unwrap();
    }
    accepted(&journal, event("github", "a", "push")).await;
    accepted(&journal, event("github", "b", "issues")).await;
    answer_all(&journal, 200, Verdict::Delivered { result: None }, 1).await;
    // One more, pending for both: the backlog holds it twice, and the event once.
    accepted(&journal, event("github", "c", "push")).await;
    let before = delivery_tally(&journal);
    assert_eq!((before.0.delivered, before.0.pending), (2, 1), "{before:?}");
    assert_eq!((before.1.delivered, before.1.pending), (1, 1), "{before:?}");
    assert!(before.0.last_success_ms.is_some());
    journal.close().await;
    drop(journal);

    let journal = Journal::open(settings(dir.path())).unwrap();
    assert!(journal.core().unwrap().counted_from_census());
    assert_eq!(delivery_tally(&journal), before);
    journal.close().await;
    drop(journal);
    // Without the saved fingerprints the census is not used: the opening walks.
    std::fs::remove_file(core::fingerprints_path(&dir.path().join("journal"))).unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert!(!journal.core().unwrap().counted_from_census());
    assert_eq!(delivery_tally(&journal), before, "a walk counts the same");
    journal.close().await;
}
