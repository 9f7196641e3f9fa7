//! The `kafka:` section of vigil's configuration and the librdkafka settings
//! built from it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

/// Default topic alerts are published to.
pub const DEFAULT_TOPIC: &str = "vigil.alerts";

/// Default bound on the spool: 1 GiB of alerts waiting for the broker.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// Default number of alerts handed to librdkafka and not yet acknowledged.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// Publishing alerts to a Kafka topic (docs/kafka.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Topic alerts are published to.
    pub topic: String,
    /// Any librdkafka producer property, passed through as is and applied
    /// after vigil's defaults, e.g. `security.protocol: SASL_SSL`,
    /// `sasl.mechanism`, `ssl.ca.location`. An unknown property is an error at
    /// start-up.
    pub properties: BTreeMap<String, String>,
    /// Folder of the on-disk spool; `vigil serve` uses `DATA_DIR/spool/kafka`
    /// when this is not set.
    pub spool_dir: Option<PathBuf>,
    /// Most bytes of unacknowledged alerts the spool holds; past it `publish`
    /// refuses new alerts until the broker takes some.
    pub spool_max_bytes: u64,
    /// Most alerts handed to librdkafka and not yet acknowledged.
    pub max_in_flight: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topic: DEFAULT_TOPIC.into(),
            properties: BTreeMap::new(),
            spool_dir: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// The producer settings vigil relies on; `properties` may override any of them.
pub(crate) const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "vigil"),
    // An alert counts as sent only when every in-sync replica has it, and
    // retries never duplicate or reorder within a partition.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("max.in.flight.requests.per.connection", "5"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    // Same partition for the same key as the Java client, so Kafka Streams
    // and Connect co-partition with vigil's topic.
    ("partitioner", "murmur2_random"),
    // Feeds the broker connection state (`KafkaStats::connected`).
    ("statistics.interval.ms", "1000"),
];

impl KafkaConfig {
    /// The librdkafka configuration: vigil's defaults, then `properties`.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in PRODUCER_DEFAULTS {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}
