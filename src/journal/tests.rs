//! The journal's rules on a real sled database in a temporary directory: dedup within
//! its window, staleness by order key, backlog, compaction and reopening.

use std::time::Duration;

use super::*;

const HOUR_MS: u64 = 3_600_000;

fn settings(dir: &Path) -> Settings {
    Settings {
        path: dir.join("journal"),
        dedup_window: Duration::from_secs(72 * 3600),
        retention: Duration::from_secs(7 * 24 * 3600),
        max_backlog: 1_000,
        embedded: false,
    }
}

fn event(id: &str, at_ms: u64) -> NewEvent {
    NewEvent {
        source: "s".into(),
        id: id.into(),
        event_type: Some("t".into()),
        received_at_ms: at_ms,
        event_ts: None,
        order: None,
        content_type: "application/json".into(),
        headers: vec![],
        client_identity: None,
        body: Bytes::from_static(b"{}"),
        normalised: None,
    }
}

fn ordered(id: &str, key: &str, ts: i64) -> NewEvent {
    NewEvent {
        order: Some((key.into(), ts)),
        ..event(id, 1_000)
    }
}

#[tokio::test]
async fn duplicates_inside_the_window_only() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(
        journal.append(event("a", HOUR_MS)).await,
        Ok(Outcome::Accepted(1))
    );
    assert_eq!(
        journal.append(event("a", 2 * HOUR_MS)).await,
        Ok(Outcome::Duplicate(1))
    );
    let after_window = HOUR_MS + 72 * HOUR_MS;
    assert_eq!(
        journal.append(event("a", after_window)).await,
        Ok(Outcome::Accepted(2))
    );
    assert_eq!(
        journal.append(event("a", after_window + 1)).await,
        Ok(Outcome::Duplicate(2))
    );
    journal.close().await;
}

#[tokio::test]
async fn older_events_for_a_key_are_stale() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(
        journal.append(ordered("1", "k", 200)).await,
        Ok(Outcome::Accepted(1))
    );
    assert_eq!(
        journal.append(ordered("2", "k", 100)).await,
        Ok(Outcome::Stale(2))
    );
    assert_eq!(
        journal.append(ordered("3", "k", 200)).await,
        Ok(Outcome::Accepted(3))
    );
    assert_eq!(
        journal.append(ordered("4", "other", 50)).await,
        Ok(Outcome::Accepted(4))
    );
    assert_eq!(
        journal.append(ordered("5", "k", 300)).await,
        Ok(Outcome::Accepted(5))
    );
    assert_eq!(
        journal.append(ordered("6", "k", 250)).await,
        Ok(Outcome::Stale(6))
    );
    assert_eq!(
        journal.get(2).unwrap().unwrap().summary.status,
        Status::Stale
    );
    assert_eq!(journal.backlog(), 4, "stale events are not queued");
    journal.close().await;
}

#[tokio::test]
async fn backlog_limit_refuses_new_events_but_not_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(Settings {
        max_backlog: 2,
        ..settings(dir.path())
    })
    .unwrap();
    journal.append(event("a", 1)).await.unwrap();
    journal.append(event("b", 1)).await.unwrap();
    assert_eq!(
        journal.append(event("c", 1)).await,
        Err(JournalError::BacklogFull { max: 2 })
    );
    assert_eq!(
        journal.append(event("a", 2)).await,
        Ok(Outcome::Duplicate(1))
    );
    journal.close().await;
}

#[tokio::test]
async fn compaction_drops_old_events_and_forgets_old_ids() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Settings {
        embedded: true,
        ..settings(dir.path())
    };
    let journal = Journal::open(embedded).unwrap();
    journal.append(event("old", HOUR_MS)).await.unwrap();
    let recent = 8 * 24 * HOUR_MS;
    journal.append(event("new", recent)).await.unwrap();
    assert_eq!(journal.compact(recent + HOUR_MS).await, Ok(false));
    assert!(journal.get(1).unwrap().is_none(), "past retention");
    assert!(journal.get(2).unwrap().is_some());
    assert!(!journal.remembers("s", "old"));
    assert!(journal.remembers("s", "new"));
    assert_eq!(journal.backlog(), 1);
    journal.close().await;
}

#[tokio::test]
async fn ordering_memory_is_kept_by_update_time_not_by_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    // Order timestamps may be versions rather than clock times: 200 is not "old".
    let at = |e: NewEvent, ms: u64| NewEvent {
        received_at_ms: ms,
        ..e
    };
    journal
        .append(at(ordered("1", "k", 200), 10 * HOUR_MS))
        .await
        .unwrap();
    journal.compact(11 * HOUR_MS).await.unwrap();
    assert_eq!(
        journal
            .append(at(ordered("2", "k", 100), 11 * HOUR_MS))
            .await,
        Ok(Outcome::Stale(2))
    );
    journal.compact(10 * HOUR_MS + 73 * HOUR_MS).await.unwrap();
    assert_eq!(
        journal
            .append(at(ordered("3", "k", 100), 83 * HOUR_MS))
            .await,
        Ok(Outcome::Accepted(3)),
        "forgotten a dedup window after its last update"
    );
    journal.close().await;
}

#[tokio::test]
async fn with_a_broker_queued_events_outlive_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut short = settings(dir.path());
    short.retention = Duration::from_secs(24 * 3600);
    let journal = Journal::open(short).unwrap();
    journal.append(event("old", HOUR_MS)).await.unwrap();
    journal.append(event("sent", HOUR_MS)).await.unwrap();
    journal.mark_delivered(vec![2], 2 * HOUR_MS).await.unwrap();
    journal.compact(30 * HOUR_MS).await.unwrap();
    assert!(
        journal.get(1).unwrap().is_some(),
        "undelivered events are never compacted"
    );
    assert!(
        journal.get(2).unwrap().is_none(),
        "delivered and past retention"
    );
    assert_eq!(
        journal.append(event("sent", 31 * HOUR_MS)).await,
        Ok(Outcome::Duplicate(2)),
        "the dedup index keeps its own, longer window"
    );
    journal.close().await;
}

#[tokio::test]
async fn delivery_attempts_are_logged_and_delivery_leaves_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    journal.append(event("a", 1)).await.unwrap();
    journal.append(event("b", 1)).await.unwrap();
    assert_eq!(journal.backlog(), 2);
    for at in 0..25 {
        journal
            .record_attempt(1, 10 + at, format!("returned {at}"))
            .await
            .unwrap();
    }
    let failed = journal.get(1).unwrap().unwrap();
    assert_eq!(failed.summary.status, Status::Queued);
    assert_eq!(failed.summary.attempts, 25);
    assert_eq!(failed.attempts_log.len(), 20, "the log is capped");
    assert_eq!(
        failed.attempts_log[0].outcome, "returned 0",
        "the first is kept"
    );
    assert_eq!(
        failed.attempts_log[19].outcome, "returned 24",
        "and the latest"
    );

    journal.mark_delivered(vec![1, 2], 100).await.unwrap();
    assert_eq!(journal.backlog(), 0);
    assert!(journal.queued_from(0, 10).unwrap().is_empty());
    let done = journal.get(1).unwrap().unwrap();
    assert_eq!(done.summary.status, Status::Delivered);
    assert_eq!(done.summary.attempts, 26);
    // Delivering twice (a redelivery confirmed again) changes nothing.
    journal.mark_delivered(vec![1], 200).await.unwrap();
    assert_eq!(journal.get(1).unwrap().unwrap().summary.attempts, 26);
    assert_eq!(journal.backlog(), 0);
    journal.close().await;
}

#[tokio::test]
async fn reopening_keeps_records_sequence_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    journal.append(event("a", 1)).await.unwrap();
    journal.append(event("b", 1)).await.unwrap();
    journal.close().await;
    drop(journal);
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(journal.backlog(), 2);
    assert_eq!(
        journal.append(event("a", 2)).await,
        Ok(Outcome::Duplicate(1))
    );
    assert_eq!(
        journal.append(event("c", 2)).await,
        Ok(Outcome::Accepted(3))
    );
    let (listed, next) = journal
        .list(&ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(next, 3);
    journal.close().await;
}

#[tokio::test]
async fn appends_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    journal.close().await;
    assert_eq!(
        journal.append(event("a", 1)).await,
        Err(JournalError::Closed)
    );
}
