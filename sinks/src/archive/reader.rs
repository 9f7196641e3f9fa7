//! Reading an archive back, for replay: finished part files only, pruned by
//! partition to a time range.

use std::collections::VecDeque;
use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use event::{Alert, Event};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::writer::partition_dirs;
use super::{is_part_file, ArchiveError, ArchiveRecord, NANOS_PER_HOUR};

const READ_BATCH_ROWS: usize = 8192;

/// Reads events from `root/events` with `from <= time < to` (either bound
/// optional). See [`ArchiveReader`] for the order of what it yields.
pub fn read_events(
    root: &Path,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<ArchiveReader<Event>, ArchiveError> {
    ArchiveReader::open(root, from, to)
}

/// Reads alerts from `root/alerts` with `from <= time < to` (either bound optional).
pub fn read_alerts(
    root: &Path,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<ArchiveReader<Alert>, ArchiveError> {
    ArchiveReader::open(root, from, to)
}

/// An iterator of record batches from an archive. Files are listed once, at
/// open; temporary files are never read. Files come in partition order
/// (date, hour) and, within an hour, in name order (the order they were
/// started); rows come in file order. Records are therefore grouped by hour
/// but not sorted by event time within an hour: a caller that needs event-time
/// order sorts (or relies on the engine's allowed lateness).
pub struct ArchiveReader<R> {
    files: VecDeque<PathBuf>,
    current: Option<(PathBuf, ParquetRecordBatchReader)>,
    from: Option<i64>,
    to: Option<i64>,
    _record: PhantomData<fn() -> R>,
}

impl<R: ArchiveRecord> ArchiveReader<R> {
    /// Lists the finished files of the partitions overlapping `[from, to)`.
    pub fn open(root: &Path, from: Option<i64>, to: Option<i64>) -> Result<Self, ArchiveError> {
        let dir = root.join(R::DIR);
        let mut files = VecDeque::new();
        for hour_dir in partition_dirs(&dir)? {
            if let Some(start) = partition_start(&hour_dir) {
                let end = start.saturating_add(NANOS_PER_HOUR);
                if from.is_some_and(|f| end <= f) || to.is_some_and(|t| start >= t) {
                    continue;
                }
            }
            let mut names: Vec<PathBuf> = std::fs::read_dir(&hour_dir)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(ArchiveError::io("list folder", &hour_dir))?
                .into_iter()
                .filter(|e| e.file_name().to_str().is_some_and(is_part_file))
                .map(|e| e.path())
                .collect();
            names.sort();
            files.extend(names);
        }
        Ok(ArchiveReader {
            files,
            current: None,
            from,
            to,
            _record: PhantomData,
        })
    }

    /// The files still to be read.
    pub fn remaining_files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(PathBuf::as_path)
    }

    fn next_batch(&mut self) -> Option<Result<Vec<R>, ArchiveError>> {
        loop {
            if let Some((path, reader)) = self.current.as_mut() {
                match reader.next() {
                    Some(Ok(batch)) => {
                        let records = match R::from_batch(&batch) {
                            Ok(r) => r,
                            Err(e) => return Some(Err(e.into())),
                        };
                        let (from, to) = (self.from, self.to);
                        let kept: Vec<R> = records
                            .into_iter()
                            .filter(|r| {
                                from.is_none_or(|f| r.time() >= f)
                                    && to.is_none_or(|t| r.time() < t)
                            })
                            .collect();
                        if kept.is_empty() {
                            continue;
                        }
                        return Some(Ok(kept));
                    }
                    Some(Err(e)) => {
                        let path = path.clone();
                        self.current = None;
                        return Some(Err(ArchiveError::Read { path, source: e }));
                    }
                    None => self.current = None,
                }
            }
            let path = self.files.pop_front()?;
            let opened = File::open(&path)
                .map_err(ArchiveError::io("open", &path))
                .and_then(|f| {
                    ParquetRecordBatchReaderBuilder::try_new(f)
                        .map_err(ArchiveError::parquet(&path))
                })
                .and_then(|b| {
                    b.with_batch_size(READ_BATCH_ROWS)
                        .build()
                        .map_err(ArchiveError::parquet(&path))
                });
            match opened {
                Ok(reader) => self.current = Some((path, reader)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl<R: ArchiveRecord> Iterator for ArchiveReader<R> {
    type Item = Result<Vec<R>, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

/// Start (ns) of a `.../date=YYYY-MM-DD/hour=HH` folder; `None` if the names do not parse.
fn partition_start(hour_dir: &Path) -> Option<i64> {
    let hour: i64 = hour_dir
        .file_name()?
        .to_str()?
        .strip_prefix("hour=")?
        .parse()
        .ok()?;
    let date = hour_dir
        .parent()?
        .file_name()?
        .to_str()?
        .strip_prefix("date=")?;
    let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let secs = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp() + hour * 3600;
    secs.checked_mul(1_000_000_000)
}
