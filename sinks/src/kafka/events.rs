//! The event topic of a scaled-out vigil (docs/scale-out.md): `vigil ingest`
//! publishes normalized events to it, `vigil detect` consumes it.
//!
//! Every event goes to the partition of its subject: [`partition_key`] is the
//! tenant and the user (or, without a user, the session, then the host), and
//! the partition is Kafka's default for that key (murmur2, as the Java
//! client and librdkafka's `murmur2_random` compute it), so every piece of
//! per-user and per-session state of the rules lives in one partition. A
//! batch is published as one message per partition it touches (an Arrow IPC
//! stream, [`event::wire`]), not one per subject: a request of a thousand
//! users' records is a handful of messages. [`EventPublisher::publish`]
//! returns once the broker has acknowledged all of them (`acks=all`,
//! idempotent), and only then is the sender of the batch answered, so an
//! acknowledged record is in Kafka.

use std::collections::BTreeMap;
use std::time::Duration;

use event::Event;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::client_log::QuietContext;
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

/// Kafka's default partitioner hash (the Java client's `Utils.murmur2`, also
/// librdkafka's `murmur2`): which partition a key's records go to.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions`, as Kafka's default partitioner picks it.
pub fn partition_for(key: &str, partitions: u32) -> i32 {
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions.max(1)) as i32
}

/// Publishes event batches to the event topic.
pub struct EventPublisher {
    producer: FutureProducer<QuietContext>,
    topic: String,
    timeout: Duration,
    /// Partition count of the topic, read from the broker (0: not yet known).
    partitions: std::sync::atomic::AtomicU32,
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
        let producer: FutureProducer<QuietContext> = c
            .create_with_context(QuietContext::default())
            .map_err(|e| KafkaError::Client(e.to_string()))?;
        Ok(EventPublisher {
            producer,
            topic: topic.to_string(),
            timeout,
            partitions: std::sync::atomic::AtomicU32::new(0),
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
        self.partitions.store(
            t.partitions().len() as u32,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(t.partitions().len())
    }

    /// Publishes `events` and waits until the broker has acknowledged every
    /// message; returns the number of messages.
    pub async fn publish(&self, events: &[Event]) -> Result<usize, String> {
        let partitions = self.partitions.load(std::sync::atomic::Ordering::Relaxed);
        if partitions == 0 {
            return Err(format!(
                "kafka: the partitions of {} are not known yet",
                self.topic
            ));
        }
        let mut groups: BTreeMap<i32, Vec<Event>> = BTreeMap::new();
        for e in events {
            groups
                .entry(partition_for(&partition_key(e), partitions))
                .or_default()
                .push(e.clone());
        }
        let version = event::EVENT_SCHEMA_VERSION.to_string();
        let mut deliveries = Vec::with_capacity(groups.len());
        for (partition, group) in &groups {
            let value = event::wire::encode_events(group)
                .map_err(|e| format!("encoding events for the event topic: {e}"))?;
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: "content-type",
                    value: Some(event::wire::CONTENT_TYPE),
                })
                .insert(Header {
                    key: "schema_version",
                    value: Some(version.as_str()),
                });
            let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(&self.topic)
                .partition(*partition)
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
    fn partitions_are_kafkas_default_for_the_key() {
        // Values of the Java client's Utils.murmur2 (cross-checked with the
        // partitions librdkafka's murmur2_random picked in the end-to-end tests).
        assert_eq!(partition_for("default\u{1f}erin@example.com", 6), 2);
        assert_eq!(partition_for("default\u{1f}ivan@example.com", 6), 0);
        assert_eq!(partition_for("default\u{1f}mike@example.com", 6), 4);
        assert_eq!(partition_for("default\u{1f}judy@example.com", 6), 3);
        assert_eq!(partition_for("default\u{1f}frank@example.com", 6), 5);
        assert_eq!(murmur2(b""), 275646681);
    }

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
