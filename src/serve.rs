//! `vigil serve`: the receivers, the archive stage and the detection stage of
//! one process, wired ingest -> rules -> sinks.
//!
//! Threads: the tokio runtime runs the gRPC and HTTP receivers; the archive
//! stage (one OS thread) writes each accepted batch to the Parquet archive and
//! only then acknowledges it to the receiver; the detection stage (another OS
//! thread) runs the rules engine on the same batches and writes alerts to the
//! JSONL file and the alert archive. Stages are joined by bounded channels, so
//! a slow stage slows the one before it and, in the end, the senders (429).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use event::{Alert, Event};
use ingest::{IngestBatch, IngestMetrics, MappingSet, Normalizer, PipelineHandle};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sinks::archive::ArchiveWriter;
use sinks::jsonl::AlertLog;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::Config;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// Resident memory and what the memory limiter refused, read at scrape time.
#[derive(Clone, Default)]
struct MemoryGauges {
    rss: Gauge,
    limit: Gauge,
    over: Gauge,
    refused: Gauge,
}

impl MemoryGauges {
    fn register(r: &mut Registry) -> MemoryGauges {
        let g = MemoryGauges::default();
        r.register(
            "vigil_memory_rss_bytes",
            "resident memory of the process",
            g.rss.clone(),
        );
        r.register(
            "vigil_memory_limit_bytes",
            "ingest.memory_limit_mib in bytes (0: no limit)",
            g.limit.clone(),
        );
        r.register(
            "vigil_memory_over_soft_limit",
            "1 while RSS is above the soft limit and new data is refused",
            g.over.clone(),
        );
        r.register(
            "vigil_memory_refused_requests",
            "export requests refused because memory was above the soft limit",
            g.refused.clone(),
        );
        g
    }

    fn update(&self, limiter: Option<&ingest::memory::MemoryLimiter>) {
        let rss = ingest::memory::resident_bytes().unwrap_or(0);
        self.rss.set(rss as i64);
        if let Some(m) = limiter {
            self.limit.set(m.limit() as i64);
            self.over.set(m.is_over() as i64);
            self.refused.set(m.refused() as i64);
        }
    }
}

/// Counters and gauges of the archive and detection stages.
#[derive(Clone, Default)]
struct PipelineMetrics {
    queue_depth: Gauge,
    events_archived: Counter,
    archive_errors: Counter,
    archive_healthy: Gauge,
    alerts: Family<RuleLabel, Counter>,
    alert_sink_errors: Counter,
    late_events: Gauge,
    duplicate_events: Gauge,
    forced_releases: Gauge,
    buffered_events: Gauge,
    buffered_bytes: Gauge,
    state_keys: Family<RuleLabel, Gauge>,
    suppressed: Family<RuleLabel, Gauge>,
    watermark_seconds: Gauge,
    kafka_produced: Counter,
    kafka_acknowledged: Counter,
    kafka_failed: Counter,
    kafka_spool_full: Counter,
    kafka_spool_alerts: Gauge,
    kafka_spool_bytes: Gauge,
    kafka_connected: Gauge,
    /// Seconds each stage spent working (not waiting for input): a rate near
    /// 1 says that stage is what limits the pipeline.
    archive_busy: Counter<f64, AtomicU64>,
    detect_busy: Counter<f64, AtomicU64>,
}

impl PipelineMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "vigil_queue_depth",
            "batches waiting between the receivers and the archive stage",
            self.queue_depth.clone(),
        );
        r.register(
            "vigil_events_archived",
            "events written to the archive (write-ahead log) and acknowledged",
            self.events_archived.clone(),
        );
        r.register(
            "vigil_archive_errors",
            "archive writes that failed; the sender was answered 503",
            self.archive_errors.clone(),
        );
        r.register(
            "vigil_archive_busy_seconds",
            "seconds the archive stage spent writing (log, Parquet) rather than waiting for batches; a rate near 1 means it limits the pipeline",
            self.archive_busy.clone(),
        );
        r.register(
            "vigil_detect_busy_seconds",
            "seconds the detection stage spent running rules and writing alerts rather than waiting for events; a rate near 1 means it limits the pipeline",
            self.detect_busy.clone(),
        );
        r.register(
            "vigil_archive_healthy",
            "1 when the archive accepts writes",
            self.archive_healthy.clone(),
        );
        r.register(
            "vigil_alerts",
            "alerts raised, by rule",
            self.alerts.clone(),
        );
        r.register(
            "vigil_alert_sink_errors",
            "failed writes of alerts to the JSONL file or archive (retried)",
            self.alert_sink_errors.clone(),
        );
        r.register(
            "vigil_engine_late_events",
            "events that arrived later than the allowed lateness (archived, judged out of order)",
            self.late_events.clone(),
        );
        r.register(
            "vigil_engine_duplicate_events",
            "copies of an event the engine already held, dropped (a sender sent a batch again: at-least-once delivery); the archive keeps both, with the same event_id",
            self.duplicate_events.clone(),
        );
        r.register(
            "vigil_engine_buffered_events",
            "events waiting for the watermark",
            self.buffered_events.clone(),
        );
        r.register(
            "vigil_engine_buffered_bytes",
            "estimated memory of the events waiting for the watermark (bounded by engine.max_buffered_mib)",
            self.buffered_bytes.clone(),
        );
        r.register(
            "vigil_engine_forced_releases",
            "times engine.max_buffered_events or engine.max_buffered_mib released held events before their watermark",
            self.forced_releases.clone(),
        );
        r.register(
            "vigil_engine_state_keys",
            "keys with detection state, by rule",
            self.state_keys.clone(),
        );
        r.register(
            "vigil_engine_suppressed",
            "triggers folded by suppression, by rule",
            self.suppressed.clone(),
        );
        r.register(
            "vigil_engine_watermark_seconds",
            "event-time watermark, seconds since the epoch",
            self.watermark_seconds.clone(),
        );
        r.register(
            "vigil_kafka_alerts_produced",
            "alerts handed to the Kafka producer",
            self.kafka_produced.clone(),
        );
        r.register(
            "vigil_kafka_alerts_acknowledged",
            "alerts the broker acknowledged (acks=all)",
            self.kafka_acknowledged.clone(),
        );
        r.register(
            "vigil_kafka_alerts_failed",
            "failed delivery attempts (the alert stays in the spool)",
            self.kafka_failed.clone(),
        );
        r.register(
            "vigil_kafka_spool_full",
            "times the spool refused alerts because it was full",
            self.kafka_spool_full.clone(),
        );
        r.register(
            "vigil_kafka_spool_alerts",
            "alerts in the spool, not yet acknowledged",
            self.kafka_spool_alerts.clone(),
        );
        r.register(
            "vigil_kafka_spool_bytes",
            "bytes in the spool",
            self.kafka_spool_bytes.clone(),
        );
        r.register(
            "vigil_kafka_broker_connected",
            "1 while the producer reaches a broker",
            self.kafka_connected.clone(),
        );
    }

    /// Brings the Kafka metrics up to the publisher's own counters.
    fn observe_kafka(&self, s: &sinks::kafka::KafkaStats) {
        let catch_up = |c: &Counter, total: u64| {
            let have = c.get();
            if total > have {
                c.inc_by(total - have);
            }
        };
        catch_up(&self.kafka_produced, s.produced);
        catch_up(&self.kafka_acknowledged, s.acknowledged);
        catch_up(&self.kafka_failed, s.failed);
        catch_up(&self.kafka_spool_full, s.spool_full);
        self.kafka_spool_alerts.set(s.spooled as i64);
        self.kafka_spool_bytes.set(s.spool_bytes as i64);
        self.kafka_connected.set(s.connected as i64);
    }
}

/// Signals between the stages that are not data.
#[derive(Default)]
struct StageControl {
    /// Set once the receivers have stopped.
    stopping: AtomicBool,
    /// The detection stage asks the archive stage to close its open files, so
    /// that everything accepted is readable before state is rebuilt from it.
    flush_requested: AtomicU64,
    flush_done: AtomicU64,
}

impl StageControl {
    /// Asks for a flush and waits for it (bounded: a stuck archive must not stop detection).
    fn flush_archive(&self, timeout: Duration) -> bool {
        let ticket = self.flush_requested.fetch_add(1, Ordering::AcqRel) + 1;
        let deadline = Instant::now() + timeout;
        while self.flush_done.load(Ordering::Acquire) < ticket {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// What /readyz reports: each stage says what is wrong with it, if anything.
#[derive(Default)]
struct Health {
    archive: Mutex<Option<String>>,
    alerts: Mutex<Option<String>>,
    kafka: Mutex<Option<String>>,
    detection_alive: AtomicBool,
}

impl Health {
    fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
        if let Ok(mut g) = slot.lock() {
            *g = value;
        }
    }

    fn check(&self) -> Result<(), String> {
        if !self.detection_alive.load(Ordering::Relaxed) {
            return Err("the detection stage is not running".into());
        }
        for slot in [&self.archive, &self.alerts, &self.kafka] {
            if let Ok(g) = slot.lock() {
                if let Some(why) = g.as_ref() {
                    return Err(why.clone());
                }
            }
        }
        Ok(())
    }
}

/// Refuses to expose unauthenticated receivers beyond this machine unless asked to.
pub(crate) fn check_exposure(config: &Config) -> Result<bool> {
    // Either credential authenticates: a token, or a client certificate every
    // sender must present.
    let client_certs = config.tls.client_ca_file.is_some() && config.tls.client_cert_required;
    if config.auth.tokens_file.is_some() || client_certs {
        return Ok(false);
    }
    let mut exposed = Vec::new();
    for addr in [&config.grpc_listen, &config.http_listen] {
        let resolved: Vec<std::net::SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
                .with_context(|| format!("cannot resolve the listen address {addr}"))?
                .collect();
        if resolved.iter().any(|a| !a.ip().is_loopback()) {
            exposed.push(addr.clone());
        }
    }
    if exposed.is_empty() {
        return Ok(false);
    }
    if !config.auth.insecure_no_auth {
        anyhow::bail!(
            "refusing to listen on {} without authentication: anyone who reaches it could inject or forge telemetry. \
             Give --auth-tokens FILE (see `vigil token new`) or --tls-client-ca FILE, listen on 127.0.0.1, or pass --insecure-no-auth",
            exposed.join(" and ")
        );
    }
    warn!(listen = %exposed.join(", "), "listening beyond loopback WITHOUT authentication (--insecure-no-auth)");
    Ok(true)
}

/// The archives and the alert file a process that detects writes.
pub(crate) struct LocalOutputs {
    pub archive_cfg: sinks::archive::ArchiveConfig,
    pub events: ArchiveWriter<Event>,
    pub alerts: ArchiveWriter<Alert>,
    pub alert_log: AlertLog,
    pub alerts_path: std::path::PathBuf,
}

impl LocalOutputs {
    /// Opens them; `events_cfg` is the event archive's settings (the alert
    /// archive uses `config`'s).
    pub(crate) fn open(config: &Config, events_cfg: sinks::archive::ArchiveConfig) -> Result<Self> {
        let archive_cfg = config.archive.archive_config(&config.data_dir);
        let open_err = |what: &str| {
            format!(
                "cannot open the {what} archive in {}",
                archive_cfg.dir.display()
            )
        };
        let events = ArchiveWriter::open(events_cfg).with_context(|| open_err("event"))?;
        let alerts = ArchiveWriter::open(archive_cfg.clone()).with_context(|| open_err("alert"))?;
        let alerts_path = config.alerts_path();
        let alert_log = AlertLog::open(&alerts_path, config.alerts.fsync)
            .with_context(|| format!("cannot open the alert file {}", alerts_path.display()))?;
        Ok(LocalOutputs {
            archive_cfg,
            events,
            alerts,
            alert_log,
            alerts_path,
        })
    }
}

/// The tokens file, when authentication is on.
pub(crate) fn load_auth(config: &Config) -> Result<Option<Arc<ingest::auth::Authenticator>>> {
    Ok(match &config.auth.tokens_file {
        Some(path) => {
            let a = ingest::auth::Authenticator::open(path).context("loading the auth tokens")?;
            info!(tokens = a.tokens(), file = %path.display(), "senders must present a bearer token");
            Some(Arc::new(a))
        }
        None => None,
    })
}

/// Takes the data directory (and the archive's, when it lies elsewhere) for
/// this process: a second `vigil serve` or `vigil detect` on the same folder
/// would remove the first one's open files and write-ahead log. The locks
/// hold while the returned files are open and go with the process, however
/// it ends.
pub fn lock_data_dirs(config: &Config) -> Result<Vec<std::fs::File>> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let mut dirs = vec![config.data_dir.clone()];
    if let Some(archive) = &config.archive.dir {
        std::fs::create_dir_all(archive).with_context(|| {
            format!("cannot create the archive directory {}", archive.display())
        })?;
        let same = |a: &std::path::Path, b: &std::path::Path| {
            a.canonicalize()
                .ok()
                .is_some_and(|a| Some(a) == b.canonicalize().ok())
        };
        if !same(archive, &config.data_dir) {
            dirs.push(archive.clone());
        }
    }
    let mut locks = Vec::new();
    for dir in dirs {
        let path = dir.join(".vigil.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => locks.push(file),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "{} is in use by another vigil process (it holds {}); give each process its own --data-dir",
                dir.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
    Ok(locks)
}

pub fn run(config: Config) -> Result<()> {
    let insecure = check_exposure(&config)?;
    let auth = load_auth(&config)?;
    let _locks = lock_data_dirs(&config)?;
    let mappings = MappingSet::load(&config.mappings).context("loading mappings")?;
    let ruleset = crate::load_rules(&config)?;
    info!(
        rules = ruleset.rules().len(),
        mappings = mappings.mappings().count(),
        "rules and mappings loaded"
    );

    let LocalOutputs {
        archive_cfg,
        events: event_writer,
        alerts: alert_writer,
        alert_log,
        alerts_path,
    } = LocalOutputs::open(&config, config.archive.archive_config(&config.data_dir))?;

    let publisher = match config.kafka.kafka_config(&config.data_dir) {
        Some(k) => {
            let p = sinks::kafka::AlertPublisher::start(&k)
                .with_context(|| format!("cannot start the Kafka alert output to {}", k.brokers))?;
            info!(brokers = %k.brokers, topic = %k.topic, "publishing alerts to Kafka");
            Some(p)
        }
        None => None,
    };

    let mut registry = Registry::default();
    let ingest_metrics = IngestMetrics::default();
    ingest_metrics.register(&mut registry);
    let pm = PipelineMetrics::default();
    pm.register(&mut registry);
    let health = Arc::new(Health::default());
    if let Some(brokers) = &config.kafka.brokers {
        // Not ready until the producer has reached a broker.
        Health::set(
            &health.kafka,
            Some(format!("kafka: connecting to {brokers}")),
        );
    }
    health.detection_alive.store(true, Ordering::Relaxed);

    let (pipeline, batches) =
        PipelineHandle::channel(config.ingest.queue_batches, config.ingest.submit_timeout);
    // The archive writes Arrow columns: the receivers' threads build them.
    let pipeline = pipeline.with_columns();
    // Few slots: a slot holds up to a group commit of events, and a slow
    // detection stage must push back on the archive stage, and so on the
    // senders, rather than pile events up in memory.
    let (engine_tx, engine_rx) = sync_channel::<Vec<Vec<Event>>>(DETECT_QUEUE_BATCHES);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigil-io")
        .build()
        .context("cannot start the async runtime")?;

    // Set once the receivers have stopped: the archive stage then refuses new
    // batches, drains the queue and closes, even if a lingering connection
    // still holds a pipeline handle.
    let control = Arc::new(StageControl::default());
    let archive_thread = {
        let (health, pm, handle) = (health.clone(), pm.clone(), runtime.handle().clone());
        let control = control.clone();
        std::thread::Builder::new()
            .name("vigil-archive".into())
            .spawn(move || {
                archive_stage(
                    handle,
                    batches,
                    event_writer,
                    engine_tx,
                    &control,
                    &health,
                    &pm,
                )
            })?
    };
    let (reload_tx, reload_rx) = std::sync::mpsc::channel::<rules::RuleSet>();
    // The newest event of the restored state: whether the stream was live
    // just before this start (the clock protection, below).
    let restored_newest;
    let detect_thread = {
        let (health, pm) = (health.clone(), pm.clone());
        // A restore window of 0 s means start empty: no snapshot either.
        let snapshot = (!config.engine.restore_window.is_zero())
            .then(|| crate::restore::snapshot_path(&config.data_dir));
        let from_snapshot = snapshot.as_deref().and_then(|p| {
            crate::restore::load_snapshot(&ruleset, &config.engine.engine_config(), p)
        });
        let (engine, restored) = match from_snapshot {
            Some(engine) => (engine, crate::restore::Restored::default()),
            None => {
                let mut engine = rules::Engine::new(ruleset, config.engine.engine_config());
                let restored = crate::restore::warm_up(
                    &mut engine,
                    &archive_cfg.dir,
                    &alerts_path,
                    config.engine.restore_window,
                )?;
                (engine, restored)
            }
        };
        restored_newest = engine.newest_event_time();
        let setup = DetectSetup {
            idle: config.engine.idle_timeout,
            missed: restored.missed,
            reloads: reload_rx,
            rebuild: Rebuild {
                control: control.clone(),
                archive_dir: archive_cfg.dir.clone(),
                alerts_path: alerts_path.clone(),
                restore_window: config.engine.restore_window,
                engine_config: config.engine.engine_config(),
            },
            snapshot,
        };
        let stdout = config.alerts.stdout;
        std::thread::Builder::new()
            .name("vigil-detect".into())
            .spawn(move || {
                let outputs = AlertOutputs {
                    log: alert_log,
                    archive: alert_writer,
                    kafka: publisher,
                    stdout,
                };
                detect_stage(engine, engine_rx, outputs, setup, &health, &pm)
            })?
    };

    let (ingest, capture) = front_door(
        &config,
        FrontDoor {
            insecure,
            auth,
            mappings,
            pipeline: pipeline.clone(),
            registry,
            metrics: ingest_metrics,
            queue_depth: pm.queue_depth.clone(),
            readiness: {
                let health = health.clone();
                Arc::new(move || health.check())
            },
        },
    )?;
    drop(pipeline);
    if let Some(newest) = restored_newest {
        if ingest
            .normalizer
            .heard_before_start(newest, ingest::now_ns())
        {
            info!(
                newest = %event::format_ns(newest),
                "the stream was live until just before this start: records of a sender whose clock runs ahead are moved back from the first request"
            );
        }
    }

    let result = runtime.block_on(serve_receivers(&config, ingest, Some(reload_tx)));
    control.stopping.store(true, Ordering::Relaxed);
    // The receivers are gone and with them every pipeline handle: the archive
    // stage drains what was accepted, closes, and the detection stage follows.
    let archive_result = archive_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the archive stage panicked"))?;
    let detect_result = detect_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the detection stage panicked"))?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Some(c) = capture {
        let writer = Arc::try_unwrap(c).ok().and_then(|m| m.into_inner().ok());
        match writer {
            Some(w) => w.close().context("closing the capture file")?,
            None => warn!("the capture file is still in use at shutdown; it is put in place at the next start"),
        }
    }
    result?;
    archive_result?;
    detect_result?;
    info!("vigil stopped; everything accepted is archived");
    Ok(())
}

/// What the receivers are built from, in every role that receives OTLP.
pub(crate) struct FrontDoor {
    pub insecure: bool,
    pub auth: Option<Arc<ingest::auth::Authenticator>>,
    pub mappings: MappingSet,
    pub pipeline: PipelineHandle,
    pub registry: Registry,
    pub metrics: IngestMetrics,
    pub queue_depth: Gauge,
    pub readiness: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

type Capture = Option<Arc<Mutex<ingest::capture::CaptureWriter>>>;

/// The receivers' shared state: capture, memory limiter, rate limits and the
/// metrics endpoint around the pipeline handle.
pub(crate) fn front_door(config: &Config, parts: FrontDoor) -> Result<(ingest::Ingest, Capture)> {
    let FrontDoor {
        insecure,
        auth,
        mappings,
        pipeline,
        mut registry,
        metrics: ingest_metrics,
        queue_depth,
        readiness,
    } = parts;
    let capture = match &config.capture.dir {
        Some(dir) => {
            let w = ingest::capture::CaptureWriter::open(dir, config.capture.max_file_bytes)
                .with_context(|| format!("cannot open the capture folder {}", dir.display()))?;
            info!(dir = %dir.display(), "capturing every accepted OTLP request");
            Some(Arc::new(Mutex::new(w)))
        }
        None => None,
    };
    let insecure_gauge = Gauge::<i64>::default();
    insecure_gauge.set(insecure as i64);
    registry.register(
        "vigil_insecure_no_auth",
        "1 when vigil listens beyond loopback without authentication",
        insecure_gauge,
    );
    let memory = (config.ingest.memory_limit_mib > 0).then(|| {
        let limit = config.ingest.memory_limit_mib << 20;
        let spike = match config.ingest.memory_spike_mib {
            0 => limit / 5,
            mib => (mib << 20).min(limit),
        };
        let m = ingest::memory::MemoryLimiter::new(limit, spike);
        m.spawn_monitor(Duration::from_millis(100));
        info!(
            limit_mib = limit >> 20,
            soft_limit_mib = m.soft_limit() >> 20,
            "memory limiter on"
        );
        m
    });
    let memory_gauges = MemoryGauges::register(&mut registry);
    let registry = Arc::new(registry);
    let limits = ingest::limits::TenantLimiter::new(config.auth.rate_limits.clone())
        .map_err(anyhow::Error::msg)?;
    let ingest = ingest::Ingest {
        limits: (!limits.is_empty()).then(|| Arc::new(limits)),
        memory: memory.clone(),
        auth: auth.clone(),
        capture: capture.clone(),
        normalizer: Normalizer::new(Arc::new(mappings))
            .with_max_clock_ahead(config.ingest.max_clock_ahead),
        pipeline: pipeline.clone(),
        metrics: ingest_metrics,
        tenant: config.tenant.as_str().into(),
        max_body_bytes: config.ingest.max_body_bytes,
        render_metrics: {
            let (registry, pipeline) = (registry.clone(), pipeline.clone());
            let memory = memory.clone();
            Arc::new(move || {
                queue_depth.set(pipeline.depth() as i64);
                memory_gauges.update(memory.as_deref());
                let mut out = String::new();
                if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
                    warn!(error = %e, "metrics encoding failed");
                }
                out
            })
        },
        readiness,
    };
    Ok((ingest, capture))
}

pub(crate) async fn serve_receivers(
    config: &Config,
    ingest: ingest::Ingest,
    rules_reload: Option<std::sync::mpsc::Sender<rules::RuleSet>>,
) -> Result<()> {
    let grpc_listener = tokio::net::TcpListener::bind(&config.grpc_listen)
        .await
        .with_context(|| format!("cannot listen for OTLP/gRPC on {}", config.grpc_listen))?;
    let http_listener = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .with_context(|| format!("cannot listen for OTLP/HTTP on {}", config.http_listen))?;
    info!(grpc = %grpc_listener.local_addr()?, http = %http_listener.local_addr()?, data_dir = %config.data_dir.display(), "vigil is receiving OTLP");

    let tls = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => {
            let client = config
                .tls
                .client_ca_file
                .as_ref()
                .map(|ca| ingest::tls::ClientAuth {
                    ca_file: ca.clone(),
                    required: config.tls.client_cert_required,
                });
            let http = ingest::tls::TlsConfig::load(cert, key, client.as_ref(), &[b"http/1.1"])
                .context("loading the TLS certificate")?;
            let grpc = http
                .with_alpn(&[b"h2"])
                .context("setting up TLS for gRPC")?;
            info!(cert = %cert.display(), client_certificates = http.verifies_clients(), "TLS on both receivers");
            Some((grpc, http))
        }
        (None, None) if config.tls.client_ca_file.is_some() => {
            anyhow::bail!("tls.client_ca_file (--tls-client-ca) needs TLS on: give cert_file and key_file (--tls-cert and --tls-key)")
        }
        (None, None) => None,
        _ => anyhow::bail!("tls needs both cert_file and key_file (--tls-cert and --tls-key)"),
    };

    #[cfg(unix)]
    {
        // SIGHUP re-reads the rule files, the tokens file and the certificate;
        // whatever does not load is reported and what is in force stays.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let auth = ingest.auth.clone();
        let certs = tls.as_ref().map(|(grpc, _)| grpc.clone());
        let rules_config = config.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // Compiling rules is CPU work: off the runtime's threads.
                let loaded = match rules_reload.as_ref() {
                    Some(tx) => {
                        let cfg = rules_config.clone();
                        let compiled = tokio::task::spawn_blocking(move || crate::load_rules(&cfg))
                            .await
                            .unwrap_or_else(|e| {
                                Err(anyhow::anyhow!("rule compilation panicked: {e}"))
                            });
                        Some((tx, compiled))
                    }
                    None => None,
                };
                match loaded {
                    Some((tx, Ok(set))) => {
                        info!(rules = set.len(), "rule files reloaded");
                        let _ = tx.send(set);
                    }
                    Some((_, Err(e))) => error!(
                        error = format!("{e:#}"),
                        "rules NOT reloaded; the rules in force stay"
                    ),
                    None => {}
                }
                if let Some(auth) = &auth {
                    match auth.reload() {
                        Ok(n) => info!(tokens = n, "auth tokens reloaded"),
                        Err(e) => {
                            error!(error = %e, "auth tokens NOT reloaded; the previous tokens stay in force")
                        }
                    }
                }
                if let Some(certs) = &certs {
                    match certs.reload() {
                        Ok(()) => info!("TLS certificate reloaded"),
                        Err(e) => {
                            error!(error = %e, "TLS certificate NOT reloaded; the previous one stays in use")
                        }
                    }
                }
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (grpc, http) = match tls {
        Some((grpc_tls, http_tls)) => {
            let i = ingest.clone();
            let s = wait(stop_rx.clone());
            let grpc = tokio::spawn(async move {
                ingest::grpc::serve_tls(grpc_listener, &grpc_tls, i, s).await
            });
            let s = wait(stop_rx);
            let http = tokio::spawn(async move {
                ingest::http::serve_tls(http_listener, &http_tls, ingest, s).await
            });
            (grpc, http)
        }
        None => (
            tokio::spawn(ingest::grpc::serve(
                grpc_listener,
                ingest.clone(),
                wait(stop_rx.clone()),
            )),
            tokio::spawn(ingest::http::serve(http_listener, ingest, wait(stop_rx))),
        ),
    };

    shutdown_signal().await;
    info!("stopping: no new requests; draining what was accepted");
    let _ = stop_tx.send(true);
    // In-flight requests get a grace period; a client that keeps an idle
    // connection open must not hold shutdown forever. A request cut off here
    // was not acknowledged, so its sender retries it.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let mut grpc = grpc;
    match tokio::time::timeout_at(deadline, &mut grpc).await {
        Ok(done) => done
            .context("gRPC receiver task")?
            .context("gRPC receiver")?,
        Err(_) => {
            warn!(
                "gRPC clients still connected after {SHUTDOWN_GRACE:?}; closing their connections"
            );
            grpc.abort();
            let _ = grpc.await;
        }
    }
    let mut http = http;
    match tokio::time::timeout_at(deadline, &mut http).await {
        Ok(done) => done
            .context("HTTP receiver task")?
            .context("HTTP receiver")?,
        Err(_) => {
            warn!(
                "HTTP clients still connected after {SHUTDOWN_GRACE:?}; closing their connections"
            );
            http.abort();
            let _ = http.await;
        }
    }
    Ok(())
}

/// Most events written (and fsync'd) together when several requests wait.
/// Small groups keep the stages overlapping: with 16k, every waiting request
/// went into one commit, all senders waited for it together, and the
/// receivers then idled while the archive wrote (174k records/s at 16
/// connections, against 205k with 2k on the same build).
pub(crate) const GROUP_COMMIT_EVENTS: usize = 2 * 1024;

/// Batches waiting between the archive and the detection stage.
const DETECT_QUEUE_BATCHES: usize = 4;

/// An idle release of at least this many held events gives freed pages back
/// to the system.
const RETURN_PAGES_AFTER: usize = 100_000;

/// How long in-flight requests may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn archive_stage(
    rt: tokio::runtime::Handle,
    mut batches: mpsc::Receiver<IngestBatch>,
    mut writer: ArchiveWriter<Event>,
    engine_tx: SyncSender<Vec<Vec<Event>>>,
    control: &StageControl,
    health: &Health,
    pm: &PipelineMetrics,
) -> Result<()> {
    let mut last_tick = Instant::now();
    // A write that failed keeps the archive unready for a while even when
    // other writes (another partition, maintenance) succeed in between:
    // readiness must not flip back between the failing requests.
    let mut last_failure: Option<Instant> = None;
    loop {
        let asked = control.flush_requested.load(Ordering::Acquire);
        if asked > control.flush_done.load(Ordering::Acquire) {
            if let Err(e) = writer.flush_all() {
                error!(error = %e, "closing archive files for a rules reload failed");
            }
            control.flush_done.store(asked, Ordering::Release);
        }
        if control.stopping.load(Ordering::Relaxed) {
            // Whatever is queued is still archived; senders now get "shutting down".
            batches.close();
        }
        let next = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(1), batches.recv()).await });
        match next {
            Ok(Some(first)) => {
                // Group commit: whatever else is already queued goes into the
                // same write-ahead log write and fsync, then every sender is answered.
                let mut acks = vec![first.ack];
                let mut parts = vec![(first.events, first.columns)];
                let mut n = parts[0].0.len();
                while n < GROUP_COMMIT_EVENTS {
                    match batches.try_recv() {
                        Ok(b) => {
                            acks.push(b.ack);
                            n += b.events.len();
                            parts.push((b.events, b.columns));
                        }
                        Err(_) => break,
                    }
                }
                let started = Instant::now();
                let n = n as u64;
                let views: Vec<_> = parts
                    .iter()
                    .map(|(events, columns)| (events.as_slice(), columns.as_ref()))
                    .collect();
                let written = writer.write_parts(&views);
                pm.archive_busy.inc_by(started.elapsed().as_secs_f64());
                match written {
                    Ok(()) => {
                        for ack in acks {
                            let _ = ack.send(Ok(()));
                        }
                        pm.events_archived.inc_by(n);
                        // Each request's events as they are: the engine takes
                        // them one by one, so merging them would only copy each.
                        let events = parts.into_iter().map(|(events, _)| events).collect();
                        if engine_tx.send(events).is_err() {
                            error!("the detection stage stopped; events are archived but not detected on");
                        }
                    }
                    Err(e) => {
                        pm.archive_errors.inc();
                        last_failure = Some(Instant::now());
                        // Unready before the senders hear of the failure: one
                        // that asks /readyz next must not find it ready.
                        pm.archive_healthy.set(0);
                        Health::set(&health.archive, Some(format!("archive: {e}")));
                        error!(error = %e, requests = acks.len(), "archive write failed; the senders are asked to retry");
                        for ack in acks {
                            let _ = ack.send(Err(e.to_string()));
                        }
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
        if last_tick.elapsed() >= Duration::from_millis(500) {
            last_tick = Instant::now();
            if let Err(e) = writer.tick(SystemTime::now()) {
                error!(error = %e, "archive maintenance failed");
            }
            pm.archive_busy.inc_by(last_tick.elapsed().as_secs_f64());
        }
        let healthy =
            writer.is_healthy() && last_failure.is_none_or(|t| t.elapsed() >= ARCHIVE_FAILURE_HOLD);
        pm.archive_healthy.set(healthy as i64);
        Health::set(
            &health.archive,
            (!healthy).then(|| {
                format!(
                    "archive: {}",
                    writer
                        .stats()
                        .last_error
                        .unwrap_or_else(|| "failing".into())
                )
            }),
        );
    }
    drop(engine_tx);
    let stats = writer.close().context("closing the event archive")?;
    info!(
        rows = stats.rows_committed,
        files = stats.files_committed,
        "event archive closed"
    );
    Ok(())
}

/// How long a failed archive write keeps `/readyz` at 503 after the last
/// failure, whatever succeeds in between.
const ARCHIVE_FAILURE_HOLD: Duration = Duration::from_secs(10);

/// Where alerts go: the JSONL file and the alert archive always, Kafka when configured.
struct AlertOutputs {
    log: AlertLog,
    archive: ArchiveWriter<Alert>,
    kafka: Option<sinks::kafka::AlertPublisher>,
    stdout: bool,
}

/// Alerts waiting for an output that refused them; retried every turn.
#[derive(Default)]
struct PendingAlerts {
    local: Vec<Alert>,
    kafka: Vec<Alert>,
}

impl AlertOutputs {
    /// Writes what is pending; what an output refuses stays pending and /readyz says why.
    fn deliver(&mut self, pending: &mut PendingAlerts, health: &Health, pm: &PipelineMetrics) {
        if !pending.local.is_empty() {
            let local = self
                .log
                .append(&pending.local)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    self.archive
                        .write(&pending.local)
                        .map_err(|e| e.to_string())
                });
            match local {
                Ok(()) => {
                    if self.kafka.is_some() {
                        pending.kafka.append(&mut pending.local);
                    }
                    pending.local.clear();
                    Health::set(&health.alerts, None);
                }
                Err(e) => {
                    pm.alert_sink_errors.inc();
                    error!(error = %e, waiting = pending.local.len(), "alerts could not be written; retrying");
                    Health::set(&health.alerts, Some(format!("alert output: {e}")));
                }
            }
        }
        if let Some(kafka) = self.kafka.as_mut() {
            if !pending.kafka.is_empty() {
                match kafka.publish(&pending.kafka) {
                    Ok(()) => pending.kafka.clear(),
                    Err(e) => {
                        warn!(error = %e, waiting = pending.kafka.len(), "alerts wait for the Kafka spool")
                    }
                }
            }
            let stats = kafka.stats();
            pm.observe_kafka(&stats);
            let problem = if !pending.kafka.is_empty() {
                Some(format!(
                    "kafka: the spool is full ({} alerts wait in memory)",
                    pending.kafka.len()
                ))
            } else if !stats.connected {
                Some(format!(
                    "kafka: no broker reachable ({} alerts spooled){}",
                    stats.spooled,
                    stats
                        .last_error
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ))
            } else {
                None
            };
            Health::set(&health.kafka, problem);
        }
    }
}

/// What the detection stage needs besides its input and outputs.
struct DetectSetup {
    idle: Duration,
    /// Alerts the previous run raised but never wrote (found while restoring state).
    missed: Vec<Alert>,
    /// New rule sets from SIGHUP.
    reloads: Receiver<rules::RuleSet>,
    rebuild: Rebuild,
    /// Where the engine's state goes at a clean shutdown (none: start empty next time).
    snapshot: Option<std::path::PathBuf>,
}

/// What rebuilding detection state from the archive for new rules needs.
struct Rebuild {
    control: Arc<StageControl>,
    archive_dir: std::path::PathBuf,
    alerts_path: std::path::PathBuf,
    restore_window: Duration,
    engine_config: rules::EngineConfig,
}

impl Rebuild {
    /// A new engine for `set`, its state rebuilt from the archive; alerts it
    /// raises over that history that were never written come back with it.
    fn run(&self, set: rules::RuleSet) -> Result<(rules::Engine, Vec<Alert>)> {
        if !self.control.flush_archive(Duration::from_secs(10)) {
            warn!("the archive did not close its files in time; the newest events may be missing from the rebuilt state");
        }
        // The end-to-end tests hold a rebuild up to see that ingest goes on meanwhile.
        #[cfg(debug_assertions)]
        if let Some(ms) = std::env::var("VIGIL_TEST_REBUILD_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let mut engine = rules::Engine::new(set, self.engine_config.clone());
        let restored = crate::restore::warm_up(
            &mut engine,
            &self.archive_dir,
            &self.alerts_path,
            self.restore_window,
        )?;
        Ok((engine, restored.missed))
    }

    /// [`Rebuild::run`] on another thread while this one keeps taking the
    /// archived batches off the detection queue, so the archive stage and the
    /// senders do not wait for a rebuild that may read millions of events.
    /// The batches wait in `backlog`, in order, for whichever engine is in
    /// force afterwards (as they would have waited in the queue); past the
    /// engine's memory budget (`engine.max_buffered_mib`) they are left in
    /// the queue, which pushes back on ingest as before.
    fn run_draining(
        &self,
        set: rules::RuleSet,
        events: &Receiver<Vec<Vec<Event>>>,
        backlog: &mut VecDeque<Vec<Vec<Event>>>,
    ) -> Result<(rules::Engine, Vec<Alert>)> {
        let budget = self.engine_config.max_buffered_mib << 20;
        let mut bytes: usize = backlog
            .iter()
            .flatten()
            .flatten()
            .map(rules::held_size)
            .sum();
        let mut open = true;
        std::thread::scope(|scope| {
            let job = std::thread::Builder::new()
                .name("vigil-rebuild".into())
                .spawn_scoped(scope, || self.run(set))
                .context("cannot start the rebuild thread")?;
            while !job.is_finished() {
                if !open || bytes >= budget {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                match events.recv_timeout(Duration::from_millis(20)) {
                    Ok(batch) => {
                        bytes += batch.iter().flatten().map(rules::held_size).sum::<usize>();
                        backlog.push_back(batch);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    // Shutting down: the backlog and then the end of the stream follow the rebuild.
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            job.join()
                .map_err(|_| anyhow::anyhow!("rebuilding detection state panicked"))?
        })
    }
}

fn detect_stage(
    mut engine: rules::Engine,
    events: Receiver<Vec<Vec<Event>>>,
    mut outputs: AlertOutputs,
    setup: DetectSetup,
    health: &Health,
    pm: &PipelineMetrics,
) -> Result<()> {
    let idle = setup.idle;
    let mut pending = PendingAlerts {
        local: setup.missed.clone(),
        kafka: Vec::new(),
    };
    let mut idle_released = true;
    let mut last_tick = Instant::now();
    let mut last_batch = Instant::now();
    let mut emitted = 0u64;
    let mut backlog = VecDeque::new();
    loop {
        if let Ok(set) = setup.reloads.try_recv() {
            if set.digest() == engine.ruleset().digest() {
                // A SIGHUP for the tokens or the certificate: the rules are
                // the same, and rebuilding their state would stall ingest.
                info!(
                    rules = set.len(),
                    "rule files unchanged; detection state kept"
                );
                continue;
            }
            // Everything the old rules raised is written first, so the rebuild knows it.
            outputs.deliver(&mut pending, health, pm);
            let rules = set.len();
            info!(
                rules,
                "rules changed; rebuilding detection state from the archive (ingest goes on, alerts wait)"
            );
            let started = Instant::now();
            let waiting = backlog.len();
            match setup.rebuild.run_draining(set, &events, &mut backlog) {
                Ok((fresh, missed)) => {
                    engine = fresh;
                    info!(
                        rules,
                        alerts_over_history = missed.len(),
                        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
                        batches_waiting = backlog.len() - waiting,
                        "rules reloaded; state rebuilt from the archive"
                    );
                    pending.local.extend(missed);
                }
                Err(e) => {
                    error!(error = %e, "rules NOT reloaded: rebuilding state failed; the rules in force stay")
                }
            }
        }
        // Batches taken off the queue during a rebuild go first, in order.
        let next = match backlog.pop_front() {
            Some(batch) => Ok(batch),
            None => events.recv_timeout(idle.min(Duration::from_secs(1))),
        };
        let working = Instant::now();
        let (alerts, done) = match next {
            Ok(batch) => {
                idle_released = false;
                last_batch = Instant::now();
                (engine.push_parts(batch), false)
            }
            // A quiet stream: release what waits for the watermark so timers fire.
            Err(RecvTimeoutError::Timeout) if !idle_released && last_batch.elapsed() >= idle => {
                idle_released = true;
                let held = engine.stats().buffered_events;
                let alerts = engine.on_idle();
                // The lateness buffer of a busy stream is large and scattered
                // between long-lived state: give its pages back now rather
                // than when the allocator gets to it.
                if held >= RETURN_PAGES_AFTER {
                    ingest::memory::release_free_pages();
                }
                (alerts, false)
            }
            Err(RecvTimeoutError::Timeout) => (Vec::new(), false),
            Err(RecvTimeoutError::Disconnected) => (engine.finish(), true),
        };
        for a in &alerts {
            pm.alerts
                .get_or_create(&RuleLabel {
                    rule: a.rule_id.clone(),
                })
                .inc();
            info!(rule = %a.rule_id, severity = %a.severity, user = a.user.as_deref().unwrap_or(""), session = a.session.as_deref().unwrap_or(""), "{}", a.summary);
            if outputs.stdout {
                if let Ok(line) = serde_json::to_string(a) {
                    println!("{line}");
                }
            }
        }
        emitted += alerts.len() as u64;
        pending.local.extend(alerts);
        outputs.deliver(&mut pending, health, pm);
        pm.detect_busy.inc_by(working.elapsed().as_secs_f64());
        if last_tick.elapsed() >= Duration::from_millis(500) || done {
            last_tick = Instant::now();
            if let Err(e) = outputs.archive.tick(SystemTime::now()) {
                error!(error = %e, "alert archive maintenance failed");
            }
            let s = engine.stats();
            pm.late_events.set(s.late_events as i64);
            pm.duplicate_events.set(s.duplicate_events as i64);
            pm.forced_releases.set(s.forced_releases as i64);
            pm.buffered_events.set(s.buffered_events as i64);
            pm.buffered_bytes.set(s.buffered_bytes as i64);
            pm.watermark_seconds
                .set(s.watermark.map_or(0, |w| w / 1_000_000_000));
            for r in &s.rules {
                let l = RuleLabel {
                    rule: r.rule_id.clone(),
                };
                pm.state_keys.get_or_create(&l).set(r.state_keys as i64);
                pm.suppressed.get_or_create(&l).set(r.suppressed as i64);
            }
        }
        if done {
            break;
        }
    }
    health.detection_alive.store(false, Ordering::Relaxed);
    if let Some(path) = &setup.snapshot {
        match crate::restore::save_snapshot(&engine, path) {
            Ok(bytes) => {
                info!(path = %path.display(), bytes, "engine state saved for the next start")
            }
            Err(e) => warn!(
                error = format!("{e:#}"),
                "engine state NOT saved; the next start rebuilds it from the archive"
            ),
        }
    }
    if !pending.local.is_empty() {
        anyhow::bail!(
            "{} alerts could not be written at shutdown",
            pending.local.len()
        );
    }
    let stats = outputs
        .archive
        .close()
        .context("closing the alert archive")?;
    if let Some(kafka) = outputs.kafka.take() {
        if !pending.kafka.is_empty() {
            error!(alerts = pending.kafka.len(), "the Kafka spool is full at shutdown; these alerts are in alerts.jsonl and the archive only");
        }
        let k = kafka.close(Duration::from_secs(5));
        pm.observe_kafka(&k);
        info!(
            acknowledged = k.acknowledged,
            spooled = k.spooled,
            "Kafka output closed; spooled alerts go out at the next start"
        );
    }
    info!(
        alerts = emitted,
        files = stats.files_committed,
        "detection stopped; alerts flushed"
    );
    Ok(())
}
