//! vigil's detection stage: the YAML rule language, its compiler and the
//! stateful event-time [`Engine`], plus the embedded default rule pack.
//!
//! Data enters as batches of normalized [`event::Event`]s through
//! [`Engine::push`] and leaves as [`event::Alert`]s; nothing here knows about
//! OTLP, Kafka or Parquet. Rules are loaded with [`RuleSet::load`] (or
//! [`load`]), validated with [`check`], listed with [`RuleSet::rules`], and
//! their own `tests:` run with [`testing::run`]. docs/rules.md is the
//! language reference.

pub mod config;
mod engine;
mod field;
mod kinds;
mod list;
mod load;
mod predicate;
mod rule;
mod schedule;
mod shell;
pub mod testing;

use std::fmt;
use std::path::PathBuf;

pub use config::{BusinessHours, ClockTime, Day, EngineConfig, HoursOverride, Lists, RulesContext};
pub use engine::{held_size, Engine, EngineStats, RestoreReport, RuleStats, SnapshotError};
pub use load::{check, default_pack_files, load, RuleSet, MAX_FILE_BYTES};
pub use rule::{RuleInfo, RuleKind};

/// One problem in a rule or list file, located for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File name (`<default>/x.yaml` for the embedded pack, `vigil.yaml` for config lists).
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// What is wrong, naming the rule and field when there is one.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

/// Why rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

impl RulesError {
    /// The located problems (empty for I/O errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            RulesError::Invalid(d) => d,
            RulesError::Io { .. } => &[],
        }
    }
}
