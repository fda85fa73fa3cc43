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
//! connect, a confirm timeout, or a break with nothing unconfirmed resets the count, and
//! any answer from the broker for the suspect (or a later event) clears it.

/// How many breaks in a row make the oldest unconfirmed publish a poison event.
pub const POISON_BREAKS: u32 = 3;

#[derive(Debug, Default)]
pub struct Suspicion {
    /// The suspect's seq and the breaks in a row it has been the oldest unconfirmed at.
    suspect: Option<(u64, u32)>,
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
        if breaks >= POISON_BREAKS {
            self.suspect = None;
            Some(seq)
        } else {
            self.suspect = Some((seq, breaks));
            None
        }
    }

    /// Connecting failed: the broker is down or unreachable, which explains the breaks
    /// so far. The suspect stays (publishes stay one at a time) but starts again at 0.
    pub fn connect_failed(&mut self) {
        self.reset();
    }

    /// The broker answered for `seq` (confirmed, nacked or returned it), or it was
    /// marked failed: a suspect at or before it is cleared. Publishes go one at a time
    /// in journal order while there is a suspect, so an answer for a later event means
    /// the suspect is no longer in the queue.
    pub fn settled(&mut self, seq: u64) {
        if self.suspect.is_some_and(|(suspect, _)| suspect <= seq) {
            self.suspect = None;
        }
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
        s.settled(6);
        assert!(s.cautious(), "an earlier event's answer says nothing of 7");
        s.settled(7);
        assert!(!s.cautious());
        s.link_broke(Some(7), true);
        s.link_broke(Some(7), true);
        s.settled(12);
        assert_eq!(s.suspect(), None);
        assert_eq!(s.link_broke(Some(7), true), None, "counted from 1 again");
    }
}
