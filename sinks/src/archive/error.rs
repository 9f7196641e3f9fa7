//! Errors of the archive writer and reader: each names the path and the OS error.

use std::io;
use std::path::PathBuf;

use event::schema::SchemaError;
use parquet::errors::ParquetError;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parquet file {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: ParquetError,
    },
    #[error("write-ahead log {}: {source}", path.display())]
    WalDecode {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("converting records: {0}")]
    Schema(#[from] SchemaError),
    #[error("invalid config: {0}")]
    Config(String),
}

impl ArchiveError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> ArchiveError {
        let path = path.into();
        move |source| ArchiveError::Io { op, path, source }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>) -> impl FnOnce(ParquetError) -> ArchiveError {
        let path = path.into();
        move |source| ArchiveError::Parquet { path, source }
    }

    /// The OS error kind behind this error, if there is one
    /// (`StorageFull` for ENOSPC, `PermissionDenied`, ...).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            ArchiveError::Io { source, .. } => Some(source.kind()),
            ArchiveError::Parquet {
                source: ParquetError::External(e),
                ..
            } => e.downcast_ref::<io::Error>().map(io::Error::kind),
            _ => None,
        }
    }

    /// True when the disk is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self.io_kind(),
            Some(io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        )
    }
}
