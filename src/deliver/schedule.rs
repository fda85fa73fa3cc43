//! When a failed delivery is tried again (SPEC §9): `[outbound] retry` lists the waits
//! after the first attempt, after the second, and so on; past the end of the list the
//! delivery has failed for good.
//!
//! Each wait is spread by ±10% so that the deliveries of a burst of events, failing
//! together against one endpoint that went down, do not all come back at the same
//! instant when it recovers. The caller passes the random number, so tests (and the
//! journal, which must replay a decision) see a plain function.
//!
//! An endpoint that answers `429` or `503` with `Retry-After` is not tried sooner than it
//! asked, but no later than [`MAX_RETRY_AFTER`] from now on its say-so alone: a broken or
//! hostile endpoint must not park a delivery for a year.

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` an endpoint is obeyed for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How far each wait is spread, either way, as a share of it.
const JITTER: f64 = 0.1;

/// The waits between attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    delays: Vec<Duration>,
}

impl Schedule {
    /// A schedule from `[outbound] retry`: `delays[0]` is the wait after the first
    /// attempt. An empty list means one attempt and no retries.
    pub fn new(delays: Vec<Duration>) -> Schedule {
        Schedule { delays }
    }

    /// How many attempts a delivery gets in all: the first and one per listed wait.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The wait before the next attempt, after `attempts_made` attempts have failed;
    /// `None` when none is left. No attempt made yet (`0`) means go now.
    ///
    /// `jitter` is a random number in `[0, 1)`: `0` gives 90% of the listed wait, `0.5`
    /// the wait itself, and towards `1` 110%; anything outside is clamped. `retry_after`
    /// (from the endpoint's answer, capped at [`MAX_RETRY_AFTER`]) is a floor on the
    /// result.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        let Some(index) = attempts_made.checked_sub(1) else {
            return Some(Duration::ZERO);
        };
        let listed = *self.delays.get(usize::try_from(index).ok()?)?;
        // NaN is not a random number in [0, 1): take it as the middle, no spread.
        let jitter = if jitter.is_nan() {
            0.5
        } else {
            jitter.clamp(0.0, 1.0)
        };
        // In whole milliseconds, the config's finest unit; `as` saturates, never panics.
        let factor = 1.0 - JITTER + 2.0 * JITTER * jitter;
        let spread = Duration::from_millis((listed.as_millis() as f64 * factor).round() as u64);
        let floor = retry_after.map_or(Duration::ZERO, |r| r.min(MAX_RETRY_AFTER));
        Some(spread.max(floor))
    }
}

/// Reads a `Retry-After` value (RFC 9110 §10.2.3): whole seconds, or an HTTP date, which
/// is taken as the time left until it (zero if it has passed). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time"; the cap applies later.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn default_schedule() -> Schedule {
        Schedule::new(
            [5, 300, 1800, 7200, 18000, 36000, 36000]
                .into_iter()
                .map(secs)
                .collect(),
        )
    }

    #[test]
    fn waits_follow_the_list_then_stop() {
        let s = default_schedule();
        assert_eq!(s.max_attempts(), 8);
        assert_eq!(s.next_delay(0, None, 0.5), Some(Duration::ZERO));
        assert_eq!(s.next_delay(1, None, 0.5), Some(secs(5)));
        assert_eq!(s.next_delay(2, None, 0.5), Some(secs(300)));
        assert_eq!(s.next_delay(7, None, 0.5), Some(secs(36000)));
        assert_eq!(s.next_delay(8, None, 0.5), None);
        assert_eq!(s.next_delay(u32::MAX, None, 0.5), None);
        assert_eq!(s.next_delay(8, Some(secs(1)), 0.5), None);
    }

    #[test]
    fn no_retries_means_one_attempt() {
        let s = Schedule::new(Vec::new());
        assert_eq!(s.max_attempts(), 1);
        assert_eq!(s.next_delay(0, None, 0.0), Some(Duration::ZERO));
        assert_eq!(s.next_delay(1, None, 0.0), None);
    }

    #[test]
    fn jitter_spreads_ten_percent_either_way() {
        let s = default_schedule();
        assert_eq!(s.next_delay(2, None, 0.0), Some(secs(270)));
        assert_eq!(s.next_delay(2, None, 0.25), Some(secs(285)));
        let high = s.next_delay(2, None, 0.999_999).unwrap();
        assert!(high > secs(329) && high <= secs(330), "{high:?}");
        // Out of range or NaN never makes the spread wider.
        assert_eq!(s.next_delay(2, None, -3.0), Some(secs(270)));
        assert_eq!(s.next_delay(2, None, 7.0), Some(secs(330)));
        assert_eq!(s.next_delay(2, None, f64::NAN), Some(secs(300)));
        assert_eq!(s.next_delay(2, None, f64::INFINITY), Some(secs(330)));
    }

    #[test]
    fn retry_after_is_a_floor_with_a_cap() {
        let s = default_schedule();
        assert_eq!(s.next_delay(1, Some(secs(60)), 0.5), Some(secs(60)));
        assert_eq!(s.next_delay(2, Some(secs(60)), 0.5), Some(secs(300)));
        assert_eq!(
            s.next_delay(1, Some(secs(365 * 86400)), 0.5),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            s.next_delay(1, Some(Duration::MAX), 0.0),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(secs(0)));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "120s",
            "Wed, 32 Oct 2015 07:30:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }
}
