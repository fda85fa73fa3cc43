//! What hookgate's committer asks of its index for each new event, done N times by one
//! thread against sled (the index today) and against fjall (the proposed one), each in a
//! fresh temporary directory, neither syncing (hookgate's commit log is what is synced):
//! two dedup lookups that miss (the delivery id, the signed body's hash), then three
//! inserts: the event's ~110-byte index entry under its big-endian seq, and both dedup
//! keys with a 16-byte value. Prints µs per event for each and fjall's over sled's.

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
}

struct Sled(Vec<sled::Tree>);

impl Index for Sled {
    fn get(&self, tree: usize, key: &[u8]) -> bool {
        self.0[tree].get(key).expect("sled get").is_some()
    }
    fn insert(&self, tree: usize, key: &[u8], value: &[u8]) {
        self.0[tree].insert(key, value).expect("sled insert");
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
    }
    began.elapsed().as_secs_f64() * 1e6 / events as f64
}

fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("EVENTS is a number"))
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("hookgate-index-bench-{}", std::process::id()));

    let db = sled::Config::new()
        .path(dir.join("sled"))
        .flush_every_ms(None)
        .open()
        .expect("sled opens");
    let sled = Sled(vec![
        db.open_tree("events").unwrap(),
        db.open_tree("dedup").unwrap(),
    ]);
    let sled_us = run(&sled, events);
    drop(sled);
    drop(db);

    let keyspace = fjall::Config::new(dir.join("fjall"))
        .manual_journal_persist(true)
        .open()
        .expect("fjall opens");
    let options = fjall::PartitionCreateOptions::default;
    let fjall = Fjall(vec![
        keyspace.open_partition("events", options()).unwrap(),
        keyspace.open_partition("dedup", options()).unwrap(),
    ]);
    let fjall_us = run(&fjall, events);
    drop(fjall);
    drop(keyspace);
    let _ = std::fs::remove_dir_all(&dir);

    println!("{events} events, one thread, no syncs");
    println!("sled:  {sled_us:6.2} µs per event");
    println!(
        "fjall: {fjall_us:6.2} µs per event ({:.2}x sled's time)",
        fjall_us / sled_us
    );
}
