//! Replay: the same rules engine over history.
//!
//! Events are read back from the Parquet archive (`sinks::archive`), hour
//! partition by hour partition, sorted by (time, event id) within each hour
//! and fed to a [`rules::Engine`] built exactly as `vigil serve` builds it.
//! Alerts come out with the ids the live run gave them (ids hash rule, key and
//! triggering events) and are marked `replayed`.
//!
//! Captured OTLP (`vigil serve --capture DIR`) replays through normalization
//! too ([`replay_otlp`]): the same mapping files turn the same requests into
//! the same events, so the alerts are those of the live run.
//!
//! One difference from the live run is deliberate: an event that reached the
//! live engine later than the allowed lateness was archived but not detected
//! on; replay reads it in event-time order and detects on it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use event::{Alert, Event};

const NANOS_PER_HOUR: i64 = 3_600_000_000_000;
/// Events held for sorting before they are handed to the engine even if the
/// hour is not complete; past it the engine's allowed lateness absorbs the rest.
const MAX_SORT_BUFFER: usize = 2_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the archive: {0}")]
    Archive(#[from] sinks::archive::ArchiveError),
    #[error("reading captured OTLP: {0}")]
    Capture(#[from] ingest::capture::CaptureError),
    #[error("writing alerts: {0}")]
    Output(String),
}

/// Where the replay is, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub events: u64,
    pub alerts: u64,
    /// Event time of the latest event handed to the engine.
    pub position: Option<i64>,
    pub elapsed: Duration,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub events: u64,
    pub alerts_by_rule: BTreeMap<String, u64>,
    pub first_event: Option<i64>,
    pub last_event: Option<i64>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn alerts(&self) -> u64 {
        self.alerts_by_rule.values().sum()
    }

    /// Where the replay stands, `elapsed` after it started.
    fn progress(&self, elapsed: Duration) -> Progress {
        Progress {
            events: self.events,
            alerts: self.alerts(),
            position: self.last_event,
            elapsed,
        }
    }
}

/// Marks alerts as replayed, counts them per rule and hands them on.
fn emit_replayed(
    mut alerts: Vec<Alert>,
    summary: &mut Summary,
    on_alerts: &mut impl FnMut(&[Alert]) -> Result<(), String>,
) -> Result<(), ReplayError> {
    if alerts.is_empty() {
        return Ok(());
    }
    for a in &mut alerts {
        a.replayed = true;
        *summary.alerts_by_rule.entry(a.rule_id.clone()).or_default() += 1;
    }
    on_alerts(&alerts).map_err(ReplayError::Output)
}

/// Replays `archive` (the folder holding `events/`) over `[from, to)` through
/// `engine`, calling `on_alerts` with each group of alerts as they fire and
/// `on_progress` after every engine batch.
pub fn replay_archive(
    archive: &Path,
    from: Option<i64>,
    to: Option<i64>,
    engine: &mut rules::Engine,
    mut on_alerts: impl FnMut(&[Alert]) -> Result<(), String>,
    mut on_progress: impl FnMut(Progress),
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut emit =
        |alerts: Vec<Alert>, summary: &mut Summary| emit_replayed(alerts, summary, &mut on_alerts);
    let mut buffer: Vec<Event> = Vec::new();
    let mut buffer_hour: Option<i64> = None;
    let flush = |buffer: &mut Vec<Event>,
                 engine: &mut rules::Engine,
                 summary: &mut Summary|
     -> Vec<Alert> {
        if buffer.is_empty() {
            return Vec::new();
        }
        buffer.sort_by(|a, b| {
            a.time
                .cmp(&b.time)
                .then_with(|| a.event_id.cmp(&b.event_id))
        });
        summary.events += buffer.len() as u64;
        summary.first_event = summary.first_event.or(buffer.first().map(|e| e.time));
        summary.last_event = buffer.last().map(|e| e.time).or(summary.last_event);
        engine.push(std::mem::take(buffer))
    };
    for batch in sinks::archive::read_events(archive, from, to)? {
        for ev in batch? {
            let hour = ev.time.div_euclid(NANOS_PER_HOUR);
            if buffer_hour.is_some_and(|h| hour > h) || buffer.len() >= MAX_SORT_BUFFER {
                let alerts = flush(&mut buffer, engine, &mut summary);
                emit(alerts, &mut summary)?;
                on_progress(summary.progress(started.elapsed()));
            }
            buffer_hour = Some(buffer_hour.map_or(hour, |h| h.max(hour)));
            buffer.push(ev);
        }
    }
    let alerts = flush(&mut buffer, engine, &mut summary);
    emit(alerts, &mut summary)?;
    let alerts = engine.finish();
    emit(alerts, &mut summary)?;
    summary.elapsed = started.elapsed();
    on_progress(summary.progress(summary.elapsed));
    Ok(summary)
}

/// Replays capture files (in the order given) through `normalizer` and
/// `engine`, request by request, as `vigil serve` received them.
pub fn replay_otlp(
    files: &[std::path::PathBuf],
    normalizer: &ingest::Normalizer,
    engine: &mut rules::Engine,
    mut on_alerts: impl FnMut(&[Alert]) -> Result<(), String>,
    mut on_progress: impl FnMut(Progress),
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut emit =
        |alerts: Vec<Alert>, summary: &mut Summary| emit_replayed(alerts, summary, &mut on_alerts);
    for file in files {
        for captured in ingest::capture::CaptureReader::open(file)? {
            let c = captured?;
            let n = match &c.payload {
                ingest::Payload::Logs(r) => normalizer.logs(r, &c.tenant, c.received_ns),
                ingest::Payload::Traces(r) => normalizer.traces(r, &c.tenant, c.received_ns),
                ingest::Payload::Metrics(r) => normalizer.metrics(r, &c.tenant, c.received_ns),
            };
            summary.events += n.events.len() as u64;
            for e in &n.events {
                summary.first_event = Some(summary.first_event.map_or(e.time, |f| f.min(e.time)));
                summary.last_event = Some(summary.last_event.map_or(e.time, |l| l.max(e.time)));
            }
            let alerts = engine.push(n.events);
            emit(alerts, &mut summary)?;
            on_progress(summary.progress(started.elapsed()));
        }
    }
    let alerts = engine.finish();
    emit(alerts, &mut summary)?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use event::{EventKind, Source};
    use sinks::archive::{ArchiveConfig, ArchiveWriter};

    fn read(user: &str, session: &str, path: &str, t: i64) -> Event {
        let mut e = Event {
            time: t,
            tenant: "default".into(),
            source: Source::Agent,
            kind: EventKind::FileRead,
            user: Some(user.into()),
            session: Some(session.into()),
            path: Some(path.into()),
            ..Default::default()
        };
        e.event_id = e.compute_id();
        e
    }

    #[test]
    fn replay_sorts_within_hours_and_matches_a_live_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = 1_773_154_800_000_000_000i64;
        let events = vec![
            read("a@example.com", "s1", "/home/a/src/x.rs", t0 + 1_000),
            read(
                "a@example.com",
                "s1",
                "/home/a/.ssh/id_rsa",
                t0 + 2 * NANOS_PER_HOUR,
            ),
            read(
                "b@example.com",
                "s2",
                "/home/b/.aws/credentials",
                t0 + 10_000_000_000,
            ),
        ];
        let mut w: ArchiveWriter<Event> =
            ArchiveWriter::open(ArchiveConfig::new(dir.path())).expect("open");
        // Written out of order, as a live run with late arrivals would.
        w.write(&[events[2].clone(), events[0].clone()])
            .expect("write");
        w.write(&[events[1].clone()]).expect("write");
        w.close().expect("close");

        let ctx = rules::RulesContext::default();
        let set = || rules::load(true, &[], &ctx).expect("pack");
        let mut live = rules::Engine::new(set(), rules::EngineConfig::default());
        let mut want = live.push(events.clone());
        want.extend(live.finish());

        let mut engine = rules::Engine::new(set(), rules::EngineConfig::default());
        let mut got = Vec::new();
        let mut progress = 0;
        let summary = replay_archive(
            dir.path(),
            None,
            None,
            &mut engine,
            |a| {
                got.extend_from_slice(a);
                Ok(())
            },
            |_| progress += 1,
        )
        .expect("replays");
        assert_eq!(summary.events, 3);
        assert!(progress >= 2);
        assert_eq!(summary.alerts_by_rule.get("sensitive-file-read"), Some(&2));
        let ids = |v: &[Alert]| v.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want));
        assert!(got.iter().all(|a| a.replayed));

        // A time range prunes partitions and rows.
        let mut engine = rules::Engine::new(set(), rules::EngineConfig::default());
        let s = replay_archive(
            dir.path(),
            Some(t0 + NANOS_PER_HOUR),
            None,
            &mut engine,
            |_| Ok(()),
            |_| {},
        )
        .expect("replays");
        assert_eq!(s.events, 1);
    }
}
