//! `vigil replay`: the rules engine over the archive, with progress on a
//! terminal (a bar) or in the log (a line every few seconds), and a summary.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{NaiveDate, TimeZone, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::config::Config;
use crate::ReplayArgs;

fn parse_time(text: &str) -> Result<i64> {
    if let Some(ns) = event::parse_rfc3339_ns(text) {
        return Ok(ns);
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let t = Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"));
        return t.timestamp_nanos_opt().context("date out of range");
    }
    bail!("{text:?} is not an RFC 3339 time (2026-03-10T15:00:00Z) or a date (2026-03-10)")
}

pub fn run(args: ReplayArgs) -> Result<std::process::ExitCode> {
    let mut config = Config::load_or_default(args.config.as_deref())?;
    config.rules.extend(args.rules.iter().cloned());
    if args.no_default {
        config.default_rules = false;
    }
    let archive = args
        .archive
        .clone()
        .or_else(|| config.archive.dir.clone())
        .unwrap_or_else(|| config.data_dir.join("archive"));
    if args.otlp.is_empty() && !archive.join("events").is_dir() {
        bail!(
            "{} holds no events/ folder: is it a vigil archive?",
            archive.display()
        );
    }
    let from = args.from.as_deref().map(parse_time).transpose()?;
    let to = args.to.as_deref().map(parse_time).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            bail!(
                "--from {} is not before --to {}: the range holds no time",
                event::format_ns(f),
                event::format_ns(t)
            );
        }
    }
    let set = crate::load_rules(&config)?;
    let mut engine = rules::Engine::new(set, config.engine.engine_config());
    let mut kafka = args
        .kafka_brokers
        .as_deref()
        .map(|brokers| KafkaOut::start(brokers, args.kafka_topic.as_deref(), &config))
        .transpose()?;

    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("valid template"),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let mut last_log = Instant::now();
    // The writer borrows `out` until the replay is done.
    let summary = {
        let mut write_alerts = |alerts: &[event::Alert]| -> std::result::Result<(), String> {
            for a in alerts {
                serde_json::to_writer(&mut out, a).map_err(|e| e.to_string())?;
                out.write_all(b"\n").map_err(|e| e.to_string())?;
            }
            match &mut kafka {
                Some(k) => k.publish(alerts, args.kafka_timeout),
                None => Ok(()),
            }
        };
        let mut progress = |p: replay::Progress| {
            let rate = p.events as f64 / p.elapsed.as_secs_f64().max(1e-3);
            let pos = p
                .position
                .map(event::format_ns)
                .unwrap_or_else(|| "-".into());
            let msg = format!(
                "{} events ({rate:.0}/s), {} alerts, at {pos}",
                p.events, p.alerts
            );
            // The archive's row counts give the total up front (an upper
            // bound when --from/--to cut into a row group).
            let total = p.total.filter(|t| *t > 0);
            match &bar {
                Some(b) => {
                    if let Some(total) = total {
                        if b.length() != Some(total) {
                            b.set_length(total);
                            b.set_style(
                                ProgressStyle::with_template(
                                    "{spinner} {elapsed_precise} [{bar:24}] {percent}% ETA {eta} {msg}",
                                )
                                .expect("valid template"),
                            );
                        }
                        b.set_position(p.events.min(total));
                    }
                    b.set_message(msg)
                }
                None if last_log.elapsed() >= Duration::from_secs(5) => {
                    last_log = Instant::now();
                    match total {
                        Some(total) if rate > 0.0 => {
                            let eta = total.saturating_sub(p.events) as f64 / rate;
                            info!(
                                "replay: {msg}, {:.0}% of {total}, ETA {eta:.0}s",
                                p.events as f64 * 100.0 / total as f64
                            )
                        }
                        _ => info!("replay: {msg}"),
                    }
                }
                None => {}
            }
        };
        if args.otlp.is_empty() {
            let warm_up = i64::try_from(args.warm_up.as_nanos()).unwrap_or(i64::MAX);
            replay::replay_archive_warmed(
                &archive,
                from,
                to,
                warm_up,
                &mut engine,
                &mut write_alerts,
                &mut progress,
            )?
        } else {
            if from.is_some() || to.is_some() {
                bail!("--from and --to apply to --archive; captured OTLP is replayed whole");
            }
            let files = ingest::capture::capture_files(&args.otlp)?;
            if files.is_empty() {
                bail!("no capture files (capture-*.otlp) in {:?}", args.otlp);
            }
            let mappings =
                ingest::MappingSet::load(&config.mappings).context("loading mappings")?;
            let normalizer = ingest::Normalizer::new(std::sync::Arc::new(mappings))
                .with_max_clock_ahead(config.ingest.max_clock_ahead);
            replay::replay_otlp(
                &files,
                &normalizer,
                &mut engine,
                &mut write_alerts,
                &mut progress,
            )?
        }
    };
    out.flush().context("writing alerts")?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let published = kafka.map(|k| k.finish(args.kafka_timeout)).transpose()?;
    let mut err = std::io::stderr().lock();
    let range = match (summary.first_event, summary.last_event) {
        (Some(a), Some(b)) => format!("{} .. {}", event::format_ns(a), event::format_ns(b)),
        _ => "no events".into(),
    };
    writeln!(
        err,
        "replayed {} events ({range}) in {:.2}s ({:.0} events/s): {} alerts",
        summary.events,
        summary.elapsed.as_secs_f64(),
        summary.events as f64 / summary.elapsed.as_secs_f64().max(1e-9),
        summary.alerts()
    )?;
    for (rule, n) in &summary.alerts_by_rule {
        writeln!(err, "  {rule:<30} {n}")?;
    }
    if let Some(f) = from.filter(|_| !args.warm_up.is_zero() && args.otlp.is_empty()) {
        writeln!(
            err,
            "the rules warmed up on {} of events before {} (--warm-up); {} alerts of the warm-up are not reported",
            humantime::format_duration(args.warm_up),
            event::format_ns(f),
            summary.warm_up_alerts
        )?;
    }
    if let Some(p) = published {
        writeln!(
            err,
            "published {} alerts to kafka topic {} at {}",
            p.acknowledged, p.topic, p.brokers
        )?;
    }
    // Nothing in the range asked for: say where the archive's events are.
    // (Events of the warm-up alone are none in the range either.)
    let in_range = summary.events > 0
        && summary
            .last_event
            .zip(from)
            .is_none_or(|(last, from)| last >= from);
    if !in_range && args.otlp.is_empty() && (from.is_some() || to.is_some()) {
        let whole =
            sinks::archive::read_events_projected(&archive, None, None, engine.projection())
                .ok()
                .and_then(|r| r.time_range());
        match whole {
            Some((first, last)) => writeln!(
                err,
                "no events in the range asked for; {} holds events from {} to {}",
                archive.display(),
                event::format_ns(first),
                event::format_ns(last)
            )?,
            None => writeln!(err, "{} holds no events", archive.display())?,
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The replayed alerts on their way to a Kafka topic: the alert publisher of
/// `vigil serve`, with a spool of its own in a scratch folder (serve's spool
/// is never touched), emptied before the replay ends.
struct KafkaOut {
    publisher: sinks::kafka::AlertPublisher,
    brokers: String,
    topic: String,
    sent: u64,
    _spool: crate::scratch::Scratch,
}

/// What [`KafkaOut::finish`] saw delivered.
struct Published {
    acknowledged: u64,
    brokers: String,
    topic: String,
}

impl KafkaOut {
    fn start(brokers: &str, topic: Option<&str>, config: &Config) -> Result<KafkaOut> {
        let spool = crate::scratch::Scratch::new("replay-spool")?;
        let topic = topic.unwrap_or(&config.kafka.topic).to_string();
        let publisher = sinks::kafka::AlertPublisher::start(&sinks::kafka::KafkaConfig {
            brokers: brokers.to_string(),
            topic: topic.clone(),
            properties: config.kafka.properties.clone(),
            spool_dir: Some(spool.0.clone()),
            spool_max_bytes: config.kafka.spool_max_bytes,
            ..Default::default()
        })
        .context("starting the Kafka output for the replayed alerts")?;
        Ok(KafkaOut {
            publisher,
            brokers: brokers.to_string(),
            topic,
            sent: 0,
            _spool: spool,
        })
    }

    /// Hands alerts to the publisher; while its spool is full, waits (up to
    /// `timeout`) for the broker to take some.
    fn publish(&mut self, alerts: &[event::Alert], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.publisher.publish(alerts) {
                Ok(()) => {
                    self.sent += alerts.len() as u64;
                    return Ok(());
                }
                Err(sinks::kafka::KafkaError::SpoolFull { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(format!("publishing to kafka topic {}: {e}", self.topic)),
            }
        }
    }

    /// Waits up to `timeout` for the broker to acknowledge every alert sent;
    /// an alert it did not is an error naming the broker's last error.
    fn finish(self, timeout: Duration) -> Result<Published> {
        let stats = self.publisher.close(timeout);
        if stats.spooled > 0 || stats.acknowledged < self.sent {
            bail!(
                "{} of {} replayed alerts were not acknowledged by kafka topic {} at {} within {}: {}",
                self.sent.saturating_sub(stats.acknowledged),
                self.sent,
                self.topic,
                self.brokers,
                humantime::format_duration(timeout),
                stats
                    .last_error
                    .as_deref()
                    .unwrap_or("no answer from the broker")
            );
        }
        Ok(Published {
            acknowledged: stats.acknowledged,
            brokers: self.brokers,
            topic: self.topic,
        })
    }
}
