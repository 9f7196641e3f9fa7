//! `vigil loadgen --stages`: the CPU one record costs in each stage of
//! `vigil serve`, measured one stage at a time on one thread, over the
//! requests loadgen would send and with the configuration serve would run.
//!
//! End to end (`scripts/bench` run 2) says how fast one vigil is; this says
//! where the time goes, and what a target rate leaves for it: R records/s on
//! N cores leaves N / R seconds of CPU per record for every stage together.
//! Platform teams size boxes with it, and detection engineers see what their
//! rule pack costs per record. Not in it: the OTLP transport (HTTP/2, gRPC,
//! the loopback), the handoffs between threads, and the sender's own CPU.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use event::Event;
use ingest::otlp::{LogsRef, TracesRef};
use ingest::{MappingSet, Normalizer, Payload};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use serde::Serialize;
use sinks::archive::{ArchiveConfig, EventArchive};

use crate::config::Config;
use crate::serve::GROUP_COMMIT_EVENTS;

/// What one stage costs.
#[derive(Debug, Serialize)]
pub(crate) struct Stage {
    pub name: &'static str,
    pub what: String,
    /// Thread CPU time (user and system) per record, microseconds.
    pub us_per_record: f64,
}

/// What one rule costs run alone over the same events (`--per-rule`): it
/// includes holding, for the allowed lateness, the events of the kinds it
/// reads, which rules of a pack share.
#[derive(Debug, Serialize)]
pub(crate) struct RuleCost {
    pub id: String,
    pub us_per_record: f64,
    pub alerts: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct StagesReport {
    pub records: u64,
    pub requests: usize,
    pub stages: Vec<Stage>,
    pub total_us_per_record: f64,
    pub alerts: usize,
    /// Each active rule alone, costliest first; empty without `--per-rule`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleCost>,
}

impl StagesReport {
    /// Records per second one core sustains at this CPU per record.
    pub fn per_core(&self) -> f64 {
        1e6 / self.total_us_per_record
    }
}

/// Requests taken through the stages together: each stage runs over all of
/// them before the next (so that each is timed alone), while the working set
/// stays the size serve's is, a few group commits, instead of every event of
/// the run (whose first touch of fresh pages would be measured instead).
const CHUNK_REQUESTS: usize = 16;

/// Runs every stage over the requests `requests()` gives, with the archives
/// written under `scratch`: one Parquet-only, one with the write-ahead log
/// as configured (its cost is the difference). With `per_rule`, then runs
/// each active rule alone over the same requests.
pub(crate) fn measure<I: Iterator<Item = Payload>>(
    config: &Config,
    requests: impl Fn() -> I,
    scratch: &Path,
    per_rule: bool,
) -> Result<StagesReport> {
    let mappings = Arc::new(MappingSet::load(&config.mappings).context("loading mappings")?);
    let normalizer = Normalizer::new(mappings);
    let ruleset = crate::load_rules(config)?;
    let rule_count = ruleset.len();
    let rule_ids: Vec<String> = ruleset
        .rules()
        .into_iter()
        .filter(|r| r.is_active())
        .map(|r| r.id)
        .collect();
    let tenant = config.tenant.as_str();
    let observed = ingest::now_ns();
    let archive_cfg = config.archive.archive_config(scratch);
    let open = |name: &str, wal: bool| {
        EventArchive::open(ArchiveConfig {
            dir: scratch.join(name),
            wal,
            ..archive_cfg.clone()
        })
        .context("opening the archive")
    };
    let (mut parquet_cpu, mut parquet) = on_cpu(|| open("parquet", false))?;
    // The log is written on a thread of its own: its archive is timed by
    // the process's CPU, which counts that thread too.
    let (mut logged_cpu, mut logged) = on_process_cpu(|| open("wal", true))?;
    let mut engine = rules::Engine::new(ruleset, config.engine.engine_config());
    let (mut read_cpu, mut normalize_cpu, mut columns_cpu, mut rules_cpu) = Default::default();
    let (mut records, mut request_count, mut alerts) = (0u64, 0, 0);
    let mut json = false;
    for chunk in chunks(requests()) {
        request_count += chunk.len();
        json |= chunk
            .iter()
            .any(|r| matches!(r, Payload::LogsJson(_) | Payload::TracesJson(_)));
        let (chunk_read, n) = on_cpu(|| {
            let mut n = 0u64;
            for r in &chunk {
                n += read(r, |l| l.records(), |t| t.records(), |_| 0)? as u64;
            }
            Ok(n)
        })?;
        read_cpu += chunk_read;
        records += n;
        let (cpu, events) = on_cpu(|| normalize(&normalizer, &chunk, tenant, observed))?;
        // The read in it is counted above.
        normalize_cpu += cpu.saturating_sub(chunk_read);
        let (cpu, batches) = on_cpu(|| {
            events
                .iter()
                .map(|e| event::schema::events_to_batch(e).context("building Arrow columns"))
                .collect::<Result<Vec<_>>>()
        })?;
        columns_cpu += cpu;
        // Requests go to the archive and the engine in group commits, as in serve.
        let groups = group_commits(&events);
        for g in &groups {
            let parts: Vec<_> = g
                .clone()
                .map(|i| (events[i].as_slice(), Some(&batches[i])))
                .collect();
            parquet_cpu += on_cpu(|| Ok(parquet.write_parts(&parts)?))?.0;
            logged_cpu += on_process_cpu(|| Ok(logged.write_parts(&parts)?))?.0;
        }
        let (cpu, n) = detect(&mut engine, events)?;
        rules_cpu += cpu;
        alerts += n;
    }
    parquet_cpu += on_cpu(|| Ok(parquet.close()?))?.0;
    logged_cpu += on_process_cpu(|| Ok(logged.close()?))?.0;
    let (cpu, n) = on_cpu(|| Ok(engine.finish().len()))?;
    rules_cpu += cpu;
    alerts += n;

    let per_record = |d: Duration| d.as_secs_f64() * 1e6 / records.max(1) as f64;
    let mut rule_costs = Vec::new();
    if per_rule {
        for id in &rule_ids {
            let (cpu, alerts) = rule_alone(config, id, &normalizer, &requests, observed)?;
            rule_costs.push(RuleCost {
                id: id.clone(),
                us_per_record: per_record(cpu),
                alerts,
            });
        }
        rule_costs.sort_by(|a, b| b.us_per_record.total_cmp(&a.us_per_record));
    }
    let a = &archive_cfg;
    let stages = vec![
        Stage {
            name: "read",
            what: if json {
                "OTLP/JSON read in place (ingest::json; serde where it declines)".into()
            } else {
                "OTLP protobuf walked in place (ingest::wire; prost where it declines)".into()
            },
            us_per_record: per_record(read_cpu),
        },
        Stage {
            name: "normalize",
            what: "mappings: records to events".into(),
            us_per_record: per_record(normalize_cpu),
        },
        Stage {
            name: "columns",
            what: "events to Arrow columns (the archive's input)".into(),
            us_per_record: per_record(columns_cpu),
        },
        Stage {
            name: "parquet",
            what: format!("Parquet files, zstd level {}", a.zstd_level),
            us_per_record: per_record(parquet_cpu),
        },
        Stage {
            name: "wal",
            what: format!(
                "write-ahead log ({}{}), on its own thread while the Parquet files are encoded",
                if a.wal_direct_io {
                    "direct I/O"
                } else {
                    "page cache"
                },
                if a.wal_fsync {
                    ", fsync per group commit"
                } else {
                    ""
                }
            ),
            us_per_record: per_record(logged_cpu.saturating_sub(parquet_cpu)),
        },
        Stage {
            name: "rules",
            what: format!("{rule_count} rules, {alerts} alerts"),
            us_per_record: per_record(rules_cpu),
        },
    ];
    Ok(StagesReport {
        records,
        requests: request_count,
        total_us_per_record: stages.iter().map(|s| s.us_per_record).sum(),
        stages,
        alerts,
        rules: rule_costs,
    })
}

/// The rule `id` alone, as compiled in the configured set, over the same
/// requests: the engine's CPU time and the alerts.
fn rule_alone<I: Iterator<Item = Payload>>(
    config: &Config,
    id: &str,
    normalizer: &Normalizer,
    requests: impl Fn() -> I,
    observed: i64,
) -> Result<(Duration, usize)> {
    let one = rules::RuleSet::load_one(
        config.default_rules,
        &config.rules,
        &config.rules_context(),
        id,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
    .with_context(|| format!("loading rule {id}"))?;
    let mut engine = rules::Engine::new(one, config.engine.engine_config());
    let (mut cpu, mut alerts) = (Duration::ZERO, 0);
    for chunk in chunks(requests()) {
        let events = normalize(normalizer, &chunk, &config.tenant, observed)?;
        let (c, n) = detect(&mut engine, events)?;
        cpu += c;
        alerts += n;
    }
    let (c, n) = on_cpu(|| Ok(engine.finish().len()))?;
    Ok((cpu + c, alerts + n))
}

/// The requests in chunks of [`CHUNK_REQUESTS`].
fn chunks(mut requests: impl Iterator<Item = Payload>) -> impl Iterator<Item = Vec<Payload>> {
    std::iter::from_fn(move || {
        let chunk: Vec<Payload> = requests.by_ref().take(CHUNK_REQUESTS).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}

/// Pushes a chunk's events to the engine in serve's group commits: the
/// engine's CPU time and the alerts.
fn detect(engine: &mut rules::Engine, events: Vec<Vec<Event>>) -> Result<(Duration, usize)> {
    let groups = group_commits(&events);
    let mut events: Vec<Option<Vec<Event>>> = events.into_iter().map(Some).collect();
    let (mut cpu, mut alerts) = (Duration::ZERO, 0);
    for g in &groups {
        let parts = g.clone().filter_map(|i| events[i].take()).collect();
        let (c, n) = on_cpu(|| Ok(engine.push_parts(parts).len()))?;
        cpu += c;
        alerts += n;
    }
    Ok((cpu, alerts))
}

/// A chunk's requests read and normalized, one `Vec` of events each.
fn normalize(
    normalizer: &Normalizer,
    chunk: &[Payload],
    tenant: &str,
    observed: i64,
) -> Result<Vec<Vec<Event>>> {
    chunk
        .iter()
        .map(|r| {
            read(
                r,
                |l| normalizer.logs_ref(&l, tenant, observed).events,
                |t| normalizer.traces_ref(&t, tenant, observed).events,
                |m| normalizer.metrics(m, tenant, observed).events,
            )
        })
        .collect()
}

/// Reads a request exactly as the receivers do ([`ingest::read_request`]).
fn read<T>(
    r: &Payload,
    logs: impl FnOnce(LogsRef<'_>) -> T,
    traces: impl FnOnce(TracesRef<'_>) -> T,
    metrics: impl FnOnce(&ExportMetricsServiceRequest) -> T,
) -> Result<T> {
    ingest::read_request(r, |_, _| (), logs, traces, metrics).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Consecutive requests taken together up to serve's group-commit size.
fn group_commits(events: &[Vec<Event>]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut n = 0;
    for (i, e) in events.iter().enumerate() {
        n += e.len();
        if n >= GROUP_COMMIT_EVENTS {
            groups.push(start..i + 1);
            start = i + 1;
            n = 0;
        }
    }
    if start < events.len() {
        groups.push(start..events.len());
    }
    groups
}

/// Runs `f` and returns the CPU time (user and system) this thread spent in it.
fn on_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    on_clock(libc::CLOCK_THREAD_CPUTIME_ID, f)
}

/// Runs `f` and returns the CPU time every thread of the process spent
/// meanwhile: for work `f` hands to another thread and waits for.
fn on_process_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    on_clock(libc::CLOCK_PROCESS_CPUTIME_ID, f)
}

/// Runs `f` and returns how far the CPU-time `clock` moved meanwhile.
fn on_clock<T>(clock: libc::clockid_t, f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let before = cpu_clock(clock);
    let out = f()?;
    Ok((cpu_clock(clock).saturating_sub(before), out))
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0, "the CPU-time clocks are available on Linux");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_commits_cover_every_request_once_in_order() {
        let sizes = [1000, 1000, 1000, 3000, 10, 10];
        let events: Vec<Vec<Event>> = sizes
            .iter()
            .map(|&n| (0..n).map(|_| Event::default()).collect())
            .collect();
        let groups = group_commits(&events);
        assert_eq!(groups, vec![0..3, 3..4, 4..6]);
        assert!(group_commits(&[]).is_empty());
    }
}
