"""`vigil replay --from/--to` as a detection engineer runs it over a live
run's archive: the window picks the events, an empty window says where the
archive's events are, and a window that holds no time is refused."""
import json
import subprocess
from datetime import datetime, timedelta, timezone

from conftest import VIGIL_BIN, scenario_dir, send_scenario


def replay(v, *extra):
    out = v.data_dir / "replayed.jsonl"
    run = subprocess.run([VIGIL_BIN, "replay", "--archive", str(v.archive), "--config", str(v.data_dir / "vigil.yaml"),
                          "--out", str(out), *extra], capture_output=True, text=True, timeout=120)
    alerts = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return run, alerts


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_replay_over_a_time_window(vigil_factory):
    path = scenario_dir() / "sensitive-file-read.json"
    scenario = json.loads(path.read_text())
    base = datetime.fromisoformat(scenario["base_time"].replace("Z", "+00:00")).astimezone(timezone.utc)
    v = vigil_factory()
    send_scenario([path], v.http)
    v.wait_alerts(until=lambda a: len(a) >= len(scenario["expect"]))
    assert v.stop() == 0, v.log()
    live = sorted(a["id"] for a in v.alerts())
    assert len(live) == len(scenario["expect"]), v.alerts()

    # A window around the story: the live run's alerts, the same ids.
    run, alerts = replay(v, "--from", iso(base - timedelta(hours=1)), "--to", iso(base + timedelta(days=1)))
    assert run.returncode == 0, run.stderr
    assert sorted(a["id"] for a in alerts) == live

    # A window days before it: nothing, and where the archive's events are.
    run, alerts = replay(v, "--from", iso(base - timedelta(days=3)), "--to", iso(base - timedelta(days=2)))
    assert run.returncode == 0, run.stderr
    assert alerts == []
    assert "replayed 0 events" in run.stderr, run.stderr
    assert "no events in the range asked for" in run.stderr and str(v.archive) in run.stderr, run.stderr
    assert base.strftime("%Y-%m-%d") in run.stderr.split("holds events from", 1)[1], run.stderr

    # --from after --to holds no time: refused, naming both.
    run, _ = replay(v, "--from", iso(base + timedelta(days=1)), "--to", iso(base))
    assert run.returncode == 2
    assert "--from" in run.stderr and "is not before --to" in run.stderr, run.stderr


def test_replay_from_warms_up_on_what_came_before(vigil_factory):
    """Erin's 30 deletes, 5 s apart, fire the burst at the 20th. A replay from
    the 13th on sees only 18 of them in its range: it finds the live run's
    alert (the same id) only because the rules first go through the day before
    --from; with --warm-up 0s they start empty and miss it."""
    path = scenario_dir() / "connector-write-burst.json"
    scenario = json.loads(path.read_text())
    base = datetime.fromisoformat(scenario["base_time"].replace("Z", "+00:00")).astimezone(timezone.utc)
    v = vigil_factory(config=scenario.get("config"))
    send_scenario([path], v.http)
    v.wait_alerts(until=lambda a: len(a) >= 1)
    assert v.stop() == 0, v.log()
    live = [a["id"] for a in v.alerts() if a["rule_id"] == "connector-write-burst"]
    assert len(live) == 1, v.alerts()

    cut = iso(base + timedelta(seconds=60))
    run, alerts = replay(v, "--from", cut)
    assert run.returncode == 0, run.stderr
    assert [a["id"] for a in alerts] == live, alerts
    assert "warmed up on 1day of events before" in run.stderr, run.stderr

    run, alerts = replay(v, "--from", cut, "--warm-up", "0s")
    assert run.returncode == 0, run.stderr
    assert alerts == [], alerts
    assert "warmed up" not in run.stderr, run.stderr

    # An alert that fired before --from is the warm-up's: counted, not reported.
    run, alerts = replay(v, "--from", iso(base + timedelta(seconds=120)))
    assert run.returncode == 0, run.stderr
    assert alerts == [], alerts
    assert "1 alerts of the warm-up are not reported" in run.stderr, run.stderr
