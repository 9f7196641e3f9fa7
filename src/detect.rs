//! `vigil detect`: one member of a consumer group that shares the event topic's
//! partitions and runs the rules on them (docs/scale-out.md).
//!
//! Each assigned partition is a task of its own, with its own rules engine
//! (so event time, the watermark and idle release are per partition). Every
//! `commit_interval` a task commits: it checks it still owns the partition
//! (a synchronous, generation-checked offset commit), publishes the alerts it
//! raised (idempotent producer, `acks=all`), then writes a checkpoint to the
//! state topic: the offset it stands at, the alert topic's high watermarks
//! after its alerts, and a snapshot of its engine. Alerts are only published
//! by commits, so work that is not committed has published nothing.
//!
//! A detector that takes a partition over restores the newest checkpoint,
//! continues from its offset, and first reads the alert topic from the
//! checkpoint's watermarks to its end: alerts the previous owner published
//! after its last checkpoint (it died between publishing and checkpointing)
//! are known by id there, and the new owner, which raises the same alerts
//! with the same ids (the engine is deterministic from a snapshot), does not
//! publish them again. So a crash or a rebalance neither loses an alert nor
//! publishes one twice. Kafka transactions would give the same without the
//! scan, but the test broker (tansu 0.6) has no EndTxn; docs/scale-out.md says
//! what that costs.
//!
//! Alerts also go to the detector's local alerts.jsonl and alert archive once
//! published, and consumed events to its event archive, as in `vigil serve`;
//! the alert topic is the record.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use event::{Alert, Event};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sinks::archive::ArchiveWriter;
use sinks::jsonl::AlertLog;
use sinks::kafka::{ClientLog, QuietContext};
use tracing::{error, info, warn};

use crate::config::Config;

/// Magic and format of a state-topic value: then the length of the JSON
/// [`Checkpoint`] header (4 bytes, little-endian), the header, and the
/// engine snapshot.
const STATE_MAGIC: &[u8; 8] = b"VGLDST1\0";
/// How long a publish or checkpoint may wait for the broker's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Header naming the partition that raised an alert, for the takeover scan.
const SOURCE_HEADER: &str = "vigil_source";

/// Where a partition's work stands, written with its engine snapshot.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    /// Offset of the next event-topic message to run.
    next_offset: i64,
    /// Alert topic high watermarks (partition, offset) after this
    /// checkpoint's alerts: alerts published later are past them.
    alerts_end: Vec<(i32, i64)>,
    /// Ids published by an earlier owner after its checkpoint, not yet raised
    /// again by the engine: never published twice.
    published: Vec<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: String,
}

#[derive(Clone, Default)]
struct DetectMetrics {
    lag: Family<PartitionLabel, Gauge>,
    state_bytes: Family<PartitionLabel, Gauge>,
    checkpoint_age: Family<PartitionLabel, Gauge>,
    partitions: Gauge,
    owned: Family<PartitionLabel, Gauge>,
    rebalances: Counter,
    commits: Counter,
    commit_failures: Counter,
    events: Counter,
    alerts: Counter,
    restores: Counter,
    hop: Histogram,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
        ))
    }
}

/// The Kafka hop's latency: from receipt at `vigil ingest` to the detector.
#[derive(Clone)]
struct Histogram(prometheus_client::metrics::histogram::Histogram);

impl DetectMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "vigil_detect_lag",
            "messages of the event topic not yet consumed, per partition",
            self.lag.clone(),
        );
        r.register(
            "vigil_detect_state_bytes",
            "size of the partition's last state checkpoint",
            self.state_bytes.clone(),
        );
        r.register(
            "vigil_detect_checkpoint_age_seconds",
            "seconds since the partition's last committed checkpoint",
            self.checkpoint_age.clone(),
        );
        r.register(
            "vigil_detect_partitions",
            "partitions this detector owns",
            self.partitions.clone(),
        );
        r.register(
            "vigil_detect_owned",
            "1 for each partition this detector runs",
            self.owned.clone(),
        );
        r.register(
            "vigil_detect_rebalances",
            "partition assignments and revocations seen",
            self.rebalances.clone(),
        );
        r.register(
            "vigil_detect_commits",
            "partition commits (offset, alerts, checkpoint)",
            self.commits.clone(),
        );
        r.register(
            "vigil_detect_commit_failures",
            "partition commits given up; their work is redone from the last checkpoint",
            self.commit_failures.clone(),
        );
        r.register(
            "vigil_detect_events",
            "events consumed",
            self.events.clone(),
        );
        r.register(
            "vigil_detect_alerts",
            "alerts committed to the alert topic",
            self.alerts.clone(),
        );
        r.register(
            "vigil_detect_hop_seconds",
            "from receipt at vigil ingest (observed_time) to the detector, per message",
            self.hop.0.clone(),
        );
        r.register(
            "vigil_detect_restores",
            "partitions taken over from a state checkpoint",
            self.restores.clone(),
        );
    }
}

/// Records revocations (inside `poll`), handled by the loop after it returns,
/// and turns librdkafka's statistics into the lag gauges.
struct GroupContext {
    revoked: Mutex<Vec<i32>>,
    assigned: Mutex<Vec<i32>>,
    rebalances: Counter,
    lag: Family<PartitionLabel, Gauge>,
    topic: String,
    log: ClientLog,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(t) = statistics.topics.get(&self.topic) {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.lag.get_or_create(&label(*p)).set(s.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.inc();
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(partitions = ?parts, "partitions revoked");
                if let Ok(mut g) = self.revoked.lock() {
                    g.extend(parts);
                }
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(partitions = ?parts, "partitions assigned");
                if let Ok(mut g) = self.assigned.lock() {
                    g.extend(parts);
                }
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

/// Settings of one detector.
struct Settings {
    brokers: String,
    group: String,
    events_topic: String,
    alerts_topic: String,
    state_topic: String,
    properties: BTreeMap<String, String>,
    commit_interval: Duration,
    idle: Duration,
}

/// librdkafka properties that only producers take; consumers are not given them.
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "batch.num.messages",
    "batch.size",
    "compression.codec",
    "compression.type",
    "enable.idempotence",
    "linger.ms",
    "message.timeout.ms",
    "partitioner",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "request.required.acks",
    "transactional.id",
];

impl Settings {
    /// A client's settings: the brokers, then `defaults`, then `properties`
    /// (so an operator can override any default; consumers are not given
    /// producer-only properties).
    fn client(&self, producer: bool, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            if producer || !PRODUCER_ONLY.contains(&k.as_str()) {
                c.set(k, v);
            }
        }
        c
    }

    fn state_key(&self, partition: i32) -> String {
        format!("{}/{}/{partition}", self.group, self.events_topic)
    }
}

/// Counts failed deliveries of the detector's producer.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::atomic::AtomicU64,
    last_error: Mutex<Option<String>>,
    log: ClientLog,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }
}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut g) = self.last_error.lock() {
                *g = Some(e.to_string());
            }
        }
    }
}

/// One owned partition.
struct Task {
    engine: rules::Engine,
    /// Offset of the next message to run.
    next_offset: i64,
    /// Offset of the last committed checkpoint (-1: none yet).
    checkpoint_offset: i64,
    /// Alert ids an earlier owner published past its checkpoint.
    published: std::collections::HashSet<String>,
    /// Alerts raised since the last commit, published by the next one.
    alerts: Vec<Alert>,
    /// Whether the consumer has been checked to stand at `next_offset`.
    positioned: bool,
    dirty: bool,
    last_message: Instant,
    idle_released: bool,
    last_commit: Instant,
}

pub fn run(config: Config, group: String) -> Result<()> {
    let brokers = config
        .kafka
        .brokers()
        .map(str::to_string)
        .context("vigil detect consumes from Kafka: give --kafka-brokers (or kafka.brokers)")?;
    let settings = Settings {
        brokers,
        group,
        events_topic: config.kafka.events_topic.clone(),
        alerts_topic: config.kafka.topic.clone(),
        state_topic: config.kafka.state_topic.clone(),
        properties: config.kafka.properties.clone(),
        commit_interval: config.kafka.commit_interval.max(Duration::from_millis(50)),
        idle: config.engine.idle_timeout,
    };
    let _locks = crate::serve::lock_data_dirs(&config)?;
    let ruleset = crate::load_rules(&config)?;
    info!(rules = ruleset.rules().len(), group = %settings.group, topic = %settings.events_topic, "rules loaded");
    // The event topic is the durable record of these events: the archive's
    // write-ahead log still covers a crash of this process, but is not
    // fsync'd per message (a power loss can cost the open files' last rows).
    let mut events_cfg = config.archive.archive_config(&config.data_dir);
    events_cfg.wal_fsync = false;
    let crate::serve::LocalOutputs {
        events: events_archive,
        alerts: alerts_archive,
        alert_log,
        ..
    } = crate::serve::LocalOutputs::open(&config, events_cfg)?;

    let metrics = DetectMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let ready: Arc<Mutex<Option<String>>> =
        Arc::new(Mutex::new(Some("joining the consumer group".into())));
    let stop = Arc::new(AtomicBool::new(false));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("vigil-io")
        .build()
        .context("cannot start the async runtime")?;
    let http = {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&config.http_listen))
            .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
        info!(http = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
        let (registry, ready, stop) = (registry.clone(), ready.clone(), stop.clone());
        runtime.spawn(async move {
            let app = status_router(registry, ready);
            let shutdown = async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                error!(error = %e, "status endpoint failed");
            }
        })
    };
    {
        let stop = stop.clone();
        runtime.spawn(async move {
            crate::serve::shutdown_signal().await;
            info!("stopping: committing every partition's work");
            stop.store(true, Ordering::Relaxed);
        });
    }

    let engine_config = config.engine.engine_config();
    let worker = {
        let (metrics, ready, stop) = (metrics.clone(), ready.clone(), stop.clone());
        std::thread::Builder::new()
            .name("vigil-detect".into())
            .spawn(move || {
                let producer = alert_producer(&settings)?;
                let mut d = Detector {
                    settings,
                    producer,
                    alert_partitions: Vec::new(),
                    ruleset,
                    engine_config,
                    tasks: HashMap::new(),
                    events_archive,
                    alerts_archive,
                    alert_log,
                    metrics,
                };
                let result = d.run(&ready, &stop);
                let closed = d
                    .events_archive
                    .close()
                    .context("closing the event archive")
                    .and(
                        d.alerts_archive
                            .close()
                            .context("closing the alert archive"),
                    );
                result.and(closed.map(|_| ()))
            })?
    };
    let result = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the detection thread panicked"))?;
    stop.store(true, Ordering::Relaxed);
    let _ = runtime.block_on(http);
    runtime.shutdown_timeout(Duration::from_secs(2));
    result?;
    info!("vigil detect stopped; every partition's work is committed");
    Ok(())
}

fn status_router(registry: Arc<Registry>, ready: Arc<Mutex<Option<String>>>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let why = ready.lock().ok().and_then(|g| g.clone());
                async move {
                    match why {
                        None => (StatusCode::OK, "ready\n".to_string()),
                        Some(w) => (StatusCode::SERVICE_UNAVAILABLE, format!("{w}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let mut out = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                async move { out }
            }),
        )
}

struct Detector {
    settings: Settings,
    producer: ThreadedProducer<Deliveries>,
    /// Partitions of the alert topic, for the checkpoints' watermarks.
    alert_partitions: Vec<i32>,
    ruleset: rules::RuleSet,
    engine_config: rules::EngineConfig,
    tasks: HashMap<i32, Task>,
    events_archive: ArchiveWriter<Event>,
    alerts_archive: ArchiveWriter<Alert>,
    alert_log: AlertLog,
    metrics: DetectMetrics,
}

impl Detector {
    fn run(&mut self, ready: &Mutex<Option<String>>, stop: &AtomicBool) -> Result<()> {
        // The topics must exist (partition counts are an operator's decision).
        loop {
            match self.topic_partitions(&self.settings.alerts_topic) {
                Ok(parts) if !parts.is_empty() => {
                    self.alert_partitions = parts;
                    break;
                }
                Ok(_) => set_ready(
                    ready,
                    Some(format!(
                        "kafka: topic {} does not exist",
                        self.settings.alerts_topic
                    )),
                ),
                Err(e) => set_ready(ready, Some(format!("kafka: {e:#}"))),
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let context = GroupContext {
            revoked: Mutex::new(Vec::new()),
            assigned: Mutex::new(Vec::new()),
            rebalances: self.metrics.rebalances.clone(),
            lag: self.metrics.lag.clone(),
            topic: self.settings.events_topic.clone(),
            log: ClientLog::default(),
        };
        let c = self.settings.client(
            false,
            &[
                ("group.id", &self.settings.group),
                ("client.id", "vigil-detect"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_committed"),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("statistics.interval.ms", "2000"),
                // A broker that holds a fetch for its whole wait even when data
                // arrives (tansu) would add up to this much to every alert.
                ("fetch.wait.max.ms", "100"),
            ],
        );
        let consumer: BaseConsumer<GroupContext> = c
            .create_with_context(context)
            .context("cannot create the Kafka consumer")?;
        consumer
            .subscribe(&[&self.settings.events_topic])
            .context("cannot subscribe to the event topic")?;
        info!(topic = %self.settings.events_topic, group = %self.settings.group, "consuming");
        let mut last_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let polled = consumer.poll(Duration::from_millis(100));
            self.drop_revoked(&consumer);
            self.take_assigned(&consumer);
            match polled {
                Some(Ok(m)) => {
                    if let Err(e) = self.on_message(&consumer, &m) {
                        error!(
                            partition = m.partition(),
                            offset = m.offset(),
                            error = format!("{e:#}"),
                            "partition dropped; it restarts from its last checkpoint"
                        );
                        self.abandon(&consumer, m.partition());
                    }
                }
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                None => {}
            }
            if last_tick.elapsed() >= Duration::from_millis(50) {
                last_tick = Instant::now();
                self.tick(&consumer);
                let state = match consumer.assignment() {
                    Ok(a) if a.count() > 0 || !self.tasks.is_empty() => None,
                    Ok(_) => Some("no partition assigned yet".to_string()),
                    Err(e) => Some(format!("kafka: {e}")),
                };
                set_ready(ready, state);
            }
        }
        // Shutdown: commit every partition (held events stay in the snapshot,
        // for whoever owns the partition next), then leave the group.
        let parts: Vec<i32> = self.tasks.keys().copied().collect();
        if let Err(e) = self.commit(&consumer, &parts) {
            warn!(
                error = format!("{e:#}"),
                "last commit failed; the next owners redo it"
            );
        }
        self.tasks.clear();
        consumer.unsubscribe();
        Ok(())
    }

    fn topic_partitions(&self, topic: &str) -> Result<Vec<i32>> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .with_context(|| format!("reading the metadata of {topic}"))?;
        Ok(md
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default())
    }

    /// Takes newly assigned partitions over right away, so state restored
    /// from a checkpoint runs (timers, idle release) even if no new message
    /// comes for the partition.
    fn take_assigned(&mut self, consumer: &BaseConsumer<GroupContext>) {
        let assigned: Vec<i32> = match consumer.context().assigned.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(_) => return,
        };
        for p in assigned {
            if self.tasks.contains_key(&p) {
                continue;
            }
            match self.take_over(p) {
                Ok(task) => {
                    self.tasks.insert(p, task);
                    self.metrics.owned.get_or_create(&label(p)).set(1);
                }
                Err(e) => {
                    error!(
                        partition = p,
                        error = format!("{e:#}"),
                        "cannot take the partition over; retrying at its next message"
                    )
                }
            }
        }
        self.metrics.partitions.set(self.tasks.len() as i64);
    }

    fn drop_revoked(&mut self, consumer: &BaseConsumer<GroupContext>) {
        let revoked: Vec<i32> = match consumer.context().revoked.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(_) => return,
        };
        for p in revoked {
            // Uncommitted work published nothing: the next owner redoes it from the checkpoint.
            self.tasks.remove(&p);
            self.metrics.owned.remove(&label(p));
        }
        self.metrics.partitions.set(self.tasks.len() as i64);
    }

    /// Forgets a partition's uncommitted work and rewinds the consumer to
    /// its checkpoint: the messages come again and re-create the task, which
    /// restores the checkpoint (or, if another detector owns the partition
    /// now, the revocation follows).
    fn abandon(&mut self, consumer: &BaseConsumer<GroupContext>, partition: i32) {
        self.metrics.commit_failures.inc();
        let Some(task) = self.tasks.remove(&partition) else {
            return;
        };
        self.metrics.owned.remove(&label(partition));
        self.metrics.partitions.set(self.tasks.len() as i64);
        let to = match task.checkpoint_offset {
            o if o >= 0 => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        if let Err(e) = consumer.seek(
            &self.settings.events_topic,
            partition,
            to,
            Duration::from_secs(10),
        ) {
            warn!(partition, error = %e, "cannot rewind to the checkpoint; the partition waits for the next rebalance");
        }
    }

    fn on_message(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        m: &BorrowedMessage<'_>,
    ) -> Result<()> {
        let p = m.partition();
        if !self.tasks.contains_key(&p) {
            let task = self.take_over(p)?;
            self.tasks.insert(p, task);
            self.metrics.owned.get_or_create(&label(p)).set(1);
            self.metrics.partitions.set(self.tasks.len() as i64);
        }
        let task = self.tasks.get_mut(&p).expect("just ensured");
        if task.next_offset >= 0 && m.offset() < task.next_offset {
            // Already in the checkpoint (fetched from a committed offset behind it).
            return Ok(());
        }
        if !task.positioned {
            task.positioned = true;
            if task.next_offset >= 0 && m.offset() > task.next_offset {
                // The group's offset ran ahead of the checkpoint (a crash
                // between the two): the checkpoint is the truth.
                let from = task.next_offset;
                info!(
                    partition = p,
                    from,
                    polled = m.offset(),
                    "seeking back to the checkpoint's offset"
                );
                consumer
                    .seek(
                        &self.settings.events_topic,
                        p,
                        Offset::Offset(from),
                        Duration::from_secs(10),
                    )
                    .context("seeking to the checkpoint")?;
                return Ok(());
            }
        }
        let events = match m.payload() {
            Some(bytes) => match event::wire::decode_events(bytes) {
                Ok(ev) => ev,
                Err(e) => {
                    // A message vigil cannot read is skipped, loudly, not retried forever.
                    error!(partition = p, offset = m.offset(), error = %e, "unreadable message on the event topic skipped");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        self.metrics.events.inc_by(events.len() as u64);
        if let Some(first) = events.first() {
            let hop_ns = ingest::now_ns().saturating_sub(first.observed_time);
            self.metrics.hop.0.observe(hop_ns.max(0) as f64 / 1e9);
        }
        if !events.is_empty() {
            self.events_archive
                .write(&events)
                .context("writing the event archive")?;
        }
        let alerts = task.engine.push(events);
        task.next_offset = m.offset() + 1;
        task.dirty = true;
        task.last_message = Instant::now();
        task.idle_released = false;
        raise(task, alerts);
        Ok(())
    }

    /// A new task for `partition`: restores the newest checkpoint and learns
    /// which alerts an earlier owner published after it.
    fn take_over(&mut self, partition: i32) -> Result<Task> {
        let mut engine = rules::Engine::new(self.ruleset.clone(), self.engine_config.clone());
        let mut next_offset = -1;
        let mut published = std::collections::HashSet::new();
        match self.read_checkpoint(partition)? {
            Some((cp, snapshot)) => {
                next_offset = cp.next_offset;
                match engine.restore(&snapshot) {
                    Ok(report) => {
                        self.metrics.restores.inc();
                        self.metrics
                            .state_bytes
                            .get_or_create(&label(partition))
                            .set(snapshot.len() as i64);
                        info!(partition, offset = cp.next_offset, bytes = snapshot.len(), changed = ?report.changed, new = ?report.new, "partition state restored from its checkpoint");
                    }
                    Err(e) => {
                        warn!(partition, error = %e, "checkpoint not usable; the partition continues from its offset with empty state");
                        engine =
                            rules::Engine::new(self.ruleset.clone(), self.engine_config.clone());
                    }
                }
                published.extend(cp.published);
                let later = self.published_since(partition, &cp.alerts_end)?;
                if !later.is_empty() {
                    info!(partition, alerts = later.len(), "alerts published after the checkpoint by the previous owner; they are not published again");
                }
                published.extend(later);
            }
            None => {
                // Nothing committed yet: an earlier owner may still have published
                // alerts before dying, so the whole alert topic is looked at.
                published.extend(self.published_since(partition, &[])?);
                info!(
                    partition,
                    "no checkpoint: the partition starts with empty state"
                );
            }
        }
        Ok(Task {
            checkpoint_offset: next_offset,
            engine,
            next_offset,
            published,
            alerts: Vec::new(),
            positioned: false,
            dirty: false,
            last_message: Instant::now(),
            // Events held in the checkpoint are released after the idle timeout
            // even if the partition stays quiet.
            idle_released: false,
            last_commit: Instant::now(),
        })
    }

    fn reader(&self, suffix: &str) -> Result<BaseConsumer<QuietContext>> {
        let group = format!("{}-{suffix}", self.settings.group);
        self.settings
            .client(
                false,
                &[
                    ("group.id", &group),
                    ("enable.auto.commit", "false"),
                    ("receive.message.max.bytes", "134217728"),
                    ("fetch.message.max.bytes", "67108864"),
                ],
            )
            .create_with_context(QuietContext::default())
            .context("cannot create a Kafka reader")
    }

    /// Reads `topic` from `from` (per partition) up to its current end,
    /// calling `each` on every message.
    fn scan(
        &self,
        topic: &str,
        only: Option<i32>,
        from: &[(i32, i64)],
        mut each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<()> {
        let reader = self.reader("scan")?;
        let md = reader
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("reading the metadata of {topic}"))?;
        let parts: Vec<i32> = md
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in parts.into_iter().filter(|p| only.is_none_or(|o| o == *p)) {
            let (_, high) = reader
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .with_context(|| format!("reading the end of {topic}"))?;
            let start = from.iter().find(|(q, _)| *q == p).map_or(0, |(_, o)| *o);
            if high > start {
                tpl.add_partition_offset(topic, p, Offset::Offset(start))
                    .context("assignment")?;
                ends.insert(p, high);
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
        reader.assign(&tpl).context("assigning the reader")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ends.is_empty() {
            anyhow::ensure!(Instant::now() < deadline, "reading {topic} took over 60 s");
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    each(&m);
                    if ends
                        .get(&m.partition())
                        .is_some_and(|end| m.offset() + 1 >= *end)
                    {
                        ends.remove(&m.partition());
                    }
                }
                Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
                None => {}
            }
        }
        Ok(())
    }

    /// Ids of alerts raised by `partition` on the alert topic past `from`.
    fn published_since(
        &self,
        partition: i32,
        from: &[(i32, i64)],
    ) -> Result<std::collections::HashSet<String>> {
        use rdkafka::message::Headers;
        let source = self.settings.state_key(partition);
        let mut ids = std::collections::HashSet::new();
        self.scan(&self.settings.alerts_topic, None, from, |m| {
            let Some(h) = m.headers() else { return };
            let mut mine = false;
            let mut id = None;
            for header in h.iter() {
                match header.key {
                    SOURCE_HEADER => mine = header.value == Some(source.as_bytes()),
                    "alert_id" => {
                        id = header
                            .value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    }
                    _ => {}
                }
            }
            if let (true, Some(id)) = (mine, id) {
                ids.insert(id);
            }
        })?;
        Ok(ids)
    }

    /// The newest checkpoint of `partition` and its engine snapshot.
    fn read_checkpoint(&self, partition: i32) -> Result<Option<(Checkpoint, Vec<u8>)>> {
        let key = self.settings.state_key(partition);
        let mut newest = None;
        // Only the state topic partition of the same number holds it.
        self.scan(&self.settings.state_topic, Some(partition), &[], |m| {
            if m.partition() == partition && m.key() == Some(key.as_bytes()) {
                if let Some(v) = m.payload() {
                    if let Some(cp) = parse_checkpoint(v) {
                        newest = Some(cp);
                    }
                }
            }
        })?;
        Ok(newest)
    }

    fn tick(&mut self, consumer: &BaseConsumer<GroupContext>) {
        let idle = self.settings.idle;
        let interval = self.settings.commit_interval;
        let parts: Vec<i32> = self.tasks.keys().copied().collect();
        let mut due = Vec::new();
        for p in parts {
            let task = self.tasks.get_mut(&p).expect("listed");
            if !task.idle_released && task.last_message.elapsed() >= idle {
                task.idle_released = true;
                let alerts = task.engine.on_idle();
                task.dirty = true;
                raise(task, alerts);
            }
            let task = self.tasks.get(&p).expect("listed");
            self.metrics
                .checkpoint_age
                .get_or_create(&label(p))
                .set(task.last_commit.elapsed().as_secs() as i64);
            if task.dirty && task.last_commit.elapsed() >= interval {
                due.push(p);
            }
        }
        if !due.is_empty() {
            if let Err(e) = self.commit(consumer, &due) {
                warn!(partitions = ?due, error = format!("{e:#}"), "commit failed; the partitions restart from their last checkpoints");
                for p in due {
                    self.abandon(consumer, p);
                }
            }
        }
        if let Err(e) = self.events_archive.tick(SystemTime::now()) {
            error!(error = %e, "event archive maintenance failed");
        }
        if let Err(e) = self.alerts_archive.tick(SystemTime::now()) {
            error!(error = %e, "alert archive maintenance failed");
        }
    }

    /// Commits partitions together (one round trip per step, whatever their
    /// number): checks they are still owned, publishes the alerts raised
    /// since their last commit, then writes their checkpoints. An error
    /// leaves them to be abandoned (redone from their last checkpoints).
    fn commit(&mut self, consumer: &BaseConsumer<GroupContext>, parts: &[i32]) -> Result<()> {
        let parts: Vec<i32> = parts
            .iter()
            .copied()
            .filter(|p| {
                self.tasks
                    .get(p)
                    .is_some_and(|t| t.dirty && t.next_offset >= 0)
            })
            .collect();
        if parts.is_empty() {
            return Ok(());
        }
        // Ownership: a member the group has moved on from gets an error here
        // (stale generation) and publishes nothing.
        let mut offsets = TopicPartitionList::new();
        for p in &parts {
            offsets
                .add_partition_offset(
                    &self.settings.events_topic,
                    *p,
                    Offset::Offset(self.tasks[p].next_offset),
                )
                .context("offset list")?;
        }
        consumer
            .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
            .context("committing the offsets (are the partitions still ours?)")?;
        self.producer.context().failed.store(0, Ordering::Relaxed);
        let mut published: Vec<(i32, Vec<Alert>)> = Vec::with_capacity(parts.len());
        for p in &parts {
            let source = self.settings.state_key(*p);
            let alerts = std::mem::take(&mut self.tasks.get_mut(p).expect("owned").alerts);
            for a in &alerts {
                let json = serde_json::to_vec(a).context("serializing an alert")?;
                let key = sinks::kafka::message_key(a);
                let headers =
                    sinks::kafka::message::message_headers(a).insert(rdkafka::message::Header {
                        key: SOURCE_HEADER,
                        value: Some(source.as_str()),
                    });
                self.producer
                    .send(
                        BaseRecord::to(&self.settings.alerts_topic)
                            .key(key.as_bytes())
                            .payload(&json)
                            .headers(headers),
                    )
                    .map_err(|(e, _)| anyhow::anyhow!("queueing an alert: {e}"))?;
            }
            published.push((*p, alerts));
        }
        if published.iter().any(|(_, a)| !a.is_empty()) {
            self.flushed().context("publishing alerts")?;
        }
        let mut alerts_end = Vec::with_capacity(self.alert_partitions.len());
        for ap in &self.alert_partitions {
            let (_, high) = self
                .producer
                .client()
                .fetch_watermarks(&self.settings.alerts_topic, *ap, Duration::from_secs(10))
                .context("reading the alert topic's end")?;
            alerts_end.push((*ap, high));
        }
        let mut sizes = Vec::with_capacity(parts.len());
        for p in &parts {
            let task = &self.tasks[p];
            let cp = Checkpoint {
                next_offset: task.next_offset,
                alerts_end: alerts_end.clone(),
                published: task.published.iter().cloned().collect(),
            };
            let value = encode_checkpoint(&cp, &task.engine.snapshot())?;
            let key = self.settings.state_key(*p);
            self.producer
                .send(
                    BaseRecord::to(&self.settings.state_topic)
                        .partition(*p)
                        .key(key.as_bytes())
                        .payload(&value),
                )
                .map_err(|(e, _)| anyhow::anyhow!("queueing the checkpoint: {e}"))?;
            sizes.push((*p, value.len()));
        }
        self.flushed().context("writing the checkpoints")?;
        for (p, size) in sizes {
            let task = self.tasks.get_mut(&p).expect("owned");
            task.dirty = false;
            task.last_commit = Instant::now();
            task.checkpoint_offset = task.next_offset;
            self.metrics
                .state_bytes
                .get_or_create(&label(p))
                .set(size as i64);
        }
        self.metrics.commits.inc_by(parts.len() as u64);
        for (p, alerts) in published {
            if alerts.is_empty() {
                continue;
            }
            self.metrics.alerts.inc_by(alerts.len() as u64);
            for a in &alerts {
                info!(rule = %a.rule_id, severity = %a.severity, user = a.user.as_deref().unwrap_or(""), session = a.session.as_deref().unwrap_or(""), partition = p, "{}", a.summary);
            }
            if let Err(e) = self.alert_log.append(&alerts) {
                error!(error = %e, "alerts published to Kafka but not written to alerts.jsonl");
            }
            if let Err(e) = self.alerts_archive.write(&alerts) {
                error!(error = %e, "alerts published to Kafka but not written to the alert archive");
            }
        }
        Ok(())
    }

    /// Waits until the broker acknowledged everything sent; an error if any failed.
    fn flushed(&self) -> Result<()> {
        self.producer
            .flush(ACK_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("no acknowledgement: {e}"))?;
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let why = self
                .producer
                .context()
                .last_error
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_default();
            anyhow::bail!("{failed} messages not delivered: {why}");
        }
        Ok(())
    }
}

/// Queues newly raised alerts for the next commit, except those an earlier
/// owner already published.
fn raise(task: &mut Task, alerts: Vec<Alert>) {
    for a in alerts {
        if task.published.remove(&a.id) {
            continue;
        }
        task.alerts.push(a);
    }
}

/// The detector's producer: idempotent, every alert and checkpoint acknowledged by all replicas.
fn alert_producer(settings: &Settings) -> Result<ThreadedProducer<Deliveries>> {
    settings
        .client(
            true,
            &[
                ("client.id", "vigil-detect"),
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "lz4"),
                ("linger.ms", "5"),
                ("partitioner", "murmur2_random"),
                ("message.max.bytes", "67108864"),
            ],
        )
        .create_with_context(Deliveries::default())
        .context("cannot create the Kafka producer")
}

fn encode_checkpoint(cp: &Checkpoint, snapshot: &[u8]) -> Result<Vec<u8>> {
    let header = serde_json::to_vec(cp).context("encoding the checkpoint")?;
    let mut v = Vec::with_capacity(STATE_MAGIC.len() + 4 + header.len() + snapshot.len());
    v.extend_from_slice(STATE_MAGIC);
    v.extend_from_slice(&(header.len() as u32).to_le_bytes());
    v.extend_from_slice(&header);
    v.extend_from_slice(snapshot);
    Ok(v)
}

fn parse_checkpoint(v: &[u8]) -> Option<(Checkpoint, Vec<u8>)> {
    let rest = v.strip_prefix(STATE_MAGIC.as_slice())?;
    let (len, rest) = rest.split_at_checked(4)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let (header, snapshot) = rest.split_at_checked(len)?;
    let cp: Checkpoint = serde_json::from_slice(header).ok()?;
    Some((cp, snapshot.to_vec()))
}

fn set_ready(slot: &Mutex<Option<String>>, value: Option<String>) {
    if let Ok(mut g) = slot.lock() {
        *g = value;
    }
}

fn label(p: i32) -> PartitionLabel {
    PartitionLabel {
        partition: p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_carry_their_position() {
        let cp = Checkpoint {
            next_offset: 42,
            alerts_end: vec![(0, 7), (2, 9)],
            published: vec!["a1".into()],
        };
        let v = encode_checkpoint(&cp, b"snap").unwrap();
        assert_eq!(parse_checkpoint(&v), Some((cp, b"snap".to_vec())));
        assert_eq!(parse_checkpoint(&v[..12]), None);
        assert_eq!(parse_checkpoint(b"other"), None);
    }

    #[test]
    fn alerts_an_earlier_owner_published_are_not_published_again() {
        let set = rules::RuleSet::load(true, &[], &rules::RulesContext::default()).unwrap();
        let mut task = Task {
            engine: rules::Engine::new(set, rules::EngineConfig::default()),
            next_offset: 0,
            checkpoint_offset: 0,
            published: ["a1".to_string()].into(),
            alerts: Vec::new(),
            positioned: true,
            dirty: false,
            last_message: Instant::now(),
            idle_released: true,
            last_commit: Instant::now(),
        };
        let alert = |id: &str| Alert {
            id: id.into(),
            ..Default::default()
        };
        raise(&mut task, vec![alert("a1"), alert("a2")]);
        let ids: Vec<&str> = task.alerts.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["a2"]);
        assert!(task.published.is_empty(), "a published id is matched once");
    }
}
