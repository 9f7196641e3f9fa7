"""Rules reload on SIGHUP: a new rule takes effect (and looks back over the
recent archive), a broken rule file is refused and the rules in force stay."""
import signal
import time

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

    (rules_dir / "broken.yaml").write_text("id: broken\ntitle: x\nseverity: loud\ncondition: {kind: nope}\n")
    v.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "rules NOT reloaded" in v.log())
    assert "broken.yaml" in v.log()
    # Still the reloaded rules: a prompt two hours later (past suppression) alerts again, once.
    send(v, "user_prompt", T0 + 7200, **{"user.email": "quinn@example.com", "session.id": "s-q"})
    wait_for(lambda: len([a for a in v.alerts() if a["rule_id"] == "watch-quinn"]) == 2)
    assert v.stop() == 0, v.log()
    assert len([a for a in v.alerts() if a["rule_id"] == "watch-quinn"]) == 2
