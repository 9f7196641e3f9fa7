"""The Parquet archive, read as auditors read it (DuckDB and pyarrow with Hive
partitioning): events and alerts field by field, partitions on event time,
nothing lost on SIGTERM or SIGKILL, and back-pressure when the disk refuses."""
import json
import signal
import subprocess
import threading
import time
import urllib.request

import pyarrow.dataset as ds

from conftest import HEAVY, VIGIL_BIN, alerts_glob, duck, events_glob, send_scenario, scenario_dir
from test_ingest import T0, json_logs, post


def test_events_and_alerts_read_back_with_duckdb_and_pyarrow(vigil_factory):
    v = vigil_factory()
    send_scenario([scenario_dir() / "sensitive-file-read.json"], v.http)
    alerts = v.wait_alerts(until=lambda a: len(a) >= 2)
    assert v.stop() == 0, v.log()

    rows = duck(f"""select kind, source, user, session, host, tool, path, product, date, hour, typeof(time)
                    from read_parquet('{events_glob(v)}', hive_partitioning=true, hive_types={{'hour': 'INTEGER'}})
                    where kind = 'file_read' order by time""")
    assert [(r[0], r[2], r[6]) for r in rows] == [
        ("file_read", "gina@example.com", "/Users/gina/src/app/README.md"),
        ("file_read", "gina@example.com", "/Users/gina/.ssh/id_ed25519"),
        ("file_read", "hank", "/home/hank/.aws/credentials"),
    ]
    assert rows[1][1] == "agent" and rows[1][3] == "sess-gina-01" and rows[1][5] == "Read" and rows[1][7] == "claude-code"
    assert rows[2][1] == "endpoint" and rows[2][4] == "dev-hank-01"
    assert str(rows[0][8]) == "2026-03-10" and rows[0][9] == 15 and rows[0][10].startswith("TIMESTAMP")

    # pyarrow sees the same rows and the partition columns.
    table = ds.dataset(str(v.archive / "events"), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == duck(f"select count(*) from read_parquet('{events_glob(v)}')")[0][0] == 4
    assert set(table.column("user").to_pylist()) == {"gina@example.com", "hank"}
    assert {"date", "hour", "attrs", "event_id"} <= set(table.schema.names)

    # Alerts in the archive are the alerts of alerts.jsonl, every field.
    got = duck(f"""select id, rule_id, severity, "user", session, tags, event_ids, count, summary
                   from read_parquet('{alerts_glob(v)}', hive_partitioning=true) order by id""")
    want = sorted(alerts, key=lambda a: a["id"])
    assert [g[0] for g in got] == [a["id"] for a in want]
    for g, a in zip(got, want):
        assert (g[1], g[2], g[3], g[4]) == (a["rule_id"], a["severity"], a.get("user"), a.get("session"))
        assert list(g[5]) == a["tags"] and list(g[6]) == a["event_ids"] and g[7] == a["count"] and g[8] == a["summary"]


def test_partitions_follow_event_time_across_midnight_and_for_late_events(vigil_factory):
    v = vigil_factory()
    midnight = 1773187200  # 2026-03-11T00:00:00Z
    for t, user in [(midnight - 30, "before@example.com"), (midnight + 30, "after@example.com"),
                    (midnight + 3600 + 5, "later@example.com"), (midnight - 7200, "late@example.com")]:
        assert post(v.http + "/v1/logs", json_logs(1, user, t), "application/json")[0] == 200
    assert v.stop() == 0
    got = dict((r[0], (str(r[1]), r[2])) for r in duck(
        f"select user, date, hour from read_parquet('{events_glob(v)}', hive_partitioning=true, hive_types={{'hour': 'INTEGER'}})"))
    assert got == {
        "before@example.com": ("2026-03-10", 23),
        "after@example.com": ("2026-03-11", 0),
        "later@example.com": ("2026-03-11", 1),
        "late@example.com": ("2026-03-10", 22),
    }
    for path in (v.archive / "events").rglob("*.parquet"):
        assert path.parent.name.startswith("hour=") and path.parent.parent.name.startswith("date=")


def test_sigterm_flushes_every_accepted_event(vigil_factory):
    v = vigil_factory(config={"archive": {"max_file_age": "1h"}})
    n = 0
    for i in range(10):
        assert post(v.http + "/v1/logs", json_logs(500, f"u{i}@example.com", T0 + i * 600), "application/json")[0] == 200
        n += 500
    assert v.stop(signal.SIGTERM) == 0, v.log()
    assert duck(f"select count(*) from read_parquet('{events_glob(v)}')")[0][0] == n
    assert not list(v.archive.rglob("*.tmp"))


@HEAVY
def test_sigkill_under_load_leaves_only_whole_files_and_loses_nothing_acknowledged(vigil_factory, tmp_path):
    v = vigil_factory(config={"archive": {"max_file_age": "1s"}})
    accepted, stop = [0], threading.Event()

    lock = threading.Lock()

    def load(tid):
        i = 0
        while not stop.is_set():
            try:
                # Distinct content per request, so every event has its own id.
                status, _, _ = post(v.http + "/v1/logs", json_logs(200, f"t{tid}-{i}@example.com", T0 + i * 60), "application/json")
            except OSError:
                status = None  # the process is gone: not acknowledged
            if status == 200:
                with lock:
                    accepted[0] += 200
            i += 1

    threads = [threading.Thread(target=load, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(4)
    v.proc.send_signal(signal.SIGKILL)
    v.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert accepted[0] > 0

    # Right after the crash: every visible .parquet file opens, and DuckDB's glob
    # never picks up a temporary file.
    files = list((v.archive / "events").rglob("*.parquet"))
    for f in files:
        assert duck(f"select count(*) from read_parquet('{f}')")[0][0] >= 0
    assert all(not f.name.startswith(".") for f in files)
    duck(f"select count(*) from read_parquet('{events_glob(v)}')")

    # A restart rebuilds what the write-ahead log holds: every acknowledged event is there, once.
    v.start()
    assert v.stop() == 0, v.log()
    total, distinct = duck(f"select count(*), count(distinct event_id) from read_parquet('{events_glob(v)}')")[0]
    assert total == distinct
    # Nothing acknowledged is lost; a request in flight at the kill may be kept
    # without its answer having reached the sender (at most one per sender).
    assert accepted[0] <= total <= accepted[0] + 3 * 200, (total, accepted[0])


@HEAVY
def test_files_roll_by_size_under_concurrent_load_and_keep_every_record(vigil_factory):
    # Under load the archive stage writes several requests at once (a group
    # commit); files that fill up in the middle of one are finished after it.
    v = vigil_factory(config={"archive": {"max_file_bytes": 300_000}})
    out = subprocess.run(
        [VIGIL_BIN, "loadgen", "--endpoint", v.grpc, "--batch", "500", "--concurrency", "8",
         "--duration", "4s", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["accepted"] > 0 and report["failed"] == 0 and report["refused_requests"] == 0, report
    assert v.stop() == 0, v.log()
    assert "panicked" not in v.log()
    files = list((v.archive / "events").rglob("*.parquet"))
    assert len(files) >= 3, files
    total, distinct = duck(f"select count(*), count(distinct event_id) from read_parquet('{events_glob(v)}')")[0]
    assert total == distinct == report["accepted"], (total, distinct, report)


def test_archive_that_cannot_be_written_pushes_back_and_recovers(vigil_factory):
    v = vigil_factory()
    assert post(v.http + "/v1/logs", json_logs(3, "ok@example.com"), "application/json")[0] == 200
    # A file where the next hour's partition folder must go: the write fails like a broken disk.
    blocker = v.archive / "events" / "date=2026-03-10" / "hour=16"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    status, body, headers = post(v.http + "/v1/logs", json_logs(2, "blocked@example.com", T0 + 3600), "application/json")
    assert status == 503 and headers.get("retry-after"), body
    assert "archive" in json.loads(body)["message"] or "hour=16" in json.loads(body)["message"]
    try:
        urllib.request.urlopen(v.http + "/readyz", timeout=5)
        raise AssertionError("ready while the archive fails")
    except urllib.error.HTTPError as e:
        assert e.code == 503 and b"archive" in e.read()
    assert "vigil_archive_errors_total 1" in v.metrics()
    # Maintenance that succeeds in between (every 0.5 s) does not make it ready.
    time.sleep(2)
    try:
        urllib.request.urlopen(v.http + "/readyz", timeout=5)
        raise AssertionError("ready again while the failed write is not written")
    except urllib.error.HTTPError as e:
        assert e.code == 503
    blocker.unlink()
    time.sleep(1)
    assert post(v.http + "/v1/logs", json_logs(2, "blocked@example.com", T0 + 3600), "application/json")[0] == 200
    v.wait_ready(timeout=15)
    assert v.stop() == 0
    counts = dict(duck(f"select user, count(*) from read_parquet('{events_glob(v)}') group by 1"))
    assert counts == {"ok@example.com": 3, "blocked@example.com": 2}


def _padded_logs(n, user, t):
    """`n` records of about 2 KB each (a long attribute), so a small disk fills in a few requests."""
    body = json.loads(json_logs(n, user, t))
    for rec in body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]:
        rec["attributes"].append({"key": "note", "value": {"stringValue": f"{user} " + "x" * 2000}})
    return json.dumps(body).encode()


def test_a_full_disk_refuses_new_data_clearly_and_keeps_every_accepted_record(vigil_factory, tmp_path):
    # A real full disk: a 4 MiB tmpfs (direct I/O included) under the archive.
    # Mounting needs root, which is how CI runs.
    import os
    import subprocess
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]).returncode:
        import pytest
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    try:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (2 << 20))
        v = vigil_factory(config={"archive": {"dir": str(disk / "archive")}})
        accepted, refused = [], None
        for i in range(400):
            user = f"full{i:03}@example.com"
            status, body, headers = post(v.http + "/v1/logs", _padded_logs(20, user, T0 + i), "application/json")
            if status == 200:
                accepted.append(user)
                continue
            refused = (status, body, headers)
            break
        assert refused, "the disk never filled"
        status, body, headers = refused
        assert status == 503 and headers.get("retry-after"), (status, body)
        assert "No space left on device" in json.loads(body)["message"], body
        assert len(accepted) >= 3, accepted
        try:
            urllib.request.urlopen(v.http + "/readyz", timeout=5)
            raise AssertionError("ready while the disk is full")
        except urllib.error.HTTPError as e:
            assert e.code == 503
        # Room again: the refused batch is sent again and accepted.
        filler.unlink()
        time.sleep(1)
        user = f"full{len(accepted):03}@example.com"
        assert post(v.http + "/v1/logs", _padded_logs(20, user, T0 + len(accepted)), "application/json")[0] == 200
        accepted.append(user)
        v.wait_ready(timeout=15)
        assert v.stop() == 0, v.log()
        assert "No space left on device" in v.log()
        counts = dict(duck(f"select user, count(*) from read_parquet('{disk}/archive/events/**/*.parquet') group by 1"))
        assert counts == {u: 20 for u in accepted}
    finally:
        subprocess.run(["umount", "-l", str(disk)])
