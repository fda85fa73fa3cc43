//! Free space on the journal's disk, and the floor below which new events are refused
//! (`journal.min_free`, like RabbitMQ's `disk_free_limit`): refusing them while there is
//! still room leaves room for what must go on (deliveries, compaction, the index
//! flush), and a provider told `503` retries later.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The floor of free space under the journal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MinFree {
    /// The smaller of 1 GiB and 5% of the disk.
    Default,
    Bytes(u64),
    /// A share of the disk's size, in percent.
    Percent(f64),
}

impl MinFree {
    /// The floor in bytes on a disk of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        let share = |percent: f64| (total as f64 * percent / 100.0) as u64;
        match self {
            MinFree::Default => share(5.0).min(1 << 30),
            MinFree::Bytes(bytes) => bytes,
            MinFree::Percent(percent) => share(percent),
        }
    }
}

/// The disk's size and what is free on it for an unprivileged writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

pub fn space(path: &Path) -> std::io::Result<Space> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(Space {
        free: stat.f_bavail.saturating_mul(stat.f_frsize),
        total: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

/// Checks the floor for the committer, at most every `EVERY` or after `BYTES` written,
/// whichever comes first, so that a fast writer cannot run far past it.
pub struct Floor {
    min_free: MinFree,
    path: std::path::PathBuf,
    checked: Option<Instant>,
    written: u64,
    low: Option<String>,
}

const EVERY: Duration = Duration::from_millis(100);
const BYTES: u64 = 1 << 20;

impl Floor {
    pub fn new(path: &Path, min_free: MinFree) -> Floor {
        Floor {
            min_free,
            path: path.to_path_buf(),
            checked: None,
            written: 0,
            low: None,
        }
    }

    /// Why new events must be refused now, if they must; `written` is what is about to
    /// be written.
    pub fn check(&mut self, written: u64) -> Option<&str> {
        self.written += written;
        let due = self.checked.is_none_or(|at| at.elapsed() >= EVERY) || self.written >= BYTES;
        if due {
            self.checked = Some(Instant::now());
            self.written = 0;
            self.low = match space(&self.path) {
                Ok(space) => {
                    let floor = self.min_free.bytes(space.total);
                    (space.free < floor).then(|| {
                        format!(
                            "the journal's disk has {} free, below journal.min_free ({}): new events are refused until space is freed",
                            human(space.free),
                            human(floor)
                        )
                    })
                }
                // Not knowing is not a reason to refuse: the writes themselves will say.
                Err(_) => None,
            };
        }
        self.low.as_deref()
    }
}

/// Whether a small write and its sync work in `dir` now: the test a journal whose writes
/// failed passes before it is opened again.
pub fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(".write-probe");
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0; 4096])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Bytes in the largest binary unit that keeps a whole number in front.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_floor_is_the_smaller_of_a_gibibyte_and_five_percent() {
        assert_eq!(MinFree::Default.bytes(100 << 20), 5 << 20);
        assert_eq!(MinFree::Default.bytes(1 << 40), 1 << 30);
        assert_eq!(MinFree::Bytes(7).bytes(1 << 40), 7);
        assert_eq!(MinFree::Percent(10.0).bytes(1000), 100);
    }

    #[test]
    fn space_and_floor_on_this_disk() {
        let dir = tempfile::tempdir().unwrap();
        let space = space(dir.path()).unwrap();
        assert!(space.total > 0 && space.free <= space.total);
        assert!(Floor::new(dir.path(), MinFree::Bytes(0)).check(0).is_none());
        let mut floor = Floor::new(dir.path(), MinFree::Bytes(u64::MAX));
        assert!(floor.check(0).unwrap().contains("journal.min_free"));
        probe(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(human(1536), "1.5 KiB");
    }
}
