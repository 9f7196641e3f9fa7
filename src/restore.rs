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

/// Replays the newest `window` of the archive through `engine`.
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
        |_| {},
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
