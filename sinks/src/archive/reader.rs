//! Reading an archive back, for replay: finished part files only, pruned by
//! partition to a time range.

use std::collections::VecDeque;
use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Metadata, Schema};
use event::schema::{batch_to_events_filtered, EventProjection, ProjectedEvents};
use event::{Alert, Event};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::file::statistics::Statistics;

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

/// Reads events from `root/events` with `from <= time < to` through
/// `projection`, row group by row group in order of their earliest event:
/// only the columns and attributes it names are copied out, and rows of
/// kinds it leaves out yield only their time. The bound of each row group
/// ([`ProjectedReader::earliest`]) lets a caller put events in time order
/// without holding a whole partition. Replay reads this way.
pub fn read_events_projected(
    root: &Path,
    from: Option<i64>,
    to: Option<i64>,
    projection: EventProjection,
) -> Result<ProjectedReader, ArchiveError> {
    let files = ArchiveReader::<Event>::open(root, from, to)?.files;
    let mut groups = Vec::new();
    for path in files {
        let floor = path.parent().and_then(partition_start).unwrap_or(i64::MIN);
        let metadata = load_metadata::<Event>(&path)?;
        let time_col = metadata
            .metadata()
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().parts() == ["time"]);
        for (index, rg) in metadata.metadata().row_groups().iter().enumerate() {
            let (min, max) = match time_col.and_then(|c| rg.column(c).statistics()) {
                Some(Statistics::Int64(st)) => (st.min_opt().copied(), st.max_opt().copied()),
                _ => (None, None),
            };
            if min.is_some_and(|m| to.is_some_and(|t| m >= t))
                || max.is_some_and(|m| from.is_some_and(|f| m < f))
            {
                continue;
            }
            groups.push(RowGroupRef {
                path: path.clone(),
                metadata: metadata.clone(),
                index,
                // Without statistics, the partition's start is still a bound.
                earliest: min.unwrap_or(floor),
                latest: max,
            });
        }
    }
    // Stable: equal bounds keep file order.
    groups.sort_by_key(|g| g.earliest);
    Ok(ProjectedReader {
        groups,
        from,
        to,
        projection,
    })
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
    current: Option<(PathBuf, ParquetRecordBatchReader, Metadata)>,
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

    /// The next record batch in file order, before any time filter.
    fn next_record_batch(&mut self) -> Option<Result<RecordBatch, ArchiveError>> {
        loop {
            if let Some((path, reader, meta)) = self.current.as_mut() {
                match reader.next() {
                    Some(Ok(batch)) => return Some(Ok(with_file_metadata(batch, meta))),
                    Some(Err(e)) => {
                        let path = path.clone();
                        self.current = None;
                        return Some(Err(ArchiveError::Read { path, source: e }));
                    }
                    None => self.current = None,
                }
            }
            let path = self.files.pop_front()?;
            let loaded = load_metadata::<R>(&path).and_then(|m| {
                let meta = file_metadata(&m);
                build_reader(&path, m, None, |_| true).map(|r| (r, meta))
            });
            match loaded {
                Ok((reader, meta)) => self.current = Some((path, reader, meta)),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn next_batch(&mut self) -> Option<Result<Vec<R>, ArchiveError>> {
        loop {
            let batch = match self.next_record_batch()? {
                Ok(b) => b,
                Err(e) => return Some(Err(e)),
            };
            let records = match R::from_batch(&batch) {
                Ok(r) => r,
                Err(e) => return Some(Err(e.into())),
            };
            let kept: Vec<R> = records
                .into_iter()
                .filter(|r| in_range(self.from, self.to, r.time()))
                .collect();
            if !kept.is_empty() {
                return Some(Ok(kept));
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

/// A file's key-value metadata (`vigil.schema_version`, `vigil.record`).
fn file_metadata(m: &ArrowReaderMetadata) -> Metadata {
    m.schema().metadata().clone()
}

/// The batch with its file's metadata: the Parquet reader leaves it off its
/// batches, and readers of the records go by the schema version it holds
/// (version 1 named tool arguments by product; see `event::V1_ARGUMENT_ROOTS`).
fn with_file_metadata(batch: RecordBatch, meta: &Metadata) -> RecordBatch {
    if meta.is_empty() || batch.schema().metadata() == meta {
        return batch;
    }
    let schema = batch.schema().as_ref().clone().with_metadata(meta.clone());
    RecordBatch::try_new(std::sync::Arc::new(schema), batch.columns().to_vec()).unwrap_or(batch)
}

/// The metadata of one part file, with the string columns the writer
/// dictionary-encodes asked for as Arrow dictionaries, so Parquet's
/// dictionary pages are not expanded into one string per row. A file whose
/// columns do not fit that hint is read as it is.
fn load_metadata<R: ArchiveRecord>(path: &Path) -> Result<ArrowReaderMetadata, ArchiveError> {
    let file = File::open(path).map_err(ArchiveError::io("open", path))?;
    let plain = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
        .map_err(ArchiveError::parquet(path))?;
    let wanted = R::schema();
    let hinted: Vec<Field> = plain
        .schema()
        .fields()
        .iter()
        .map(|f| {
            // The writer's own dictionary type, where it wrote one.
            let dict = wanted
                .field_with_name(f.name())
                .ok()
                .map(|w| w.data_type())
                .filter(|t| matches!(t, DataType::Dictionary(_, _)));
            match dict {
                Some(t) if f.data_type() == &DataType::Utf8 => {
                    f.as_ref().clone().with_data_type(t.clone())
                }
                _ => f.as_ref().clone(),
            }
        })
        .collect();
    let hint = std::sync::Arc::new(Schema::new_with_metadata(
        hinted,
        plain.schema().metadata().clone(),
    ));
    Ok(ArrowReaderMetadata::try_new(
        plain.metadata().clone(),
        ArrowReaderOptions::new().with_schema(hint),
    )
    .unwrap_or(plain))
}

/// A reader over `row_groups` of a file (all of them when `None`), of the
/// top-level columns `columns` accepts.
fn build_reader(
    path: &Path,
    metadata: ArrowReaderMetadata,
    row_groups: Option<Vec<usize>>,
    columns: impl Fn(&str) -> bool,
) -> Result<ParquetRecordBatchReader, ArchiveError> {
    let file = File::open(path).map_err(ArchiveError::io("open", path))?;
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata)
        .with_batch_size(READ_BATCH_ROWS);
    if let Some(groups) = row_groups {
        builder = builder.with_row_groups(groups);
    }
    let fields = builder.schema().fields();
    if !fields.iter().all(|f| columns(f.name())) {
        let roots: Vec<usize> = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| columns(f.name()))
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder = builder.with_projection(mask);
    }
    builder.build().map_err(ArchiveError::parquet(path))
}

/// One row group of a part file, with a lower bound of its event times.
struct RowGroupRef {
    path: PathBuf,
    metadata: ArrowReaderMetadata,
    index: usize,
    earliest: i64,
    /// The newest event time, when the file has statistics.
    latest: Option<i64>,
}

/// Events read through an [`EventProjection`]; see [`read_events_projected`].
/// Row groups are numbered in order of their earliest event time (from the
/// Parquet statistics of `time`, else the partition's start): no event of
/// row group `i` or later is earlier than [`ProjectedReader::earliest`]`(i)`.
/// Row groups can be read in any order and from several threads at once.
pub struct ProjectedReader {
    groups: Vec<RowGroupRef>,
    from: Option<i64>,
    to: Option<i64>,
    projection: EventProjection,
}

impl ProjectedReader {
    /// Number of row groups to read.
    pub fn row_groups(&self) -> usize {
        self.groups.len()
    }

    /// Rows in the row groups to read: the events a replay will go through
    /// (fewer when a time range cuts into a group).
    pub fn total_rows(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| g.metadata.metadata().row_group(g.index).num_rows().max(0) as u64)
            .sum()
    }

    /// The earliest and newest event times of the row groups to read, from
    /// their statistics; `None` when there are none. Tells a replay that
    /// found nothing in its range where the archive's events are.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        let first = self.groups.first()?.earliest;
        let last = self.groups.iter().filter_map(|g| g.latest).max()?;
        Some((first, last))
    }

    /// Lower bound of the event times of row group `i` and all after it.
    pub fn earliest(&self, i: usize) -> i64 {
        self.groups[i].earliest
    }

    /// Decodes row group `i`, in batches of up to 8,192 rows; events that
    /// `keep` refuses come as times only (see
    /// [`event::schema::batch_to_events_filtered`]).
    /// Row group `i` as a reader names it: its place in its file, and the file.
    pub fn describe_row_group(&self, i: usize) -> String {
        let g = &self.groups[i];
        format!("row group {} of {}", g.index, g.path.display())
    }

    pub fn read_row_group(
        &self,
        i: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<Vec<ProjectedEvents>, ArchiveError> {
        let g = &self.groups[i];
        let columns = |name: &str| self.projection.reads(name);
        let meta = file_metadata(&g.metadata);
        let reader = build_reader(&g.path, g.metadata.clone(), Some(vec![g.index]), columns)?;
        let (from, to) = (self.from, self.to);
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|source| ArchiveError::Read {
                path: g.path.clone(),
                source,
            })?;
            let batch = with_file_metadata(batch, &meta);
            let mut read = batch_to_events_filtered(&batch, &self.projection, &keep)?;
            read.events.retain(|e| in_range(from, to, e.time));
            read.other_times.retain(|t| in_range(from, to, *t));
            out.push(read);
        }
        Ok(out)
    }
}

/// Whether `time` is in `[from, to)` (either bound optional).
fn in_range(from: Option<i64>, to: Option<i64>, time: i64) -> bool {
    from.is_none_or(|f| time >= f) && to.is_none_or(|t| time < t)
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
