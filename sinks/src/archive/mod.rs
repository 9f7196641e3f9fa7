//! Parquet archives of events and alerts.
//!
//! Records enter through [`ArchiveWriter::write`] (a batch at a time, from a
//! dedicated thread) and leave as finished Parquet files under
//! `ROOT/events/date=YYYY-MM-DD/hour=HH/part-<id>.parquet` (and `ROOT/alerts/...`),
//! partitioned by each record's event time in UTC. A file is written under a
//! hidden temporary name and renamed only once complete, so the `**/*.parquet`
//! glob of a reader never matches a half-written file. A write-ahead log under
//! `ROOT/.wal/` keeps every accepted batch until the Parquet file holding it is
//! renamed, so accepted rows survive `kill -9` and I/O errors. [`read_events`]
//! and [`read_alerts`] read finished files back for replay. docs/archive.md
//! describes the layout, the columns and the guarantees.

mod config;
mod error;
mod reader;
mod wal;
mod writer;

#[cfg(test)]
mod tests;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use event::schema::{self, SchemaError};
use event::{Alert, Event};

pub use config::ArchiveConfig;
pub use error::ArchiveError;
pub use reader::{read_alerts, read_events, read_events_projected, ArchiveReader, ProjectedReader};
pub use writer::{ArchiveStats, ArchiveWriter};

/// The event archive writer.
pub type EventArchive = ArchiveWriter<Event>;
/// The alert archive writer.
pub type AlertArchive = ArchiveWriter<Alert>;

/// A record type the archive can hold: its folder, its event time and its
/// Arrow conversions. Implemented for [`Event`] and [`Alert`].
pub trait ArchiveRecord: Sized {
    /// Folder under the archive root, also the value of `vigil.record`.
    const DIR: &'static str;
    /// Event time in nanoseconds since the epoch, UTC: it picks the partition.
    fn time(&self) -> i64;
    /// The Arrow schema the files are written with.
    fn schema() -> SchemaRef;
    /// Builds a batch from records given by reference.
    fn to_batch(records: &[&Self]) -> Result<RecordBatch, SchemaError>;
    /// Reads records back from a batch of any version of the schema.
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, SchemaError>;
    /// Columns whose values are (nearly) all distinct: written without a
    /// dictionary, which would only cost a hash of every value. A dotted
    /// name is a path to a nested leaf (`attrs.key_value.value`).
    const DISTINCT_COLUMNS: &'static [&'static str] = &[];
    /// Leaf columns written without min/max statistics: nothing prunes on
    /// them, and computing them compares every value.
    const UNSORTED_COLUMNS: &'static [&'static str] = &[];
}

impl ArchiveRecord for Event {
    const DIR: &'static str = "events";
    const DISTINCT_COLUMNS: &'static [&'static str] =
        &["event_id", "time", "observed_time", "attrs.key_value.value"];
    const UNSORTED_COLUMNS: &'static [&'static str] =
        &["attrs.key_value.key", "attrs.key_value.value"];
    fn time(&self) -> i64 {
        self.time
    }
    fn schema() -> SchemaRef {
        schema::event_schema()
    }
    fn to_batch(records: &[&Self]) -> Result<RecordBatch, SchemaError> {
        schema::event_refs_to_batch(records)
    }
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, SchemaError> {
        schema::batch_to_events(batch)
    }
}

impl ArchiveRecord for Alert {
    const DIR: &'static str = "alerts";
    fn time(&self) -> i64 {
        self.time
    }
    fn schema() -> SchemaRef {
        schema::alert_schema()
    }
    fn to_batch(records: &[&Self]) -> Result<RecordBatch, SchemaError> {
        schema::alert_refs_to_batch(records)
    }
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, SchemaError> {
        schema::batch_to_alerts(batch)
    }
}

const NANOS_PER_HOUR: i64 = 3_600_000_000_000;

/// The hour (since the epoch, UTC) that a record's event time falls in.
fn hour_of(time_ns: i64) -> i64 {
    time_ns.div_euclid(NANOS_PER_HOUR)
}

/// `date=YYYY-MM-DD/hour=HH` for an hour since the epoch.
fn partition_dir(hour: i64) -> String {
    let t = chrono::DateTime::from_timestamp(hour * 3600, 0)
        .expect("an i64 nanosecond time is a valid date");
    t.format("date=%Y-%m-%d/hour=%H").to_string()
}

/// Whether a file name is a finished part file (`part-*.parquet`).
fn is_part_file(name: &str) -> bool {
    name.starts_with("part-") && name.ends_with(".parquet")
}

/// Whether a file name is a temporary part file left by the writer.
fn is_temp_file(name: &str) -> bool {
    name.starts_with(".part-") && name.ends_with(".tmp")
}

/// The temporary name of a part file: hidden, and not ending in `.parquet`,
/// so neither `*.parquet` globs nor dotfile-aware listings pick it up.
fn temp_name(final_name: &str) -> String {
    format!(".{final_name}.tmp")
}
