//! [`ArchiveWriter`]: batches of records in, finished Parquet files out.
//!
//! One open file per partition (hour) with recent data. A `write` call is
//! accepted atomically: its batches are appended to the write-ahead log (one
//! append, one fsync) before they reach the Parquet writers, and an error
//! before that point means nothing of the call was accepted. A file closes
//! when it reaches `max_file_bytes`, `max_file_age_secs` after its first row,
//! when more than `max_open_files` are open, or on [`ArchiveWriter::close`];
//! closing is: finish the footer, fsync, rename to `part-<id>.parquet`, fsync
//! the folder. A file whose write or close fails is dropped and rebuilt from
//! the write-ahead log on a later tick (or at the next start), so an I/O error
//! does not lose accepted rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::Serialize;

use super::wal::{self, Wal};
use super::{
    hour_of, is_part_file, is_temp_file, partition_dir, temp_name, ArchiveConfig, ArchiveError,
    ArchiveRecord,
};

/// How often a failed file is retried from the write-ahead log.
const RECOVERY_RETRY: Duration = Duration::from_secs(5);
/// How often retention runs (it also runs at open).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Counters of one writer, for metrics and the shutdown log line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveStats {
    /// Rows accepted by `write` (in the write-ahead log when it is on).
    pub rows_accepted: u64,
    /// Rows in finished, renamed files.
    pub rows_committed: u64,
    /// Finished files.
    pub files_committed: u64,
    /// Bytes of finished files.
    pub bytes_committed: u64,
    /// Files being written now.
    pub open_files: usize,
    /// Rows in files being written now.
    pub open_rows: u64,
    /// I/O and encoding errors since start.
    pub errors: u64,
    /// Files that failed and wait to be rebuilt from the write-ahead log.
    pub pending_recovery: usize,
    /// Rows rebuilt from the write-ahead log (at start or after an error).
    pub rows_recovered: u64,
    /// Temporary files of an earlier run removed at open.
    pub temp_files_removed: u64,
    /// `date=` partitions deleted by retention.
    pub partitions_deleted: u64,
    /// Bytes in the active write-ahead log segment.
    pub wal_bytes: u64,
    /// The last error, as text.
    pub last_error: Option<String>,
    /// False after a failed operation until one succeeds and nothing waits
    /// for recovery: the pipeline should report not ready and push back.
    pub healthy: bool,
}

struct OpenFile {
    /// `date=.../hour=../part-<id>.parquet`, relative to the record folder.
    rel: String,
    tmp: PathBuf,
    dest: PathBuf,
    writer: ArrowWriter<File>,
    opened: SystemTime,
    rows: u64,
    /// Lowest write-ahead log segment holding rows of this file.
    first_wal_seq: u64,
}

/// Writes one record type ([`Event`](event::Event) or [`Alert`](event::Alert))
/// into `ROOT/<events|alerts>/date=YYYY-MM-DD/hour=HH/part-<id>.parquet`.
/// Synchronous: run it on a dedicated thread and call [`tick`](Self::tick) about once a second.
pub struct ArchiveWriter<R: ArchiveRecord> {
    cfg: ArchiveConfig,
    dir: PathBuf,
    props: WriterProperties,
    open: HashMap<i64, OpenFile>,
    wal: Option<Wal>,
    /// The entries of one append, reused: grown anew for every batch, it
    /// was copied over and over on the way to a megabyte.
    wal_buf: Vec<u8>,
    log_thread: Option<LogThread>,
    /// Parts that failed, with the first write-ahead log segment they need.
    pending: BTreeMap<String, u64>,
    stats: ArchiveStats,
    failing: bool,
    run_id: String,
    next_part: u64,
    last_recovery: Option<SystemTime>,
    last_retention: Option<SystemTime>,
    _record: PhantomData<fn() -> R>,
}

impl<R: ArchiveRecord> ArchiveWriter<R> {
    /// Creates the folders, removes temporary files left by a crash, rebuilds
    /// the files the write-ahead log still covers, and applies retention.
    pub fn open(cfg: ArchiveConfig) -> Result<Self, ArchiveError> {
        cfg.validate()?;
        let dir = cfg.dir.join(R::DIR);
        fs::create_dir_all(&dir).map_err(ArchiveError::io("create archive folder", &dir))?;
        let mut metadata = vec![
            KeyValue::new(
                event::schema::SCHEMA_VERSION_KEY.to_string(),
                schema_version::<R>(),
            ),
            KeyValue::new(event::schema::RECORD_KEY.to_string(), R::DIR.to_string()),
        ];
        metadata.push(KeyValue::new(
            "vigil.writer".to_string(),
            format!("vigil-sinks {}", env!("CARGO_PKG_VERSION")),
        ));
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(cfg.zstd_level)
                    .map_err(|e| ArchiveError::Config(e.to_string()))?,
            ))
            .set_max_row_group_row_count(Some(cfg.row_group_rows))
            .set_key_value_metadata(Some(metadata));
        // Dotted names are paths into nested columns (the attribute map's leaves).
        let path = |column: &str| ColumnPath::new(column.split('.').map(str::to_string).collect());
        for column in R::DISTINCT_COLUMNS {
            props = props.set_column_dictionary_enabled(path(column), false);
        }
        for column in R::UNSORTED_COLUMNS {
            props = props.set_column_statistics_enabled(path(column), EnabledStatistics::None);
        }
        let props = props.build();
        let wal_dir = cfg.dir.join(".wal").join(R::DIR);
        // Even with the log turned off, a log left by an earlier run is replayed once.
        let wal = if cfg.wal || wal_dir.exists() {
            Some(Wal::open(wal_dir, cfg.wal_fsync, cfg.wal_direct_io)?)
        } else {
            None
        };
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut w = ArchiveWriter {
            dir,
            props,
            open: HashMap::new(),
            wal,
            pending: BTreeMap::new(),
            stats: ArchiveStats {
                healthy: true,
                ..Default::default()
            },
            wal_buf: Vec::new(),
            log_thread: None,
            failing: false,
            run_id: format!("{}-{:x}", started.as_millis(), std::process::id()),
            next_part: 0,
            last_recovery: None,
            last_retention: None,
            cfg,
            _record: PhantomData,
        };
        w.remove_temp_files()?;
        if w.wal.is_some() {
            w.rebuild_from_wal(None)?;
            let wal = w.wal.as_mut().expect("checked above");
            wal.trim(u64::MAX)?;
            if !w.cfg.wal {
                w.wal = None;
            }
        }
        w.apply_retention(SystemTime::now())?;
        Ok(w)
    }

    /// Accepts a batch of records. `Ok` means every record is kept: in the
    /// write-ahead log (when on) and in an open Parquet file, and it will be
    /// in a finished file within `max_file_age_secs`. `Err` means none of the
    /// batch was accepted (the archive folder or the log cannot be written):
    /// retry later and push back on the sender meanwhile. Records accepted by
    /// earlier calls are not affected by an error.
    pub fn write(&mut self, records: &[R]) -> Result<(), ArchiveError> {
        self.write_parts(&[(records, None)])
    }

    /// Accepts several batches at once (one write-ahead log append and
    /// fsync for all), each with its records as Arrow columns when the caller
    /// has them ([`ArchiveRecord::to_batch`] of the same records); columns
    /// are built here otherwise, or when the records span hours. `Ok` and
    /// `Err` mean what they mean for [`ArchiveWriter::write`], for all parts.
    pub fn write_parts(
        &mut self,
        parts: &[(&[R], Option<&RecordBatch>)],
    ) -> Result<(), ArchiveError> {
        let result = self.write_inner(parts, SystemTime::now());
        self.note(&result);
        result
    }

    fn write_inner(
        &mut self,
        parts: &[(&[R], Option<&RecordBatch>)],
        now: SystemTime,
    ) -> Result<(), ArchiveError> {
        let mut batches = Vec::with_capacity(parts.len());
        let mut rows = 0;
        for (records, columns) in parts {
            let Some(first) = records.first() else {
                continue;
            };
            rows += records.len();
            // Most batches fall in one hour; only split when they do not.
            let first_hour = hour_of(first.time());
            if records.iter().all(|r| hour_of(r.time()) == first_hour) {
                match columns {
                    // A batch's columns share their buffers: this copies no data.
                    Some(c) if c.num_rows() == records.len() => {
                        batches.push((first_hour, (*c).clone()))
                    }
                    _ => {
                        let refs: Vec<&R> = records.iter().collect();
                        batches.push((first_hour, R::to_batch(&refs)?));
                    }
                }
            } else {
                let mut by_hour: BTreeMap<i64, Vec<&R>> = BTreeMap::new();
                for r in records.iter() {
                    by_hour.entry(hour_of(r.time())).or_default().push(r);
                }
                for (hour, refs) in by_hour {
                    batches.push((hour, R::to_batch(&refs)?));
                }
            }
        }
        if batches.is_empty() {
            return Ok(());
        }
        let hours: BTreeSet<i64> = batches.iter().map(|(hour, _)| *hour).collect();
        for hour in &hours {
            if !self.open.contains_key(hour) {
                self.open_file(*hour, &hours, now)?;
            }
        }
        if self.wal.is_some() {
            let buf = &mut self.wal_buf;
            buf.clear();
            for (hour, batch) in &batches {
                Wal::encode(buf, &self.open[hour].rel, batch)?;
            }
        }
        // The log's write and fsync wait on the disk, a few milliseconds per
        // group commit: the Parquet encoding of the same rows runs meanwhile.
        let appending = self.start_append(now);
        let mut failed: Vec<(i64, parquet::errors::ParquetError)> = Vec::new();
        for (hour, batch) in &batches {
            if failed.iter().any(|(h, _)| h == hour) {
                continue;
            }
            let Some(file) = self.open.get_mut(hour) else {
                continue;
            };
            match file.writer.write(batch) {
                Ok(()) => file.rows += batch.num_rows() as u64,
                Err(e) => failed.push((*hour, e)),
            }
        }
        let logged = self.finish_append(appending);
        keep_room(&mut self.wal_buf);
        let mut lost = None;
        for (hour, e) in failed {
            let file = self.open.remove(&hour).expect("present");
            let err = ArchiveError::parquet(&file.tmp)(e);
            if let Some(err) = self.fail_file(file, err) {
                lost = Some(err);
            }
        }
        if let Err(e) = logged {
            // Not accepted: the senders are told, and send again. The rows
            // already reached the open files; those files go, and are rebuilt
            // from the log, which has every row accepted before and none of these.
            for hour in &hours {
                if let Some(file) = self.open.remove(hour) {
                    self.drop_file(file, &e);
                }
            }
            return Err(e);
        }
        // From here the rows are accepted: a failure below is recovered from the log.
        self.stats.rows_accepted += rows as u64;
        // Files past their size limit are finished once every part is in them.
        for hour in &hours {
            let full = self.open.get(hour).is_some_and(|file| {
                (file.writer.bytes_written() + file.writer.in_progress_size()) as u64
                    >= self.cfg.max_file_bytes
            });
            if full {
                let file = self.open.remove(hour).expect("present");
                if let Err(e) = self.commit(file) {
                    lost.get_or_insert(e);
                }
            }
        }
        match lost {
            // With the log on, a failed file is rebuilt later: the call still succeeded.
            Some(e) if self.wal.is_none() => Err(e),
            _ => Ok(()),
        }
    }

    /// Housekeeping, to call about once a second: closes files older than
    /// `max_file_age_secs`, retries failed files from the write-ahead log,
    /// starts and trims log segments, and (hourly) applies retention.
    pub fn tick(&mut self, now: SystemTime) -> Result<(), ArchiveError> {
        let result = self.tick_inner(now);
        self.note(&result);
        result
    }

    fn tick_inner(&mut self, now: SystemTime) -> Result<(), ArchiveError> {
        let max_age = self.cfg.max_file_age();
        let mut aged: Vec<i64> = self
            .open
            .iter()
            .filter(|(_, f)| now.duration_since(f.opened).is_ok_and(|age| age >= max_age))
            .map(|(h, _)| *h)
            .collect();
        aged.sort_unstable();
        let mut first_err = None;
        for hour in aged {
            let file = self.open.remove(&hour).expect("listed above");
            if let Err(e) = self.commit(file) {
                first_err.get_or_insert(e);
            }
        }
        if !self.pending.is_empty()
            && self
                .last_recovery
                .is_none_or(|t| now.duration_since(t).is_ok_and(|d| d >= RECOVERY_RETRY))
        {
            self.last_recovery = Some(now);
            if let Err(e) = self.recover_pending() {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = self.maintain_wal(now) {
            first_err.get_or_insert(e);
        }
        if self
            .last_retention
            .is_none_or(|t| now.duration_since(t).is_ok_and(|d| d >= RETENTION_EVERY))
        {
            if let Err(e) = self.apply_retention(now) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Closes every open file and rebuilds failed ones, so that everything
    /// accepted so far is in finished files; then empties the write-ahead log.
    pub fn flush_all(&mut self) -> Result<(), ArchiveError> {
        let result = self.flush_inner();
        self.note(&result);
        result
    }

    fn flush_inner(&mut self) -> Result<(), ArchiveError> {
        let mut first_err = None;
        let mut hours: Vec<i64> = self.open.keys().copied().collect();
        hours.sort_unstable();
        for hour in hours {
            let file = self.open.remove(&hour).expect("listed above");
            if let Err(e) = self.commit(file) {
                first_err.get_or_insert(e);
            }
        }
        if !self.pending.is_empty() {
            if let Err(e) = self.recover_pending() {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if let Some(wal) = self.wal.as_mut() {
            // Nothing is open or pending: no segment is needed any more.
            wal.trim(u64::MAX)?;
        }
        Ok(())
    }

    /// The shutdown path (SIGTERM): [`flush_all`](Self::flush_all), then the
    /// final counters. On error, what could not be written stays in the
    /// write-ahead log and is rebuilt by the next `open`.
    pub fn close(mut self) -> Result<ArchiveStats, ArchiveError> {
        self.flush_all()?;
        Ok(self.stats())
    }

    /// Current counters.
    pub fn stats(&self) -> ArchiveStats {
        let mut s = self.stats.clone();
        s.open_files = self.open.len();
        s.open_rows = self.open.values().map(|f| f.rows).sum();
        s.pending_recovery = self.pending.len();
        s.wal_bytes = self.wal.as_ref().map_or(0, Wal::active_len);
        s.healthy = !self.failing && self.pending.is_empty();
        s
    }

    /// The thread the log is appended on, once the first append started it.
    #[cfg(test)]
    pub(crate) fn log_thread(&self) -> Option<std::thread::Thread> {
        let handle = self.log_thread.as_ref()?.handle.as_ref()?;
        Some(handle.thread().clone())
    }

    /// Tests stand in for a disk that fails every log append.
    #[cfg(test)]
    pub(crate) fn fail_wal_appends(&mut self, fail: bool) {
        self.wal.as_mut().expect("the log is on").fail_appends = fail;
    }

    /// False after a failed operation, until one succeeds with nothing left to recover.
    pub fn is_healthy(&self) -> bool {
        !self.failing && self.pending.is_empty()
    }

    /// The folder this writer writes into (`ROOT/events` or `ROOT/alerts`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn note<T>(&mut self, result: &Result<T, ArchiveError>) {
        match result {
            Ok(_) => self.failing = false,
            Err(e) => {
                self.failing = true;
                self.stats.errors += 1;
                self.stats.last_error = Some(e.to_string());
                tracing::error!(record = R::DIR, error = %e, "archive write failed");
            }
        }
    }

    /// Opens the file of `hour`. At the open-file limit the files opened
    /// first are closed, but not those the call at hand writes to (`busy`):
    /// a call spanning more hours than the limit passes it until the next call.
    fn open_file(
        &mut self,
        hour: i64,
        busy: &BTreeSet<i64>,
        now: SystemTime,
    ) -> Result<(), ArchiveError> {
        while self.open.len() >= self.cfg.max_open_files {
            // Evict the file opened first: its partition is the least likely to get more rows soon.
            let Some(oldest) = self
                .open
                .iter()
                .filter(|(h, _)| !busy.contains(h))
                .min_by_key(|(_, f)| f.opened)
                .map(|(h, _)| *h)
            else {
                break;
            };
            let file = self.open.remove(&oldest).expect("present");
            if let Err(e) = self.commit(file) {
                tracing::error!(record = R::DIR, error = %e, "closing the oldest archive file failed");
            }
        }
        let name = format!("part-{}-{:06}.parquet", self.run_id, self.next_part);
        self.next_part += 1;
        let rel = format!("{}/{name}", partition_dir(hour));
        let (tmp, dest, writer) = self.create_part(&rel)?;
        let first_wal_seq = self.wal.as_ref().map_or(0, Wal::current_seq);
        self.open.insert(
            hour,
            OpenFile {
                rel,
                tmp,
                dest,
                writer,
                opened: now,
                rows: 0,
                first_wal_seq,
            },
        );
        Ok(())
    }

    fn create_part(
        &self,
        rel: &str,
    ) -> Result<(PathBuf, PathBuf, ArrowWriter<File>), ArchiveError> {
        let dest = self.dir.join(rel);
        let parent = dest.parent().expect("a part path has a partition folder");
        fs::create_dir_all(parent).map_err(ArchiveError::io("create partition folder", parent))?;
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .expect("part names are UTF-8");
        let tmp = parent.join(temp_name(name));
        let file = File::create(&tmp).map_err(ArchiveError::io("create", &tmp))?;
        let options = ArrowWriterOptions::new()
            .with_properties(self.props.clone())
            // Without the embedded Arrow schema every reader (pyarrow included)
            // sees dictionary columns as plain strings.
            .with_skip_arrow_metadata(true);
        let writer = ArrowWriter::try_new_with_options(file, R::schema(), options)
            .map_err(ArchiveError::parquet(&tmp))?;
        Ok((tmp, dest, writer))
    }

    /// Finishes a file and renames it into place. On failure the file is
    /// recorded for rebuilding from the log (or, without a log, its rows are lost).
    fn commit(&mut self, file: OpenFile) -> Result<(), ArchiveError> {
        match finish(file.writer, &file.tmp, &file.dest) {
            Ok(bytes) => {
                self.stats.rows_committed += file.rows;
                self.stats.files_committed += 1;
                self.stats.bytes_committed += bytes;
                tracing::debug!(record = R::DIR, path = %file.dest.display(), rows = file.rows, bytes, "archive file finished");
                Ok(())
            }
            Err(e) => {
                let OpenFile {
                    rel,
                    tmp,
                    rows,
                    first_wal_seq,
                    ..
                } = file;
                self.fail_part(rel, &tmp, rows, first_wal_seq, &e);
                Err(e)
            }
        }
    }

    /// Starts appending `wal_buf` to the log: on the log's thread (started
    /// at the first append), or here when no thread can be had.
    fn start_append(&mut self, now: SystemTime) -> Option<Appending> {
        let job = LogJob {
            wal: self.wal.take()?,
            buf: std::mem::take(&mut self.wal_buf),
            now,
            result: Ok(()),
        };
        if self.log_thread.is_none() {
            self.log_thread = LogThread::spawn();
        }
        let unsent = match self.log_thread.as_ref().and_then(|t| t.jobs.as_ref()) {
            Some(jobs) => jobs.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        Some(match unsent {
            None => Appending::Sent,
            Some(mut job) => {
                job.result = job.wal.append(&job.buf, now);
                Appending::Done(Box::new(job))
            }
        })
    }

    /// Waits for the append [`Self::start_append`] began; the log and its
    /// buffer come back to the writer.
    fn finish_append(&mut self, appending: Option<Appending>) -> Result<(), ArchiveError> {
        let job = match appending {
            None => return Ok(()),
            Some(Appending::Done(job)) => *job,
            Some(Appending::Sent) => self
                .log_thread
                .as_ref()
                .expect("the job went to it")
                .done
                .recv()
                .expect("the write-ahead log thread answers every job"),
        };
        self.wal = Some(job.wal);
        self.wal_buf = job.buf;
        job.result
    }

    /// Drops a file whose write failed; returns the error when its rows are lost.
    fn fail_file(&mut self, file: OpenFile, err: ArchiveError) -> Option<ArchiveError> {
        self.drop_file(file, &err);
        self.wal.is_none().then_some(err)
    }

    /// Deletes an open file after `err`; with the log on, it is rebuilt from it.
    fn drop_file(&mut self, file: OpenFile, err: &ArchiveError) {
        let OpenFile {
            rel,
            tmp,
            rows,
            first_wal_seq,
            writer,
            ..
        } = file;
        drop(writer);
        self.fail_part(rel, &tmp, rows, first_wal_seq, err);
    }

    fn fail_part(
        &mut self,
        rel: String,
        tmp: &Path,
        rows: u64,
        first_wal_seq: u64,
        err: &ArchiveError,
    ) {
        let _ = fs::remove_file(tmp);
        self.stats.errors += 1;
        self.stats.last_error = Some(err.to_string());
        if self.wal.is_some() {
            tracing::error!(record = R::DIR, part = %rel, rows, error = %err, "archive file failed; it will be rebuilt from the write-ahead log");
            self.pending.insert(rel, first_wal_seq);
        } else {
            tracing::error!(record = R::DIR, part = %rel, rows, error = %err, "archive file failed; its rows are lost (write-ahead log is off)");
        }
    }

    fn recover_pending(&mut self) -> Result<(), ArchiveError> {
        let parts: BTreeSet<String> = self.pending.keys().cloned().collect();
        self.rebuild_from_wal(Some(&parts))?;
        self.pending.clear();
        Ok(())
    }

    /// Writes the log's batches into the part files they were meant for,
    /// skipping parts that are finished or open. `only` limits it to some parts.
    fn rebuild_from_wal(&mut self, only: Option<&BTreeSet<String>>) -> Result<(), ArchiveError> {
        let Some(wal) = self.wal.as_ref() else {
            return Ok(());
        };
        let from_seq = only.map_or(0, |_| self.pending.values().copied().min().unwrap_or(0));
        let open_parts: BTreeSet<&str> = self.open.values().map(|f| f.rel.as_str()).collect();
        let mut files: BTreeMap<String, (PathBuf, PathBuf, ArrowWriter<File>, u64)> =
            BTreeMap::new();
        for (seq, path) in wal.segments()? {
            if seq < from_seq {
                continue;
            }
            for entry in wal::read_segment(&path)? {
                if only.is_some_and(|set| !set.contains(&entry.part))
                    || open_parts.contains(entry.part.as_str())
                {
                    continue;
                }
                if !is_safe_part_path(&entry.part) {
                    tracing::warn!(path = %path.display(), part = %entry.part, "write-ahead log entry with an invalid part path skipped");
                    continue;
                }
                if !files.contains_key(&entry.part) {
                    if self.dir.join(&entry.part).exists() {
                        continue; // finished before the crash
                    }
                    let (tmp, dest, writer) = self.create_part(&entry.part)?;
                    files.insert(entry.part.clone(), (tmp, dest, writer, 0));
                }
                let (tmp, _, writer, rows) = files.get_mut(&entry.part).expect("inserted above");
                let batch = if entry.batch.schema_ref().fields() == R::schema().fields() {
                    entry.batch
                } else {
                    // A log written by another schema version: convert through the records.
                    let records = R::from_batch(&entry.batch)?;
                    R::to_batch(&records.iter().collect::<Vec<_>>())?
                };
                writer
                    .write(&batch)
                    .map_err(ArchiveError::parquet(tmp.as_path()))?;
                *rows += batch.num_rows() as u64;
            }
        }
        for (part, (tmp, dest, writer, rows)) in files {
            let bytes = finish(writer, &tmp, &dest)?;
            self.stats.rows_recovered += rows;
            self.stats.rows_committed += rows;
            self.stats.files_committed += 1;
            self.stats.bytes_committed += bytes;
            tracing::warn!(record = R::DIR, part = %part, rows, "archive file rebuilt from the write-ahead log");
        }
        Ok(())
    }

    fn maintain_wal(&mut self, now: SystemTime) -> Result<(), ArchiveError> {
        let max_age = self.cfg.max_file_age();
        let segment_bytes = self.cfg.wal_segment_bytes;
        let Some(wal) = self.wal.as_mut() else {
            return Ok(());
        };
        let old = wal
            .active_opened()
            .is_some_and(|t| now.duration_since(t).is_ok_and(|age| age >= max_age));
        if wal.active_len() > 0 && (old || wal.active_len() >= segment_bytes) {
            wal.rotate(now)?;
        }
        let keep_from = self
            .open
            .values()
            .map(|f| f.first_wal_seq)
            .chain(self.pending.values().copied())
            .min()
            .unwrap_or(u64::MAX)
            .min(wal.current_seq());
        wal.trim(keep_from)
    }

    fn remove_temp_files(&mut self) -> Result<(), ArchiveError> {
        for hour_dir in partition_dirs(&self.dir)? {
            for entry in read_dir(&hour_dir)? {
                let name = entry.file_name();
                if name.to_str().is_some_and(is_temp_file) {
                    let path = entry.path();
                    let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&path)
                        .map_err(ArchiveError::io("remove leftover temporary file", &path))?;
                    self.stats.temp_files_removed += 1;
                    tracing::warn!(record = R::DIR, path = %path.display(), bytes, "removed a temporary archive file left by an earlier run");
                }
            }
        }
        Ok(())
    }

    fn apply_retention(&mut self, now: SystemTime) -> Result<(), ArchiveError> {
        self.last_retention = Some(now);
        let Some(days) = self.cfg.retention_days else {
            return Ok(());
        };
        let today = chrono::DateTime::<chrono::Utc>::from(now).date_naive();
        let Some(cutoff) = today.checked_sub_days(chrono::Days::new(days.into())) else {
            return Ok(());
        };
        let open_dates: BTreeSet<&str> = self
            .open
            .values()
            .filter_map(|f| f.rel.split('/').next())
            .collect();
        for entry in read_dir(&self.dir)? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(date) = name
                .strip_prefix("date=")
                .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            else {
                continue;
            };
            if date < cutoff && !open_dates.contains(name) {
                let path = entry.path();
                fs::remove_dir_all(&path)
                    .map_err(ArchiveError::io("delete expired partition", &path))?;
                self.stats.partitions_deleted += 1;
                tracing::info!(record = R::DIR, path = %path.display(), retention_days = days, "deleted expired archive partition");
            }
        }
        Ok(())
    }
}

fn schema_version<R: ArchiveRecord>() -> String {
    R::schema()
        .metadata()
        .get(event::schema::SCHEMA_VERSION_KEY)
        .cloned()
        .unwrap_or_default()
}

/// Footer, fsync, rename, fsync folder. Returns the file size.
fn finish(writer: ArrowWriter<File>, tmp: &Path, dest: &Path) -> Result<u64, ArchiveError> {
    let file = writer.into_inner().map_err(ArchiveError::parquet(tmp))?;
    file.sync_all().map_err(ArchiveError::io("fsync", tmp))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    fs::rename(tmp, dest).map_err(ArchiveError::io("rename into place", tmp))?;
    if let Some(parent) = dest.parent() {
        // The file is visible and complete already; a failed folder fsync only
        // weakens power-loss durability, so it is logged, not returned.
        if let Err(e) = wal::sync_dir(parent) {
            tracing::warn!(error = %e, "archive folder fsync failed");
        }
    }
    Ok(bytes)
}

/// A part path from the log is only trusted if it has the shape the writer gives it.
fn is_safe_part_path(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    matches!(parts.as_slice(), [d, h, f] if d.starts_with("date=") && h.starts_with("hour=") && is_part_file(f))
        && !rel.contains("..")
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, ArchiveError> {
    fs::read_dir(dir)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(ArchiveError::io("list folder", dir))
}

/// `dir/date=*/hour=*` folders, sorted (which is time order).
pub(crate) fn partition_dirs(dir: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut dates: Vec<PathBuf> = read_dir(dir)?
        .into_iter()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("date="))
        })
        .map(|e| e.path())
        .collect();
    dates.sort();
    for date in dates {
        let mut hours: Vec<PathBuf> = read_dir(&date)?
            .into_iter()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("hour="))
            })
            .map(|e| e.path())
            .collect();
        hours.sort();
        out.extend(hours);
    }
    Ok(out)
}

/// Room kept in a reused buffer after a use: enough for the group commits of
/// a busy stream, not what one huge request needed.
pub(crate) const KEEP_ROOM: usize = 8 << 20;

/// Gives back the room of a reused buffer past [`KEEP_ROOM`].
pub(crate) fn keep_room<T>(buf: &mut Vec<T>) {
    let keep = KEEP_ROOM / std::mem::size_of::<T>().max(1);
    if buf.capacity() > keep {
        buf.clear();
        buf.shrink_to(keep);
    }
}

/// A log append under way: sent to the log's thread, or done already.
enum Appending {
    Sent,
    Done(Box<LogJob>),
}

/// One append of the write-ahead log, handed to [`LogThread`] with the log.
struct LogJob {
    wal: Wal,
    buf: Vec<u8>,
    now: SystemTime,
    result: Result<(), ArchiveError>,
}

/// A thread that writes the log while the archive's thread encodes Parquet.
/// It ends (and is joined) when its writer goes.
struct LogThread {
    jobs: Option<std::sync::mpsc::Sender<LogJob>>,
    done: std::sync::mpsc::Receiver<LogJob>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogThread {
    fn drop(&mut self) {
        // No job is out when the writer goes: every append is waited for.
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl LogThread {
    fn spawn() -> Option<LogThread> {
        let (jobs, todo) = std::sync::mpsc::channel::<LogJob>();
        let (finished, done) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("vigil-wal".into())
            .spawn(move || {
                for mut job in todo {
                    // A panic comes back as an error, with the log, rather than
                    // leaving the archive's thread waiting for it.
                    let appended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job.wal.append(&job.buf, job.now)
                    }));
                    job.result = appended.unwrap_or_else(|_| {
                        Err(
                            ArchiveError::io("append to write-ahead log", job.wal.dir())(
                                std::io::Error::other("the write-ahead log thread panicked"),
                            ),
                        )
                    });
                    if finished.send(job).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(LogThread {
            jobs: Some(jobs),
            done,
            handle: Some(handle),
        })
    }
}
