//! Replay: the same rules engine over history.
//!
//! Events are read back from the Parquet archive (`sinks::archive`), row
//! group by row group in order of their earliest event, put in (time, event
//! id) order and fed to a [`rules::Engine`] built exactly as `vigil serve`
//! builds it.
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

/// Events held for sorting before they are handed to the engine even if
/// unread row groups could still hold earlier ones; past it the engine's
/// allowed lateness absorbs the rest.
const MAX_SORT_BUFFER: usize = 2_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the archive: {0}")]
    Archive(#[from] sinks::archive::ArchiveError),
    #[error("reading captured OTLP: {0}")]
    Capture(#[from] ingest::capture::CaptureError),
    #[error("writing alerts: {0}")]
    Output(String),
    #[error("reading captured OTLP {}: {message}", path.display())]
    CapturedJson {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("reading {group} failed: the reader panicked: {message}")]
    ReaderPanic { group: String, message: String },
}

/// Where the replay is, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub events: u64,
    /// Events the replay will go through, when known up front (the archive's
    /// row counts; captured OTLP is not counted ahead).
    pub total: Option<u64>,
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
    /// Events expected, when known up front.
    pub total: Option<u64>,
    /// Alerts that fired during a warm-up, before the range asked for; the
    /// live run reported them then, so the replay does not.
    pub warm_up_alerts: u64,
}

impl Summary {
    pub fn alerts(&self) -> u64 {
        self.alerts_by_rule.values().sum()
    }

    /// Where the replay stands, `elapsed` after it started.
    fn progress(&self, elapsed: Duration) -> Progress {
        Progress {
            events: self.events,
            total: self.total,
            alerts: self.alerts(),
            position: self.last_event,
            elapsed,
        }
    }
}

/// Marks alerts as replayed, counts them per rule and hands them on.
fn emit_replayed(
    mut alerts: Vec<Alert>,
    report_from: Option<i64>,
    summary: &mut Summary,
    on_alerts: &mut impl FnMut(&[Alert]) -> Result<(), String>,
) -> Result<(), ReplayError> {
    if let Some(from) = report_from {
        let before = alerts.len();
        alerts.retain(|a| a.time >= from);
        summary.warm_up_alerts += (before - alerts.len()) as u64;
    }
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
/// `on_progress` as the replay moves on.
///
/// Events reach the engine in `(time, event id)` order, across files and
/// partitions: row groups are taken in order of their earliest event, and
/// what has been read is released up to the earliest time the next row
/// group can hold. Reader threads (one per core) decode row groups ahead
/// while this thread runs the engine. Only what the engine's rules use is
/// read ([`rules::Engine::projection`]): the columns and attributes they
/// name, and whole rows only of the kinds they look at; of those, only the
/// events some rule can act on ([`rules::RuleSet::may_act_on`]) reach the
/// engine. The others move time alone.
pub fn replay_archive(
    archive: &Path,
    from: Option<i64>,
    to: Option<i64>,
    engine: &mut rules::Engine,
    on_alerts: impl FnMut(&[Alert]) -> Result<(), String>,
    on_progress: impl FnMut(Progress),
) -> Result<Summary, ReplayError> {
    replay_archive_warmed(archive, from, to, 0, engine, on_alerts, on_progress)
}

/// [`replay_archive`] whose engine first goes through the `warm_up`
/// nanoseconds before `from`: the state a live run had at `from` (the
/// session's prompt, a burst's first writes, what a user's baseline
/// learned) is there again, and alerts that fire before `from` are counted
/// in [`Summary::warm_up_alerts`] but not reported. The summary's events
/// include the warm-up's.
pub fn replay_archive_warmed(
    archive: &Path,
    from: Option<i64>,
    to: Option<i64>,
    warm_up: i64,
    engine: &mut rules::Engine,
    mut on_alerts: impl FnMut(&[Alert]) -> Result<(), String>,
    mut on_progress: impl FnMut(Progress),
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let report_from = from.filter(|_| warm_up > 0);
    let read_from = from.map(|f| f.saturating_sub(warm_up.max(0)));
    let reader =
        sinks::archive::read_events_projected(archive, read_from, to, engine.projection())?;
    let groups = reader.row_groups();
    let total = reader.total_rows();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_READERS);
    let rules = engine.ruleset().clone();
    let mut summary = Summary {
        total: Some(total),
        ..Default::default()
    };
    let mut emit = |alerts: Vec<Alert>, summary: &mut Summary| {
        emit_replayed(alerts, report_from, summary, &mut on_alerts)
    };
    let mut held = Reorder::default();
    read_in_order(
        groups,
        workers,
        // Events no rule can act on go on as times only, so the engine's
        // thread neither runs nor frees them.
        |i| Ok(reader.read_row_group(i, |e| rules.may_act_on(e))?),
        |i| reader.describe_row_group(i),
        |next, batches| {
            let alerts = held.release(reader.earliest(next), true, engine, &mut summary);
            emit(alerts, &mut summary)?;
            on_progress(summary.progress(started.elapsed()));
            for read in batches {
                held.add(read);
            }
            if held.len >= MAX_SORT_BUFFER {
                // Row groups overlapping this much (or without time
                // statistics): what follows may be earlier than what goes
                // now, so the engine's allowed lateness has to absorb it.
                let alerts = held.release(i64::MAX, false, engine, &mut summary);
                emit(alerts, &mut summary)?;
                on_progress(summary.progress(started.elapsed()));
            }
            Ok(())
        },
    )?;
    let alerts = held.release(i64::MAX, true, engine, &mut summary);
    emit(alerts, &mut summary)?;
    let alerts = engine.finish();
    emit(alerts, &mut summary)?;
    summary.elapsed = started.elapsed();
    on_progress(summary.progress(summary.elapsed));
    Ok(summary)
}

/// Reads row groups `0..groups` on `workers` threads with `read` and hands
/// each to `take` in order, on this thread. A reader that panics (parquet-rs
/// on a damaged file, say) ends the replay with an error naming the row group
/// (`describe`) and the panic, instead of taking the replay down.
fn read_in_order<R: Send>(
    groups: usize,
    workers: usize,
    read: impl Fn(usize) -> Result<R, ReplayError> + Sync,
    describe: impl Fn(usize) -> String + Sync,
    mut take: impl FnMut(usize, R) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    let window = Window::new(workers);
    let claim = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..workers {
            let (tx, read, describe, claim, window) =
                (tx.clone(), &read, &describe, &claim, &window);
            scope.spawn(move || loop {
                let i = claim.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= groups || !window.wait_for(i) {
                    break;
                }
                let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(i)))
                    .unwrap_or_else(|panic| {
                        Err(ReplayError::ReaderPanic {
                            group: describe(i),
                            message: panic_message(panic.as_ref()),
                        })
                    });
                if tx.send((i, got)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Whatever way this returns, readers waiting for the window go home.
        let _close = window.closer();
        let mut ready = BTreeMap::new();
        for next in 0..groups {
            let got = loop {
                if let Some(r) = ready.remove(&next) {
                    break r;
                }
                // Every group is sent by the reader that claimed it, panic
                // or not, unless the replay is already over.
                let (i, r) = rx.recv().map_err(|_| ReplayError::ReaderPanic {
                    group: describe(next),
                    message: "its reader stopped without a result".into(),
                })?;
                ready.insert(i, r);
            }?;
            window.advance(next + 1);
            take(next, got)?;
        }
        Ok(())
    })
}

/// The text of a panic's payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Reader threads at most, whatever the core count.
const MAX_READERS: usize = 4;

/// How far ahead of the engine readers may decode: row group `i` waits
/// until the engine has taken every group before `i - size`, which bounds
/// the memory of groups decoded out of turn.
struct Window {
    taken: std::sync::Mutex<usize>,
    moved: std::sync::Condvar,
    size: usize,
}

impl Window {
    fn new(size: usize) -> Self {
        Window {
            taken: std::sync::Mutex::new(0),
            moved: std::sync::Condvar::new(),
            size,
        }
    }

    /// Blocks until group `i` may be decoded; false once the replay is over.
    fn wait_for(&self, i: usize) -> bool {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        while i >= taken.saturating_add(self.size) {
            taken = self.moved.wait(taken).unwrap_or_else(|p| p.into_inner());
        }
        *taken != usize::MAX
    }

    /// The engine has taken the groups before `taken`.
    fn advance(&self, taken: usize) {
        *self.taken.lock().unwrap_or_else(|p| p.into_inner()) = taken;
        self.moved.notify_all();
    }

    /// Ends the replay for every waiting reader when dropped.
    fn closer(&self) -> impl Drop + '_ {
        struct Close<'a>(&'a Window);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                self.0.advance(usize::MAX);
            }
        }
        Close(self)
    }
}

/// Events handed to the engine per push while released events are fed in order.
const FEED_CHUNK: usize = 4096;

/// Events read but not yet handed to the engine. They stay in the batches
/// they were decoded in; a release sorts an index of the ones it lets go.
#[derive(Default)]
struct Reorder {
    batches: Vec<Vec<Event>>,
    /// Times of rows no rule looks at.
    other_times: Vec<i64>,
    len: usize,
}

impl Reorder {
    fn add(&mut self, read: event::schema::ProjectedEvents) {
        self.len += read.events.len() + read.other_times.len();
        self.other_times.extend(read.other_times);
        if !read.events.is_empty() {
            self.batches.push(read.events);
        }
    }

    /// Feeds every held event earlier than `before` to the engine, in
    /// `(time, event id)` order. With `in_order`, nothing fed later can be
    /// earlier, so the engine processes each chunk at once instead of
    /// holding it for the allowed lateness.
    fn release(
        &mut self,
        before: i64,
        in_order: bool,
        engine: &mut rules::Engine,
        summary: &mut Summary,
    ) -> Vec<Alert> {
        let mut going: Vec<Vec<Event>> = Vec::new();
        for batch in std::mem::take(&mut self.batches) {
            if batch.iter().all(|e| e.time < before) {
                going.push(batch);
            } else if batch.iter().any(|e| e.time < before) {
                let (now, later): (Vec<Event>, Vec<Event>) =
                    batch.into_iter().partition(|e| e.time < before);
                going.push(now);
                self.batches.push(later);
            } else {
                self.batches.push(batch);
            }
        }
        self.other_times.sort_unstable();
        let split = self.other_times.partition_point(|t| *t < before);
        let others: Vec<i64> = self.other_times.drain(..split).collect();

        let mut order: Vec<(i64, u32, u32)> = Vec::with_capacity(going.iter().map(Vec::len).sum());
        for (b, events) in going.iter().enumerate() {
            for (r, e) in events.iter().enumerate() {
                order.push((e.time, b as u32, r as u32));
            }
        }
        if order.is_empty() && others.is_empty() {
            return Vec::new();
        }
        let id = |b: u32, r: u32| going[b as usize][r as usize].event_id.as_str();
        order.sort_unstable_by(|x, y| {
            x.0.cmp(&y.0)
                .then_with(|| id(x.1, x.2).cmp(id(y.1, y.2)))
                .then_with(|| (x.1, x.2).cmp(&(y.1, y.2)))
        });
        let n = order.len() + others.len();
        self.len -= n;
        summary.events += n as u64;
        // Both lists are sorted: their ends, and the range so far, bound the range.
        let ends = [
            order.first().map(|o| o.0),
            order.last().map(|o| o.0),
            others.first().copied(),
            others.last().copied(),
            summary.first_event,
            summary.last_event,
        ];
        summary.first_event = ends.iter().flatten().min().copied();
        summary.last_event = ends.iter().flatten().max().copied();

        let mut alerts = Vec::new();
        let mut fed_others = 0;
        for chunk in order.chunks(FEED_CHUNK) {
            let until = chunk.last().expect("chunks are not empty").0;
            // Rows no rule reads move time in step with the events around them.
            let upto = fed_others + others[fed_others..].partition_point(|t| *t <= until);
            engine.push_times(&others[fed_others..upto]);
            fed_others = upto;
            let events: Vec<Event> = chunk
                .iter()
                .map(|&(_, b, r)| std::mem::take(&mut going[b as usize][r as usize]))
                .collect();
            alerts.extend(engine.push(events));
            if in_order {
                alerts.extend(engine.release_until(until));
            }
        }
        engine.push_times(&others[fed_others..]);
        alerts
    }
}

/// Replays capture files (in the order given) through `normalizer` and
/// `engine`, request by request, as `vigil serve` received them.
/// A captured OTLP/JSON request that does not decode, in `file`.
fn captured_json(file: &std::path::Path, message: String) -> ReplayError {
    ReplayError::CapturedJson {
        path: file.to_path_buf(),
        message,
    }
}

pub fn replay_otlp(
    files: &[std::path::PathBuf],
    normalizer: &ingest::Normalizer,
    engine: &mut rules::Engine,
    mut on_alerts: impl FnMut(&[Alert]) -> Result<(), String>,
    mut on_progress: impl FnMut(Progress),
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut emit = |alerts: Vec<Alert>, summary: &mut Summary| {
        emit_replayed(alerts, None, summary, &mut on_alerts)
    };
    for file in files {
        for captured in ingest::capture::CaptureReader::open(file)? {
            let c = captured?;
            let n = match &c.payload {
                ingest::Payload::Logs(r) => normalizer.logs(r, &c.tenant, c.received_ns),
                // OTLP/JSON bodies are kept as they came, and read as `vigil serve` reads them.
                ingest::Payload::LogsJson(body) => ingest::json::with_logs(
                    body,
                    || {},
                    |r| normalizer.logs_ref(&r, &c.tenant, c.received_ns),
                )
                .map_err(|message| captured_json(file, message))?,
                ingest::Payload::TracesJson(body) => ingest::json::with_traces(
                    body,
                    || {},
                    |r| normalizer.traces_ref(&r, &c.tenant, c.received_ns),
                )
                .map_err(|message| captured_json(file, message))?,
                ingest::Payload::LogsBytes(_) | ingest::Payload::TracesBytes(_) => {
                    unreachable!("capture files are read back as prost requests")
                }
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

    const NANOS_PER_HOUR: i64 = 3_600_000_000_000;

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

    /// Replays the whole archive from `from`: the summary, every alert, and
    /// the progress reports.
    fn replay_all(
        dir: &Path,
        from: Option<i64>,
        engine: &mut rules::Engine,
    ) -> (Summary, Vec<Alert>, Vec<Progress>) {
        let mut got = Vec::new();
        let mut progress = Vec::new();
        let summary = replay_archive(
            dir,
            from,
            None,
            engine,
            |a| {
                got.extend_from_slice(a);
                Ok(())
            },
            |p| progress.push(p),
        )
        .expect("replays");
        (summary, got, progress)
    }

    fn walk_parquet(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .map(|p| {
                if p.is_dir() {
                    walk_parquet(&p)
                } else {
                    usize::from(p.extension().is_some_and(|x| x == "parquet"))
                }
            })
            .sum()
    }

    /// A deterministic mixed stream over two hours, in event-time order.
    fn stream(n: usize, t0: i64) -> Vec<Event> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        let mut t = t0;
        (0..n)
            .map(|_| {
                t += (next() % 3_000) as i64 * 1_000_000;
                let user = ["a", "b", "c", "d"][next() % 4];
                let mut e = Event {
                    time: t,
                    tenant: "default".into(),
                    source: Source::Agent,
                    user: Some(format!("{user}@example.com").into()),
                    session: Some(format!("s-{user}").into()),
                    product: Some("claude-code".into()),
                    ..Default::default()
                };
                match next() % 5 {
                    0 => {
                        e.kind = EventKind::FileRead;
                        e.path = Some(if next() % 40 == 0 {
                            format!("/home/{user}/.ssh/id_rsa").into()
                        } else {
                            format!("/home/{user}/src/f{}.rs", next() % 50).into()
                        });
                    }
                    1 => {
                        e.kind = EventKind::ConnectorAction;
                        e.action = Some("send".into());
                        e.attrs.insert("channel", format!("c{}", next() % 3));
                    }
                    2 => e.kind = EventKind::UserPrompt,
                    3 => e.kind = EventKind::ModelCall,
                    _ => {
                        e.kind = EventKind::ToolCall;
                        e.command = Some("ls".into());
                    }
                }
                e.attrs.insert("noise", "x".repeat(next() % 40));
                e.event_id = e.compute_id();
                e
            })
            .collect()
    }

    #[test]
    fn replay_merges_overlapping_files_and_row_groups_into_event_time_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = 1_773_165_000_000_000_000i64; // 17:50 UTC, so the stream crosses an hour
        let events = stream(4_000, t0);
        // Arrival up to 20 s late, small files and row groups, and a restart
        // half-way: files and row groups overlap in time, within and across
        // hours.
        let mut arrival: Vec<(i64, usize)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.time + (i as i64 * 7_919 % 20_000) * 1_000_000, i))
            .collect();
        arrival.sort();
        let config = ArchiveConfig {
            row_group_rows: 97,
            max_file_bytes: 16 * 1024,
            ..ArchiveConfig::new(dir.path())
        };
        for half in arrival.chunks(arrival.len() / 2) {
            let mut w: ArchiveWriter<Event> = ArchiveWriter::open(config.clone()).expect("open");
            for chunk in half.chunks(50) {
                let batch: Vec<Event> = chunk.iter().map(|(_, i)| events[*i].clone()).collect();
                w.write(&batch).expect("write");
            }
            w.close().expect("close");
        }
        let files = walk_parquet(&dir.path().join("events"));
        assert!(files > 4, "{files} files");

        let rules_dir = tempfile::tempdir().expect("tempdir");
        let rules_file = rules_dir.path().join("rules.yaml");
        std::fs::write(
            &rules_file,
            "id: ssh\ntitle: SSH\nseverity: high\nkey: [user, session]\nsummary: '{path}'\n\
             condition: {kind: file_read, path: {glob: '**/.ssh/**'}}\n---\n\
             id: burst\ntitle: Burst\nseverity: medium\nkey: [user]\nkind: threshold\n\
             summary: '{attrs.channel}'\ncondition: {kind: connector_action}\n\
             threshold: {count: 4, window: 1m}\n",
        )
        .expect("rules");
        let ctx = rules::RulesContext::default();
        let set = || rules::load(false, std::slice::from_ref(&rules_file), &ctx).expect("rules");

        // The reference: the same events, in (time, id) order, to a live
        // engine. No allowed lateness: anything replay fed out of order would
        // be dropped as late and show.
        let strict = rules::EngineConfig {
            allowed_lateness: std::time::Duration::ZERO,
            ..Default::default()
        };
        let mut live = rules::Engine::new(set(), strict.clone());
        let mut want = Vec::new();
        for c in events.chunks(100) {
            want.extend(live.push(c.to_vec()));
        }
        want.extend(live.finish());
        assert!(want.iter().any(|a| a.rule_id == "ssh"));
        assert!(want.iter().any(|a| a.rule_id == "burst"));

        let mut engine = rules::Engine::new(set(), strict.clone());
        let (summary, got, progress) = replay_all(dir.path(), None, &mut engine);
        // The total is known from the first report, and the last one is complete.
        assert!(progress.len() > 2);
        assert!(progress.iter().all(|p| p.total == Some(4_000)));
        assert_eq!(progress.last().map(|p| p.events), Some(4_000));
        assert!(progress.windows(2).all(|w| w[0].events <= w[1].events));
        let plain = |v: &[Alert]| {
            v.iter()
                .map(|a| {
                    let mut a = a.clone();
                    a.replayed = false;
                    serde_json::to_string(&a).expect("json")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(plain(&got), plain(&want));
        assert_eq!(summary.events, 4_000);
        assert_eq!(summary.first_event, events.first().map(|e| e.time));
        assert_eq!(summary.last_event, events.last().map(|e| e.time));
        let stats = engine.stats();
        assert_eq!(stats.events_received, 4_000);
        assert_eq!(stats.late_events, 0);
        assert_eq!(stats.events_processed, 4_000);
        assert_eq!(stats.buffered_events, 0);

        // A range keeps its rows only, and the alerts of those rows.
        let from = t0 + 600 * 1_000_000_000;
        let mut engine = rules::Engine::new(set(), rules::EngineConfig::default());
        let s = replay_archive(
            dir.path(),
            Some(from),
            None,
            &mut engine,
            |_| Ok(()),
            |_| {},
        )
        .expect("replays");
        assert_eq!(
            s.events,
            events.iter().filter(|e| e.time >= from).count() as u64
        );
    }

    #[test]
    fn row_groups_reach_the_engine_in_order_whichever_reader_finishes_first() {
        let mut taken = Vec::new();
        read_in_order(
            40,
            4,
            |i| {
                // Later groups finish first now and then.
                std::thread::sleep(std::time::Duration::from_micros(
                    ((40 - i) % 7) as u64 * 200,
                ));
                Ok(i * 10)
            },
            |i| format!("group {i}"),
            |i, r| {
                taken.push((i, r));
                Ok(())
            },
        )
        .expect("reads");
        let want: Vec<(usize, usize)> = (0..40).map(|i| (i, i * 10)).collect();
        assert_eq!(taken, want);
    }

    #[test]
    fn a_reader_that_panics_is_an_error_naming_its_row_group() {
        let mut taken = Vec::new();
        let err = read_in_order(
            12,
            3,
            |i| {
                if i == 5 {
                    panic!("index out of bounds: the len is 3 but the index is {i}");
                }
                Ok(i)
            },
            |i| format!("row group {i} of part-x.parquet"),
            |i, _| {
                taken.push(i);
                Ok(())
            },
        )
        .expect_err("the panic ends the replay");
        let text = err.to_string();
        assert!(text.contains("row group 5 of part-x.parquet"), "{text}");
        assert!(text.contains("the len is 3 but the index is 5"), "{text}");
        assert_eq!(
            taken,
            vec![0, 1, 2, 3, 4],
            "groups before it still went in order"
        );
    }

    #[test]
    fn a_captured_json_request_that_does_not_decode_is_an_error_naming_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = ingest::capture::CaptureWriter::open(dir.path(), 1 << 20).expect("open");
        let bad = bytes::Bytes::from_static(b"{\"resourceLogs\": [");
        w.append("acme", 1, &ingest::Payload::LogsJson(bad))
            .expect("append");
        w.close().expect("close");
        let files =
            ingest::capture::capture_files(&[dir.path().to_path_buf()]).expect("capture files");
        let normalizer = ingest::Normalizer::new(std::sync::Arc::new(
            ingest::MappingSet::load(&[]).expect("mappings"),
        ));
        let set = rules::load(true, &[], &rules::RulesContext::default()).expect("pack");
        let mut engine = rules::Engine::new(set, rules::EngineConfig::default());
        let err = replay_otlp(&files, &normalizer, &mut engine, |_| Ok(()), |_| {})
            .expect_err("the request does not decode");
        let text = err.to_string();
        assert!(text.contains(&files[0].display().to_string()), "{text}");
        assert!(
            text.contains("not a valid JSON ExportLogsServiceRequest"),
            "{text}"
        );
    }

    #[test]
    fn a_damaged_part_file_is_a_clear_error_before_any_alert() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = 1_773_154_800_000_000_000i64;
        let mut w: ArchiveWriter<Event> =
            ArchiveWriter::open(ArchiveConfig::new(dir.path())).expect("open");
        w.write(&[read("a@example.com", "s1", "/home/a/.ssh/id_rsa", t0)])
            .expect("write");
        w.close().expect("close");
        let hour = dir.path().join("events/date=2026-03-10/hour=15");
        std::fs::write(hour.join("part-damaged-000000.parquet"), b"not parquet").expect("write");
        let set = rules::load(true, &[], &rules::RulesContext::default()).expect("pack");
        let mut engine = rules::Engine::new(set, rules::EngineConfig::default());
        let mut alerts = 0;
        let err = replay_archive(
            dir.path(),
            None,
            None,
            &mut engine,
            |a| {
                alerts += a.len();
                Ok(())
            },
            |_| {},
        )
        .expect_err("a damaged file fails the replay");
        assert!(
            err.to_string().contains("part-damaged-000000.parquet"),
            "{err}"
        );
        assert_eq!(alerts, 0, "nothing is half-replayed");
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
        let (summary, got, progress) = replay_all(dir.path(), None, &mut engine);
        assert_eq!(summary.events, 3);
        assert!(progress.len() >= 2);
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
