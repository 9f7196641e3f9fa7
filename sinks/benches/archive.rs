//! Write throughput of the archive writer alone, on a Claude-Code-shaped mixed
//! stream, and bytes per event on disk. Run: `cargo bench -p vigil-sinks --bench archive`.

use std::cell::Cell;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use event::{Event, EventKind, Outcome, Source};
use vigil_sinks::archive::{ArchiveConfig, EventArchive};

const EVENTS: usize = 200_000;
const BATCH: usize = 1000;
const BASE_NS: i64 = 1_773_154_800_000_000_000;

/// A deterministic mix: prompts, model calls, tool calls, decisions, file
/// reads and writes, MCP connector writes; 40 users, 400 sessions.
fn stream(n: usize) -> Vec<Event> {
    let tools = [
        "Read",
        "Bash",
        "Edit",
        "Grep",
        "Write",
        "WebFetch",
        "mcp__slack__slack_post_message",
        "Glob",
    ];
    let kinds = [
        EventKind::FileRead,
        EventKind::ToolCall,
        EventKind::FileWrite,
        EventKind::FileRead,
        EventKind::FileWrite,
        EventKind::ToolCall,
        EventKind::ConnectorAction,
        EventKind::FileRead,
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let r = rnd();
            let u = (r % 40) as usize;
            let session = (r >> 8) % 400;
            let t = (r >> 16) as usize % tools.len();
            let shape = (r >> 24) % 10;
            let time = BASE_NS + i as i64 * 5_000_000; // 200 events/s of event time
            let mut e = Event {
                time,
                observed_time: time + 150_000_000 + ((r >> 32) % 1_000_000) as i64,
                tenant: "acme".into(),
                source: Source::Agent,
                product: Some("claude-code".into()),
                outcome: if r.is_multiple_of(17) {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                user: Some(format!("user{u}@example.com").into()),
                session: Some(format!("7f3c9a2e-1b4d-4e8f-9a6b-{session:012x}").into()),
                host: Some(format!("mbp-user{u}").into()),
                ..Default::default()
            };
            let mut attrs = vec![
                ("event.timestamp", event::format_ns(time)),
                ("event.sequence", (i % 5000).to_string()),
                (
                    "organization.id",
                    "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b".to_string(),
                ),
                ("user.account_uuid", format!("acc-{u:08x}-1c2d-4e5f-8a9b")),
                (
                    "terminal.type",
                    if u.is_multiple_of(3) {
                        "vscode"
                    } else {
                        "iTerm.app"
                    }
                    .to_string(),
                ),
                ("resource.service.version", "2.1.42".to_string()),
                ("resource.os.type", "darwin".to_string()),
                ("resource.host.arch", "arm64".to_string()),
            ];
            match shape {
                0 => {
                    e.kind = EventKind::UserPrompt;
                    e.interactive = true;
                    attrs.push(("event.name", "user_prompt".into()));
                    attrs.push(("prompt_length", ((r >> 40) % 2000).to_string()));
                }
                1 | 2 => {
                    e.kind = EventKind::ModelCall;
                    e.model = Some(
                        if r.is_multiple_of(3) {
                            "claude-opus-4-5"
                        } else {
                            "claude-sonnet-4-5"
                        }
                        .into(),
                    );
                    e.tokens_in = Some(((r >> 20) % 50_000) as i64);
                    e.tokens_out = Some(((r >> 36) % 4_000) as i64);
                    attrs.push(("event.name", "api_request".into()));
                    attrs.push(("duration_ms", ((r >> 44) % 30_000).to_string()));
                    attrs.push(("cost_usd", format!("0.{:04}", (r >> 50) % 10_000)));
                }
                3 => {
                    e.kind = EventKind::ToolDecision;
                    e.tool = Some(tools[t].into());
                    e.interactive = r.is_multiple_of(2);
                    attrs.push(("event.name", "tool_decision".into()));
                    attrs.push(("decision", "accept".into()));
                    attrs.push(("source", "config".into()));
                }
                _ => {
                    e.kind = kinds[t];
                    e.tool = Some(tools[t].into());
                    match tools[t] {
                        "Bash" => {
                            e.command = Some(
                                format!("cargo test -p crate{} -- --nocapture", (r >> 40) % 30)
                                    .into(),
                            )
                        }
                        "WebFetch" => {
                            e.target = Some(
                                format!("https://docs.rs/crate{}/latest/", (r >> 40) % 50).into(),
                            );
                            e.domain = Some("docs.rs".into());
                        }
                        "mcp__slack__slack_post_message" => {
                            e.mcp_server = Some("slack".into());
                            e.connector = Some("slack".into());
                            e.action = Some("post".into());
                        }
                        _ => {
                            e.path = Some(
                                format!(
                                    "/Users/user{u}/src/project{}/src/module{}.rs",
                                    (r >> 40) % 5,
                                    (r >> 44) % 200
                                )
                                .into(),
                            )
                        }
                    }
                    attrs.push(("event.name", "tool_result".into()));
                    attrs.push(("duration_ms", ((r >> 44) % 3_000).to_string()));
                    attrs.push(("tool_result_size_bytes", ((r >> 48) % 100_000).to_string()));
                }
            }
            e.attrs = attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            e.event_id = e.compute_id();
            e
        })
        .collect()
}

fn write_all(events: &[Event], cfg: ArchiveConfig) -> u64 {
    let mut w = EventArchive::open(cfg).expect("open archive");
    for chunk in events.chunks(BATCH) {
        w.write(chunk).expect("write");
    }
    w.close().expect("close").bytes_committed
}

/// CPU time (user and system) this thread has used, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn bench(c: &mut Criterion) {
    let events = stream(EVENTS);
    let json_bytes: usize = events
        .iter()
        .map(|e| serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0))
        .sum();
    let dir = tempfile::tempdir().expect("tempdir");
    let run = Cell::new(0u32);
    let cfg_io = |wal: bool, fsync: bool, direct: bool| {
        run.set(run.get() + 1);
        let root = dir.path().join(format!("run-{}", run.get()));
        ArchiveConfig {
            wal,
            wal_fsync: fsync,
            wal_direct_io: direct,
            ..ArchiveConfig::new(root)
        }
    };
    let cfg = |wal: bool, fsync: bool| cfg_io(wal, fsync, true);

    // Bytes per event on disk, once, and the JSON size of the same events for scale.
    let bytes = write_all(&events, cfg(false, false));
    eprintln!(
        "archive: {EVENTS} events -> {bytes} bytes on disk = {:.1} bytes/event (JSON of the same events: {:.0} bytes/event)",
        bytes as f64 / EVENTS as f64,
        json_bytes as f64 / EVENTS as f64
    );

    // The write-ahead log through the page cache against direct I/O: CPU
    // time of this thread (the kernel's copy into the cache is charged to
    // it; the cache's writeback by kernel threads is not), alternating runs.
    for fsync in [true, false] {
        let mut cpu = [0.0f64; 2];
        for _ in 0..3 {
            for (i, direct) in [false, true].into_iter().enumerate() {
                let t0 = thread_cpu_seconds();
                write_all(&events, cfg_io(true, fsync, direct));
                cpu[i] += thread_cpu_seconds() - t0;
            }
        }
        let per_event = |s: f64| s / 3.0 / EVENTS as f64 * 1e6;
        eprintln!(
            "archive: write-ahead log (fsync {fsync}) CPU per event: page cache {:.2} us, direct I/O {:.2} us = {:.2}x",
            per_event(cpu[0]),
            per_event(cpu[1]),
            cpu[1] / cpu[0]
        );
    }

    let mut g = c.benchmark_group("archive_write");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("events_no_wal", |b| {
        b.iter(|| write_all(&events, cfg(false, false)));
    });
    g.bench_function("events_wal_no_fsync", |b| {
        b.iter(|| write_all(&events, cfg(true, false)));
    });
    g.bench_function("events_wal_fsync_per_batch", |b| {
        b.iter(|| write_all(&events, cfg(true, true)));
    });
    g.bench_function("events_wal_fsync_per_batch_page_cache", |b| {
        b.iter(|| write_all(&events, cfg_io(true, true, false)));
    });
    g.bench_function("events_to_batch_only", |b| {
        b.iter(|| {
            for chunk in events.chunks(BATCH) {
                std::hint::black_box(event::schema::events_to_batch(chunk).expect("batch"));
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
