//! Telling a poison event from an outage. A message the broker cannot take (a frame it
//! finds malformed, a header frame over its `frame_max`) makes it close the connection,
//! which looks exactly like an outage; published again after each reconnect, such an
//! event would stop its source (and fill the backlog) for good.
//!
//! So the forwarder keeps a suspect: the oldest unconfirmed publish when the link broke.
//! While there is one, publishes go out one at a time, so that the next break is
//! attributed to the event that was really on the wire. An event that was the oldest
//! unconfirmed publish when the link broke [`POISON_BREAKS`] times in a row, each time
//! after a successful connect and its publish, is a poison event: it is marked `failed`
//! and forwarding goes on without it. A broker that is down is not evidence: a failed
//! connect (to every node of `broker.url`: a cluster's node that is down says nothing of
//! breaks on the others), a confirm timeout, or a break with nothing unconfirmed resets
//! the count, and any answer from the broker for the suspect (or a later event) clears
//! it.
//!
//! A broker that refuses every publish (say, a user without write permission on the
//! exchange) breaks the link for every event alike. So that it does not fail the whole
//! queue one event after another, each verdict not followed by any answer from the
//! broker doubles the breaks the next one needs (up to 16 times as many): two poison
//! events in a row still both fail, a refusal of everything fails few events, all of
//! them `failed` and replayable in bulk.

use std::time::SystemTime;

use super::amqp::LinkError;
use super::Forwarder;

/// How many breaks in a row make the oldest unconfirmed publish a poison event.
pub const POISON_BREAKS: u32 = 3;
/// The most times [`POISON_BREAKS`] is doubled while verdicts go unanswered.
const MAX_DOUBLINGS: u32 = 4;

#[derive(Debug, Default)]
pub struct Suspicion {
    /// The suspect's seq and the breaks in a row it has been the oldest unconfirmed at.
    suspect: Option<(u64, u32)>,
    /// Poison verdicts since the broker last answered for any publish.
    unanswered: u32,
}

impl Suspicion {
    /// The link broke after a successful connect. `oldest` is the oldest publish that
    /// was unconfirmed then, if any; `counts` is false when the break was a timeout
    /// (a slow or blocked broker, not a refused frame). Returns the seq of an event
    /// found to be poison.
    pub fn link_broke(&mut self, oldest: Option<u64>, counts: bool) -> Option<u64> {
        let seq = match (oldest, counts) {
            (Some(seq), true) => seq,
            _ => {
                self.reset();
                return None;
            }
        };
        let breaks = match self.suspect {
            Some((suspect, breaks)) if suspect == seq => breaks + 1,
            _ => 1,
        };
        if breaks >= self.needed() {
            self.suspect = None;
            self.unanswered += 1;
            Some(seq)
        } else {
            self.suspect = Some((seq, breaks));
            None
        }
    }

    /// Connecting failed, to every node of `broker.url`: the broker is down or
    /// unreachable, which explains the breaks so far. The suspect stays (publishes stay
    /// one at a time) but starts again at 0.
    pub fn connect_failed(&mut self) {
        self.reset();
    }

    /// The broker answered for `seq` (confirmed, nacked or returned it): a suspect at or
    /// before it is cleared. Publishes go one at a time in journal order while there is
    /// a suspect, so an answer for a later event means the suspect is no longer queued.
    pub fn answered(&mut self, seq: u64) {
        self.unanswered = 0;
        self.passed(seq);
    }

    /// `seq` was marked failed without being sent: a suspect at or before it is cleared.
    pub fn passed(&mut self, seq: u64) {
        if self.suspect.is_some_and(|(suspect, _)| suspect <= seq) {
            self.suspect = None;
        }
    }

    /// The breaks in a row that make the suspect a poison event now.
    pub fn needed(&self) -> u32 {
        POISON_BREAKS << self.unanswered.min(MAX_DOUBLINGS)
    }

    /// Whether publishes go out one at a time.
    pub fn cautious(&self) -> bool {
        self.suspect.is_some()
    }

    /// The suspect and its breaks in a row so far.
    pub fn suspect(&self) -> Option<(u64, u32)> {
        self.suspect
    }

    fn reset(&mut self) {
        if let Some((_, breaks)) = &mut self.suspect {
            *breaks = 0;
        }
    }
}

impl Forwarder {
    /// Counts a broken link against the oldest unconfirmed publish, and marks it failed
    /// once it is found to be a poison event.
    pub(super) async fn suspect(
        &self,
        suspicion: &mut Suspicion,
        error: &LinkError,
        oldest: Option<(u64, String, u32)>,
    ) {
        // A timeout is a slow or blocked broker, not a frame it refused.
        let counts = !matches!(error, LinkError::Timeout { .. });
        let Some((seq, source, replays)) = oldest else {
            suspicion.link_broke(None, counts);
            return;
        };
        let needed = suspicion.needed();
        if suspicion.link_broke(Some(seq), counts).is_some() {
            let reason = format!(
                "poison: the broker link broke right after this event was published, \
                 {needed} times in a row (last: {error}); not sent again until replayed"
            );
            self.fail(seq, &source, replays, reason).await;
        } else if let Some((_, breaks)) = suspicion.suspect() {
            tracing::debug!(seq, breaks, "the oldest unconfirmed publish is suspected");
        }
    }

    /// Marks an event that cannot be delivered as it is `failed`, so that the events
    /// behind it go on; a replay sends it again.
    pub(super) async fn fail(&self, seq: u64, source: &str, replays: u32, reason: String) {
        self.metrics.forward_error("poison");
        tracing::error!(seq, source = %source, reason = %reason, "event cannot be delivered; marked failed, forwarding goes on");
        let now_ms = crate::unix_ms(SystemTime::now());
        if let Err(e) = self.journal.mark_failed(seq, replays, now_ms, reason).await {
            tracing::error!(seq, error = %e, "cannot mark a poison event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_breaks_in_a_row_on_the_same_event_make_it_poison() {
        let mut s = Suspicion::default();
        assert_eq!(s.link_broke(Some(7), true), None);
        assert!(s.cautious(), "after a break, publishes go one at a time");
        assert_eq!(s.link_broke(Some(7), true), None);
        assert_eq!(s.suspect(), Some((7, 2)));
        assert_eq!(s.link_broke(Some(7), true), Some(7));
        assert!(!s.cautious(), "the poison event is dealt with");
        assert_eq!(s.link_broke(Some(8), true), None, "the next starts at one");
    }

    #[test]
    fn a_different_oldest_event_starts_the_count_again() {
        let mut s = Suspicion::default();
        s.link_broke(Some(7), true);
        s.link_broke(Some(7), true);
        assert_eq!(s.link_broke(Some(9), true), None);
        assert_eq!(s.suspect(), Some((9, 1)));
        assert_eq!(s.link_broke(Some(9), true), None);
        assert_eq!(s.link_broke(Some(9), true), Some(9));
    }

    #[test]
    fn an_outage_is_not_evidence() {
        let mut s = Suspicion::default();
        s.link_broke(Some(7), true);
        s.link_broke(Some(7), true);
        // The broker went down: connects fail for a while.
        s.connect_failed();
        s.connect_failed();
        assert_eq!(
            s.suspect(),
            Some((7, 0)),
            "still careful, but counted from 0"
        );
        assert_eq!(s.link_broke(Some(7), true), None);
        assert_eq!(s.link_broke(Some(7), true), None);
        assert_eq!(s.link_broke(Some(7), true), Some(7));
    }

    #[test]
    fn timeouts_and_idle_breaks_reset_the_count() {
        let mut s = Suspicion::default();
        s.link_broke(Some(7), true);
        s.link_broke(Some(7), true);
        assert_eq!(s.link_broke(Some(7), false), None, "a confirm timeout");
        assert_eq!(s.suspect(), Some((7, 0)));
        s.link_broke(Some(7), true);
        s.link_broke(Some(7), true);
        assert_eq!(s.link_broke(None, true), None, "nothing was unconfirmed");
        assert_eq!(s.link_broke(Some(7), true), None);
        assert_eq!(s.suspect(), Some((7, 1)));
    }

    #[test]
    fn an_answer_for_the_suspect_or_a_later_event_clears_it() {
        let mut s = Suspicion::default();
        s.link_broke(Some(7), true);
        s.answered(6);
        assert!(s.cautious(), "an earlier event's answer says nothing of 7");
        s.answered(7);
        assert!(!s.cautious());
        s.link_broke(Some(7), true);
        s.link_broke(Some(7), true);
        s.passed(12);
        assert_eq!(s.suspect(), None);
        assert_eq!(s.link_broke(Some(7), true), None, "counted from 1 again");
    }

    fn breaks_until_poison(s: &mut Suspicion, seq: u64) -> u32 {
        let mut breaks = 1;
        while s.link_broke(Some(seq), true).is_none() {
            breaks += 1;
            assert!(breaks <= 100, "never");
        }
        breaks
    }

    #[test]
    fn a_broker_refusing_everything_fails_fewer_and_fewer_events() {
        let mut s = Suspicion::default();
        // Every event breaks the link and the broker never answers.
        let needed: Vec<u32> = (1..=7)
            .map(|seq| breaks_until_poison(&mut s, seq))
            .collect();
        assert_eq!(needed, [3, 6, 12, 24, 48, 48, 48]);
        // Two poison events in a row around a good one: each needs only three.
        s.answered(8);
        assert_eq!(breaks_until_poison(&mut s, 9), 3);
        s.answered(10);
        assert_eq!(breaks_until_poison(&mut s, 11), 3);
        // Adjacent ones: the second needs six, and still fails.
        assert_eq!(breaks_until_poison(&mut s, 12), 6);
    }
}
