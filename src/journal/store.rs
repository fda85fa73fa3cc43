//! The index's store: fjall (a log-structured merge tree), behind the few operations
//! the journal asks of it, under the journal's own names (a [`Db`] of [`Tree`]s).
//!
//! The commit log is the journal's write-ahead log, so the store's own journal is not
//! synced on each write: [`Db::flush`] makes everything written before it durable, and
//! at open recovery writes again what the log holds past the position the index last
//! recorded as covered (see `index::recover`). fjall's journal is written in order, so
//! whatever survives a crash is a prefix of the writes.
//!
//! An index left by an earlier hookgate (in sled, or in fjall trees that wrote each insert
//! through) is copied over once, at open ([`from_earlier`]), and deleted after.

use std::fs::File;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type Error = fjall::Error;
pub type Result<T> = std::result::Result<T, Error>;
/// A key or a value read from the store.
pub type Bytes = fjall::Slice;
/// One entry of a scan.
pub type Item = Result<(Bytes, Bytes)>;

/// The trees of the index, by name.
pub const TREES: [&str; 12] = [
    "events",
    "queued",
    "dedup",
    "dedup_expiry",
    "order",
    "meta",
    "subscriptions",
    "deliveries",
    "pending",
    "sub_log",
    "callbacks",
    "deadlines",
];

/// The open index; clones share it.
#[derive(Clone)]
pub struct Db {
    keyspace: fjall::Keyspace,
    /// The `flock` that keeps a second process off this journal, held while a clone lives.
    _lock: Arc<File>,
}

/// One tree of the index: keys in byte order.
#[derive(Clone)]
pub struct Tree(fjall::PartitionHandle);

/// Why the index would not open.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the journal's lock.
    InUse {
        pid: Option<u32>,
    },
    Failed(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::InUse { pid: Some(pid) } => write!(f, "held by process {pid}"),
            OpenError::InUse { pid: None } => f.write_str("held by another process"),
            OpenError::Failed(why) => f.write_str(why),
        }
    }
}

/// Where the index lives in the journal's directory.
pub fn dir(journal: &Path) -> PathBuf {
    journal.join("fjall")
}

/// Where an earlier hookgate kept its index: in sled (until 2026-12-04), or in fjall
/// with trees that wrote each insert through to fjall's journal file (2026-12-04).
pub fn earlier_dir(journal: &Path, earlier: Earlier) -> PathBuf {
    journal.join(match earlier {
        Earlier::Sled => "sled",
        Earlier::WriteThrough => "index",
    })
}

/// An index an earlier hookgate left, newest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Earlier {
    WriteThrough,
    Sled,
}

fn lock_path(journal: &Path) -> PathBuf {
    journal.join("index.lock")
}

impl Db {
    /// Opens the index of the journal at `journal`, keeping at most `cache_bytes` of its
    /// blocks in memory. A lock held by this process a moment (a reopening after a write
    /// failure, whose old opening is still closing) is waited for, up to two seconds; a
    /// lock held longer is another process's, and an error.
    pub fn open(journal: &Path, cache_bytes: u64) -> std::result::Result<Db, OpenError> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| OpenError::Failed(format!("{what}: {e}"));
        std::fs::create_dir_all(journal)
            .map_err(|e| failed(&format!("cannot create {}", journal.display()), &e))?;
        let lock = take_lock(&lock_path(journal))?;
        from_earlier(journal, cache_bytes)?;
        let keyspace = open_keyspace(&dir(journal), cache_bytes)
            .map_err(|e| failed("cannot open the index", &e))?;
        Ok(Db {
            keyspace,
            _lock: Arc::new(lock),
        })
    }

    /// Every tree of [`TREES`], in its order.
    pub fn open_trees(&self) -> Result<[Tree; TREES.len()]> {
        let mut trees = Vec::with_capacity(TREES.len());
        for name in TREES {
            trees.push(self.open_tree(name)?);
        }
        Ok(trees
            .try_into()
            .unwrap_or_else(|_| unreachable!("one tree per name")))
    }

    pub fn open_tree(&self, name: &str) -> Result<Tree> {
        self.keyspace
            .open_partition(name, partition_options())
            .map(Tree)
    }

    /// An index of its own in a temporary directory, for unit tests.
    #[cfg(test)]
    pub fn scratch() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = Db::open(dir.path(), 8 << 20).expect("a scratch index");
        (dir, db)
    }

    /// Makes every write before it durable.
    pub fn flush(&self) -> Result<()> {
        self.keyspace.persist(fjall::PersistMode::SyncData)
    }
}

/// How a tree is created. fjall writes a partition's inserts through to its journal
/// file (a `write` per insert) unless the partition, not only the keyspace, is told that
/// the journal is persisted by hand; here it is, by [`Db::flush`], and the commit log is
/// the write-ahead log. fjall keeps these options with the partition: a tree created
/// without them (by the builds of 2026-12-04, in `<journal>/index`) is copied into new
/// ones at opening ([`from_earlier`]).
fn partition_options() -> fjall::PartitionCreateOptions {
    fjall::PartitionCreateOptions::default().manual_journal_persist(true)
}

/// Opens fjall at `path`. Its background threads (flushing memtables, compacting) are
/// started by the opening thread and take its priority, so it is opened from a thread
/// that runs below the request path, as the index's own threads do.
fn open_keyspace(path: &Path, cache_bytes: u64) -> Result<fjall::Keyspace> {
    let config = fjall::Config::new(path)
        .manual_journal_persist(true)
        .cache_size(cache_bytes);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("journal-index-open".into())
            .spawn_scoped(scope, || {
                super::indexer::lower_priority("journal-index-open");
                config.open()
            })
            .map_err(Error::Io)?
            .join()
            .unwrap_or_else(|_| {
                Err(Error::Io(std::io::Error::other(
                    "the index's opening thread panicked",
                )))
            })
    })
}

/// Takes the journal's lock, waiting up to two seconds for one this process may still
/// be letting go of.
fn take_lock(path: &Path) -> std::result::Result<File, OpenError> {
    use rustix::fs::{flock, FlockOperation};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| OpenError::Failed(format!("cannot open {}: {e}", path.display())))?;
    for _ in 0..40 {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => {
                return Err(OpenError::Failed(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )))
            }
        }
    }
    Err(OpenError::InUse {
        pid: lock_holder(path),
    })
}

/// The process holding the `flock` on `file`, from the kernel's `/proc/locks` (Linux);
/// `None` when it cannot be told.
fn lock_holder(file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(file).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF`
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, id) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
        let same = id.rsplit(':').next()?.parse::<u64>().ok()? == inode;
        (*kind == "FLOCK" && same).then(|| pid.parse().ok())?
    })
}

/// Copies an index an earlier hookgate left (see [`Earlier`]) into the current one,
/// once: into a directory of its own, made durable, then renamed into place, and only
/// then is the earlier one deleted. A copy cut short is started again at the next
/// opening; an earlier index left beside a finished copy is deleted. Of two earlier
/// ones (a crash of the 2026-12-04 build between its own copy from sled and deleting
/// sled's), the newer is copied.
fn from_earlier(journal: &Path, cache_bytes: u64) -> std::result::Result<(), OpenError> {
    let earlier: Vec<Earlier> = [Earlier::WriteThrough, Earlier::Sled]
        .into_iter()
        .filter(|&e| earlier_dir(journal, e).exists())
        .collect();
    let Some(&newest) = earlier.first() else {
        return Ok(());
    };
    let failed =
        |e: &dyn std::fmt::Display| OpenError::Failed(format!("cannot copy the index: {e}"));
    let target = dir(journal);
    let mut copied = None;
    if !target.exists() {
        let copy = journal.join("fjall.copying");
        if copy.exists() {
            std::fs::remove_dir_all(&copy).map_err(|e| failed(&e))?;
        }
        let from = earlier_dir(journal, newest);
        let entries = match newest {
            Earlier::Sled => copy_from_sled(&from, &copy, cache_bytes),
            Earlier::WriteThrough => copy_from_fjall(&from, &copy, cache_bytes),
        }
        .map_err(|e| match e {
            CopyError::SledLocked => OpenError::InUse {
                pid: lock_holder(&from.join("db")),
            },
            CopyError::Other(e) => failed(&e),
        })?;
        std::fs::rename(&copy, &target).map_err(|e| failed(&e))?;
        File::open(journal)
            .and_then(|d| d.sync_all())
            .map_err(|e| failed(&e))?;
        copied = Some(entries);
    }
    for &e in &earlier {
        std::fs::remove_dir_all(earlier_dir(journal, e)).map_err(|e| failed(&e))?;
    }
    if let Some(entries) = copied {
        match newest {
            Earlier::Sled => tracing::info!(
                entries,
                "the index was copied from sled to fjall; sled's copy is deleted"
            ),
            Earlier::WriteThrough => tracing::info!(
                entries,
                "the index was copied into trees that do not write each insert through; \
                 the earlier copy is deleted"
            ),
        }
    }
    Ok(())
}

enum CopyError {
    SledLocked,
    Other(String),
}

/// Copies every tree of the sled index at `from` into a new fjall keyspace at `to`, and
/// makes it durable. Answers how many entries it copied.
fn copy_from_sled(from: &Path, to: &Path, cache_bytes: u64) -> std::result::Result<u64, CopyError> {
    let other = |e: &dyn std::fmt::Display| CopyError::Other(e.to_string());
    let sled = sled::Config::new()
        .path(from)
        .flush_every_ms(None)
        .cache_capacity(cache_bytes.min(64 << 20))
        .open()
        .map_err(|e| match e {
            // sled says so only in the message (its kind is `Other`).
            sled::Error::Io(e) if e.to_string().starts_with("could not acquire lock") => {
                CopyError::SledLocked
            }
            e => other(&e),
        })?;
    let keyspace = open_keyspace(to, cache_bytes).map_err(|e| other(&e))?;
    let mut copied = 0;
    for name in TREES {
        let source = sled.open_tree(name).map_err(|e| other(&e))?;
        let target = keyspace
            .open_partition(name, partition_options())
            .map_err(|e| other(&e))?;
        for item in source.iter() {
            let (key, value) = item.map_err(|e| other(&e))?;
            target.insert(&*key, &*value).map_err(|e| other(&e))?;
            copied += 1;
        }
    }
    keyspace
        .persist(fjall::PersistMode::SyncAll)
        .map_err(|e| other(&e))?;
    Ok(copied)
}

/// Copies every tree of the fjall index at `from` (the 2026-12-04 build's) into a new
/// keyspace at `to`, and makes it durable. Answers how many entries it copied.
fn copy_from_fjall(
    from: &Path,
    to: &Path,
    cache_bytes: u64,
) -> std::result::Result<u64, CopyError> {
    let other = |e: &dyn std::fmt::Display| CopyError::Other(e.to_string());
    let source = open_keyspace(from, cache_bytes).map_err(|e| other(&e))?;
    let keyspace = open_keyspace(to, cache_bytes).map_err(|e| other(&e))?;
    copy_trees(
        (&source, fjall::PartitionCreateOptions::default()),
        (&keyspace, partition_options()),
    )
    .map_err(|e| other(&e))
}

/// Copies every tree of [`TREES`] from one keyspace into another, each side's trees
/// opened (or created) with its options, and makes the copy durable. Answers how many
/// entries it copied.
fn copy_trees(
    (from, from_options): (&fjall::Keyspace, fjall::PartitionCreateOptions),
    (to, to_options): (&fjall::Keyspace, fjall::PartitionCreateOptions),
) -> Result<u64> {
    let mut copied = 0;
    for name in TREES {
        let source = from.open_partition(name, from_options.clone())?;
        let target = to.open_partition(name, to_options.clone())?;
        for item in source.iter() {
            let (key, value) = item?;
            target.insert(key, value)?;
            copied += 1;
        }
    }
    to.persist(fjall::PersistMode::SyncAll)?;
    Ok(copied)
}

impl Tree {
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.0.insert(key.as_ref(), value.as_ref())
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.0.get(key)
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.0.contains_key(key)
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.0.remove(key.as_ref())
    }

    /// Removes `key` and answers what it held, if anything (nothing is written when it
    /// held nothing). Not atomic: for a tree whose key only one thread removes.
    pub fn take(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let held = self.0.get(key.as_ref())?;
        if held.is_some() {
            self.0.remove(key.as_ref())?;
        }
        Ok(held)
    }

    /// Every entry, in key order (or reversed).
    pub fn iter(&self) -> Scan {
        Scan(Box::new(self.0.iter()))
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Scan {
        Scan(Box::new(self.0.range(range)))
    }

    pub fn last(&self) -> Result<Option<(Bytes, Bytes)>> {
        self.0.last_key_value()
    }

    /// Counts the entries (a full scan).
    pub fn len(&self) -> Result<usize> {
        self.0.len()
    }

    /// Removes every entry.
    #[cfg(test)]
    pub fn clear(&self) -> Result<()> {
        for key in self.0.keys() {
            self.0.remove(key?)?;
        }
        Ok(())
    }
}

/// The entries of a scan, in key order (or reversed), as the store held them when it
/// began.
pub struct Scan(Box<dyn DoubleEndedIterator<Item = Item>>);

impl Scan {
    pub fn keys(self) -> impl DoubleEndedIterator<Item = Result<Bytes>> {
        self.0.map(|item| item.map(|(key, _)| key))
    }
}

impl Iterator for Scan {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        self.0.next()
    }
}

impl DoubleEndedIterator for Scan {
    fn next_back(&mut self) -> Option<Item> {
        self.0.next_back()
    }
}

/// Moves the index of `journal` back to where the builds of 2026-12-04 kept it, in
/// trees made as they made them (each insert written through), for tests of the copy.
#[cfg(test)]
pub fn back_to_write_through(journal: &Path) {
    {
        let current = open_keyspace(&dir(journal), 8 << 20).expect("the index");
        let earlier = open_keyspace(&earlier_dir(journal, Earlier::WriteThrough), 8 << 20)
            .expect("a keyspace for the earlier index");
        copy_trees(
            (&current, partition_options()),
            (&earlier, fjall::PartitionCreateOptions::default()),
        )
        .expect("the index copied back");
    }
    std::fs::remove_dir_all(dir(journal)).expect("the current index removed");
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The `write` calls this thread has made so far (`syscw` in Linux's per-thread I/O
    /// accounting).
    pub fn writes_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
        io.lines()
            .find_map(|line| line.strip_prefix("syscw: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("a syscw line")
    }

    /// Inserts a thousand entries into `tree` and answers how many `write` calls that
    /// took.
    pub fn writes_for_a_thousand_inserts(tree: &Tree) -> u64 {
        let before = writes_by_this_thread();
        for n in 0u32..1000 {
            tree.insert(n.to_be_bytes(), [7u8; 100]).unwrap();
        }
        writes_by_this_thread() - before
    }

    #[test]
    fn inserts_are_not_written_through_one_by_one() {
        let (_dir, db) = Db::scratch();
        let tree = db.open_tree("events").unwrap();
        let writes = writes_for_a_thousand_inserts(&tree);
        // About 110 KB: fjall's journal writes its buffer out when it fills.
        assert!(
            writes < 100,
            "a thousand inserts took {writes} writes: each one is written through"
        );
        db.flush().unwrap();
        assert_eq!(tree.get(999u32.to_be_bytes()).unwrap().unwrap().len(), 100);
    }
}
