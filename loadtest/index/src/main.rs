//! What hookgate's committer asks of its index for each new event, done N times by one
//! thread against sled (the index today) and against fjall (the proposed one), each in a
//! fresh temporary directory, neither syncing (hookgate's commit log is what is synced):
//! two dedup lookups that miss (the delivery id, the signed body's hash), then three
//! inserts: the event's ~110-byte index entry under its big-endian seq, and both dedup
//! keys with a 16-byte value. Prints µs per event for each and fjall's over sled's.
//!
//! Each store runs in a process of its own (this program runs itself again with the
//! store's name), so that each prints its own resident memory: after opening, at the
//! end, and the peak (`VmRSS`, `VmHWM`). sled is flushed every 2,000 events, as
//! hookgate's background flush (every 200 ms) does at 10k events/s; without it sled
//! would hold every dirty page in memory. `SLED_CACHE=BYTES` sets sled's
//! `cache_capacity` (hookgate's `journal.index_cache`; 1 GiB by default, like sled's).

use std::time::Instant;

const ENTRY: usize = 110;

/// The keys of event `n`: a delivery id as GitHub makes them, and a body hash's hex.
fn keys(n: u64) -> (Vec<u8>, Vec<u8>) {
    let id = format!(
        "github\0{:08x}-{:04x}-4d2b-9c1a-{:012x}",
        n.wrapping_mul(2654435761),
        n % 65_521,
        n
    );
    // A cheap stand-in for SHA-256: what matters is that the keys are spread, not sorted.
    let mut hash = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut hex = String::from("github\0signed:");
    for _ in 0..8 {
        hash ^= hash >> 29;
        hash = hash.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        hex.push_str(&format!("{:08x}", hash as u32));
    }
    (id.into_bytes(), hex.into_bytes())
}

trait Index {
    fn get(&self, tree: usize, key: &[u8]) -> bool;
    fn insert(&self, tree: usize, key: &[u8], value: &[u8]);
    /// What the store needs done now and then to keep its memory to its cache.
    fn flush(&self) {}
}

/// How often sled is flushed, in events.
const FLUSH_EVERY: u64 = 2_000;

struct Sled(sled::Db, Vec<sled::Tree>);

impl Index for Sled {
    fn get(&self, tree: usize, key: &[u8]) -> bool {
        self.1[tree].get(key).expect("sled get").is_some()
    }
    fn insert(&self, tree: usize, key: &[u8], value: &[u8]) {
        self.1[tree].insert(key, value).expect("sled insert");
    }
    fn flush(&self) {
        self.0.flush().expect("sled flush");
    }
}

struct Fjall(Vec<fjall::PartitionHandle>);

impl Index for Fjall {
    fn get(&self, tree: usize, key: &[u8]) -> bool {
        self.0[tree].get(key).expect("fjall get").is_some()
    }
    fn insert(&self, tree: usize, key: &[u8], value: &[u8]) {
        self.0[tree].insert(key, value).expect("fjall insert");
    }
}

/// µs per event for `events` events.
fn run(index: &dyn Index, events: u64) -> f64 {
    let entry = [7u8; ENTRY];
    let began = Instant::now();
    for n in 0..events {
        let (id, signed) = keys(n);
        assert!(
            !index.get(1, &id) && !index.get(1, &signed),
            "a fresh key was found"
        );
        index.insert(0, &n.to_be_bytes(), &entry);
        index.insert(1, &id, &n.to_be_bytes().repeat(2));
        index.insert(1, &signed, &n.to_be_bytes().repeat(2));
        if n % FLUSH_EVERY == FLUSH_EVERY - 1 {
            index.flush();
        }
    }
    began.elapsed().as_secs_f64() * 1e6 / events as f64
}

/// This process's resident memory now and at its peak, in MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// Runs one store in this process; prints its line and answers µs per event.
fn one(store: &str, events: u64, dir: &std::path::Path) -> f64 {
    let (opened, _) = rss();
    let us = match store {
        "sled" => {
            let mut config = sled::Config::new()
                .path(dir.join("sled"))
                .flush_every_ms(None);
            if let Some(bytes) = std::env::var("SLED_CACHE").ok().and_then(|b| b.parse().ok()) {
                config = config.cache_capacity(bytes);
            }
            let db = config.open().expect("sled opens");
            let trees = vec![
                db.open_tree("events").unwrap(),
                db.open_tree("dedup").unwrap(),
            ];
            run(&Sled(db, trees), events)
        }
        _ => {
            let keyspace = fjall::Config::new(dir.join("fjall"))
                .manual_journal_persist(true)
                .open()
                .expect("fjall opens");
            let options = fjall::PartitionCreateOptions::default;
            let fjall = Fjall(vec![
                keyspace.open_partition("events", options()).unwrap(),
                keyspace.open_partition("dedup", options()).unwrap(),
            ]);
            run(&fjall, events)
        }
    };
    let (end, peak) = rss();
    println!(
        "{store:5}  {us:6.2} µs per event; RSS {opened:.0} MiB opened, {end:.0} MiB at the end, \
         {peak:.0} MiB peak ({:.0} bytes per event)",
        (end - opened) * 1048576.0 / events as f64
    );
    us
}

fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("EVENTS is a number"))
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("hookgate-index-bench-{}", std::process::id()));
    if let Some(store) = std::env::args().nth(2) {
        let us = one(&store, events, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        println!("µs {us}");
        return;
    }
    println!("{events} events, one thread, no syncs");
    let mut took = Vec::new();
    for store in ["sled", "fjall"] {
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args([events.to_string(), store.to_string()])
            .output()
            .expect("runs itself");
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        for line in out.lines() {
            match line.strip_prefix("µs ") {
                Some(us) => took.push(us.parse::<f64>().expect("µs")),
                None => println!("{line}"),
            }
        }
    }
    if let [sled_us, fjall_us] = took[..] {
        println!("fjall's time over sled's: {:.2}x", fjall_us / sled_us);
    }
}
