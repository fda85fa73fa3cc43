//! (placeholder until the subconfig branch lands)
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Schedule {
    pub delays: Vec<Duration>,
}

impl Schedule {
    pub fn next_delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        let base = *self.delays.get(attempts_made.checked_sub(1)? as usize)?;
        let d = base.mul_f64(0.9 + 0.2 * jitter);
        Some(retry_after.map_or(d, |r| d.max(r)))
    }
}
