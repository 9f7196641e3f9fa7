//! The event topic of a scaled-out vigil (docs/scale-out.md): `vigil ingest`
//! publishes normalized events to it, `vigil detect` consumes it.
//!
//! Every event goes to the partition of its subject: the message key is the
//! tenant and the user (or, without a user, the session, then the host), so
//! every piece of per-user and per-session state of the rules lives in one
//! partition. A batch is published as one message per subject (an Arrow IPC
//! stream, [`event::wire`]); [`EventPublisher::publish`] returns once the
//! broker has acknowledged all of them (`acks=all`, idempotent), and only
//! then is the sender of the batch answered, so an acknowledged record is in
//! Kafka.

use std::collections::BTreeMap;
use std::time::Duration;

use event::Event;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::config::PRODUCER_DEFAULTS;
use super::KafkaError;

/// Default topic of normalized events.
pub const DEFAULT_EVENTS_TOPIC: &str = "vigil.events";

/// The partition key of an event: `tenant`, a unit separator, then the
/// user, else the session, else the host (empty when none is known).
pub fn partition_key(e: &Event) -> String {
    let subject = e
        .user
        .as_deref()
        .or(e.session.as_deref())
        .or(e.host.as_deref())
        .unwrap_or("");
    let mut key = String::with_capacity(e.tenant.len() + 1 + subject.len());
    key.push_str(&e.tenant);
    key.push('\u{1f}');
    key.push_str(subject);
    key
}

/// Publishes event batches to the event topic.
pub struct EventPublisher {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl EventPublisher {
    /// A producer for `topic` on `brokers`, with vigil's producer defaults and
    /// then `properties`. A delivery not acknowledged within `timeout` fails.
    pub fn start(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers);
        for (k, v) in PRODUCER_DEFAULTS {
            c.set(*k, *v);
        }
        c.set("client.id", "vigil-ingest");
        // No connection-state statistics are read here.
        c.set("statistics.interval.ms", "0");
        c.set("message.timeout.ms", timeout.as_millis().to_string());
        for (k, v) in properties {
            c.set(k, v);
        }
        let producer: FutureProducer = c.create().map_err(|e| KafkaError::Client(e.to_string()))?;
        Ok(EventPublisher {
            producer,
            topic: topic.to_string(),
            timeout,
        })
    }

    /// Whether the broker answers and the topic exists, within `timeout`.
    pub fn check(&self, timeout: Duration) -> Result<usize, String> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| format!("kafka: {e}"))?;
        let t = md
            .topics()
            .first()
            .ok_or_else(|| format!("kafka: no metadata for topic {}", self.topic))?;
        if let Some(err) = t.error() {
            return Err(format!("kafka: topic {}: {err:?}", self.topic));
        }
        if t.partitions().is_empty() {
            return Err(format!("kafka: topic {} has no partitions", self.topic));
        }
        Ok(t.partitions().len())
    }

    /// Publishes `events` and waits until the broker has acknowledged every
    /// message; returns the number of messages.
    pub async fn publish(&self, events: &[Event]) -> Result<usize, String> {
        let mut groups: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for e in events {
            groups.entry(partition_key(e)).or_default().push(e.clone());
        }
        let version = event::EVENT_SCHEMA_VERSION.to_string();
        let mut deliveries = Vec::with_capacity(groups.len());
        for (key, group) in &groups {
            let value = event::wire::encode_events(group)
                .map_err(|e| format!("encoding events for the event topic: {e}"))?;
            let tenant = group[0].tenant.as_str();
            let headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header {
                    key: "content-type",
                    value: Some(event::wire::CONTENT_TYPE),
                })
                .insert(Header {
                    key: "schema_version",
                    value: Some(version.as_str()),
                })
                .insert(Header {
                    key: "tenant",
                    value: Some(tenant),
                });
            let record = FutureRecord::to(&self.topic)
                .key(key.as_bytes())
                .payload(&value)
                .headers(headers);
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| format!("kafka: cannot queue events: {e}"))?;
            deliveries.push(delivery);
        }
        let n = deliveries.len();
        for d in deliveries {
            match tokio::time::timeout(self.timeout + Duration::from_secs(1), d).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err((e, _)))) => return Err(format!("kafka: events not delivered: {e}")),
                Ok(Err(_)) => return Err("kafka: the producer went away".into()),
                Err(_) => return Err("kafka: no acknowledgement in time".into()),
            }
        }
        Ok(n)
    }

    /// Waits up to `timeout` for messages still in flight.
    pub fn flush(&self, timeout: Duration) -> Result<(), String> {
        self.producer
            .flush(timeout)
            .map_err(|e| format!("kafka: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subject_one_key() {
        let mut e = Event {
            tenant: "acme".into(),
            user: Some("ann".into()),
            session: Some("s1".into()),
            ..Default::default()
        };
        assert_eq!(partition_key(&e), "acme\u{1f}ann");
        e.user = None;
        assert_eq!(partition_key(&e), "acme\u{1f}s1");
        e.session = None;
        e.host = Some("h".into());
        assert_eq!(partition_key(&e), "acme\u{1f}h");
        e.host = None;
        assert_eq!(partition_key(&e), "acme\u{1f}");
    }
}
