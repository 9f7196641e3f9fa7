"""Rules reload on SIGHUP: a new rule takes effect (and looks back over the
recent archive), a broken rule file is refused and the rules in force stay."""
import signal
import time

import pytest

from test_restore import send, T0

RULE = """id: watch-quinn
title: Quinn's agent is active
severity: low
key: [user]
suppress: 1h
summary: "{user} prompted"
condition:
  all:
    - kind: user_prompt
    - user: quinn@example.com
"""


def wait_for(pred, timeout=20):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline
        time.sleep(0.2)


def test_sighup_reloads_rules_and_keeps_the_old_ones_when_the_new_are_broken(vigil_factory, tmp_path):
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    v = vigil_factory(args=["--rules", str(rules_dir)])
    send(v, "user_prompt", T0, **{"user.email": "quinn@example.com", "session.id": "s-q"})
    time.sleep(2)
    assert [a for a in v.alerts() if a["rule_id"] == "watch-quinn"] == []

    (rules_dir / "watch.yaml").write_text(RULE)
    v.proc.send_signal(signal.SIGHUP)
    # The new rule runs over the archived history too: the earlier prompt alerts.
    wait_for(lambda: [a for a in v.alerts() if a["rule_id"] == "watch-quinn"])

    # A SIGHUP that changes no rule (a token or certificate rotation) keeps
    # the state: no rebuild, which would hold ingest up on a large archive.
    v.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "rule files unchanged; detection state kept" in v.log())
    assert v.log().count("state rebuilt from the archive") == 1, v.log()

    (rules_dir / "broken.yaml").write_text("id: broken\ntitle: x\nseverity: loud\ncondition: {kind: nope}\n")
    v.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "rules NOT reloaded" in v.log())
    assert "broken.yaml" in v.log()
    # Still the reloaded rules: a prompt two hours later (past suppression) alerts again, once.
    send(v, "user_prompt", T0 + 7200, **{"user.email": "quinn@example.com", "session.id": "s-q"})
    wait_for(lambda: len([a for a in v.alerts() if a["rule_id"] == "watch-quinn"]) == 2)
    assert v.stop() == 0, v.log()
    assert len([a for a in v.alerts() if a["rule_id"] == "watch-quinn"]) == 2


def test_a_misspelt_list_and_an_inactive_rule_are_said_at_start_and_by_rules_check(vigil_factory, tmp_path):
    """A list name with a typo would leave the list it meant empty and its rule
    silent: vigil says so when it starts and when rules are checked."""
    import subprocess

    from conftest import VIGIL_BIN

    v = vigil_factory(config={"lists": {"approved_mcp_domain": ["*.slack.com"]}})
    assert v.stop() == 0
    log = v.log()
    assert "configuration list `approved_mcp_domain` is read by no loaded rule" in log, log
    assert "rule `mcp-unapproved-server` is inactive" in log, log
    check = subprocess.run([VIGIL_BIN, "rules", "check", "--config", str(v.data_dir / "vigil.yaml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "warning: configuration list `approved_mcp_domain`" in check.stderr, check.stderr
    assert "approved_mcp_domains" in check.stderr.split("the rules read:", 1)[1], check.stderr


PROMPTS = """id: every-prompt
title: A prompt
severity: low
key: [user]
suppress: 1h
summary: "{user} prompted"
condition: {kind: user_prompt}
"""


def test_a_rule_change_does_not_hold_ingest_up_while_state_is_rebuilt(vigil_factory, tmp_path):
    """Rebuilding state for changed rules reads the archive's history, which
    can take minutes; meanwhile the senders' requests are acknowledged (their
    events wait for the new rules), instead of timing out behind a full queue."""
    from conftest import VIGIL_BIN

    if "/release/" in VIGIL_BIN:
        pytest.skip("the rebuild pause is a debug build's test hook (VIGIL_TEST_REBUILD_PAUSE_MS)")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    # One request's room in the ingest queue: without the draining, the
    # detection queue's 4 slots and this one fill after a few requests.
    v = vigil_factory(config={"ingest": {"queue_batches": 1, "submit_timeout": "2s"}},
                      args=["--rules", str(rules_dir)], env={"VIGIL_TEST_REBUILD_PAUSE_MS": "10000"})
    send(v, "user_prompt", T0, **{"user.email": "u-0@example.com", "session.id": "s-0"})
    (rules_dir / "prompts.yaml").write_text(PROMPTS)
    v.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "rebuilding detection state" in v.log())
    for i in range(1, 31):
        send(v, "user_prompt", T0 + 60 * i, **{"user.email": f"u-{i}@example.com", "session.id": f"s-{i}"})
    assert "rules reloaded" not in v.log(), "the rebuild was not held up: the test shows nothing\n" + v.log()
    wait_for(lambda: "rules reloaded" in v.log(), timeout=60)
    # Every prompt, the one in the history and the thirty sent during the
    # rebuild, is judged by the new rule, once.
    wait_for(lambda: len({a["user"] for a in v.alerts() if a["rule_id"] == "every-prompt"}) == 31)
    assert v.stop() == 0, v.log()
    users = [a["user"] for a in v.alerts() if a["rule_id"] == "every-prompt"]
    assert sorted(users) == sorted(f"u-{i}@example.com" for i in range(31)), users
