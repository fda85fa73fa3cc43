//! The commit log: append-only segment files that hold what each append wrote, and are
//! what an `accepted` waits for. Each group of appends is written with one `write` and
//! made durable with one `fdatasync`; sled, which holds the index (summaries, status,
//! dedup, ordering), is flushed in the background. After a crash, the entries past the
//! index's last flushed position are written into the index again ([`scan`]).
//!
//! A segment is `log/{n:016}.seg`. An entry is its length (u32, little endian), the
//! CRC-32 of its bytes (u32, little endian), then the bytes (a postcard
//! [`super::record::Created`]). A torn or damaged entry at the end of the last segment is
//! what a crash in the middle of a write leaves; it is cut off when the journal opens.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::record::Loc;

/// A segment is closed and a new one started once it holds this much.
#[cfg(not(test))]
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
#[cfg(test)]
const SEGMENT_BYTES: u64 = 4096;
const HEADER: usize = 8;
/// No entry is larger than this; a length beyond it is damage.
const MAX_ENTRY: u32 = 256 * 1024 * 1024;

pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016}.seg"))
}

/// The segments in `dir`, oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".seg")
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

/// What [`scan`] found in one segment from a position on.
pub struct Scanned {
    /// Each whole entry: where it is, and its bytes.
    pub entries: Vec<(Loc, Vec<u8>)>,
    /// Where the whole entries end; anything after it is torn or damaged.
    pub end: u64,
    /// The segment's length on disk.
    pub len: u64,
}

/// Reads the entries of `segment` from `offset` on, stopping at the first torn or
/// damaged one.
pub fn scan(dir: &Path, segment: u64, offset: u64) -> io::Result<Scanned> {
    let mut bytes = Vec::new();
    File::open(segment_path(dir, segment))?.read_to_end(&mut bytes)?;
    let len = bytes.len() as u64;
    let mut at = offset.min(len) as usize;
    let mut entries = Vec::new();
    while bytes.len() - at >= HEADER {
        let size = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let start = at + HEADER;
        // No entry is empty: a zero length is what a file extended before its data
        // landed reads as.
        if size == 0 || size > MAX_ENTRY || bytes.len() - start < size as usize {
            break;
        }
        let body = &bytes[start..start + size as usize];
        if crc32fast::hash(body) != crc {
            break;
        }
        entries.push((
            Loc {
                segment,
                offset: at as u64,
                len: size,
            },
            body.to_vec(),
        ));
        at = start + size as usize;
    }
    Ok(Scanned {
        entries,
        end: at as u64,
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
}

/// Creates segment `n` and makes its directory entry durable.
fn create(dir: &Path, n: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(dir, n))?;
    sync_dir(dir)?;
    Ok(file)
}

impl Writer {
    /// Continues `segment` at `len` (cutting off anything after it), or starts segment 1
    /// when there is none.
    pub fn open(dir: &Path, last: Option<(u64, u64)>) -> io::Result<Writer> {
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
            pending: Vec::with_capacity(1 << 20),
            pending_at: len,
            unsynced: Vec::new(),
            next: None,
        })
    }

    /// Adds an entry to what the next [`Writer::write`] writes; answers where it will be.
    #[cfg(test)]
    pub fn append(&mut self, entry: &[u8]) -> io::Result<Loc> {
        self.append_with(|buf| buf.extend_from_slice(entry))
    }

    /// Like `append`, with `encode` writing the entry's bytes straight into the pending
    /// buffer (no copy of its own).
    pub fn append_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> io::Result<Loc> {
        if self.len >= SEGMENT_BYTES {
            self.rotate()?;
        } else if self.len >= SEGMENT_BYTES / 2 && self.next.is_none() {
            let (dir, n) = (self.dir.clone(), self.segment + 1);
            self.next = std::thread::Builder::new()
                .name("journal-segment".into())
                .spawn(move || create(&dir, n))
                .ok();
        }
        let start = self.pending.len();
        self.pending.extend_from_slice(&[0; HEADER]);
        encode(&mut self.pending);
        let size = self.pending.len() - start - HEADER;
        let crc = crc32fast::hash(&self.pending[start + HEADER..]);
        self.pending[start..start + 4].copy_from_slice(&(size as u32).to_le_bytes());
        self.pending[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        let loc = Loc {
            segment: self.segment,
            offset: self.len,
            len: size as u32,
        };
        self.len += (HEADER + size) as u64;
        Ok(loc)
    }

    /// Writes what is pending (one system call); it is durable after the next sync of
    /// [`Writer::take_unsynced`]'s files.
    pub fn write(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.pending, self.pending_at)?;
        self.pending.clear();
        self.pending_at = self.len;
        if !self
            .unsynced
            .last()
            .is_some_and(|f| Arc::ptr_eq(f, &self.file))
        {
            self.unsynced.push(self.file.clone());
        }
        Ok(())
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
        let next = self.segment + 1;
        let file = match self.next.take().map(|prepared| prepared.join()) {
            Some(Ok(Ok(file))) => file,
            Some(Ok(Err(e))) => return Err(e),
            // No thread could be started, or it panicked: create it here.
            Some(Err(_)) | None => create(&self.dir, next)?,
        };
        self.segment = next;
        self.file = Arc::new(file);
        self.len = 0;
        self.pending_at = 0;
        Ok(())
    }
}

/// Reads entries for any thread; keeps the segments it has opened.
pub struct Reader {
    dir: PathBuf,
    files: Mutex<HashMap<u64, Arc<File>>>,
}

impl Reader {
    pub fn new(dir: &Path) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// The entry at `loc`, or `None` when it is not (yet, or any longer) on disk whole.
    pub fn read(&self, loc: Loc) -> io::Result<Option<Vec<u8>>> {
        let file = {
            let mut files = self.files.lock().expect("reader lock");
            match files.get(&loc.segment) {
                Some(file) => file.clone(),
                None => match File::open(segment_path(&self.dir, loc.segment)) {
                    Ok(file) => {
                        let file = Arc::new(file);
                        files.insert(loc.segment, file.clone());
                        file
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                },
            }
        };
        let mut bytes = vec![0; HEADER + loc.len as usize];
        match file.read_exact_at(&mut bytes, loc.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let size = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        let body = bytes.split_off(HEADER);
        if size != loc.len || crc32fast::hash(&body) != crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "commit log entry at segment {} offset {} is damaged",
                    loc.segment, loc.offset
                ),
            ));
        }
        Ok(Some(body))
    }

    /// Deletes a segment nothing refers to any more.
    pub fn remove(&self, segment: u64) -> io::Result<()> {
        self.files.lock().expect("reader lock").remove(&segment);
        match std::fs::remove_file(segment_path(&self.dir, segment)) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_and_a_torn_tail_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let a = writer.append(b"first").unwrap();
        let b = writer.append(b"second entry").unwrap();
        writer.write().unwrap();
        assert_eq!(writer.take_unsynced().len(), 1);
        let reader = Reader::new(dir.path());
        assert_eq!(reader.read(a).unwrap().unwrap(), b"first");
        assert_eq!(reader.read(b).unwrap().unwrap(), b"second entry");

        // Half an entry at the end, as a crash in the middle of a write leaves it.
        let (segment, end) = writer.position();
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), segment))
            .unwrap();
        file.write_all_at(&[40, 0, 0, 0, 1, 2], end).unwrap();
        let scanned = scan(dir.path(), segment, 0).unwrap();
        assert_eq!(scanned.entries.len(), 2);
        assert_eq!(scanned.end, end);
        assert_eq!(scanned.len, end + 6);
        let from_b = scan(dir.path(), segment, b.offset).unwrap();
        assert_eq!(from_b.entries.len(), 1);
        assert_eq!(from_b.entries[0].0, b);

        // Reopening at the end of the whole entries cuts the torn one off.
        let mut writer = Writer::open(dir.path(), Some((segment, scanned.end))).unwrap();
        let c = writer.append(b"third").unwrap();
        writer.write().unwrap();
        assert_eq!(c.offset, end);
        assert_eq!(scan(dir.path(), segment, 0).unwrap().entries.len(), 3);
    }

    #[test]
    fn a_damaged_entry_is_an_error_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let a = writer.append(b"payload").unwrap();
        writer.write().unwrap();
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), a.segment))
            .unwrap();
        file.write_all_at(b"X", a.offset + HEADER as u64).unwrap();
        assert!(Reader::new(dir.path()).read(a).is_err());
        assert!(scan(dir.path(), a.segment, 0).unwrap().entries.is_empty());
        let beyond = Loc { offset: 1000, ..a };
        assert_eq!(Reader::new(dir.path()).read(beyond).unwrap(), None);
    }

    #[test]
    fn full_segments_rotate_to_a_prepared_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), None).unwrap();
        let entry = [7u8; 1000];
        let mut locs = Vec::new();
        // 5 entries fill a 4 KiB segment; the next is prepared once one is half full.
        for _ in 0..12 {
            locs.push(writer.append(&entry).unwrap());
            writer.write().unwrap();
        }
        assert_eq!(segments(dir.path()).unwrap(), vec![1, 2, 3]);
        assert_eq!(locs[0].segment, 1);
        assert_eq!(locs[5].segment, 2);
        assert_eq!(locs[11].segment, 3);
        assert_eq!(
            writer.take_unsynced().len(),
            3,
            "every segment written is synced"
        );
        let reader = Reader::new(dir.path());
        for loc in locs {
            assert_eq!(reader.read(loc).unwrap().unwrap(), entry);
        }
    }

    #[test]
    fn segments_are_listed_in_order_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        for n in [3u64, 1, 2] {
            File::create(segment_path(dir.path(), n)).unwrap();
        }
        File::create(dir.path().join("other.txt")).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![1, 2, 3]);
        Reader::new(dir.path()).remove(2).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![1, 3]);
    }
}
