//! Scratch folders for work that leaves nothing behind: the archives of
//! `loadgen --stages`, the Kafka spool of `replay --kafka-brokers`.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// A scratch folder under the system's temporary folder
/// (`vigil-<purpose>-<pid>`), removed when dropped.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(purpose: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("vigil-{purpose}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
