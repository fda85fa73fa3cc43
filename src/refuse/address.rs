//! The per-address bucket for requests that fail verification (`server.failures_per_address`).
//!
//! Only failures spend it, and only failures are refused by it: a request from an
//! address over its budget is still verified, and a correct signature is accepted. So a
//! flood of unsigned requests from an address that also carries real deliveries (a
//! reverse proxy, a provider's shared senders) locks no provider out; its failures are
//! answered `429 rate_limited` instead of `401`, counted apart, and logged as one kind.
//!
//! A token bucket per address (IPv6 by its /64, which one client usually holds whole),
//! in a map of at most [`MAX_TRACKED`] addresses: when it is full, addresses whose bucket
//! has refilled are forgotten, and if none has, new addresses share one bucket. governor's
//! keyed limiter has no way to look without spending, which the check needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most addresses remembered at once (about 40 bytes each).
pub const MAX_TRACKED: usize = 65_536;

pub struct ByAddress {
    /// Tokens a full bucket holds.
    burst: f64,
    /// Time for one token to come back.
    per_token: Duration,
    max_tracked: usize,
    state: Mutex<State>,
}

struct State {
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by the addresses that found the map full.
    overflow: Bucket,
    /// When the map was last swept for refilled buckets: at most once a second, so that
    /// a stream of new addresses cannot make every request scan the whole map.
    swept_at: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl ByAddress {
    pub fn new(quota: governor::Quota, max_tracked: usize, now: Instant) -> ByAddress {
        let burst = f64::from(quota.burst_size().get());
        ByAddress {
            burst,
            per_token: quota.replenish_interval(),
            max_tracked,
            state: Mutex::new(State {
                buckets: HashMap::new(),
                overflow: Bucket {
                    tokens: burst,
                    at: now,
                },
                swept_at: None,
            }),
        }
    }

    /// Records a failed request from `ip`. `Err` carries how long the address should
    /// wait when its budget was already spent: this failure is to be refused as such.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = key(ip);
        let mut state = self.state.lock().expect("address limiter lock");
        let sweep = state
            .swept_at
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if sweep && state.buckets.len() >= self.max_tracked && !state.buckets.contains_key(&key) {
            state.swept_at = Some(now);
            let (burst, per_token) = (self.burst, self.per_token);
            state
                .buckets
                .retain(|_, bucket| refilled(*bucket, burst, per_token, now).tokens < burst);
        }
        let full = Bucket {
            tokens: self.burst,
            at: now,
        };
        let bucket = if state.buckets.len() < self.max_tracked {
            state.buckets.entry(key).or_insert(full)
        } else {
            match state.buckets.get_mut(&key) {
                Some(bucket) => bucket,
                None => &mut state.overflow,
            }
        };
        *bucket = refilled(*bucket, self.burst, self.per_token, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.per_token.mul_f64(1.0 - bucket.tokens))
        }
    }

    /// How many addresses are remembered now.
    pub fn tracked(&self) -> usize {
        self.state
            .lock()
            .expect("address limiter lock")
            .buckets
            .len()
    }
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

fn refilled(bucket: Bucket, burst: f64, per_token: Duration, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(bucket.at);
    Bucket {
        tokens: (bucket.tokens + elapsed.as_secs_f64() / per_token.as_secs_f64()).min(burst),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: &str, max_tracked: usize, now: Instant) -> ByAddress {
        ByAddress::new(crate::source::parse_rate(rate).unwrap(), max_tracked, now)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_gets_its_burst_then_waits_for_a_token() {
        let t0 = Instant::now();
        let limit = limiter("5/s", 16, t0);
        for _ in 0..5 {
            limit.failed(ip("192.0.2.1"), t0).unwrap();
        }
        let wait = limit.failed(ip("192.0.2.1"), t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(200) && !wait.is_zero(),
            "{wait:?}"
        );
        // Another address has its own bucket.
        limit.failed(ip("192.0.2.2"), t0).unwrap();
        // A token comes back every 200 ms.
        limit
            .failed(ip("192.0.2.1"), t0 + Duration::from_millis(200))
            .unwrap();
        limit
            .failed(ip("192.0.2.1"), t0 + Duration::from_millis(200))
            .unwrap_err();
    }

    #[test]
    fn ipv6_addresses_share_their_64_prefix() {
        let t0 = Instant::now();
        let limit = limiter("1/m", 16, t0);
        limit.failed(ip("2001:db8:1:2::1"), t0).unwrap();
        limit.failed(ip("2001:db8:1:2::ffff"), t0).unwrap_err();
        limit.failed(ip("2001:db8:1:3::1"), t0).unwrap();
        limit.failed(ip("::ffff:192.0.2.9"), t0).unwrap();
        limit.failed(ip("192.0.2.9"), t0).unwrap_err();
    }

    #[test]
    fn the_map_stays_bounded_and_forgets_refilled_addresses() {
        let t0 = Instant::now();
        let limit = limiter("1/s", 4, t0);
        for i in 0..4 {
            limit.failed(ip(&format!("192.0.2.{i}")), t0).unwrap();
        }
        // Full, and nobody has refilled: newcomers share the overflow bucket.
        limit.failed(ip("198.51.100.1"), t0).unwrap();
        limit.failed(ip("198.51.100.2"), t0).unwrap_err();
        assert_eq!(limit.tracked(), 4);
        // A second later every bucket is full again and is forgotten for a newcomer.
        let later = t0 + Duration::from_secs(1);
        limit.failed(ip("198.51.100.3"), later).unwrap();
        assert_eq!(limit.tracked(), 1);
    }
}
