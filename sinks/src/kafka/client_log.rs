//! How vigil's Kafka clients log what librdkafka reports. While a broker is
//! unreachable, librdkafka reports it on every reconnect attempt, several
//! times a second (some reports twice): an hour's outage would be thousands
//! of identical lines. Each kind of report is logged once a minute here,
//! with how many more came in between.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError as RdKafkaError;

/// How often one kind of report is logged while it repeats.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// The reports logged lately, by kind, with how many of each were left out since.
#[derive(Default)]
pub(crate) struct Repeats {
    seen: HashMap<String, (Instant, u64)>,
}

impl Repeats {
    /// Whether a report of `kind` at `now` is logged: `Some(n)` with the `n`
    /// of its kind left out since the last logged one, `None` to leave it out.
    pub(crate) fn admit(&mut self, kind: &str, now: Instant) -> Option<u64> {
        match self.seen.get_mut(kind) {
            Some((at, left_out)) if now.saturating_duration_since(*at) < REPEAT_LOG_EVERY => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                self.seen.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// librdkafka's log lines and client errors, logged through `tracing` with
/// repeats held back. Every Kafka client context of vigil's holds one.
#[derive(Default)]
pub struct ClientLog {
    repeats: Mutex<Repeats>,
}

impl ClientLog {
    fn admit(&self, kind: &str) -> Option<u64> {
        self.repeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(kind, Instant::now())
    }

    /// Starts over, so that the next outage is logged from its first report.
    pub fn reset(&self) {
        *self.repeats.lock().unwrap_or_else(|p| p.into_inner()) = Repeats::default();
    }

    /// For [`ClientContext::log`]. librdkafka's errors and warnings are
    /// logged at info: what matters of them also comes through
    /// [`ClientLog::error`], once.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                match self.admit(&format!("log {fac}")) {
                    Some(0) => tracing::info!(target: "librdkafka", facility = fac, "{message}"),
                    Some(more) => {
                        tracing::info!(target: "librdkafka", facility = fac, repeated = more, "{message}")
                    }
                    None => {}
                }
            }
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}")
            }
        }
    }

    /// For [`ClientContext::error`]: a warning, once a minute per kind of error.
    pub fn error(&self, error: &RdKafkaError, reason: &str) {
        match self.admit(&error.to_string()) {
            Some(0) => tracing::warn!(error = %error, "kafka: {reason}"),
            Some(more) => tracing::warn!(error = %error, repeated = more,
                "kafka: {reason} ({more} more like it since the last of these lines)"),
            None => {}
        }
    }
}

/// A client context that only logs, through [`ClientLog`]: for the clients
/// that need no callbacks of their own (the event publisher of `vigil
/// ingest`, the state readers of `vigil detect`).
#[derive(Default)]
pub struct QuietContext {
    log: ClientLog,
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        self.log.error(&error, reason);
    }
}

impl ConsumerContext for QuietContext {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker that stays away is reported on every reconnect: each kind of
    /// report is logged once a minute, with how many were left out.
    #[test]
    fn repeated_reports_are_logged_once_a_minute_with_a_count() {
        let mut r = Repeats::default();
        let t0 = Instant::now();
        let down = "Global error: AllBrokersDown";
        assert_eq!(r.admit(down, t0), Some(0), "the first is logged");
        for ms in (500..60_000).step_by(500) {
            assert_eq!(r.admit(down, t0 + Duration::from_millis(ms)), None);
        }
        // Another kind is not held back by the first.
        assert_eq!(
            r.admit(
                "Global error: BrokerTransportFailure",
                t0 + Duration::from_secs(1)
            ),
            Some(0)
        );
        assert_eq!(
            r.admit(down, t0 + Duration::from_secs(60)),
            Some(119),
            "a minute on, with the count"
        );
        assert_eq!(r.admit(down, t0 + Duration::from_secs(61)), None);
    }
}
