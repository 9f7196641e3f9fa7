//! `vigil.yaml`: every setting of `vigil serve`, with its default, in one place.
//!
//! The file is optional; flags override it. Unknown keys are errors that name
//! the file, the line and the key, so a typo fails at start-up instead of
//! silently running with a default. docs/operations.md lists every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the OTLP/gRPC receiver.
    pub grpc_listen: String,
    /// Address of the OTLP/HTTP receiver, which also serves /healthz, /readyz and /metrics.
    pub http_listen: String,
    /// Where vigil keeps its data: `archive/`, `alerts.jsonl`.
    pub data_dir: PathBuf,
    /// Tenant of every event while authentication is off.
    pub tenant: String,
    /// Extra rule files or folders, loaded after the default pack.
    pub rules: Vec<PathBuf>,
    /// Load the embedded default rule pack.
    pub default_rules: bool,
    /// Extra mapping files or folders; a mapping named like a default one replaces it.
    pub mappings: Vec<PathBuf>,
    /// Named lists the rules reference (`approved_mcp_domains`, `internal_domains`, ...).
    pub lists: rules::Lists,
    /// Business hours for off-hours rules: time zone, days, start, end, per-user and per-tenant overrides.
    pub business_hours: rules::BusinessHours,
    /// Detection engine settings.
    pub engine: EngineSection,
    /// Receiver settings.
    pub ingest: IngestSection,
    /// Parquet archive of events and alerts.
    pub archive: ArchiveSection,
    /// Alert outputs besides the archive.
    pub alerts: AlertsSection,
    /// Kafka output for alerts (off unless `brokers` is set).
    pub kafka: KafkaSection,
    /// Capture of every accepted OTLP request, for exact replay (off unless `dir` is set).
    pub capture: CaptureSection,
    /// Authentication of OTLP senders.
    pub auth: AuthSection,
    /// TLS on both receivers.
    pub tls: TlsSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain; re-read on SIGHUP.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); re-read on SIGHUP.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates: turns on mTLS. The
    /// tokens file binds a certificate's common name to a tenant (`cn:<name>`).
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA, refuse clients without a certificate (default); when
    /// false they connect and authenticate with a bearer token.
    pub client_cert_required: bool,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_cert_required: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// YAML file mapping each tenant to `sha256:<hex>` hashes of its bearer tokens; re-read on SIGHUP.
    pub tokens_file: Option<PathBuf>,
    /// Accept unauthenticated senders on a non-loopback address (vigil warns at start and in /metrics).
    pub insecure_no_auth: bool,
    /// Records per second per tenant: `{default: {records_per_second, burst}, tenants: {name: {...}}}`.
    pub rate_limits: ingest::limits::RateLimits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    /// Folder for capture files; unset: no capture.
    pub dir: Option<PathBuf>,
    /// A capture file is closed and a new one started past this size.
    pub max_file_bytes: u64,
}

impl Default for CaptureSection {
    fn default() -> Self {
        CaptureSection {
            dir: None,
            max_file_bytes: 256 << 20,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_listen: "127.0.0.1:4317".into(),
            http_listen: "127.0.0.1:4318".into(),
            data_dir: PathBuf::from("vigil-data"),
            tenant: event::DEFAULT_TENANT.into(),
            rules: Vec::new(),
            default_rules: true,
            mappings: Vec::new(),
            lists: rules::Lists::default(),
            business_hours: rules::BusinessHours::default(),
            engine: EngineSection::default(),
            ingest: IngestSection::default(),
            archive: ArchiveSection::default(),
            alerts: AlertsSection::default(),
            kafka: KafkaSection::default(),
            capture: CaptureSection::default(),
            auth: AuthSection::default(),
            tls: TlsSection::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// How late (in event time) an event may arrive and still be handled as if in order.
    #[serde(with = "rules::config::duration_text")]
    pub allowed_lateness: Duration,
    /// After this long without any event, buffered events are released so timers fire on a quiet stream.
    #[serde(with = "rules::config::duration_text")]
    pub idle_timeout: Duration,
    /// Most keys one rule keeps state for.
    pub max_keys_per_rule: usize,
    /// Most evidence events attached to one alert.
    pub max_evidence: usize,
    /// Most events held for the watermark.
    pub max_buffered_events: usize,
    /// Most memory (MiB) the events held for the watermark may take: the
    /// engine's memory bound, which caps the lateness honoured under load.
    pub max_buffered_mib: usize,
    /// At start, replay this much of the newest archived events to rebuild the
    /// rules' state (0s: start empty). Cover the longest rule window (2h unattended).
    #[serde(with = "rules::config::duration_text")]
    pub restore_window: Duration,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = rules::EngineConfig::default();
        EngineSection {
            allowed_lateness: d.allowed_lateness,
            idle_timeout: Duration::from_secs(5),
            max_keys_per_rule: d.max_keys_per_rule,
            max_evidence: d.max_evidence,
            max_buffered_events: d.max_buffered_events,
            max_buffered_mib: d.max_buffered_mib,
            restore_window: Duration::from_secs(3 * 3600),
        }
    }
}

impl EngineSection {
    pub fn engine_config(&self) -> rules::EngineConfig {
        rules::EngineConfig {
            allowed_lateness: self.allowed_lateness,
            max_keys_per_rule: self.max_keys_per_rule,
            max_evidence: self.max_evidence,
            max_buffered_events: self.max_buffered_events,
            max_buffered_mib: self.max_buffered_mib,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    /// Largest request accepted, after decompression (OTLP recommends 64 MiB).
    pub max_body_bytes: usize,
    /// Requests that may wait for the pipeline at once; past it senders get 429 / RESOURCE_EXHAUSTED.
    pub queue_batches: usize,
    /// How long a request waits for room in the queue before it is pushed back.
    #[serde(with = "rules::config::duration_text")]
    pub submit_timeout: Duration,
    /// Resident memory vigil should stay under, in MiB (0: no limit). Above
    /// `memory_limit_mib - memory_spike_mib` senders get 429 / RESOURCE_EXHAUSTED.
    pub memory_limit_mib: u64,
    /// Headroom under the limit for one burst (0: a fifth of the limit).
    pub memory_spike_mib: u64,
    /// How far past the time vigil receives it a sender's newest record may
    /// lie. A sender further ahead (a wrong clock) has its records moved back
    /// to the receipt time, keeping their order, so it cannot move the rules'
    /// event time past every other sender's.
    #[serde(with = "rules::config::duration_text")]
    pub max_clock_ahead: Duration,
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            max_body_bytes: 64 << 20,
            queue_batches: 64,
            submit_timeout: Duration::from_millis(500),
            memory_limit_mib: 0,
            memory_spike_mib: 0,
            max_clock_ahead: ingest::normalize::DEFAULT_MAX_CLOCK_AHEAD,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSection {
    /// Archive root; default `DATA_DIR/archive`.
    pub dir: Option<PathBuf>,
    /// Rows per Parquet row group.
    pub row_group_rows: Option<usize>,
    /// Close a file once it reaches this size.
    pub max_file_bytes: Option<u64>,
    /// Close a file this long after its first row (rows become visible to readers then).
    #[serde(default, with = "opt_duration")]
    pub max_file_age: Option<Duration>,
    /// Delete whole `date=` partitions older than this many days.
    pub retention_days: Option<u32>,
    /// Keep accepted events in a write-ahead log until their Parquet file is complete.
    pub wal: Option<bool>,
    /// fsync the write-ahead log for every batch.
    pub wal_fsync: Option<bool>,
    /// Write the write-ahead log with direct I/O, past the page cache.
    pub wal_direct_io: Option<bool>,
    /// Files (hours of event time) open at once; past it the oldest closes.
    pub max_open_files: Option<usize>,
    /// zstd level of the Parquet pages, 1-22.
    pub zstd_level: Option<i32>,
    /// Rotate write-ahead log segments at this size.
    pub wal_segment_bytes: Option<u64>,
}

impl ArchiveSection {
    pub fn archive_config(&self, data_dir: &Path) -> sinks::archive::ArchiveConfig {
        let mut c = sinks::archive::ArchiveConfig::new(
            self.dir.clone().unwrap_or_else(|| data_dir.join("archive")),
        );
        if let Some(v) = self.row_group_rows {
            c.row_group_rows = v;
        }
        if let Some(v) = self.max_file_bytes {
            c.max_file_bytes = v;
        }
        if let Some(v) = self.max_file_age {
            c.max_file_age_secs = v.as_secs().max(1);
        }
        c.retention_days = self.retention_days;
        if let Some(v) = self.wal {
            c.wal = v;
        }
        if let Some(v) = self.wal_fsync {
            c.wal_fsync = v;
        }
        if let Some(v) = self.wal_direct_io {
            c.wal_direct_io = v;
        }
        if let Some(v) = self.max_open_files {
            c.max_open_files = v;
        }
        if let Some(v) = self.zstd_level {
            c.zstd_level = v;
        }
        if let Some(v) = self.wal_segment_bytes {
            c.wal_segment_bytes = v;
        }
        c
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// Alerts as JSON lines; default `DATA_DIR/alerts.jsonl`.
    pub jsonl: Option<PathBuf>,
    /// fsync the alert file after every batch of alerts.
    pub fsync: bool,
    /// Also print each alert as one line on standard output.
    pub stdout: bool,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            jsonl: None,
            fsync: true,
            stdout: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Bootstrap servers, `host:port[,host:port]`; unset keeps vigil broker-free.
    pub brokers: Option<String>,
    /// Topic alerts are published to.
    pub topic: String,
    /// Any librdkafka producer property, passed through (SASL, TLS, ...).
    pub properties: BTreeMap<String, String>,
    /// Spool folder for alerts the broker has not acknowledged; default `DATA_DIR/spool/kafka`.
    pub spool_dir: Option<PathBuf>,
    /// Most bytes the spool holds before alerts wait in memory (and /readyz says so).
    pub spool_max_bytes: u64,
    /// Scale-out: the topic `vigil ingest` publishes normalized events to and `vigil detect` reads.
    pub events_topic: String,
    /// Scale-out: the topic `vigil detect` checkpoints each partition's rule state to.
    pub state_topic: String,
    /// Scale-out: how often `vigil detect` commits a partition's alerts, state and offset together.
    #[serde(with = "rules::config::duration_text")]
    pub commit_interval: Duration,
}

impl Default for KafkaSection {
    fn default() -> Self {
        let d = sinks::kafka::KafkaConfig::default();
        KafkaSection {
            brokers: None,
            topic: d.topic,
            properties: BTreeMap::new(),
            spool_dir: None,
            spool_max_bytes: d.spool_max_bytes,
            events_topic: sinks::kafka::events::DEFAULT_EVENTS_TOPIC.into(),
            state_topic: "vigil.state".into(),
            commit_interval: Duration::from_secs(1),
        }
    }
}

impl KafkaSection {
    /// The broker list, when one is configured (blank counts as none).
    pub fn brokers(&self) -> Option<&str> {
        self.brokers.as_deref().filter(|b| !b.trim().is_empty())
    }

    /// The publisher's settings, when a broker is configured.
    pub fn kafka_config(&self, data_dir: &Path) -> Option<sinks::kafka::KafkaConfig> {
        let brokers = self.brokers()?;
        Some(sinks::kafka::KafkaConfig {
            brokers: brokers.to_string(),
            topic: self.topic.clone(),
            properties: self.properties.clone(),
            spool_dir: Some(
                self.spool_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("spool").join("kafka")),
            ),
            spool_max_bytes: self.spool_max_bytes,
            ..Default::default()
        })
    }
}

mod opt_duration {
    use super::*;
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| rules::config::duration_text::parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Largest configuration file read; a real one is a few KiB.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

impl Config {
    /// The file given with `--config`, else vigil's defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config> {
        path.map_or_else(|| Ok(Config::default()), Config::load)
    }

    /// Reads and validates a configuration file; errors name the file, line and key.
    pub fn load(path: &Path) -> Result<Config> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{}: cannot read the configuration", path.display()))?;
        if meta.len() > MAX_CONFIG_BYTES {
            bail!(
                "{}: {} bytes is larger than a configuration file may be ({MAX_CONFIG_BYTES})",
                path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the configuration", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, name: &str) -> Result<Config> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let config: Config = serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(loc) => anyhow::anyhow!("{name}:{}:{}: {e}", loc.line(), loc.column()),
            None => anyhow::anyhow!("{name}: {e}"),
        })?;
        // Values that parse but leave nothing working.
        if config.ingest.max_body_bytes == 0 {
            bail!("{name}: ingest.max_body_bytes is 0: every request would be refused as too large (the default is 67108864, 64 MiB)");
        }
        if config.ingest.queue_batches == 0 {
            bail!("{name}: ingest.queue_batches is 0: no request could wait for the pipeline (the default is 64)");
        }
        if config.tenant.trim().is_empty() {
            bail!("{name}: tenant is empty: name the tenant events without a token belong to (the default is \"{}\")", event::DEFAULT_TENANT);
        }
        Ok(config)
    }

    pub fn alerts_path(&self) -> PathBuf {
        self.alerts
            .jsonl
            .clone()
            .unwrap_or_else(|| self.data_dir.join("alerts.jsonl"))
    }

    pub fn rules_context(&self) -> rules::RulesContext {
        rules::RulesContext {
            lists: self.lists.clone(),
            business_hours: self.business_hours.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_keys_of_the_docs_are_accepted_and_nonsense_values_refused() {
        let c = Config::parse(
            "archive:\n  max_file_age: 30s\n  max_open_files: 8\n  zstd_level: 3\n  wal_segment_bytes: 1048576\n",
            "vigil.yaml",
        )
        .expect("parses");
        let a = c.archive.archive_config(Path::new("d"));
        assert_eq!(
            (
                a.max_file_age_secs,
                a.max_open_files,
                a.zstd_level,
                a.wal_segment_bytes
            ),
            (30, 8, 3, 1 << 20)
        );
        for (text, says) in [
            (
                "ingest:\n  max_body_bytes: 0\n",
                "ingest.max_body_bytes is 0",
            ),
            ("ingest:\n  queue_batches: 0\n", "ingest.queue_batches is 0"),
            ("tenant: ''\n", "tenant is empty"),
        ] {
            let e = Config::parse(text, "vigil.yaml").unwrap_err().to_string();
            assert!(e.starts_with("vigil.yaml: ") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn scenario_fragments_are_accepted_as_written() {
        let c = Config::parse(
            "lists:\n  approved_mcp_domains: ['*.slack.com', mcp.atlassian.com]\nbusiness_hours:\n  timezone: America/New_York\n  days: [mon, tue, wed, thu, fri]\n  start: '08:00'\n  end: '19:00'\n  users:\n    ken@example.com: {timezone: Asia/Tokyo}\n",
            "vigil.yaml",
        )
        .expect("parses");
        assert_eq!(c.lists.0["approved_mcp_domains"].len(), 2);
        assert_eq!(c.grpc_listen, "127.0.0.1:4317");
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let err = Config::parse("engine:\n  idle_timeout: 1s\n  idel: 3\n", "vigil.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("vigil.yaml:3:"), "{err}");
        assert!(err.contains("idel"), "{err}");
        let err = Config::parse("engine:\n  idle_timeout: soon\n", "vigil.yaml")
            .unwrap_err()
            .to_string();
        // At the value, with its key: not at the section.
        assert!(
            err.starts_with("vigil.yaml:2:17: engine.idle_timeout:") && err.contains("soon"),
            "{err}"
        );
    }
}
