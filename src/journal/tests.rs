//! The journal's rules on a real fjall index in a temporary directory: dedup within
//! its window, staleness by order key, backlog, compaction and reopening.

use std::path::Path;
use std::time::Duration;

use super::*;

const HOUR_MS: u64 = 3_600_000;

fn settings(dir: &Path) -> Settings {
    Settings {
        path: dir.join("journal"),
        dedup_window: Duration::from_secs(72 * 3600),
        retention: Duration::from_secs(7 * 24 * 3600),
        max_backlog: 1_000,
        max_backlog_bytes: None,
        min_free: MinFree::Bytes(0),
        embedded: false,
        stages: None,
        delivery: Default::default(),
        segment_bytes: SEGMENT_BYTES,
        index_cache_bytes: DEFAULT_INDEX_CACHE,
        group_delay: std::time::Duration::ZERO,
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
        headers: Default::default(),
        client_identity: None,
        body: Bytes::from_static(b"{}"),
        normalised: None,
        replay_key: None,
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
async fn compaction_gets_past_old_undelivered_events_to_the_delivered_ones() {
    let dir = tempfile::tempdir().unwrap();
    // With a broker, queued events outlive retention; 20,001 of them, as a routing key
    // with no queue bound (or a week-long broker outage) leaves them.
    let journal = Journal::open(Settings {
        max_backlog: 100_000,
        ..settings(dir.path())
    })
    .unwrap();
    for chunk in 0..21 {
        let appends = (0..1000)
            .map(|n| chunk * 1000 + n)
            .filter(|n| *n < 20_001)
            .map(|n| journal.append(event(&format!("stuck{n}"), HOUR_MS)));
        for outcome in futures_util::future::join_all(appends).await {
            assert!(matches!(outcome, Ok(Outcome::Accepted(_))));
        }
    }
    // Then 500 that were delivered.
    let delivered = futures_util::future::join_all(
        (0..500).map(|n| journal.append(event(&format!("done{n}"), 2 * HOUR_MS))),
    )
    .await;
    let seqs: Vec<(u64, u32)> = delivered
        .into_iter()
        .map(|o| match o {
            Ok(Outcome::Accepted(seq)) => (seq, 0),
            other => panic!("{other:?}"),
        })
        .collect();
    journal
        .mark_delivered(seqs.clone(), 2 * HOUR_MS)
        .await
        .unwrap();

    let now = 30 * 24 * HOUR_MS;
    let mut steps = 0;
    // A step stops after 4 ms (at 64 records at least, in a debug build): 20,501 ids
    // to forget take up to 321 steps.
    while journal.compact(now).await.unwrap() {
        steps += 1;
        assert!(steps < 1_000, "compaction makes no progress");
    }
    for (seq, _) in seqs {
        assert!(
            journal.get(seq).unwrap().is_none(),
            "delivered {seq} compacted"
        );
    }
    assert_eq!(journal.backlog(), 20_001);
    assert!(
        journal.get(20_001).unwrap().is_some(),
        "undelivered ones kept"
    );
    assert_eq!(journal.counts()["s"].delivered, 0);
    // A later pass walks them again, as briefly.
    let mut steps = 0;
    while journal.compact(now + HOUR_MS).await.unwrap() {
        steps += 1;
        assert!(steps < 100);
    }
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
    journal
        .mark_delivered(vec![(2, 0)], 2 * HOUR_MS)
        .await
        .unwrap();
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

    journal
        .mark_delivered(vec![(1, 0), (2, 0)], 100)
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 0);
    assert!(journal.queued_from(0, 10).unwrap().is_empty());
    let done = journal.get(1).unwrap().unwrap();
    assert_eq!(done.summary.status, Status::Delivered);
    assert_eq!(done.summary.attempts, 26);
    // Delivering twice (a redelivery confirmed again) changes nothing.
    journal.mark_delivered(vec![(1, 0)], 200).await.unwrap();
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
async fn segments_are_closed_at_the_configured_size_and_read_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let sized = || Settings {
        segment_bytes: 64 * 1024,
        ..settings(dir.path())
    };
    let journal = Journal::open(sized()).unwrap();
    for n in 0..40 {
        let mut e = event(&format!("e{n}"), 1);
        e.body = Bytes::from(vec![b' '; 8 * 1024]);
        journal.append(e).await.unwrap();
    }
    journal.close().await;
    drop(journal);
    let segments = log::segments(&dir.path().join("journal/log")).unwrap();
    // 40 events of 8 KiB in segments of 64 KiB: at least five are closed.
    assert!(segments.len() >= 5, "{segments:?}");
    let journal = Journal::open(sized()).unwrap();
    for seq in 1..=40 {
        let record = journal
            .get(seq)
            .unwrap()
            .expect("every event is still there");
        assert_eq!(record.body.len(), 8 * 1024, "seq {seq}");
    }
    journal.close().await;
}

/// The nice value in a thread's `/proc/.../stat`: field 19 (the name in field 2 may hold
/// spaces, so fields are counted from its closing parenthesis).
#[cfg(target_os = "linux")]
fn nice(stat: &str) -> Option<i64> {
    stat.rsplit_once(") ")?.1.split(' ').nth(16)?.parse().ok()
}

/// The nice value of each of this process's threads named `name`.
#[cfg(target_os = "linux")]
fn nice_of_threads(name: &str) -> Vec<i64> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            if let Some(n) = std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| nice(&stat))
            {
                found.push(n);
            }
        }
    }
    found
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_threads_that_keep_the_index_run_below_the_request_path() {
    let own = nice(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).unwrap();
    let lowered = (own + 5).min(19);
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(
        journal.append(event("a", 1)).await,
        Ok(Outcome::Accepted(1))
    );
    // Other tests open journals too; a thread of theirs that has only just started may
    // not have lowered itself yet, so wait (briefly) until every one has.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // fjall's own threads (flushing its memtables, compacting) too.
    for name in [
        "journal-indexer",
        "journal-index",
        "flusher",
        "compactor",
        "monitor",
    ] {
        loop {
            let found = nice_of_threads(name);
            assert!(!found.is_empty(), "no thread named {name}");
            if found.iter().all(|&n| n == lowered) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} runs at nice {found:?}, not {lowered} (this thread: {own})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The committer, which the answers wait for, keeps the priority it started with.
    assert!(nice_of_threads("journal-committ").contains(&own));
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

#[tokio::test]
async fn answers_wait_for_the_log_not_the_index_and_decisions_see_what_it_has_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let core = journal.core().unwrap();
    let published = journal.last_seq();
    core.hold_index(true);
    let answered = |append| async move {
        tokio::time::timeout(Duration::from_secs(10), append)
            .await
            .expect("answered while the indexer is held")
    };
    assert_eq!(
        answered(journal.append(event("a", HOUR_MS))).await,
        Ok(Outcome::Accepted(1))
    );
    assert_eq!(
        answered(journal.append(ordered("new", "k", 10))).await,
        Ok(Outcome::Accepted(2))
    );
    // Both decided from what the indexer holds and the index does not have yet.
    assert_eq!(
        answered(journal.append(event("a", HOUR_MS + 1))).await,
        Ok(Outcome::Duplicate(1))
    );
    assert_eq!(
        answered(journal.append(ordered("old", "k", 5))).await,
        Ok(Outcome::Stale(3))
    );
    let (indexed, synced) = core.index_progress();
    assert_eq!((indexed, synced), (0, 3), "synced, not indexed");
    // The entry a dedup hit on "a" is checked against.
    let index_has_a = || core.trees().events.get(seq_key(1)).unwrap().is_some();
    assert!(!index_has_a());
    assert_eq!(
        *published.borrow(),
        0,
        "readers are not told of unindexed events"
    );
    // The index's background flush (every 200 ms) must not claim the log past what
    // the indexer wrote: a crash now replays events 1-3 from the log at open.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let covered = core.trees().meta.get(b"log_covered").unwrap().unwrap();
    assert_eq!(seq_of(&covered[16..24]), 0);

    core.hold_index(false);
    // A reader that starts after the answers sees their events.
    assert_eq!(journal.get(2).unwrap().unwrap().summary.id, "new");
    assert_eq!(
        journal.get(3).unwrap().unwrap().summary.status,
        Status::Stale
    );
    let mut published = published;
    tokio::time::timeout(Duration::from_secs(10), published.wait_for(|s| *s >= 3))
        .await
        .unwrap()
        .unwrap();
    assert!(index_has_a());
    assert_eq!(
        journal.append(event("a", HOUR_MS + 2)).await,
        Ok(Outcome::Duplicate(1)),
        "and from the event's entry once sled has it"
    );
    assert_eq!(
        journal.append(ordered("older", "k", 7)).await,
        Ok(Outcome::Stale(4))
    );
    journal.close().await;
    drop((core, journal));
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(
        journal.append(event("a", HOUR_MS + 3)).await,
        Ok(Outcome::Duplicate(1))
    );
    journal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_starts_after_an_answer_is_shown_its_event() {
    // The admin API shows events up to `readable_seq`: it must cover an event answered
    // before the call even while the indexer has not written it yet.
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let core = journal.core().unwrap();
    core.hold_index(true);
    assert_eq!(
        journal.append(event("a", HOUR_MS)).await,
        Ok(Outcome::Accepted(1))
    );
    assert_eq!(*journal.last_seq().borrow(), 0, "not indexed yet");
    let reader = {
        let journal = journal.clone();
        tokio::task::spawn_blocking(move || journal.readable_seq())
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    core.hold_index(false);
    let released = std::time::Instant::now();
    assert_eq!(reader.await.unwrap(), 1, "the answered event is readable");
    // Woken by the indexer, not let go by its 2 s limit.
    assert!(
        released.elapsed() < Duration::from_secs(1),
        "the reader went on {:?} after the index caught up",
        released.elapsed()
    );
    journal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_readers_see_every_event_without_more_traffic() {
    // Every answered event must reach the index once the load stops, with no later
    // request to carry it there: otherwise readers (the forwarder, deliveries, the
    // stream) would not be told of the last events of a burst.
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    let mut published = journal.last_seq();
    let (clients, each) = (64, 15);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for n in 0..each {
                    let id = format!("{c}-{n}");
                    let outcome = journal.append(event(&id, HOUR_MS)).await;
                    assert!(matches!(outcome, Ok(Outcome::Accepted(_))), "{outcome:?}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let last = (clients * each) as u64;
    let told = tokio::time::timeout(Duration::from_secs(5), published.wait_for(|s| *s >= last))
        .await
        .map(|seen| *seen.unwrap());
    assert!(
        told.is_ok(),
        "readers were told of {} of {last} answered events",
        *published.borrow()
    );
    assert_eq!(journal.get(last).unwrap().unwrap().summary.seq, last);
    journal.close().await;
}

/// How many groups the committer has written, from its group-size histogram as
/// `/metrics` shows it.
fn groups_written(stages: &Stages) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("group_commands", "", stages.group_commands.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("group_commands_count "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the histogram has a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_the_committer_waits_for_more_to_join_a_group_but_not_for_a_lone_event() {
    // `journal.group_delay`: when a sync ends with many commands already queued, the
    // committer waits before it takes the next group, so that what arrives meanwhile
    // shares its sync. 64 clients appending for a second, one after another each: with a
    // 200 ms wait the committer writes a handful of groups (about two per wait: 9-11
    // seen), where without it writes one per sync, hundreds (790 seen).
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(200);
    let stages = Stages::default();
    let journal = Journal::open(Settings {
        stages: Some(stages.clone()),
        group_delay: delay,
        max_backlog: u64::MAX,
        ..settings(dir.path())
    })
    .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(1);
    let clients: Vec<_> = (0..64)
        .map(|c| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while std::time::Instant::now() < until {
                    let outcome = journal.append(event(&format!("{c}-{n}"), HOUR_MS)).await;
                    assert!(matches!(outcome, Ok(Outcome::Accepted(_))), "{outcome:?}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut events = 0;
    for client in clients {
        events += client.await.unwrap();
    }
    let groups = groups_written(&stages);
    assert!(events >= 64, "{events} events");
    assert!(
        groups <= 50,
        "{events} events in {groups} groups: the committer did not wait for more"
    );

    // Quiet again: a lone event finds nothing queued behind the last sync and is
    // written at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let began = std::time::Instant::now();
    let outcome = journal.append(event("lone", HOUR_MS)).await;
    assert!(matches!(outcome, Ok(Outcome::Accepted(_))), "{outcome:?}");
    assert!(
        began.elapsed() < delay / 2,
        "a lone event took {:?} with a group_delay of {delay:?}",
        began.elapsed()
    );
    journal.close().await;
}

/// The index of a closed journal, for tests that change it behind the journal's back.
fn raw_index(dir: &Path) -> (store::Db, Trees, store::Tree) {
    let db = store::Db::open(&dir.join("journal"), DEFAULT_INDEX_CACHE).unwrap();
    let trees = Trees::open(&db, true).unwrap();
    let meta = trees.meta.clone();
    (db, trees, meta)
}

#[tokio::test]
async fn the_index_is_rebuilt_from_the_commit_log_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    for id in ["a", "b", "c"] {
        journal.append(event(id, HOUR_MS)).await.unwrap();
    }
    journal.close().await;
    drop(journal);

    // As if the index had lost everything after event 1 (its flush lagging the log's),
    // and had written an event whose log entry never reached the disk.
    {
        let (db, trees, meta) = raw_index(dir.path());
        let one = record::decode_stored(&trees.events.get(seq_key(1)).unwrap().unwrap()).unwrap();
        let record::Stored::Indexed(one) = one else {
            panic!("new events are indexed, not inline")
        };
        for seq in [2u64, 3] {
            trees.events.remove(seq_key(seq)).unwrap();
            trees.queued.remove(seq_key(seq)).unwrap();
        }
        trees.dedup.remove(committer::dedup_key("s", "b")).unwrap();
        trees.dedup.remove(committer::dedup_key("s", "c")).unwrap();
        let after_one = index::Mark {
            segment: one.content.segment,
            offset: one.content.offset + 24 + u64::from(one.content.len),
            last_seq: 1,
        };
        index::cover(&meta, after_one).unwrap();
        let ghost = record::Created {
            summary: Summary {
                seq: 9,
                id: "ghost".into(),
                ..one.summary.clone()
            },
            content: record::Content {
                event_ts: None,
                order_key: None,
                content_type: "application/json".into(),
                headers: Default::default(),
                client_identity: None,
                body: Bytes::from_static(b"{}"),
                normalised: None,
            },
            replays: 0,
            order_ts: None,
            remembered: true,
            replay_key: None,
            deliveries: Vec::new(),
            derived: None,
            keys_in_index: false,
        };
        let nowhere = record::Loc {
            offset: 1 << 30,
            ..one.content
        };
        index::apply(&trees, &ghost, nowhere).unwrap();
        db.flush().unwrap();
    }

    let journal = Journal::open(settings(dir.path())).unwrap();
    let ids: Vec<String> = (1..=3)
        .map(|seq| journal.get(seq).unwrap().unwrap().summary.id)
        .collect();
    assert_eq!(
        ids,
        ["a", "b", "c"],
        "events 2 and 3 came back from the log"
    );
    assert_eq!(journal.get(2).unwrap().unwrap().body, b"{}");
    assert_eq!(
        journal.append(event("b", HOUR_MS + 1)).await,
        Ok(Outcome::Duplicate(2)),
        "and their ids are remembered again"
    );
    assert!(journal.get(9).unwrap().is_none(), "the ghost is gone");
    assert_eq!(
        journal.append(event("ghost", HOUR_MS + 1)).await,
        Ok(Outcome::Accepted(4)),
        "an event whose append was never answered is accepted when retried"
    );
    assert_eq!(journal.backlog(), 4);
    assert_eq!(journal.counts()["s"].queued, 4);
    journal.close().await;
}

#[tokio::test]
async fn a_replay_overtaking_a_publish_keeps_the_event_queued() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    journal.append(event("a", 1)).await.unwrap();
    // Published with replay count 0; replayed before the broker's confirm arrives.
    let replayed = journal.replay(vec![1], 5).await.unwrap();
    assert_eq!(
        replayed,
        vec![Replayed {
            seq: 1,
            queued_as: 1
        }]
    );
    assert_eq!(journal.take_rewind(), Some(1));
    journal.mark_delivered(vec![(1, 0)], 10).await.unwrap();
    let record = journal.get(1).unwrap().unwrap();
    assert_eq!(record.summary.status, Status::Queued, "sent again");
    assert_eq!(journal.take_rewind(), Some(1));
    assert_eq!(journal.backlog(), 1);
    // The publish with the new count is the one that delivers it.
    journal.mark_delivered(vec![(1, 1)], 20).await.unwrap();
    let record = journal.get(1).unwrap().unwrap();
    assert_eq!(record.summary.status, Status::Delivered);
    let outcomes: Vec<&str> = record
        .attempts_log
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(
        outcomes,
        [
            "replay requested",
            "delivered; replayed since, so sent again",
            "delivered"
        ]
    );
    assert_eq!(journal.backlog(), 0);
    let counts = journal.counts()["s"];
    assert_eq!((counts.queued, counts.delivered), (0, 1));
    journal.close().await;
}

#[tokio::test]
async fn embedded_replay_copies_count_and_compact_like_events() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(Settings {
        embedded: true,
        ..settings(dir.path())
    })
    .unwrap();
    journal.append(event("a", HOUR_MS)).await.unwrap();
    journal.append(event("b", HOUR_MS)).await.unwrap();
    let copies = journal.replay(vec![1, 7], 2 * HOUR_MS).await.unwrap();
    assert_eq!(
        copies,
        vec![Replayed {
            seq: 1,
            queued_as: 3
        }],
        "7 does not exist"
    );
    let copy = journal.get(3).unwrap().unwrap();
    assert_eq!(copy.summary.id, "a");
    assert_eq!(copy.summary.replay_of, Some(1));
    assert_eq!(copy.summary.received_at_ms, 2 * HOUR_MS);
    assert_eq!(copy.replays, 1);
    let counts = journal.counts()["s"];
    assert_eq!(counts.queued, 3);
    assert_eq!(
        counts.last_received_ms,
        Some(HOUR_MS),
        "a copy is not something the provider sent"
    );
    // Listing stops at `until`, and `received_from_ms` leaves older events out.
    let (listed, next) = journal
        .list(&ListFilter {
            limit: 10,
            until: Some(2),
            ..ListFilter::default()
        })
        .unwrap();
    assert_eq!((listed.len(), next), (2, 2));
    let (listed, _) = journal
        .list(&ListFilter {
            limit: 10,
            received_from_ms: 2 * HOUR_MS,
            ..ListFilter::default()
        })
        .unwrap();
    assert_eq!(listed.iter().map(|s| s.seq).collect::<Vec<_>>(), [3]);
    // Past retention the originals go and the copy stays.
    let week = 7 * 24 * HOUR_MS;
    assert!(!journal.compact(HOUR_MS + week + 1).await.unwrap());
    assert!(journal.get(1).unwrap().is_none());
    assert_eq!(journal.get(3).unwrap().unwrap().body, b"{}");
    assert_eq!(journal.counts()["s"].queued, 1);
    assert_eq!(journal.backlog(), 1);
    journal.close().await;
}

#[tokio::test]
async fn ids_are_forgotten_after_the_window_whether_or_not_their_event_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Retention (1 h) shorter than the dedup window (72 h): event 1 is compacted while
    // its id must still be remembered.
    let journal = Journal::open(Settings {
        retention: Duration::from_secs(3600),
        ..settings(dir.path())
    })
    .unwrap();
    journal.append(event("gone", HOUR_MS)).await.unwrap();
    journal.mark_delivered(vec![(1, 0)], HOUR_MS).await.unwrap();
    journal.append(event("kept", 10 * HOUR_MS)).await.unwrap();
    journal.compact(3 * HOUR_MS).await.unwrap();
    assert!(journal.get(1).unwrap().is_none());
    assert!(journal.remembers("s", "gone"), "inside its window");
    // Past both windows: the compacted event's id by its own expiry entry, the kept
    // event's id by the walk over the events.
    journal.compact(83 * HOUR_MS).await.unwrap();
    assert!(!journal.remembers("s", "gone"));
    assert!(!journal.remembers("s", "kept"));
    assert!(
        journal.get(2).unwrap().is_some(),
        "queued events stay (broker mode)"
    );
    assert_eq!(
        journal.append(event("kept", 84 * HOUR_MS)).await,
        Ok(Outcome::Accepted(3)),
        "a new delivery with an expired id is a new event"
    );
    // The walk goes on from where it stopped, and does not forget the new one.
    journal.compact(85 * HOUR_MS).await.unwrap();
    assert!(journal.remembers("s", "kept"));
    assert_eq!(
        journal.append(event("kept", 86 * HOUR_MS)).await,
        Ok(Outcome::Duplicate(3))
    );
    journal.close().await;
}

/// Appends raw bytes to the newest log segment, as a crash mid-write leaves them;
/// answers the segment.
fn append_to_last_segment(log_dir: &Path, bytes: &[u8]) -> u64 {
    let last = *log::segments(log_dir).unwrap().last().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(log::segment_path(log_dir, last))
        .unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    last
}

#[tokio::test]
async fn a_torn_entry_before_a_prepared_empty_segment_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    journal.append(event("a", 1)).await.unwrap();
    journal.close().await;
    drop(journal);
    // A crash in the middle of a write, after the next segment was created ahead.
    let log_dir = dir.path().join("journal").join("log");
    let last = append_to_last_segment(
        &log_dir,
        b"HGLE\x02\0\0\0\x02\0\0\0\0\0\0\0\xc8\0\0\0\x01\x02\x03",
    );
    std::fs::File::create(log::segment_path(&log_dir, last + 1)).unwrap();

    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(journal.get(1).unwrap().unwrap().summary.id, "a");
    assert_eq!(
        journal.append(event("b", 2)).await,
        Ok(Outcome::Accepted(2))
    );
    journal.close().await;
    drop(journal);
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(journal.get(2).unwrap().unwrap().summary.id, "b");
    journal.close().await;
}

/// A log entry for seq `seq`, as an append would write it.
fn created(seq: u64, id: &str) -> record::Created {
    record::Created {
        summary: Summary {
            seq,
            id: id.into(),
            source: "s".into(),
            event_type: None,
            status: Status::Queued,
            received_at_ms: 1,
            attempts: 0,
            size: 2,
            replay_of: None,
        },
        content: record::Content {
            event_ts: None,
            order_key: None,
            content_type: "application/json".into(),
            headers: Default::default(),
            client_identity: None,
            body: Bytes::from_static(b"{}"),
            normalised: None,
        },
        replays: 0,
        order_ts: None,
        remembered: true,
        replay_key: None,
        deliveries: Vec::new(),
        derived: None,
        keys_in_index: false,
    }
}

#[tokio::test]
async fn a_missing_entry_costs_its_own_seq_and_a_zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    for id in ["a", "b", "c"] {
        journal.append(event(id, 1)).await.unwrap();
    }
    journal.close().await;
    drop(journal);
    // A later segment holds seq 5, but seq 4 is nowhere (a lost write, a bad sector),
    // and the index had already taken seq 5.
    let log_dir = dir.path().join("journal").join("log");
    let last = *log::segments(&log_dir).unwrap().last().unwrap();
    {
        let mut later = log::Writer::open(&log_dir, Some((last + 1, 0))).unwrap();
        let five = created(5, "five");
        let loc = later
            .append_with(5, |buf| record::encode_created(&five, buf))
            .unwrap();
        later.write().unwrap();
        let (db, trees, _) = raw_index(dir.path());
        index::apply(&trees, &five, loc).unwrap();
        db.flush().unwrap();
    }
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(journal.get(5).unwrap().unwrap().summary.id, "five");
    assert!(journal.remembers("s", "five"));
    assert!(matches!(
        journal.get(4),
        Err(ReadError::Damaged { seq: 4, .. })
    ));
    let (listed, _) = journal
        .list(&ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .unwrap();
    let statuses: Vec<(u64, Status)> = listed.iter().map(|s| (s.seq, s.status)).collect();
    assert_eq!(
        statuses,
        [
            (1, Status::Queued),
            (2, Status::Queued),
            (3, Status::Queued),
            (4, Status::Damaged),
            (5, Status::Queued)
        ]
    );
    assert_eq!(
        journal.counts()[""].damaged,
        1,
        "a damaged entry's source is unknown"
    );
    assert_eq!(journal.backlog(), 4);
    assert_eq!(
        journal.append(event("six", 2)).await,
        Ok(Outcome::Accepted(6))
    );
    journal.close().await;
    drop(journal);

    // Zeros where a write should have landed: a torn tail, cut off.
    append_to_last_segment(&log_dir, &[0; 64]);
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(journal.get(6).unwrap().unwrap().summary.id, "six");
    assert_eq!(
        journal.append(event("seven", 3)).await,
        Ok(Outcome::Accepted(7))
    );
    journal.close().await;
}

/// Overwrites one byte of the log entry of `seq`, inside its payload.
fn flip_a_byte_of(dir: &Path, journal: &Journal, seq: u64) {
    // A read waits for the index to hold what was acknowledged; the trees do not.
    assert!(journal.get(seq).unwrap().is_some());
    let record::Stored::Indexed(index) = record::decode_stored(
        &journal
            .core()
            .unwrap()
            .trees()
            .events
            .get(seq_key(seq))
            .unwrap()
            .unwrap(),
    )
    .unwrap() else {
        panic!("new events are indexed")
    };
    let path = log::segment_path(&dir.join("journal").join("log"), index.content.segment);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // Past the 24-byte header, in the middle of the entry.
    let at = index.content.offset + 24 + u64::from(index.content.len) / 2;
    let mut byte = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[byte[0] ^ 0x20], at).unwrap();
}

/// Forgets that the index covered any of the log, and everything after `seq`, as a
/// crash before the index's flush leaves it.
fn unflush_index_after(dir: &Path, seq: u64) {
    let (db, trees, meta) = raw_index(dir);
    meta.remove(b"log_covered").unwrap();
    for item in trees.events.range(seq_key(seq + 1)..) {
        let (key, bytes) = item.unwrap();
        let summary = record::decode_summary(&bytes).unwrap();
        trees.events.remove(&key).unwrap();
        trees.queued.remove(&key).unwrap();
        trees
            .dedup
            .remove(committer::dedup_key(&summary.source, &summary.id))
            .unwrap();
    }
    db.flush().unwrap();
}

#[tokio::test]
async fn a_flipped_byte_costs_one_event_when_the_index_had_not_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    for n in 1..=100 {
        journal.append(event(&format!("e{n}"), 1)).await.unwrap();
    }
    flip_a_byte_of(dir.path(), &journal, 30);
    journal.close().await;
    drop(journal);
    unflush_index_after(dir.path(), 10);

    let journal = Journal::open(settings(dir.path())).unwrap();
    for n in (1..=100).filter(|n| *n != 30) {
        let record = journal.get(n).unwrap().unwrap();
        assert_eq!(record.summary.id, format!("e{n}"));
        assert_eq!(record.summary.status, Status::Queued);
        assert_eq!(
            journal.append(event(&format!("e{n}"), 2)).await,
            Ok(Outcome::Duplicate(n)),
            "event {n} is still recognised"
        );
    }
    assert!(matches!(
        journal.get(30),
        Err(ReadError::Damaged { seq: 30, .. })
    ));
    assert_eq!(journal.backlog(), 99);
    // Its id was in the damaged bytes: a provider's retry of it is accepted.
    assert_eq!(
        journal.append(event("e30", 2)).await,
        Ok(Outcome::Accepted(101))
    );
    let queued: Vec<u64> = journal
        .queued_from(0, 1000)
        .unwrap()
        .iter()
        .map(|r| r.summary.seq)
        .collect();
    assert_eq!(queued.len(), 100);
    assert!(!queued.contains(&30));
    journal.close().await;
}

#[tokio::test]
async fn a_damaged_entry_the_index_covers_is_marked_when_read_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(Settings {
        embedded: false,
        ..settings(dir.path())
    })
    .unwrap();
    for n in 1..=5 {
        journal.append(event(&format!("e{n}"), 1)).await.unwrap();
    }
    flip_a_byte_of(dir.path(), &journal, 3);
    let err = journal.get(3).unwrap_err();
    assert!(
        matches!(&err, ReadError::Damaged { seq: 3, why } if why.contains("segment 1 offset")),
        "{err}"
    );
    // The forwarder's read goes past it.
    let seqs: Vec<u64> = journal
        .queued_from(0, 10)
        .unwrap()
        .iter()
        .map(|r| r.summary.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 4, 5]);
    // Marked by the committer: out of the queue, counted, its id still remembered.
    let started = std::time::Instant::now();
    while journal.backlog() != 4 {
        assert!(started.elapsed() < Duration::from_secs(5), "never marked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (listed, _) = journal
        .list(&ListFilter {
            status: Some(Status::Damaged),
            limit: 10,
            ..ListFilter::default()
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "e3");
    assert_eq!(journal.counts()["s"].damaged, 1);
    assert_eq!(
        journal.append(event("e3", 2)).await,
        Ok(Outcome::Duplicate(3))
    );
    journal.close().await;
    drop(journal);
    // After a restart too.
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert!(matches!(journal.get(3), Err(ReadError::Damaged { .. })));
    assert_eq!(journal.get(4).unwrap().unwrap().summary.id, "e4");
    journal.close().await;
}

#[tokio::test]
async fn a_damaged_end_that_the_index_covered_is_kept_and_the_log_goes_on_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    for n in 1..=3 {
        journal.append(event(&format!("e{n}"), 1)).await.unwrap();
    }
    journal.close().await;
    drop(journal);
    // The disk lost the second half of the last entry after the index covered it.
    let log_dir = dir.path().join("journal").join("log");
    let before = log::segments(&log_dir).unwrap();
    let path = log::segment_path(&log_dir, *before.last().unwrap());
    let len = std::fs::metadata(&path).unwrap().len() - 10;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len)
        .unwrap();

    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(journal.get(2).unwrap().unwrap().summary.id, "e2");
    let after = log::segments(&log_dir).unwrap();
    assert_eq!(
        std::fs::metadata(log::segment_path(&log_dir, *before.last().unwrap()))
            .unwrap()
            .len(),
        len,
        "the damaged bytes are not cut off"
    );
    assert_eq!(
        journal.append(event("e4", 2)).await,
        Ok(Outcome::Accepted(4))
    );
    assert!(matches!(journal.get(3), Err(ReadError::Damaged { .. })));
    journal.close().await;
    drop(journal);
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(log::segments(&log_dir).unwrap(), after);
    assert_eq!(after.len(), before.len() + 1, "a new segment");
    assert_eq!(journal.get(4).unwrap().unwrap().summary.id, "e4");
    assert_eq!(journal.counts()["s"].damaged, 1);
    journal.close().await;
}

#[tokio::test]
async fn a_journal_used_embedded_then_with_a_broker_forwards_what_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Settings {
        embedded: true,
        ..settings(dir.path())
    };
    let journal = Journal::open(embedded.clone()).unwrap();
    journal.append(event("a", HOUR_MS)).await.unwrap();
    journal.append(event("b", HOUR_MS)).await.unwrap();
    assert_eq!(journal.backlog(), 2);
    assert!(
        journal.queued_from(0, 10).unwrap().is_empty(),
        "embedded, no queue is kept"
    );
    journal.close().await;
    drop(journal);

    // A broker is configured: both events are queued for it.
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(journal.backlog(), 2);
    let queued: Vec<u64> = journal
        .queued_from(0, 10)
        .unwrap()
        .iter()
        .map(|r| r.summary.seq)
        .collect();
    assert_eq!(queued, [1, 2]);
    journal.mark_delivered(vec![(1, 0)], HOUR_MS).await.unwrap();
    assert_eq!(journal.backlog(), 1);
    journal.close().await;
    drop(journal);

    // Embedded again: the backlog counts the events still queued, and compaction takes
    // it down.
    let journal = Journal::open(embedded).unwrap();
    assert_eq!(journal.backlog(), 1);
    journal.append(event("c", 2 * HOUR_MS)).await.unwrap();
    assert_eq!(journal.backlog(), 2);
    let week = 7 * 24 * HOUR_MS;
    journal.compact(HOUR_MS + week + 1).await.unwrap();
    assert_eq!(journal.backlog(), 1, "b went with retention; c stays");
    journal.close().await;
}

#[tokio::test]
async fn a_replayed_copy_does_not_count_as_received_after_a_restart_either() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Settings {
        embedded: true,
        ..settings(dir.path())
    };
    let journal = Journal::open(embedded.clone()).unwrap();
    journal.append(event("a", HOUR_MS)).await.unwrap();
    journal.replay(vec![1], 5 * HOUR_MS).await.unwrap();
    assert_eq!(journal.counts()["s"].last_received_ms, Some(HOUR_MS));
    journal.close().await;
    drop(journal);
    let journal = Journal::open(embedded).unwrap();
    let counts = journal.counts()["s"];
    assert_eq!(counts.queued, 2);
    assert_eq!(counts.last_received_ms, Some(HOUR_MS));
    journal.close().await;
}

#[tokio::test]
async fn an_order_entry_set_by_an_event_that_never_became_durable_goes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(
        journal.append(ordered("a", "k", 100)).await,
        Ok(Outcome::Accepted(1))
    );
    journal.close().await;
    drop(journal);
    // The index flushed event 2 and the order entry it set (ts 500), but its log entry
    // never reached the disk: its append was never answered.
    {
        let (db, trees, _) = raw_index(dir.path());
        let mut never = created(2, "never");
        never.content.order_key = Some("k".into());
        never.order_ts = Some(500);
        let nowhere = record::Loc {
            segment: 1,
            offset: 1 << 30,
            len: 10,
        };
        index::apply(&trees, &never, nowhere).unwrap();
        db.flush().unwrap();
    }
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert!(journal.get(2).unwrap().is_none());
    assert_eq!(
        journal.append(ordered("b", "k", 200)).await,
        Ok(Outcome::Accepted(2)),
        "not stale against a timestamp nobody was told was accepted"
    );
    journal.close().await;
}

#[tokio::test]
async fn a_short_dedup_value_in_the_index_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    journal.append(event("fine", 1)).await.unwrap();
    journal.close().await;
    drop(journal);
    {
        let (db, trees, _) = raw_index(dir.path());
        trees
            .dedup
            .insert(committer::dedup_key("s", "broken"), [1, 2, 3])
            .unwrap();
        trees
            .order
            .insert(committer::dedup_key("s", "k"), [9])
            .unwrap();
        // The close's census (and the fingerprints saved with it) describe the index
        // before this change: an index changed behind the journal's back is counted
        // and walked again.
        census::take(&trees).unwrap();
        db.flush().unwrap();
    }
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert!(matches!(
        journal.append(event("broken", 2)).await,
        Err(JournalError::Unwritable(why)) if why.contains("damaged")
    ));
    // A short order value reads as no order memory; compaction drops it.
    assert_eq!(
        journal.append(ordered("o", "k", 1)).await,
        Ok(Outcome::Accepted(2))
    );
    assert_eq!(journal.compact(10 * 24 * HOUR_MS).await, Ok(false));
    assert_eq!(
        journal.append(event("after", 3)).await,
        Ok(Outcome::Accepted(3)),
        "the journal goes on"
    );
    journal.close().await;
}

#[tokio::test]
async fn retired_segments_are_written_over_and_what_they_held_never_comes_back() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("journal/log");
    let sized = || Settings {
        segment_bytes: 64 * 1024,
        embedded: true,
        max_backlog: 100_000,
        ..settings(dir.path())
    };
    let sized_event = |id: String, at_ms: u64, size: usize| NewEvent {
        body: Bytes::from(vec![b' '; size]),
        ..event(&id, at_ms)
    };
    let journal = Journal::open(sized()).unwrap();
    for n in 1..=40 {
        journal
            .append(sized_event(format!("old{n}"), HOUR_MS, 8 * 1024))
            .await
            .unwrap();
    }
    let week = 7 * 24 * HOUR_MS;
    let now = HOUR_MS + week + 1;
    while journal.compact(now).await.unwrap() {}
    // The index flusher retires the segments once their events' removal is durable.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log::free_segments(&log_dir).unwrap().len() < log::KEEP_FREE {
        assert!(std::time::Instant::now() < deadline, "no segment retired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retired: Vec<u64> = log::free_segments(&log_dir)
        .unwrap()
        .iter()
        .map(|n| {
            std::fs::metadata(log_dir.join(format!("{n:016}.free")))
                .unwrap()
                .ino()
        })
        .collect();
    // New events, smaller than the old ones, until a retired file is a segment again and
    // the log has gone on into it.
    let reused_segment = || {
        log::segments(&log_dir).unwrap().into_iter().find(|n| {
            std::fs::metadata(log::segment_path(&log_dir, *n))
                .is_ok_and(|m| retired.contains(&m.ino()))
        })
    };
    let mut seq = 40;
    while reused_segment().is_none() {
        seq += 1;
        assert!(seq < 200, "no retired segment was used again");
        journal
            .append(sized_event(format!("new{seq}"), now, 2 * 1024))
            .await
            .unwrap();
    }
    for _ in 0..20 {
        seq += 1;
        journal
            .append(sized_event(format!("new{seq}"), now, 2 * 1024))
            .await
            .unwrap();
    }
    let last = seq;
    let reused = reused_segment().unwrap();
    let first = log::first_seq(&log_dir, reused)
        .unwrap()
        .expect("the reused segment starts with a new entry");
    assert!(first > 40);
    journal.close().await;
    drop(journal);

    // As if the index had flushed nothing written into the reused segment: recovery reads
    // it from its start, its new entries and then what it held before.
    {
        let (db, trees, meta) = raw_index(dir.path());
        for s in first..=last {
            trees.events.remove(seq_key(s)).unwrap();
            trees
                .dedup
                .remove(committer::dedup_key("s", &format!("new{s}")))
                .unwrap();
        }
        index::cover(
            &meta,
            index::Mark {
                segment: reused,
                offset: 0,
                last_seq: first - 1,
            },
        )
        .unwrap();
        db.flush().unwrap();
    }
    let journal = Journal::open(sized()).unwrap();
    for old in 1..=40 {
        assert!(
            journal.get(old).unwrap().is_none(),
            "event {old} was compacted and must not come back from a reused segment"
        );
    }
    for s in 41..=last {
        assert_eq!(
            journal.get(s).unwrap().expect("acknowledged").summary.id,
            format!("new{s}")
        );
    }
    let counts = &journal.counts()["s"];
    assert_eq!((counts.queued, counts.damaged), (last - 40, 0));
    assert_eq!(
        journal
            .append(sized_event(format!("new{first}"), now, 10))
            .await,
        Ok(Outcome::Duplicate(first)),
        "the ids of the reused segment's entries are remembered again"
    );
    assert_eq!(
        journal.append(sized_event("next".into(), now, 10)).await,
        Ok(Outcome::Accepted(last + 1))
    );
    journal.close().await;
    drop(journal);

    // A crash after a retired file became the next segment, before anything was written
    // into it, in the middle of a write to the one before: the torn write is cut off,
    // and the file is retired again (or deleted, with enough retired already).
    let segments = log::segments(&log_dir).unwrap();
    let newest = *segments.last().unwrap();
    let whole = std::fs::metadata(log::segment_path(&log_dir, newest))
        .unwrap()
        .len();
    append_to_last_segment(
        &log_dir,
        b"HGLE\x02\0\0\0\x02\0\0\0\0\0\0\0\xc8\0\0\0\x01\x02\x03",
    );
    std::fs::copy(
        log::segment_path(&log_dir, segments[0]),
        log::segment_path(&log_dir, newest + 1),
    )
    .unwrap();
    let journal = Journal::open(sized()).unwrap();
    assert_eq!(
        std::fs::metadata(log::segment_path(&log_dir, newest))
            .unwrap()
            .len(),
        whole,
        "the torn write is cut off"
    );
    assert!(
        !log::segments(&log_dir).unwrap().contains(&(newest + 1)),
        "the retired file is not part of the log"
    );
    assert_eq!(journal.counts()["s"].damaged, 0);
    assert_eq!(
        journal.append(sized_event("after".into(), now, 10)).await,
        Ok(Outcome::Accepted(last + 2))
    );
    assert_eq!(journal.get(last + 1).unwrap().unwrap().summary.id, "next");
    journal.close().await;
}

#[tokio::test]
async fn short_of_disk_space_retired_segments_are_deleted_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("journal/log");
    let sized = |min_free| Settings {
        segment_bytes: 64 * 1024,
        embedded: true,
        min_free,
        ..settings(dir.path())
    };
    let journal = Journal::open(sized(MinFree::Bytes(0))).unwrap();
    for n in 1..=40 {
        let e = NewEvent {
            body: Bytes::from(vec![b' '; 8 * 1024]),
            ..event(&format!("e{n}"), HOUR_MS)
        };
        journal.append(e).await.unwrap();
    }
    journal.close().await;
    drop(journal);
    // One retired by an earlier run.
    std::fs::write(log_dir.join(format!("{:016}.free", 1_000)), b"old").unwrap();
    let journal = Journal::open(sized(MinFree::Bytes(u64::MAX))).unwrap();
    // The index flusher has settled (nothing left to flush) when the disk turns low.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        journal.append(event("refused", HOUR_MS)).await,
        Err(JournalError::DiskLow(_))
    ));
    // Refusing events, with nothing else happening: the retired file goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !log::free_segments(&log_dir).unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a retired segment is kept while the disk is short of space"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let segments = log::segments(&log_dir).unwrap().len();
    assert!(segments >= 5, "{segments}");
    while journal
        .compact(HOUR_MS + 7 * 24 * HOUR_MS + 1)
        .await
        .unwrap()
    {}
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log::segments(&log_dir).unwrap().len() > 1 {
        assert!(std::time::Instant::now() < deadline, "no segment retired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        log::free_segments(&log_dir).unwrap(),
        Vec::<u64>::new(),
        "every retired segment is deleted"
    );
    journal.close().await;
}

#[tokio::test]
async fn seqs_go_on_after_every_event_was_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = || Settings {
        embedded: true,
        ..settings(dir.path())
    };
    let journal = Journal::open(embedded()).unwrap();
    for n in 1..=3 {
        journal
            .append(event(&format!("e{n}"), HOUR_MS))
            .await
            .unwrap();
    }
    while journal
        .compact(HOUR_MS + 7 * 24 * HOUR_MS + 1)
        .await
        .unwrap()
    {}
    assert!(journal.get(3).unwrap().is_none());
    journal.close().await;
    drop(journal);
    // Twice: the first open must also keep the mark for the next.
    for next in [4, 5] {
        let journal = Journal::open(embedded()).unwrap();
        assert_eq!(
            journal
                .append(event(&format!("n{next}"), 9 * 24 * HOUR_MS))
                .await,
            Ok(Outcome::Accepted(next)),
            "a seq an event had is never given again"
        );
        journal.compact(30 * 24 * HOUR_MS).await.unwrap();
        journal.close().await;
    }
}

/// The census a closed journal's index holds (taken out of it), and the events per log
/// segment that a walk of its index finds.
fn census_and_walk(dir: &Path) -> (census::Census, core::Live) {
    let (_db, trees, _meta) = raw_index(dir);
    let census = census::take(&trees)
        .unwrap()
        .expect("a clean close leaves one");
    let (_, live, _, _) = core::count_events(&trees.events).unwrap();
    (census, live)
}

/// What an opening counted: by source and status, the backlog and its bytes.
fn tally(journal: &Journal) -> (BTreeMap<String, SourceCounts>, u64, u64) {
    (journal.counts(), journal.backlog(), journal.backlog_bytes())
}

#[tokio::test]
async fn a_clean_close_leaves_a_census_that_only_the_next_opening_counts_from() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = || Settings {
        embedded: true,
        ..settings(dir.path())
    };
    let counted_from_census = |journal: &Journal| journal.core().unwrap().counted_from_census();
    let journal = Journal::open(embedded()).unwrap();
    assert!(
        !counted_from_census(&journal),
        "a new journal has no census"
    );
    let recent = 8 * 24 * HOUR_MS;
    for n in 1..=4 {
        let at = if n <= 2 { HOUR_MS } else { recent };
        journal.append(event(&format!("e{n}"), at)).await.unwrap();
    }
    let other = NewEvent {
        source: "t".into(),
        body: Bytes::from_static(b"{\"bigger\":true}"),
        ..event("t1", recent)
    };
    journal.append(other).await.unwrap();
    journal.append(event("e3", recent)).await.unwrap();
    journal.append(ordered("o1", "k", 200)).await.unwrap();
    assert_eq!(
        journal.append(ordered("o2", "k", 100)).await,
        Ok(Outcome::Stale(7))
    );
    journal.mark_delivered(vec![(3, 0)], recent).await.unwrap();
    // A replayed copy (embedded: a new event, seq 8) refers to its original's content.
    journal.replay(vec![4], recent).await.unwrap();
    // Events 1 and 2 are past retention: compaction removes them.
    while journal.compact(recent + HOUR_MS).await.unwrap() {}
    let before = tally(&journal);
    let s = &before.0["s"];
    assert_eq!((s.queued, s.delivered, s.stale), (3, 1, 1), "{before:?}");
    assert_eq!(before.0["t"].queued, 1);
    journal.close().await;
    drop(journal);

    // The census of that close is what the next opening counts from, and it counts
    // what a walk of the index would.
    let journal = Journal::open(embedded()).unwrap();
    assert!(counted_from_census(&journal));
    assert_eq!(tally(&journal), before);
    assert!(
        !core::fingerprints_path(&dir.path().join("journal")).exists(),
        "the saved fingerprints are read once"
    );
    // The fingerprints saved at the close still know every id: a duplicate is one.
    for (id, seq) in [("e3", 3), ("e4", 4)] {
        assert_eq!(
            journal.append(event(id, recent)).await,
            Ok(Outcome::Duplicate(seq)),
            "{id}"
        );
    }
    journal.append(event("e9", recent)).await.unwrap();
    let after = tally(&journal);
    assert_eq!(after.0["s"].queued, 4);
    journal.close().await;
    drop(journal);
    // Which segments hold events decides which an opening deletes: the census must say
    // what a walk finds.
    let (census, live) = census_and_walk(dir.path());
    assert_eq!(census.live, live);
    assert!(!live.is_empty());
    let journal = Journal::open(embedded()).unwrap();
    assert!(!counted_from_census(&journal), "the census was taken out");
    assert_eq!(tally(&journal), after, "a walk counts what the census said");
    journal.close().await;
    drop(journal);

    // An opening takes the census out, durably, before anything new is accepted: a
    // crash after it leaves none to count from.
    let journal = Journal::open(embedded()).unwrap();
    assert!(counted_from_census(&journal));
    assert!(journal.core().unwrap().census_left().is_none());
    journal.close().await;
    drop(journal);

    // Without the fingerprints saved with it, a census is not used either: deleting
    // them is how an operator makes the next opening count everything again.
    std::fs::remove_file(core::fingerprints_path(&dir.path().join("journal"))).unwrap();
    let journal = Journal::open(embedded()).unwrap();
    assert!(!counted_from_census(&journal));
    assert_eq!(tally(&journal), after);
    journal.close().await;
    drop(journal);

    // A census written when the index covered another position is not the index's.
    {
        let (_db, trees, meta) = raw_index(dir.path());
        let covered = index::covered(&meta).unwrap().unwrap();
        index::cover(
            &meta,
            index::Mark {
                last_seq: covered.last_seq + 5,
                ..covered
            },
        )
        .unwrap();
        assert!(census::take(&trees).unwrap().is_some());
        let census = census::Census {
            covered,
            counts: BTreeMap::new(),
            live: BTreeMap::new(),
            queued_bytes: 0,
            sub_stats: Default::default(),
        };
        census::write(&trees, &census).unwrap();
    }
    let journal = Journal::open(embedded()).unwrap();
    assert!(!counted_from_census(&journal));
    assert_eq!(tally(&journal), after);
    journal.close().await;
}

#[tokio::test]
async fn a_segment_emptied_while_it_was_written_is_not_carried_by_the_census() {
    let dir = tempfile::tempdir().unwrap();
    let sized = || Settings {
        embedded: true,
        segment_bytes: 64 * 1024,
        ..settings(dir.path())
    };
    let big = |id: &str, at: u64| NewEvent {
        body: Bytes::from(vec![b' '; 8 * 1024]),
        ..event(id, at)
    };
    let journal = Journal::open(sized()).unwrap();
    // Eight events of 8 KiB fill the first segment (the log moves on at the next
    // append); compaction then removes them all while it is still the one written, and
    // the next event starts another.
    for n in 0..8 {
        journal
            .append(big(&format!("old{n}"), HOUR_MS))
            .await
            .unwrap();
    }
    let recent = 8 * 24 * HOUR_MS;
    while journal.compact(recent).await.unwrap() {}
    journal.append(big("new", recent)).await.unwrap();
    journal.close().await;
    drop(journal);
    let (census, live) = census_and_walk(dir.path());
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(census.live, live, "the emptied segment is not kept alive");
    // Nor by the run itself: the segment was retired once the log had moved past it.
    let segments = log::segments(&dir.path().join("journal/log")).unwrap();
    assert_eq!(segments, vec![2]);
}

/// An event whose signature does not cover its id: `replay` is what it does cover.
fn signed(id: &str, replay: &str, at_ms: u64) -> NewEvent {
    NewEvent {
        replay_key: Some(replay.into()),
        ..event(id, at_ms)
    }
}

/// Whether the index's `dedup` tree holds the replay key `replay` of source `s`.
fn replay_in_index(journal: &Journal, replay: &str) -> bool {
    journal
        .core()
        .unwrap()
        .trees()
        .dedup
        .contains_key(committer::replay_dedup_key("s", replay))
        .unwrap()
}

/// Whether the index's `dedup` tree holds the id `id` of source `s`.
fn id_in_index(journal: &Journal, id: &str) -> bool {
    journal
        .core()
        .unwrap()
        .trees()
        .dedup
        .contains_key(committer::dedup_key("s", id))
        .unwrap()
}

/// Events 1-3 (ids `a`, `b`, `c`, replay keys `r1`, `r2`, `r3`) are each remembered:
/// a duplicate by their id, and by their replay key under a new id.
async fn assert_remembered(journal: &Journal, at_ms: u64) {
    for (id, replay, seq) in [("a", "r1", 1), ("b", "r2", 2), ("c", "r3", 3)] {
        let forged = signed(&format!("new-{replay}-{at_ms}"), replay, at_ms);
        assert_eq!(
            journal.append(forged).await,
            Ok(Outcome::Duplicate(seq)),
            "{replay}"
        );
        assert_eq!(
            journal.append(signed(id, "other", at_ms)).await,
            Ok(Outcome::Duplicate(seq)),
            "{id}"
        );
        assert!(journal.remembers("s", id));
    }
}

#[tokio::test]
async fn dedup_keys_live_in_memory_and_come_back_after_a_close_and_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(
        journal.append(signed("a", "r1", HOUR_MS)).await,
        Ok(Outcome::Accepted(1))
    );
    assert_eq!(
        journal.append(signed("b", "r2", HOUR_MS)).await,
        Ok(Outcome::Accepted(2))
    );
    // Indexed: neither key is in the index (the event's entry holds both).
    assert!(journal.get(2).unwrap().is_some());
    assert!(journal.remembers("s", "a"));
    assert!(!id_in_index(&journal, "a") && !replay_in_index(&journal, "r1"));
    assert_eq!(
        journal.append(signed("forged", "r1", HOUR_MS + 1)).await,
        Ok(Outcome::Duplicate(1)),
        "the same signed content under a new id"
    );
    assert_eq!(
        journal.append(signed("a", "other", HOUR_MS + 1)).await,
        Ok(Outcome::Duplicate(1)),
        "the same id"
    );
    assert_eq!(
        journal.append(signed("c", "r3", HOUR_MS + 1)).await,
        Ok(Outcome::Accepted(3))
    );
    journal.close().await;
    drop(journal);

    // A clean close saves the table.
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(
        journal.append(signed("forged-2", "r2", HOUR_MS + 2)).await,
        Ok(Outcome::Duplicate(2))
    );
    assert_eq!(
        journal.append(signed("b", "other", HOUR_MS + 2)).await,
        Ok(Outcome::Duplicate(2))
    );
    journal.close().await;
    drop(journal);

    // A crash leaves no saved table, and the index had not flushed past event 1:
    // events 2 and 3 come back from the log, and every key from the events.
    unflush_index_after(dir.path(), 1);
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_remembered(&journal, HOUR_MS + 3).await;
    assert_eq!(
        journal.append(signed("d", "r4", HOUR_MS + 3)).await,
        Ok(Outcome::Accepted(4))
    );
    assert!(journal.get(4).unwrap().is_some());
    assert!(!id_in_index(&journal, "b") && !replay_in_index(&journal, "r2"));
    assert!(!id_in_index(&journal, "d") && !replay_in_index(&journal, "r4"));
    journal.close().await;
}

#[tokio::test]
async fn a_key_is_forgotten_after_its_window_and_the_newest_event_decides() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    journal.append(signed("a", "r", HOUR_MS)).await.unwrap();
    // Past the window (72 h) before any walk forgot them: a new event, and the table
    // holds the keys for both until the walk comes.
    assert_eq!(
        journal.append(signed("a", "r", 80 * HOUR_MS)).await,
        Ok(Outcome::Accepted(2))
    );
    assert_eq!(
        journal.append(signed("c", "r", 80 * HOUR_MS + 1)).await,
        Ok(Outcome::Duplicate(2)),
        "the newer event decides"
    );
    assert_eq!(
        journal.append(signed("a", "s", 80 * HOUR_MS + 1)).await,
        Ok(Outcome::Duplicate(2))
    );
    journal.compact(80 * HOUR_MS + 2).await.unwrap();
    assert_eq!(
        journal.append(signed("d", "r", 80 * HOUR_MS + 3)).await,
        Ok(Outcome::Duplicate(2)),
        "the walk forgot event 1's keys, not event 2's"
    );
    assert!(journal.remembers("s", "a"));
    journal.close().await;
    drop(journal);
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(
        journal.append(signed("e", "r", 80 * HOUR_MS + 4)).await,
        Ok(Outcome::Duplicate(2))
    );
    journal.compact(160 * HOUR_MS).await.unwrap();
    assert!(!journal.remembers("s", "a"));
    assert_eq!(
        journal.append(signed("f", "r", 160 * HOUR_MS + 1)).await,
        Ok(Outcome::Accepted(3)),
        "past its window"
    );
    assert_eq!(
        journal.append(signed("a", "t", 160 * HOUR_MS + 1)).await,
        Ok(Outcome::Accepted(4))
    );
    journal.close().await;
}

#[tokio::test]
async fn keys_outlive_their_event_compacted_inside_the_window() {
    let dir = tempfile::tempdir().unwrap();
    // Retention (1 h) shorter than the dedup window (72 h).
    let settings = || Settings {
        retention: Duration::from_secs(3600),
        ..settings(dir.path())
    };
    let journal = Journal::open(settings()).unwrap();
    journal.append(signed("gone", "r", HOUR_MS)).await.unwrap();
    journal.mark_delivered(vec![(1, 0)], HOUR_MS).await.unwrap();
    journal.compact(3 * HOUR_MS).await.unwrap();
    assert!(journal.get(1).unwrap().is_none());
    assert!(
        id_in_index(&journal, "gone") && replay_in_index(&journal, "r"),
        "its entry can no longer vouch for its keys: sled holds them"
    );
    assert_eq!(
        journal.append(signed("forged", "r", 4 * HOUR_MS)).await,
        Ok(Outcome::Duplicate(1))
    );
    journal.close().await;
    drop(journal);
    // As after a crash: no saved table, so it is built again.
    std::fs::remove_file(core::fingerprints_path(&dir.path().join("journal"))).unwrap();
    let journal = Journal::open(settings()).unwrap();
    assert_eq!(
        journal.append(signed("forged-2", "r", 5 * HOUR_MS)).await,
        Ok(Outcome::Duplicate(1)),
        "after a crash too"
    );
    assert_eq!(
        journal.append(signed("gone", "other", 5 * HOUR_MS)).await,
        Ok(Outcome::Duplicate(1))
    );
    journal.compact(83 * HOUR_MS).await.unwrap();
    assert!(
        !id_in_index(&journal, "gone") && !replay_in_index(&journal, "r"),
        "their expiry entries removed them"
    );
    assert_eq!(
        journal.append(signed("new", "r", 84 * HOUR_MS)).await,
        Ok(Outcome::Accepted(2))
    );
    journal.close().await;
}

#[tokio::test]
async fn past_the_tables_limit_dedup_keys_go_into_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    journal.core().unwrap().limit_held(2);
    for (id, replay) in [("a", "r1"), ("b", "r2"), ("c", "r3")] {
        journal.append(signed(id, replay, HOUR_MS)).await.unwrap();
    }
    assert!(journal.get(3).unwrap().is_some());
    assert!(
        !id_in_index(&journal, "a") && !replay_in_index(&journal, "r1"),
        "held in memory"
    );
    for (id, replay) in [("b", "r2"), ("c", "r3")] {
        assert!(id_in_index(&journal, id) && replay_in_index(&journal, replay));
    }
    assert_remembered(&journal, HOUR_MS + 1).await;
    journal.close().await;
    drop(journal);
    // The next opening builds the table again, with room for all of them.
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_remembered(&journal, HOUR_MS + 2).await;
    journal
        .append(signed("d", "r4", HOUR_MS + 2))
        .await
        .unwrap();
    assert!(journal.get(4).unwrap().is_some());
    assert!(
        !id_in_index(&journal, "d") && !replay_in_index(&journal, "r4"),
        "in memory again"
    );
    journal.close().await;
}

#[tokio::test]
async fn an_opening_that_finds_more_keys_than_it_holds_writes_the_rest_into_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(settings(dir.path())).unwrap();
    for (id, replay) in [("a", "r1"), ("b", "r2"), ("c", "r3")] {
        journal.append(signed(id, replay, HOUR_MS)).await.unwrap();
    }
    journal.close().await;
    drop(journal);
    let (_db, trees, _) = raw_index(dir.path());
    let mut prints = fingerprints::Fingerprints::load(&trees.dedup).unwrap();
    prints.load_held(&trees, 1, 2).unwrap();
    assert_eq!(prints.held_count(), 2);
    let in_index = |key: Vec<u8>| trees.dedup.contains_key(key).unwrap();
    assert!(!in_index(committer::dedup_key("s", "a")));
    assert!(!in_index(committer::replay_dedup_key("s", "r1")));
    for (id, replay) in [("b", "r2"), ("c", "r3")] {
        assert!(in_index(committer::dedup_key("s", id)));
        assert!(in_index(committer::replay_dedup_key("s", replay)));
        assert!(
            prints.may_hold(&committer::dedup_key("s", id)),
            "and counted"
        );
    }
    assert!(prints.is_full(), "new ones go there too");
}

/// What an earlier hookgate left: the same trees, in sled.
fn index_back_to_sled(dir: &Path) {
    let journal = dir.join("journal");
    {
        let db = store::Db::open(&journal, DEFAULT_INDEX_CACHE).unwrap();
        let sled = sled::open(store::earlier_dir(&journal, store::Earlier::Sled)).unwrap();
        for (name, tree) in store::TREES.into_iter().zip(db.open_trees().unwrap()) {
            let to = sled.open_tree(name).unwrap();
            for item in tree.iter() {
                let (key, value) = item.unwrap();
                to.insert(&*key, &*value).unwrap();
            }
        }
        sled.flush().unwrap();
    }
    std::fs::remove_dir_all(store::dir(&journal)).unwrap();
}

/// A journal at `dir` with events a, b and c, of which b is delivered: what only the
/// index holds (the log has each event as it arrived).
async fn three_events_one_delivered(dir: &Path) {
    let journal = Journal::open(settings(dir)).unwrap();
    for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
        assert_eq!(
            journal.append(event(id, HOUR_MS)).await,
            Ok(Outcome::Accepted(n as u64 + 1))
        );
    }
    journal
        .mark_delivered(vec![(2, 0)], 2 * HOUR_MS)
        .await
        .unwrap();
    journal.close().await;
}

/// Opens the journal at `dir` and checks that [`three_events_one_delivered`]'s index came
/// through whole, then journals d.
async fn three_events_still_known(dir: &Path) {
    let journal = Journal::open(settings(dir)).unwrap();
    for (seq, id) in [(1, "a"), (2, "b"), (3, "c")] {
        let record = journal.get(seq).unwrap().expect("the event is still there");
        assert_eq!(record.summary.id, id);
    }
    assert_eq!(journal.summary(2).unwrap().status, Status::Delivered);
    assert_eq!(journal.summary(3).unwrap().status, Status::Queued);
    assert_eq!(
        journal.append(event("b", 2 * HOUR_MS)).await,
        Ok(Outcome::Duplicate(2)),
        "the ids seen before are still known"
    );
    assert_eq!(
        journal.append(event("d", 2 * HOUR_MS)).await,
        Ok(Outcome::Accepted(4))
    );
    journal.close().await;
}

#[tokio::test]
async fn an_index_kept_in_sled_by_an_earlier_version_is_copied_over_once() {
    let dir = tempfile::tempdir().unwrap();
    three_events_one_delivered(dir.path()).await;
    index_back_to_sled(dir.path());
    // A copy an earlier opening began and did not finish is started again.
    let unfinished = dir.path().join("journal/fjall.copying");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("version"), b"half").unwrap();

    three_events_still_known(dir.path()).await;
    let journal_dir = dir.path().join("journal");
    assert!(
        !store::earlier_dir(&journal_dir, store::Earlier::Sled).exists(),
        "sled's copy is gone"
    );
    assert!(!unfinished.exists());
    let journal = Journal::open(settings(dir.path())).unwrap();
    assert_eq!(journal.get(4).unwrap().unwrap().summary.id, "d");
    journal.close().await;
}

#[tokio::test]
async fn an_index_whose_trees_wrote_each_insert_through_is_copied_into_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    three_events_one_delivered(dir.path()).await;
    let journal_dir = dir.path().join("journal");
    store::back_to_write_through(&journal_dir);
    // Beside it, a sled index that build had copied from and not yet deleted: older, so
    // deleted unread (were it copied instead, event 2 would be queued again).
    let stale_sled = store::earlier_dir(&journal_dir, store::Earlier::Sled);
    drop(sled::open(&stale_sled).unwrap());

    three_events_still_known(dir.path()).await;
    assert!(!store::earlier_dir(&journal_dir, store::Earlier::WriteThrough).exists());
    assert!(!stale_sled.exists());
    let db = store::Db::open(&journal_dir, DEFAULT_INDEX_CACHE).unwrap();
    let writes = store::tests::writes_for_a_thousand_inserts(&db.open_tree("callbacks").unwrap());
    assert!(
        writes < 100,
        "the copied trees still write each insert through ({writes} writes for 1000)"
    );
}

/// A GitHub re-post's replay key in this build's form (`mac:`), for a body whose events
/// a journal written before it keyed by the body's hash.
fn mac_signed(id: &str, body: &'static [u8], at_ms: u64) -> NewEvent {
    NewEvent {
        body: Bytes::from_static(body),
        ..signed(id, &format!("mac:{}", String::from_utf8_lossy(body)), at_ms)
    }
}

/// An event as a build before `mac:` keys journaled it: the body's hash as its replay key.
fn body_keyed(id: &str, body: &'static [u8], at_ms: u64) -> NewEvent {
    let key = crate::verify::replay::earlier_form("mac:", body).unwrap();
    NewEvent {
        body: Bytes::from_static(body),
        ..signed(id, &key, at_ms)
    }
}

#[tokio::test]
async fn a_journal_of_body_keys_finds_re_posts_under_them_after_the_upgrade() {
    const BODY: &[u8] = b"{\"n\":1}";
    let opened = |dir: &Path| Journal::open(settings(dir)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = opened(dir.path());
    let old = body_keyed("a", BODY, HOUR_MS);
    assert_eq!(journal.append(old).await, Ok(Outcome::Accepted(1)));
    // As if a build before `mac:` keys had written it.
    super::core::forget_mac_replay_keys_since(&journal.core().unwrap().trees().meta);
    journal.close().await;
    drop(journal);

    // The first opening by this build, and the one after it (which keeps to the time
    // the first recorded): a re-post of the same body, keyed from its MAC, is found
    // under the body's key; another body is new the first time.
    let other = [Outcome::Accepted(2), Outcome::Duplicate(2)];
    for (opening, other) in other.into_iter().enumerate() {
        let at_ms = HOUR_MS + 1 + opening as u64;
        let journal = opened(dir.path());
        let re_post = mac_signed(&format!("forged-{opening}"), BODY, at_ms);
        assert_eq!(journal.append(re_post).await, Ok(Outcome::Duplicate(1)));
        let another = mac_signed(&format!("other-{opening}"), b"{\"n\":2}", at_ms);
        assert_eq!(journal.append(another).await, Ok(other));
        journal.close().await;
    }

    // A journal this build began holds no body keys: none is looked for (the one
    // written here by hand is not found).
    let dir = tempfile::tempdir().unwrap();
    let journal = opened(dir.path());
    let old = body_keyed("a", BODY, HOUR_MS);
    assert_eq!(journal.append(old).await, Ok(Outcome::Accepted(1)));
    let re_post = mac_signed("forged", BODY, HOUR_MS + 1);
    assert_eq!(journal.append(re_post).await, Ok(Outcome::Accepted(2)));
    journal.close().await;
}

#[test]
fn body_keys_are_looked_for_one_dedup_window_from_the_first_opening_that_made_mac_keys() {
    let (_dir, db) = store::Db::scratch();
    let meta = db.open_tree("meta").unwrap();
    let window = Duration::from_secs(3600);
    // A journal with events, opened for the first time by a build with `mac:` keys.
    let before = crate::unix_ms(std::time::SystemTime::now());
    let until = super::core::earlier_replay_keys_until(&meta, 5, window).unwrap();
    let after = crate::unix_ms(std::time::SystemTime::now());
    assert!(
        (before + 3_600_000..=after + 3_600_000).contains(&until),
        "{until} is not an hour after this opening"
    );
    // Later openings keep to the time the first recorded.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        super::core::earlier_replay_keys_until(&meta, 9, window).unwrap(),
        until
    );
    // A journal this build began: no body keys to look for, then or later.
    let (_dir, db) = store::Db::scratch();
    let meta = db.open_tree("meta").unwrap();
    assert_eq!(
        super::core::earlier_replay_keys_until(&meta, 0, window).unwrap(),
        0
    );
    assert_eq!(
        super::core::earlier_replay_keys_until(&meta, 7, window).unwrap(),
        0
    );
}
