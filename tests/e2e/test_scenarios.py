"""Every scenario, sent through the real OpenTelemetry SDK to a real `vigil serve`,
raises exactly its expected alerts, once per subject, and nothing else."""
import json
import subprocess

import pytest

import otlp_json
from conftest import ROOT, VIGIL_BIN, scenario_dir, send_scenario

# The shared acceptance scenarios, plus our own of the same format that vary
# users, products, paths, domains, time zones and arrival order.
SCENARIOS = sorted(scenario_dir().glob("*.json")) + sorted((ROOT / "tests" / "scenarios-extra").glob("*.json"))


def subject_matches(alert, want):
    if alert["rule_id"] != want["rule_id"]:
        return False
    if alert.get("user") != want["user"]:
        return False
    if "session" in want and alert.get("session") != want["session"]:
        return False
    return True


def check(scenario, alerts):
    expected = scenario.get("expect", [])
    problems = []
    for want in expected:
        hits = [a for a in alerts if subject_matches(a, want)]
        if len(hits) != 1:
            problems.append(f"expected exactly one {want}, got {len(hits)}")
    for a in alerts:
        if not any(subject_matches(a, w) for w in expected):
            problems.append(f"unexpected alert {a['rule_id']} user={a.get('user')} session={a.get('session')}: {a.get('summary')}")
        if a["rule_id"] in scenario.get("expect_none", []):
            problems.append(f"rule {a['rule_id']} must stay silent")
    return problems


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
@pytest.mark.parametrize("protocol", ["http", "grpc", "http-json"])
def test_scenario_raises_exactly_its_expected_alerts(vigil_factory, path, protocol):
    scenario = json.loads(path.read_text())
    v = vigil_factory(config=scenario.get("config") or {})
    if protocol == "http-json":
        otlp_json.send_scenario([path], v.http)
    else:
        send_scenario([path], v.grpc if protocol == "grpc" else v.http, protocol)
    want = len(scenario.get("expect", []))
    alerts = v.wait_alerts(until=lambda a: len(a) >= want)
    assert v.stop() == 0, v.log()
    # Shutdown flushes the engine: nothing may appear that was not already there.
    final = v.alerts()
    problems = check(scenario, final)
    assert not problems, "\n".join(problems) + "\n\nlog:\n" + v.log()
    assert len(final) == len(alerts), "alerts appeared only at shutdown"
    for a in final:
        assert a["schema_version"] == 1
        assert a["id"] and a["title"] and a["summary"] and a["event_ids"]
        assert a["severity"] in {"informational", "low", "medium", "high", "critical"}


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
@pytest.mark.parametrize("protocol", ["http", "http-json"])
def test_replaying_the_archive_or_the_capture_gives_the_live_alerts(vigil_factory, path, protocol, tmp_path):
    scenario = json.loads(path.read_text())
    capture = tmp_path / "capture"
    v = vigil_factory(config=scenario.get("config") or {}, args=["--capture", str(capture)])
    # OTLP/JSON bodies are captured as they came, and replayed through the JSON reader.
    if protocol == "http-json":
        otlp_json.send_scenario([path], v.http)
    else:
        send_scenario([path], v.http)
    v.wait_alerts(until=lambda a: len(a) >= len(scenario.get("expect", [])))
    assert v.stop() == 0, v.log()
    live = v.alerts()
    out = v.data_dir / "replayed.jsonl"
    run = subprocess.run([VIGIL_BIN, "replay", "--archive", str(v.archive), "--config", str(v.data_dir / "vigil.yaml"),
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(a["id"] for a in replayed) == sorted(a["id"] for a in live)
    assert all(a["replayed"] for a in replayed) and not any(a["replayed"] for a in live)
    strip = lambda a: {k: v for k, v in a.items() if k != "replayed"}
    assert sorted(map(json.dumps, map(strip, replayed))) == sorted(map(json.dumps, map(strip, live)))
    assert "events" in run.stderr and "alerts" in run.stderr

    # The captured OTLP requests, normalized and detected again, give the same alerts.
    out = v.data_dir / "replayed-otlp.jsonl"
    run = subprocess.run([VIGIL_BIN, "replay", "--otlp", str(capture), "--config", str(v.data_dir / "vigil.yaml"),
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    from_capture = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(map(json.dumps, map(strip, from_capture))) == sorted(map(json.dumps, map(strip, live)))
