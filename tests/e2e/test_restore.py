"""A restart does not make vigil forget: the rules' state comes back from the
shutdown snapshot (or, after a crash, from the archive), so a session left
unattended across a restart still alerts, once."""
import json

import pytest

from conftest import Vigil
from test_ingest import T0, post

MIN = 60


def claude(event, t, **attrs):
    base = {"event.name": event, "session.id": "sess-r", "user.email": "rita@example.com"}
    base.update(attrs)
    return {
        "resourceLogs": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "claude-code"}}]},
            "scopeLogs": [{"logRecords": [{
                "timeUnixNano": str(int(t * 1e9)),
                "body": {"stringValue": f"claude_code.{event}"},
                "attributes": [{"key": k, "value": {"stringValue": str(v)}} for k, v in base.items()],
            }]}],
        }]
    }


def send(v, event, t, **attrs):
    status, body, _ = post(v.http + "/v1/logs", json.dumps(claude(event, t, **attrs)).encode(), "application/json")
    assert status == 200, body


def bash(v, t):
    send(v, "tool_result", t, tool_name="Bash", success="true", decision_source="config",
         tool_parameters=json.dumps({"full_command": f"python sync.py --at {t}"}))


def unattended(v):
    return [a for a in v.alerts() if a["rule_id"] == "unattended-session"]


def prompt_then_agent_work(v):
    """A prompt at T0, then the agent alone for 110 minutes; vigil stops."""
    send(v, "user_prompt", T0, prompt_length="10")
    for m in range(10, 111, 20):
        bash(v, T0 + m * MIN)
    v.wait_alerts(settle=1.5)
    assert v.stop() == 0, v.log()


@pytest.mark.parametrize("window,expected", [("3h", 1), ("0s", 0)])
def test_a_session_unattended_across_a_restart_alerts_once(tmp_path, window, expected):
    cfg = {"engine": {"idle_timeout": "1s", "restore_window": window}}
    v = Vigil(tmp_path / "vigil", config=cfg).start()
    try:
        prompt_then_agent_work(v)
        assert unattended(v) == []

        # Restarted: the prompt at T0 is remembered (or not, with no restore window).
        v.start()
        bash(v, T0 + 125 * MIN)
        v.wait_alerts(settle=2)
        assert v.stop() == 0, v.log()
        assert len(unattended(v)) == expected, v.log()

        # Restarted again: the alert is known, and suppression holds for more activity.
        v.start()
        bash(v, T0 + 130 * MIN)
        v.wait_alerts(settle=2)
        assert v.stop() == 0, v.log()
        assert len(unattended(v)) == expected
        if expected:
            # A clean shutdown leaves a snapshot; the next start takes it instead of replaying.
            assert "detection state restored from the shutdown snapshot" in v.log()
    finally:
        if v.proc and v.proc.poll() is None:
            v.proc.kill()


def test_a_damaged_snapshot_falls_back_to_the_archive(tmp_path):
    cfg = {"engine": {"idle_timeout": "1s", "restore_window": "3h"}}
    v = Vigil(tmp_path / "vigil", config=cfg).start()
    try:
        prompt_then_agent_work(v)
        snapshot = v.data_dir / "state" / "engine.snapshot"
        data = snapshot.read_bytes()
        snapshot.write_bytes(data[: len(data) // 2])

        v.start()
        bash(v, T0 + 125 * MIN)
        v.wait_alerts(settle=2)
        assert v.stop() == 0, v.log()
        log = v.log_path.read_text(errors="replace")
        assert "engine snapshot not usable" in log and "detection state restored from the archive" in log
        # The restore says how far it has got (from its first batch, then every 10 s).
        assert "restoring detection state from the archive events=" in log, log
        assert len(unattended(v)) == 1, v.log()
    finally:
        if v.proc and v.proc.poll() is None:
            v.proc.kill()
