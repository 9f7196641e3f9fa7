//! vigil's outputs. Batches of events and alerts leave the pipeline here:
//!
//! - [`archive`]: every event and alert as Hive-partitioned zstd Parquet that
//!   auditors query with DuckDB, pyarrow, Spark or Trino, and the reader that
//!   `replay` uses to bring an archive back through the engine;
//! - [`jsonl`]: the alert log, one JSON alert per line, for the embedded
//!   (no Kafka) setup.
//!
//! Every sink here is synchronous and meant to run on its own thread, fed by a
//! bounded channel of batches.

pub mod archive;
pub mod jsonl;
pub mod kafka;
