//! The archive's write-ahead log: every accepted batch, tagged with the part
//! file it went into, until that file is renamed into place.
//!
//! Segments are `ROOT/.wal/<record>/wal-<seq>.log`, append-only. An entry is
//! `[u32 payload length][u64 xxh3 of payload][payload]`, the payload being
//! `[u16 length][part path relative to the record folder][Arrow IPC stream of
//! one batch]`. A torn or corrupt tail (power loss mid-append) ends the
//! reading of that segment; everything before it is used.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use super::ArchiveError;

const HEADER: usize = 4 + 8;

pub(crate) struct Wal {
    dir: PathBuf,
    fsync: bool,
    /// The segment appended to; `None` after a failed append that could not be
    /// rolled back, until a new segment opens.
    active: Option<Segment>,
    next_seq: u64,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
    len: u64,
    opened: SystemTime,
}

/// One entry read back: the part file (relative path) and its batch.
pub(crate) struct WalEntry {
    pub(crate) part: String,
    pub(crate) batch: RecordBatch,
}

impl Wal {
    /// Opens the log folder; existing segments are left for [`Wal::segments`] to replay.
    pub(crate) fn open(dir: PathBuf, fsync: bool) -> Result<Self, ArchiveError> {
        fs::create_dir_all(&dir)
            .map_err(ArchiveError::io("create write-ahead log folder", &dir))?;
        let next_seq = list_segments(&dir)?.last().map_or(0, |(seq, _)| seq + 1);
        Ok(Wal {
            dir,
            fsync,
            active: None,
            next_seq,
        })
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
        let result = seg
            .file
            .write_all(bytes)
            .and_then(|()| {
                if self.fsync {
                    seg.file.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(ArchiveError::io("append to write-ahead log", &seg.path));
        match result {
            Ok(()) => {
                seg.len += bytes.len() as u64;
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
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(ArchiveError::io("create write-ahead log segment", &path))?;
        sync_dir(&self.dir)?;
        self.next_seq = seq + 1;
        self.active = Some(Segment {
            seq,
            path,
            file,
            len: 0,
            opened: now,
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
