//! The archive's write-ahead log: every accepted batch, tagged with the part
//! file it went into, until that file is renamed into place.
//!
//! Segments are `ROOT/.wal/<record>/wal-<seq>.log`, append-only. An entry is
//! `[u32 payload length][u64 xxh3 of payload][payload]`, the payload being
//! `[u16 length][part path relative to the record folder][Arrow IPC stream of
//! one batch]`. A torn or corrupt tail (power loss mid-append) ends the
//! reading of that segment; everything before it is used.
//!
//! Appends go straight to the disk (`O_DIRECT`) where the file system allows
//! it. Through the page cache, copying the log into the cache and writing it
//! back cost the archive thread about as much CPU as encoding the Parquet
//! files; direct I/O takes a fifth of that. Direct writes are whole blocks at
//! block offsets, so each append is padded with zeros to the next block, with
//! at least a header's worth of them: a reader meeting a header of zeros
//! skips to the next block.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use super::ArchiveError;

const HEADER: usize = 4 + 8;

/// Direct I/O moves whole blocks, from memory aligned like them, to file
/// offsets aligned like them. 4 KiB is the block size of the file systems
/// vigil runs on and a multiple of the disks' logical sector size.
const BLOCK: usize = 4096;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// Most blocks handed to the kernel in one call (a Linux `IOV_MAX` of 1024).
const MAX_IOVECS: usize = 1024;

pub(crate) struct Wal {
    dir: PathBuf,
    fsync: bool,
    /// Open new segments for direct I/O; cleared when the file system refuses it.
    direct: bool,
    /// The padded copy of an append, for direct I/O.
    blocks: Vec<Block>,
    /// The segment appended to; `None` after a failed append that could not be
    /// rolled back, until a new segment opens.
    active: Option<Segment>,
    next_seq: u64,
    /// Tests stand in for a disk that fails every append.
    #[cfg(test)]
    pub(crate) fail_appends: bool,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
    len: u64,
    opened: SystemTime,
    /// Opened with `O_DIRECT`: appends are padded whole blocks.
    direct: bool,
}

/// One entry read back: the part file (relative path) and its batch.
pub(crate) struct WalEntry {
    pub(crate) part: String,
    pub(crate) batch: RecordBatch,
}

impl Wal {
    /// Opens the log folder; existing segments are left for [`Wal::segments`] to replay.
    /// `direct`: write segments with direct I/O where the file system allows it.
    pub(crate) fn open(dir: PathBuf, fsync: bool, direct: bool) -> Result<Self, ArchiveError> {
        fs::create_dir_all(&dir)
            .map_err(ArchiveError::io("create write-ahead log folder", &dir))?;
        let next_seq = list_segments(&dir)?.last().map_or(0, |(seq, _)| seq + 1);
        Ok(Wal {
            dir,
            fsync,
            direct: direct && cfg!(target_os = "linux"),
            blocks: Vec::new(),
            active: None,
            next_seq,
            #[cfg(test)]
            fail_appends: false,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn segments(&self) -> Result<Vec<(u64, PathBuf)>, ArchiveError> {
        list_segments(&self.dir)
    }

    /// Sequence number that the next append goes to (opening no file).
    pub(crate) fn current_seq(&self) -> u64 {
        self.active.as_ref().map_or(self.next_seq, |s| s.seq)
    }

    pub(crate) fn active_len(&self) -> u64 {
        self.active.as_ref().map_or(0, |s| s.len)
    }

    pub(crate) fn active_opened(&self) -> Option<SystemTime> {
        self.active.as_ref().map(|s| s.opened)
    }

    /// Encodes one entry into `buf` (entries of one `write` call are appended together).
    pub(crate) fn encode(
        buf: &mut Vec<u8>,
        part: &str,
        batch: &RecordBatch,
    ) -> Result<(), ArchiveError> {
        let start = buf.len();
        buf.extend_from_slice(&[0u8; HEADER]);
        let name_len = u16::try_from(part.len()).expect("part paths are short");
        buf.extend_from_slice(&name_len.to_le_bytes());
        buf.extend_from_slice(part.as_bytes());
        let ipc_err = |source| ArchiveError::WalDecode {
            path: PathBuf::from(part),
            source,
        };
        let mut w = StreamWriter::try_new(&mut *buf, batch.schema_ref()).map_err(ipc_err)?;
        w.write(batch).map_err(ipc_err)?;
        w.finish().map_err(ipc_err)?;
        drop(w);
        let payload_len = buf.len() - start - HEADER;
        let len = u32::try_from(payload_len).map_err(|_| {
            ArchiveError::Config(format!(
                "a batch of {payload_len} bytes is too large for one write"
            ))
        })?;
        let sum = xxhash_rust::xxh3::xxh3_64(&buf[start + HEADER..]);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + HEADER].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    }

    /// Appends encoded entries and (if configured) fsyncs. On failure the
    /// segment is rolled back to its previous length, so a failed append
    /// leaves nothing behind: the batch was not accepted.
    pub(crate) fn append(&mut self, bytes: &[u8], now: SystemTime) -> Result<(), ArchiveError> {
        if self.active.is_none() {
            self.start_segment(now)?;
        }
        let seg = self.active.as_mut().expect("a segment was just opened");
        #[cfg(test)]
        if self.fail_appends {
            return Err(ArchiveError::io("append to write-ahead log", &seg.path)(
                std::io::Error::other("the test's disk fails"),
            ));
        }
        let written = if seg.direct {
            let n = pad_blocks(&mut self.blocks, bytes);
            match write_blocks(&seg.file, &self.blocks[..n]) {
                // Refused by the file system or the disk (alignment, O_DIRECT
                // itself): this and later segments go through the page cache.
                Err(e) if e.kind() == ErrorKind::InvalidInput && seg.len == 0 => {
                    tracing::warn!(path = %seg.path.display(), error = %e, "write-ahead log: direct I/O refused, writing through the page cache");
                    self.direct = false;
                    seg.direct = false;
                    reopen_buffered(seg)
                        .and_then(|()| seg.file.write_all(bytes))
                        .map(|()| bytes.len())
                }
                r => r.map(|()| n * BLOCK),
            }
        } else {
            seg.file.write_all(bytes).map(|()| bytes.len())
        };
        let result = written
            .and_then(|n| {
                let synced = if self.fsync {
                    seg.file.sync_data()
                } else {
                    Ok(())
                };
                synced.map(|()| n)
            })
            .map_err(ArchiveError::io("append to write-ahead log", &seg.path));
        super::writer::keep_room(&mut self.blocks);
        match result {
            Ok(n) => {
                seg.len += n as u64;
                Ok(())
            }
            Err(e) => {
                if seg.file.set_len(seg.len).is_err() {
                    // Cannot cut the partial entry off: retire the segment (its
                    // readable prefix stays valid) and start a fresh one next time.
                    tracing::warn!(path = %seg.path.display(), "write-ahead log segment retired after a failed append");
                    self.active = None;
                }
                Err(e)
            }
        }
    }

    /// Starts a new segment; later appends go there.
    pub(crate) fn rotate(&mut self, now: SystemTime) -> Result<(), ArchiveError> {
        self.active = None;
        self.start_segment(now)
    }

    fn start_segment(&mut self, now: SystemTime) -> Result<(), ArchiveError> {
        let seq = self.next_seq;
        let path = self.dir.join(format!("wal-{seq:012}.log"));
        let mut direct = self.direct;
        let file = match open_segment(&path, direct) {
            Err(e) if direct && e.kind() == ErrorKind::InvalidInput => {
                tracing::warn!(path = %path.display(), error = %e, "write-ahead log: the file system refuses direct I/O, writing through the page cache");
                self.direct = false;
                direct = false;
                open_segment(&path, false)
            }
            r => r,
        }
        .map_err(ArchiveError::io("create write-ahead log segment", &path))?;
        sync_dir(&self.dir)?;
        self.next_seq = seq + 1;
        self.active = Some(Segment {
            seq,
            path,
            file,
            len: 0,
            opened: now,
            direct,
        });
        Ok(())
    }

    /// Deletes every segment with a sequence number below `keep_from`.
    pub(crate) fn trim(&mut self, keep_from: u64) -> Result<(), ArchiveError> {
        for (seq, path) in list_segments(&self.dir)? {
            if seq >= keep_from {
                break;
            }
            if self.active.as_ref().is_some_and(|s| s.seq == seq) {
                self.active = None;
            }
            fs::remove_file(&path)
                .map_err(ArchiveError::io("delete write-ahead log segment", &path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// Tests stand in for a file system that refuses direct I/O: at open, or
    /// at the first write (any file system this machine has accepts it).
    static REFUSE_DIRECT: std::cell::Cell<Option<Refuse>> = const { std::cell::Cell::new(None) };
}

/// Where direct I/O can be refused (tests stand in for a file system that does).
#[derive(Clone, Copy, PartialEq)]
enum Refuse {
    Open,
    Write,
}

/// A refusal of direct I/O, as the kernel gives it (EINVAL).
#[cfg(test)]
fn refused(at: Refuse, direct: bool) -> std::io::Result<()> {
    match REFUSE_DIRECT.get() {
        Some(r) if r == at && direct => Err(ErrorKind::InvalidInput.into()),
        _ => Ok(()),
    }
}

#[cfg(not(test))]
fn refused(_: Refuse, _: bool) -> std::io::Result<()> {
    Ok(())
}

fn open_segment(path: &Path, direct: bool) -> std::io::Result<File> {
    refused(Refuse::Open, direct)?;
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_DIRECT);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = direct;
    options.open(path)
}

/// After direct I/O was refused on an empty segment: the same file, through the page cache.
fn reopen_buffered(seg: &mut Segment) -> std::io::Result<()> {
    seg.file = open_segment(&seg.path, false)?;
    Ok(())
}

/// Copies `bytes` into whole blocks followed by zeros, with at least
/// [`HEADER`] zero bytes after them unless they end on a block boundary:
/// where a reader looks for the next header it finds zeros, and skips to the
/// next block. Returns the number of blocks used.
fn pad_blocks(blocks: &mut Vec<Block>, bytes: &[u8]) -> usize {
    let mut len = bytes.len().next_multiple_of(BLOCK);
    if len - bytes.len() != 0 && len - bytes.len() < HEADER {
        len += BLOCK;
    }
    let n = len / BLOCK;
    if blocks.len() < n {
        blocks.resize(n, Block([0; BLOCK]));
    }
    let mut rest = bytes;
    for block in &mut blocks[..n] {
        let take = rest.len().min(BLOCK);
        block.0[..take].copy_from_slice(&rest[..take]);
        block.0[take..].fill(0);
        rest = &rest[take..];
    }
    n
}

/// Writes whole blocks with as few system calls as the kernel takes (one
/// per [`MAX_IOVECS`] blocks), resuming after a short write.
fn write_blocks(mut file: &File, blocks: &[Block]) -> std::io::Result<()> {
    refused(Refuse::Write, true)?;
    for chunk in blocks.chunks(MAX_IOVECS) {
        let mut slices: Vec<IoSlice> = chunk.iter().map(|b| IoSlice::new(&b.0)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match file.write_vectored(slices) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, ArchiveError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(ArchiveError::io("list write-ahead log folder", dir))? {
        let entry = entry.map_err(ArchiveError::io("list write-ahead log folder", dir))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Reads a segment's entries, stopping (with a warning) at a torn or corrupt tail.
pub(crate) fn read_segment(path: &Path) -> Result<Vec<WalEntry>, ArchiveError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(ArchiveError::io("read write-ahead log segment", path))?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        // Padding after a direct append (or a block never written): go on at the next block.
        if bytes[pos..].iter().take(HEADER).all(|&b| b == 0) {
            pos = (pos / BLOCK + 1) * BLOCK;
            continue;
        }
        match decode_entry(&bytes[pos..]) {
            Some((entry, used)) => {
                out.push(entry);
                pos += used;
            }
            None => {
                tracing::warn!(
                    path = %path.display(),
                    offset = pos,
                    ignored_bytes = bytes.len() - pos,
                    "write-ahead log ends in a torn or corrupt entry; using what precedes it"
                );
                break;
            }
        }
    }
    Ok(out)
}

fn decode_entry(bytes: &[u8]) -> Option<(WalEntry, usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(bytes.get(4..HEADER)?.try_into().ok()?);
    let payload = bytes.get(HEADER..HEADER + len)?;
    if xxhash_rust::xxh3::xxh3_64(payload) != sum {
        return None;
    }
    let name_len = u16::from_le_bytes(payload.get(..2)?.try_into().ok()?) as usize;
    let part = std::str::from_utf8(payload.get(2..2 + name_len)?)
        .ok()?
        .to_string();
    let mut reader = StreamReader::try_new(payload.get(2 + name_len..)?, None).ok()?;
    let batch = reader.next()?.ok()?;
    Some((WalEntry { part, batch }, HEADER + len))
}

/// fsyncs a directory so a create, rename or delete in it survives a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ArchiveError::io("fsync folder", dir))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};

    use super::*;

    fn batch(rows: i64) -> RecordBatch {
        let col: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows));
        RecordBatch::try_from_iter([("n", col)]).unwrap()
    }

    /// A part name that makes the encoded entry end `residue` bytes past a block boundary.
    fn part_for_residue(residue: usize) -> String {
        let mut buf = Vec::new();
        Wal::encode(&mut buf, "p", &batch(3)).unwrap();
        let shift = (residue + BLOCK - buf.len() % BLOCK) % BLOCK;
        format!("p{}", "x".repeat(shift))
    }

    fn append_entries(wal: &mut Wal, entries: &[(String, RecordBatch)]) {
        let mut buf = Vec::new();
        for (part, b) in entries {
            Wal::encode(&mut buf, part, b).unwrap();
        }
        wal.append(&buf, SystemTime::now()).unwrap();
    }

    fn check_read_back(path: &Path, expect: &[(String, RecordBatch)]) {
        let got = read_segment(path).unwrap();
        let got: Vec<(String, RecordBatch)> = got.into_iter().map(|e| (e.part, e.batch)).collect();
        assert_eq!(got.len(), expect.len());
        for (g, e) in got.iter().zip(expect) {
            assert_eq!(g, e);
        }
    }

    #[test]
    fn direct_appends_are_whole_blocks_and_read_back_whatever_their_padding() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path().to_path_buf(), true, true).unwrap();
        // Entries ending on a boundary, one byte short of it, with exactly a
        // header's room before it, one byte less than that, and far from it.
        let mut expect = Vec::new();
        for residue in [0, BLOCK - 1, BLOCK - HEADER, BLOCK - HEADER + 1, 100] {
            let entry = (part_for_residue(residue), batch(3));
            append_entries(&mut wal, std::slice::from_ref(&entry));
            expect.push(entry);
        }
        // Several entries in one append, and a large one.
        let before_last = wal.active_len();
        let two = [
            ("a".to_string(), batch(1)),
            ("b".to_string(), batch(70_000)),
        ];
        append_entries(&mut wal, &two);
        expect.extend(two);
        let path = wal.active.as_ref().unwrap().path.clone();
        let len = fs::metadata(&path).unwrap().len();
        assert_eq!(len, wal.active_len());
        if cfg!(target_os = "linux") {
            // Direct I/O on this file system (tempdir: ext4, xfs or btrfs on
            // the machines vigil is built on): every append is whole blocks.
            assert!(
                wal.active.as_ref().unwrap().direct,
                "direct I/O refused in {}",
                dir.path().display()
            );
            assert_eq!(len % BLOCK as u64, 0);
        }
        check_read_back(&path, &expect);

        // A block that was never written (zeros) ends the log quietly; an
        // append torn in its first entry ends it with what precedes.
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        f.set_len(len + BLOCK as u64).unwrap();
        check_read_back(&path, &expect);
        f.set_len(before_last + (HEADER + 100) as u64).unwrap();
        check_read_back(&path, &expect[..expect.len() - 2]);
    }

    #[test]
    fn without_direct_io_entries_are_not_padded() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path().to_path_buf(), false, false).unwrap();
        let entries = [("a".to_string(), batch(5)), ("b".to_string(), batch(7))];
        let mut buf = Vec::new();
        for (p, b) in &entries {
            Wal::encode(&mut buf, p, b).unwrap();
        }
        wal.append(&buf, SystemTime::now()).unwrap();
        let path = wal.active.as_ref().unwrap().path.clone();
        assert_eq!(fs::metadata(&path).unwrap().len(), buf.len() as u64);
        check_read_back(&path, &entries);
    }

    #[test]
    fn a_file_system_refusing_direct_io_gets_buffered_writes() {
        if !cfg!(target_os = "linux") {
            eprintln!("skipped: direct I/O is only used on Linux");
            return;
        }
        for at in [Refuse::Open, Refuse::Write] {
            REFUSE_DIRECT.set(Some(at));
            let dir = tempfile::tempdir().unwrap();
            let mut wal = Wal::open(dir.path().to_path_buf(), true, true).unwrap();
            let entries = [("a".to_string(), batch(5))];
            append_entries(&mut wal, &entries);
            assert!(!wal.direct && !wal.active.as_ref().unwrap().direct);
            let path = wal.active.as_ref().unwrap().path.clone();
            // Written once, unpadded, through the page cache.
            let mut buf = Vec::new();
            Wal::encode(&mut buf, "a", &batch(5)).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().len(), buf.len() as u64);
            check_read_back(&path, &entries);
            // Later segments do not try again.
            wal.rotate(SystemTime::now()).unwrap();
            append_entries(&mut wal, &entries);
            assert!(!wal.active.as_ref().unwrap().direct);
            REFUSE_DIRECT.set(None);
        }
    }

    #[test]
    fn padding_leaves_room_for_a_header_of_zeros() {
        let mut blocks = Vec::new();
        for len in [
            1,
            BLOCK - HEADER,
            BLOCK - HEADER + 1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
        ] {
            let bytes = vec![7u8; len];
            let n = pad_blocks(&mut blocks, &bytes);
            let gap = n * BLOCK - len;
            assert!(gap == 0 || gap >= HEADER, "{len}: gap {gap}");
            assert!(gap < BLOCK + HEADER, "{len}: gap {gap}");
            let flat: Vec<u8> = blocks[..n].iter().flat_map(|b| b.0).collect();
            assert_eq!(&flat[..len], &bytes[..]);
            assert!(flat[len..].iter().all(|&b| b == 0));
        }
    }
}
