"""Every scenario, sent through the real OpenTelemetry SDK to a real `vigil serve`,
raises exactly its expected alerts, once per subject, and nothing else."""
import json
import re
import subprocess

import pytest

import otlp_json
from conftest import ROOT, VIGIL_BIN, scenario_dir, send_scenario

# The shared acceptance scenarios, plus our own of the same format that vary
# users, products, paths, domains, time zones and arrival order.
SHARED = sorted(scenario_dir().glob("*.json"))
EXTRA = sorted((ROOT / "tests" / "scenarios-extra").glob("*.json"))
SCENARIOS = SHARED + EXTRA


def over(protocols):
    """(scenario, protocol) pairs: every shared scenario over every protocol,
    each of our own over one of them in turn. Past decoding, a record takes
    the same path whatever its transport (test_ingest normalizes every source
    family over each and compares OTLP/JSON with protobuf), so the transports
    share our own scenarios out, and `vigil rules test` below runs them all in
    process: the suite's time goes where it can find something."""
    pairs = [(p, proto) for p in SHARED for proto in protocols]
    pairs += [(p, protocols[i % len(protocols)]) for i, p in enumerate(EXTRA)]
    return pytest.mark.parametrize(("path", "protocol"), pairs, ids=[f"{proto}-{p.stem}" for p, proto in pairs])


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


@over(["http", "grpc", "http-json"])
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


@over(["http", "http-json"])
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


def rules_test(*args):
    return subprocess.run([VIGIL_BIN, "rules", "test", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_rules_test_runs_every_scenario_in_process_with_the_live_verdict():
    """`vigil rules test --scenario`: a detection engineer's check of a pack
    against stories, without a server. Every scenario the live runs above
    pass, it passes too."""
    dirs = sorted({p.parent for p in SCENARIOS})
    run = rules_test(*[a for d in dirs for a in ("--scenario", d)])
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(SCENARIOS)} scenarios passed, 0 failed" in run.stdout, run.stdout
    # The rules' own examples run first, as without --scenario.
    examples = run.stdout.split("RESULT SCENARIO")[0]
    assert re.search(r"^[1-9]\d* passed, 0 failed$", examples, re.M), examples


def test_rules_test_says_why_a_scenario_fails_and_runs_the_others(tmp_path):
    burst = json.loads((scenario_dir() / "connector-write-burst.json").read_text())
    burst["expect"][0]["user"] = "someone-else@example.com"
    (tmp_path / "a-wrong-user.json").write_text(json.dumps(burst))
    typo = (scenario_dir() / "sensitive-file-read.json").read_text().replace('"signal"', '"signl"', 1)
    (tmp_path / "b-typo.json").write_text(typo)
    (tmp_path / "c-good.json").write_text((scenario_dir() / "scheduled-task-created.json").read_text())
    run = rules_test("--scenario", tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert "expected connector-write-burst user=someone-else@example.com once, fired 0 times" in out, out
    assert "unexpected: connector-write-burst user=erin@example.com" in out, out
    # The broken file is named with its line and the unknown key; the good one still runs.
    assert "b-typo.json:" in out and "signl" in out, out
    assert "1 scenarios passed, 2 failed" in out, out


def test_rules_test_scenarios_take_their_config_over_the_config_file(tmp_path):
    scenario = json.loads((scenario_dir() / "mcp-unapproved-server.json").read_text())
    lists = scenario.pop("config")["lists"]
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(scenario))
    # Without the approved list the rule is inactive, and the scenario says so.
    run = rules_test("--scenario", path)
    assert run.returncode == 1
    assert "rule `mcp-unapproved-server` is not active" in run.stdout, run.stdout
    config = tmp_path / "vigil.yaml"
    config.write_text(json.dumps({"lists": lists}))
    run = rules_test("--config", config, "--scenario", path)
    assert run.returncode == 0, run.stdout + run.stderr
    # The scenario's own list replaces the file's list of that name.
    scenario["config"] = {"lists": {"approved_mcp_domains": ["*"]}}
    path.write_text(json.dumps(scenario))
    run = rules_test("--config", config, "--scenario", path)
    assert run.returncode == 1 and "fired 0 times" in run.stdout, run.stdout
