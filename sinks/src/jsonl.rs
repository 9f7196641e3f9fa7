//! The alert log: alerts appended as one JSON object per line to a file
//! (by default `DATA_DIR/alerts.jsonl`), for the embedded setup without Kafka
//! and for `tail -f | jq`. Each [`AlertLog::append`] call writes its whole
//! batch with one write and one fsync; a failed append is cut off again so the
//! file never holds a torn line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use event::Alert;

/// Errors of the alert log, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum AlertLogError {
    #[error("cannot {op} alert log {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode alert {id} as JSON: {source}")]
    Encode {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

impl AlertLogError {
    /// True when the disk is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, AlertLogError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
    }
}

/// An append-only JSONL file of alerts.
pub struct AlertLog {
    path: PathBuf,
    file: File,
    len: u64,
    fsync: bool,
    alerts_written: u64,
    buf: Vec<u8>,
}

impl AlertLog {
    /// Opens (creating it and its folder if needed) the log at `path`. With
    /// `fsync`, every append is on disk before it returns.
    pub fn open(path: impl Into<PathBuf>, fsync: bool) -> Result<Self, AlertLogError> {
        let path = path.into();
        let err = |op| {
            let path = path.clone();
            move |source| AlertLogError::Io { op, path, source }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(err("create the folder of"))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err("open"))?;
        let len = file.metadata().map_err(err("stat"))?.len();
        Ok(AlertLog {
            path,
            file,
            len,
            fsync,
            alerts_written: 0,
            buf: Vec::new(),
        })
    }

    /// Appends alerts, one line each. On error nothing of the batch remains in the file.
    pub fn append(&mut self, alerts: &[Alert]) -> Result<(), AlertLogError> {
        if alerts.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for a in alerts {
            serde_json::to_writer(&mut self.buf, a).map_err(|source| AlertLogError::Encode {
                id: a.id.clone(),
                source,
            })?;
            self.buf.push(b'\n');
        }
        let fsync = self.fsync;
        let result = self.file.write_all(&self.buf).and_then(|()| {
            if fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.alerts_written += alerts.len() as u64;
                Ok(())
            }
            Err(source) => {
                // Cut a partial batch off so readers never see half a line.
                if let Err(e) = self.file.set_len(self.len) {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot cut a failed append off the alert log");
                }
                Err(AlertLogError::Io {
                    op: "append to",
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// Alerts written since open.
    pub fn alerts_written(&self) -> u64 {
        self.alerts_written
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_json_object_per_line_and_reopens_to_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/alerts.jsonl");
        let alert = |id: &str| Alert {
            id: id.into(),
            rule_id: "r".into(),
            time: 1,
            ..Default::default()
        };
        let mut log = AlertLog::open(&path, true).unwrap();
        log.append(&[alert("a"), alert("b")]).unwrap();
        drop(log);
        let mut log = AlertLog::open(&path, true).unwrap();
        log.append(&[alert("c")]).unwrap();
        assert_eq!(log.alerts_written(), 1);
        let text = fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Alert>(l).unwrap().id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn unwritable_location_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-folder");
        fs::write(&blocker, b"x").unwrap();
        let err = AlertLog::open(blocker.join("alerts.jsonl"), true)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not-a-folder"), "{err}");
    }
}
