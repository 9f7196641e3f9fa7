//! Configuration of the archive writer, with its defaults in one place.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ArchiveError;

/// Where and how the Parquet archive is written. One config serves both the
/// event and the alert writer: they write to `dir/events` and `dir/alerts`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Archive root; `events/`, `alerts/` and the write-ahead log `.wal/` live under it.
    pub dir: PathBuf,
    /// Rows per Parquet row group. Larger groups compress better and scan
    /// faster; each open file buffers up to one group in memory.
    pub row_group_rows: usize,
    /// A file is closed (and becomes visible) once it reaches this many bytes.
    pub max_file_bytes: u64,
    /// A file is closed this many seconds after its first row, so every row is
    /// visible to readers within this delay.
    pub max_file_age_secs: u64,
    /// At most this many files open at once (one per partition with recent
    /// data); opening one more closes the oldest.
    pub max_open_files: usize,
    /// zstd level (1-22). Low levels are much faster and compress these columns nearly as well.
    pub zstd_level: i32,
    /// Delete whole `date=` partitions older than this many days (UTC dates). `None` keeps everything.
    pub retention_days: Option<u32>,
    /// Keep accepted batches in a write-ahead log until their Parquet file is
    /// renamed, so they survive a crash or an I/O error. Off: rows in open
    /// files (at most `max_file_age_secs` worth) are lost on a crash.
    pub wal: bool,
    /// fsync the write-ahead log once per `write` call. Off, a batch survives a
    /// process crash (`kill -9`) but not a power loss or kernel crash.
    pub wal_fsync: bool,
    /// Write the write-ahead log with direct I/O (Linux, where the file
    /// system allows it): it skips the page cache, which the log is never
    /// read from unless vigil crashed. Off, or refused, it goes through the cache.
    pub wal_direct_io: bool,
    /// Start a new write-ahead log segment past this size; whole segments are
    /// deleted once every file they cover is renamed.
    pub wal_segment_bytes: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            dir: PathBuf::from("vigil-data/archive"),
            row_group_rows: 128 * 1024,
            max_file_bytes: 256 * 1024 * 1024,
            max_file_age_secs: 60,
            max_open_files: 64,
            zstd_level: 1,
            retention_days: None,
            wal: true,
            wal_fsync: true,
            wal_direct_io: true,
            wal_segment_bytes: 256 * 1024 * 1024,
        }
    }
}

impl ArchiveConfig {
    /// A default config rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ArchiveConfig {
            dir: dir.into(),
            ..Default::default()
        }
    }

    /// The file age limit as a Duration.
    pub fn max_file_age(&self) -> Duration {
        Duration::from_secs(self.max_file_age_secs)
    }

    /// Checks the values once at start-up.
    pub fn validate(&self) -> Result<(), ArchiveError> {
        let bad =
            |field: &str, why: &str| Err(ArchiveError::Config(format!("archive.{field}: {why}")));
        if self.dir.as_os_str().is_empty() {
            return bad("dir", "must not be empty");
        }
        if self.row_group_rows == 0 {
            return bad("row_group_rows", "must be at least 1");
        }
        if self.max_file_bytes == 0 {
            return bad("max_file_bytes", "must be at least 1");
        }
        if self.max_open_files == 0 {
            return bad("max_open_files", "must be at least 1");
        }
        if !(1..=22).contains(&self.zstd_level) {
            return bad("zstd_level", "must be between 1 and 22");
        }
        if self.retention_days == Some(0) {
            return bad(
                "retention_days",
                "must be at least 1 (omit it to keep everything)",
            );
        }
        Ok(())
    }
}
