//! CPU time a process has used, from `/proc/PID/stat` (user plus system time), for the
//! CPU per request that `bench` reports. `compare.sh` reads the same two fields.

use std::io;

/// utime + stime of process `pid` so far, in clock ticks.
pub fn ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse(&stat).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))
}

/// Fields 14 (utime) and 15 (stime). The name in field 2 may hold spaces and `)`, so the
/// count starts after its last `)`, where field 3 is.
fn parse(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// `ticks` in microseconds.
pub fn micros(ticks: u64) -> f64 {
    ticks as f64 * 1e6 / rustix::param::clock_ticks_per_second() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_time_are_found_past_an_awkward_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 120 0 0 0 31 7 0 0 20 0 1 0";
        assert_eq!(parse(stat), Some(38));
        assert_eq!(parse("4242 (cut short) S 1"), None);
    }

    #[test]
    fn spinning_counts() {
        let before = ticks(std::process::id()).unwrap();
        let spin = std::time::Instant::now();
        while ticks(std::process::id()).unwrap() == before {
            assert!(
                spin.elapsed().as_secs() < 5,
                "5 s of spinning and not one tick"
            );
        }
    }
}
