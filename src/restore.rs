//! Restoring the rules engine's state at start, from the event archive.
//!
//! The engine keeps its windows, sequences and sessions in memory. Rather than
//! forgetting them on a restart (a session unattended for 1h50m would start
//! from zero), `vigil serve` replays the archive's last `engine.restore_window`
//! of events through the fresh engine before it accepts traffic. The engine is
//! deterministic, so the replay rebuilds the same state and raises the same
//! alerts with the same ids: those already written (alerts.jsonl) are dropped,
//! and any that the previous run never got to write are emitted now.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{NaiveDate, TimeZone, Utc};
use event::Alert;
use tracing::info;

const NANOS_PER_HOUR: i64 = 3_600_000_000_000;

/// What the warm-up did.
#[derive(Default)]
pub struct Restored {
    pub events: u64,
    /// Alerts the previous run raised but never wrote; to be written now.
    pub missed: Vec<Alert>,
    pub known: usize,
}

/// Start of the hour after the newest `date=/hour=` partition of `events/`.
fn archive_end(archive: &Path) -> Option<i64> {
    let mut newest: Option<i64> = None;
    for date in std::fs::read_dir(archive.join("events")).ok()?.flatten() {
        let name = date.file_name();
        let Some(day) = name.to_str().and_then(|n| n.strip_prefix("date=")) else {
            continue;
        };
        let Ok(day) = NaiveDate::parse_from_str(day, "%Y-%m-%d") else {
            continue;
        };
        let Ok(hours) = std::fs::read_dir(date.path()) else {
            continue;
        };
        for hour in hours.flatten() {
            let name = hour.file_name();
            let Some(h) = name
                .to_str()
                .and_then(|n| n.strip_prefix("hour="))
                .and_then(|h| h.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(start) = day.and_hms_opt(h, 0, 0).map(|t| Utc.from_utc_datetime(&t)) else {
                continue;
            };
            let Some(ns) = start.timestamp_nanos_opt() else {
                continue;
            };
            newest = Some(newest.map_or(ns, |n| n.max(ns)));
        }
    }
    newest.map(|n| n.saturating_add(NANOS_PER_HOUR))
}

/// Ids of the alerts in the alert log, which every raised alert reaches first.
fn known_alert_ids(alerts_path: &Path) -> Result<HashSet<String>> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    let mut ids = HashSet::new();
    let file = match std::fs::File::open(alerts_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(e).with_context(|| format!("reading {}", alerts_path.display())),
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", alerts_path.display()))?;
        // A torn last line (crash mid-write) has no id to know.
        if let Ok(a) = serde_json::from_str::<Id>(&line) {
            ids.insert(a.id);
        }
    }
    Ok(ids)
}

/// How often a long restore says how far it has got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Replays the newest `window` of the archive through `engine`, saying
/// every [`PROGRESS_EVERY`] how far it has got.
pub fn warm_up(
    engine: &mut rules::Engine,
    archive: &Path,
    alerts_path: &Path,
    window: Duration,
) -> Result<Restored> {
    let mut out = Restored {
        events: 0,
        missed: Vec::new(),
        known: 0,
    };
    if window.is_zero() {
        return Ok(out);
    }
    let Some(end) = archive_end(archive) else {
        return Ok(out);
    };
    let from = end.saturating_sub(i64::try_from(window.as_nanos()).unwrap_or(i64::MAX));
    let known = known_alert_ids(alerts_path)?;
    out.known = known.len();
    let mut missed = Vec::new();
    let mut last_said: Option<std::time::Instant> = None;
    let summary = replay::replay_archive(
        archive,
        Some(from),
        None,
        engine,
        |alerts| {
            missed.extend(
                alerts
                    .iter()
                    .filter(|a| !known.contains(&a.id))
                    .cloned()
                    .map(|mut a| {
                        a.replayed = false;
                        a
                    }),
            );
            Ok(())
        },
        |p| {
            // A long window takes a while: say how far it has got, from
            // the first batch on.
            if last_said.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                last_said = Some(std::time::Instant::now());
                info!(
                    events = p.events,
                    of = p.total.unwrap_or(0),
                    at = %p.position.map_or_else(|| "-".to_string(), event::format_ns),
                    "restoring detection state from the archive"
                );
            }
        },
    )
    .context("restoring detection state from the archive")?;
    out.events = summary.events;
    out.missed = missed;
    info!(
        events = out.events,
        from = %event::format_ns(from),
        missed_alerts = out.missed.len(),
        "detection state restored from the archive"
    );
    Ok(out)
}

/// Where a clean shutdown leaves the engine's state for the next start.
pub fn snapshot_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("state").join("engine.snapshot")
}

/// Writes the engine's state (after it has run everything it held) for the
/// next start: to a temporary name, fsync'd, then renamed into place.
pub fn save_snapshot(engine: &rules::Engine, path: &Path) -> Result<u64> {
    use std::io::Write;
    let dir = path.parent().context("snapshot path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = engine.snapshot();
    let tmp = path.with_extension("snapshot.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(bytes.len() as u64)
}

/// Takes over the snapshot a clean shutdown left, when every stateful rule
/// is the same as then; the file is removed either way, so a crash later
/// rebuilds from the archive instead of from stale state. `None`: no usable
/// snapshot (the caller rebuilds from the archive).
pub fn load_snapshot(
    set: &rules::RuleSet,
    config: &rules::EngineConfig,
    path: &Path,
) -> Option<rules::Engine> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the engine snapshot; rebuilding state from the archive");
            return None;
        }
    };
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the used engine snapshot; rebuilding state from the archive");
        return None;
    }
    let mut engine = rules::Engine::new(set.clone(), config.clone());
    match engine.restore(&bytes) {
        Ok(report) if report.changed.is_empty() && report.new.is_empty() => {
            info!(
                bytes = bytes.len(),
                rules = report.restored.len(),
                dropped_rules = report.dropped.len(),
                "detection state restored from the shutdown snapshot"
            );
            Some(engine)
        }
        Ok(report) => {
            info!(changed = ?report.changed, new = ?report.new, "rules changed since the shutdown snapshot; rebuilding state from the archive");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "engine snapshot not usable; rebuilding state from the archive");
            None
        }
    }
}
