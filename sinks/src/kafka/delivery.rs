//! The delivery thread: reads the spool in order, produces to Kafka, waits
//! for acknowledgements and advances the spool's cursor over the alerts the
//! broker has.
//!
//! Each message carries its spool sequence number as delivery opaque. Acks
//! may arrive out of order across partitions; the cursor moves over the
//! contiguous acknowledged prefix and the acknowledged ones past it are
//! remembered so they are not sent again. After a failed delivery the loop
//! lets everything in flight settle, then resends the unacknowledged alerts
//! from the cursor, in order, after a backoff.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event::Alert;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use super::client_log::ClientLog;
use super::message::{message_headers, message_key};
use super::spool::AlertSpool;
use super::{KafkaConfig, KafkaError, KafkaStats};

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the acknowledgement cursor is written while alerts flow; a crash
/// resends at most what was acknowledged in this window.
const PERSIST_EVERY: Duration = Duration::from_millis(100);
const READ_BATCH_RECORDS: usize = 1000;
const READ_BATCH_BYTES: usize = 4 << 20;

/// Counters and connection state, written by the producer callbacks and the loop.
#[derive(Default)]
pub(crate) struct Status {
    produced: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    log: ClientLog,
}

impl Status {
    fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    fn set_connected(&self, up: bool) {
        if self.connected.swap(up, Ordering::Relaxed) != up {
            if up {
                // The next outage is logged from its first report on.
                self.log.reset();
                tracing::info!("kafka broker connected");
            } else {
                tracing::warn!("kafka broker connection lost; alerts wait in the spool");
            }
        }
    }
}

/// What the publisher and the delivery thread share.
pub(crate) struct Shared {
    spool: Mutex<AlertSpool>,
    /// Signalled when alerts are appended or a stop is requested.
    pub(crate) wake: Condvar,
    pub(crate) status: Arc<Status>,
    pub(crate) spool_full: AtomicU64,
    stop_at: Mutex<Option<Instant>>,
    /// Tests stand in for a fatal producer error (set: the loop raises one)
    /// and for a client that cannot be created (the next this many attempts fail).
    #[cfg(test)]
    pub(crate) inject_fatal: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    pub(crate) failing_creates: std::sync::atomic::AtomicUsize,
}

impl Shared {
    pub(crate) fn new(spool: AlertSpool, status: Arc<Status>) -> Self {
        Shared {
            spool: Mutex::new(spool),
            wake: Condvar::new(),
            status,
            spool_full: AtomicU64::new(0),
            stop_at: Mutex::new(None),
            #[cfg(test)]
            inject_fatal: Default::default(),
            #[cfg(test)]
            failing_creates: Default::default(),
        }
    }

    pub(crate) fn lock_spool(&self) -> MutexGuard<'_, AlertSpool> {
        // A panic while holding the lock leaves the spool's in-memory index as
        // it was before the call: appends and acks update it only on success.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn request_stop(&self, at: Instant) {
        *self.stop_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        self.wake.notify_all();
    }

    fn stop_at(&self) -> Option<Instant> {
        *self.stop_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> KafkaStats {
        let (spooled, spool_bytes) = {
            let spool = self.lock_spool();
            (spool.pending(), spool.pending_bytes())
        };
        let s = &self.status;
        KafkaStats {
            produced: s.produced.load(Ordering::Relaxed),
            acknowledged: s.acknowledged.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            spooled,
            spool_bytes,
            spool_full: self.spool_full.load(Ordering::Relaxed),
            connected: s.connected.load(Ordering::Relaxed),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

type Report = (u64, Result<(), String>);

/// librdkafka callbacks: delivery reports are queued for the loop (they run
/// on the loop's thread, inside `poll`), statistics and errors feed [`Status`].
pub(crate) struct DeliveryContext {
    status: Arc<Status>,
    reports: Mutex<Vec<Report>>,
}

impl DeliveryContext {
    fn take_reports(&self, into: &mut Vec<Report>) {
        into.append(&mut self.reports.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.status.log.log(level, fac, message);
    }

    fn stats(&self, statistics: Statistics) {
        // Only real brokers count, not librdkafka's internal or logical (coordinator) ones.
        let up = statistics
            .brokers
            .values()
            .any(|b| b.state == "UP" && (b.source == "configured" || b.source == "learned"));
        self.status.set_connected(up);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.status.set_connected(false);
        }
        self.status.log.error(&error, reason);
        self.status.set_error(format!("{error}: {reason}"));
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.to_string()),
        };
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((seq as u64, outcome));
    }
}

/// Creates the producer; librdkafka checks every property here, so an
/// unknown or invalid one fails at once. Does not contact the broker.
pub(crate) fn create_producer(
    config: &KafkaConfig,
    status: Arc<Status>,
) -> Result<BaseProducer<DeliveryContext>, KafkaError> {
    let context = DeliveryContext {
        status,
        reports: Mutex::new(Vec::new()),
    };
    config
        .client_config()
        .create_with_context(context)
        .map_err(|e| KafkaError::Client(e.to_string()))
}

pub(crate) struct DeliveryLoop {
    config: KafkaConfig,
    producer: Option<BaseProducer<DeliveryContext>>,
    shared: Arc<Shared>,
    /// First sequence number not acknowledged (in memory; persisted lazily).
    cursor: u64,
    persisted: u64,
    last_persist: Instant,
    next_send: u64,
    in_flight: usize,
    acked_ahead: BTreeSet<u64>,
    rewind: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    reports: Vec<Report>,
}

impl DeliveryLoop {
    pub(crate) fn new(
        config: &KafkaConfig,
        producer: BaseProducer<DeliveryContext>,
        shared: Arc<Shared>,
    ) -> Self {
        let cursor = shared.lock_spool().acked();
        DeliveryLoop {
            config: config.clone(),
            producer: Some(producer),
            shared,
            cursor,
            persisted: cursor,
            last_persist: Instant::now(),
            next_send: cursor,
            in_flight: 0,
            acked_ahead: BTreeSet::new(),
            rewind: false,
            retry_at: None,
            backoff: MIN_BACKOFF,
            reports: Vec::new(),
        }
    }

    pub(crate) fn spawn(self) -> Result<JoinHandle<()>, KafkaError> {
        std::thread::Builder::new()
            .name("vigil-kafka".into())
            .spawn(move || self.run())
            .map_err(KafkaError::Thread)
    }

    fn run(mut self) {
        loop {
            let wait = if self.in_flight > 0 {
                Duration::from_millis(5)
            } else {
                Duration::ZERO
            };
            self.producer().poll(wait);
            self.handle_reports();
            #[cfg(test)]
            self.inject_fatal_error();
            if let Some((code, reason)) = self.producer().client().fatal_error() {
                if !self.restart_producer(&format!("{code:?}: {reason}")) {
                    break; // stopping without a producer: what is unsent stays spooled
                }
            }
            if self.rewind && self.in_flight == 0 {
                self.rewind = false;
                self.next_send = self.cursor;
                self.retry_at = Some(Instant::now() + self.backoff);
                tracing::info!(
                    from = self.cursor,
                    backoff_ms = self.backoff.as_millis() as u64,
                    "resending unacknowledged alerts from the kafka spool"
                );
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
            self.persist(false);
            if let Some(stop_at) = self.shared.stop_at() {
                let drained =
                    self.in_flight == 0 && self.cursor >= self.shared.lock_spool().next_seq();
                if drained || Instant::now() >= stop_at {
                    break;
                }
            }
            let sent = self.fill_window();
            if self.in_flight == 0 && sent == 0 {
                let spool = self.shared.lock_spool();
                if spool.next_seq() <= self.next_send || self.retry_at.is_some() || self.rewind {
                    let _ = self
                        .shared
                        .wake
                        .wait_timeout(spool, Duration::from_millis(50));
                }
            }
        }
        self.persist(true);
        if self.in_flight > 0 {
            tracing::info!(
                in_flight = self.in_flight,
                "kafka output stopping; unacknowledged alerts stay in the spool"
            );
        }
        // Dropping the producer purges what was not acknowledged; it stays spooled.
    }

    fn producer(&self) -> &BaseProducer<DeliveryContext> {
        self.producer
            .as_ref()
            .expect("the producer exists while the loop runs")
    }

    fn handle_reports(&mut self) {
        let producer = self
            .producer
            .as_ref()
            .expect("the producer exists while the loop runs");
        producer.context().take_reports(&mut self.reports);
        let status = self.shared.status.clone();
        for (seq, outcome) in self.reports.drain(..) {
            self.in_flight = self.in_flight.saturating_sub(1);
            match outcome {
                Ok(()) => {
                    status.acknowledged.fetch_add(1, Ordering::Relaxed);
                    status.set_connected(true);
                    if seq >= self.cursor {
                        self.acked_ahead.insert(seq);
                    }
                    self.backoff = MIN_BACKOFF;
                }
                Err(error) => {
                    status.failed.fetch_add(1, Ordering::Relaxed);
                    if !self.rewind {
                        tracing::warn!(error = %error, seq, "kafka delivery failed; the alert stays spooled and is sent again");
                    }
                    status.set_error(error);
                    self.rewind = true;
                }
            }
        }
        while self.acked_ahead.remove(&self.cursor) {
            self.cursor += 1;
        }
    }

    fn persist(&mut self, force: bool) {
        if self.cursor <= self.persisted || !(force || self.last_persist.elapsed() >= PERSIST_EVERY)
        {
            return;
        }
        let result = self.shared.lock_spool().ack(self.cursor);
        match result {
            Ok(()) => {
                self.persisted = self.cursor;
                self.last_persist = Instant::now();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot advance the kafka spool; acknowledged alerts may be sent again after a restart");
                self.shared.status.set_error(e.to_string());
            }
        }
    }

    /// Hands spooled alerts to librdkafka until the in-flight window is full.
    fn fill_window(&mut self) -> usize {
        if self.rewind || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return 0;
        }
        self.retry_at = None;
        let room = self
            .config
            .max_in_flight
            .max(1)
            .saturating_sub(self.in_flight);
        if room == 0 {
            return 0;
        }
        let batch = {
            let spool = self.shared.lock_spool();
            if self.next_send >= spool.next_seq() {
                return 0;
            }
            spool.read(
                self.next_send,
                room.min(READ_BATCH_RECORDS),
                READ_BATCH_BYTES,
            )
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the kafka spool");
                self.shared.status.set_error(e.to_string());
                self.retry_at = Some(Instant::now() + MAX_BACKOFF);
                return 0;
            }
        };
        let mut sent = 0;
        for (seq, payload) in batch {
            if seq < self.cursor || self.acked_ahead.contains(&seq) {
                self.next_send = seq + 1;
                continue;
            }
            // The payload is the JSON this process (or an earlier one) wrote.
            let alert: Alert = serde_json::from_slice(&payload).unwrap_or_else(|e| {
                tracing::warn!(seq, error = %e, "spooled alert is not valid alert JSON; sending it without key or headers");
                Alert::default()
            });
            let key = message_key(&alert);
            let record = BaseRecord::with_opaque_to(&self.config.topic, seq as usize)
                .payload(&payload[..])
                .key(key.as_bytes())
                .headers(message_headers(&alert));
            match self.producer().send(record) {
                Ok(()) => {
                    self.in_flight += 1;
                    self.next_send = seq + 1;
                    self.shared.status.produced.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                }
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => break,
                Err((e, _)) => {
                    self.shared.status.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(seq, id = %alert.id, error = %e, "librdkafka refused an alert; retrying after a backoff");
                    self.shared.status.set_error(e.to_string());
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    break;
                }
            }
        }
        sent
    }

    /// After a fatal error (e.g. the idempotent producer's sequence broke) the
    /// producer is unusable: settle what it holds and start a new one. A new
    /// one that cannot be created is retried with backoff (the alerts wait in
    /// the spool and /readyz says why) until it can, or until the output is
    /// stopped: then `false`, and the loop ends without a producer.
    fn restart_producer(&mut self, reason: &str) -> bool {
        tracing::error!(
            reason,
            "kafka producer hit a fatal error; starting a new one"
        );
        self.shared.status.set_error(format!("fatal: {reason}"));
        let producer = self
            .producer
            .take()
            .expect("the producer exists while the loop runs");
        producer.purge(PurgeConfig::default().queue().inflight());
        producer.poll(Duration::from_millis(100));
        producer.context().take_reports(&mut self.reports);
        self.producer = Some(producer);
        self.handle_reports();
        drop(self.producer.take());
        self.in_flight = 0;
        self.rewind = true;
        // Until a new producer reaches a broker, none is connected.
        self.shared.status.set_connected(false);
        let mut wait = MIN_BACKOFF;
        loop {
            match self.create_producer() {
                Ok(p) => {
                    self.producer = Some(p);
                    return true;
                }
                Err(e) => {
                    // The same configuration created a producer before: out of
                    // threads, memory or file descriptors, which may pass.
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot recreate the kafka producer; alerts wait in the spool");
                    self.shared
                        .status
                        .set_error(format!("cannot recreate the producer: {e}"));
                }
            }
            let spool = self.shared.lock_spool();
            if self.shared.stop_at().is_some() {
                return false;
            }
            let _ = self.shared.wake.wait_timeout(spool, wait);
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    fn create_producer(&self) -> Result<BaseProducer<DeliveryContext>, KafkaError> {
        #[cfg(test)]
        if self
            .shared
            .failing_creates
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(KafkaError::Client("the test refuses to create it".into()));
        }
        create_producer(&self.config, self.shared.status.clone())
    }

    /// Raises a fabricated fatal error in the producer when a test asks for one.
    #[cfg(test)]
    fn inject_fatal_error(&self) {
        if self.shared.inject_fatal.swap(false, Ordering::Relaxed) {
            use rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};
            // SAFETY: librdkafka's documented test hook, on the live client handle
            // this loop owns; the reason is a NUL-terminated static string.
            unsafe {
                rd_kafka_test_fatal_error(
                    self.producer().client().native_ptr(),
                    rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                    c"injected by a test".as_ptr(),
                );
            }
        }
    }
}
