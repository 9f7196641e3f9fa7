//! The alert spool: every alert bound for Kafka is appended here (and fsync'd)
//! before the producer sees it, and leaves only once the broker has
//! acknowledged it.
//!
//! On disk, a folder of segment files named after the sequence number of
//! their first record (`00000000000000000042.spool`) plus `acked`, the
//! sequence number of the first record not yet acknowledged. A record is
//! `u32 length | u64 xxh3-64 of the payload | payload` (little endian), the
//! payload being the alert JSON. Segments are append-only; a segment is
//! deleted once all its records are acknowledged, and a drained spool starts a
//! fresh segment. On open a torn or corrupt tail (a crash mid-append) is cut
//! off; the records before it are kept.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::KafkaError;

/// Bytes before each record's payload: length and checksum.
pub const RECORD_HEADER_BYTES: u64 = 12;
/// Largest payload the spool accepts; anything larger on disk is corruption.
const MAX_RECORD_BYTES: u32 = 64 << 20;
const SEGMENT_SUFFIX: &str = ".spool";
const CURSOR_FILE: &str = "acked";
/// A drained segment at least this long is replaced by a fresh one.
const ROTATE_DRAINED_BYTES: u64 = 1 << 20;

struct Segment {
    base: u64,
    path: PathBuf,
    file: File,
    len: u64,
    /// Offset of each record's header and its payload length.
    records: Vec<(u64, u32)>,
}

impl Segment {
    fn end(&self) -> u64 {
        self.base + self.records.len() as u64
    }
}

/// An append-only, checksummed, size-bounded queue of alert payloads on disk.
pub struct AlertSpool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one is the segment appended to. Never empty.
    segments: VecDeque<Segment>,
    /// Sequence number of the first record not yet acknowledged.
    acked: u64,
    /// Bytes (headers included) of the records not yet acknowledged.
    pending_bytes: u64,
    buf: Vec<u8>,
}

impl AlertSpool {
    /// Opens the spool in `dir` (creating it), keeping every intact record of
    /// an earlier run that was not acknowledged.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, KafkaError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(spool_err("create", &dir))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(spool_err("list", &dir))? {
            let entry = entry.map_err(spool_err("list", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|b| b.parse::<u64>().ok())
            {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let cursor = read_cursor(&dir.join(CURSOR_FILE));
        let mut spool = AlertSpool {
            segment_bytes: (max_bytes / 8).clamp(1 << 16, 64 << 20),
            dir,
            max_bytes,
            segments: VecDeque::new(),
            acked: 0,
            pending_bytes: 0,
            buf: Vec::new(),
        };
        for base in bases {
            let seg = spool.open_segment(base)?;
            if let Some(prev) = spool.segments.back() {
                if prev.end() != base {
                    tracing::warn!(spool = %spool.dir.display(), expected = prev.end(), found = base,
                        "kafka spool segments are not contiguous; keeping both");
                }
            }
            spool.segments.push_back(seg);
        }
        if spool.segments.is_empty() {
            let seg = spool.create_segment(cursor.unwrap_or(0))?;
            spool.segments.push_back(seg);
        }
        let first = spool.segments.front().expect("at least one segment").base;
        let end = spool.next_seq();
        spool.acked = match cursor {
            Some(c) => c.clamp(first, end),
            None => {
                if end > first {
                    tracing::warn!(spool = %spool.dir.display(),
                        "kafka spool has no valid acknowledgement cursor; resending all {} spooled alerts", end - first);
                }
                first
            }
        };
        spool.pending_bytes = spool
            .segments
            .iter()
            .flat_map(|s| {
                s.records
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (s.base + i as u64, r))
            })
            .filter(|(seq, _)| *seq >= spool.acked)
            .map(|(_, (_, len))| RECORD_HEADER_BYTES + u64::from(*len))
            .sum();
        spool.drop_acked_segments(true)?;
        Ok(spool)
    }

    /// Appends payloads as one write and one fsync: all of them are on disk
    /// when this returns `Ok`, none of them when it fails.
    pub fn append<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<(), KafkaError> {
        if payloads.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        let mut lens = Vec::with_capacity(payloads.len());
        for p in payloads {
            let p = p.as_ref();
            let len = u32::try_from(p.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD_BYTES)
                .ok_or(KafkaError::RecordTooLarge { bytes: p.len() })?;
            self.buf.extend_from_slice(&len.to_le_bytes());
            self.buf.extend_from_slice(&xxh3_64(p).to_le_bytes());
            self.buf.extend_from_slice(p);
            lens.push(len);
        }
        let batch = self.buf.len() as u64;
        if self.pending_bytes + batch > self.max_bytes {
            return Err(KafkaError::SpoolFull {
                dir: self.dir.clone(),
                pending_bytes: self.pending_bytes,
                batch_bytes: batch,
                max_bytes: self.max_bytes,
            });
        }
        let active = self.segments.back().expect("at least one segment");
        if active.len > 0 && active.len + batch > self.segment_bytes {
            let seg = self.create_segment(active.end())?;
            self.segments.push_back(seg);
        }
        let seg = self.segments.back_mut().expect("at least one segment");
        let start = seg.len;
        let result = seg
            .file
            .write_all(&self.buf)
            .and_then(|()| seg.file.sync_data());
        if let Err(source) = result {
            // Cut a partial batch off so the next append starts at a record boundary.
            if let Err(e) = seg.file.set_len(start) {
                tracing::error!(path = %seg.path.display(), error = %e, "cannot cut a failed append off the kafka spool");
            }
            return Err(KafkaError::Spool {
                op: "append to",
                path: seg.path.clone(),
                source,
            });
        }
        let mut offset = start;
        for len in lens {
            seg.records.push((offset, len));
            offset += RECORD_HEADER_BYTES + u64::from(len);
        }
        seg.len = offset;
        self.pending_bytes += batch;
        Ok(())
    }

    /// Reads up to `max_records` payloads starting at sequence number `from`
    /// (at least one when any is there, whatever its size, then up to `max_bytes`).
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, KafkaError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut seq = from.max(self.first_seq());
        let first_seg = self.segments.partition_point(|s| s.end() <= seq);
        for seg in self.segments.range(first_seg..) {
            while seq < seg.end()
                && out.len() < max_records
                && (out.is_empty() || bytes < max_bytes)
            {
                let Some(&(offset, len)) = seq
                    .checked_sub(seg.base)
                    .and_then(|i| seg.records.get(i as usize))
                else {
                    // A gap between segments (only after outside tampering): skip to this one.
                    seq = seg.base;
                    continue;
                };
                let mut payload = vec![0u8; len as usize];
                seg.file
                    .read_exact_at(&mut payload, offset + RECORD_HEADER_BYTES)
                    .map_err(spool_err("read", &seg.path))?;
                bytes += payload.len();
                out.push((seq, payload));
                seq += 1;
            }
            if out.len() >= max_records || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
        }
        Ok(out)
    }

    /// Records that everything before `cursor` is acknowledged: persists the
    /// cursor and deletes segments nothing in the spool needs any more.
    pub fn ack(&mut self, cursor: u64) -> Result<(), KafkaError> {
        let cursor = cursor.min(self.next_seq());
        if cursor <= self.acked {
            return Ok(());
        }
        for seg in &self.segments {
            for (i, (_, len)) in seg.records.iter().enumerate() {
                let seq = seg.base + i as u64;
                if seq >= self.acked && seq < cursor {
                    self.pending_bytes -= RECORD_HEADER_BYTES + u64::from(*len);
                }
            }
        }
        self.acked = cursor;
        write_cursor(&self.dir, cursor)?;
        self.drop_acked_segments(false)
    }

    /// Deletes fully acknowledged segments; a drained spool restarts in a new
    /// segment when the old one is large (or `always_rotate` is set).
    fn drop_acked_segments(&mut self, always_rotate: bool) -> Result<(), KafkaError> {
        let active = self.segments.back().expect("at least one segment");
        if self.acked == active.end()
            && active.len > 0
            && (always_rotate || active.len >= ROTATE_DRAINED_BYTES)
        {
            let seg = self.create_segment(active.end())?;
            self.segments.push_back(seg);
        }
        while self.segments.len() > 1 && self.segments[0].end() <= self.acked {
            let seg = self.segments.pop_front().expect("checked above");
            if let Err(e) = fs::remove_file(&seg.path) {
                tracing::warn!(path = %seg.path.display(), error = %e, "cannot delete an acknowledged kafka spool segment");
            }
        }
        Ok(())
    }

    fn create_segment(&self, base: u64) -> Result<Segment, KafkaError> {
        let path = self.dir.join(format!("{base:020}{SEGMENT_SUFFIX}"));
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(spool_err("create", &path))?;
        // A leftover of the same name holds nothing anyone needs (its records are acknowledged).
        file.set_len(0).map_err(spool_err("truncate", &path))?;
        sync_dir(&self.dir)?;
        Ok(Segment {
            base,
            path,
            file,
            len: 0,
            records: Vec::new(),
        })
    }

    fn open_segment(&self, base: u64) -> Result<Segment, KafkaError> {
        let path = self.dir.join(format!("{base:020}{SEGMENT_SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(spool_err("open", &path))?;
        let file_len = file.metadata().map_err(spool_err("stat", &path))?.len();
        let mut records = Vec::new();
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut offset = 0u64;
        let mut payload = Vec::new();
        loop {
            let mut header = [0u8; RECORD_HEADER_BYTES as usize];
            match read_full(&mut reader, &mut header) {
                Ok(0) => break,
                Ok(n) if n < header.len() => break,
                Ok(_) => {}
                Err(e) => return Err(spool_err("read", &path)(e)),
            }
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            let sum = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
            if len > MAX_RECORD_BYTES {
                break;
            }
            payload.resize(len as usize, 0);
            match read_full(&mut reader, &mut payload) {
                Ok(n) if n == payload.len() => {}
                Ok(_) => break,
                Err(e) => return Err(spool_err("read", &path)(e)),
            }
            if xxh3_64(&payload) != sum {
                break;
            }
            records.push((offset, len));
            offset += RECORD_HEADER_BYTES + u64::from(len);
        }
        drop(reader);
        if offset < file_len {
            tracing::warn!(path = %path.display(), kept = records.len(), cut_bytes = file_len - offset,
                "kafka spool segment ends in a torn or corrupt record; cutting it off");
            file.set_len(offset).map_err(spool_err("truncate", &path))?;
            file.sync_data().map_err(spool_err("sync", &path))?;
        }
        Ok(Segment {
            base,
            path,
            file,
            len: offset,
            records,
        })
    }

    /// Sequence number the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.segments.back().expect("at least one segment").end()
    }

    /// Sequence number of the oldest record still on disk.
    fn first_seq(&self) -> u64 {
        self.segments.front().expect("at least one segment").base
    }

    /// Sequence number of the first record not yet acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Records not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.next_seq() - self.acked
    }

    /// Bytes of the records not yet acknowledged (what `max_bytes` bounds).
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// The spool folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn spool_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KafkaError {
    let path = path.to_path_buf();
    move |source| KafkaError::Spool { op, path, source }
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_cursor(path: &Path) -> Option<u64> {
    let bytes = fs::read(path).ok()?;
    let bytes: [u8; 16] = bytes.try_into().ok()?;
    let (value, sum) = bytes.split_at(8);
    (xxh3_64(value).to_le_bytes() == sum)
        .then(|| u64::from_le_bytes(value.try_into().expect("8 bytes")))
}

fn write_cursor(dir: &Path, cursor: u64) -> Result<(), KafkaError> {
    let tmp = dir.join(format!("{CURSOR_FILE}.tmp"));
    let value = cursor.to_le_bytes();
    let mut bytes = value.to_vec();
    bytes.extend_from_slice(&xxh3_64(&value).to_le_bytes());
    let mut f = File::create(&tmp).map_err(spool_err("create", &tmp))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_data())
        .map_err(spool_err("write", &tmp))?;
    let path = dir.join(CURSOR_FILE);
    fs::rename(&tmp, &path).map_err(spool_err("replace", &path))
}

fn sync_dir(dir: &Path) -> Result<(), KafkaError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(spool_err("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        range
            .map(|i| format!("{{\"id\":\"a{i}\"}}").into_bytes())
            .collect()
    }

    fn read_all(spool: &AlertSpool, from: u64) -> Vec<(u64, Vec<u8>)> {
        spool.read(from, usize::MAX, usize::MAX).unwrap()
    }

    #[test]
    fn appended_records_read_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&payloads(0..3)).unwrap();
        spool.append(&payloads(3..5)).unwrap();
        assert_eq!(spool.pending(), 5);
        drop(spool);
        let spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        let got = read_all(&spool, 0);
        assert_eq!(got.len(), 5);
        for (i, (seq, p)) in got.iter().enumerate() {
            assert_eq!(*seq, i as u64);
            assert_eq!(p, &payloads(0..5)[i]);
        }
        assert_eq!(spool.read(3, 1, usize::MAX).unwrap()[0].0, 3);
    }

    #[test]
    fn acknowledged_records_are_not_replayed_and_drained_segments_go_away() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&payloads(0..4)).unwrap();
        spool.ack(2).unwrap();
        assert_eq!(spool.pending(), 2);
        drop(spool);
        let mut spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.acked(), 2);
        let seqs: Vec<u64> = read_all(&spool, spool.acked())
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, [2, 3]);
        spool.ack(4).unwrap();
        assert_eq!((spool.pending(), spool.pending_bytes()), (0, 0));
        drop(spool);
        // Reopening a drained spool starts a fresh segment and deletes the old one.
        let spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.next_seq(), 4);
        let segments: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(SEGMENT_SUFFIX))
            .collect();
        assert_eq!(segments, ["00000000000000000004.spool"]);
    }

    #[test]
    fn segments_roll_and_are_deleted_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        // max 512 KiB -> 64 KiB segments; 100 records of ~1 KiB per append.
        let mut spool = AlertSpool::open(dir.path(), 512 << 10).unwrap();
        let big: Vec<Vec<u8>> = (0..100)
            .map(|i| vec![b'a' + (i % 26) as u8; 1000])
            .collect();
        for _ in 0..4 {
            spool.append(&big).unwrap();
        }
        let count = || {
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(SEGMENT_SUFFIX)
                })
                .count()
        };
        assert!(count() >= 4, "{}", count());
        assert_eq!(read_all(&spool, 0).len(), 400);
        spool.ack(250).unwrap();
        assert!(count() <= 3);
        assert_eq!(read_all(&spool, 250).len(), 150);
        assert_eq!(read_all(&spool, 250)[0].1, big[50]);
    }

    #[test]
    fn torn_tail_is_cut_off_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&payloads(0..3)).unwrap();
        let path = spool.segments.back().unwrap().path.clone();
        drop(spool);
        // A crash mid-append: a header promising more bytes than were written.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[0u8; 8]).unwrap();
        f.write_all(b"{\"id\":").unwrap();
        drop(f);
        let mut spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending(), 3);
        spool.append(&payloads(3..4)).unwrap();
        drop(spool);
        let spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        let got: Vec<Vec<u8>> = read_all(&spool, 0).into_iter().map(|r| r.1).collect();
        assert_eq!(got, payloads(0..4));
    }

    #[test]
    fn corrupt_record_is_cut_off_by_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&payloads(0..3)).unwrap();
        let (path, (offset, _)) = {
            let seg = spool.segments.back().unwrap();
            (seg.path.clone(), seg.records[2])
        };
        drop(spool);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", offset + RECORD_HEADER_BYTES + 2)
            .unwrap();
        let spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending(), 2);
    }

    #[test]
    fn full_spool_refuses_the_whole_batch_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = AlertSpool::open(dir.path(), 1000).unwrap();
        let p = vec![vec![b'x'; 288]]; // 300 bytes with its header
        for _ in 0..3 {
            spool.append(&p).unwrap();
        }
        let err = spool.append(&p).unwrap_err();
        assert!(matches!(err, KafkaError::SpoolFull { .. }), "{err}");
        assert!(err.to_string().contains("full"), "{err}");
        assert_eq!(spool.pending(), 3);
        spool.ack(1).unwrap();
        spool.append(&p).unwrap();
        assert_eq!(spool.pending_bytes(), 900);
    }
}
