//! Refusals logged with a rate limit, per source and reason: in each interval the first
//! [`FULL_PER_INTERVAL`] are logged in full, the rest only counted, and at the end of the
//! interval one line says how many were left out. Sources are the configured names (or
//! one name for unknown paths) and reasons are fixed codes, so the table stays small.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Refusals logged in full per source, reason and interval.
pub const FULL_PER_INTERVAL: u32 = 5;
/// How often the counts of refusals left out are logged.
pub const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct RefusalLog {
    counts: Mutex<HashMap<(String, &'static str), Count>>,
}

#[derive(Default)]
struct Count {
    logged: u32,
    left_out: u64,
    /// Whether the summary is a warning (the refusal was ours: the journal failed).
    warn: bool,
}

impl RefusalLog {
    /// Counts one refusal; answers whether to log it in full.
    pub fn admit(&self, source: &str, reason: &'static str, warn: bool) -> bool {
        let mut counts = self.counts.lock().expect("refusal log lock");
        let count = match counts.get_mut(&(source.to_string(), reason)) {
            Some(count) => count,
            None => counts.entry((source.to_string(), reason)).or_default(),
        };
        count.warn |= warn;
        if count.logged < FULL_PER_INTERVAL {
            count.logged += 1;
            true
        } else {
            count.left_out += 1;
            false
        }
    }

    /// Ends an interval: one line per source and reason with refusals left out, and
    /// everyone may be logged in full again. Answers how many lines it wrote.
    pub fn flush(&self) -> usize {
        let drained: Vec<_> = {
            let mut counts = self.counts.lock().expect("refusal log lock");
            counts
                .drain()
                .filter(|(_, count)| count.left_out > 0)
                .collect()
        };
        for ((source, reason), count) in &drained {
            let left_out = count.left_out;
            let seconds = INTERVAL.as_secs();
            if count.warn {
                tracing::warn!(%source, reason, left_out, seconds, "more requests refused; not logged one by one");
            } else {
                tracing::info!(%source, reason, left_out, seconds, "more requests refused; not logged one by one");
            }
        }
        drained.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_few_in_full_then_one_count_per_interval() {
        let log = RefusalLog::default();
        let full = (0..1000)
            .filter(|_| log.admit("github", "invalid_signature", false))
            .count();
        assert_eq!(full, FULL_PER_INTERVAL as usize);
        // Each source and reason has its own allowance.
        assert!(log.admit("github", "missing_signature", false));
        assert!(log.admit("stripe", "invalid_signature", false));
        assert_eq!(
            log.flush(),
            1,
            "only github/invalid_signature left some out"
        );
        assert!(log.admit("github", "invalid_signature", false));
        assert_eq!(log.flush(), 0);
    }
}
