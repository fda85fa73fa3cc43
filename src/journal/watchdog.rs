//! The watchdog: keeps the appends' deadlines while the committer is held up (a disk that
//! stops answering, an index that does not catch up), without a timer for each request.
//!
//! An append that waits past its deadline is answered `TimedOut`, which the gateway
//! turns into 503. A timer for each request was the largest single cost left on the
//! request path (about 1,500 instructions of 53,000: registering it and taking it away
//! again, BENCHMARKS.md). Here the replies the committer holds sit where this thread
//! can reach them too: those of the group it is working on in [`Watch::waiting`], those
//! still queued behind the [`Watch::inbox`] lock, which the committer holds only while
//! it takes a group. Each tick the watchdog reads one counter; only when the committer
//! has worked on the same group for a whole tick does it look at the deadlines. So a
//! request is answered within a tick or two of its deadline, and a request the committer
//! keeps up with costs nothing here. While the committer waits for commands the watchdog
//! sleeps until it starts on the next group (it does not tick while nothing comes in),
//! which costs the committer one atomic read a group.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::index::Stop;
use super::{Command, JournalError, Outcome};

/// How often the watchdog looks: with it, how late past its deadline an answer may be.
pub(super) const TICK: Duration = Duration::from_millis(50);

/// An append's way back to its caller, and until when the caller waits.
pub(super) struct Reply {
    sender: oneshot::Sender<Result<Outcome, JournalError>>,
    deadline: Option<Instant>,
}

impl Reply {
    pub(super) fn new(
        sender: oneshot::Sender<Result<Outcome, JournalError>>,
        deadline: Option<Instant>,
    ) -> Reply {
        Reply { sender, deadline }
    }

    fn overdue(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| deadline <= now)
    }

    fn time_out(self) {
        let _ = self.sender.send(Err(JournalError::TimedOut));
    }
}

/// The committer's queue, and the commands the watchdog took out of it and left for the
/// committer: those come first.
pub(super) struct Inbox {
    receiver: mpsc::Receiver<Command>,
    deferred: VecDeque<Command>,
}

impl Inbox {
    /// The next command, waiting for one; `None` once every sender is gone.
    pub(super) fn next(&mut self) -> Option<Command> {
        self.deferred
            .pop_front()
            .or_else(|| self.receiver.blocking_recv())
    }

    /// How many commands are waiting.
    pub(super) fn waiting(&self) -> usize {
        self.deferred.len() + self.receiver.len()
    }

    /// The next command if one is waiting.
    pub(super) fn try_next(&mut self) -> Option<Command> {
        self.deferred
            .pop_front()
            .or_else(|| self.receiver.try_recv().ok())
    }
}

/// What the committer and the watchdog share.
pub(super) struct Watch {
    inbox: Mutex<Inbox>,
    /// The replies of the group's appends, in their order; `None` once answered.
    waiting: Mutex<Vec<Option<Reply>>>,
    /// Odd while the committer works on a group; one more at each start and each end.
    phase: AtomicU64,
    /// The committer is gone: the watchdog sleeps on this between ticks and while
    /// parked.
    stop: Stop,
    /// Set while the watchdog is parked until the committer starts a group.
    parked: AtomicBool,
}

impl Watch {
    pub(super) fn new(receiver: mpsc::Receiver<Command>) -> Arc<Watch> {
        Arc::new(Watch {
            inbox: Mutex::new(Inbox {
                receiver,
                deferred: VecDeque::new(),
            }),
            waiting: Mutex::new(Vec::new()),
            phase: AtomicU64::new(0),
            stop: Stop::default(),
            parked: AtomicBool::new(false),
        })
    }

    /// The queue, for the committer to take a group from. Held only while it takes one.
    pub(super) fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().expect("inbox lock")
    }

    /// The committer starts on `group`: the replies of its appends move where the
    /// watchdog can answer them.
    pub(super) fn start(&self, group: &mut [Command]) {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        for command in group {
            if let Command::Append { reply, .. } = command {
                waiting.push(reply.take());
            }
        }
        drop(waiting);
        // Sequentially consistent, as the watchdog's `park`: either the watchdog sees the
        // new phase before it waits, or this sees it parked and wakes it.
        self.phase.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            self.stop.wake();
        }
    }

    /// The group is synced: each append not answered yet gets its result, in the
    /// group's order.
    pub(super) fn answer(&self, results: impl Iterator<Item = Result<Outcome, JournalError>>) {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        for (reply, result) in waiting.drain(..).zip(results) {
            if let Some(reply) = reply {
                let _ = reply.sender.send(result);
            }
        }
    }

    /// The committer is done with its group.
    pub(super) fn end(&self) {
        self.phase.fetch_add(1, Ordering::Release);
    }

    /// Sleeps until the committer starts on a group after `phase` (an idle one: no
    /// deadline can pass unseen, since whatever is queued wakes the committer);
    /// `false` once the committer is gone.
    fn park(&self, phase: u64) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        let stopped = self
            .stop
            .wait_until(|| self.phase.load(Ordering::SeqCst) != phase);
        self.parked.store(false, Ordering::SeqCst);
        !stopped
    }

    /// Answers every append whose deadline has passed, in the group being worked on
    /// and in the queue; the queue's other commands wait for the committer as they were.
    fn expire(&self, now: Instant) {
        for slot in self.waiting.lock().expect("waiting lock").iter_mut() {
            if let Some(reply) = slot.take_if(|reply| reply.overdue(now)) {
                reply.time_out();
            }
        }
        // The committer holds the queue only while it takes a group: then it is not held
        // up, and what is queued is about to be its.
        let Ok(mut inbox) = self.inbox.try_lock() else {
            return;
        };
        while let Ok(command) = inbox.receiver.try_recv() {
            inbox.deferred.push_back(command);
        }
        inbox.deferred.retain_mut(|command| match command {
            Command::Append { reply, .. } => match reply.take_if(|reply| reply.overdue(now)) {
                Some(overdue) => {
                    overdue.time_out();
                    false
                }
                None => true,
            },
            _ => true,
        });
    }
}

/// The watchdog's thread: told to stop and waited for when dropped, at the committer's
/// end or as it unwinds.
pub(super) struct Watchdog {
    watch: Arc<Watch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the watchdog over `watch`. A thread that does not start is logged: then a stuck
/// disk holds requests until it answers.
pub(super) fn spawn(watch: &Arc<Watch>) -> Watchdog {
    let thread = {
        let watch = watch.clone();
        std::thread::Builder::new()
            .name("journal-watchdog".into())
            .spawn(move || run(watch))
            .map_err(|e| tracing::error!(error = %e, "the journal's watchdog did not start; a stuck disk holds requests until it answers"))
            .ok()
    };
    Watchdog {
        watch: watch.clone(),
        thread,
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.watch.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs until the committer is gone (`Watch::stop`): each tick, looks whether the
/// committer has worked on one group since the tick before, and if so answers what is
/// overdue; once it has waited for commands for a whole tick, sleeps until it starts on
/// the next group.
fn run(watch: Arc<Watch>) {
    let mut seen = 0;
    while !watch.stop.wait(TICK) {
        let phase = watch.phase.load(Ordering::SeqCst);
        if held_up(phase, seen) {
            watch.expire(Instant::now());
        } else if phase == seen && !watch.park(phase) {
            break;
        }
        seen = phase;
    }
}

/// Whether the committer, at `phase` now and at `seen` a tick ago, has been working on
/// one group all that time (at the same even phase, it has been waiting for commands).
fn held_up(phase: u64, seen: u64) -> bool {
    phase % 2 == 1 && phase == seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::NewEvent;

    fn append(
        deadline: Option<Instant>,
    ) -> (Command, oneshot::Receiver<Result<Outcome, JournalError>>) {
        let (sender, receiver) = oneshot::channel();
        let event = NewEvent {
            source: "github".into(),
            id: "e".into(),
            event_type: None,
            received_at_ms: 0,
            event_ts: None,
            order: None,
            content_type: "application/json".into(),
            headers: Default::default(),
            client_identity: None,
            body: bytes::Bytes::from_static(b"{}"),
            normalised: None,
            replay_key: None,
        };
        let command = Command::Append {
            event: Box::new(event),
            earlier_key: None,
            reply: Some(Reply::new(sender, deadline)),
        };
        (command, receiver)
    }

    /// Drops `watchdog`, which stops its thread and waits for it: within 5 s.
    fn ends(watchdog: Watchdog) {
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(watchdog);
            let _ = done.send(());
        });
        let ended = ended.recv_timeout(Duration::from_secs(5));
        assert!(ended.is_ok(), "the watchdog did not end");
    }

    fn timed_out(receiver: &mut oneshot::Receiver<Result<Outcome, JournalError>>) -> bool {
        matches!(receiver.try_recv(), Ok(Err(JournalError::TimedOut)))
    }

    #[test]
    fn overdue_appends_are_answered_in_the_group_and_in_the_queue_and_nothing_else() {
        let (tx, rx) = mpsc::channel(16);
        let watch = Watch::new(rx);
        let now = Instant::now();
        let past = Some(now - Duration::from_millis(1));
        let later = Some(now + Duration::from_secs(60));
        // The group being worked on: one overdue, one not, one without a deadline.
        let (a, mut a_rx) = append(past);
        let (b, mut b_rx) = append(later);
        let (c, mut c_rx) = append(None);
        let mut group = vec![a, b, c];
        watch.start(&mut group);
        // Queued behind it: one overdue, one not, and a close, which waits.
        let (d, mut d_rx) = append(past);
        let (e, mut e_rx) = append(later);
        let (close, mut close_rx) = oneshot::channel();
        for command in [d, e, Command::Close { reply: close }] {
            tx.try_send(command).map_err(|_| "queued").unwrap();
        }
        watch.expire(now);
        assert!(timed_out(&mut a_rx) && timed_out(&mut d_rx));
        for receiver in [&mut b_rx, &mut c_rx, &mut e_rx] {
            assert!(receiver.try_recv().is_err(), "answered before its deadline");
        }
        assert!(close_rx.try_recv().is_err());
        // The committer's answers reach those still waiting, in order.
        watch.answer((0..3).map(|_| Err(JournalError::Closed)));
        watch.end();
        assert!(matches!(b_rx.try_recv(), Ok(Err(JournalError::Closed))));
        assert!(matches!(c_rx.try_recv(), Ok(Err(JournalError::Closed))));
        // What the watchdog left comes to the committer first, in order, then the queue.
        let (f, _f_rx) = append(None);
        tx.try_send(f).map_err(|_| "queued").unwrap();
        let mut inbox = watch.inbox();
        assert!(
            matches!(inbox.try_next(), Some(Command::Append { reply: Some(reply), .. }) if reply.deadline == later)
        );
        assert!(matches!(inbox.try_next(), Some(Command::Close { .. })));
        assert!(matches!(
            inbox.try_next(),
            Some(Command::Append { reply: Some(reply), .. }) if reply.deadline.is_none()
        ));
        assert!(inbox.try_next().is_none());
    }

    #[test]
    fn only_a_group_worked_on_for_a_whole_tick_is_looked_at() {
        // Idle at both looks; idle then working; one group ended and the next begun
        // between the looks (1 then 3); the same group at both.
        assert!(!held_up(2, 2));
        assert!(!held_up(1, 0));
        assert!(!held_up(3, 1));
        assert!(held_up(3, 3));
    }

    #[test]
    fn the_running_watchdog_answers_an_append_held_up_past_its_deadline() {
        let (_tx, rx) = mpsc::channel(16);
        let watch = Watch::new(rx);
        let watchdog = spawn(&watch);
        let (a, mut a_rx) = append(Some(Instant::now() + TICK));
        watch.start(&mut [a]);
        let began = Instant::now();
        eventually("answered", || timed_out(&mut a_rx));
        assert!(began.elapsed() >= TICK, "answered before its deadline");
        watch.answer(std::iter::once(Err(JournalError::Closed)));
        watch.end();
        ends(watchdog);
    }

    #[test]
    fn an_idle_watchdog_sleeps_and_wakes_for_the_next_group() {
        let (_tx, rx) = mpsc::channel(16);
        let watch = Watch::new(rx);
        let watchdog = spawn(&watch);
        // The committer waits for commands: within a few ticks the watchdog parks.
        eventually("parked", || watch.parked.load(Ordering::SeqCst));
        // A group started then is held up past its append's deadline: answered.
        let (a, mut a_rx) = append(Some(Instant::now() + TICK));
        watch.start(&mut [a]);
        eventually("answered", || timed_out(&mut a_rx));
        watch.answer(std::iter::once(Err(JournalError::Closed)));
        watch.end();
        // Parked again, it still ends when the committer does.
        eventually("parked again", || watch.parked.load(Ordering::SeqCst));
        ends(watchdog);
    }

    /// Waits until `done` says so, 5 s at most.
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let began = Instant::now();
        while !done() {
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "not {what} within 5 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
