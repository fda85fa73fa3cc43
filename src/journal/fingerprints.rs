//! The committer's table of dedup keys ([`Fingerprints`]): which event each key of the
//! dedup window belongs to, kept in memory instead of in the index, checked against the
//! event's own index entry ([`owner`]), saved at a clean close and read again from the
//! events after a crash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use super::index::Mark;
use super::store;
use super::Trees;

/// The dedup keys (ids and replay keys) of the events in the dedup window, kept by the
/// committer instead of in the index: for each key's 64-bit fingerprint, the seq of the event
/// it belongs to. That event's index entry records its id and replay key, and is what a
/// hit is checked against, so a shared fingerprint never makes a duplicate of a new
/// event; a key whose fingerprint is absent is new without a look into the index, which is
/// what most appends are. The index is spared a write per key (two of its three per
/// GitHub event). A clean close saves the table; after a crash an opening reads the keys
/// again from the events inside the dedup window.
///
/// Keys the index's `dedup` tree holds (a journal written before, an event retention removed
/// inside its window, keys past the table's limit) are counted here too, as a
/// fingerprint with a count: present is a hint checked in the index, absent means the index does
/// not hold the key. Counts go up on every key written and down on every key removed,
/// so a count can be too high (a key written again over itself), never too low: a stale
/// hint costs one index read, a missing one would accept a duplicate. At most
/// [`MAX_PRINTS`] are counted; past that every key is looked up in the index too.
///
/// At most [`MAX_HELD`] keys are held; past that new ones go into the index's `dedup` tree
/// (`Created::keys_in_index`), until an opening finds fewer again.
pub(super) struct Fingerprints {
    counts: Shards<u32>,
    /// Key fingerprint -> seq of its event.
    held: Shards<u64>,
    /// Keys whose fingerprint `held` already holds for another event: (print, seq).
    /// Rare: a key accepted again after its window, before the walk forgot the old one,
    /// or two keys sharing a fingerprint.
    shared_prints: Vec<(u64, u64)>,
    /// More keys than the table holds: new ones go into the index.
    spilled: bool,
    /// The hasher's seed: random for each table, and saved with it (see [`Self::save`]).
    seed: u64,
    hasher: foldhash::quality::FixedState,
    /// Too many keys to keep: every key may be in the index.
    full: bool,
}

/// The fingerprint table's own hasher: a fingerprint is already a keyed hash of its key,
/// so it is used as it is rather than hashed a second time.
#[derive(Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// How many tables a [`Shards`] map splits its entries among.
const SHARDS: usize = 256;

/// A map from fingerprint to value, split among [`SHARDS`] tables by bits 32-39 of the
/// fingerprint, bits a table's own hashing leaves alone (it takes the bucket from the
/// low bits and each entry's tag from the top seven). A table that fills up moves every
/// entry into one twice its size at once, and here that happens on the committer, where
/// every append waits for it. In one table, growing to the limit of four million keys
/// held one insert for 70 ms; split, the longest took 0.3-0.6 ms in most runs, and the
/// tables fill up at different inserts (BENCHMARKS.md, 2026-12-07, eighth session).
struct Shards<V> {
    tables: Box<[HashMap<u64, V, BuildHasherDefault<Passthrough>>]>,
    len: usize,
}

impl<V: Copy> Shards<V> {
    fn new() -> Shards<V> {
        Shards {
            tables: (0..SHARDS).map(|_| HashMap::default()).collect(),
            len: 0,
        }
    }

    fn table(print: u64) -> usize {
        (print >> 32) as usize % SHARDS
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, print: u64) -> Option<V> {
        self.tables[Self::table(print)].get(&print).copied()
    }

    fn get_mut(&mut self, print: u64) -> Option<&mut V> {
        self.tables[Self::table(print)].get_mut(&print)
    }

    /// Puts `value` under `print`; answers the value it replaced.
    fn insert(&mut self, print: u64, value: V) -> Option<V> {
        let replaced = self.tables[Self::table(print)].insert(print, value);
        self.len += usize::from(replaced.is_none());
        replaced
    }

    /// The value under `print`, after putting `value` there if there was none: one
    /// lookup either way.
    fn or_insert(&mut self, print: u64, value: V) -> &mut V {
        match self.tables[Self::table(print)].entry(print) {
            std::collections::hash_map::Entry::Vacant(free) => {
                self.len += 1;
                free.insert(value)
            }
            std::collections::hash_map::Entry::Occupied(taken) => taken.into_mut(),
        }
    }

    fn remove(&mut self, print: u64) -> Option<V> {
        let removed = self.tables[Self::table(print)].remove(&print);
        self.len -= usize::from(removed.is_some());
        removed
    }

    fn iter(&self) -> impl Iterator<Item = (u64, V)> + '_ {
        self.tables
            .iter()
            .flat_map(|table| table.iter().map(|(&print, &value)| (print, value)))
    }

    /// Room for `n` more entries in all, spread as the fingerprints spread them.
    fn reserve(&mut self, n: usize) {
        let each = n / SHARDS + n / SHARDS / 8 + 1;
        for table in self.tables.iter_mut() {
            table.reserve(each);
        }
    }
}

/// The most keys in the index the fingerprint table counts.
const MAX_PRINTS: usize = 4 << 20;
/// The most dedup keys the table holds (16 bytes each, about 140 MB with the map's
/// slack): a dedup window of two million GitHub events (two keys each), or four million
/// of a provider that signs its ids.
pub(super) const MAX_HELD: usize = 4 << 20;

impl Fingerprints {
    /// Counts every key of the `dedup` tree.
    pub(super) fn load(dedup: &store::Tree) -> Result<Fingerprints, store::Error> {
        Fingerprints::load_up_to(dedup, MAX_PRINTS)
    }

    /// An empty table with a seed of its own.
    fn empty(seed: u64) -> Fingerprints {
        Fingerprints {
            counts: Shards::new(),
            held: Shards::new(),
            shared_prints: Vec::new(),
            spilled: false,
            seed,
            hasher: foldhash::quality::FixedState::with_seed(seed),
            full: false,
        }
    }

    fn load_up_to(dedup: &store::Tree, max: usize) -> Result<Fingerprints, store::Error> {
        let mut seed = [0; 8];
        // Without the operating system's randomness the seed is the time: the table
        // stays correct, only guessing its collisions gets easier.
        if getrandom::fill(&mut seed).is_err() {
            seed = crate::unix_ms(std::time::SystemTime::now()).to_le_bytes();
        }
        let mut prints = Fingerprints::empty(u64::from_le_bytes(seed));
        for item in dedup.iter().keys() {
            prints.add_up_to(&item?, max);
            if prints.full {
                break;
            }
        }
        Ok(prints)
    }

    fn print(&self, key: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, key)
    }

    /// A key went into the index's `dedup` tree.
    pub(super) fn add(&mut self, key: &[u8]) {
        self.add_up_to(key, MAX_PRINTS);
    }

    fn add_up_to(&mut self, key: &[u8], max: usize) {
        if self.full {
            return;
        }
        if self.counts.len() >= max {
            tracing::info!(
                keys = self.counts.len(),
                "too many ids in the dedup window to keep their fingerprints; each is looked up in the index"
            );
            self.full = true;
            self.counts = Shards::new();
            return;
        }
        *self.counts.or_insert(self.print(key), 0) += 1;
    }

    /// A key left the index's `dedup` tree.
    pub(super) fn remove(&mut self, key: &[u8]) {
        let print = self.print(key);
        if let Some(count) = self.counts.get_mut(print) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(print);
            }
        }
    }

    /// Whether the index's `dedup` tree may hold `key`; `false` means it does not (the
    /// journal asks [`Self::lookup`], which also answers the events it may belong to).
    #[cfg(test)]
    pub(super) fn may_hold(&self, key: &[u8]) -> bool {
        self.index_may_hold(self.print(key))
    }

    fn index_may_hold(&self, print: u64) -> bool {
        self.full || self.counts.get(print).is_some()
    }

    /// Where `key` may be, from one fingerprint: whether the index's `dedup` tree may hold it
    /// (`false` means it does not), and the events it may belong to ([`Self::seqs`]).
    pub(super) fn lookup(&self, key: &[u8]) -> (bool, Vec<u64>) {
        let print = self.print(key);
        (self.index_may_hold(print), self.seqs_of(print))
    }

    pub(super) fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether the table gave up on some keys: every key is looked up in the index, or new
    /// keys go there. An opening builds such a table again.
    pub(super) fn is_full(&self) -> bool {
        self.full || self.spilled
    }

    /// Holds `key`, a dedup key of the event `seq`, unless the table already holds `max`
    /// keys: then it answers `false`, and the key (and every new one after it) must go
    /// into the index's `dedup` tree.
    pub(super) fn keep(&mut self, key: &[u8], seq: u64, max: usize) -> bool {
        if self.spilled || self.held_count() >= max {
            if !self.spilled {
                tracing::info!(
                    keys = self.held.len(),
                    "too many ids in the dedup window to keep in memory; new ones go into the index"
                );
            }
            self.spilled = true;
            return false;
        }
        let print = self.print(key);
        // Another event's seq already under this fingerprint: this one is kept beside it.
        let holder = *self.held.or_insert(print, seq);
        if holder != seq && !self.shared_prints.contains(&(print, seq)) {
            self.shared_prints.push((print, seq));
        }
        true
    }

    /// The seqs of the events whose dedup key may be `key` (each to be checked against
    /// the event's entry).
    pub(super) fn seqs(&self, key: &[u8]) -> Vec<u64> {
        self.seqs_of(self.print(key))
    }

    fn seqs_of(&self, print: u64) -> Vec<u64> {
        let mut seqs: Vec<u64> = self.held.get(print).into_iter().collect();
        if !self.shared_prints.is_empty() {
            seqs.extend(
                self.shared_prints
                    .iter()
                    .filter(|(p, _)| *p == print)
                    .map(|(_, seq)| *seq),
            );
        }
        seqs
    }

    /// Lets go of `key` as a dedup key of the event `seq`; answers whether the table held
    /// it.
    pub(super) fn let_go(&mut self, key: &[u8], seq: u64) -> bool {
        let print = self.print(key);
        if let Some(at) = self.shared_prints.iter().position(|&e| e == (print, seq)) {
            self.shared_prints.swap_remove(at);
            return true;
        }
        if self.held.get(print) != Some(seq) {
            return false;
        }
        match self.shared_prints.iter().position(|(p, _)| *p == print) {
            Some(at) => {
                let (_, other) = self.shared_prints.swap_remove(at);
                self.held.insert(print, other);
            }
            None => {
                self.held.remove(print);
            }
        }
        true
    }

    /// How many keys the table holds.
    pub(super) fn held_count(&self) -> usize {
        self.held.len() + self.shared_prints.len()
    }

    /// Reads the dedup keys of the events from `from_seq` on (those the dedup window's
    /// walk has not forgotten) into the table, up to `max`; any past it are written into
    /// the `dedup` tree, where new ones then go too. Replayed copies have none.
    pub(super) fn load_held(
        &mut self,
        trees: &Trees,
        from_seq: u64,
        max: usize,
    ) -> Result<(), store::Error> {
        for item in trees.events.range(super::seq_key(from_seq)..) {
            let (_, bytes) = item?;
            // An entry that cannot be read is reported where it is read; it vouches for
            // nothing here.
            let Ok(stored) = super::record::decode_stored(&bytes) else {
                continue;
            };
            let summary = stored.summary();
            if summary.replay_of.is_some() {
                continue;
            }
            for key in super::index::dedup_keys(summary, stored.replay_key()) {
                let held = self.keep(&key, summary.seq, max);
                if !held && !trees.dedup.contains_key(&key)? {
                    let value = super::committer::dedup_value(summary.seq, summary.received_at_ms);
                    trees.dedup.insert(&key, value)?;
                    self.add(&key);
                }
            }
        }
        Ok(())
    }

    /// Writes the table to `path` at a clean close, tied to the log position `mark` the
    /// index then covers, so that the next opening need not walk every dedup key (3 s at
    /// a million events). The file is synced; the census written after it says whether
    /// the index is still as the table describes.
    pub(super) fn save(&self, path: &Path, mark: Mark) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(64 + self.counts.len() * 12 + self.held_count() * 16);
        out.extend_from_slice(SAVED_MAGIC);
        for n in [mark.segment, mark.offset, mark.last_seq, self.seed] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.print(SAVED_CHECK).to_le_bytes());
        out.push(u8::from(self.full));
        out.extend_from_slice(&(self.counts.len() as u64).to_le_bytes());
        for (print, count) in self.counts.iter() {
            out.extend_from_slice(&print.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out.push(u8::from(self.spilled));
        out.extend_from_slice(&(self.held_count() as u64).to_le_bytes());
        for (print, seq) in self.held.iter().chain(self.shared_prints.iter().copied()) {
            out.extend_from_slice(&print.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
        let temporary = path.with_extension("new");
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, &out)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        match path.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }

    /// The table a clean close saved at `path`, if it was saved when the index covered
    /// `mark` and reads back whole with this build's hasher. The file is deleted either
    /// way: it describes the index at one moment only.
    pub(super) fn load_saved(path: &Path, mark: Option<Mark>) -> Option<Fingerprints> {
        let bytes = std::fs::read(path).ok()?;
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot delete the saved dedup fingerprints");
            return None;
        }
        let mark = mark?;
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let mut rest = body.strip_prefix(SAVED_MAGIC)?;
        let u64_of = |rest: &mut &[u8]| -> Option<u64> {
            let (n, tail) = rest.split_first_chunk::<8>()?;
            *rest = tail;
            Some(u64::from_le_bytes(*n))
        };
        let saved = [u64_of(&mut rest)?, u64_of(&mut rest)?, u64_of(&mut rest)?];
        if saved != [mark.segment, mark.offset, mark.last_seq] {
            return None;
        }
        let mut prints = Fingerprints::empty(u64_of(&mut rest)?);
        // A build whose hasher differs would miss every saved key.
        if u64_of(&mut rest)? != prints.print(SAVED_CHECK) {
            return None;
        }
        let (&full, mut rest) = rest.split_first()?;
        let n = usize::try_from(u64_of(&mut rest)?).ok()?;
        let (counts, rest) = rest.split_at_checked(n.checked_mul(12)?)?;
        prints.full = full != 0;
        prints.counts.reserve(n);
        for entry in counts.chunks_exact(12) {
            let (print, count) = entry.split_at(8);
            prints.counts.insert(
                u64::from_le_bytes(print.try_into().ok()?),
                u32::from_le_bytes(count.try_into().ok()?),
            );
        }
        let (&spilled, mut rest) = rest.split_first()?;
        let n = u64_of(&mut rest)?;
        if rest.len() as u64 != n.checked_mul(16)? {
            return None;
        }
        prints.spilled = spilled != 0;
        prints.held.reserve(n as usize);
        for entry in rest.chunks_exact(16) {
            let (print, seq) = entry.split_at(8);
            let print = u64::from_le_bytes(print.try_into().ok()?);
            let seq = u64::from_le_bytes(seq.try_into().ok()?);
            if let Some(first) = prints.held.insert(print, seq) {
                prints.held.insert(print, first);
                prints.shared_prints.push((print, seq));
            }
        }
        Some(prints)
    }
}

/// The newest of the events `seqs` that `key` is a dedup key of, by their own index
/// entries: its seq and when it was received. An entry that cannot be read vouches for
/// nothing (a duplicate delivered is better than an event lost); its damage is reported
/// where it is read.
pub(super) fn owner(
    events: &store::Tree,
    seqs: Vec<u64>,
    key: &[u8],
) -> Result<Option<(u64, u64)>, store::Error> {
    let mut newest = None;
    for seq in seqs {
        let Some(bytes) = events.get(super::seq_key(seq))? else {
            continue;
        };
        match super::record::decode_stored(&bytes) {
            Ok(stored) => {
                let summary = stored.summary();
                let its = summary.replay_of.is_none()
                    && super::index::dedup_keys(summary, stored.replay_key())
                        .iter()
                        .any(|k| k == key);
                if its {
                    newest = newest.max(Some((seq, summary.received_at_ms)));
                }
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "an event's index entry cannot be read to check a dedup key")
            }
        }
    }
    Ok(newest)
}

/// The first bytes of a saved fingerprint table, with its format's version (3: the
/// keys held in memory; a table of an older version is not read, and the opening builds
/// it again).
const SAVED_MAGIC: &[u8] = b"hookgate-fingerprints-3\n";
/// Hashed into a saved table and again when it is read: a build whose hasher gives
/// another value does not use it.
const SAVED_CHECK: &[u8] = b"hookgate dedup fingerprint check";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_goes_only_when_every_key_that_set_it_has_gone() {
        let (_dir, db) = store::Db::scratch();
        let dedup = db.open_tree("dedup").unwrap();
        dedup.insert(b"s\0a", [0u8; 16]).unwrap();
        let mut prints = Fingerprints::load(&dedup).unwrap();
        assert!(prints.may_hold(b"s\0a"), "loaded from the index");
        assert!(!prints.may_hold(b"s\0b"));
        // Written again over itself: counted twice, so one removal leaves a hint (a
        // index read too many), never a miss.
        prints.add(b"s\0a");
        prints.remove(b"s\0a");
        assert!(prints.may_hold(b"s\0a"));
        prints.remove(b"s\0a");
        assert!(!prints.may_hold(b"s\0a"));
        prints.remove(b"s\0a");
        prints.add(b"s\0a");
        assert!(
            prints.may_hold(b"s\0a"),
            "a removal too many does not hide a key"
        );
        assert_eq!(prints.len(), 1);
    }

    #[test]
    fn past_its_limit_the_table_sends_every_id_to_the_index() {
        let (_dir, db) = store::Db::scratch();
        let dedup = db.open_tree("dedup").unwrap();
        for key in [b"s\0a", b"s\0b", b"s\0c"] {
            dedup.insert(key, [0u8; 16]).unwrap();
        }
        let mut prints = Fingerprints::load_up_to(&dedup, 2).unwrap();
        assert!(prints.may_hold(b"s\0z"), "full: anything may be there");
        assert_eq!(prints.len(), 0, "and its memory is given back");
        prints.remove(b"s\0a");
        prints.add(b"s\0d");
        assert!(prints.may_hold(b"s\0a"));
        let mut prints = Fingerprints::load_up_to(&dedup, 3).unwrap();
        assert!(!prints.may_hold(b"s\0z"));
        prints.add_up_to(b"s\0d", 3);
        assert!(prints.may_hold(b"s\0z"), "filled up while running");
    }

    #[test]
    fn keys_sharing_a_fingerprint_are_each_kept_and_let_go() {
        let (_dir, db) = store::Db::scratch();
        let mut prints = Fingerprints::load(&db.open_tree("dedup").unwrap()).unwrap();
        assert!(prints.keep(b"s\0\0r", 1, 10));
        // The same key for a later event (its window over), before event 1 is forgotten.
        assert!(prints.keep(b"s\0\0r", 5, 10));
        assert!(prints.keep(b"s\0\0r", 5, 10), "kept once");
        assert_eq!(prints.seqs(b"s\0\0r"), [1, 5]);
        assert!(prints.seqs(b"s\0\0other").is_empty());
        assert!(!prints.let_go(b"s\0\0r", 2), "not its key");
        assert!(prints.let_go(b"s\0\0r", 1));
        assert_eq!(prints.seqs(b"s\0\0r"), [5]);
        assert!(prints.let_go(b"s\0\0r", 5));
        assert!(prints.seqs(b"s\0\0r").is_empty());
        assert_eq!(prints.held_count(), 0);

        for n in 0..3u64 {
            assert!(prints.keep(format!("s\0\0{n}").as_bytes(), n, 3));
        }
        assert!(!prints.keep(b"s\0\0x", 9, 3), "full");
        assert!(prints.is_full());
        assert!(
            !prints.keep(b"s\0\0y", 10, 100),
            "and stays so until an opening builds it again"
        );
    }

    #[test]
    fn the_table_is_split_evenly_and_answers_as_one() {
        let (_dir, db) = store::Db::scratch();
        let mut prints = Fingerprints::load(&db.open_tree("dedup").unwrap()).unwrap();
        let key = |seq: u64| format!("github\0{seq:x}-4c1e-11ef-8d3b").into_bytes();
        let n = 200_000u64;
        for seq in 0..n {
            assert!(prints.keep(&key(seq), seq, MAX_HELD));
        }
        assert_eq!(prints.held_count(), n as usize);
        // No table holds (and so moves at once when it grows) much more than its share.
        let largest = prints.held.tables.iter().map(HashMap::len).max().unwrap();
        assert!(largest < 2 * n as usize / SHARDS, "{largest} of {n}");
        let mut gone = 0;
        for seq in (0..n).step_by(97) {
            assert_eq!(prints.seqs(&key(seq)), [seq]);
            assert!(prints.let_go(&key(seq), seq));
            assert!(prints.seqs(&key(seq)).is_empty());
            gone += 1;
        }
        assert_eq!(prints.held_count(), (n - gone) as usize);
        assert_eq!(prints.held.iter().count(), (n - gone) as usize);
    }

    /// Not a check but a measurement (BENCHMARKS.md, 2026-12-07, eighth session): the
    /// longest single insert while one table, and then a [`Shards`] map, grows to
    /// [`MAX_HELD`] fingerprints, in the same run.
    /// `cargo test --release --lib growth_pauses -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; run it by name"]
    fn growth_pauses() {
        let hasher = foldhash::quality::FixedState::with_seed(7);
        let print = |n: u64| std::hash::BuildHasher::hash_one(&hasher, n);
        let longest = |insert: &mut dyn FnMut(u64)| {
            let mut longest = std::time::Duration::ZERO;
            for n in 0..MAX_HELD as u64 {
                let began = std::time::Instant::now();
                insert(print(n));
                longest = longest.max(began.elapsed());
            }
            longest
        };
        let mut one: HashMap<u64, u64, BuildHasherDefault<Passthrough>> = HashMap::default();
        let one = longest(&mut |p| {
            one.insert(p, p);
        });
        let mut split = Shards::new();
        let split = longest(&mut |p| {
            split.insert(p, p);
        });
        println!(
            "longest insert up to {MAX_HELD} fingerprints: one table {:.2} ms, {SHARDS} tables {:.2} ms ({:.3}x)",
            one.as_secs_f64() * 1e3,
            split.as_secs_f64() * 1e3,
            split.as_secs_f64() / one.as_secs_f64()
        );
    }

    #[test]
    fn a_saved_table_keeps_the_keys_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fingerprints");
        let (_dir, db) = store::Db::scratch();
        let mut prints = Fingerprints::load(&db.open_tree("dedup").unwrap()).unwrap();
        for n in 0..100u64 {
            prints.keep(format!("s\0\0r{n}").as_bytes(), n, 1000);
        }
        prints.keep(b"s\0\0r0", 500, 1000);
        let mark = Mark {
            segment: 1,
            offset: 2,
            last_seq: 500,
        };
        prints.save(&path, mark).unwrap();
        let read = Fingerprints::load_saved(&path, Some(mark)).unwrap();
        assert_eq!(read.held_count(), 101);
        assert_eq!(read.seqs(b"s\0\0r0"), [0, 500]);
        assert_eq!(read.seqs(b"s\0\0r42"), [42]);
        assert!(!read.is_full());
        // A table of an older version holds fewer keys: it is not read.
        prints.save(&path, mark).unwrap();
        let mut old = std::fs::read(&path).unwrap();
        old[22] = b'2';
        let body = old.len() - 4;
        let crc = crc32fast::hash(&old[..body]).to_le_bytes();
        old[body..].copy_from_slice(&crc);
        std::fs::write(&path, &old).unwrap();
        assert!(Fingerprints::load_saved(&path, Some(mark)).is_none());
    }

    #[test]
    fn a_saved_table_is_read_back_only_whole_and_for_its_own_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fingerprints");
        let (_dir, db) = store::Db::scratch();
        let dedup = db.open_tree("dedup").unwrap();
        let keys: Vec<Vec<u8>> = (0..1000).map(|n| format!("s\0{n}").into_bytes()).collect();
        for key in &keys {
            dedup.insert(key, [0u8; 16]).unwrap();
        }
        let prints = Fingerprints::load(&dedup).unwrap();
        let mark = Mark {
            segment: 3,
            offset: 4096,
            last_seq: 1000,
        };
        let unknown = (0..1000)
            .filter(|n| !prints.may_hold(format!("t\0{n}").as_bytes()))
            .count();
        assert!(unknown > 990, "{unknown}");

        prints.save(&path, mark).unwrap();
        let read = Fingerprints::load_saved(&path, Some(mark)).unwrap();
        assert!(!path.exists(), "read once");
        assert_eq!(read.len(), 1000);
        assert!(keys.iter().all(|key| read.may_hold(key)));
        let unknown_after = (0..1000)
            .filter(|n| !read.may_hold(format!("t\0{n}").as_bytes()))
            .count();
        assert_eq!(unknown_after, unknown, "the same hasher, the same answers");

        prints.save(&path, mark).unwrap();
        let other = Mark {
            last_seq: 1001,
            ..mark
        };
        assert!(Fingerprints::load_saved(&path, Some(other)).is_none());
        assert!(!path.exists(), "deleted when not used too");
        prints.save(&path, mark).unwrap();
        assert!(Fingerprints::load_saved(&path, None).is_none());

        // Any byte changed, or a file cut short, and the table is walked instead.
        prints.save(&path, mark).unwrap();
        let whole = std::fs::read(&path).unwrap();
        for at in [0, 30, 60, whole.len() / 2, whole.len() - 1] {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x10;
            std::fs::write(&path, &bytes).unwrap();
            assert!(
                Fingerprints::load_saved(&path, Some(mark)).is_none(),
                "{at}"
            );
        }
        std::fs::write(&path, &whole[..whole.len() - 12]).unwrap();
        assert!(Fingerprints::load_saved(&path, Some(mark)).is_none());
    }
}
