//! The Kafka alert output: alerts to a topic (`vigil.alerts` by default) that
//! a SOC consumes with kcat, Kafka Connect or its own consumer.
//!
//! The detection thread calls [`AlertPublisher::publish`], which appends the
//! batch to an on-disk [`spool::AlertSpool`] (fsync'd) and returns. A
//! delivery thread owned by the publisher reads the spool in order, hands
//! alerts to an idempotent `acks=all` librdkafka producer and advances the
//! spool only for alerts the broker acknowledged. While the broker is away
//! alerts wait in the spool and go out, in order, when it returns; a restart
//! resumes the spool. docs/kafka.md describes the messages and guarantees.

mod client_log;
mod config;
mod delivery;
pub mod events;
pub mod message;
pub mod spool;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event::Alert;

pub use client_log::{ClientLog, QuietContext};
pub use config::{KafkaConfig, DEFAULT_MAX_IN_FLIGHT, DEFAULT_SPOOL_MAX_BYTES, DEFAULT_TOPIC};
pub use message::message_key;
use spool::AlertSpool;

/// Errors of the Kafka output.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid kafka configuration: {0}")]
    Config(String),
    #[error("kafka producer configuration rejected by librdkafka: {0}")]
    Client(String),
    #[error("cannot {op} kafka spool {}: {source}", path.display())]
    Spool {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kafka spool {} is full: {pending_bytes} bytes wait for the broker, \
         {batch_bytes} more would pass spool_max_bytes ({max_bytes})",
        dir.display()
    )]
    SpoolFull {
        dir: PathBuf,
        pending_bytes: u64,
        batch_bytes: u64,
        max_bytes: u64,
    },
    #[error("alert of {bytes} bytes is too large for the kafka spool")]
    RecordTooLarge { bytes: usize },
    #[error("cannot encode alert {id} as JSON: {source}")]
    Encode {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot start the kafka delivery thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the kafka delivery thread has stopped")]
    DeliveryStopped,
}

/// Counters and state of the Kafka output, for metrics and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaStats {
    /// Alerts handed to librdkafka, resends after a failure included.
    pub produced: u64,
    /// Alerts the broker acknowledged (each spooled alert once).
    pub acknowledged: u64,
    /// Delivery attempts that failed; the alert stayed in the spool and is sent again.
    pub failed: u64,
    /// Alerts in the spool not yet acknowledged.
    pub spooled: u64,
    /// Bytes of those alerts on disk (bounded by `spool_max_bytes`).
    pub spool_bytes: u64,
    /// `publish` calls refused because the spool was full.
    pub spool_full: u64,
    /// True while librdkafka has a live connection to at least one broker.
    pub connected: bool,
    /// The last delivery or connection error, if any.
    pub last_error: Option<String>,
}

/// Publishes alerts to Kafka through the on-disk spool; see the module docs.
pub struct AlertPublisher {
    shared: Arc<delivery::Shared>,
    thread: Option<JoinHandle<()>>,
    encoded: Vec<Vec<u8>>,
    full: bool,
}

impl AlertPublisher {
    /// Opens the spool (resuming whatever an earlier run left in it), creates
    /// the producer and starts the delivery thread. Never waits for the
    /// broker: an unreachable one gives a publisher whose `stats().connected`
    /// is false and whose alerts wait in the spool. An unknown or invalid
    /// librdkafka property is an immediate [`KafkaError::Client`].
    pub fn start(config: &KafkaConfig) -> Result<Self, KafkaError> {
        if config.brokers.trim().is_empty() {
            return Err(KafkaError::Config("kafka.brokers is empty".into()));
        }
        if config.topic.trim().is_empty() {
            return Err(KafkaError::Config("kafka.topic is empty".into()));
        }
        let spool_dir = config
            .spool_dir
            .clone()
            .ok_or_else(|| KafkaError::Config("kafka.spool_dir is not set".into()))?;
        // Fail on bad properties before touching the spool.
        let status = Arc::new(delivery::Status::default());
        let producer = delivery::create_producer(config, status.clone())?;
        let spool = AlertSpool::open(spool_dir, config.spool_max_bytes)?;
        if spool.pending() > 0 {
            tracing::info!(spool = %spool.dir().display(), alerts = spool.pending(),
                "kafka spool holds alerts from an earlier run; sending them first");
        }
        let shared = Arc::new(delivery::Shared::new(spool, status));
        let thread = delivery::DeliveryLoop::new(config, producer, shared.clone()).spawn()?;
        Ok(AlertPublisher {
            shared,
            thread: Some(thread),
            encoded: Vec::new(),
            full: false,
        })
    }

    /// Appends alerts to the spool (durably) for delivery in order. When the
    /// spool is full nothing of the batch is taken and [`KafkaError::SpoolFull`]
    /// says so; call again later with the same alerts.
    pub fn publish(&mut self, alerts: &[Alert]) -> Result<(), KafkaError> {
        if alerts.is_empty() {
            return Ok(());
        }
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(KafkaError::DeliveryStopped);
        }
        self.encoded.resize_with(alerts.len(), Vec::new);
        for (buf, alert) in self.encoded.iter_mut().zip(alerts) {
            buf.clear();
            serde_json::to_writer(&mut *buf, alert).map_err(|source| KafkaError::Encode {
                id: alert.id.clone(),
                source,
            })?;
        }
        let result = self
            .shared
            .lock_spool()
            .append(&self.encoded[..alerts.len()]);
        match &result {
            Ok(()) => {
                if self.full {
                    self.full = false;
                    tracing::info!("kafka spool has room again");
                }
                self.shared.wake.notify_one();
            }
            Err(e @ KafkaError::SpoolFull { .. }) => {
                self.shared.spool_full.fetch_add(1, Ordering::Relaxed);
                if !self.full {
                    self.full = true;
                    tracing::error!(error = %e, "kafka spool is full; alerts are not taken until the broker catches up");
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Current counters and state.
    pub fn stats(&self) -> KafkaStats {
        self.shared.stats()
    }

    /// Stops the delivery thread, giving it up to `timeout` to deliver what is
    /// spooled; what is not acknowledged by then stays in the spool for the
    /// next start. Returns the final stats.
    pub fn close(mut self, timeout: Duration) -> KafkaStats {
        self.stop(timeout);
        self.shared.stats()
    }

    fn stop(&mut self, timeout: Duration) {
        if let Some(thread) = self.thread.take() {
            self.shared.request_stop(Instant::now() + timeout);
            if thread.join().is_err() {
                tracing::error!("the kafka delivery thread panicked");
            }
        }
    }
}

impl Drop for AlertPublisher {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}
