use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use event::{Alert, Event, EventKind, Evidence, Severity, Source};

use super::*;

/// 2026-03-10T23:59:59Z in nanoseconds.
const BEFORE_MIDNIGHT: i64 = 1_773_187_199_000_000_000;
const SEC: i64 = 1_000_000_000;

fn event(time: i64, n: u32) -> Event {
    let mut e = Event {
        time,
        observed_time: time + SEC,
        tenant: "acme".into(),
        source: Source::Agent,
        product: Some("claude-code".into()),
        kind: EventKind::FileRead,
        user: Some("gina@example.com".into()),
        session: Some("s-1".into()),
        tool: Some("Read".into()),
        path: Some(format!("/repo/src/file{n}.rs").into()),
        attrs: [
            ("event.name".to_string(), "tool_result".to_string()),
            ("seq".to_string(), n.to_string()),
        ]
        .into(),
        ..Default::default()
    };
    e.event_id = e.compute_id();
    e
}

fn config(dir: &Path) -> ArchiveConfig {
    ArchiveConfig {
        wal_fsync: false,
        ..ArchiveConfig::new(dir)
    }
}

/// Every file under `dir` (recursively), relative to it.
fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn parquet_files(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|f| f.ends_with(".parquet"))
        .collect()
}

/// Opens every `.parquet` file fully, as a reader globbing `**/*.parquet` would.
fn assert_all_parquet_files_open(dir: &Path) -> usize {
    let mut rows = 0;
    for f in parquet_files(dir) {
        let file = fs::File::open(dir.join(&f)).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap_or_else(|e| panic!("{f} does not open: {e}"))
            .build()
            .unwrap();
        for b in reader {
            rows += b.unwrap().num_rows();
        }
    }
    rows
}

fn read_all(root: &Path) -> Vec<Event> {
    let mut out: Vec<Event> = read_events(root, None, None)
        .unwrap()
        .flat_map(|b| b.unwrap())
        .collect();
    out.sort_by(|a, b| (a.time, &a.event_id).cmp(&(b.time, &b.event_id)));
    out
}

#[test]
fn partitions_follow_event_time_across_midnight_and_late_events_go_to_their_own_hour() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    w.write(&[
        event(BEFORE_MIDNIGHT, 1),
        event(BEFORE_MIDNIGHT + 2 * SEC, 2),
    ])
    .unwrap();
    // A late event, ten hours behind, arrives after the next day began.
    w.write(&[event(BEFORE_MIDNIGHT - 10 * 3600 * SEC, 3)])
        .unwrap();
    assert_eq!(w.stats().open_files, 3);
    w.close().unwrap();
    let names: Vec<String> = parquet_files(&dir.path().join("events"))
        .iter()
        .map(|f| f.rsplit_once('/').unwrap().0.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "date=2026-03-10/hour=13",
            "date=2026-03-10/hour=23",
            "date=2026-03-11/hour=00"
        ]
    );
    assert_eq!(read_all(dir.path()).len(), 3);
}

#[test]
fn partition_dir_names_hours_before_1970_too() {
    assert_eq!(
        partition_dir(hour_of(BEFORE_MIDNIGHT)),
        "date=2026-03-10/hour=23"
    );
    assert_eq!(
        partition_dir(hour_of(BEFORE_MIDNIGHT + SEC)),
        "date=2026-03-11/hour=00"
    );
    assert_eq!(partition_dir(hour_of(-1)), "date=1969-12-31/hour=23");
}

#[test]
fn files_are_written_under_a_temporary_name_and_renamed_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("events");
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    let t0 = SystemTime::now();
    for i in 0..5 {
        w.write(&[event(BEFORE_MIDNIGHT, i)]).unwrap();
        assert!(
            parquet_files(&events_dir).is_empty(),
            "no .parquet file while writing"
        );
        let tmp: Vec<String> = files(&events_dir)
            .into_iter()
            .filter(|f| f.contains("/.part-"))
            .collect();
        assert_eq!(tmp.len(), 1);
        assert!(tmp[0].ends_with(".parquet.tmp"));
    }
    w.tick(t0 + Duration::from_secs(10)).unwrap();
    assert!(parquet_files(&events_dir).is_empty(), "still young");
    w.tick(t0 + Duration::from_secs(61)).unwrap();
    assert_eq!(parquet_files(&events_dir).len(), 1);
    assert!(files(&events_dir).iter().all(|f| !f.ends_with(".tmp")));
    assert_eq!(assert_all_parquet_files_open(&events_dir), 5);
    let s = w.stats();
    assert_eq!(
        (s.rows_committed, s.files_committed, s.open_files),
        (5, 1, 0)
    );
}

#[test]
fn files_roll_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig {
        max_file_bytes: 1,
        row_group_rows: 2,
        ..config(dir.path())
    };
    let mut w = EventArchive::open(cfg).unwrap();
    for i in 0..3 {
        w.write(&[
            event(BEFORE_MIDNIGHT, 2 * i),
            event(BEFORE_MIDNIGHT, 2 * i + 1),
        ])
        .unwrap();
    }
    assert_eq!(w.stats().files_committed, 3);
    assert_eq!(parquet_files(&dir.path().join("events")).len(), 3);
    w.close().unwrap();
    assert_eq!(read_all(dir.path()).len(), 6);
}

#[test]
fn a_file_filling_up_in_the_middle_of_a_group_commit_is_finished_after_it() {
    // Several requests of one hour reach the archive in one call (a group
    // commit); the file reaches its size limit on the first of them.
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig {
        max_file_bytes: 1,
        ..config(dir.path())
    };
    let mut w = EventArchive::open(cfg).unwrap();
    let parts: Vec<Vec<Event>> = (0..3)
        .map(|p| (0..2).map(|n| event(BEFORE_MIDNIGHT, 2 * p + n)).collect())
        .collect();
    let views: Vec<(&[Event], Option<&RecordBatch>)> =
        parts.iter().map(|p| (p.as_slice(), None)).collect();
    w.write_parts(&views).unwrap();
    assert_eq!(w.stats().rows_accepted, 6);
    assert_eq!(
        w.stats().files_committed,
        1,
        "finished once every part is in it"
    );
    w.close().unwrap();
    assert_eq!(read_all(dir.path()).len(), 6);
}

/// A batch the log refuses is not accepted: rows accepted before it are
/// archived once, its own only when the sender retries.
#[test]
fn a_batch_the_log_refuses_leaves_no_row() {
    for size in [3, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventArchive::open(config(dir.path())).unwrap();
        let earlier: Vec<Event> = (0..5).map(|n| event(BEFORE_MIDNIGHT, n)).collect();
        w.write(&earlier).unwrap();
        // The refused batch has rows for the open file and for a new hour.
        let refused: Vec<Event> = (0..size as u32)
            .map(|n| event(BEFORE_MIDNIGHT + (n % 2) as i64 * 3600 * SEC, 1000 + n))
            .collect();
        w.fail_wal_appends(true);
        let err = w.write(&refused).unwrap_err();
        assert!(err.to_string().contains("write-ahead log"), "{size}: {err}");
        assert_eq!(w.stats().rows_accepted, 5, "{size}");
        assert!(!w.is_healthy(), "{size}");
        assert!(w.stats().open_rows <= 5, "{size}: no open file counts them");
        // The disk comes back: the sender retries and the earlier rows are rebuilt.
        w.fail_wal_appends(false);
        w.write(&refused).unwrap();
        w.tick(SystemTime::now()).unwrap();
        w.close().unwrap();
        let mut want: Vec<Event> = earlier.into_iter().chain(refused).collect();
        want.sort_by(|x, y| (x.time, &x.event_id).cmp(&(y.time, &y.event_id)));
        assert_eq!(
            read_all(dir.path()),
            want,
            "{size}: every accepted row exactly once"
        );
        assert_eq!(
            files(&dir.path().join(".wal")),
            Vec::<String>::new(),
            "{size}"
        );
    }
}

/// The log is appended on a thread of the writer's (`vigil-wal`), started
/// at the first append and kept for the next ones.
#[test]
fn the_log_is_written_on_its_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    assert!(w.log_thread().is_none());
    w.write(&[event(BEFORE_MIDNIGHT, 1)]).unwrap();
    let first = w.log_thread().expect("started at the first append");
    assert_eq!(first.name(), Some("vigil-wal"));
    assert_ne!(first.id(), std::thread::current().id());
    w.write(&[event(BEFORE_MIDNIGHT, 2)]).unwrap();
    assert_eq!(
        w.log_thread().unwrap().id(),
        first.id(),
        "one thread for every append"
    );
    w.close().unwrap();
    assert_eq!(read_all(dir.path()).len(), 2);
}

#[test]
fn too_many_open_partitions_close_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ArchiveConfig {
        max_open_files: 2,
        ..config(dir.path())
    };
    let mut w = EventArchive::open(cfg).unwrap();
    for h in 0..4 {
        w.write(&[event(BEFORE_MIDNIGHT - h * 3600 * SEC, h as u32)])
            .unwrap();
    }
    assert_eq!(w.stats().open_files, 2);
    assert_eq!(w.stats().files_committed, 2);
    // One call spanning more hours than the limit keeps every file it writes
    // to open until it is done; the next call closes the extra ones.
    let span: Vec<Event> = (0..3)
        .map(|h| event(BEFORE_MIDNIGHT - (10 + h) * 3600 * SEC, 10 + h as u32))
        .collect();
    w.write(&span).unwrap();
    assert_eq!(w.stats().open_files, 3);
    w.write(&[event(BEFORE_MIDNIGHT - 20 * 3600 * SEC, 20)])
        .unwrap();
    assert_eq!(w.stats().open_files, 2);
    w.close().unwrap();
    assert_eq!(read_all(dir.path()).len(), 8);
}

#[test]
fn events_round_trip_through_parquet_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventArchive::open(ArchiveConfig {
        row_group_rows: 100,
        ..config(dir.path())
    })
    .unwrap();
    let mut events: Vec<Event> = (0..1000)
        .map(|i| event(BEFORE_MIDNIGHT - 7200 * SEC + i as i64 * 10 * SEC, i))
        .collect();
    events[3].tokens_in = Some(12);
    events[4].interactive = true;
    events[5].user = None;
    w.write(&events[..600]).unwrap();
    w.write(&events[600..]).unwrap();
    let stats = w.close().unwrap();
    assert_eq!(stats.rows_committed, 1000);
    assert_eq!(read_all(dir.path()), events);
    // The time range prunes partitions and filters rows: [from, to).
    let from = events[100].time;
    let to = events[200].time;
    let got: usize = read_events(dir.path(), Some(from), Some(to))
        .unwrap()
        .map(|b| b.unwrap().len())
        .sum();
    assert_eq!(got, 100);
}

#[test]
fn parts_written_together_use_the_columns_given_and_build_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    let hour = 3600 * SEC;
    let a: Vec<Event> = (0..3)
        .map(|n| event(BEFORE_MIDNIGHT + n as i64, n))
        .collect();
    // Columns given for `a` are written as given: here those of other events
    // with the same row count, so the test sees which were used.
    let stand_in: Vec<Event> = (0..3)
        .map(|n| event(BEFORE_MIDNIGHT + n as i64, 100 + n))
        .collect();
    let given = event::schema::events_to_batch(&stand_in).unwrap();
    // Across two hours: built here, split by hour, whatever is given.
    let b = vec![
        event(BEFORE_MIDNIGHT + 10, 10),
        event(BEFORE_MIDNIGHT + hour, 11),
    ];
    let wrong_size = event::schema::events_to_batch(&a[..1]).unwrap();
    // Columns of the wrong size are not trusted either.
    let c = vec![
        event(BEFORE_MIDNIGHT + 20, 20),
        event(BEFORE_MIDNIGHT + 21, 21),
    ];
    let b_columns = event::schema::events_to_batch(&b).unwrap();
    w.write_parts(&[
        (&a, Some(&given)),
        (&b, Some(&b_columns)),
        (&c, Some(&wrong_size)),
        (&[], None),
    ])
    .unwrap();
    assert_eq!(w.stats().rows_accepted, 7);
    w.close().unwrap();
    let mut expected: Vec<Event> = stand_in.into_iter().chain(b).chain(c).collect();
    expected.sort_by(|x, y| (x.time, &x.event_id).cmp(&(y.time, &y.event_id)));
    assert_eq!(read_all(dir.path()), expected);
    assert_eq!(
        parquet_files(&dir.path().join("events")).len(),
        2,
        "one file per hour"
    );
}

#[test]
fn alerts_round_trip_through_parquet_files() {
    let dir = tempfile::tempdir().unwrap();
    let alert = Alert {
        schema_version: event::ALERT_SCHEMA_VERSION,
        id: "a1".into(),
        rule_id: "ssh_key_read".into(),
        title: "SSH key read".into(),
        severity: Severity::High,
        tags: vec!["attack.t1552.004".into()],
        tenant: "acme".into(),
        key: [("user".to_string(), "gina".to_string())].into(),
        time: BEFORE_MIDNIGHT,
        first_seen: BEFORE_MIDNIGHT - SEC,
        last_seen: BEFORE_MIDNIGHT,
        count: 1,
        event_ids: vec!["e1".into()],
        evidence: vec![Evidence {
            event_id: "e1".into(),
            time: BEFORE_MIDNIGHT,
            kind: EventKind::FileRead,
            ..Default::default()
        }],
        summary: "read".into(),
        ..Default::default()
    };
    let mut w = AlertArchive::open(config(dir.path())).unwrap();
    w.write(std::slice::from_ref(&alert)).unwrap();
    w.close().unwrap();
    assert_eq!(parquet_files(&dir.path().join("alerts")).len(), 1);
    let back: Vec<Alert> = read_alerts(dir.path(), None, None)
        .unwrap()
        .flat_map(|b| b.unwrap())
        .collect();
    assert_eq!(back, vec![alert]);
}

#[test]
fn files_of_event_schema_version_1_give_their_tool_arguments_as_args() {
    // A file as version 1 wrote it: Claude Code's arguments under tool_input.
    let dir = tempfile::tempdir().unwrap();
    let mut e = event(BEFORE_MIDNIGHT, 1);
    e.attrs = [
        ("tool_input.to", "[\"x@elsewhere.example\"]"),
        ("terminal.type", "vscode"),
    ]
    .into();
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    w.write(std::slice::from_ref(&e)).unwrap();
    w.close().unwrap();
    let events = dir.path().join("events");
    let path = events.join(parquet_files(&events).remove(0));
    let batch = event::schema::events_to_batch(std::slice::from_ref(&e)).unwrap();
    let mut meta = batch.schema().metadata().clone();
    meta.insert("vigil.schema_version".to_string(), "1".to_string());
    let schema = std::sync::Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
    let batch = arrow::array::RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![
            parquet::file::metadata::KeyValue::new("vigil.schema_version".into(), "1".to_string()),
            parquet::file::metadata::KeyValue::new("vigil.record".into(), "events".to_string()),
        ]))
        .build();
    let mut out = parquet::arrow::ArrowWriter::try_new(
        fs::File::create(&path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    out.write(&batch).unwrap();
    out.close().unwrap();
    let back = read_all(dir.path());
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[0].attrs.get("args.to"),
        Some("[\"x@elsewhere.example\"]")
    );
    assert_eq!(back[0].attrs.get("tool_input.to"), None);
    assert_eq!(back[0].attrs.get("terminal.type"), Some("vscode"));
    // Files written now are read as written.
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    w.write(std::slice::from_ref(&e)).unwrap();
    w.close().unwrap();
    assert_eq!(
        read_all(dir.path())[0].attrs.get("tool_input.to"),
        Some("[\"x@elsewhere.example\"]")
    );
}

#[test]
fn files_carry_the_schema_version_and_read_back_as_plain_strings() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    w.write(&[event(BEFORE_MIDNIGHT, 1)]).unwrap();
    w.close().unwrap();
    let f = parquet_files(&dir.path().join("events")).remove(0);
    let file = fs::File::open(dir.path().join("events").join(f)).unwrap();
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let kv = b.metadata().file_metadata().key_value_metadata().unwrap();
    let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
    assert_eq!(
        get("vigil.schema_version"),
        Some(event::EVENT_SCHEMA_VERSION.to_string())
    );
    assert_eq!(get("vigil.record").as_deref(), Some("events"));
    let schema = b.schema();
    let ty = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
    use arrow::datatypes::{DataType, TimeUnit};
    assert_eq!(
        ty("tenant"),
        DataType::Utf8,
        "no embedded Arrow schema: dictionaries read as strings"
    );
    assert!(matches!(
        ty("time"),
        DataType::Timestamp(TimeUnit::Nanosecond, Some(_))
    ));
    assert!(matches!(ty("attrs"), DataType::Map(_, _)));
    // Columns of distinct values have no dictionary; repeated ones keep theirs.
    let group = b.metadata().row_group(0);
    let column = |n: &str| {
        group
            .columns()
            .iter()
            .find(|c| c.column_path().string() == n)
            .unwrap_or_else(|| panic!("column {n}"))
    };
    let dictionary = |n: &str| column(n).dictionary_page_offset().is_some();
    for n in ["event_id", "time", "observed_time", "attrs.key_value.value"] {
        assert!(!dictionary(n), "{n} has a dictionary page");
    }
    assert!(dictionary("tenant") && dictionary("user") && dictionary("attrs.key_value.key"));
    // Min/max where readers prune on them, not on the attribute map.
    let statistics = |n: &str| column(n).statistics().is_some();
    for n in ["attrs.key_value.key", "attrs.key_value.value"] {
        assert!(!statistics(n), "{n} has statistics");
    }
    assert!(statistics("time") && statistics("user") && statistics("path"));
}

#[test]
fn unwritable_folder_is_a_clear_error_and_earlier_rows_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    // The archive root sits under a regular file: it cannot be created.
    fs::write(dir.path().join("file"), b"x").unwrap();
    let err = EventArchive::open(config(&dir.path().join("file/archive")))
        .err()
        .unwrap();
    assert!(matches!(err, ArchiveError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("file/archive"), "{err}");

    let root = dir.path().join("archive");
    let mut w = EventArchive::open(config(&root)).unwrap();
    w.write(&[event(BEFORE_MIDNIGHT, 1)]).unwrap();
    // The next day's partition cannot be created: a file blocks the folder name.
    let blocked = root.join("events/date=2026-03-11");
    fs::write(&blocked, b"x").unwrap();
    let err = w.write(&[event(BEFORE_MIDNIGHT + 2 * SEC, 2)]).unwrap_err();
    assert!(err.to_string().contains("date=2026-03-11"), "{err}");
    assert!(!w.is_healthy());
    assert_eq!(w.stats().errors, 1);
    assert_eq!(
        w.stats().rows_accepted,
        1,
        "the failed batch was not accepted"
    );
    // The space comes back; the caller retries.
    fs::remove_file(&blocked).unwrap();
    w.write(&[event(BEFORE_MIDNIGHT + 2 * SEC, 2)]).unwrap();
    assert!(w.is_healthy());
    w.close().unwrap();
    assert_eq!(read_all(&root).len(), 2);
}

#[test]
fn a_file_that_fails_to_close_is_rebuilt_from_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("events");
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    let t0 = SystemTime::now();
    w.write(&[event(BEFORE_MIDNIGHT, 1), event(BEFORE_MIDNIGHT, 2)])
        .unwrap();
    // Something removes the temporary file: the rename at close fails.
    for f in files(&events_dir) {
        fs::remove_file(events_dir.join(f)).unwrap();
    }
    let err = w.tick(t0 + Duration::from_secs(61)).unwrap_err();
    assert!(err.to_string().contains("rename"), "{err}");
    assert!(!w.is_healthy());
    // The same tick already rebuilt the file from the log; the next one reports healthy.
    assert_eq!(w.stats().pending_recovery, 0);
    assert_eq!(w.stats().rows_recovered, 2);
    w.tick(t0 + Duration::from_secs(62)).unwrap();
    assert!(w.is_healthy());
    assert_eq!(read_all(dir.path()).len(), 2);
    w.close().unwrap();
}

#[test]
fn after_a_crash_temp_files_are_removed_and_accepted_rows_come_back_once() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("events");
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    let t0 = SystemTime::now();
    w.write(&[event(BEFORE_MIDNIGHT, 1)]).unwrap();
    w.tick(t0 + Duration::from_secs(61)).unwrap(); // first file finished
    w.write(&[
        event(BEFORE_MIDNIGHT, 2),
        event(BEFORE_MIDNIGHT + 2 * SEC, 3),
    ])
    .unwrap();
    w.write(
        &(10..2000)
            .map(|i| event(BEFORE_MIDNIGHT, i))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    // kill -9: no destructor, no footer, temporary files stay behind.
    std::mem::forget(w);
    assert!(files(&events_dir).iter().any(|f| f.ends_with(".tmp")));
    assert_eq!(assert_all_parquet_files_open(&events_dir), 1);

    let w = EventArchive::open(config(dir.path())).unwrap();
    let s = w.stats();
    assert_eq!(s.temp_files_removed, 2);
    assert_eq!(s.rows_recovered, 2 + 1990);
    assert!(files(&events_dir).iter().all(|f| !f.ends_with(".tmp")));
    let all = read_all(dir.path());
    assert_eq!(all.len(), 1 + 2 + 1990, "each accepted row exactly once");
    // The log was emptied once everything was rebuilt.
    assert!(files(&dir.path().join(".wal")).is_empty());
    w.close().unwrap();
}

#[test]
fn a_torn_write_ahead_log_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    w.write(&[event(BEFORE_MIDNIGHT, 1)]).unwrap();
    std::mem::forget(w);
    let wal_dir = dir.path().join(".wal/events");
    let seg: PathBuf = fs::read_dir(&wal_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[200, 1, 0, 0, 9, 9, 9]); // a half-written next entry
    fs::write(&seg, bytes).unwrap();
    let w = EventArchive::open(config(dir.path())).unwrap();
    assert_eq!(w.stats().rows_recovered, 1);
    w.close().unwrap();
    assert_eq!(read_all(dir.path()).len(), 1);
}

#[test]
fn wal_segments_are_deleted_once_their_files_are_finished() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join(".wal/events");
    let mut w = EventArchive::open(config(dir.path())).unwrap();
    let t0 = SystemTime::now();
    w.write(&[event(BEFORE_MIDNIGHT, 1)]).unwrap();
    assert_eq!(files(&wal_dir).len(), 1);
    w.tick(t0 + Duration::from_secs(61)).unwrap(); // file finished, segment rotated
    w.write(&[event(BEFORE_MIDNIGHT, 2)]).unwrap();
    assert_eq!(
        files(&wal_dir).len(),
        1,
        "the first segment is gone: {:?}",
        files(&wal_dir)
    );
    w.close().unwrap();
    assert!(files(&wal_dir).is_empty());
}

#[test]
fn retention_deletes_whole_old_date_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let events_dir = dir.path().join("events");
    let today = chrono::Utc::now().date_naive();
    let mkday = |days_ago: u64| {
        let d = today.checked_sub_days(chrono::Days::new(days_ago)).unwrap();
        let p = events_dir.join(format!("date={}/hour=05", d.format("%Y-%m-%d")));
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("part-x.parquet"), b"old").unwrap();
        format!("date={}", d.format("%Y-%m-%d"))
    };
    let (old, edge, recent) = (mkday(40), mkday(7), mkday(1));
    let cfg = ArchiveConfig {
        retention_days: Some(7),
        ..config(dir.path())
    };
    let mut w = EventArchive::open(cfg).unwrap();
    assert_eq!(w.stats().partitions_deleted, 1);
    let left: Vec<String> = fs::read_dir(&events_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!left.contains(&old));
    assert!(left.contains(&edge) && left.contains(&recent));
    // An hour later, tick applies it again as days pass.
    w.tick(SystemTime::now() + Duration::from_secs(2 * 86400 + 3600))
        .unwrap();
    assert_eq!(w.stats().partitions_deleted, 2);
    w.close().unwrap();
}

#[test]
fn invalid_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let err = EventArchive::open(ArchiveConfig {
        zstd_level: 0,
        ..config(dir.path())
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("archive.zstd_level"), "{err}");
    let parsed: Result<ArchiveConfig, _> =
        serde_json::from_str(r#"{"dir": "x", "max_file_age": 3}"#);
    assert!(parsed.is_err(), "unknown fields are refused");
}

#[test]
fn the_writer_can_move_to_its_own_thread() {
    fn is_send<T: Send>() {}
    is_send::<EventArchive>();
    is_send::<AlertArchive>();
}

#[test]
fn the_projected_reader_orders_row_groups_by_their_statistics_or_their_hour() {
    use event::schema::{events_to_batch, EventProjection};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    let dir = tempfile::tempdir().unwrap();
    // Two hours; the writer's files carry min/max statistics of `time`.
    let mut w: ArchiveWriter<Event> = ArchiveWriter::open(ArchiveConfig {
        row_group_rows: 10,
        ..config(dir.path())
    })
    .unwrap();
    let late: Vec<Event> = (0..25)
        .map(|n| event(BEFORE_MIDNIGHT + n as i64 * SEC, n))
        .collect();
    let early: Vec<Event> = (0..5)
        .map(|n| event(BEFORE_MIDNIGHT - 3_600 * SEC + n as i64 * SEC, 100 + n))
        .collect();
    w.write(&late).unwrap();
    w.write(&early).unwrap();
    w.close().unwrap();
    // A file from another writer, without statistics, in the first hour.
    let hour = dir.path().join("events/date=2026-03-10/hour=22");
    let foreign: Vec<Event> = (0..3)
        .map(|n| event(BEFORE_MIDNIGHT - 1_800 * SEC + n as i64 * SEC, 200 + n))
        .collect();
    let props = WriterProperties::builder()
        .set_statistics_enabled(EnabledStatistics::None)
        .build();
    let file = fs::File::create(hour.join("part-foreign-000000.parquet")).unwrap();
    let mut pw = ArrowWriter::try_new(file, event::schema::event_schema(), Some(props)).unwrap();
    pw.write(&events_to_batch(&foreign).unwrap()).unwrap();
    pw.close().unwrap();

    let reader = read_events_projected(dir.path(), None, None, EventProjection::all()).unwrap();
    let hour_start = BEFORE_MIDNIGHT + SEC - 3_600 * SEC * 2 + 3_600 * SEC; // 22:00
    let bounds: Vec<i64> = (0..reader.row_groups())
        .map(|i| reader.earliest(i))
        .collect();
    assert!(bounds.windows(2).all(|w| w[0] <= w[1]), "{bounds:?}");
    // The statistics-less file (rows from 22:30) is bounded by its hour's
    // start; the others by their rows' minimum: 22:59:59 alone in hour 22,
    // and the second row group of hour 00 starting at 00:00:10.
    assert_eq!(bounds[0], hour_start - 3_600 * SEC);
    assert!(
        bounds.contains(&(BEFORE_MIDNIGHT - 3_600 * SEC)),
        "{bounds:?}"
    );
    assert!(bounds.contains(&(BEFORE_MIDNIGHT + 11 * SEC)), "{bounds:?}");
    let mut read = Vec::new();
    for i in 0..reader.row_groups() {
        for batch in reader.read_row_group(i, |_| true).unwrap() {
            // Each row of a group is at or after the group's bound.
            assert!(batch.events.iter().all(|e| e.time >= reader.earliest(i)));
            read.extend(batch.events);
        }
    }
    let mut want: Vec<Event> = late.into_iter().chain(early).chain(foreign).collect();
    let key = |e: &Event| (e.time, e.event_id.clone());
    want.sort_by_key(key);
    read.sort_by_key(key);
    assert_eq!(read, want);

    // A range prunes whole row groups by their statistics, and rows within.
    let from = BEFORE_MIDNIGHT + 12 * SEC;
    let reader =
        read_events_projected(dir.path(), Some(from), None, EventProjection::all()).unwrap();
    assert_eq!(reader.row_groups(), 2, "the groups of rows 10-19 and 20-24");
    let n: usize = (0..reader.row_groups())
        .flat_map(|i| reader.read_row_group(i, |_| true).unwrap())
        .map(|b| b.events.len())
        .sum();
    assert_eq!(n, 13);
}

#[test]
fn reused_buffers_keep_their_room_unless_one_use_was_huge() {
    use super::writer::{keep_room, KEEP_ROOM};
    let mut small: Vec<u8> = Vec::with_capacity(1 << 20);
    small.extend_from_slice(&[1; 1000]);
    keep_room(&mut small);
    assert!(small.capacity() >= 1 << 20 && small.len() == 1000);
    let mut huge: Vec<u8> = Vec::with_capacity(64 << 20);
    huge.extend_from_slice(&[1; 1000]);
    keep_room(&mut huge);
    assert!(
        huge.is_empty() && huge.capacity() <= KEEP_ROOM,
        "{}",
        huge.capacity()
    );
    // Counted in bytes, whatever the element.
    let mut blocks: Vec<[u8; 4096]> = Vec::with_capacity(4096);
    keep_room(&mut blocks);
    assert!(blocks.capacity() <= KEEP_ROOM / 4096);
}
