//! The commit log: append-only segment files that hold what each append wrote, and are
//! what an `accepted` waits for. Each group of appends is written with one `write` and
//! made durable with one `fdatasync`; fjall, which holds the index (summaries, status,
//! dedup, ordering), is flushed in the background. After a crash, the entries past the
//! index's last flushed position are written into the index again ([`scan`]).
//!
//! A segment is `log/{n:016}.seg`. An entry is a 24-byte header, then its bytes (a
//! postcard [`super::record::Created`]):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `HGLE`, so that the next entry can be found after a damaged one |
//! | 4 | entry format version (2) |
//! | 5..8 | zero |
//! | 8..16 | seq (u64, little endian) |
//! | 16..20 | length of the bytes (u32, little endian) |
//! | 20..24 | CRC-32 of header bytes 0..20 and the bytes |
//!
//! Journals written before version 2 hold entries of the first format (length, CRC of
//! the bytes, the bytes); their length can never read as the magic, so both are read.
//! A damaged entry costs that entry only: [`scan`] skips to the next whole entry. Only
//! bytes after the last whole entry of the newest segment, which a crash in the middle
//! of a write leaves and no answer ever covered, are cut off when the journal opens.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::record::Loc;

/// A segment is closed and a new one started once it holds this much, unless
/// `journal.segment_size` says otherwise.
#[cfg(not(test))]
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
#[cfg(test)]
pub const SEGMENT_BYTES: u64 = 4096;
const HEADER: usize = 24;
/// The header of the first entry format: length and CRC.
const HEADER_V1: usize = 8;
const MAGIC: [u8; 4] = *b"HGLE";
/// The entry format this build writes.
pub const ENTRY_VERSION: u8 = 2;
/// No entry is larger than this; a length beyond it is damage. (The magic, read as a
/// first-format length, is beyond it: the two formats cannot be confused.)
const MAX_ENTRY: u32 = 256 * 1024 * 1024;

pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016}.seg"))
}

/// Where a segment nothing refers to any more waits to be used again.
fn free_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016}.free"))
}

/// How many retired segments are kept for reuse; past that they are deleted. One is
/// retired for each one filled once retention is steady, so two are enough.
pub const KEEP_FREE: usize = 2;

/// The retired segments in `dir` that wait to be used again, oldest first.
pub fn free_segments(dir: &Path) -> io::Result<Vec<u64>> {
    numbered(dir, ".free")
}

/// Deletes every retired segment (the disk is short of space); answers how many.
pub fn drop_free(dir: &Path) -> io::Result<usize> {
    let free = free_segments(dir)?;
    for n in &free {
        match std::fs::remove_file(free_path(dir, *n)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !free.is_empty() {
        sync_dir(dir)?;
    }
    Ok(free.len())
}

/// Retires a segment nothing refers to any more: with `keep`, it is kept for reuse as a
/// later segment while fewer than [`KEEP_FREE`] are; otherwise it is deleted.
pub fn retire(dir: &Path, segment: u64, keep: bool) -> io::Result<()> {
    let path = segment_path(dir, segment);
    let outcome = if keep && free_segments(dir)?.len() < KEEP_FREE {
        std::fs::rename(&path, free_path(dir, segment))
    } else {
        std::fs::remove_file(&path)
    };
    match outcome {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The segments in `dir`, oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    numbered(dir, ".seg")
}

fn numbered(dir: &Path, suffix: &str) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(suffix)
            .and_then(|stem| stem.parse::<u64>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Makes a new directory entry (a segment created or removed) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The bytes an entry of `len` takes in its segment, header included (`seq`: whether it
/// is of the current format, which names its seq).
pub fn entry_size(len: u32, seq: bool) -> u64 {
    (if seq { HEADER } else { HEADER_V1 }) as u64 + u64::from(len)
}

/// The CRC of an entry: header bytes 0..20 and the entry's bytes.
fn entry_crc(header: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..20]);
    hasher.update(body);
    hasher.finalize()
}

/// What is at one position of a segment.
#[derive(Debug, PartialEq, Eq)]
enum At {
    /// A whole entry: its seq (none in the first format), where its bytes start, their
    /// length.
    Whole {
        seq: Option<u64>,
        start: usize,
        len: u32,
    },
    /// A whole entry of a format this build does not know (a newer hookgate's).
    Newer(u8),
    /// Not a whole entry: torn, damaged, or not an entry's start at all.
    Bad,
}

fn parse_at(bytes: &[u8], at: usize) -> At {
    let rest = &bytes[at..];
    if rest.len() >= HEADER && rest[..4] == MAGIC {
        let (seq, len, crc) = (u64_at(rest, 8), u32_at(rest, 16), u32_at(rest, 20));
        if len == 0 || len > MAX_ENTRY || rest.len() - HEADER < len as usize {
            return At::Bad;
        }
        let body = &rest[HEADER..HEADER + len as usize];
        if entry_crc(rest, body) != crc {
            return At::Bad;
        }
        return match rest[4] {
            ENTRY_VERSION => At::Whole {
                seq: Some(seq),
                start: at + HEADER,
                len,
            },
            other => At::Newer(other),
        };
    }
    if rest.len() < HEADER_V1 {
        return At::Bad;
    }
    let (len, crc) = (u32_at(rest, 0), u32_at(rest, 4));
    // No entry is empty: a zero length is what a file extended before its data landed
    // reads as.
    if len == 0 || len > MAX_ENTRY || rest.len() - HEADER_V1 < len as usize {
        return At::Bad;
    }
    if crc32fast::hash(&rest[HEADER_V1..HEADER_V1 + len as usize]) != crc {
        return At::Bad;
    }
    At::Whole {
        seq: None,
        start: at + HEADER_V1,
        len,
    }
}

/// The next position after `from` where a whole entry of the current format starts.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER <= bytes.len() {
        let found = bytes[at..].windows(4).position(|w| w == MAGIC)?;
        at += found;
        if matches!(parse_at(bytes, at), At::Whole { .. } | At::Newer(_)) {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// One whole entry found by [`scan`].
#[derive(Debug)]
pub struct Entry {
    pub loc: Loc,
    /// The seq its header names (entries of the first format name none).
    pub seq: Option<u64>,
    pub bytes: Vec<u8>,
}

/// What [`scan`] found, in order.
#[derive(Debug)]
pub enum Found {
    Entry(Entry),
    /// Bytes between two whole entries that are not one: one or more damaged entries.
    Damaged {
        offset: u64,
        len: u64,
    },
}

/// What [`scan`] found in one segment from a position on.
#[derive(Debug)]
pub struct Scanned {
    pub found: Vec<Found>,
    /// Where the last whole entry ends; anything after it is a torn or damaged tail.
    pub end: u64,
    /// The segment's length on disk.
    pub len: u64,
}

/// Reads the entries of `segment` from `offset` on, skipping damaged stretches to the
/// next whole entry. An entry of a newer format is an error: it is not damage.
pub fn scan(dir: &Path, segment: u64, offset: u64) -> io::Result<Scanned> {
    let mut bytes = Vec::new();
    File::open(segment_path(dir, segment))?.read_to_end(&mut bytes)?;
    scan_bytes(&bytes, segment, offset)
}

/// [`scan`] over a segment's bytes already read (the fuzzer feeds it arbitrary ones).
pub fn scan_bytes(bytes: &[u8], segment: u64, offset: u64) -> io::Result<Scanned> {
    let len = bytes.len() as u64;
    let mut at = offset.min(len) as usize;
    let mut end = at;
    let mut found = Vec::new();
    while at < bytes.len() {
        match parse_at(bytes, at) {
            At::Whole { seq, start, len } => {
                if at > end {
                    found.push(Found::Damaged {
                        offset: end as u64,
                        len: (at - end) as u64,
                    });
                }
                let loc = Loc {
                    segment,
                    offset: at as u64,
                    len,
                };
                let entry_end = start + len as usize;
                found.push(Found::Entry(Entry {
                    loc,
                    seq,
                    bytes: bytes[start..entry_end].to_vec(),
                }));
                at = entry_end;
                end = at;
            }
            At::Newer(version) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "segment {segment} offset {at} holds an entry of format {version}, written by a newer hookgate; this build reads format {ENTRY_VERSION} and older"
                    ),
                ))
            }
            At::Bad => match resync(bytes, at + 1) {
                Some(next) => at = next,
                None => break,
            },
        }
    }
    Ok(Scanned {
        found,
        end: end as u64,
        len,
    })
}

/// The writing end, owned by the committer.
pub struct Writer {
    dir: PathBuf,
    segment: u64,
    file: Arc<File>,
    /// Bytes in the segment, including what is still pending.
    len: u64,
    /// Entries appended since the last [`Writer::write`], and where they start.
    pending: Vec<u8>,
    pending_at: u64,
    /// Segments written since the last [`Writer::take_unsynced`].
    unsynced: Vec<Arc<File>>,
    /// The next segment, being created (and its directory entry synced) on a thread of
    /// its own once this one is half full, so that a rotation does not stall a group.
    next: Option<std::thread::JoinHandle<io::Result<File>>>,
    /// A segment is closed once it holds this much.
    segment_bytes: u64,
}

/// Creates segment `n` and makes its directory entry durable. A retired segment, when
/// there is one, becomes segment `n`: appends then overwrite blocks that were written
/// long ago, and their `fdatasync` has no new size or blocks to commit (on ext4 it takes
/// about half as long as one that appends). What it held before stays readable past
/// what is written into it, so readers check each entry's seq against the one expected
/// ([`Reader::read`], [`first_seq`], and recovery's check of consecutive seqs).
fn create(dir: &Path, n: u64) -> io::Result<File> {
    let path = segment_path(dir, n);
    if let Some(free) = free_segments(dir)?.first() {
        // Never over a segment of that name (a journal opened again after a failed
        // write may have made it while this was pending).
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            free_path(dir, *free),
            rustix::fs::CWD,
            &path,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                sync_dir(dir)?;
                tracing::debug!(segment = n, retired = free, "commit log segment reused");
                return OpenOptions::new().read(true).write(true).open(&path);
            }
            Err(e) if e == rustix::io::Errno::EXIST => return Err(e.into()),
            // Deleted meanwhile (the disk is short of space), or a filesystem that
            // cannot rename this way: a new file.
            Err(_) => {}
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    sync_dir(dir)?;
    Ok(file)
}

/// The seq that the first entry of `segment` names, if it is a whole entry of the
/// current format. A segment whose first entry is older than its predecessor's first was
/// retired and taken for reuse, and nothing was written into it yet.
pub fn first_seq(dir: &Path, segment: u64) -> io::Result<Option<u64>> {
    let file = File::open(segment_path(dir, segment))?;
    let mut header = [0u8; HEADER];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if header[..4] != MAGIC {
        return Ok(None);
    }
    let len = u32_at(&header, 16);
    if len == 0 || len > MAX_ENTRY || u64::from(len) + HEADER as u64 > file.metadata()?.len() {
        return Ok(None);
    }
    let mut bytes = vec![0u8; HEADER + len as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(match parse_at(&bytes, 0) {
        At::Whole { seq, .. } => seq,
        At::Newer(_) | At::Bad => None,
    })
}

/// What the pending buffer keeps of its capacity after a large group.
const PENDING_KEEP: usize = 1 << 20;

impl Writer {
    /// [`Writer::open_sized`] with the default segment size.
    #[cfg(test)]
    pub fn open(dir: &Path, last: Option<(u64, u64)>) -> io::Result<Writer> {
        Writer::open_sized(dir, last, SEGMENT_BYTES)
    }

    /// Continues `segment` at `len` (cutting off anything after it), or starts segment 1
    /// when there is none; closes segments once they hold `segment_bytes`.
    pub fn open_sized(
        dir: &Path,
        last: Option<(u64, u64)>,
        segment_bytes: u64,
    ) -> io::Result<Writer> {
        let (segment, len) = last.unwrap_or((1, 0));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(segment_path(dir, segment))?;
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        sync_dir(dir)?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            segment,
            file: Arc::new(file),
            len,
            pending: Vec::with_capacity(PENDING_KEEP),
            pending_at: len,
            unsynced: Vec::new(),
            next: None,
            segment_bytes,
        })
    }

    /// Adds an entry to what the next [`Writer::write`] writes; answers where it will be.
    #[cfg(test)]
    pub fn append(&mut self, seq: u64, entry: &[u8]) -> io::Result<Loc> {
        self.append_with(seq, |buf| buf.extend_from_slice(entry))
    }

    /// Like `append`, with `encode` writing the entry's bytes straight into the pending
    /// buffer (no copy of its own).
    pub fn append_with(&mut self, seq: u64, encode: impl FnOnce(&mut Vec<u8>)) -> io::Result<Loc> {
        if self.len >= self.segment_bytes {
            self.rotate()?;
        } else if self.len >= self.segment_bytes / 2 && self.next.is_none() {
            let (dir, n) = (self.dir.clone(), self.segment + 1);
            self.next = std::thread::Builder::new()
                .name("journal-segment".into())
                .spawn(move || create(&dir, n))
                .ok();
        }
        let start = self.pending.len();
        self.pending.extend_from_slice(&MAGIC);
        self.pending.extend_from_slice(&[ENTRY_VERSION, 0, 0, 0]);
        self.pending.extend_from_slice(&seq.to_le_bytes());
        self.pending.extend_from_slice(&[0; 8]);
        encode(&mut self.pending);
        let size = self.pending.len() - start - HEADER;
        if size == 0 || size > MAX_ENTRY as usize {
            self.pending.truncate(start);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an entry of {size} bytes cannot be logged"),
            ));
        }
        self.pending[start + 16..start + 20].copy_from_slice(&(size as u32).to_le_bytes());
        let (header, body) = self.pending[start..].split_at(HEADER);
        let crc = entry_crc(header, body);
        self.pending[start + 20..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        let loc = Loc {
            segment: self.segment,
            offset: self.len,
            len: size as u32,
        };
        self.len += (HEADER + size) as u64;
        Ok(loc)
    }

    /// Writes what is pending (one system call); it is durable after the next sync of
    /// [`Writer::take_unsynced`]'s files. On failure nothing pending is kept: the group
    /// that held it is refused.
    pub fn write(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all_at(&self.pending, self.pending_at);
        self.pending.clear();
        if self.pending.capacity() > 4 * PENDING_KEEP {
            self.pending.shrink_to(PENDING_KEEP);
        }
        self.pending_at = self.len;
        if !self
            .unsynced
            .last()
            .is_some_and(|f| Arc::ptr_eq(f, &self.file))
        {
            self.unsynced.push(self.file.clone());
        }
        written
    }

    /// The segments written since the last call, for the flusher to sync.
    pub fn take_unsynced(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.unsynced)
    }

    /// Where the next entry goes.
    pub fn position(&self) -> (u64, u64) {
        (self.segment, self.len)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.write()?;
        self.start_next()
    }

    /// Continues in a new segment after the current one, without writing what is
    /// pending.
    pub fn start_next(&mut self) -> io::Result<()> {
        let next = self.segment + 1;
        let file = match self.next.take().map(|prepared| prepared.join()) {
            Some(Ok(Ok(file))) => file,
            // It was created and synced before failing, or not at all.
            Some(Ok(Err(_))) if segment_path(&self.dir, next).exists() => OpenOptions::new()
                .read(true)
                .write(true)
                .open(segment_path(&self.dir, next))?,
            Some(Ok(Err(e))) => return Err(e),
            // No thread could be started, or it panicked: create it here.
            Some(Err(_)) | None => create(&self.dir, next)?,
        };
        self.segment = next;
        self.file = Arc::new(file);
        self.len = 0;
        self.pending.clear();
        self.pending_at = 0;
        Ok(())
    }
}

/// After a failed write or sync: forgets everything written after `durable` (the log
/// position the last successful sync covered), which no answer covered and the kernel
/// may have dropped. The segment that holds `durable` is cut back to it and synced;
/// later segments are emptied. Nothing of the failed writes can then be read back
/// after the journal is opened again, so their seqs can be used again.
pub fn cut_back(dir: &Path, durable: (u64, u64)) -> io::Result<()> {
    for segment in segments(dir)? {
        if segment < durable.0 {
            continue;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir, segment))?;
        let keep = if segment == durable.0 { durable.1 } else { 0 };
        if file.metadata()?.len() > keep {
            file.set_len(keep)?;
            file.sync_all()?;
        }
    }
    Ok(())
}

/// Reads entries for any thread; keeps the segments it has opened.
pub struct Reader {
    dir: PathBuf,
    files: Mutex<HashMap<u64, Arc<File>>>,
}

fn damaged(loc: Loc, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "commit log entry at segment {} offset {} is damaged: {what}",
            loc.segment, loc.offset
        ),
    )
}

impl Reader {
    pub fn new(dir: &Path) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, segment: u64) -> io::Result<Option<Arc<File>>> {
        let mut files = self.files.lock().expect("reader lock");
        if let Some(file) = files.get(&segment) {
            return Ok(Some(file.clone()));
        }
        match File::open(segment_path(&self.dir, segment)) {
            Ok(file) => {
                let file = Arc::new(file);
                files.insert(segment, file.clone());
                Ok(Some(file))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The entry of `seq` at `loc`, or `None` when it is not (yet, or any longer) on
    /// disk whole. An entry that is there but damaged, or that holds another seq, is an
    /// error of kind `InvalidData`. (An entry of the first format names no seq: the
    /// caller checks the one its bytes hold.)
    pub fn read(&self, loc: Loc, seq: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = self.file(loc.segment)? else {
            return Ok(None);
        };
        let mut bytes = vec![0; HEADER + loc.len as usize];
        match file.read_exact_at(&mut bytes, loc.offset) {
            Ok(()) => {}
            // The last entry of a first-format segment is shorter than that.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                bytes.truncate(HEADER_V1 + loc.len as usize);
                match file.read_exact_at(&mut bytes, loc.offset) {
                    Ok(()) if bytes[..4] != MAGIC => {}
                    Ok(()) => return Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        match parse_at(&bytes, 0) {
            At::Whole {
                seq: found,
                start,
                len,
            } if len == loc.len => {
                if found.is_some_and(|found| found != seq) {
                    return Err(damaged(
                        loc,
                        format!("it holds seq {}, not {seq}", found.unwrap_or(0)),
                    ));
                }
                bytes.truncate(start + len as usize);
                Ok(Some(bytes.split_off(start)))
            }
            At::Whole { .. } | At::Bad => Err(damaged(loc, "its checksum does not match")),
            At::Newer(version) => Err(damaged(
                loc,
                format!("format {version} is newer than this build reads"),
            )),
        }
    }

    /// [`retire`]s a segment and drops any handle on it, including one a read opened
    /// meanwhile: the file becomes another segment.
    pub fn retire(&self, segment: u64, keep: bool) -> io::Result<()> {
        self.forget(segment);
        let retired = retire(&self.dir, segment, keep);
        self.forget(segment);
        retired
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Drops the open handle on a segment (it was cut back or emptied).
    pub fn forget(&self, segment: u64) {
        self.files.lock().expect("reader lock").remove(&segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(scanned: &Scanned) -> Vec<(Loc, Option<u64>, Vec<u8>)> {
        scanned
            .found
            .iter()
            .filter_map(|f| match f {
                Found::Entry(e) => Some((e.loc, e.seq, e.bytes.clone())),
                Found::Damaged { .. } => None,
            })
            .collect()
    }

    fn poke(dir: &Path, segment: u64, at: u64, bytes: &[u8]) {
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir, segment))
            .unwrap();
        file.write_all_at(bytes, at).unwrap();
    }

    #[test]
    fn entries_survive_and_a_torn_tail_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let a = writer.append(1, b"first").unwrap();
        let b = writer.append(2, b"second entry").unwrap();
        writer.write().unwrap();
        assert_eq!(writer.take_unsynced().len(), 1);
        let reader = Reader::new(dir.path());
        assert_eq!(reader.read(a, 1).unwrap().unwrap(), b"first");
        assert_eq!(reader.read(b, 2).unwrap().unwrap(), b"second entry");

        // Half an entry at the end, as a crash in the middle of a write leaves it.
        let (segment, end) = writer.position();
        poke(dir.path(), segment, end, b"HGLE\x02\0\0\0\x03");
        let scanned = scan(dir.path(), segment, 0).unwrap();
        assert_eq!(entries(&scanned).len(), 2);
        assert_eq!(scanned.found.len(), 2, "a torn tail is not a damaged entry");
        assert_eq!(scanned.end, end);
        assert_eq!(scanned.len, end + 9);
        let from_b = entries(&scan(dir.path(), segment, b.offset).unwrap());
        assert_eq!(from_b.len(), 1);
        assert_eq!(from_b[0].0, b);
        assert_eq!(from_b[0].1, Some(2));

        // Reopening at the end of the whole entries cuts the torn one off.
        let mut writer = Writer::open(dir.path(), Some((segment, scanned.end))).unwrap();
        let c = writer.append(3, b"third").unwrap();
        writer.write().unwrap();
        assert_eq!(c.offset, end);
        assert_eq!(entries(&scan(dir.path(), segment, 0).unwrap()).len(), 3);
    }

    #[test]
    fn a_damaged_entry_costs_that_entry_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let locs: Vec<Loc> = (1..=3)
            .map(|seq| {
                writer
                    .append(seq, format!("payload {seq}").as_bytes())
                    .unwrap()
            })
            .collect();
        writer.write().unwrap();
        poke(dir.path(), 1, locs[1].offset + HEADER as u64 + 2, b"X");
        let reader = Reader::new(dir.path());
        let err = reader.read(locs[1], 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("segment 1 offset"), "{err}");
        assert_eq!(reader.read(locs[2], 3).unwrap().unwrap(), b"payload 3");

        let scanned = scan(dir.path(), 1, 0).unwrap();
        let seqs: Vec<Option<u64>> = entries(&scanned).iter().map(|e| e.1).collect();
        assert_eq!(seqs, vec![Some(1), Some(3)]);
        assert!(matches!(
            scanned.found[1],
            Found::Damaged { offset, .. } if offset == locs[1].offset
        ));
        assert_eq!(scanned.end, scanned.len);

        // A damaged header, too.
        poke(dir.path(), 1, locs[2].offset + 9, b"\xff");
        let scanned = scan(dir.path(), 1, 0).unwrap();
        assert_eq!(entries(&scanned).len(), 1);
        assert_eq!(
            scanned.end, locs[1].offset,
            "nothing whole follows: a bad tail"
        );

        let beyond = Loc {
            offset: 10_000,
            ..locs[0]
        };
        assert_eq!(reader.read(beyond, 1).unwrap(), None);
    }

    #[test]
    fn a_read_checks_the_seq_the_entry_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let a = writer.append(7, b"seven").unwrap();
        writer.write().unwrap();
        let err = Reader::new(dir.path()).read(a, 8).unwrap_err();
        assert!(err.to_string().contains("holds seq 7, not 8"), "{err}");
    }

    #[test]
    fn first_format_entries_are_read_beside_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        // Two entries as the first format wrote them, then one of this format.
        let mut old = Vec::new();
        for body in [&b"old one"[..], b"old two"] {
            old.extend_from_slice(&(body.len() as u32).to_le_bytes());
            old.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            old.extend_from_slice(body);
        }
        std::fs::write(segment_path(dir.path(), 1), &old).unwrap();
        let mut writer = Writer::open(dir.path(), Some((1, old.len() as u64))).unwrap();
        let new = writer.append(3, b"new").unwrap();
        writer.write().unwrap();
        let scanned = scan(dir.path(), 1, 0).unwrap();
        let found = entries(&scanned);
        assert_eq!(found.len(), 3);
        assert_eq!((found[0].1, &found[0].2[..]), (None, &b"old one"[..]));
        assert_eq!(found[2].1, Some(3));
        let reader = Reader::new(dir.path());
        assert_eq!(reader.read(found[1].0, 2).unwrap().unwrap(), b"old two");
        assert_eq!(reader.read(new, 3).unwrap().unwrap(), b"new");
        // The last entry of an old segment reads too.
        let dir2 = tempfile::tempdir().unwrap();
        std::fs::write(segment_path(dir2.path(), 1), &old).unwrap();
        let last = entries(&scan(dir2.path(), 1, 0).unwrap())[1].0;
        assert_eq!(
            Reader::new(dir2.path()).read(last, 2).unwrap().unwrap(),
            b"old two"
        );
    }

    #[test]
    fn a_newer_format_is_refused_not_taken_for_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let a = writer.append(1, b"entry").unwrap();
        writer.write().unwrap();
        let mut header = [0u8; HEADER];
        File::open(segment_path(dir.path(), 1))
            .unwrap()
            .read_exact_at(&mut header, 0)
            .unwrap();
        header[4] = ENTRY_VERSION + 1;
        let crc = entry_crc(&header, b"entry");
        header[20..].copy_from_slice(&crc.to_le_bytes());
        poke(dir.path(), 1, 0, &header);
        let err = scan(dir.path(), 1, 0).unwrap_err();
        assert!(err.to_string().contains("newer hookgate"), "{err}");
        assert!(Reader::new(dir.path()).read(a, 1).is_err());
    }

    #[test]
    fn full_segments_rotate_to_a_prepared_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let entry = [7u8; 1000];
        let mut locs = Vec::new();
        // 4 entries fill a 4 KiB segment; the next is prepared once one is half full.
        for seq in 1..=10 {
            locs.push(writer.append(seq, &entry).unwrap());
            writer.write().unwrap();
        }
        assert_eq!(segments(dir.path()).unwrap(), vec![1, 2, 3]);
        assert_eq!(locs[0].segment, 1);
        assert_eq!(locs[5].segment, 2);
        assert_eq!(locs[9].segment, 3);
        assert_eq!(
            writer.take_unsynced().len(),
            3,
            "every segment written is synced"
        );
        let reader = Reader::new(dir.path());
        for (seq, loc) in (1..).zip(locs) {
            assert_eq!(reader.read(loc, seq).unwrap().unwrap(), entry);
        }
    }

    #[test]
    fn cutting_back_forgets_what_was_written_after_the_last_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let entry = [1u8; 1000];
        writer.append(1, &entry).unwrap();
        writer.write().unwrap();
        let durable = writer.position();
        // Later writes that a failed sync covered, into this segment and the next.
        for seq in 2..=6 {
            writer.append(seq, &entry).unwrap();
            writer.write().unwrap();
        }
        let abandoned = writer.position().0;
        assert!(abandoned > durable.0);
        drop(writer);
        cut_back(dir.path(), durable).unwrap();
        let first = scan(dir.path(), 1, 0).unwrap();
        assert_eq!(first.len, durable.1);
        assert_eq!(entries(&first).len(), 1);
        assert_eq!(scan(dir.path(), abandoned, 0).unwrap().len, 0);
    }

    #[test]
    fn segments_are_listed_in_order_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        for n in [3u64, 1, 2] {
            File::create(segment_path(dir.path(), n)).unwrap();
        }
        File::create(dir.path().join("other.txt")).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![1, 2, 3]);
        let reader = Reader::new(dir.path());
        reader.retire(2, true).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![1, 3]);
        assert_eq!(free_segments(dir.path()).unwrap(), vec![2]);
        reader.retire(1, true).unwrap();
        // Past KEEP_FREE retired segments, one more is deleted.
        reader.retire(3, true).unwrap();
        assert!(segments(dir.path()).unwrap().is_empty());
        assert_eq!(free_segments(dir.path()).unwrap(), vec![1, 2]);
        assert!(!segment_path(dir.path(), 3).exists());
        assert_eq!(drop_free(dir.path()).unwrap(), 2);
        assert!(free_segments(dir.path()).unwrap().is_empty());
        File::create(segment_path(dir.path(), 4)).unwrap();
        reader.retire(4, false).unwrap();
        assert!(free_segments(dir.path()).unwrap().is_empty());
        assert!(segments(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_retired_segment_never_takes_the_place_of_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segment_path(dir.path(), 5), b"live").unwrap();
        std::fs::write(free_path(dir.path(), 2), b"retired").unwrap();
        let err = create(dir.path(), 5).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(segment_path(dir.path(), 5)).unwrap(), b"live");
        assert_eq!(free_segments(dir.path()).unwrap(), vec![2]);
        create(dir.path(), 6).unwrap();
        assert_eq!(
            std::fs::read(segment_path(dir.path(), 6)).unwrap(),
            b"retired"
        );
        assert!(free_segments(dir.path()).unwrap().is_empty());
        // With none retired, a new file.
        create(dir.path(), 7).unwrap();
        assert_eq!(
            std::fs::metadata(segment_path(dir.path(), 7))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn a_retired_segment_is_written_over_and_its_former_entries_are_told_apart() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let entry = [7u8; 1000];
        let mut locs = Vec::new();
        for seq in 1..=5 {
            locs.push(writer.append(seq, &entry).unwrap());
            writer.write().unwrap();
        }
        // Segment 1 is full, 2 is being written; 1 is retired, and becomes segment 3
        // when 2 is half full.
        assert_eq!(locs[4].segment, 2);
        let reader = Reader::new(dir.path());
        let retired = std::fs::metadata(segment_path(dir.path(), 1))
            .unwrap()
            .ino();
        reader.retire(1, true).unwrap();
        for seq in 6..=8 {
            locs.push(writer.append(seq, &entry).unwrap());
            writer.write().unwrap();
        }
        // Fewer bytes than it held.
        for seq in 9..=11 {
            locs.push(writer.append(seq, &[9u8; 600]).unwrap());
            writer.write().unwrap();
        }
        let reused = (2..=4)
            .find(|n| {
                std::fs::metadata(segment_path(dir.path(), *n)).is_ok_and(|m| m.ino() == retired)
            })
            .expect("a later segment is the retired file");
        assert!(free_segments(dir.path()).unwrap().is_empty());
        // What was written into it reads back; what it held before is still there after
        // it, entries older than the log before them.
        let new: Vec<_> = (9..=11u64)
            .zip(&locs[8..])
            .filter(|(_, loc)| loc.segment == reused)
            .collect();
        assert!(!new.is_empty());
        for (seq, loc) in &new {
            assert_eq!(reader.read(**loc, *seq).unwrap().unwrap(), [9u8; 600]);
        }
        let scanned = scan(dir.path(), reused, 0).unwrap();
        let seqs: Vec<u64> = entries(&scanned).iter().filter_map(|e| e.1).collect();
        assert_eq!(
            &seqs[..new.len()],
            &new.iter().map(|n| n.0).collect::<Vec<_>>()[..]
        );
        assert!(
            seqs[new.len()..].iter().all(|seq| *seq < 9),
            "former entries follow: {seqs:?}"
        );
        assert_eq!(first_seq(dir.path(), reused).unwrap(), Some(new[0].0));
        // A read of a former entry's place under a new seq is refused.
        let former = entries(&scanned)[new.len()].0;
        assert!(reader.read(former, 11).is_err());
    }
}
